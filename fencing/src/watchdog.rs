//! The hardware watchdog (when to feed it is [`crate::guard`]'s policy).
//!
//! [`DevWatchdog`] is `/dev/watchdog` (or any file, for tests): timeout set
//! with `WDIOC_SETTIMEOUT`, fed by writing a byte, disarmed by the magic close
//! (`V`) on a clean shutdown.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
