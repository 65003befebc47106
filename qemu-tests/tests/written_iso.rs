//! The ISO installed as the operator's guide says (issue 16): written with
//! `dd` to a USB stick or to a server's local disk, then booted from that
//! disk — BIOS and UEFI, stick and disk. Every other QEMU test boots the ISO
//! as a CD-ROM, which is not how a server gets it.
//!
//! Each test writes the shipped ISO to the start of a 256 MiB medium
//! (`qemu_tests::written_iso`), attaches it as a USB stick, an AHCI disk or
//! an NVMe disk (and no CD-ROM), and checks from the console that the
//! firmware booted that disk (SeaBIOS's `Booting from Hard Disk` and
//! ISOLINUX's hybrid-disk banner `EHDD`; OVMF's `BdsDxe: starting` line
//! naming the device) and that host-a reached `appliance ready` with its
//! signed config and no refusal, its daemons started. Boot-to-ready is
//! printed.
//!
//! The firmwares are QEMU's (SeaBIOS, Debian's OVMF); a real board's BIOS or
//! UEFI boot menu is not exercised. Needs `out/ftappliance.iso` (or
//! `FT_ISO`), qemu-system-x86_64 and the `ovmf` package; FAILS with a clear
//! message when one is missing.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use qemu_tests::written_iso::{write_like_dd, BootDisk};
use qemu_tests::{Boot, Cluster, Machine};

/// Generous: TCG on a busy 2-core machine; a boot normally takes 10–40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The firmware a test boots with.
#[derive(Clone, Copy, Debug)]
enum Firmware {
    /// SeaBIOS on QEMU's `pc`: the ISO's MBR, then ISOLINUX.
    Bios,
    /// OVMF on the server profile (q35, pflash): the ISO's EFI partition,
    /// then GRUB.
    UefiServer,
}

/// Boots host-a from the ISO written to `disk`, under `firmware`, and
/// checks it got there from that disk and reached ready.
fn boots_to_ready_from(name: &str, disk: BootDisk, firmware: Firmware) {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example(name).unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    std::fs::create_dir_all(&spec.work_dir).unwrap();
    let image = spec.work_dir.join("written.img");
    write_like_dd(cluster.iso(), &image).unwrap();
    if let Firmware::UefiServer = firmware {
        spec.machine = Machine::server_q35().unwrap();
    }
    spec.boot = Boot::Written {
        image,
        disk,
        firmware: None,
    };
    let args: Vec<String> = spec
        .qemu_args()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        !args.iter().any(|a| a.contains("cdrom")),
        "the host has a CD-ROM: {args:?}"
    );

    let host = cluster.boot_spec(spec).unwrap();
    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!(
        "boot-to-ready ({firmware:?}, ISO written to {disk:?}): {:.1} s",
        ready.at.as_secs_f64()
    );
    let now = Duration::ZERO;
    match firmware {
        Firmware::Bios => {
            host.wait_for("Booting from Hard Disk", now)
                .expect("SeaBIOS did not boot from a hard disk");
            // ISOLINUX's banner says EHDD when isohdpfx's MBR started it
            // from a disk (an El Torito CD boot prints no such tag).
            host.wait_for(
                qemu_tests::Pattern::regex(r"ISOLINUX \S+ \S+ EHDD").unwrap(),
                now,
            )
            .expect("ISOLINUX was not started from the hybrid MBR");
        }
        Firmware::UefiServer => {
            let line = host
                .wait_for("BdsDxe: starting Boot", now)
                .expect("OVMF did not start a boot option");
            assert!(
                line.contains(disk.uefi_name()),
                "OVMF booted something else than the {disk:?}: {line}"
            );
        }
    }
    assert_eq!(host.console().count("config refused"), 0);
    host.wait_for("config accepted from ", now).unwrap();
    for daemon in ["ftvmm", "heartbeat", "fencing"] {
        host.wait_for(format!("init: started {daemon} pid="), now)
            .unwrap();
    }
    cluster.pass();
}

#[test]
fn bios_boots_the_iso_written_to_a_usb_stick() {
    boots_to_ready_from("written-bios-usb", BootDisk::UsbStick, Firmware::Bios);
}

#[test]
fn bios_boots_the_iso_written_to_an_ahci_disk() {
    boots_to_ready_from("written-bios-ahci", BootDisk::Ahci, Firmware::Bios);
}

#[test]
fn uefi_boots_the_iso_written_to_a_usb_stick() {
    boots_to_ready_from("written-uefi-usb", BootDisk::UsbStick, Firmware::UefiServer);
}

#[test]
fn uefi_boots_the_iso_written_to_an_nvme_disk() {
    boots_to_ready_from("written-uefi-nvme", BootDisk::Nvme, Firmware::UefiServer);
}
