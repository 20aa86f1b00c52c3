//! Worker output: each worker's stdout and stderr come through pipes so
//! baton can keep the last lines (to explain a failed start), and are passed
//! on to baton's own stdout and stderr a line at a time, so lines of
//! different workers never interleave mid-line.
//!
//! Where they are passed on is a [`Sinks`]. The `baton` binary gives
//! non-blocking, lossy sinks: a supervisor whose stdout is a pipe that
//! nobody reads (a stalled log collector) must keep supervising, and its
//! workers must keep serving, rather than block on a full pipe. Measured
//! before this existed: with stderr unread, baton froze in `write` after
//! about 115 reloads (the pipe's 64 KiB), and so did every worker writing
//! to its own full pipe.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;

/// How many lines of each worker's output are kept for error reports.
pub const TAIL_LINES: usize = 20;
/// A line longer than this is passed on in pieces.
const MAX_LINE: usize = 64 * 1024;

/// The last lines a worker printed (stdout and stderr together).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    pub fn push(&mut self, line: &[u8]) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        // Keep reports readable even for very long lines.
        let shown: String = text.chars().take(500).collect();
        self.lines.push_back(shown);
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Which of baton's streams a pipe goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where worker output goes: baton's stdout and stderr, or stand-ins.
pub struct Sinks {
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sinks")
    }
}

impl Sinks {
    /// This process's stdout and stderr, written synchronously.
    pub fn std() -> Self {
        Self {
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }

    /// Waits (briefly: the sinks bound it) until what was written so far is
    /// out of baton, before an exec in place.
    pub fn flush(&mut self) {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        // Output is best effort, supervision is not: a closed stream must
        // not take baton down.
        let _ = match stream {
            Stream::Stdout => self.stdout.write_all(bytes),
            Stream::Stderr => self.stderr.write_all(bytes),
        };
    }
}

/// The read end of one worker pipe, with a partial line.
#[derive(Debug)]
pub struct Pipe {
    pub fd: OwnedFd,
    pub stream: Stream,
    /// The start of a line not finished yet.
    pub partial: Vec<u8>,
}

impl Pipe {
    pub fn new(fd: OwnedFd, stream: Stream) -> Self {
        Self {
            fd,
            stream,
            partial: Vec::new(),
        }
    }

    /// Reads what is available, passes complete lines on and records them in
    /// `tail`. Returns `false` at end of file (the worker closed its end).
    pub fn pump(&mut self, tail: &mut Tail, sinks: &mut Sinks) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.flush(tail, sinks);
                    return false;
                }
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    self.emit_lines(tail, sinks);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(e) => {
                    tracing::debug!("worker pipe read failed: {e}");
                    self.flush(tail, sinks);
                    return false;
                }
            }
        }
    }

    fn emit_lines(&mut self, tail: &mut Tail, sinks: &mut Sinks) {
        let mut start = 0;
        while let Some(pos) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos + 1;
            sinks.write(self.stream, &self.partial[start..end]);
            tail.push(&self.partial[start..end]);
            start = end;
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE {
            self.flush(tail, sinks);
        }
    }

    /// Passes on a last line without a newline.
    pub fn flush(&mut self, tail: &mut Tail, sinks: &mut Sinks) {
        if !self.partial.is_empty() {
            let mut line = std::mem::take(&mut self.partial);
            tail.push(&line);
            line.push(b'\n');
            sinks.write(self.stream, &line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        for i in 0..(TAIL_LINES + 5) {
            t.push(format!("line {i}\n").as_bytes());
        }
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 5");
        assert_eq!(
            *lines.last().expect("last"),
            format!("line {}", TAIL_LINES + 4)
        );
    }

    #[test]
    fn pipe_splits_lines_and_flushes_the_rest_at_eof() {
        let (r, w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .expect("pipe");
        let mut p = Pipe::new(r, Stream::Stderr);
        let mut tail = Tail::default();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sinks = Sinks {
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(Shared(std::sync::Arc::clone(&seen))),
        };
        rustix::io::write(&w, b"first\nsec").expect("write");
        assert!(p.pump(&mut tail, &mut sinks));
        assert_eq!(tail.lines().collect::<Vec<_>>(), ["first"]);
        rustix::io::write(&w, b"ond\nlast").expect("write");
        drop(w);
        assert!(!p.pump(&mut tail, &mut sinks));
        assert_eq!(
            tail.lines().collect::<Vec<_>>(),
            ["first", "second", "last"]
        );
        let passed_on = seen.lock().expect("lock").clone();
        assert_eq!(passed_on, b"first\nsecond\nlast\n");
    }
}
