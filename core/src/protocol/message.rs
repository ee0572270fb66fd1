//! Message classification: what a received line means (event, request, response or control),
//! read from one borrowed parse of the JSON text, and how outgoing messages get their `_sig`.
//!
//! Member names are read decoded (`"\u005fr"` is `_r`) and a repeated member is read as its
//! last occurrence, as legacy's `JSON.parse` (and V8's, CPython's and serde_json's `Value`
//! parsers) read it: every receiver and the router's relay agree on what a message says,
//! whatever its spelling. [`rewrite`] and [`strip_sig`] remove every occurrence of a member in
//! any spelling, so what they produce holds each member they touch exactly once.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;

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

/// A member name, decoded; borrowed from the text when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of an object that a [`LastWins`] reads. Each call reads the value of one
/// member named `key` (decoded) and overwrites what an earlier one set; `Ok(false)` for a
/// member it does not read (skipped unparsed).
trait Members<'de>: Default {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, a: &mut A) -> Result<bool, A::Error>;
}

/// An object read member by member, the last of repeated members winning, as `JSON.parse`
/// reads it. (serde's derived structs refuse repeated fields instead, so a peer could make us
/// read a message differently from a legacy peer, or drop a connection that relayed it.) Any
/// other JSON type reads as the default, as legacy reads a property of a non-object as
/// `undefined`.
struct LastWins<T>(T);

impl<'de, T: Members<'de>> Deserialize<'de> for LastWins<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Members<'de>> Visitor<'de> for V<T> {
            type Value = LastWins<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = T::default();
                while let Some(k) = a.next_key::<Key<'de>>()? {
                    if !out.member(&k.0, &mut a)? {
                        a.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(LastWins(out))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LastWins(T::default()))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LastWins(T::default()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `_r`: the original sender of a routed message.
#[derive(Debug, Default)]
struct RouteTag<'a> {
    uuid: LooseStr<'a>,
}

impl<'de> Members<'de> for RouteTag<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, a: &mut A) -> Result<bool, A::Error> {
        if key != "uuid" {
            return Ok(false);
        }
        self.uuid = a.next_value()?;
        Ok(true)
    }
}

/// `_r` as legacy reads it: `msg._r ? msg._r.uuid : ...` (a non-object names nobody).
fn route_of(v: Option<LastWins<RouteTag<'_>>>) -> Option<Cow<'_, str>> {
    v.and_then(|r| r.0.uuid.0)
}

/// Only the fields that decide what a message is; everything else is skipped unparsed.
#[derive(Debug, Default)]
struct Envelope<'a> {
    sig: Option<&'a RawValue>,
    op: LooseStr<'a>,
    req_id: Option<&'a RawValue>,
    req: Option<&'a RawValue>,
    resp_id: Option<&'a RawValue>,
    // `null` is kept (as the raw text "null"), apart from an absent key: legacy callbacks
    // tell them apart (null against undefined).
    err: Option<&'a RawValue>,
    resp: Option<&'a RawValue>,
    route: Option<Cow<'a, str>>,
    target: LooseStr<'a>,
    uuid: LooseStr<'a>,
    data: Option<&'a RawValue>,
    routes: Option<&'a RawValue>,
    #[cfg(feature = "otel")]
    traceparent: LooseStr<'a>,
}

impl<'de> Members<'de> for Envelope<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, a: &mut A) -> Result<bool, A::Error> {
        match key {
            "_sig" => self.sig = a.next_value()?,
            "op" => self.op = a.next_value()?,
            "_req" => self.req_id = a.next_value()?,
            "req" => self.req = a.next_value()?,
            "_resp" => self.resp_id = a.next_value()?,
            "err" => self.err = Some(a.next_value()?),
            "resp" => self.resp = Some(a.next_value()?),
            "_r" => self.route = route_of(a.next_value()?),
            "_uuid" => self.target = a.next_value()?,
            "uuid" => self.uuid = a.next_value()?,
            "data" => self.data = a.next_value()?,
            "routes" => self.routes = a.next_value()?,
            #[cfg(feature = "otel")]
            "traceparent" => self.traceparent = a.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
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
        /// `traceparent` beside `req`, when it is a string (v2 only, docs/PROTOCOL-V2.md
        /// section 8.3): not checked here; see [`super::traceparent`].
        #[cfg(feature = "otel")]
        traceparent: Option<Cow<'a, str>>,
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
    let LastWins(env) = serde_json::from_str::<LastWins<Envelope<'_>>>(text)
        .map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
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
            #[cfg(feature = "otel")]
            traceparent: env.traceparent.0,
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
                routed_from: env.route,
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

#[derive(Default)]
struct OpOnly<'a> {
    op: LooseStr<'a>,
}

impl<'de> Members<'de> for OpOnly<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, a: &mut A) -> Result<bool, A::Error> {
        if key != "op" {
            return Ok(false);
        }
        self.op = a.next_value()?;
        Ok(true)
    }
}

/// `op` of a JSON object text (the last `op`, in any spelling), if it is a string.
pub fn op_of(text: &str) -> Result<Option<Cow<'_, str>>, BadMessage> {
    serde_json::from_str::<LastWins<OpOnly<'_>>>(text)
        .map(|o| o.0.op.0)
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

impl<'de> Members<'de> for BodyMeta<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, a: &mut A) -> Result<bool, A::Error> {
        match key {
            "op" => self.op = a.next_value::<LooseStr<'de>>()?.0,
            "_r" => self.routed_from = route_of(a.next_value()?),
            "_uuid" => self.target = a.next_value::<LooseStr<'de>>()?.0,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Reads [`BodyMeta`] from a JSON object text.
pub fn body_meta(text: &str) -> Result<BodyMeta<'_>, BadMessage> {
    serde_json::from_str::<LastWins<BodyMeta<'_>>>(text)
        .map(|m| m.0)
        .map_err(|e| BadMessage(format!("invalid JSON: {e}")))
}

/// Top-level members of an object text in order: names decoded, values as written.
struct MemberList<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for MemberList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MemberList<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = a.next_key::<Key<'de>>()? {
                    out.push((k.0, a.next_value::<&'de RawValue>()?));
                }
                Ok(MemberList(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether `text` may have a top-level member with one of `names` (each made of ASCII
/// letters, digits and `_`, as the protocol's are). Such a name can be spelled other than
/// literally only with a `\u` escape: without one in the text, a text that nowhere holds
/// `"name"` has no such member (a mention inside a string or a nested object merely answers
/// yes). With one, the top-level names are read decoded.
fn may_have_member<'k>(
    text: &str,
    names: impl Iterator<Item = &'k str> + Clone,
) -> Result<bool, BadMessage> {
    debug_assert!(names
        .clone()
        .all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')));
    if ESCAPE.find(text.as_bytes()).is_some() {
        let MemberList(members) =
            serde_json::from_str(text).map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
        return Ok(members.iter().any(|(k, _)| names.clone().any(|n| n == k)));
    }
    Ok(names.into_iter().any(|n| {
        let found = |f: &memchr::memmem::Finder<'_>| f.find(text.as_bytes()).is_some();
        match n {
            "_sig" => found(&QUOTED_SIG),
            "_r" => found(&QUOTED_R),
            "_uuid" => found(&QUOTED_UUID),
            "op" => found(&QUOTED_OP),
            _ => found(&memchr::memmem::Finder::new(format!("\"{n}\"").as_bytes())),
        }
    }))
}

// Searchers built once: `memmem::find` would build one per message.
static ESCAPE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\\u"));
static QUOTED_SIG: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"_sig\""));
static QUOTED_R: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"_r\""));
static QUOTED_UUID: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"_uuid\""));
static QUOTED_OP: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"op\""));

/// The value of the top-level member `name` (the last one, in any spelling), if any.
pub fn member<'a>(text: &'a str, name: &str) -> Result<Option<&'a RawValue>, BadMessage> {
    let MemberList(members) =
        serde_json::from_str(text).map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
    Ok(members
        .into_iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v))
}

/// What legacy's `self.iface[msg.op]` finds before it would deliver a message: its control
/// handlers, and the members of `Object.prototype` (Node 20), since `iface` is a plain object.
const LEGACY_IFACE_KEYS: &[&str] = &[
    ops::AUTH_REQUEST,
    ops::AUTH_CHALLENGE,
    ops::AUTH_RESPONSE,
    ops::INIT,
    ops::ONLINE,
    ops::OFFLINE,
    "constructor",
    "__defineGetter__",
    "__defineSetter__",
    "hasOwnProperty",
    "__lookupGetter__",
    "__lookupSetter__",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "toString",
    "valueOf",
    "__proto__",
    "toLocaleString",
];

/// True when a legacy peer receiving a message whose `op` is the string `op` would look it up
/// among its own handlers instead of delivering it (see [`misread_by_legacy`]).
pub fn legacy_handles(op: &str) -> bool {
    LEGACY_IFACE_KEYS.contains(&op)
}

/// The property name JavaScript makes of an `op` value, when it can be one of
/// `LEGACY_IFACE_KEYS`: a string, or an array of one such value (arrays join their elements
/// with commas, and no such name holds one).
fn js_key(op: &RawValue) -> Option<Cow<'_, str>> {
    let text = op.get();
    if text.starts_with('"') {
        return serde_json::from_str::<LooseStr<'_>>(text).ok()?.0;
    }
    if text.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
        return match items.as_slice() {
            [one] => js_key(one),
            _ => None,
        };
    }
    None
}

/// True when a legacy peer (iris-rpc 0.2.20) would not deliver this message to its listeners
/// but run what its `self.iface[msg.op]` finds: `op` (the last one, in any spelling) read as
/// JavaScript reads a property name names a control handler or an `Object.prototype` member.
/// An `op` of `["rpc::offline"]` runs the `rpc::offline` handler, which throws and ends the
/// stream; `["rpc::init"]` with `data` rebinds the stream to another uuid;
/// `["rpc::auth::challenge"]` resets its sequence numbers; `"__proto__"` and
/// `"__defineGetter__"` throw. None of these reaches a legacy listener, so a router never
/// relays them to a legacy peer.
pub fn misread_by_legacy(text: &str) -> bool {
    if !may_have_member(text, std::iter::once("op")).unwrap_or(false) {
        return false;
    }
    match member(text, "op") {
        Ok(Some(op)) => js_key(op).is_some_and(|k| legacy_handles(&k)),
        _ => false,
    }
}

/// Rewrites top-level members of a JSON object text: removes `remove`, then sets each of
/// `set` as the last members, in order. Other members keep their order.
///
/// Every occurrence of a removed or set member goes, in any spelling, so the result holds each
/// member of `set` exactly once and none of `remove`, whatever the input repeated or escaped.
pub fn rewrite(
    text: &str,
    remove: &[&str],
    set: &[(&str, serde_json::Value)],
) -> Result<String, BadMessage> {
    // Fast path: none of the keys is a member of the text, so nothing needs removing and the
    // new members can be appended before the closing brace.
    let trimmed = text.trim_end();
    if let Some(body) = trimmed.strip_suffix('}') {
        let names = remove.iter().copied().chain(set.iter().map(|(k, _)| *k));
        if trimmed.trim_start().starts_with('{') && !may_have_member(text, names)? {
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
    Ok(rebuild(text, remove, set)?.unwrap_or_else(|| text.to_owned()))
}

/// The object rebuilt from its members: names written plainly, a repeated member kept once (at
/// its first place with its last value, as `JSON.parse` keeps it), the members named in
/// `remove` or `set` dropped, then `set` appended. Values are copied as written, so numbers
/// keep every digit. `None` when that would change nothing but whitespace (no member dropped
/// or repeated, none to set).
fn rebuild(
    text: &str,
    remove: &[&str],
    set: &[(&str, serde_json::Value)],
) -> Result<Option<String>, BadMessage> {
    let MemberList(members) =
        serde_json::from_str(text).map_err(|e| BadMessage(format!("invalid JSON: {e}")))?;
    let dropped = |k: &str| remove.contains(&k) || set.iter().any(|(s, _)| *s == k);
    let mut kept: Vec<(Cow<'_, str>, &RawValue)> = Vec::with_capacity(members.len());
    let mut index: std::collections::HashMap<Cow<'_, str>, usize> =
        std::collections::HashMap::with_capacity(members.len());
    let mut changed = !set.is_empty();
    for (k, v) in members {
        if dropped(&k) {
            changed = true;
            continue;
        }
        match index.get(&k) {
            Some(&i) => {
                changed = true;
                kept[i].1 = v;
            }
            None => {
                index.insert(k.clone(), kept.len());
                kept.push((k, v));
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len() + 64);
    out.push('{');
    let name = |k: &str| serde_json::to_string(k).map_err(|e| BadMessage(e.to_string()));
    for (i, (k, v)) in kept.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&name(k)?);
        out.push(':');
        out.push_str(v.get());
    }
    for (i, (k, v)) in set.iter().enumerate() {
        if i > 0 || !kept.is_empty() {
            out.push(',');
        }
        out.push_str(&name(k)?);
        out.push(':');
        out.push_str(&serde_json::to_string(v).map_err(|e| BadMessage(e.to_string()))?);
    }
    out.push('}');
    Ok(Some(out))
}

/// The message text without its top-level `_sig` (every one, in any spelling), as legacy
/// deletes it before delivery.
///
/// Legacy peers append `_sig` last, so this is usually a slice; otherwise the object is rebuilt.
pub fn strip_sig(text: &str) -> Cow<'_, str> {
    let sig = || std::iter::once("_sig");
    let t = text.trim_end();
    // `,"_sig":"<16 chars>"}` as the very end of a valid object is necessarily its last
    // top-level member: none of those quotes can be escaped or inside another string.
    if let Some(body) = t.strip_suffix("\"}") {
        let cut = body.len().saturating_sub(16);
        if body.len() >= 16 + 9 && body.is_char_boundary(cut) {
            let (head, tail) = body.split_at(cut);
            if !tail.contains(['"', '\\']) {
                let rest = if let Some(rest) = head.strip_suffix(",\"_sig\":\"") {
                    let mut out = String::with_capacity(rest.len() + 1);
                    out.push_str(rest);
                    out.push('}');
                    Some(out)
                } else {
                    head.strip_suffix("{\"_sig\":\"").map(|rest| {
                        let mut out = String::with_capacity(rest.len() + 2);
                        out.push_str(rest);
                        out.push_str("{}");
                        out
                    })
                };
                // Another `_sig` before it would become the message's: rebuild instead.
                if let Some(out) = rest {
                    if !may_have_member(&out, sig()).unwrap_or(true) {
                        return Cow::Owned(out);
                    }
                }
            }
        }
    }
    if !may_have_member(text, sig()).unwrap_or(false) {
        return Cow::Borrowed(text);
    }
    match rebuild(text, &["_sig"], &[]) {
        Ok(Some(out)) => Cow::Owned(out),
        Ok(None) | Err(_) => Cow::Borrowed(text),
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
    fn keys_are_read_decoded_and_the_last_duplicate_wins() {
        // As legacy's JSON.parse reads them; serde's derive would refuse the duplicates.
        let p = parse(
            r#"{"op":"a","\u006fp":"b","_r":{"uuid":"x"},"\u005fr":{"uuid":"y","uuid":"z"}}"#,
        )
        .unwrap();
        assert!(
            matches!(p.kind, Kind::Event { op: Some(ref o), routed_from: Some(ref r), .. } if o == "b" && r == "z")
        );
        let p =
            parse(r#"{"_req":"1","req":{"op":"a"},"req":{"op":"b","_uuid":"t","\u005fuuid":"u"}}"#)
                .unwrap();
        assert!(
            matches!(p.kind, Kind::Request { meta: BodyMeta { op: Some(ref o), target: Some(ref t), .. }, .. } if o == "b" && t == "u")
        );
        // A non-object `_r` names nobody (legacy reads `_r.uuid` as undefined).
        for r in ["5", "\"s\"", "[\"x\"]", "null"] {
            let text = format!(r#"{{"op":"a","_r":{r}}}"#);
            let p = parse(&text).unwrap();
            assert!(
                matches!(
                    p.kind,
                    Kind::Event {
                        routed_from: None,
                        ..
                    }
                ),
                "{r}"
            );
        }
        assert_eq!(op_of(r#"{"op":1,"op":"z"}"#).unwrap().as_deref(), Some("z"));
        assert_eq!(
            member(r#"{"op_timeout":1,"op\u005ftimeout":2}"#, "op_timeout")
                .unwrap()
                .map(RawValue::get),
            Some("2")
        );
    }

    #[test]
    fn rewrite_touches_every_spelling_and_duplicate() {
        let v = serde_json::json!({"uuid": "a"});
        for text in [
            r#"{"\u005fr":{"uuid":"x"},"op":"x"}"#,
            r#"{"_r":{"uuid":"x"},"op":"x","_r":1}"#,
            r#"{"_\u0072":2,"op":"x","\u005fuuid":"t"}"#,
        ] {
            let out = rewrite(text, &["_uuid"], &[("_r", v.clone())]).unwrap();
            assert_eq!(out, r#"{"op":"x","_r":{"uuid":"a"}}"#, "{text}");
        }
        // Other members keep their first place with their last value, and their digits.
        let out = rewrite(
            r#"{"n":1,"\u005fr":0,"big":123456789012345678901234567890,"n":2.50}"#,
            &[],
            &[("_r", v.clone())],
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"n":2.50,"big":123456789012345678901234567890,"_r":{"uuid":"a"}}"#
        );
        // A mention that is no top-level member leaves the text as it was.
        assert_eq!(
            rewrite(r#"{"a":{"_uuid":1},"s":"\u0041"}"#, &["_uuid"], &[]).unwrap(),
            r#"{"a":{"_uuid":1},"s":"\u0041"}"#
        );
    }

    #[test]
    fn ops_legacy_would_misread() {
        for bad in [
            r#"{"op":["rpc::offline"],"uuid":"x"}"#,
            r#"{"op":[["rpc::init"]],"data":{}}"#,
            r#"{"op":"__proto__"}"#,
            r#"{"op":"x","\u006fp":["toString"]}"#,
        ] {
            assert!(misread_by_legacy(bad), "{bad}");
        }
        for fine in [
            r#"{"op":"ping"}"#,
            r#"{"op":["rpc::offline","x"]}"#,
            r#"{"op":{"a":"rpc::offline"}}"#,
            r#"{"op":5}"#,
            r#"{"nop":"__proto__"}"#,
            r#"{"a":{"op":"__proto__"}}"#,
        ] {
            assert!(!misread_by_legacy(fine), "{fine}");
        }
    }

    #[test]
    fn strip_sig_removes_every_sig() {
        assert_eq!(
            strip_sig(r#"{"_sig":"evil","op":"a","_sig":"0123456789abcdef"}"#),
            r#"{"op":"a"}"#
        );
        assert_eq!(
            strip_sig(r#"{"\u005fsig":"evil","op":"a","_sig":"0123456789abcdef"}"#),
            r#"{"op":"a"}"#
        );
        assert_eq!(
            strip_sig(r#"{"op":"a","s":"\u0041"}"#),
            r#"{"op":"a","s":"\u0041"}"#
        );
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
