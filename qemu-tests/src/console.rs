//! A host's serial console: a reader thread copies QEMU's console output to a
//! log file and into an in-memory list of timestamped lines, which tests wait
//! on (`wait_for`, `wait_for_next`, `wait_after`) or assert against
//! (`assert_absent`).
//!
//! The console keeps a cursor: `wait_for`, `wait_for_next` and `wait_after`
//! move it past the line they matched, so a sequence of `wait_for_next` calls
//! checks ordering. A [`Mark`] (`mark`) is the console's end at one moment:
//! `wait_after` waits for a line that arrived after it, whatever the cursor.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::error::{HarnessError, Result, TAIL_LINES};

/// What a console line is matched against: a plain substring or a regex.
#[derive(Debug, Clone)]
pub enum Pattern {
    Substring(String),
    Regex(Regex),
}

impl Pattern {
    /// A regex pattern (the `regex` crate's syntax, unanchored).
    pub fn regex(re: &str) -> Result<Self> {
        Ok(Pattern::Regex(Regex::new(re)?))
    }

    pub fn matches(&self, line: &str) -> bool {
        match self {
            Pattern::Substring(s) => line.contains(s.as_str()),
            Pattern::Regex(re) => re.is_match(line),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Substring(s) => write!(f, "{s:?}"),
            Pattern::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Pattern::Substring(s.to_owned())
    }
}

impl From<String> for Pattern {
    fn from(s: String) -> Self {
        Pattern::Substring(s)
    }
}

impl From<&String> for Pattern {
    fn from(s: &String) -> Self {
        Pattern::Substring(s.clone())
    }
}

impl From<Regex> for Pattern {
    fn from(re: Regex) -> Self {
        Pattern::Regex(re)
    }
}

/// One console line (without its line ending) and when it arrived, measured
/// from the moment QEMU was spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    pub text: String,
    pub at: Duration,
}

/// A place in one console's lines: the end of them when [`Console::mark`]
/// was called. Lines that arrive later are after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(usize);

/// Where a wait starts looking.
enum Start {
    First,
    Cursor,
    At(Mark),
}

#[derive(Default)]
struct State {
    lines: Vec<ConsoleLine>,
    /// Index of the first line `wait_for_next` looks at.
    cursor: usize,
    /// Set when the console stream ended (QEMU exited or was killed).
    closed: bool,
}

/// The captured console of one host.
pub struct Console {
    host: String,
    shared: Arc<(Mutex<State>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

/// What the reader thread does with each complete line besides storing it.
pub type LineHook = Box<dyn FnMut(&ConsoleLine) + Send>;

impl Console {
    /// Starts the reader thread over `stream` (QEMU's stdout). Raw bytes are
    /// appended to `log_path`; lines are stored with their arrival time
    /// relative to `started`. `hook` sees every line as it arrives.
    pub fn start(
        host: &str,
        stream: impl Read + Send + 'static,
        log_path: &Path,
        started: Instant,
        hook: Option<LineHook>,
    ) -> Result<Console> {
        let log = File::create(log_path)
            .map_err(|e| HarnessError::io(format!("create {}", log_path.display()), e))?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let thread_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name(format!("console-{host}"))
            .spawn(move || read_loop(stream, log, started, &thread_shared, hook))
            .map_err(|e| HarnessError::io("spawn console reader thread", e))?;
        Ok(Console {
            host: host.to_owned(),
            shared,
            reader: Some(reader),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until any console line (from the very first one) matches, and
    /// moves the cursor past it. Lines that arrived before the call count.
    pub fn wait_for(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<ConsoleLine> {
        self.wait(pattern.into(), timeout, Start::First)
    }

    /// Waits until a line after the cursor (the last line matched by a
    /// `wait_for*` call) matches, and moves the cursor past it.
    pub fn wait_for_next(
        &self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<ConsoleLine> {
        self.wait(pattern.into(), timeout, Start::Cursor)
    }

    /// The end of the console now: the lines that arrive from here on are
    /// after this mark.
    pub fn mark(&self) -> Mark {
        Mark(self.state().lines.len())
    }

    /// Waits until a line that arrived after `mark` matches, and moves the
    /// cursor past it.
    pub fn wait_after(
        &self,
        mark: Mark,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<ConsoleLine> {
        self.wait(pattern.into(), timeout, Start::At(mark))
    }

    fn wait(&self, pattern: Pattern, timeout: Duration, start: Start) -> Result<ConsoleLine> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            let from = match start {
                Start::First => 0,
                Start::Cursor => state.cursor,
                Start::At(Mark(i)) => i,
            };
            let found = (state.lines.get(from..).unwrap_or_default())
                .iter()
                .position(|l| pattern.matches(&l.text))
                .map(|i| from + i);
            if let Some(i) = found {
                state.cursor = i + 1;
                return Ok(state.lines[i].clone());
            }
            if state.closed {
                return Err(HarnessError::Exited {
                    host: self.host.clone(),
                    pattern: pattern.to_string(),
                    status: "console closed".into(),
                    tail: tail_of(&state.lines, TAIL_LINES),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    host: self.host.clone(),
                    pattern: pattern.to_string(),
                    timeout,
                    tail: tail_of(&state.lines, TAIL_LINES),
                });
            }
            state = self
                .shared
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Fails if any console line, from the first one on, matches `pattern`
    /// now or within `duration`. Returns early (Ok) if the console closes.
    pub fn assert_absent(&self, pattern: impl Into<Pattern>, duration: Duration) -> Result<()> {
        self.absent(pattern.into(), duration, false)
    }

    /// Like [`Console::assert_absent`], but only for lines after the cursor.
    pub fn assert_no_more(&self, pattern: impl Into<Pattern>, duration: Duration) -> Result<()> {
        self.absent(pattern.into(), duration, true)
    }

    fn absent(&self, pattern: Pattern, duration: Duration, after_cursor: bool) -> Result<()> {
        let deadline = Instant::now() + duration;
        let mut state = self.state();
        let mut checked = if after_cursor { state.cursor } else { 0 };
        loop {
            if let Some(line) = state.lines[checked..]
                .iter()
                .find(|l| pattern.matches(&l.text))
            {
                return Err(HarnessError::Unexpected {
                    host: self.host.clone(),
                    pattern: pattern.to_string(),
                    line: line.text.clone(),
                    tail: tail_of(&state.lines, TAIL_LINES),
                });
            }
            checked = state.lines.len();
            let now = Instant::now();
            if state.closed || now >= deadline {
                return Ok(());
            }
            state = self
                .shared
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many lines so far match `pattern`.
    pub fn count(&self, pattern: impl Into<Pattern>) -> usize {
        let pattern = pattern.into();
        self.state()
            .lines
            .iter()
            .filter(|l| pattern.matches(&l.text))
            .count()
    }

    /// A copy of every line so far.
    pub fn lines(&self) -> Vec<ConsoleLine> {
        self.state().lines.clone()
    }

    /// A copy of the lines that arrived after `mark` so far.
    pub fn lines_after(&self, mark: Mark) -> Vec<ConsoleLine> {
        self.state()
            .lines
            .get(mark.0..)
            .unwrap_or_default()
            .to_vec()
    }

    /// The last `n` lines, one per line of text.
    pub fn tail(&self, n: usize) -> String {
        tail_of(&self.state().lines, n)
    }

    /// True once the console stream has ended.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Blocks until the reader thread has seen the end of the stream.
    pub fn join(&mut self) {
        if let Some(handle) = self.reader.take() {
            // A panicking reader thread already lost its output; nothing to add.
            let _ = handle.join();
        }
    }
}

/// `line` without terminal escape sequences and control characters (the
/// firmware clears the screen), for echoing to a terminal.
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte; other escapes: ESC + one char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

fn tail_of(lines: &[ConsoleLine], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    for l in &lines[start..] {
        out.push_str(&format!(
            "[{:7.3}] {}\n",
            l.at.as_secs_f64(),
            printable(&l.text)
        ));
    }
    if lines.is_empty() {
        out.push_str("(no console output)\n");
    }
    out
}

fn read_loop(
    mut stream: impl Read,
    mut log: File,
    started: Instant,
    shared: &(Mutex<State>, Condvar),
    mut hook: Option<LineHook>,
) {
    let mut buf = [0u8; 4096];
    let mut partial: Vec<u8> = Vec::new();
    let push = |bytes: &[u8], hook: &mut Option<LineHook>| {
        let text = String::from_utf8_lossy(bytes)
            .trim_end_matches('\r')
            .replace('\r', "");
        let line = ConsoleLine {
            text,
            at: started.elapsed(),
        };
        if let Some(h) = hook.as_mut() {
            h(&line);
        }
        let mut state = shared.0.lock().unwrap_or_else(|e| e.into_inner());
        state.lines.push(line);
        shared.1.notify_all();
    };
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("console read failed: {e}");
                break;
            }
        };
        if let Err(e) = log.write_all(&buf[..n]) {
            tracing::warn!("console log write failed: {e}");
        }
        partial.extend_from_slice(&buf[..n]);
        while let Some(pos) = partial.iter().position(|&b| b == b'\n') {
            let rest = partial.split_off(pos + 1);
            push(&partial[..pos], &mut hook);
            partial = rest;
        }
    }
    if !partial.is_empty() {
        push(&partial, &mut hook);
    }
    let _ = log.flush();
    let mut state = shared.0.lock().unwrap_or_else(|e| e.into_inner());
    state.closed = true;
    shared.1.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn console_over(bytes: &'static [u8]) -> (Console, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Console::start(
            "t",
            Cursor::new(bytes),
            &dir.path().join("console.log"),
            Instant::now(),
            None,
        )
        .unwrap();
        c.join();
        (c, dir)
    }

    /// A console over a socket the test writes to as it goes.
    fn live_console() -> (Console, std::os::unix::net::UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = Console::start("h", r, &dir.path().join("c.log"), Instant::now(), None).unwrap();
        (c, w, dir)
    }

    #[test]
    fn splits_lines_strips_cr_and_logs_raw_bytes() {
        let (c, dir) = console_over(b"one\r\ntwo\nthree");
        let texts: Vec<_> = c.lines().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        let log = std::fs::read(dir.path().join("console.log")).unwrap();
        assert_eq!(log, b"one\r\ntwo\nthree");
        assert!(c.is_closed());
    }

    #[test]
    fn wait_for_next_enforces_order() {
        let (c, _d) = console_over(b"b\na\nb\nc\n");
        assert_eq!(c.wait_for("a", Duration::ZERO).unwrap().text, "a");
        c.wait_for_next("b", Duration::ZERO).unwrap();
        // No "a" after the second "b": the console is closed, so this fails at once.
        let err = c.wait_for_next("a", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HarnessError::Exited { .. }), "{err}");
        assert!(err.to_string().contains("c\n"), "tail missing: {err}");
    }

    #[test]
    fn wait_after_sees_only_lines_after_the_mark_and_moves_the_cursor() {
        let (c, mut w, _d) = live_console();
        w.write_all(b"x 1\n").unwrap();
        c.wait_for("x 1", Duration::from_secs(10)).unwrap();
        let mark = c.mark();
        let err = c.wait_after(mark, "x", Duration::ZERO).unwrap_err();
        assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
        w.write_all(b"y\nx 2\nx 3\n").unwrap();
        let line = c.wait_after(mark, "x", Duration::from_secs(10)).unwrap();
        assert_eq!(line.text, "x 2");
        c.wait_for("x 3", Duration::from_secs(10)).unwrap();
        let after: Vec<_> = c.lines_after(mark).into_iter().map(|l| l.text).collect();
        assert_eq!(after, ["y", "x 2", "x 3"]);
        // The cursor is past "x 2": the next "x" is "x 3".
        c.wait_after(mark, "x 2", Duration::ZERO).unwrap();
        assert_eq!(c.wait_for_next("x", Duration::ZERO).unwrap().text, "x 3");
    }

    #[test]
    fn regex_patterns_match() {
        let (c, _d) = console_over(b"appliance ready: host=host-a generation=7\n");
        let p = Pattern::regex(r"ready: host=(\S+) generation=\d+$").unwrap();
        assert!(c.wait_for(p, Duration::ZERO).is_ok());
        assert_eq!(c.count(Pattern::regex(r"^appliance").unwrap()), 1);
    }

    #[test]
    fn assert_absent_sees_earlier_lines_and_no_more_does_not() {
        let (c, _d) = console_over(b"init: started x pid=1\nconfig refused: bad\n");
        c.wait_for("config refused", Duration::ZERO).unwrap();
        assert!(matches!(
            c.assert_absent("init: started", Duration::ZERO),
            Err(HarnessError::Unexpected { .. })
        ));
        c.assert_no_more("init: started", Duration::ZERO).unwrap();
    }

    #[test]
    fn printable_strips_escapes() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (1.16)"),
            "SeaBIOS (1.16)"
        );
        assert_eq!(printable("a\tb\x07c"), "a\tbc");
    }

    #[test]
    fn timeout_reports_tail() {
        let (c, mut w, _d) = live_console();
        w.write_all(b"hello\n").unwrap();
        let err = c.wait_for("never", Duration::from_millis(200)).unwrap_err();
        match &err {
            HarnessError::Timeout { tail, .. } => assert!(tail.contains("hello"), "{tail}"),
            other => panic!("unexpected {other}"),
        }
        // Lines written later are still seen by a waiting caller.
        let waiter = std::thread::spawn(move || {
            w.write_all(b"late line\n").unwrap();
            w
        });
        c.wait_for("late", Duration::from_secs(10)).unwrap();
        drop(waiter.join().unwrap());
    }
}
