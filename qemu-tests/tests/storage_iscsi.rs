//! The iSCSI shared storage of the harness without an appliance: one `tgtd`
//! (`IscsiStorage`) on a temp image, two TCP storage paths A and B, and
//! `qemu-io` with QEMU's iSCSI driver as the initiator of each, each with its
//! own initiator name. A write through A is in the image file and reads back
//! through B; both sessions show at the target; a cut path hangs the
//! initiator's I/O and nothing it sends lands.
//!
//! Needs root, the `tgt` package and `qemu-io` with `qemu-block-extra`;
//! FAILS with a clear message when one is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qemu_tests::paths::find_in_path;
use qemu_tests::storage::iscsi::{initiator_iqn, TARGET_IQN};
use qemu_tests::storage::{IscsiStorage, ISCSI_LUN};
use qemu_tests::StoragePath;

const PATIENCE: Duration = Duration::from_secs(30);

fn qemu_io(path: &StoragePath, who: &str, commands: &[&str]) -> Child {
    let qemu_io =
        find_in_path("qemu-io").unwrap_or_else(|| panic!("qemu-io not found: install qemu-utils"));
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={},target={TARGET_IQN},lun={ISCSI_LUN},initiator-name={}",
        path.tcp_addr().unwrap(),
        initiator_iqn(who)
    );
    let mut cmd = Command::new(qemu_io);
    cmd.arg("--image-opts").arg(opts);
    for c in commands {
        cmd.args(["-c", c]);
    }
    // No commands: interactive, holding its session until stdin closes.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` up to `within`; `None` if it is still running.
fn finish(mut child: Child, within: Duration) -> Option<(bool, String)> {
    drop(child.stdin.take());
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

fn run(path: &StoragePath, who: &str, commands: &[&str]) -> String {
    let (ok, out) = finish(qemu_io(path, who, commands), PATIENCE)
        .unwrap_or_else(|| panic!("qemu-io {commands:?} as {who} hung"));
    assert!(ok, "qemu-io {commands:?} as {who}: {out}");
    out
}

#[test]
fn lun_is_shared_through_per_host_tcp_paths() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let target = IscsiStorage::start(&image, dir.path(), "FTSHARED").unwrap();
    let show = target.show().unwrap();
    assert!(show.contains("SCSI SN: FTSHARED"), "{show}");
    let a = target.path("a").unwrap();
    let b = target.path("b").unwrap();

    let out = run(&a, "host-a", &["write -P 0xab 4096 4096"]);
    assert!(out.contains("wrote 4096/4096"), "{out}");
    assert_eq!(std::fs::read(&image).unwrap()[4096], 0xab);
    let out = run(&b, "host-b", &["read -P 0xab 4096 4096"]);
    assert!(out.contains("read 4096/4096"), "{out}");
    assert!(a.stats().to_storage > 0 && b.stats().to_storage > 0);

    // A session that stays: host-b's initiator name shows at the target
    // while an interactive qemu-io holds its connection.
    let held = qemu_io(&b, "host-b", &[]);
    let start = Instant::now();
    while !target
        .initiators()
        .unwrap()
        .contains(&initiator_iqn("host-b"))
    {
        assert!(
            start.elapsed() < PATIENCE,
            "no session of host-b: {}",
            target.show().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(finish(held, PATIENCE));

    // A cut path: the write hangs and never lands.
    a.cut();
    let cut_write = qemu_io(&a, "host-a", &["write -P 0xcd 4096 4096"]);
    // (finish closes stdin; with -c commands qemu-io does not read it.)
    assert!(
        finish(cut_write, Duration::from_secs(3)).is_none(),
        "a write through a cut path completed"
    );
    assert_eq!(std::fs::read(&image).unwrap()[4096], 0xab);
    a.restore();
    let out = run(&a, "host-a", &["read -P 0xab 4096 4096"]);
    assert!(out.contains("read 4096/4096"), "{out}");
}
