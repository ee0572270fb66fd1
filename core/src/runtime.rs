//! The runtime the adapters (C, Node, Python) run the core on: one lazily built, named
//! multi-thread tokio runtime per process. Rust users of the crate bring their own runtime and
//! never need this module.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

struct Held {
    pid: u32,
    runtime: Arc<tokio::runtime::Runtime>,
}

static RUNTIME: Mutex<Option<Held>> = Mutex::new(None);

/// The shared runtime, built on first use.
///
/// After `fork` the child cannot use the parent's worker threads (they do not exist there), so
/// a child process gets a runtime of its own on first use; the parent's is leaked, never
/// dropped, as dropping it would try to join threads that are not there.
pub fn get() -> Result<Arc<tokio::runtime::Runtime>> {
    let pid = std::process::id();
    let mut held = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = held.as_ref() {
        if h.pid == pid {
            return Ok(h.runtime.clone());
        }
    }
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("iris-rpc")
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the runtime: {e}")))?,
    );
    if let Some(old) = held.replace(Held {
        pid,
        runtime: runtime.clone(),
    }) {
        std::mem::forget(old);
    }
    Ok(runtime)
}
