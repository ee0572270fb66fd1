//! # iris-rpc-ffi
//!
//! The C ABI of iris-rpc, built as `libiris_rpc` (`.so` and `.a`) with the header
//! `include/iris_rpc.h`, which cbindgen generates from this crate.
//!
//! Conventions (see `ffi-c/README.md` for the full text):
//! - Opaque handles are made by `iris_<object>_new`/`_connect`/`_bind` and released with
//!   `iris_<object>_free`; `_free(NULL)` does nothing.
//! - Every fallible call returns an [`iris_result`]; out-parameters are written only when it is
//!   `IRIS_OK`, and [`iris_last_error_message`] tells what went wrong on this thread.
//! - Strings passed in are UTF-8; message texts are JSON objects. Strings handed out by the
//!   library are released with [`iris_string_free`].
//! - No panic crosses the boundary: each exported function runs inside a panic guard.
//!
//! Safety contract of every function: pointer arguments are NULL or valid for the access the
//! documentation describes, handles are live (not yet freed), and a handle is not freed while
//! another thread is still using it. Everything else is checked and reported as an error.

#![warn(missing_docs)]
#![allow(non_camel_case_types)]
// The safety contract is the same for every function and is stated once, above and in the
// README, rather than repeated in each function's documentation (and so in the header).
#![allow(clippy::missing_safety_doc)]

mod client;
mod cluster;
mod endpoint;
mod event;
mod multiplexer;
mod options;
mod result;
mod router;
mod server;
mod strings;

pub use client::*;
pub use cluster::*;
pub use event::*;
pub use multiplexer::*;
pub use options::*;
pub use result::*;
pub use router::*;
pub use server::*;
pub use strings::*;

/// `include/iris_rpc.h` must be what the pinned cbindgen generates from this source now
/// (`build.rs` generates it). `IRIS_BLESS=1 cargo test -p iris-rpc-ffi --lib header` rewrites
/// the committed file.
#[cfg(test)]
mod header {
    use std::path::Path;

    const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/iris_rpc.h"));

    fn committed_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/iris_rpc.h")
    }

    #[test]
    fn committed_header_is_fresh() {
        let path = committed_path();
        if std::env::var_os("IRIS_BLESS").is_some() {
            std::fs::write(&path, GENERATED).expect("write include/iris_rpc.h");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != GENERATED {
            let line = committed
                .lines()
                .zip(GENERATED.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(GENERATED.lines().count()));
            panic!(
                "include/iris_rpc.h is stale (first difference at line {}); regenerate it with \
                 IRIS_BLESS=1 cargo test -p iris-rpc-ffi --lib header",
                line + 1
            );
        }
    }

    #[test]
    fn header_declares_the_surface() {
        for name in [
            "extern \"C\" {",
            "#ifndef IRIS_RPC_H",
            "typedef enum iris_result",
            "typedef enum iris_event_kind",
            "iris_options_new(",
            "iris_client_connect(",
            "iris_server_bind(",
            "iris_router_start(",
            "iris_router_next_event(",
            "iris_router_start_clustered(",
            "iris_cluster_options_new(",
            "iris_event_side(",
            "iris_multiplexer_from_config(",
            "iris_event_link(",
            "iris_client_request(",
            "iris_client_request_cancel(",
            "iris_server_next_event(",
            "iris_request_respond(",
            "iris_last_error_message(",
            "iris_string_free(",
        ] {
            assert!(GENERATED.contains(name), "generated header lacks {name}");
        }
    }

    /// The version macros are the crate's (the workspace's) version, so a C program can check
    /// at compile time what iris_version() reports at run time.
    #[test]
    fn header_carries_the_version() {
        let want = [
            format!("#define IRIS_RPC_VERSION \"{}\"", env!("CARGO_PKG_VERSION")),
            format!(
                "#define IRIS_RPC_VERSION_MAJOR {}",
                env!("CARGO_PKG_VERSION_MAJOR")
            ),
            format!(
                "#define IRIS_RPC_VERSION_MINOR {}",
                env!("CARGO_PKG_VERSION_MINOR")
            ),
            format!(
                "#define IRIS_RPC_VERSION_PATCH {}",
                env!("CARGO_PKG_VERSION_PATCH")
            ),
        ];
        for line in want {
            assert!(GENERATED.contains(&line), "generated header lacks {line}");
        }
    }
}
