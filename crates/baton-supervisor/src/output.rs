//! Worker output: each worker's stdout and stderr come through pipes so
//! baton can keep the last lines (to explain a failed start), and are passed
//! on to baton's own stdout and stderr a line at a time, so lines of
//! different workers never interleave mid-line.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;

/// How many lines of each worker's output are kept for error reports.
pub const TAIL_LINES: usize = 20;
/// A line longer than this is passed on in pieces.
const MAX_LINE: usize = 64 * 1024;

/// The last lines a worker printed (stdout and stderr together).
#[derive(Debug, Default, Clone)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The read end of one worker pipe, with a partial line.
#[derive(Debug)]
pub struct Pipe {
    pub fd: OwnedFd,
    pub stream: Stream,
    partial: Vec<u8>,
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
    pub fn pump(&mut self, tail: &mut Tail) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.flush(tail);
                    return false;
                }
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    self.emit_lines(tail);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(e) => {
                    tracing::debug!("worker pipe read failed: {e}");
                    self.flush(tail);
                    return false;
                }
            }
        }
    }

    fn emit_lines(&mut self, tail: &mut Tail) {
        let mut start = 0;
        while let Some(pos) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos + 1;
            write_out(self.stream, &self.partial[start..end]);
            tail.push(&self.partial[start..end]);
            start = end;
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE {
            self.flush(tail);
        }
    }

    /// Passes on a last line without a newline.
    pub fn flush(&mut self, tail: &mut Tail) {
        if !self.partial.is_empty() {
            let mut line = std::mem::take(&mut self.partial);
            tail.push(&line);
            line.push(b'\n');
            write_out(self.stream, &line);
        }
    }
}

fn write_out(stream: Stream, bytes: &[u8]) {
    // A closed or full terminal must not take baton down: output is best
    // effort, supervision is not.
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(bytes),
        Stream::Stderr => std::io::stderr().lock().write_all(bytes),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

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
        rustix::io::write(&w, b"first\nsec").expect("write");
        assert!(p.pump(&mut tail));
        assert_eq!(tail.lines().collect::<Vec<_>>(), ["first"]);
        rustix::io::write(&w, b"ond\nlast").expect("write");
        drop(w);
        assert!(!p.pump(&mut tail));
        assert_eq!(
            tail.lines().collect::<Vec<_>>(),
            ["first", "second", "last"]
        );
    }
}
