//! Console lines from threads that must never wait for the console.
//!
//! The daemons' stdout is the machine's console: on a server a serial port
//! at 115200 baud (serial-over-LAN) takes a line in about 10 ms, and a slowed
//! test host (its QEMU stopped most of the time) far longer. A thread that
//! `println!`s waits until the console took the line, so a lease renewal, the
//! watchdog feed or an output-grant answer could wait behind a burst of
//! other lines — and a hold not confirmed in time starves the watchdog
//! (chaos seeds 111, 116, 117: hosts slowed to a third reset themselves,
//! ftvmm answering grants in up to 2.7 s).
//!
//! [`say`] hands the line to one writer thread (normal priority) and returns
//! at once. When the writer is [`CAPACITY`] lines behind, a line is dropped
//! rather than waited for, and the next line written says how many were.
//! Lines said here keep their order among themselves; a process's other
//! `println!`s may land before or after them.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

/// Lines the writer may be behind before new ones are dropped.
pub const CAPACITY: usize = 1024;

/// A console writer thread and the queue to it.
pub struct Console {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl Console {
    /// Starts the writer thread over `out`, `capacity` lines deep. `None` if
    /// no thread can be made (the caller then writes itself).
    pub fn start(mut out: impl Write + Send + 'static, capacity: usize) -> Option<Console> {
        let (tx, rx) = sync_channel::<String>(capacity);
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                // The writer waits on the console: never at real-time
                // priority (it would be started by whichever thread says
                // first, often a real-time one). Failing that it runs on.
                let _ = crate::sched::normal_thread();
                for line in rx {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            })
            .ok()?;
        Some(Console {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues `line`; never waits. Lines dropped before it are said first,
    /// where they would have been.
    pub fn say(&self, line: String) {
        let n = self.dropped.load(Ordering::SeqCst);
        if n > 0 {
            let notice =
                format!("console: {n} lines dropped (the console was slower than they came)");
            if self.tx.try_send(notice).is_err() {
                self.dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            self.dropped.fetch_sub(n, Ordering::SeqCst);
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::SeqCst);
            }
            // The writer is gone (it cannot be, short of a panic): write
            // here rather than lose the line.
            Err(TrySendError::Disconnected(line)) => println!("{line}"),
        }
    }
}

/// The process's console writer over stdout, started at the first line.
fn stdout_console() -> Option<&'static Console> {
    static CONSOLE: OnceLock<Option<Console>> = OnceLock::new();
    CONSOLE
        .get_or_init(|| Console::start(std::io::stdout(), CAPACITY))
        .as_ref()
}

/// Writes `line` to stdout without waiting for it (module doc).
pub fn say(line: impl Into<String>) {
    let line = line.into();
    match stdout_console() {
        Some(c) => c.say(line),
        None => println!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// A console that takes `per_line` for every write, recording them.
    #[derive(Clone)]
    struct Slow {
        per_line: Duration,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if b.ends_with(b"\n") {
                std::thread::sleep(self.per_line);
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_console_never_holds_up_the_sayer_and_says_what_it_dropped() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Slow {
            per_line: Duration::from_millis(50),
            got: Arc::clone(&got),
        };
        let c = Console::start(out, 4).unwrap();
        let t = Instant::now();
        for i in 0..100 {
            c.say(format!("line {i}"));
        }
        // 100 lines into a 50 ms-a-line console: returns at once.
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(600));
        c.say("after".into());
        std::thread::sleep(Duration::from_millis(300));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "line 0", "{text}");
        // Kept lines in order, then the drop, said where the lines were
        // lost, then the next line.
        let kept: Vec<usize> = (lines.iter())
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(kept.len() < 100, "{text}");
        let dropped = 100 - kept.len();
        let n = lines.len();
        assert_eq!(
            lines[n - 2],
            format!("console: {dropped} lines dropped (the console was slower than they came)"),
            "{text}"
        );
        assert_eq!(lines[n - 1], "after", "{text}");
    }
}
