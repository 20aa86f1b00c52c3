//! baton's own log lines: `TIME baton LEVEL message` on stderr, so they stand
//! out among the workers' output that baton passes through. The level comes
//! from `BATON_LOG` (error, warn, info, debug, trace; default info).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

struct BatonFormat;

impl<S, N> FormatEvent<S, N> for BatonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN ",
            Level::INFO => "INFO ",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        write!(writer, "{now} baton {level} ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// How many lines each output stream may queue before dropping.
const QUEUED_LINES: usize = 4_096;

/// How long [`Flushable::flush`] waits for the queue to be written out: a
/// stream nobody reads is given up on.
const FLUSH_AT_MOST: Duration = Duration::from_millis(250);

/// baton's output streams, non-blocking, and the guards that flush them at
/// exit (keep them alive until then).
pub struct Streams {
    pub stdout: Flushable,
    pub stderr: Flushable,
    /// Held only to be dropped at exit: dropping flushes the queue.
    _guards: Vec<tracing_appender::non_blocking::WorkerGuard>,
}

/// A non-blocking stream whose `flush` waits (at most [`FLUSH_AT_MOST`])
/// until everything queued before it has been written: baton flushes before
/// it executes a new image in place, which would otherwise lose the lines
/// still queued (its own and its workers').
///
/// tracing-appender's writer has no flush of its own (its `flush` returns at
/// once), so a marker goes through the queue and the writing thread, seeing
/// it, says so instead of writing it.
#[derive(Clone)]
pub struct Flushable {
    queue: tracing_appender::non_blocking::NonBlocking,
    marks: Arc<Marks>,
}

/// The markers sent and the last one written out.
#[derive(Default)]
struct Marks {
    sent: AtomicU64,
    written: Mutex<u64>,
    changed: Condvar,
}

/// What starts a marker; no output line starts with a NUL byte and this.
const MARKER: &[u8] = b"\0baton-flush ";

impl Write for Flushable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.queue.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let n = self.marks.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut marker = MARKER.to_vec();
        marker.extend_from_slice(n.to_string().as_bytes());
        // A full queue drops the marker (the stream is lossy): then the
        // wait below runs out.
        self.queue.write_all(&marker)?;
        let deadline = Instant::now() + FLUSH_AT_MOST;
        let mut written = self
            .marks
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *written < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            written = self
                .marks
                .changed
                .wait_timeout(written, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

/// The writing thread's end: writes lines, and notes markers.
struct Marked<W> {
    out: W,
    marks: Arc<Marks>,
}

impl<W: Write> Write for Marked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(n) = buf.strip_prefix(MARKER) {
            let n = std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            // Written out means out of baton: into the pipe or the file.
            let _ = self.out.flush();
            let mut written = self
                .marks
                .written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *written = (*written).max(n);
            self.marks.changed.notify_all();
            return Ok(buf.len());
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn stream<W: Write + Send + 'static>(
    name: &str,
    w: W,
) -> (Flushable, tracing_appender::non_blocking::WorkerGuard) {
    let marks = Arc::new(Marks::default());
    let (queue, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(name)
        .finish(Marked {
            out: w,
            marks: Arc::clone(&marks),
        });
    (Flushable { queue, marks }, guard)
}

pub fn init() -> Streams {
    let level = match std::env::var("BATON_LOG").as_deref().map(str::trim) {
        Ok("error") => Level::ERROR,
        Ok("warn") => Level::WARN,
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        _ => Level::INFO,
    };
    let (stdout, g1) = stream("baton-stdout", std::io::stdout());
    let (stderr, g2) = stream("baton-stderr", std::io::stderr());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(stderr.queue.clone())
        .with_ansi(false)
        .event_format(BatonFormat)
        .init();
    Streams {
        stdout,
        stderr,
        _guards: vec![g1, g2],
    }
}
