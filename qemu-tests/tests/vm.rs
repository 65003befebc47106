//! The reference guest under ftvmm inside a QEMU appliance host (nested KVM
//! in TCG): host-a boots from the example config, its ftvmm daemon starts VM
//! `kv` as Primary, and a test client on the VM network (a TAP in a network
//! namespace on the VM hub) talks to the guest's KV service:
//!
//! 1. one TCP connection: `KEYS` PUTs (default 1,000), then GETs of all of them;
//! 2. the VM is restarted (ftvmm stops it and boots it again from its image):
//!    the guest replays its disk log and a new connection GETs every key;
//! 3. save → restore (ftvmm saves the running VM to `/run/ftvmm`, tears it
//!    down and restores a fresh VM from the save in the same process): the
//!    connection opened in step 2 goes on working.
//!
//! Restart and save → restore are driven through the ftvmm daemon's test hook
//! (`vmctl`, enabled by the signed config's `[test] hooks`; commands typed on
//! the serial console, see `ftvmm/src/daemon.rs`), because the appliance has no
//! shell.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root (the
//! network namespace); FAILS with a clear message when one is missing.
//! `FT_VM_KEYS=N` changes the number of keys. Timings go to stderr.

use std::time::{Duration, Instant};

use qemu_tests::kv::{get_all, put_all, Kv, GUEST};
use qemu_tests::{Cluster, ClusterSource, Host};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The guest boots under nested KVM inside TCG: slow, and slower when busy.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
const VM: &str = "kv";

fn wait_listening(host: &Host, keys: usize, what: &str) -> Instant {
    let line = host
        .wait_for_next(format!("[{VM}] kv: listening on {GUEST}"), GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest not listening {what}: {e}"));
    assert!(
        line.contains(&format!("keys={keys} ")),
        "guest should have {keys} keys {what}: {line}"
    );
    Instant::now()
}

fn timed<R>(label: &str, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    eprintln!("vm: {label}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

#[test]
fn kv_guest_survives_restart_and_save_restore() {
    let keys: usize = std::env::var("FT_VM_KEYS")
        .ok()
        .map(|k| k.parse().expect("FT_VM_KEYS is a number"))
        .unwrap_or(1000);
    // This test is about one VMM: the VM is allowed on host-a only, so it
    // runs unprotected there (the pair is tests/pair.rs).
    let mut source = ClusterSource::example();
    let text = std::fs::read_to_string(&source.config).unwrap();
    let single = text.replace(
        r#"affinity = { groups = ["rack-1"], hosts = ["host-c"] }"#,
        r#"affinity = { hosts = ["host-a"] }"#,
    );
    assert_ne!(
        text, single,
        "examples/cluster.toml changed its affinity line"
    );
    let dir = tempfile::tempdir().unwrap();
    source.config = dir.path().join("cluster.toml");
    std::fs::write(&source.config, single).unwrap();
    let mut cluster = Cluster::with_hooks("vm-kv", &source, &["vmctl"]).unwrap();
    cluster.boot("host-a").unwrap();
    let host = cluster.host("host-a").unwrap();

    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("vm: boot-to-ready {:.1} s", ready.at.as_secs_f64());
    host.wait_for("ftvmm: /dev/kvm ok", Duration::ZERO)
        .unwrap_or_else(|e| panic!("no KVM inside the appliance: {e}"));
    host.wait_for(
        format!("ftvmm: vm {VM}: starting as primary on host-a"),
        Duration::from_secs(30),
    )
    .unwrap();
    host.wait_for(
        "ftvmm: test hook vmctl: reading commands",
        Duration::from_secs(30),
    )
    .unwrap();
    let boot = host
        .wait_for_line(format!("[{VM}] guest: boot"), GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("the guest did not boot under nested KVM: {e}"));
    eprintln!("vm: guest first line at {:.1} s", boot.at.as_secs_f64());
    wait_listening(host, 0, "after the first boot");

    let client = cluster.vm_client("client", "198.51.100.200/24").unwrap();
    let mut kv = Kv::connect(&client);
    timed(&format!("{keys} PUTs on one connection"), || {
        put_all(&mut kv, keys)
    });
    timed(&format!("{keys} GETs on the same connection"), || {
        get_all(&mut kv, keys)
    });
    assert_eq!(kv.one("GET missing"), "NOTFOUND");

    // Restart: a fresh boot of the guest, state from its disk log only.
    let t = Instant::now();
    host.send_console(&format!("ftvmm-test restart {VM}\n"))
        .unwrap();
    host.wait_for_next(
        format!("ftvmm: test hook: restart {VM}: done"),
        Duration::from_secs(60),
    )
    .unwrap();
    let listening = wait_listening(host, keys, "after the restart");
    eprintln!(
        "vm: restart to listening: {:.1} s",
        (listening - t).as_secs_f64()
    );
    drop(kv);
    let mut kv = Kv::connect(&client);
    timed(&format!("{keys} GETs after the restart"), || {
        get_all(&mut kv, keys)
    });
    let stat = kv.one("STAT");
    assert!(
        stat.starts_with(&format!("STAT keys={keys} puts=0 gets={keys} ")),
        "a restarted guest counts from zero: {stat}"
    );

    // Save → restore on the same connection.
    let t = Instant::now();
    host.send_console(&format!("ftvmm-test snapshot-restore {VM}\n"))
        .unwrap();
    host.wait_for_next(
        format!("ftvmm: test hook: snapshot-restore {VM}: done"),
        Duration::from_secs(120),
    )
    .unwrap();
    eprintln!("vm: save → restore: {:.1} s", t.elapsed().as_secs_f64());
    let stat = kv.one("STAT");
    assert!(
        stat.starts_with(&format!("STAT keys={keys} puts=0 gets={keys} ")),
        "the restored guest keeps its counters: {stat}"
    );
    assert_eq!(kv.one("PUT after-restore yes"), "OK");
    assert_eq!(kv.one("GET after-restore"), "VALUE yes");
    timed(&format!("{keys} GETs after save → restore"), || {
        get_all(&mut kv, keys)
    });
    host.assert_absent(format!("ftvmm: VM {VM} failed"), Duration::ZERO)
        .unwrap();
    // The restored guest did not boot again.
    assert_eq!(
        host.console().count(format!("[{VM}] guest: boot").as_str()),
        2
    );
    drop(kv);
    drop(client);
    cluster.pass();
}
