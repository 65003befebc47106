//! A watch on the checkpoint member's thread: one step (an event, or the
//! tick that reads the link's silence) that takes longer than
//! [`STALL_AFTER`] is reported while it lasts, and again when it returns.
//!
//! The member thread is the only one that reacts to a lost Secondary, a
//! deposition or a stop; while one of its steps blocks it reacts to nothing,
//! and nothing said so: stop 46 found a Primary whose tick waited on the
//! lock an epoch send held (a partition), which stayed "protected" and never
//! halted after it was deposed. That cause is fixed (`driver_link.rs`); this
//! watch is so that the next one is not silent: an error line naming the
//! VM, the step and how long, and a count for tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A step longer than this is reported: the member ticks every 50 ms and a
/// step does no I/O that may wait longer than the channel's 3 s send
/// timeout.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// How often the watch looks.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What the member thread is doing, shared with its watch.
#[derive(Default)]
pub struct Busy {
    /// When the current step began, ms since `started` + 1 (0: between
    /// steps, waiting for the next event).
    since: AtomicU64,
    what: Mutex<&'static str>,
    /// Steps reported as stalled.
    pub stalls: AtomicU64,
}

impl Busy {
    /// The member thread begins a step (`what`: which) at `now` since its
    /// start.
    pub fn begin(&self, what: &'static str, now: Duration) {
        *self.what.lock().unwrap_or_else(|p| p.into_inner()) = what;
        self.since
            .store(now.as_millis() as u64 + 1, Ordering::SeqCst);
    }

    /// The step returned.
    pub fn end(&self) {
        self.since.store(0, Ordering::SeqCst);
    }
}

/// Starts the watch of `vm`'s member thread (see the loop for its end).
pub fn watch(
    vm: String,
    busy: Arc<Busy>,
    started: Instant,
    quit: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ckpt-watch-{vm}"))
        .spawn(move || {
            // The step being reported (its `since`), if any.
            let mut reported: Option<u64> = None;
            // Ends with `quit`, or once nobody else holds `busy` (the member
            // thread ended and its driver was dropped without `finish`).
            while !quit.load(Ordering::SeqCst) && Arc::strong_count(&busy) > 1 {
                std::thread::sleep(LOOK_EVERY);
                let since = busy.since.load(Ordering::SeqCst);
                let now = started.elapsed().as_millis() as u64 + 1;
                if let Some(r) = reported {
                    if since != r {
                        tracing::warn!(
                            vm,
                            "checkpoint member: the stalled step returned after about {} ms",
                            now.saturating_sub(r)
                        );
                        reported = None;
                    }
                }
                if since == 0 || reported.is_some() {
                    continue;
                }
                let ms = now.saturating_sub(since);
                if ms >= STALL_AFTER.as_millis() as u64 {
                    let what = *busy.what.lock().unwrap_or_else(|p| p.into_inner());
                    tracing::error!(
                        vm,
                        step = what,
                        "checkpoint member: one step has taken {ms} ms and goes on: until it \
                         returns this member reacts to no failure, deposition or stop"
                    );
                    busy.stalls.fetch_add(1, Ordering::SeqCst);
                    reported = Some(since);
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_past_the_limit_is_reported_once_and_a_short_one_never() {
        let busy = Arc::new(Busy::default());
        let quit = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let t = watch("web".into(), Arc::clone(&busy), started, Arc::clone(&quit)).unwrap();
        for _ in 0..20 {
            busy.begin("tick", started.elapsed());
            std::thread::sleep(Duration::from_millis(10));
            busy.end();
        }
        assert_eq!(busy.stalls.load(Ordering::SeqCst), 0);
        busy.begin("event", started.elapsed());
        // Reported past the limit (the watch may be late on a loaded
        // machine: up to 5 s more), and only once however long it lasts.
        let began = Instant::now();
        while busy.stalls.load(Ordering::SeqCst) == 0 && began.elapsed() < STALL_AFTER * 2 {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(began.elapsed() >= STALL_AFTER, "not before the limit");
        std::thread::sleep(LOOK_EVERY * 4);
        assert_eq!(busy.stalls.load(Ordering::SeqCst), 1, "reported once");
        busy.end();
        std::thread::sleep(LOOK_EVERY * 2);
        assert_eq!(busy.stalls.load(Ordering::SeqCst), 1);
        quit.store(true, Ordering::SeqCst);
        t.join().unwrap();
    }
}
