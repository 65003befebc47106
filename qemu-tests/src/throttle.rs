//! A slow host: duty-cycled `SIGSTOP`/`SIGCONT` of a child process (a
//! host's QEMU) from a harness thread, `stopped` of every `period`.
//!
//! Why this models a slow host: a stopped process gets no CPU at all — its
//! vCPU threads, its I/O threads, its timers — while wall-clock time goes on,
//! as for a host starved by an overloaded machine or descheduled for long
//! stretches. Inside, the guest (here the appliance with ftvmm and its VM)
//! runs in bursts at `1 - stopped/period` of its speed, sees its clocks jump
//! on every resume, answers heartbeats, lease renewals and the lockstep's
//! acknowledgements late, and its NICs and storage requests go quiet for up
//! to `stopped` at a time. QMP `stop`/`cont` would not do: it stops only the
//! vCPUs and the guest's virtual clock with them (the guest would see no
//! delay at all), while QEMU's own threads keep running.
//!
//! Rules:
//! - Every signal is sent under the child's lock after `try_wait` saw it
//!   running: the pid cannot have been reaped (by `Host::kill`, or a
//!   `try_wait` elsewhere) and reused by another process in between.
//!   (`try_wait` does not report a stop: a stopped child is running.)
//! - The thread's last signal to a live child is `SIGCONT`: [`Throttle::end`]
//!   (also on drop) raises the stop flag, wakes the thread and joins it, so
//!   the child runs normally again when it returns. A child that exits (is
//!   killed) ends the thread by itself.

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a throttle did, returned by [`Throttle::end`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Stop/continue cycles.
    pub cycles: u64,
    /// Time the child was stopped, in all.
    pub stopped: Duration,
    /// From the start to the end of the throttle.
    pub lasted: Duration,
    /// The child exited while throttled (the thread ended by itself).
    pub child_exited: bool,
}

/// A running throttle of one child; ends (and continues the child) on drop.
pub struct Throttle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ThrottleStats>>,
}

/// One signal to the child if it still runs (rules in the module doc);
/// false if it has exited.
fn signal(child: &Mutex<Child>, sig: libc::c_int) -> bool {
    let mut c: MutexGuard<'_, Child> = child.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(c.try_wait(), Ok(None)) {
        return false;
    }
    let Ok(pid) = libc::pid_t::try_from(c.id()) else {
        return false;
    };
    // SAFETY: kill(2) takes no pointers; `pid` is our own unreaped child
    // (checked under the lock that every reaper takes), so it names no
    // other process.
    unsafe { libc::kill(pid, sig) == 0 }
}

impl Throttle {
    /// Starts stopping `child` for `stopped` of every `period` (`stopped` is
    /// capped below `period`, so the child always runs a little). `name`
    /// names the thread.
    pub fn start(
        name: &str,
        child: Arc<Mutex<Child>>,
        stopped: Duration,
        period: Duration,
    ) -> std::io::Result<Throttle> {
        let period = period.max(Duration::from_millis(2));
        let stopped = stopped.min(period - Duration::from_millis(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("throttle {name}"))
            .spawn(move || run(&child, &flag, stopped, period))?;
        Ok(Throttle {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the throttle: the child runs normally again when this returns.
    pub fn end(mut self) -> ThrottleStats {
        self.finish()
    }

    fn finish(&mut self) -> ThrottleStats {
        self.stop.store(true, Ordering::SeqCst);
        let Some(t) = self.thread.take() else {
            return ThrottleStats::default();
        };
        t.thread().unpark();
        t.join().unwrap_or_default()
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The throttle thread: stop, sleep `stopped`, continue, sleep the rest of
/// the period, until the flag is raised or the child exits.
fn run(
    child: &Mutex<Child>,
    stop: &AtomicBool,
    stopped: Duration,
    period: Duration,
) -> ThrottleStats {
    let started = Instant::now();
    let mut st = ThrottleStats::default();
    let done = |mut st: ThrottleStats, exited: bool| {
        st.child_exited = exited;
        st.lasted = started.elapsed();
        st
    };
    // Cycles start on a fixed beat, so signalling and waking late do not
    // stretch the period; but the child always runs `period - stopped`
    // after a continue, so a late thread never turns a slowdown into a
    // freeze.
    let mut cycle = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return done(st, false);
        }
        if !signal(child, libc::SIGSTOP) {
            return done(st, true);
        }
        let at = Instant::now();
        sleep_unless(stop, (cycle + stopped).saturating_duration_since(at));
        let cont = signal(child, libc::SIGCONT);
        st.cycles += 1;
        st.stopped += at.elapsed();
        if !cont {
            return done(st, true);
        }
        let now = Instant::now();
        cycle = (cycle + period).max(now + (period - stopped));
        sleep_unless(stop, cycle - now);
    }
}

/// Sleeps `d`, or less if `stop` is raised (the thread is unparked then).
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::park_timeout(until - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// The state letter of `pid` in /proc (`T` stopped, `S` sleeping, ...).
    fn state(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = stat.rsplit_once(") ").unwrap().1;
        after.chars().next().unwrap()
    }

    fn sleeper() -> Arc<Mutex<Child>> {
        let c = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Arc::new(Mutex::new(c))
    }

    #[test]
    fn stops_the_child_part_of_each_period_and_continues_it_at_the_end() {
        let child = sleeper();
        let pid = child.lock().unwrap().id();
        let t = Throttle::start(
            "t",
            Arc::clone(&child),
            Duration::from_millis(60),
            Duration::from_millis(100),
        )
        .unwrap();
        let (mut seen_stopped, mut seen_running) = (0, 0);
        let until = Instant::now() + Duration::from_millis(1_000);
        while Instant::now() < until {
            match state(pid) {
                'T' => seen_stopped += 1,
                _ => seen_running += 1,
            }
            std::thread::sleep(Duration::from_millis(7));
        }
        let st = t.end();
        assert!(
            seen_stopped > 0 && seen_running > 0,
            "{seen_stopped} {seen_running}"
        );
        assert!((5..=12).contains(&st.cycles), "{st:?}");
        assert!(!st.child_exited);
        assert!(
            st.stopped >= Duration::from_millis(300) && st.stopped <= st.lasted,
            "{st:?}"
        );
        // Continued for good.
        for _ in 0..20 {
            assert_ne!(state(pid), 'T');
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut c = child.lock().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn a_killed_child_ends_the_throttle_and_is_not_signalled_again() {
        let child = sleeper();
        let t = Throttle::start(
            "t",
            Arc::clone(&child),
            Duration::from_millis(20),
            Duration::from_millis(40),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        {
            let mut c = child.lock().unwrap();
            c.kill().unwrap();
            c.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let st = t.end();
        assert!(st.child_exited, "{st:?}");
        assert!(!signal(&child, libc::SIGCONT));
    }

    #[test]
    fn stopped_is_capped_below_the_period() {
        let child = sleeper();
        let pid = child.lock().unwrap().id();
        let t = Throttle::start(
            "t",
            Arc::clone(&child),
            Duration::from_secs(5),
            Duration::from_millis(50),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let st = t.end();
        assert!(st.cycles >= 3, "{st:?}");
        assert_ne!(state(pid), 'T');
        let mut c = child.lock().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
