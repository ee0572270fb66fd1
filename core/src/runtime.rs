//! The runtime the adapters (C, Node, Python) run the core on: one lazily built, named
//! multi-thread tokio runtime per process (`TOKIO_WORKER_THREADS` workers when set, as for
//! any tokio runtime). Rust users of the crate bring their own runtime and
//! never need this module.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

struct Held {
    pid: u32,
    runtime: Arc<tokio::runtime::Runtime>,
}

static RUNTIME: Mutex<Option<Held>> = Mutex::new(None);

/// How many workers the shared runtime gets: `TOKIO_WORKER_THREADS` when set (as for any tokio
/// runtime), else one per CPU, at most 4.
fn worker_threads(setting: Option<String>) -> Result<usize> {
    match setting {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "TOKIO_WORKER_THREADS must be a whole number of threads above 0, not {v:?}"
                ))
            }),
        None => Ok(std::thread::available_parallelism().map_or(2, |n| n.get().min(4))),
    }
}

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
            .worker_threads(worker_threads(std::env::var("TOKIO_WORKER_THREADS").ok())?)
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

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn worker_threads_follow_tokio_worker_threads() {
        assert_eq!(worker_threads(Some("3".into())).ok(), Some(3));
        assert_eq!(worker_threads(Some(" 1 ".into())).ok(), Some(1));
        let default = worker_threads(None).unwrap_or(0);
        assert!((1..=4).contains(&default), "{default}");
        for bad in ["0", "-1", "two", ""] {
            let err = worker_threads(Some(bad.into())).unwrap_err().to_string();
            assert!(err.contains("TOKIO_WORKER_THREADS"), "{bad}: {err}");
        }
    }
}
