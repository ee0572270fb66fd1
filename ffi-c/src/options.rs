//! `iris_options`: the legacy option object, kept as JSON and checked on every change.

use std::ffi::c_char;

use serde_json::{Map, Value};

use crate::result::{guard, iris_result, FfiError, FfiResult};
use crate::strings::{arg_opt_str, arg_str, arg_text, need_out, owned_c_string};

/// Options of a client or server: the legacy option names (`auth`/`secret`, `uuid`,
/// `designation`, `mac`, `certificates`, `cipher`, `signatures`, `ping`, `pingFreq`,
/// `pingDataObject`, `timeout`, `rejectUnauthorized`, `address`, `port`, `routes`) in camelCase
/// or snake_case, durations in milliseconds, plus the core's limits (`max_line`,
/// `max_handshake_line`, `max_unauthenticated_bytes`, `auth_timeout`, `max_pending`, ...). Certificates are PEM text or file paths.
///
/// `security` (a string) picks the session modes spoken: `"prefer-v2"` (the default: the v2
/// session with iris-rpc peers that offer it, the legacy protocol with iris-rpc 0.2.20 peers),
/// `"legacy"` (behave exactly as 0.2.20) or `"require-v2"` (refuse legacy peers: a server
/// reports an `IRIS_EVENT_ERROR` with `IRIS_ERR_AUTH`, a client never connects and reports
/// the same). Any other value is `IRIS_ERR_CONFIG`. The mode negotiated with each peer is the
/// `mode` of `iris_client_peers` / `iris_server_peers`.
pub struct iris_options {
    map: Map<String, Value>,
}

impl iris_options {
    /// The core options; fails when incomplete (no secret) or invalid.
    pub(crate) fn build(&self) -> FfiResult<iris::Options> {
        Ok(iris::Options::from_json(&Value::Object(self.map.clone()))?)
    }

    /// Sets `key`, keeping the old state when the result would be invalid.
    fn set(&mut self, key: &str, value: Value) -> FfiResult<()> {
        let mut map = self.map.clone();
        map.insert(key.to_owned(), value);
        check(&map)?;
        self.map = map;
        Ok(())
    }
}

/// Validates everything but the presence of the secret, which may come later.
fn check(map: &Map<String, Value>) -> FfiResult<()> {
    let mut probe = map.clone();
    if !probe.contains_key("auth") && !probe.contains_key("secret") {
        probe.insert("auth".into(), Value::String("probe".into()));
    }
    iris::Options::from_json(&Value::Object(probe))?;
    Ok(())
}

unsafe fn options_mut<'a>(p: *mut iris_options) -> FfiResult<&'a mut iris_options> {
    p.as_mut().ok_or_else(|| FfiError::null("options"))
}

/// Creates options holding only the shared secret (`auth`). Free with `iris_options_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_new(
    secret: *const c_char,
    options_out: *mut *mut iris_options,
) -> iris_result {
    guard(|| {
        need_out(options_out, "options_out")?;
        let secret = arg_str(secret, "secret")?;
        let mut map = Map::new();
        map.insert("auth".into(), Value::String(secret.to_owned()));
        check(&map)?;
        *options_out = Box::into_raw(Box::new(iris_options { map }));
        Ok(())
    })
}

/// Creates options from a legacy option object as JSON text (`len` bytes, or NUL-terminated
/// when `len` is 0), for example `{"auth":"s","address":"127.0.0.1:4488","cipher":false}`.
/// The secret may be left out here and set later.
#[no_mangle]
pub unsafe extern "C" fn iris_options_from_json(
    json: *const c_char,
    len: usize,
    options_out: *mut *mut iris_options,
) -> iris_result {
    guard(|| {
        need_out(options_out, "options_out")?;
        let text = arg_text(json, len, "json")?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            FfiError::new(
                iris_result::IRIS_ERR_INVALID_JSON,
                format!("options are not valid JSON: {e}"),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(FfiError::new(
                iris_result::IRIS_ERR_INVALID_JSON,
                "options must be a JSON object",
            ));
        };
        check(&map)?;
        *options_out = Box::into_raw(Box::new(iris_options { map }));
        Ok(())
    })
}

/// Sets option `key` to a value given as JSON text, e.g. `("routes", "[\"u1\"]")`. An invalid
/// value leaves the options unchanged and returns `IRIS_ERR_CONFIG`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_set_json(
    options: *mut iris_options,
    key: *const c_char,
    value_json: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(options)?;
        let key = arg_str(key, "key")?;
        let text = arg_str(value_json, "value_json")?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            FfiError::new(
                iris_result::IRIS_ERR_INVALID_JSON,
                format!("value is not valid JSON: {e}"),
            )
        })?;
        o.set(key, value)
    })
}

/// Sets option `key` to a string, e.g. `("uuid", "...")`, `("port", "127.0.0.1:0")`,
/// `("security", "require-v2")`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_set_string(
    options: *mut iris_options,
    key: *const c_char,
    value: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(options)?;
        let key = arg_str(key, "key")?;
        let value = arg_str(value, "value")?;
        o.set(key, Value::String(value.to_owned()))
    })
}

/// Sets option `key` to an integer, e.g. `("timeout", 5000)` or `("port", 4488)`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_set_int(
    options: *mut iris_options,
    key: *const c_char,
    value: i64,
) -> iris_result {
    guard(|| {
        let o = options_mut(options)?;
        let key = arg_str(key, "key")?;
        o.set(key, Value::from(value))
    })
}

/// Sets option `key` to a boolean, e.g. `("cipher", false)`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_set_bool(
    options: *mut iris_options,
    key: *const c_char,
    value: bool,
) -> iris_result {
    guard(|| {
        let o = options_mut(options)?;
        let key = arg_str(key, "key")?;
        o.set(key, Value::Bool(value))
    })
}

/// Sets `certificates`: `key` and `cert` (required) and `ca` (NULL for none), each either PEM
/// text (anything containing `-----BEGIN`) or a path to a PEM file. Files are read when the
/// client or server starts.
#[no_mangle]
pub unsafe extern "C" fn iris_options_set_certificates(
    options: *mut iris_options,
    key: *const c_char,
    cert: *const c_char,
    ca: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(options)?;
        let mut certs = Map::new();
        certs.insert("key".into(), arg_str(key, "key")?.into());
        certs.insert("cert".into(), arg_str(cert, "cert")?.into());
        if let Some(ca) = arg_opt_str(ca, "ca")? {
            certs.insert("ca".into(), ca.into());
        }
        o.set("certificates", Value::Object(certs))
    })
}

/// Adds a server address `host:port` for a client (one stream per address).
#[no_mangle]
pub unsafe extern "C" fn iris_options_add_address(
    options: *mut iris_options,
    address: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(options)?;
        let address = arg_str(address, "address")?;
        let mut list = match o.map.get("address") {
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        list.push(Value::String(address.to_owned()));
        o.set("address", Value::Array(list))
    })
}

/// The options as a JSON object text (certificates included as given). Free the string with
/// `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_to_json(
    options: *const iris_options,
    json_out: *mut *mut c_char,
) -> iris_result {
    guard(|| {
        need_out(json_out, "json_out")?;
        let o = options.as_ref().ok_or_else(|| FfiError::null("options"))?;
        let text = Value::Object(o.map.clone()).to_string();
        *json_out = owned_c_string(&text)?;
        Ok(())
    })
}

/// Frees options. NULL does nothing. Clients and servers keep their own copy, so options may
/// be freed right after `iris_client_connect` or `iris_server_bind`.
#[no_mangle]
pub unsafe extern "C" fn iris_options_free(options: *mut iris_options) {
    crate::result::guard_value((), || {
        if !options.is_null() {
            drop(Box::from_raw(options));
        }
    })
}

/// Generates a self-signed key and certificate for `localhost`, `127.0.0.1` and `::1`, as PEM
/// texts, for tests and demos. Free both with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_self_signed_pem(
    key_pem_out: *mut *mut c_char,
    cert_pem_out: *mut *mut c_char,
) -> iris_result {
    guard(|| {
        need_out(key_pem_out, "key_pem_out")?;
        need_out(cert_pem_out, "cert_pem_out")?;
        let (key, cert) = iris::tls::self_signed_pem(&["localhost", "127.0.0.1", "::1"])?;
        let key = owned_c_string(&key)?;
        let cert = match owned_c_string(&cert) {
            Ok(c) => c,
            Err(e) => {
                crate::strings::iris_string_free(key);
                return Err(e);
            }
        };
        *key_pem_out = key;
        *cert_pem_out = cert;
        Ok(())
    })
}
