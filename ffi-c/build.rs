//! Generates the C header from this crate's source with the pinned cbindgen, into `OUT_DIR`,
//! with the version macros of the workspace version. The crate's `header` test compares it
//! with the committed `include/iris_rpc.h`.
//!
//! Also gives the shared library its SONAME, `libiris_rpc.so.<ABI>`: the major version, or
//! `0.<minor>` while the major is 0 (as cargo-c and semver have it: 0.3 and 0.4 may differ).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let patch = std::env::var("CARGO_PKG_VERSION_PATCH").unwrap_or_default();
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let abi = if major == "0" {
        format!("0.{minor}")
    } else {
        major.clone()
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libiris_rpc.so.{abi}");
    }
    let version_macros = format!(
        "\n// The version of this header; iris_version() gives the library's at run time.\n\
         #define IRIS_RPC_VERSION_MAJOR {major}\n\
         #define IRIS_RPC_VERSION_MINOR {minor}\n\
         #define IRIS_RPC_VERSION_PATCH {patch}\n\
         #define IRIS_RPC_VERSION \"{version}\"\n\
         // IRIS_RPC_VERSION_MAJOR * 10000 + IRIS_RPC_VERSION_MINOR * 100 + IRIS_RPC_VERSION_PATCH\n\
         #define IRIS_RPC_VERSION_NUMBER ({major} * 10000 + {minor} * 100 + {patch})"
    );
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("iris_rpc.h");
    let generated = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| e.to_string())
        .and_then(|mut config| {
            config.after_includes = Some(version_macros);
            cbindgen::Builder::new()
                .with_config(config)
                .with_src(crate_dir.join("src/lib.rs"))
                .generate()
                .map_err(|e| e.to_string())
        });
    let text = match generated {
        Ok(bindings) => {
            let mut buf = Vec::new();
            bindings.write(&mut buf);
            buf
        }
        Err(e) => {
            // The library still builds; the header test reports the failure.
            println!("cargo:warning=cbindgen could not generate the header: {e}");
            format!("cbindgen failed: {e}\n").into_bytes()
        }
    };
    if let Err(e) = std::fs::write(&out, text) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
