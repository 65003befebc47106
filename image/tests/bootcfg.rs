//! The ISO's boot-loader configs as `mkbootcfg` writes them for
//! `image/build.sh`: locked (no prompt, no editing, no boot-loader command
//! line, no typed kernel options), accepted by GRUB's own parser
//! (`grub-script-check`, from the `grub-common` package `make image` needs),
//! and the checks refuse the unlocked configs the ISO used to carry.

use std::path::Path;
use std::process::Command;

use image::bootcfg::{self, BootCfgError, Cmdline};

const MKBOOTCFG: &str = env!("CARGO_BIN_EXE_mkbootcfg");
const CMDLINE: &str = "console=ttyS0,115200 panic=10 loglevel=4";

/// The configs `image/build.sh` wrote before the boot menu was locked.
const OLD_ISOLINUX: &str = "SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT ftappliance\n\
LABEL ftappliance\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initrd.img console=ttyS0,115200\n";
const OLD_GRUB: &str = "set timeout=0\nset default=0\nmenuentry \"ftappliance\" {\n  \
linux /boot/vmlinuz console=ttyS0,115200\n  initrd /boot/initrd.img\n}\n";

fn write_all(dir: &Path, cmdline: &str) -> std::process::Output {
    Command::new(MKBOOTCFG)
        .args(["--cmdline", cmdline, "--label", "FTAPPLIANCE"])
        .arg("--isolinux")
        .arg(dir.join("isolinux.cfg"))
        .arg("--grub")
        .arg(dir.join("grub.cfg"))
        .arg("--grub-embed")
        .arg(dir.join("grub-embed.cfg"))
        .output()
        .expect("mkbootcfg runs")
}

fn grub_script_check(path: &Path) {
    let out = Command::new("grub-script-check")
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("grub-script-check (Debian package grub-common, installed by `make image`'s prerequisites) cannot run: {e}")
        });
    assert!(
        out.status.success(),
        "grub-script-check refuses {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn written_configs_are_locked_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let out = write_all(dir.path(), CMDLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let isolinux = std::fs::read_to_string(dir.path().join("isolinux.cfg")).unwrap();
    let grub = std::fs::read_to_string(dir.path().join("grub.cfg")).unwrap();
    let embed = std::fs::read_to_string(dir.path().join("grub-embed.cfg")).unwrap();
    for line in ["PROMPT 0", "NOESCAPE 1", "ALLOWOPTIONS 0", "IMPLICIT 0"] {
        assert!(
            isolinux.lines().any(|l| l == line),
            "{line} missing:\n{isolinux}"
        );
    }
    assert!(isolinux.contains(&format!("APPEND initrd=/boot/initrd.img {CMDLINE}\n")));
    assert!(
        grub.starts_with("set superusers=\"\"\nexport superusers\n"),
        "{grub}"
    );
    assert!(
        grub.contains("menuentry \"ftappliance\" --unrestricted {"),
        "{grub}"
    );
    assert!(grub.contains(&format!("linux /boot/vmlinuz {CMDLINE}\n")));
    assert!(embed.starts_with("set superusers=\"\"\n"), "{embed}");
    assert!(embed.contains("--label FTAPPLIANCE"), "{embed}");
    grub_script_check(&dir.path().join("grub.cfg"));
    grub_script_check(&dir.path().join("grub-embed.cfg"));
    let check = Command::new(MKBOOTCFG)
        .arg("--check")
        .arg("--isolinux")
        .arg(dir.path().join("isolinux.cfg"))
        .arg("--grub")
        .arg(dir.path().join("grub.cfg"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn the_old_unlocked_configs_are_refused() {
    let e = bootcfg::check_isolinux(OLD_ISOLINUX)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "isolinux.cfg: lacks `NOESCAPE 1`; lacks `ALLOWOPTIONS 0`; lacks `IMPLICIT 0`"
    );
    let e = bootcfg::check_grub(OLD_GRUB).unwrap_err().to_string();
    assert!(
        e.starts_with("grub.cfg: lacks `set superusers=\"\"`"),
        "{e}"
    );
    assert!(e.contains("is not --unrestricted"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("isolinux.cfg"), OLD_ISOLINUX).unwrap();
    std::fs::write(dir.path().join("grub.cfg"), OLD_GRUB).unwrap();
    let check = Command::new(MKBOOTCFG)
        .arg("--check")
        .arg("--isolinux")
        .arg(dir.path().join("isolinux.cfg"))
        .arg("--grub")
        .arg(dir.path().join("grub.cfg"))
        .output()
        .unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("boot menu not locked"), "{err}");
}

#[test]
fn other_ways_to_unlock_are_refused() {
    let c = Cmdline::new(CMDLINE).unwrap();
    let locked = bootcfg::isolinux_cfg(&c);
    for (edit, why) in [
        (
            locked.replace("NOESCAPE 1", "NOESCAPE 0"),
            "lacks `NOESCAPE 1`",
        ),
        (locked.clone() + "UI menu.c32\n", "has `UI menu.c32`"),
        (
            locked.clone() + "LABEL shell\n  KERNEL /x\n",
            "has 2 LABEL entries",
        ),
        (
            locked.replace("loglevel=4", "loglevel=4 ft.test=vmctl"),
            "ft.test=vmctl is an appliance option",
        ),
    ] {
        let e = bootcfg::check_isolinux(&edit).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
    let locked = bootcfg::grub_cfg(&c);
    for (edit, why) in [
        (
            locked.replace(" --unrestricted", ""),
            "is not --unrestricted",
        ),
        (
            locked.replace("set superusers=\"\"\n", ""),
            "lacks `set superusers",
        ),
        (
            locked.clone() + "password root x\n",
            "has `password root x`",
        ),
        (
            locked.replace("set superusers=\"\"\n", "") + "set superusers=\"\"\n",
            "only after a menuentry",
        ),
    ] {
        let e = bootcfg::check_grub(&edit).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn a_command_line_the_loader_would_interpret_is_refused() {
    for (bad, why) in [
        ("", "is empty"),
        (
            "console=ttyS0 ft.fault=crash:heartbeat",
            "is an appliance option",
        ),
        ("console=ttyS0\nft.x", "not printable ASCII"),
        ("console=ttyS0 }; menuentry x {", "would be interpreted"),
        ("init=$root", "would be interpreted"),
    ] {
        match Cmdline::new(bad) {
            Err(BootCfgError::Cmdline { problem, .. }) => {
                assert!(problem.contains(why), "{bad:?}: {problem}")
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = write_all(dir.path(), "console=ttyS0 ft.test=vmctl");
    assert!(!out.status.success());
    assert!(!dir.path().join("isolinux.cfg").exists());
    assert!(bootcfg::grub_embed_cfg("FT APPLIANCE").is_err());
}
