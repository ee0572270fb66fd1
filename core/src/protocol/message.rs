//! Message classification: what a received line means (event, request, response or control),
//! read from one borrowed parse of the JSON text, and how outgoing messages get their `_sig`.

use std::borrow::Cow;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A message that is not a valid iris-rpc message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage(pub String);

impl std::fmt::Display for BadMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadMessage {}

/// `op` names the protocol itself uses.
pub mod ops {
    /// Client asks for a challenge.
    pub const AUTH_REQUEST: &str = "rpc::auth::request";
    /// Server's challenge with the vector.
    pub const AUTH_CHALLENGE: &str = "rpc::auth::challenge";
    /// Client's proof of the secret.
    pub const AUTH_RESPONSE: &str = "rpc::auth::response";
    /// Identity and routes exchange that completes the handshake.
    pub const INIT: &str = "rpc::init";
    /// A uuid became reachable through the sender.
    pub const ONLINE: &str = "rpc::online";
    /// A uuid is no longer reachable through the sender.
    pub const OFFLINE: &str = "rpc::offline";
    /// The legacy ping event.
    pub const PING: &str = "ping";
}

/// A string field that tolerates other JSON types (they read as `None`), as legacy code
/// tolerates anything in these places.
#[derive(Debug, Default)]
struct LooseStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LooseStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LooseStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LooseStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LooseStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LooseStr(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LooseStr(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LooseStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LooseStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `_r`: the original sender of a routed message.
#[derive(Debug, Default, Deserialize)]
struct RouteTag<'a> {
    #[serde(borrow, default)]
    uuid: LooseStr<'a>,
}

/// Only the fields that decide what a message is; everything else is skipped unparsed.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Envelope<'a> {
    #[serde(borrow, rename = "_sig")]
    sig: Option<&'a RawValue>,
    #[serde(borrow)]
    op: LooseStr<'a>,
    #[serde(borrow, rename = "_req")]
    req_id: Option<&'a RawValue>,
    #[serde(borrow)]
    req: Option<&'a RawValue>,
    #[serde(borrow, rename = "_resp")]
    resp_id: Option<&'a RawValue>,
    // `null` is kept (as the raw text "null"), apart from an absent key: legacy callbacks
    // tell them apart (null against undefined).
    #[serde(borrow, deserialize_with = "present")]
    err: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    resp: Option<&'a RawValue>,
    #[serde(borrow, rename = "_r")]
    route: Option<RouteTag<'a>>,
    #[serde(borrow, rename = "_uuid")]
    target: LooseStr<'a>,
    #[serde(borrow)]
    uuid: LooseStr<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    routes: Option<&'a RawValue>,
}

/// A field that is present, `null` included (absent fields stay `None` by `default`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// What a received message is.
#[derive(Debug)]
pub enum Kind<'a> {
    /// `{"_req":ID,"req":MSG}`.
    Request {
        /// The request id exactly as sent (echoed verbatim in `_resp`).
        id: &'a RawValue,
        /// The request body's JSON text.
        body: &'a str,
        /// `op`, `_r.uuid` and `_uuid` of the body.
        meta: BodyMeta<'a>,
    },
    /// `{"_resp":ID,"err":E,"resp":R}`.
    Response {
        /// The request id (ours are strings; anything else matches nothing).
        id: Option<Cow<'a, str>>,
        /// `err` as sent: `None` when absent, the text `null` for null.
        err: Option<&'a RawValue>,
        /// `resp` as sent: `None` when absent, the text `null` for null.
        resp: Option<&'a RawValue>,
    },
    /// `rpc::init`, `rpc::online`, `rpc::offline` or an `rpc::auth::*` op.
    Control(Control<'a>),
    /// Anything else: delivered to listeners and the digest.
    Event {
        /// `op` when it is a string.
        op: Option<Cow<'a, str>>,
        /// `_r.uuid`: the original sender when the message came through a router.
        routed_from: Option<Cow<'a, str>>,
        /// `_uuid`: the routed peer a message is addressed to.
        target: Option<Cow<'a, str>>,
    },
}

/// Protocol control messages.
#[derive(Debug)]
pub enum Control<'a> {
    /// `rpc::init`, with `data` (server to client) or without (client to server).
    Init {
        /// The sender's identity object (server to client only).
        data: Option<&'a RawValue>,
        /// The uuids reachable through the sender.
        routes: Vec<String>,
    },
    /// `rpc::online {uuid}`.
    Online(Option<Cow<'a, str>>),
    /// `rpc::offline {uuid}`.
    Offline(Option<Cow<'a, str>>),
    /// A handshake op arriving out of place.
    Auth(Cow<'a, str>),
}

/// A parsed, classified message borrowing from its text.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The whole JSON text as received.
    pub text: &'a str,
    /// `_sig`: `Some(Ok(s))` for a string, `Some(Err(()))` for another type.
    pub sig: Option<Result<Cow<'a, str>, ()>>,
    /// What the message is.
    pub kind: Kind<'a>,
}

fn truthy(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|r| !matches!(r.get(), "null" | "false" | "0" | "\"\""))
}

/// Parses and classifies one message text.
pub fn parse(text: &str) -> Result<Parsed<'_>, BadMessage> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(BadMessage("message is not a JSON object".into()));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
    let sig = env
        .sig
        .map(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).map_err(|_| ()));
    let kind = if let Some(id) = truthy(env.req_id) {
        let body = env
            .req
            .ok_or_else(|| BadMessage("request without `req`".into()))?;
        if !body.get().starts_with('{') {
            return Err(BadMessage("request `req` is not an object".into()));
        }
        Kind::Request {
            id,
            body: body.get(),
            meta: body_meta(body.get())?,
        }
    } else if let Some(id) = truthy(env.resp_id) {
        Kind::Response {
            id: serde_json::from_str::<Cow<'_, str>>(id.get()).ok(),
            err: env.err,
            resp: env.resp,
        }
    } else {
        match env.op.0.as_deref() {
            Some(ops::INIT) => Kind::Control(Control::Init {
                data: env.data.filter(|d| d.get().starts_with('{')),
                routes: env
                    .routes
                    .and_then(|r| serde_json::from_str::<Vec<LooseStrOwned>>(r.get()).ok())
                    .map(|v| v.into_iter().filter_map(|s| s.0).collect())
                    .unwrap_or_default(),
            }),
            Some(ops::ONLINE) => Kind::Control(Control::Online(env.uuid.0)),
            Some(ops::OFFLINE) => Kind::Control(Control::Offline(env.uuid.0)),
            Some(op) if op.starts_with("rpc::auth::") => {
                Kind::Control(Control::Auth(env.op.0.unwrap_or_default()))
            }
            _ => Kind::Event {
                op: env.op.0,
                routed_from: env.route.and_then(|r| r.uuid.0),
                target: env.target.0,
            },
        }
    };
    Ok(Parsed { text, sig, kind })
}

/// A string element of a routes list; other types are dropped.
struct LooseStrOwned(Option<String>);

impl<'de> Deserialize<'de> for LooseStrOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LooseStr::deserialize(d).map(|s| LooseStrOwned(s.0.map(Cow::into_owned)))
    }
}

#[derive(Deserialize)]
struct OpOnly<'a> {
    #[serde(borrow, default)]
    op: LooseStr<'a>,
}

/// `op` of a JSON object text, if it is a string.
pub fn op_of(text: &str) -> Result<Option<Cow<'_, str>>, BadMessage> {
    serde_json::from_str::<OpOnly<'_>>(text)
        .map(|o| o.op.0)
        .map_err(|e| BadMessage(format!("invalid JSON: {e}")))
}

/// The routing fields of a message body: `op`, `_r.uuid` (original sender) and `_uuid`
/// (routed destination).
#[derive(Debug, Default)]
pub struct BodyMeta<'a> {
    /// `op` when it is a string.
    pub op: Option<Cow<'a, str>>,
    /// `_r.uuid`.
    pub routed_from: Option<Cow<'a, str>>,
    /// `_uuid`.
    pub target: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BodyFields<'a> {
    #[serde(borrow)]
    op: LooseStr<'a>,
    #[serde(borrow, rename = "_r")]
    route: Option<RouteTag<'a>>,
    #[serde(borrow, rename = "_uuid")]
    target: LooseStr<'a>,
}

/// Reads [`BodyMeta`] from a JSON object text.
pub fn body_meta(text: &str) -> Result<BodyMeta<'_>, BadMessage> {
    let f: BodyFields<'_> =
        serde_json::from_str(text).map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
    Ok(BodyMeta {
        op: f.op.0,
        routed_from: f.route.and_then(|r| r.uuid.0),
        target: f.target.0,
    })
}

/// Rewrites top-level members of a JSON object text: removes `remove`, then sets each of
/// `set` as the last members, in order. Other members keep their order.
pub fn rewrite(
    text: &str,
    remove: &[&str],
    set: &[(&str, serde_json::Value)],
) -> Result<String, BadMessage> {
    // Fast path: none of the keys occurs anywhere in the text (not even inside a string), so
    // nothing needs removing and the new members can be appended before the closing brace.
    let mentions = |k: &str| memchr::memmem::find(text.as_bytes(), format!("\"{k}\"").as_bytes());
    let trimmed = text.trim_end();
    if let Some(body) = trimmed.strip_suffix('}') {
        let untouched = remove.iter().all(|k| mentions(k).is_none())
            && set.iter().all(|(k, _)| mentions(k).is_none());
        if untouched && trimmed.trim_start().starts_with('{') {
            let mut out = String::with_capacity(text.len() + 64);
            out.push_str(body);
            let mut empty = body.trim_end().ends_with('{');
            for (k, v) in set {
                if !empty {
                    out.push(',');
                }
                empty = false;
                out.push_str(&serde_json::to_string(k).map_err(|e| BadMessage(e.to_string()))?);
                out.push(':');
                out.push_str(&serde_json::to_string(v).map_err(|e| BadMessage(e.to_string()))?);
            }
            out.push('}');
            return Ok(out);
        }
    }
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
    for k in remove {
        map.shift_remove(*k);
    }
    for (k, v) in set {
        map.shift_remove(*k);
        map.insert((*k).to_owned(), v.clone());
    }
    serde_json::to_string(&map).map_err(|e| BadMessage(e.to_string()))
}

/// The message text without its top-level `_sig`, as legacy deletes it before delivery.
///
/// Legacy peers append `_sig` last, so this is usually a slice; otherwise the object is rebuilt.
pub fn strip_sig(text: &str) -> Cow<'_, str> {
    let t = text.trim_end();
    // `,"_sig":"<16 chars>"}` as the very end of a valid object is necessarily its last
    // top-level member: none of those quotes can be escaped or inside another string.
    if let Some(body) = t.strip_suffix("\"}") {
        let cut = body.len().saturating_sub(16);
        if body.len() >= 16 + 9 && body.is_char_boundary(cut) {
            let (head, sig) = body.split_at(cut);
            if !sig.contains(['"', '\\']) {
                if let Some(rest) = head.strip_suffix(",\"_sig\":\"") {
                    let mut out = String::with_capacity(rest.len() + 1);
                    out.push_str(rest);
                    out.push('}');
                    return Cow::Owned(out);
                }
                if let Some(rest) = head.strip_suffix("{\"_sig\":\"") {
                    let mut out = String::with_capacity(rest.len() + 2);
                    out.push_str(rest);
                    out.push_str("{}");
                    return Cow::Owned(out);
                }
            }
        }
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(mut map) => {
            if map.shift_remove("_sig").is_none() {
                return Cow::Borrowed(text);
            }
            Cow::Owned(serde_json::to_string(&map).unwrap_or_else(|_| text.to_owned()))
        }
        Err(_) => Cow::Borrowed(text),
    }
}

/// Appends `text` (a JSON object) with `"_sig":sig` added as its last member.
///
/// The caller guarantees `text` is a JSON object without a top-level `_sig`
/// (see [`crate::Message`]).
pub fn append_signed(text: &str, sig: Option<&[u8; 16]>, out: &mut Vec<u8>) {
    let t = text.trim_end();
    match (sig, t.strip_suffix('}')) {
        (Some(sig), Some(body)) => {
            out.extend_from_slice(body.as_bytes());
            let empty = body.trim_end().ends_with('{');
            out.extend_from_slice(if empty {
                b"\"_sig\":\""
            } else {
                b",\"_sig\":\""
            });
            out.extend_from_slice(sig);
            out.extend_from_slice(b"\"}");
        }
        _ => out.extend_from_slice(t.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let p = parse(r#"{"op":"hello","_sig":"0123456789abcdef"}"#).unwrap();
        assert!(matches!(p.kind, Kind::Event { op: Some(ref o), .. } if o == "hello"));
        assert_eq!(p.sig.unwrap().unwrap(), "0123456789abcdef");
        let p = parse(r#"{"_req":"x","req":{"op":"add","a":1}}"#).unwrap();
        assert!(
            matches!(p.kind, Kind::Request { meta: BodyMeta { op: Some(ref o), .. }, body, .. }
            if o == "add" && body == r#"{"op":"add","a":1}"#)
        );
        let p = parse(r#"{"_resp":"x","err":null,"resp":{"sum":5}}"#).unwrap();
        assert!(matches!(
            p.kind,
            Kind::Response {
                err: Some(e),
                resp: Some(_),
                ..
            } if e.get() == "null"
        ));
        let p = parse(r#"{"_resp":"x","resp":null}"#).unwrap();
        assert!(matches!(
            p.kind,
            Kind::Response {
                err: None,
                resp: Some(r),
                ..
            } if r.get() == "null"
        ));
        let p = parse(r#"{"op":"rpc::init","v":1,"routes":["a",1]}"#).unwrap();
        assert!(
            matches!(p.kind, Kind::Control(Control::Init { data: None, ref routes }) if routes == &["a"])
        );
        let p = parse(r#"{"op":5,"_r":{"uuid":"u"}}"#).unwrap();
        assert!(
            matches!(p.kind, Kind::Event { op: None, routed_from: Some(ref u), .. } if u == "u")
        );
        assert!(parse("[1]").is_err());
        assert!(parse("{\"a\":").is_err());
        assert!(parse(r#"{"_req":"x"}"#).is_err());
    }

    #[test]
    fn strip_sig_survives_multibyte_text_at_the_end() {
        // Found by the classify fuzz target: a char straddling the cut used to panic.
        let s = "{\"op\":\"a\",\"_sig\":\"\u{e9}0123456789abcde\"}";
        let parsed = parse(s).unwrap();
        assert!(parsed.sig.is_some());
        assert_eq!(strip_sig(s), r#"{"op":"a"}"#);
    }

    #[test]
    fn rewrite_appends_or_rebuilds() {
        let v = serde_json::json!({"uuid": "a"});
        // Fast path: appended at the end, other members untouched.
        assert_eq!(
            rewrite(r#"{"op":"x","n":1.50}"#, &["_uuid"], &[("_r", v.clone())]).unwrap(),
            r#"{"op":"x","n":1.50,"_r":{"uuid":"a"}}"#
        );
        assert_eq!(
            rewrite("{ }", &[], &[("_r", v.clone())]).unwrap(),
            r#"{ "_r":{"uuid":"a"}}"#
        );
        // A spoofed _r is replaced and _uuid removed (slow path).
        let out = rewrite(
            r#"{"_r":{"uuid":"evil"},"op":"x","_uuid":"t"}"#,
            &["_uuid"],
            &[("_r", v)],
        )
        .unwrap();
        assert_eq!(out, r#"{"op":"x","_r":{"uuid":"a"}}"#);
    }

    #[test]
    fn strips_and_appends_sig() {
        let s = r#"{"op":"a","_sig":"0123456789abcdef"}"#;
        assert_eq!(strip_sig(s), r#"{"op":"a"}"#);
        assert_eq!(strip_sig(r#"{"_sig":"0123456789abcdef"}"#), "{}");
        assert_eq!(
            strip_sig(r#"{"_sig":"0123456789abcdef","op":"a"}"#),
            r#"{"op":"a"}"#
        );
        assert_eq!(strip_sig(r#"{"op":"a"}"#), r#"{"op":"a"}"#);
        let mut out = Vec::new();
        append_signed(r#"{"op":"a"}"#, Some(b"0123456789abcdef"), &mut out);
        assert_eq!(out, br#"{"op":"a","_sig":"0123456789abcdef"}"#);
        out.clear();
        append_signed("{ }", Some(b"0123456789abcdef"), &mut out);
        assert_eq!(out, br#"{ "_sig":"0123456789abcdef"}"#);
    }
}
