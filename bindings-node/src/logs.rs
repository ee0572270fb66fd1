//! The core's log records (its `tracing` events) for JavaScript: the package's `log` emitter
//! (`require('iris-rpc').log.on('log', ...)`) receives each as an object, instead of stderr.
//!
//! One weak ThreadsafeFunction (it never keeps Node's event loop alive) with a bounded queue:
//! a record that finds the queue full is dropped, so a busy or absent JavaScript side costs
//! the network nothing. Nothing is formatted below the level JavaScript asked for.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use napi::bindgen_prelude::{Function, Status};
use napi::threadsafe_function::{
    ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi_derive::napi;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Records on their way to JavaScript; past this they are dropped.
const QUEUE_MAX: usize = 1024;

type LogFn = ThreadsafeFunction<String, UnknownReturnValue, String, Status, false, true, QUEUE_MAX>;

/// The most verbose level forwarded: 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);
static SINK: Mutex<Option<LogFn>> = Mutex::new(None);

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn level_name(n: u8) -> &'static str {
    ["off", "error", "warn", "info", "debug", "trace"][usize::from(n.min(5))]
}

/// Sends the core's records up to `level` (0 off ... 5 trace) to `listener(json)`, or stops
/// with no listener.
#[napi(catch_unwind)]
pub fn set_log_listener(
    listener: Option<Function<'_, String, UnknownReturnValue>>,
    level: u32,
) -> napi::Result<()> {
    crate::init_logging();
    let sink = match listener {
        Some(f) => Some(
            f.build_threadsafe_function::<String>()
                .callee_handled::<false>()
                .weak::<true>()
                .max_queue_size::<QUEUE_MAX>()
                .build()?,
        ),
        None => None,
    };
    let on = sink.is_some();
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    let level = if on { level.min(5) as u8 } else { 0 };
    MAX_LEVEL.store(level, Ordering::Relaxed);
    Ok(())
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.insert(field.name().to_owned(), value.into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .insert(field.name().to_owned(), format!("{value:?}").into());
        }
    }
}

/// A span's name and fields, recorded once when it is made.
struct SpanFields(serde_json::Value);

/// The layer that hands records to [`set_log_listener`]'s function.
pub(crate) struct Forward;

/// Its filter, for this layer alone (a stderr layer beside it has its own): spans whatever
/// their level (one per connection, so a record names its connection), events up to the level
/// JavaScript asked for, checked each time since that can change at any time.
pub(crate) fn filter() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|metadata: &Metadata<'_>| {
        metadata.is_span() || level_number(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    })
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Forward {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            let mut v = f.fields;
            v.insert("name".to_owned(), span.name().into());
            span.extensions_mut().insert(SpanFields(v.into()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = level_number(meta.level());
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    spans.push(f.0.clone());
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let record = serde_json::json!({
            "level": level_name(level),
            "target": meta.target(),
            "message": f.message,
            "fields": f.fields,
            "spans": spans,
        });
        let sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tsfn) = sink.as_ref() {
            // Full queue (JavaScript busy) or Node closing: the record is dropped.
            let _ = tsfn.call(record.to_string(), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}
