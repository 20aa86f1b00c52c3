//! baton's own log lines: `TIME baton LEVEL message` on stderr, so they stand
//! out among the workers' output that baton passes through. The level comes
//! from `BATON_LOG` (error, warn, info, debug, trace; default info).

use std::fmt;

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

/// baton's output streams, non-blocking, and the guards that flush them at
/// exit (keep them alive until then).
pub struct Streams {
    pub stdout: tracing_appender::non_blocking::NonBlocking,
    pub stderr: tracing_appender::non_blocking::NonBlocking,
    /// Held only to be dropped at exit: dropping flushes the queue.
    _guards: Vec<tracing_appender::non_blocking::WorkerGuard>,
}

fn stream<W: std::io::Write + Send + 'static>(
    name: &str,
    w: W,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(name)
        .finish(w)
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
        .with_writer(stderr.clone())
        .with_ansi(false)
        .event_format(BatonFormat)
        .init();
    Streams {
        stdout,
        stderr,
        _guards: vec![g1, g2],
    }
}
