//! Which watchdogs a host has and which one fencing uses, shared by init
//! (which loads the drivers and says what it found) and fencing (which opens
//! the chosen one and refuses go-live without one that keeps real time).
//!
//! Rules:
//! - A watchdog is known by its driver's identity string
//!   (`/sys/class/watchdog/watchdogN/identity`, `WDIOC_GETSUPPORT`).
//! - Only `softdog` ("Software Watchdog") is soft: a kernel timer that a hung
//!   kernel never fires. Every other driver counts down in hardware.
//! - The best one present is chosen: a chipset TCO timer (iTCO_wdt,
//!   sp5100_tco, QEMU's i6300esb) over other hardware timers over the BMC's
//!   IPMI watchdog (fed by messages to the BMC) over softdog; among equals the
//!   lowest device number.

use std::fs;
use std::path::{Path, PathBuf};

/// What kind of timer a watchdog is, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogKind {
    /// A chipset TCO timer: iTCO_wdt, sp5100_tco, i6300esb.
    Chipset,
    /// Another hardware timer (wdat_wdt, hpwdt, a board's own...).
    Hardware,
    /// The BMC's watchdog over IPMI (ipmi_watchdog).
    Bmc,
    /// softdog: not reset by anything when the kernel hangs.
    Soft,
    /// Not a watchdog device (no identity): a file given for tests.
    Unknown,
}

impl WatchdogKind {
    /// It resets the machine when the kernel hangs, on its own clock.
    pub fn real_time(self) -> bool {
        matches!(self, Self::Chipset | Self::Hardware | Self::Bmc)
    }
}

/// softdog's identity string.
pub const SOFTDOG_IDENTITY: &str = "Software Watchdog";

/// The kind of the watchdog whose driver calls itself `identity`.
pub fn classify(identity: &str) -> WatchdogKind {
    let id = identity.trim();
    let lower = id.to_ascii_lowercase();
    if id.is_empty() {
        WatchdogKind::Unknown
    } else if id == SOFTDOG_IDENTITY || lower.contains("softdog") {
        WatchdogKind::Soft
    } else if lower.contains("tco") || lower.contains("i6300esb") {
        WatchdogKind::Chipset
    } else if lower.contains("ipmi") {
        WatchdogKind::Bmc
    } else {
        WatchdogKind::Hardware
    }
}

/// How many expiries of its timer a watchdog needs before it resets the
/// machine. Intel's TCO (`iTCO_wdt`) raises an SMI at the first expiry and
/// resets at the second unless the firmware's SMI handler resets at the
/// first; Linux halves the timer only when TCO SMIs are off, so with SMIs on
/// and a firmware that does not reset (OVMF on QEMU's q35: a 5 s timeout
/// reset the host after 9.6 s, `qemu-tests/tests/server_hw.rs`) the reset
/// comes after twice the timeout. Every other driver resets at the first.
pub fn expiries_to_reset(identity: &str) -> u32 {
    if identity.to_ascii_lowercase().contains("itco") {
        2
    } else {
        1
    }
}

/// The timeouts to ask a watchdog for, best first, so that `expiries`
/// expiries fit in `planned` seconds: `planned / expiries` up to `planned`
/// (a driver refuses values its hardware cannot count, e.g. iTCO below 4
/// ticks of 0.6 s, so the next one is tried).
pub fn timeout_requests(planned: u32, expiries: u32) -> Vec<u32> {
    let first = (planned / expiries.max(1)).max(1);
    (first..=planned).collect()
}

/// The latest a watchdog set to `timeout_s` resets the machine after its
/// last feed, in seconds.
pub fn reset_bound_s(timeout_s: u32, expiries: u32) -> u32 {
    timeout_s.saturating_mul(expiries.max(1))
}

/// One watchdog device of the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// The node to open (`/dev/watchdogN`, or `/dev/watchdog` for a legacy driver).
    pub device: PathBuf,
    pub identity: String,
    pub kind: WatchdogKind,
}

impl Candidate {
    pub fn new(device: PathBuf, identity: &str) -> Self {
        Candidate {
            device,
            identity: identity.trim().to_string(),
            kind: classify(identity),
        }
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            WatchdogKind::Chipset => "chipset timer",
            WatchdogKind::Hardware => "hardware timer",
            WatchdogKind::Bmc => "BMC timer over IPMI",
            WatchdogKind::Soft => "software timer, does not keep real time",
            WatchdogKind::Unknown => "not a known watchdog device",
        };
        write!(f, "{} ({:?}, {what})", self.device.display(), self.identity)
    }
}

fn device_number(name: &str) -> u32 {
    name.trim_start_matches("watchdog")
        .parse()
        .unwrap_or(u32::MAX)
}

/// The watchdogs below `root` (`/` on the appliance): every
/// `sys/class/watchdog/watchdogN` with its identity, as `dev/watchdogN`; and
/// the legacy IPMI watchdog (`sys/module/ipmi_watchdog` loaded, `dev/watchdog`
/// present, no `watchdog0` of the watchdog core), which has no class entry.
pub fn scan(root: &Path) -> Vec<Candidate> {
    let mut names: Vec<String> = fs::read_dir(root.join("sys/class/watchdog"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("watchdog"))
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| device_number(n));
    let mut out: Vec<Candidate> = names
        .iter()
        .map(|n| {
            let identity =
                fs::read_to_string(root.join("sys/class/watchdog").join(n).join("identity"))
                    .unwrap_or_default();
            Candidate::new(PathBuf::from("/dev").join(n), &identity)
        })
        .collect();
    let legacy_ipmi = root.join("sys/module/ipmi_watchdog").exists()
        && root.join("dev/watchdog").exists()
        && !names.iter().any(|n| n == "watchdog0");
    if legacy_ipmi {
        out.push(Candidate::new(PathBuf::from("/dev/watchdog"), "IPMI"));
    }
    out
}

/// The best of `candidates` (see the module rules), if any.
pub fn choose(candidates: &[Candidate]) -> Option<&Candidate> {
    // min_by_key keeps the first of equals: scan lists them by device number.
    candidates.iter().min_by_key(|c| c.kind)
}

/// Identity of an explicitly named device: its class entry when it is
/// `/dev/watchdogN` (or `/dev/watchdog`, which is `watchdog0`), else none.
pub fn identity_of(root: &Path, device: &Path) -> Option<String> {
    if device.parent() != Some(Path::new("/dev")) {
        return None;
    }
    let class = match device.file_name()?.to_str()? {
        "watchdog" => "watchdog0",
        n if n.starts_with("watchdog") => n,
        _ => return None,
    };
    fs::read_to_string(root.join("sys/class/watchdog").join(class).join("identity"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_classified() {
        assert_eq!(classify("iTCO_wdt"), WatchdogKind::Chipset);
        assert_eq!(classify("SP5100 TCO timer"), WatchdogKind::Chipset);
        assert_eq!(classify("i6300ESB timer\n"), WatchdogKind::Chipset);
        assert_eq!(classify("IPMI"), WatchdogKind::Bmc);
        assert_eq!(
            classify("HPE iLO2+ HW Watchdog Timer"),
            WatchdogKind::Hardware
        );
        assert_eq!(classify("Software Watchdog"), WatchdogKind::Soft);
        assert_eq!(classify(""), WatchdogKind::Unknown);
        assert!(WatchdogKind::Bmc.real_time());
        assert!(!WatchdogKind::Soft.real_time());
        assert!(!WatchdogKind::Unknown.real_time());
    }

    fn fake(root: &Path, name: &str, identity: &str) {
        let d = root.join("sys/class/watchdog").join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("identity"), format!("{identity}\n")).unwrap();
    }

    #[test]
    fn hardware_wins_over_softdog_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "watchdog0", "Software Watchdog");
        fake(dir.path(), "watchdog1", "IPMI");
        fake(dir.path(), "watchdog10", "iTCO_wdt");
        fake(dir.path(), "watchdog2", "iTCO_wdt");
        let all = scan(dir.path());
        let devices: Vec<_> = all.iter().map(|c| c.device.display().to_string()).collect();
        assert_eq!(
            devices,
            [
                "/dev/watchdog0",
                "/dev/watchdog1",
                "/dev/watchdog2",
                "/dev/watchdog10"
            ]
        );
        let best = choose(&all).unwrap();
        assert_eq!(
            best.device,
            Path::new("/dev/watchdog2"),
            "first chipset timer"
        );
        assert_eq!(best.kind, WatchdogKind::Chipset);
        // Without the TCO timers the BMC's beats softdog.
        let no_tco: Vec<_> = all
            .iter()
            .filter(|c| c.identity != "iTCO_wdt")
            .cloned()
            .collect();
        assert_eq!(choose(&no_tco).unwrap().kind, WatchdogKind::Bmc);
        let soft_only = &all[..1];
        assert_eq!(choose(soft_only).unwrap().kind, WatchdogKind::Soft);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn the_qemu_i6300esb_is_chosen_as_hardware() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "watchdog0", "i6300ESB timer");
        let all = scan(dir.path());
        let best = choose(&all).unwrap();
        assert!(best.kind.real_time());
        assert_eq!(
            best.to_string(),
            "/dev/watchdog0 (\"i6300ESB timer\", chipset timer)"
        );
    }

    #[test]
    fn legacy_ipmi_watchdog_is_found_without_a_class_entry() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sys/module/ipmi_watchdog")).unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        fs::write(dir.path().join("dev/watchdog"), "").unwrap();
        let all = scan(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].kind, all[0].device.as_path()),
            (WatchdogKind::Bmc, Path::new("/dev/watchdog"))
        );
        // With a watchdog-core watchdog0, /dev/watchdog is that one.
        fake(dir.path(), "watchdog0", "Software Watchdog");
        assert_eq!(scan(dir.path()).len(), 1);
    }

    #[test]
    fn an_explicit_device_is_looked_up_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fake(dir.path(), "watchdog0", "iTCO_wdt");
        fake(dir.path(), "watchdog1", "Software Watchdog");
        let id = |p: &str| identity_of(dir.path(), Path::new(p));
        assert_eq!(id("/dev/watchdog").as_deref(), Some("iTCO_wdt"));
        assert_eq!(id("/dev/watchdog1").as_deref(), Some("Software Watchdog"));
        assert_eq!(id("/tmp/x/watchdog"), None, "a test file is no device");
        assert_eq!(id("/tmp/fake-file"), None);
    }

    #[test]
    fn a_tco_counts_twice_so_it_is_asked_for_half_the_plan() {
        assert_eq!(expiries_to_reset("iTCO_wdt"), 2);
        assert_eq!(expiries_to_reset("i6300ESB timer"), 1);
        assert_eq!(expiries_to_reset(SOFTDOG_IDENTITY), 1);
        assert_eq!(timeout_requests(5, 2), [2, 3, 4, 5]);
        assert_eq!(timeout_requests(5, 1), [5]);
        assert_eq!(reset_bound_s(3, 2), 6);
        assert_eq!(reset_bound_s(5, 1), 5);
    }
}
