//! The hardware watchdog (when to feed it is [`crate::guard`]'s policy).
//!
//! [`DevWatchdog`] is `/dev/watchdog` (or any file, for tests): timeout set
//! with `WDIOC_SETTIMEOUT`, fed by writing a byte, disarmed by the magic close
//! (`V`) on a clean shutdown.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use config_schema::watchdog::Candidate;

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
        Self::open_asking(path, &[timeout_s])
    }

    /// Opens (and so arms) the watchdog and asks for each of `requests` in
    /// turn until the driver takes one (a driver refuses a timeout its
    /// hardware cannot count); `timeout_s` is the one it took, if any.
    pub fn open_asking(path: &Path, requests: &[u32]) -> std::io::Result<Self> {
        let file = OpenOptions::new().write(true).open(path)?;
        let mut w = DevWatchdog {
            file,
            timeout_s: None,
        };
        for &r in requests {
            w.timeout_s = w.set_timeout(r);
            if w.timeout_s.is_some() {
                break;
            }
        }
        Ok(w)
    }

    /// `WDIOC_SETTIMEOUT`: the timeout the driver now uses, or `None` if it
    /// refused the value or the ioctl.
    fn set_timeout(&mut self, timeout_s: u32) -> Option<u32> {
        let mut t: libc::c_int = timeout_s as libc::c_int;
        // SAFETY: `self.file` is an open descriptor for the duration of the
        // call and WDIOC_SETTIMEOUT reads and writes exactly one `int`
        // through the pointer, which points to `t`, a live local `c_int`.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) };
        (rc == 0).then_some(t as u32)
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

/// Whether this host may take part in go-live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoLive {
    /// A watchdog that keeps real time is present.
    Allowed,
    /// None is, but the signed config accepts that (the reason).
    AcceptedByConfig(String),
    /// None is (the reason): every `Acquire` is refused.
    Refused(String),
}

/// The go-live rule (see the module doc) for the watchdog fencing will use.
pub fn go_live(chosen: Option<&Candidate>, accept_soft_watchdog: bool) -> GoLive {
    let why = match chosen {
        Some(c) if c.kind.real_time() => return GoLive::Allowed,
        Some(c) => format!("no hardware watchdog, only {c}"),
        None => "no watchdog at all".to_string(),
    };
    if accept_soft_watchdog {
        GoLive::AcceptedByConfig(why)
    } else {
        GoLive::Refused(why)
    }
}

impl GoLive {
    pub fn allowed(&self) -> bool {
        !matches!(self, GoLive::Refused(_))
    }

    /// For status: `allowed`, `allowed by config: ...`, `refused: ...`.
    pub fn status(&self) -> String {
        match self {
            GoLive::Allowed => "allowed".into(),
            GoLive::AcceptedByConfig(why) => {
                format!("allowed by config ([cluster] accept_soft_watchdog): {why}")
            }
            GoLive::Refused(why) => format!("refused: {why}"),
        }
    }

    /// The console line, if there is something to say.
    pub fn line(&self) -> Option<String> {
        match self {
            GoLive::Allowed => None,
            GoLive::AcceptedByConfig(why) => Some(format!(
                "fencing: WARNING: {why}; this host takes part in go-live only because the \
                 signed config sets [cluster] accept_soft_watchdog = true (test clusters only): \
                 a hung host is not reset"
            )),
            GoLive::Refused(why) => Some(format!("fencing: refusing go-live: {}", refusal(why))),
        }
    }

    /// The error an `Acquire` gets while refused.
    pub fn acquire_error(&self) -> Option<String> {
        match self {
            GoLive::Refused(why) => Some(format!("fencing: refusing go-live: {}", refusal(why))),
            _ => None,
        }
    }
}

/// The go-live rule for a watchdog that is armed but resets later than the
/// planned `W` (`daemon::WatchdogSlot::over_plan`, known only once it is
/// opened): a host it guards could still write after others counted its
/// lease expired, so `Acquire` is refused with the reason, unless the config
/// accepts hosts without a watchdog that keeps the plan (test clusters).
pub fn slow_refusal(over_plan: Option<&str>, accept_soft_watchdog: bool) -> Option<String> {
    match over_plan {
        Some(why) if !accept_soft_watchdog => {
            Some(format!("fencing: refusing go-live: {}", refusal(why)))
        }
        _ => None,
    }
}

fn refusal(why: &str) -> String {
    format!(
        "{why}: a hung host would not be reset and could keep serving a VM another host took \
         over; this host wins no generation (use a server with a hardware watchdog, enable it \
         in the firmware setup, or for a test cluster sign [cluster] accept_soft_watchdog = true)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cand(identity: &str) -> Candidate {
        Candidate::new(PathBuf::from("/dev/watchdog0"), identity)
    }

    #[test]
    fn hardware_watchdogs_allow_go_live_soft_or_none_refuse_it() {
        for hw in ["iTCO_wdt", "i6300ESB timer", "SP5100 TCO timer", "IPMI"] {
            assert_eq!(go_live(Some(&cand(hw)), false), GoLive::Allowed, "{hw}");
        }
        let soft = go_live(Some(&cand("Software Watchdog")), false);
        assert!(!soft.allowed());
        let line = soft.line().unwrap();
        assert!(line.starts_with("fencing: refusing go-live: no hardware watchdog, only /dev/watchdog0 (\"Software Watchdog\""), "{line}");
        assert!(line.contains("accept_soft_watchdog = true"), "{line}");
        assert_eq!(soft.acquire_error().unwrap(), line);
        let none = go_live(None, false);
        assert!(
            none.status().starts_with("refused: no watchdog at all"),
            "{}",
            none.status()
        );
        // A regular file given for tests is not a watchdog either.
        assert!(!go_live(Some(&cand("")), false).allowed());
    }

    #[test]
    fn a_watchdog_slower_than_the_plan_refuses_go_live_unless_accepted() {
        let why = "the watchdog /dev/watchdog0 resets up to 8 s after its last feed";
        let e = slow_refusal(Some(why), false).expect("refused");
        assert!(
            e.starts_with("fencing: refusing go-live: the watchdog"),
            "{e}"
        );
        assert!(e.contains("wins no generation"), "{e}");
        assert_eq!(slow_refusal(Some(why), true), None);
        assert_eq!(slow_refusal(None, false), None);
    }

    #[test]
    fn the_config_can_accept_softdog_loudly() {
        let g = go_live(Some(&cand("Software Watchdog")), true);
        assert!(g.allowed());
        assert_eq!(g.acquire_error(), None);
        assert!(g
            .line()
            .unwrap()
            .starts_with("fencing: WARNING: no hardware watchdog"));
        assert!(g.status().starts_with("allowed by config"));
        assert!(go_live(None, true).allowed());
        assert_eq!(go_live(Some(&cand("iTCO_wdt")), true).line(), None);
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
