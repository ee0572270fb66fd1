//! The core's log records (its `tracing` events), handed to Python's `logging` instead of being
//! printed: a subscriber queues them here, bounded, and the package's `iris-rpc-log` thread
//! pulls them in batches (with the GIL released while it waits) and logs them on the
//! `iris_rpc` logger.
//!
//! Nothing is formatted below the level Python asked for (`set_level`, kept in step with the
//! logger's effective level), so a quiet logger costs one atomic load per would-be record.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, Once};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Records waiting for Python; past this the oldest are dropped (and counted).
const QUEUE_MAX: usize = 4096;
/// Records handed over per pull.
const BATCH_MAX: usize = 256;

/// The most verbose level forwarded: 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);

/// One record: level (1 error ... 5 trace), target (the Rust module), and the text (spans,
/// message and fields, as `span{k=v}: message k=v`).
pub(crate) type Record = (u8, String, String);

#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    dropped: u64,
    closed: bool,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    records: VecDeque::new(),
    dropped: 0,
    closed: false,
});
static READY: Condvar = Condvar::new();

fn queue() -> std::sync::MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|p| p.into_inner())
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Forwards records up to `level` (0: none) from now on; installs the subscriber the first
/// time, unless the process has one already (then that one keeps the records).
pub(crate) fn set_level(level: u8) {
    MAX_LEVEL.store(level.min(5), Ordering::Relaxed);
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = tracing_subscriber::registry().with(Forward).try_init();
    });
}

/// Waits up to `timeout` for records and takes up to [`BATCH_MAX`] of them; empty on timeout
/// or once closed.
pub(crate) fn take(timeout: Duration) -> Vec<Record> {
    let mut q = queue();
    if q.records.is_empty() && q.dropped == 0 && !q.closed {
        q = READY
            .wait_timeout(q, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    let mut out = Vec::new();
    if q.dropped > 0 {
        out.push((
            2,
            "iris_rpc".to_owned(),
            format!(
                "{} log records dropped: Python did not take them fast enough",
                q.dropped
            ),
        ));
        q.dropped = 0;
    }
    let n = q.records.len().min(BATCH_MAX);
    out.extend(q.records.drain(..n));
    out
}

/// With `true`, wakes [`take`] and makes it return at once from then on (interpreter exit);
/// `false` undoes that (a forked child starts its own thread again).
pub(crate) fn set_closed(closed: bool) {
    queue().closed = closed;
    READY.notify_all();
}

/// Fields as ` k=v` (and the `message` field apart).
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }
}

/// A span's fields, formatted once when it is made.
struct SpanFields(String);

struct Forward;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level can change at any time: ask `enabled` each time, never cache a "no".
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        // Spans whatever their level (one per connection): a warning names its connection.
        metadata.is_span() || level_number(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(f.rest));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let ext = span.extensions();
                let fields = ext
                    .get::<SpanFields>()
                    .map(|f| f.0.trim_start())
                    .unwrap_or("");
                let _ = write!(text, "{}{{{}}}: ", span.name(), fields);
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        text.push_str(&f.message);
        text.push_str(&f.rest);
        let record = (level_number(meta.level()), meta.target().to_owned(), text);
        let mut q = queue();
        if q.records.len() == QUEUE_MAX {
            q.records.pop_front();
            q.dropped += 1;
        }
        q.records.push_back(record);
        drop(q);
        READY.notify_one();
    }
}
