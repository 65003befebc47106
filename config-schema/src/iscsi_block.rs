//! Which block device is an iSCSI LUN (`storage.device = { iscsi = {...} }`)
//! once this host is logged in to its target: read from sysfs, for every
//! crate that resolves the locator (fencing, ftvmm, init), none of which
//! logs in itself (init does that before).
//!
//! The kernel shows a logged-in session as `/sys/class/iscsi_session/sessionN`
//! with the target's name in `targetname`, and puts the session's SCSI
//! devices below it in the device tree:
//!
//! ```text
//! /sys/block/sdb/device -> /sys/devices/platform/host2/session1/target2:0:0/2:0:0:1
//! ```
//!
//! The LUN is the block device whose `device` link resolves through
//! `sessionN` of a session to the target and whose SCSI address `H:C:T:L`
//! (the link's last component) has `L` = the LUN.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path};

use crate::model::IscsiLun;

/// Why no block device is the LUN (yet: the kernel scans a new session's
/// LUNs after the login returns).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IscsiBlockError {
    #[error(
        "no block device for LUN {lun} of {target}: no iSCSI session to that target \
         (sessions: [{}])",
        .seen.join(", ")
    )]
    NoSession {
        lun: u32,
        target: String,
        /// The sessions there are, as `sessionN=<targetname>`.
        seen: Vec<String>,
    },
    #[error("no block device for LUN {lun} of {target}: {}", .why.join("; "))]
    NoLun {
        lun: u32,
        target: String,
        /// Per session to the target: `session1 has no LUN 1 (its block
        /// devices: sdb = LUN 0)`.
        why: Vec<String>,
    },
}

/// A session the kernel has: `/sys/class/iscsi_session/sessionN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub number: u32,
    /// `sessionN`.
    pub name: String,
    /// Its `targetname` (empty when unreadable).
    pub target: String,
    /// Its `state`: `LOGGED_IN`, `FAILED`, `FREE` (empty when unreadable).
    pub state: String,
}

impl Session {
    pub fn logged_in(&self) -> bool {
        self.state == "LOGGED_IN"
    }
}

/// Every session under `sys` (the sysfs mount), by number.
pub fn sessions(sys: &Path) -> Vec<Session> {
    let dir = sys.join("class/iscsi_session");
    numbered(&dir, "session")
        .into_iter()
        .map(|(number, name)| {
            let read = |f: &str| {
                fs::read_to_string(dir.join(&name).join(f))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_default()
            };
            Session {
                number,
                target: read("targetname"),
                state: read("state"),
                name,
            }
        })
        .collect()
}

/// The name (`sdb`) of the block device that is LUN `lun.lun` of target
/// `lun.target`, under `sys` (the sysfs mount: `/sys` on a host).
///
/// Only the target name and the LUN matter: the portal and the initiator
/// name are how init logged in, and a host has one session to the target.
/// Should it have several (it should not: init logs in once), the LUN of
/// the session with the highest number wins. The kernel numbers sessions
/// upward as it creates them and reuses the number of one that ended only
/// when it is the lowest free, so with the sessions of one boot the
/// highest is the latest login; the rule is above all deterministic, so
/// that every consumer on the host (fencing, ftvmm) picks the same device.
pub fn find_block(sys: &Path, lun: &IscsiLun) -> Result<String, IscsiBlockError> {
    let mut seen = Vec::new();
    let mut sessions = BTreeMap::new();
    for s in self::sessions(sys) {
        if s.target == lun.target {
            sessions.insert(s.number, Vec::new());
        }
        seen.push(format!("{}={}", s.name, s.target));
    }
    if sessions.is_empty() {
        return Err(IscsiBlockError::NoSession {
            lun: lun.lun,
            target: lun.target.clone(),
            seen,
        });
    }
    let mut blocks: Vec<String> = fs::read_dir(sys.join("block"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    blocks.sort();
    for block in blocks {
        let Ok(dev) = fs::canonicalize(sys.join("block").join(&block).join("device")) else {
            continue;
        };
        // The nearest session above the device is its own.
        let session = dev.components().rev().find_map(|c| match c {
            Component::Normal(s) => s.to_str().and_then(|s| number(s, "session")),
            _ => None,
        });
        let Some(luns) = session.and_then(|n| sessions.get_mut(&n)) else {
            continue;
        };
        let scsi_lun = dev
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit(':').next())
            .and_then(|l| l.parse::<u64>().ok());
        if let Some(l) = scsi_lun {
            luns.push((l, block));
        }
    }
    let found = sessions.iter().rev().find_map(|(_, luns)| {
        luns.iter()
            .find(|(l, _)| *l == u64::from(lun.lun))
            .map(|(_, b)| b.clone())
    });
    found.ok_or_else(|| IscsiBlockError::NoLun {
        lun: lun.lun,
        target: lun.target.clone(),
        why: sessions
            .iter()
            .map(|(n, luns)| {
                let have: Vec<String> =
                    luns.iter().map(|(l, b)| format!("{b} = LUN {l}")).collect();
                format!(
                    "session{n} has no LUN {} (its block devices: [{}])",
                    lun.lun,
                    have.join(", ")
                )
            })
            .collect(),
    })
}

/// `N` of a name `<prefix>N` (decimal digits only).
fn number(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The entries `<prefix>N` of `dir`, by `N`.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|name| Some((number(&name, prefix)?, name)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Builds what the kernel shows of a logged-in iSCSI disk in a fake sysfs
/// tree at `sys`, for tests of the crates that resolve the locator.
pub mod fake {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// Session `session` to `target`, as the kernel
    /// shows it: `class/iscsi_session/sessionN/targetname`.
    pub fn session(sys: &Path, session: u32, target: &str) {
        let d = sys.join(format!("class/iscsi_session/session{session}"));
        fs::create_dir_all(&d).expect("create a fake session");
        fs::write(d.join("targetname"), format!("{target}\n")).expect("write targetname");
    }

    /// Block device `block` for LUN `lun` of session `session` on SCSI
    /// host `host`, `sectors` 512-byte sectors long: the device directory
    /// `devices/platform/hostH/sessionN/targetH:0:0/H:0:0:L/block/<block>`,
    /// `block/<block>` a link to it, and its `device` link back up.
    pub fn disk(sys: &Path, block: &str, host: u32, session: u32, lun: u32, sectors: u64) {
        let scsi = format!(
            "devices/platform/host{host}/session{session}/target{host}:0:0/{host}:0:0:{lun}"
        );
        let dir = sys.join(&scsi).join("block").join(block);
        fs::create_dir_all(&dir).expect("create a fake SCSI disk");
        fs::write(dir.join("size"), format!("{sectors}\n")).expect("write size");
        symlink(format!("../../../{host}:0:0:{lun}"), dir.join("device")).expect("device link");
        fs::create_dir_all(sys.join("block")).expect("create block/");
        symlink(
            format!("../{scsi}/block/{block}"),
            sys.join("block").join(block),
        )
        .expect("block link");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "iqn.2026-01.test.ftappliance:shared";

    fn lun(n: u32) -> IscsiLun {
        IscsiLun {
            portal: "10.0.2.100:3260".into(),
            target: TARGET.into(),
            lun: n,
            tpgt: 1,
            initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
            chap: None,
        }
    }

    /// vda (virtio, no session); session1 to TARGET with sdb = LUN 0 and
    /// sdc = LUN 1; session2 to another target with sdd = LUN 1.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        fs::create_dir_all(sys.join("devices/pci0000:00/virtio1/block/vda")).unwrap();
        fs::create_dir_all(sys.join("block")).unwrap();
        std::os::unix::fs::symlink(
            "../devices/pci0000:00/virtio1/block/vda",
            sys.join("block/vda"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../../virtio1", sys.join("block/vda/device")).unwrap();
        fake::session(sys, 1, TARGET);
        fake::disk(sys, "sdb", 2, 1, 0, 8);
        fake::disk(sys, "sdc", 2, 1, 1, 8);
        fake::session(sys, 2, "iqn.2026-01.test.other:disk");
        fake::disk(sys, "sdd", 3, 2, 1, 8);
        t
    }

    #[test]
    fn the_lun_of_the_session_to_the_target() {
        let t = tree();
        assert_eq!(find_block(t.path(), &lun(1)).unwrap(), "sdc");
        assert_eq!(find_block(t.path(), &lun(0)).unwrap(), "sdb");
    }

    #[test]
    fn no_session_to_the_target() {
        let t = tree();
        let mut l = lun(1);
        l.target = "iqn.2026-01.test.none:x".into();
        assert_eq!(
            find_block(t.path(), &l).unwrap_err().to_string(),
            "no block device for LUN 1 of iqn.2026-01.test.none:x: no iSCSI session to that \
             target (sessions: [session1=iqn.2026-01.test.ftappliance:shared, \
             session2=iqn.2026-01.test.other:disk])"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            find_block(empty.path(), &lun(1)),
            Err(IscsiBlockError::NoSession { seen, .. }) if seen.is_empty()
        ));
    }

    #[test]
    fn a_session_without_the_lun() {
        let t = tree();
        assert_eq!(
            find_block(t.path(), &lun(7)).unwrap_err().to_string(),
            "no block device for LUN 7 of iqn.2026-01.test.ftappliance:shared: session1 has no \
             LUN 7 (its block devices: [sdb = LUN 0, sdc = LUN 1])"
        );
        // Logged in, LUNs not scanned yet.
        let fresh = tempfile::tempdir().unwrap();
        fake::session(fresh.path(), 4, TARGET);
        assert_eq!(
            find_block(fresh.path(), &lun(1)).unwrap_err().to_string(),
            "no block device for LUN 1 of iqn.2026-01.test.ftappliance:shared: session4 has no \
             LUN 1 (its block devices: [])"
        );
    }

    #[test]
    fn of_two_sessions_to_the_target_the_highest_numbered() {
        let t = tree();
        fake::session(t.path(), 12, TARGET);
        fake::disk(t.path(), "sde", 13, 12, 1, 8);
        assert_eq!(find_block(t.path(), &lun(1)).unwrap(), "sde");
        // Only the sessions that have the LUN count.
        assert_eq!(find_block(t.path(), &lun(0)).unwrap(), "sdb");
        // Numbers, not names: session12 is above session2 and session1.
        assert_eq!(number("session12", "session"), Some(12));
        assert_eq!(number("session", "session"), None);
        assert_eq!(number("session1a", "session"), None);
    }
}
