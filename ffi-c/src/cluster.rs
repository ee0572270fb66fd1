//! `iris_cluster_options`: how a router reaches the NATS servers of its cluster of routers
//! (`docs/CLUSTER.md`), kept as the JSON object `ClusterOptions::from_json` reads (the one the
//! Node and Python adapters pass) and checked on every change, as `iris_options` is.

use std::ffi::c_char;

use serde_json::{Map, Value};

use crate::result::{guard, guard_value, iris_result, FfiError, FfiResult};
use crate::strings::{arg_str, arg_text, need_out};

/// Options of a router's cluster: the NATS servers, the cluster's name, one credential
/// (token, user and password, NKey seed or credentials file), TLS. Routers started with the
/// same `name` on the same NATS form one router, spread (`iris_router_start_clustered`).
/// The library never writes a credential to its logs or error messages.
pub struct iris_cluster_options {
    map: Map<String, Value>,
}

impl iris_cluster_options {
    /// The core options; they were checked when set, so this fails only on a bug.
    pub(crate) fn build(&self) -> FfiResult<iris::ClusterOptions> {
        Ok(iris::ClusterOptions::from_json(
            &Value::Object(self.map.clone()).to_string(),
        )?)
    }

    /// Sets the members `pairs`, keeping the old state when the result would be invalid.
    fn set(&mut self, pairs: &[(&str, Value)]) -> FfiResult<()> {
        let mut map = self.map.clone();
        for (k, v) in pairs {
            map.insert((*k).to_owned(), v.clone());
        }
        iris::ClusterOptions::from_json(&Value::Object(map.clone()).to_string())?;
        self.map = map;
        Ok(())
    }
}

unsafe fn options_mut<'a>(p: *mut iris_cluster_options) -> FfiResult<&'a mut iris_cluster_options> {
    p.as_mut().ok_or_else(|| FfiError::null("cluster options"))
}

/// Creates cluster options for `servers`: NATS addresses separated by commas,
/// `"nats://HOST:PORT,nats://HOST:PORT"` (`tls://` requires TLS). Any of them will do; NATS
/// tells the router about the others. The cluster's name is `"iris"` until set. No server is
/// `IRIS_ERR_CONFIG`. Free with `iris_cluster_options_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_new(
    servers: *const c_char,
    cluster_out: *mut *mut iris_cluster_options,
) -> iris_result {
    guard(|| {
        need_out(cluster_out, "cluster_out")?;
        let servers = arg_str(servers, "servers")?;
        let mut o = iris_cluster_options { map: Map::new() };
        o.set(&[("servers", Value::String(servers.to_owned()))])?;
        *cluster_out = Box::into_raw(Box::new(o));
        Ok(())
    })
}

/// Creates cluster options from a JSON object text (`len` bytes, or NUL-terminated when `len`
/// is 0) with the members the Node and Python routers take: `servers` (a string or an array),
/// `name`, `token`, `user` and `password`, `nkeySeed`, `credentialsFile`, `requireTls`,
/// `rootCertificates`, `clientCertificate` and `clientKey`, `rosterWaitMs`, `queue`
/// (snake_case spellings too). A bare JSON string is the servers. An unknown member, a half
/// pair or two credentials are `IRIS_ERR_CONFIG`; text that is not JSON `IRIS_ERR_INVALID_JSON`.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_from_json(
    json: *const c_char,
    len: usize,
    cluster_out: *mut *mut iris_cluster_options,
) -> iris_result {
    guard(|| {
        need_out(cluster_out, "cluster_out")?;
        let text = arg_text(json, len, "json")?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            FfiError::new(
                iris_result::IRIS_ERR_INVALID_JSON,
                format!("cluster options are not valid JSON: {e}"),
            )
        })?;
        let map = match value {
            Value::Object(map) => map,
            Value::String(s) => Map::from_iter([("servers".to_owned(), Value::String(s))]),
            _ => {
                return Err(FfiError::new(
                    iris_result::IRIS_ERR_INVALID_JSON,
                    "cluster options must be a JSON object or a string of servers",
                ))
            }
        };
        let mut o = iris_cluster_options { map: Map::new() };
        let pairs: Vec<(&str, Value)> = map.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        o.set(&pairs)?;
        *cluster_out = Box::into_raw(Box::new(o));
        Ok(())
    })
}

/// Sets the cluster's name, the prefix of its NATS subjects: routers with the same name form
/// one cluster (default `"iris"`). Letters, digits, `_` and `-` only, else `IRIS_ERR_CONFIG`.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_name(
    cluster: *mut iris_cluster_options,
    name: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        o.set(&[("name", arg_str(name, "name")?.into())])
    })
}

/// Authenticates to NATS with a token. One credential only: a second kind (user and password,
/// NKey seed, credentials file) is `IRIS_ERR_CONFIG` and leaves the options unchanged.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_token(
    cluster: *mut iris_cluster_options,
    token: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        o.set(&[("token", arg_str(token, "token")?.into())])
    })
}

/// Authenticates to NATS with a user name and password (both required). One credential only,
/// as for `iris_cluster_options_set_token`.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_user_password(
    cluster: *mut iris_cluster_options,
    user: *const c_char,
    password: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        let user = arg_str(user, "user")?;
        let password = arg_str(password, "password")?;
        o.set(&[("user", user.into()), ("password", password.into())])
    })
}

/// Authenticates to NATS with an NKey: its seed (`"SU..."`). One credential only, as for
/// `iris_cluster_options_set_token`; a malformed seed fails when the router starts.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_nkey_seed(
    cluster: *mut iris_cluster_options,
    seed: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        o.set(&[("nkeySeed", arg_str(seed, "seed")?.into())])
    })
}

/// Authenticates to NATS with a `.creds` file (a JWT and an NKey seed), read when the router
/// starts (a missing or bad file is `IRIS_ERR_CONFIG` then). One credential only, as for
/// `iris_cluster_options_set_token`.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_credentials_file(
    cluster: *mut iris_cluster_options,
    path: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        o.set(&[("credentialsFile", arg_str(path, "path")?.into())])
    })
}

/// Requires TLS to NATS (`tls://` addresses imply it); a server that does not offer it is
/// refused when the router starts.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_require_tls(
    cluster: *mut iris_cluster_options,
    require: bool,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        o.set(&[("requireTls", Value::Bool(require))])
    })
}

/// Trusts the CA certificates of this PEM file for the NATS servers' certificates, read when
/// the router starts.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_set_ca_file(
    cluster: *mut iris_cluster_options,
    path: *const c_char,
) -> iris_result {
    guard(|| {
        let o = options_mut(cluster)?;
        o.set(&[("rootCertificates", arg_str(path, "path")?.into())])
    })
}

/// Frees cluster options. NULL does nothing. A router keeps its own copy, so they may be
/// freed right after `iris_router_start_clustered`.
#[no_mangle]
pub unsafe extern "C" fn iris_cluster_options_free(cluster: *mut iris_cluster_options) {
    guard_value((), || {
        if !cluster.is_null() {
            drop(Box::from_raw(cluster));
        }
    })
}
