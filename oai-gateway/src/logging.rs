//! Log output: `tracing`'s text lines, or one JSON object per line (`--log-format json`),
//! written to standard error by a thread of their own ([`LogGuard`]).
//!
//! A request's task formats its access line and appends it to a shared buffer (a short lock,
//! no system call, no thread woken); the writer thread writes what has gathered every 25 ms,
//! in one write. Writing each line to standard error from the request's task took a system
//! call under the standard-error lock on the request's path (and blocks when the reader of a
//! pipe falls behind); handing each line to a thread through a channel woke that thread once
//! per line (a futex wake and a context switch per request, 3-4 % of the gateway's CPU time
//! at 1,000 requests/s in `perf`). A buffer past 4 MiB (the thread is behind) is written by
//! the caller that finds it so: lines are never dropped, only slowed down.
//!
//! A JSON line has `ts` (Unix time in seconds, with milliseconds), `level`, `target`,
//! `message`, and the event's fields as keys: an access-log line (target
//! `oai_gateway::access`) has `method`, `path`, `status`, `upstream_status`, `attempts`,
//! `latency_ms`, `request_id`, `access_key`, `error` and `peer`. Written without
//! `tracing-subscriber`'s `json` feature (which brings `tracing-serde`): the fields are
//! collected into a `serde_json` map.

use std::fmt;
use std::io::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The event format of `--log-format json`: one JSON object per line (see the
/// [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut map = Map::new();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0);
        map.insert("ts".into(), Value::from(ts));
        let meta = event.metadata();
        map.insert("level".into(), Value::from(meta.level().as_str()));
        map.insert("target".into(), Value::from(meta.target()));
        event.record(&mut Fields(&mut map));
        writeln!(writer, "{}", Value::Object(map))
    }
}

/// How often the writer thread writes what has gathered.
const EVERY: Duration = Duration::from_millis(25);

/// Past this many bytes gathered, the caller that finds it so writes them.
const HIGH_WATER: usize = 4 * 1024 * 1024;

/// The lines gathered, and the lock that keeps writes in order.
#[derive(Debug)]
struct Shared {
    lines: Mutex<Vec<u8>>,
    writing: Mutex<()>,
    /// [`HIGH_WATER`] (tests use less).
    high_water: usize,
}

impl Shared {
    fn new(high_water: usize) -> Self {
        Shared {
            lines: Mutex::new(Vec::new()),
            writing: Mutex::new(()),
            high_water,
        }
    }

    /// Writes what has gathered so far, after any write in progress.
    fn write_out(&self) {
        let _order = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            let mut err = io::stderr().lock();
            let _ = err.write_all(&batch);
            let _ = err.flush();
        }
    }
}

/// A [`MakeWriter`] whose writers append their line to the buffer the writer thread writes
/// (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Background {
    shared: Arc<Shared>,
}

/// One event's line, appended to the buffer when dropped.
#[derive(Debug)]
pub struct Line {
    buf: Vec<u8>,
    shared: Arc<Shared>,
}

impl io::Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let full = {
            let mut lines = self.shared.lines.lock().unwrap_or_else(|e| e.into_inner());
            lines.extend_from_slice(&self.buf);
            lines.len() >= self.shared.high_water
        };
        if full {
            self.shared.write_out();
        }
    }
}

impl<'a> MakeWriter<'a> for Background {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            shared: self.shared.clone(),
        }
    }
}

/// Writes the lines still gathered when dropped: keep it until the process ends, so that
/// the last lines (the drain's) are written.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
}

impl LogGuard {
    /// Writes the lines gathered so far, now.
    pub fn flush(&self) {
        self.shared.write_out();
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Starts the writer thread: a [`Background`] writer for a subscriber, and the guard that
/// writes what is left at the end. If the thread cannot be started, lines are written when
/// 4 MiB have gathered and by the guard.
pub fn background() -> (Background, LogGuard) {
    let shared = Arc::new(Shared::new(HIGH_WATER));
    let writer = Arc::downgrade(&shared);
    let _ = std::thread::Builder::new()
        .name("oai-gateway-log".into())
        .spawn(move || loop {
            std::thread::sleep(EVERY);
            match writer.upgrade() {
                Some(shared) => shared.write_out(),
                None => return,
            }
        });
    (
        Background {
            shared: shared.clone(),
        },
        LogGuard { shared },
    )
}

/// Installs the global subscriber: `RUST_LOG` (default `info`) to standard error through the
/// writer thread, as text or as JSON lines. Keep the guard until the process ends.
#[must_use = "keep the guard until the process ends: it writes the last lines"]
pub fn init(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = background();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(writer: &Background) -> String {
        String::from_utf8(writer.shared.lines.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_gathered_whole_and_in_order() {
        let writer = Background {
            shared: Arc::new(Shared::new(HIGH_WATER)),
        };
        for i in 0..3 {
            let mut line = writer.make_writer();
            write!(line, "line {i}").unwrap();
            writeln!(line, " end").unwrap();
        }
        assert_eq!(gathered(&writer), "line 0 end\nline 1 end\nline 2 end\n");
    }

    #[test]
    fn the_guard_writes_what_has_gathered() {
        // No writer thread: only the guard can have written the line.
        let shared = Arc::new(Shared::new(HIGH_WATER));
        let writer = Background {
            shared: shared.clone(),
        };
        let guard = LogGuard { shared };
        writeln!(writer.make_writer(), "oai-gateway logging test line").unwrap();
        guard.flush();
        assert_eq!(gathered(&writer), "", "written out (to standard error)");
    }

    #[test]
    fn past_the_high_water_mark_the_caller_writes() {
        let writer = Background {
            shared: Arc::new(Shared::new(16)),
        };
        writeln!(writer.make_writer(), "gathered").unwrap();
        assert_eq!(gathered(&writer), "gathered\n");
        writeln!(writer.make_writer(), "this line passes the mark").unwrap();
        assert_eq!(gathered(&writer), "", "the caller wrote the whole buffer");
    }
}
