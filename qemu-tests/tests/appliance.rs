//! The appliance booted in QEMU (TCG, `-cpu max`): a valid config reaches
//! ready with a working /dev/kvm inside, a tampered config and a missing
//! config disk are refused without starting daemons, and a crashed daemon is
//! restarted.
//!
//! Needs `out/ftappliance.iso` (`make image`) and qemu-system-x86_64; each
//! test FAILS with a clear message when one is missing. Boots run one at a
//! time: a process-wide mutex serializes them (plain `cargo test -p
//! qemu-tests` is fine; `make test` also passes `--test-threads=1`).
//! Boot-to-ready times are printed to stderr (`--nocapture` shows them).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use qemu_tests::cluster::tamper_config_disk;
use qemu_tests::{Cluster, Pattern};

/// Generous: TCG on a busy 2-core machine; a boot normally takes 10–40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn valid_config_boots_to_ready_and_kvm_works_inside() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("valid-config").unwrap();
    let host = cluster.boot("host-a").unwrap();
    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!(
        "boot-to-ready (ISO, host-a): {:.1} s",
        ready.at.as_secs_f64()
    );
    let kvm = host.wait_for("/dev/kvm ok", STEP_TIMEOUT).unwrap();
    assert!(kvm.contains("ftvmm"), "{kvm}");
    assert_eq!(host.console().count("config refused"), 0);
    for daemon in ["ftvmm", "heartbeat", "fencing"] {
        host.wait_for(format!("init: started {daemon} pid="), Duration::ZERO)
            .unwrap();
    }
    cluster.pass();
}

#[test]
fn tampered_config_disk_is_refused_and_no_daemon_starts() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("tampered-config").unwrap();
    let disk = cluster.config_disk("host-a").unwrap().to_owned();
    let mut image = std::fs::read(&disk).unwrap();
    tamper_config_disk(&mut image).unwrap();
    std::fs::write(&disk, &image).unwrap();

    let host = cluster.boot("host-a").unwrap();
    let refused = host.wait_for("config refused: ", BOOT_TIMEOUT).unwrap();
    assert!(
        refused.contains("signature"),
        "reason should name the signature: {refused}"
    );
    host.assert_absent("init: started", Duration::from_secs(10))
        .unwrap();
    assert_eq!(host.console().count("appliance ready"), 0);
    cluster.pass();
}

#[test]
fn missing_config_disk_is_reported() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("no-config-disk").unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.config_disk = None;
    let host = cluster.boot_spec(spec).unwrap();
    let refused = host.wait_for("config refused: ", BOOT_TIMEOUT).unwrap();
    assert!(
        refused.contains("no config disk found"),
        "reason should say no config disk was found: {refused}"
    );
    host.assert_absent("init: started", Duration::from_secs(3))
        .unwrap();
    cluster.pass();
}

#[test]
fn crashed_daemon_is_restarted() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("daemon-crash").unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.boot = cluster.kernel_boot("ft.fault=crash:heartbeat").unwrap();
    let host = cluster.boot_spec(spec).unwrap();

    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!(
        "boot-to-ready (kernel+initrd, host-a): {:.1} s",
        ready.at.as_secs_f64()
    );
    let started = Pattern::regex(r"init: started heartbeat pid=(\d+)").unwrap();
    let first_pid = pid_in(&host.wait_for(started.clone(), Duration::ZERO).unwrap());
    // Everything below comes after the ready line.
    host.wait_for("appliance ready", Duration::ZERO).unwrap();
    let exited = host
        .wait_for_next("init: daemon heartbeat exited", STEP_TIMEOUT)
        .unwrap();
    assert!(
        exited.contains("SIGKILL"),
        "heartbeat should have died of SIGKILL: {exited}"
    );
    let again = host.wait_for_next(started.clone(), STEP_TIMEOUT).unwrap();
    assert_ne!(pid_in(&again), first_pid, "a restart gets a new pid");
    assert_eq!(host.console().count(started), 2);
    host.assert_no_more("init: daemon heartbeat exited", Duration::from_secs(5))
        .unwrap();
    cluster.pass();
}

fn pid_in(line: &str) -> u32 {
    let re = regex_pid();
    re.captures(line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

fn regex_pid() -> regex::Regex {
    regex::Regex::new(r"pid=(\d+)").expect("valid regex")
}
