//! Locating the shared block device named by `storage.device`.
//!
//! Takes a `root` under which `sys` and `dev` live, so tests run over a
//! temporary tree; on the appliance the root is `/`. An iSCSI LUN is found
//! once init has logged in, by its session in sysfs
//! ([`config_schema::iscsi_block`]).

use std::fs;
use std::path::{Path, PathBuf};

use config_schema::iscsi_block::{self, IscsiBlockError};
use config_schema::DeviceLocator;
use serde::Serialize;

/// The shared device as found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedDevice {
    /// Device node, e.g. `/dev/vdc`.
    pub path: PathBuf,
    /// Size in bytes (from `/sys/block/X/size`, 512-byte sectors) when known.
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("no block device with serial {serial:?} (serials seen: [{}])", .seen.join(", "))]
    NoSerial { serial: String, seen: Vec<String> },
    #[error("{0} does not exist")]
    NoPath(String),
    #[error(transparent)]
    Iscsi(#[from] IscsiBlockError),
}

/// Finds the device under `root`.
pub fn locate(root: &Path, locator: &DeviceLocator) -> Result<SharedDevice, LocateError> {
    match locator {
        DeviceLocator::Serial(serial) => {
            let mut seen = Vec::new();
            let mut names: Vec<String> = fs::read_dir(root.join("sys/block"))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            for name in names {
                let sys = root.join("sys/block").join(&name);
                let Some(s) = serial_of(&sys) else {
                    continue;
                };
                if &s == serial {
                    return Ok(SharedDevice {
                        path: PathBuf::from("/dev").join(&name),
                        size_bytes: sysfs_size(&sys),
                    });
                }
                seen.push(format!("{name}={s}"));
            }
            Err(LocateError::NoSerial {
                serial: serial.clone(),
                seen,
            })
        }
        DeviceLocator::Path(p) => {
            let rel = p.trim_start_matches('/');
            if !root.join(rel).exists() {
                return Err(LocateError::NoPath(p.clone()));
            }
            let name = Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let sys = root.join("sys/block").join(name);
            Ok(SharedDevice {
                path: PathBuf::from(p),
                size_bytes: sysfs_size(&sys),
            })
        }
        DeviceLocator::Iscsi(lun) => {
            let name = iscsi_block::find_block(&root.join("sys"), lun)?;
            Ok(SharedDevice {
                path: PathBuf::from("/dev").join(&name),
                size_bytes: sysfs_size(&root.join("sys/block").join(&name)),
            })
        }
    }
}

/// The serial number of the block device whose sysfs directory is `sys`:
/// `serial` (virtio-blk), `device/serial` (NVMe), or the unit serial number
/// of a SCSI disk, VPD page 0x80 (`device/vpd_pg80`: a 4-byte header, then
/// the serial, padded with spaces; tgt pads on the left).
pub fn serial_of(sys: &Path) -> Option<String> {
    for rel in ["serial", "device/serial"] {
        if let Ok(s) = fs::read_to_string(sys.join(rel)) {
            return Some(s.trim().to_string());
        }
    }
    let page = fs::read(sys.join("device/vpd_pg80")).ok()?;
    let len = usize::from(u16::from_be_bytes([*page.get(2)?, *page.get(3)?]));
    if page[1] != 0x80 {
        return None;
    }
    let serial = page.get(4..(4 + len).min(page.len()))?;
    let text = String::from_utf8_lossy(serial);
    Some(
        text.trim_matches(|c: char| c == ' ' || c == '\0')
            .to_string(),
    )
}

fn sysfs_size(sys: &Path) -> Option<u64> {
    let sectors: u64 = fs::read_to_string(sys.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    sectors.checked_mul(512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (name, serial, sectors) in [
            ("vda", Some("CFGDISK"), 2048u64),
            ("vdb", Some("FTSHARED"), 524288),
            ("sr0", None, 0),
        ] {
            let d = t.path().join("sys/block").join(name);
            fs::create_dir_all(&d).unwrap();
            if let Some(s) = serial {
                fs::write(d.join("serial"), format!("{s}\n")).unwrap();
            }
            fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        }
        // A SCSI disk as tgt exports it: no `serial`, the unit serial number
        // in VPD page 0x80, right-aligned in 36 bytes.
        let sda = t.path().join("sys/block/sda");
        fs::create_dir_all(sda.join("device")).unwrap();
        let mut page = vec![0x00, 0x80, 0x00, 36];
        page.extend_from_slice(format!("{:>36}", "ISCSIDISK").as_bytes());
        fs::write(sda.join("device/vpd_pg80"), page).unwrap();
        fs::write(sda.join("size"), "131072\n").unwrap();
        fs::create_dir_all(t.path().join("dev")).unwrap();
        fs::write(t.path().join("dev/vdb"), b"").unwrap();
        t
    }

    #[test]
    fn found_by_serial_with_its_size() {
        let t = tree();
        let d = locate(t.path(), &DeviceLocator::Serial("FTSHARED".into())).unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/vdb"));
        assert_eq!(d.size_bytes, Some(256 << 20));
    }

    #[test]
    fn missing_serial_lists_what_was_seen() {
        let t = tree();
        let e = locate(t.path(), &DeviceLocator::Serial("NOPE".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no block device with serial \"NOPE\" (serials seen: [sda=ISCSIDISK, vda=CFGDISK, vdb=FTSHARED])"
        );
    }

    #[test]
    fn a_scsi_disk_is_found_by_its_vpd_serial() {
        let t = tree();
        let d = locate(t.path(), &DeviceLocator::Serial("ISCSIDISK".into())).unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/sda"));
        assert_eq!(d.size_bytes, Some(64 << 20));
        // A page that is not 0x80, or too short, names no serial.
        let sda = t.path().join("sys/block/sda/device/vpd_pg80");
        fs::write(&sda, [0, 0x83, 0, 4, b'A', b'B', b'C', b'D']).unwrap();
        assert_eq!(serial_of(&t.path().join("sys/block/sda")), None);
        fs::write(&sda, [0, 0x80]).unwrap();
        assert_eq!(serial_of(&t.path().join("sys/block/sda")), None);
    }

    #[test]
    fn by_path() {
        let t = tree();
        let d = locate(t.path(), &DeviceLocator::Path("/dev/vdb".into())).unwrap();
        assert_eq!(d.size_bytes, Some(256 << 20));
        assert_eq!(
            locate(t.path(), &DeviceLocator::Path("/dev/vdz".into())).unwrap_err(),
            LocateError::NoPath("/dev/vdz".into())
        );
    }

    fn iscsi(target: &str, lun: u32) -> DeviceLocator {
        DeviceLocator::Iscsi(config_schema::IscsiLun {
            portal: "10.0.2.100:3260".into(),
            target: target.into(),
            lun,
            tpgt: 1,
            initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
            chap: None,
        })
    }

    const TARGET: &str = "iqn.2026-01.test.ftappliance:shared";

    #[test]
    fn an_iscsi_lun_by_its_session_with_its_size() {
        let t = tree();
        let sys = t.path().join("sys");
        iscsi_block::fake::session(&sys, 1, TARGET);
        iscsi_block::fake::disk(&sys, "sdb", 2, 1, 0, 8);
        iscsi_block::fake::disk(&sys, "sdc", 2, 1, 1, 262144);
        let d = locate(t.path(), &iscsi(TARGET, 1)).unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/sdc"));
        assert_eq!(d.size_bytes, Some(128 << 20));
        let e = locate(t.path(), &iscsi(TARGET, 2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no block device for LUN 2 of iqn.2026-01.test.ftappliance:shared: session1 has no \
             LUN 2 (its block devices: [sdb = LUN 0, sdc = LUN 1])"
        );
        let e = locate(t.path(), &iscsi("iqn.2026-01.test.ftappliance:other", 1)).unwrap_err();
        assert!(
            e.to_string().ends_with(
                ": no iSCSI session to that target (sessions: \
                 [session1=iqn.2026-01.test.ftappliance:shared])"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_iscsi_lun_before_the_login_is_not_found() {
        let t = tree();
        assert!(matches!(
            locate(t.path(), &iscsi(TARGET, 1)),
            Err(LocateError::Iscsi(IscsiBlockError::NoSession { .. }))
        ));
    }
}
