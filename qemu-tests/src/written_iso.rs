//! The appliance ISO as an operator installs it (issue 16, docs/operators-guide):
//! the hybrid image written with `dd` onto a USB stick or onto a server's own
//! disk, then booted from that disk by the firmware — not from a CD-ROM, as
//! every other QEMU test does.
//!
//! [`write_like_dd`] makes the medium: a byte-for-byte copy of the ISO at the
//! start of a larger, otherwise empty image, as `dd if=ftappliance.iso
//! of=/dev/sdX` leaves a stick bigger than the ISO (so the GPT's backup
//! header is not at the end of the disk, as on real media). [`BootDisk`] says
//! which controller the firmware finds it on.

use std::ffi::OsString;
use std::path::Path;

use crate::error::{HarnessError, Result};

/// The size of the emulated stick or disk the ISO is written to.
pub const MEDIUM_BYTES: u64 = 256 << 20;

/// Where the written ISO sits, as the firmware sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDisk {
    /// A removable USB mass-storage device on an xHCI controller: a stick.
    UsbStick,
    /// A SATA disk on an AHCI controller: a server's local disk.
    Ahci,
    /// An NVMe disk: a newer server's local disk.
    Nvme,
}

impl BootDisk {
    /// The QEMU arguments that attach `image` as this disk, first in the
    /// boot order (`bootindex=0`, which SeaBIOS and OVMF both honour).
    pub fn qemu_args(self, image: &Path) -> Vec<OsString> {
        let file = image.display().to_string().replace(',', ",,");
        let mut a: Vec<OsString> = vec![
            "-drive".into(),
            format!("file={file},if=none,format=raw,id=written").into(),
        ];
        let devices: &[&str] = match self {
            BootDisk::UsbStick => &[
                "qemu-xhci,id=xhci",
                "usb-storage,bus=xhci.0,drive=written,removable=on,bootindex=0",
            ],
            // Its own controller, so the same arguments serve `pc` (no AHCI
            // of its own) and q35 (whose ICH9 AHCI holds the config disk).
            BootDisk::Ahci => &[
                "ahci,id=ahci0",
                "ide-hd,bus=ahci0.0,drive=written,bootindex=0",
            ],
            BootDisk::Nvme => &["nvme,serial=FTINSTALL,drive=written,bootindex=0"],
        };
        for d in devices {
            a.push("-device".into());
            a.push((*d).into());
        }
        a
    }

    /// What the firmware's own console line calls this disk: SeaBIOS says
    /// `Booting from Hard Disk...` for all three; OVMF names the device in
    /// `BdsDxe: starting Boot000N "UEFI QEMU <this> …"`.
    pub fn uefi_name(self) -> &'static str {
        match self {
            BootDisk::UsbStick => "QEMU USB HARDDRIVE",
            BootDisk::Ahci => "QEMU HARDDISK",
            BootDisk::Nvme => "NVMe Ctrl FTINSTALL",
        }
    }
}

/// Writes `iso` to a new `dest` of [`MEDIUM_BYTES`] as `dd` would: the ISO's
/// bytes at offset 0, the rest of the medium zero (sparse here).
pub fn write_like_dd(iso: &Path, dest: &Path) -> Result<()> {
    let io = |what: String| move |source| HarnessError::Io { what, source };
    let len = std::fs::metadata(iso)
        .map_err(io(format!("reading {}", iso.display())))?
        .len();
    if len > MEDIUM_BYTES {
        return Err(HarnessError::Io {
            what: format!("writing {} to a {MEDIUM_BYTES}-byte medium", iso.display()),
            source: std::io::Error::other(format!(
                "the ISO is {len} bytes: larger than the medium"
            )),
        });
    }
    std::fs::copy(iso, dest).map_err(io(format!(
        "copying {} to {}",
        iso.display(),
        dest.display()
    )))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .and_then(|f| f.set_len(MEDIUM_BYTES))
        .map_err(io(format!(
            "growing {} to {MEDIUM_BYTES} bytes",
            dest.display()
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_medium_starts_with_the_iso_and_is_zero_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("a.iso");
        let iso_bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&iso, &iso_bytes).unwrap();
        let medium = dir.path().join("stick.img");
        write_like_dd(&iso, &medium).unwrap();
        let written = std::fs::read(&medium).unwrap();
        assert_eq!(written.len() as u64, MEDIUM_BYTES);
        assert_eq!(&written[..iso_bytes.len()], &iso_bytes[..]);
        assert!(written[iso_bytes.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_missing_iso_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_like_dd(&dir.path().join("none.iso"), &dir.path().join("s.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.iso"), "{e}");
    }

    #[test]
    fn each_disk_is_first_in_the_boot_order() {
        for d in [BootDisk::UsbStick, BootDisk::Ahci, BootDisk::Nvme] {
            let a: Vec<String> = d
                .qemu_args(Path::new("/x/s,1.img"))
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect();
            assert!(a[1].starts_with("file=/x/s,,1.img,"), "{a:?}");
            assert!(a.last().unwrap().contains("bootindex=0"), "{a:?}");
        }
    }
}
