//! The hardware watchdog and the guard that decides when to feed it.
//!
//! [`Guard`] is pure logic over times the caller passes in: it feeds while the
//! own lease is fresh, asks ftvmm to hold all output once renewal has failed for
//! `hold_after`, and stops feeding (so the watchdog resets the host) if ftvmm
//! does not confirm within `confirm`. A confirmed hold keeps the host up with
//! output held (storage unreachable: wait, as VMware does); when renewal
//! recovers it asks ftvmm to release the hold. See [`crate::lease`] for the
//! arithmetic that makes this happen before others can call the lease expired.
//!
//! [`DevWatchdog`] is `/dev/watchdog` (or any file, for tests): timeout set
//! with `WDIOC_SETTIMEOUT`, fed by writing a byte, disarmed by the magic close
//! (`V`) on a clean shutdown.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::lease::LeaseTiming;

/// The watchdog as the agent uses it.
pub trait Watchdog: Send {
    /// Restarts the countdown.
    fn feed(&mut self) -> std::io::Result<()>;
    /// Magic close: disarms the watchdog (clean shutdown only).
    fn disarm(&mut self) -> std::io::Result<()>;
}

/// `_IOWR('W', 6, int)`: set the timeout in seconds; the driver writes back
/// the value it actually uses.
const WDIOC_SETTIMEOUT: u32 = 0xC004_5706;

/// A watchdog device node.
#[derive(Debug)]
pub struct DevWatchdog {
    file: File,
    /// The timeout the driver reported, if it took the ioctl.
    pub timeout_s: Option<u32>,
}

impl DevWatchdog {
    /// Opens (and so arms) the watchdog and asks for `timeout_s` seconds.
    /// A file that does not take the ioctl (a fake device in tests) still
    /// opens, with `timeout_s = None`.
    pub fn open(path: &Path, timeout_s: u32) -> std::io::Result<Self> {
        let file = OpenOptions::new().write(true).open(path)?;
        let mut t: libc::c_int = timeout_s as libc::c_int;
        // SAFETY: `file` is an open descriptor for the duration of the call and
        // WDIOC_SETTIMEOUT reads and writes exactly one `int` through the
        // pointer, which points to `t`, a live local `c_int`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) };
        let timeout_s = (rc == 0).then_some(t as u32);
        Ok(DevWatchdog { file, timeout_s })
    }
}

impl Watchdog for DevWatchdog {
    fn feed(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")
    }

    fn disarm(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"V")
    }
}

/// Where the guard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardState {
    /// Lease fresh, feeding.
    Normal,
    /// Renewal failing: hold asked of ftvmm, not yet confirmed; still feeding.
    HoldAsked,
    /// ftvmm confirmed the hold; feeding (the host waits for storage).
    Held,
    /// Renewal recovered; release asked of ftvmm.
    Releasing,
    /// ftvmm did not confirm in time: not feeding, the watchdog will reset us.
    Starving,
}

/// What the caller must do after [`Guard::tick`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    pub feed: bool,
    /// Send `HoldOutput { hold }` to ftvmm and report the answer with
    /// [`Guard::hold_answer`].
    pub send_hold: Option<bool>,
    /// Console lines (state changes).
    pub say: Vec<String>,
}

/// The watchdog-feeding and output-hold policy.
#[derive(Debug, Clone)]
pub struct Guard {
    timing: LeaseTiming,
    state: GuardState,
    last_ok: Instant,
    asked_at: Instant,
    outstanding: bool,
}

impl Guard {
    /// Starts fresh at `now` (a grace period of `hold_after` for the first renewal).
    pub fn new(timing: LeaseTiming, now: Instant) -> Self {
        Guard {
            timing,
            state: GuardState::Normal,
            last_ok: now,
            asked_at: now,
            outstanding: false,
        }
    }

    pub fn state(&self) -> GuardState {
        self.state
    }

    /// The own lease was renewed by a write issued at `issued`.
    pub fn renewed(&mut self, issued: Instant) {
        self.last_ok = self.last_ok.max(issued);
    }

    /// ftvmm's answer to the `HoldOutput { hold }` sent last (`ok`: `Response::Ok`).
    pub fn hold_answer(&mut self, hold: bool, ok: bool, now: Instant) {
        self.outstanding = false;
        match (self.state, hold, ok) {
            (GuardState::HoldAsked | GuardState::Starving, true, true) => {
                self.state = GuardState::Held;
            }
            (GuardState::Releasing, false, true) => self.state = GuardState::Normal,
            _ => {}
        }
        let _ = now;
    }

    /// Advances the policy to `now`.
    pub fn tick(&mut self, now: Instant) -> Actions {
        let stale = now.saturating_duration_since(self.last_ok);
        let fresh = stale < self.timing.hold_after;
        let mut a = Actions::default();
        let ms = |d: Duration| d.as_millis();
        match self.state {
            GuardState::Normal if fresh => a.feed = true,
            GuardState::Normal => {
                self.state = GuardState::HoldAsked;
                self.asked_at = now;
                a.feed = true;
                a.say.push(format!(
                    "fencing: lease renewal failing for {} ms; asking ftvmm to hold output",
                    ms(stale)
                ));
                self.ask(&mut a, true);
            }
            GuardState::HoldAsked => {
                if now.saturating_duration_since(self.asked_at) >= self.timing.confirm {
                    self.state = GuardState::Starving;
                    a.say.push(format!(
                        "fencing: ftvmm did not confirm the output hold within {} ms; \
                         no longer feeding the watchdog",
                        ms(self.timing.confirm)
                    ));
                    self.ask(&mut a, true);
                } else {
                    a.feed = true;
                    self.ask(&mut a, true);
                }
            }
            GuardState::Starving => self.ask(&mut a, true),
            GuardState::Held => {
                a.feed = true;
                if fresh {
                    self.state = GuardState::Releasing;
                    a.say.push(
                        "fencing: lease renewed again; asking ftvmm to release output".into(),
                    );
                    self.outstanding = false;
                    self.ask(&mut a, false);
                }
            }
            GuardState::Releasing => {
                a.feed = true;
                if fresh {
                    self.ask(&mut a, false);
                } else {
                    // Failing again before the release was confirmed: the hold
                    // may still be in force, ask for it again.
                    self.state = GuardState::HoldAsked;
                    self.asked_at = now;
                    self.outstanding = false;
                    self.ask(&mut a, true);
                }
            }
        }
        a
    }

    /// Asks unless an earlier request is still out.
    fn ask(&mut self, a: &mut Actions, hold: bool) {
        if !self.outstanding {
            self.outstanding = true;
            a.send_hold = Some(hold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_schema::Timing;

    fn timing() -> LeaseTiming {
        LeaseTiming::from_config(&Timing {
            heartbeat_interval_ms: 100,
            failure_timeout_ms: 1000,
            lag_limit_ms: 500,
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn feeds_while_fresh_then_holds_then_starves_without_confirmation() {
        let t0 = Instant::now();
        let mut g = Guard::new(timing(), t0);
        g.renewed(t0);
        assert!(g.tick(t0 + 500 * MS).feed);
        let a = g.tick(t0 + 1000 * MS);
        assert_eq!(a.send_hold, Some(true));
        assert!(a.feed && a.say[0].contains("asking ftvmm to hold output"));
        assert_eq!(g.state(), GuardState::HoldAsked);
        // Still within the confirmation window: feed, no duplicate request.
        assert_eq!(
            g.tick(t0 + 1200 * MS),
            Actions {
                feed: true,
                ..Default::default()
            }
        );
        let a = g.tick(t0 + 1500 * MS);
        assert!(!a.feed);
        assert_eq!(g.state(), GuardState::Starving);
        assert!(!g.tick(t0 + 3000 * MS).feed);
        // A failed answer lets it ask again, still without feeding.
        g.hold_answer(true, false, t0 + 3000 * MS);
        let a = g.tick(t0 + 3100 * MS);
        assert_eq!((a.feed, a.send_hold), (false, Some(true)));
    }

    #[test]
    fn confirmed_hold_keeps_feeding_and_recovery_releases() {
        let t0 = Instant::now();
        let mut g = Guard::new(timing(), t0);
        g.tick(t0 + 1000 * MS);
        g.hold_answer(true, true, t0 + 1100 * MS);
        assert_eq!(g.state(), GuardState::Held);
        assert!(g.tick(t0 + 9000 * MS).feed);
        g.renewed(t0 + 9000 * MS);
        let a = g.tick(t0 + 9100 * MS);
        assert_eq!((a.feed, a.send_hold), (true, Some(false)));
        g.hold_answer(false, true, t0 + 9200 * MS);
        assert_eq!(g.state(), GuardState::Normal);
        assert!(g.tick(t0 + 9300 * MS).feed);
    }

    #[test]
    fn late_confirmation_rescues_a_starving_host() {
        let t0 = Instant::now();
        let mut g = Guard::new(timing(), t0);
        g.tick(t0 + 1000 * MS);
        g.tick(t0 + 2000 * MS);
        assert_eq!(g.state(), GuardState::Starving);
        g.hold_answer(true, true, t0 + 2100 * MS);
        assert!(g.tick(t0 + 2200 * MS).feed);
    }

    #[test]
    fn fake_device_file_gets_feeds_and_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watchdog");
        std::fs::write(&p, b"").unwrap();
        let mut w = DevWatchdog::open(&p, 5).unwrap();
        assert_eq!(w.timeout_s, None, "a regular file takes no ioctl");
        w.feed().unwrap();
        w.feed().unwrap();
        w.disarm().unwrap();
        drop(w);
        assert_eq!(std::fs::read(&p).unwrap(), b"\0\0V");
    }
}
