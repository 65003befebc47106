//! `ftctl image write` / `ftctl image check` on a sparse file standing in for
//! the shared device: the operator's path (write with blank pins, paste the
//! printed lines, check, sign) and the one-line refusals.

use std::path::{Path, PathBuf};

mod common;
use common::{fails, ok};

const LINUX: &str = include_str!("../../examples/linux-vm.toml");
const KERNEL_PIN: &str = "kernel = { offset_mib = 0, size_bytes = 14, sha256 = \"96a4524ffd2777487070777b1ed5d24b4540c146da072adeb03196aa4977aa1f\" }";
const INITRD_PIN: &str = "initrd = { offset_mib = 32, size_bytes = 14, sha256 = \"ce377c737f4975553f8a17bf549bd0306a23aa4e976ffe480bfb5d1f570d31e9\" }";

struct Files {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        std::fs::File::create(dir.join("dev"))
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        std::fs::write(dir.join("kernel"), "example kernel").unwrap();
        std::fs::write(dir.join("initrd"), "example initrd").unwrap();
        Files { _dir: t, dir }
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
    fn config(&self, name: &str, text: &str) -> String {
        std::fs::write(self.dir.join(name), text).unwrap();
        self.p(name)
    }
}

fn write_args<'a>(f: &'a [String; 4], which: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec!["image", "write", "--device", &f[0], "--config", &f[1]];
    v.extend(which);
    v.extend(["--kernel", &f[2], "--initrd", &f[3]]);
    v
}

#[test]
fn write_with_blank_pins_then_paste_check_and_sign() {
    let f = Files::new();
    // The operator's first config: the image placed, not yet pinned.
    let blank = LINUX
        .replace(KERNEL_PIN, "kernel = { offset_mib = 0 }")
        .replace(INITRD_PIN, "initrd = { offset_mib = 32 }");
    let cfg = f.config("blank.toml", &blank);
    let e = fails(&["check", "--config", &cfg]);
    assert!(e.contains("images[0].kernel.sha256: is not pinned"), "{e}");
    let args = [f.p("dev"), cfg.clone(), f.p("kernel"), f.p("initrd")];
    let out = ok(&write_args(&args, &["--vm", "web"]));
    assert!(out.contains(KERNEL_PIN), "{out}");
    assert!(out.contains(INITRD_PIN), "{out}");
    assert!(out.contains("pins other bytes (or none)"), "{out}");
    // Pasted: the example itself. It checks, and writing again changes nothing.
    let cfg = f.config("pinned.toml", LINUX);
    let out = ok(&[
        "image",
        "check",
        "--device",
        &f.p("dev"),
        "--config",
        &cfg,
        "--image",
        "web-linux",
    ]);
    assert!(out.starts_with("ok: image \"web-linux\" on "), "{out}");
    let args = [f.p("dev"), cfg.clone(), f.p("kernel"), f.p("initrd")];
    let out = ok(&write_args(&args, &["--image", "web-linux"]));
    assert!(out.contains("the config already pins these bytes"), "{out}");
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dev-keys");
    ok(&[
        "make-disk",
        "--config",
        &cfg,
        "--host",
        "host-a",
        "--key",
        key.join("signing.pk8").to_str().unwrap(),
        "--out",
        &f.p("host-a.disk"),
    ]);
    // The signed disk holds the new fields; show prints them back as TOML.
    let out = ok(&[
        "verify",
        "--disk",
        &f.p("host-a.disk"),
        "--pubkey",
        key.join("signing.pub").to_str().unwrap(),
    ]);
    assert!(
        out.starts_with("ok: host host-a (id 1), cluster demo generation 1: 3 hosts, 2 VMs"),
        "{out}"
    );
    let shown = ok(&["show", "--disk", &f.p("host-a.disk")]);
    for want in [
        "replication = \"checkpoint\"",
        "vcpus = 2",
        "epoch_ms = 20",
        "[[images]]",
        "cmdline = \"console=ttyS0 quiet\"",
    ] {
        assert!(shown.contains(want), "{want} missing from {shown}");
    }
}

#[test]
fn check_refuses_other_bytes_in_one_line() {
    let f = Files::new();
    let cfg = f.config("c.toml", LINUX);
    std::fs::write(f.dir.join("kernel"), "Example kernel").unwrap();
    let args = [f.p("dev"), cfg.clone(), f.p("kernel"), f.p("initrd")];
    ok(&write_args(&args, &["--vm", "web"]));
    let e = fails(&[
        "image",
        "check",
        "--device",
        &f.p("dev"),
        "--config",
        &cfg,
        "--vm",
        "web",
    ]);
    assert!(
        e.starts_with(&format!(
            "vm web: kernel image on {} at 0x15000000 has sha256 ",
            f.p("dev")
        )),
        "{e}"
    );
    assert!(e.contains("config pins 96a4524ffd277748…"), "{e}");
}

#[test]
fn write_refusals_are_one_line() {
    let f = Files::new();
    let cfg = f.config("c.toml", LINUX);
    let e = fails(&[
        "image",
        "check",
        "--device",
        &f.p("dev"),
        "--config",
        &cfg,
        "--vm",
        "kv",
    ]);
    assert_eq!(
        e,
        "VM \"kv\" boots \"kv-guest\", which is not an [[images]] entry of the config"
    );
    // A device too small for the image region.
    std::fs::File::create(f.dir.join("small"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let args = [f.p("small"), cfg.clone(), f.p("kernel"), f.p("initrd")];
    let e = fails(&write_args(&args, &["--vm", "web"]));
    assert!(
        e.contains("is 1048576 bytes; the kernel of image \"web-linux\" ends at"),
        "{e}"
    );
    // A kernel that would run into the initrd.
    std::fs::File::create(f.dir.join("big"))
        .unwrap()
        .set_len((32 << 20) + 1)
        .unwrap();
    let args = [f.p("dev"), cfg.clone(), f.p("big"), f.p("initrd")];
    let e = fails(&write_args(&args, &["--vm", "web"]));
    assert!(e.contains("overlap images[0].kernel"), "{e}");
    // An image region that is a VM's disk is refused before anything is written.
    let bad = f.config(
        "bad.toml",
        &LINUX.replace("region = \"images\"", "region = \"web-disk\""),
    );
    let args = [f.p("dev"), bad, f.p("kernel"), f.p("initrd")];
    let e = fails(&write_args(&args, &["--vm", "web"]));
    assert!(
        e.contains("images[0].region: storage region \"web-disk\" is the disk of VM \"web\""),
        "{e}"
    );
}
