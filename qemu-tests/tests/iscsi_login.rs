//! The appliance's own iSCSI initiator (issue 16): the signed config names
//! the shared device as an iSCSI LUN (`examples/cluster-iscsi.toml`), and
//! each host logs in to the harness's `tgtd` target itself at boot, over a
//! storage NIC of its own, as `<initiator_prefix>:<host>` — unlike
//! `storage_pr.rs`, where QEMU logs in and the host sees a virtio-scsi disk.
//!
//! The storage NIC is QEMU's user-mode network restricted to one forward:
//! the portal `10.0.2.100:3260` inside the host goes to the host's TCP
//! `StoragePath` to the target, so a test can sever or cut that path.
//!
//! - `a_pair_logs_in_over_iscsi_and_fails_over`: both hosts say `iscsi:
//!   logged in to … LUN 1 is /dev/sdX`, reach ready, pair on the LUN (fencing
//!   and the VM's disk on it); the Primary's QEMU is killed and the client's
//!   one TCP connection carries on, every acknowledged PUT readable.
//! - `a_failed_login_is_reported_and_retried`: host-a boots with its path
//!   severed: one console line per failed attempt, naming the target and
//!   the reason; the path is restored and the next attempt logs in.
//!
//! Kernel+initrd boots with `no_timer_check` (as `pair_on_iscsi`). Needs
//! root, `tgt`, qemu-system-x86_64 with user-mode networking and the ISO;
//! FAILS with a clear message when one is missing.

mod common;

use std::time::Duration;

use common::{all_on_disk, survive, wait, wait_paired, VM};
use qemu_tests::{Cluster, ClusterSource, Pattern};

fn source() -> ClusterSource {
    let mut s = ClusterSource::example();
    s.config = s.config.with_file_name("cluster-iscsi.toml");
    s
}

/// The `iscsi: logged in` line of `host`, on its console within `timeout`.
fn logged_in(cluster: &Cluster, host: &str, timeout: Duration) -> String {
    let line = cluster
        .host(host)
        .unwrap()
        .wait_for(
            Pattern::regex(&format!(
                "{}{host}{}",
                r"iscsi: logged in to iqn\.2026-01\.test\.ftappliance:shared at 10\.0\.2\.100:3260 as iqn\.2026-01\.test\.ftappliance:",
                r" \(session\d+, attempt \d+, [0-9.]+ s\): LUN 1 is /dev/sd[a-z]+"
            ))
            .unwrap(),
            timeout,
        )
        .unwrap_or_else(|e| panic!("{host} did not log in to the iSCSI target: {e}"));
    eprintln!("{host}: {line}");
    line
}

fn boot(cluster: &mut Cluster, host: &str) {
    let mut spec = cluster.host_spec(host).unwrap();
    spec.boot = cluster.kernel_boot("no_timer_check").unwrap();
    assert!(
        spec.storage_nic.is_some() && spec.shared_storage_iscsi.is_none(),
        "{host} must reach the LUN through its own initiator only"
    );
    cluster.boot_spec(spec).unwrap();
}

#[test]
fn a_pair_logs_in_over_iscsi_and_fails_over() {
    let mut cluster = Cluster::new("iscsi-login-pair", &source()).unwrap();
    cluster.use_iscsi_storage().unwrap();
    for h in ["host-a", "host-b"] {
        boot(&mut cluster, h);
    }
    for h in ["host-a", "host-b"] {
        logged_in(&cluster, h, common::BOOT_TIMEOUT);
    }
    let cluster = wait_paired(cluster);
    for h in ["host-a", "host-b"] {
        let host = cluster.host(h).unwrap();
        host.assert_absent("iscsi: login to", Duration::ZERO)
            .unwrap();
        host.assert_absent("fencing: not fencing", Duration::ZERO)
            .unwrap();
    }
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let (_, acked) = survive(
        &cluster,
        "primary host killed (shared LUN over the appliance's iSCSI login)",
        || a.kill().unwrap(),
        || {
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    all_on_disk(&cluster, &acked, "after the failover over iSCSI");
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    let mut cluster = cluster;
    cluster.pass();
}

#[test]
fn a_failed_login_is_reported_and_retried() {
    let mut cluster = Cluster::new("iscsi-login-retry", &source()).unwrap();
    cluster.use_iscsi_storage().unwrap();
    cluster.storage_path("host-a").unwrap().sever();
    boot(&mut cluster, "host-a");
    let a = cluster.host("host-a").unwrap();
    let failed = a
        .wait_for(
            Pattern::regex(
                r"iscsi: login to iqn\.2026-01\.test\.ftappliance:shared at 10\.0\.2\.100:3260 as \S+ failed \(attempt 1\): .+; retrying in 1 s",
            )
            .unwrap(),
            common::BOOT_TIMEOUT,
        )
        .unwrap();
    eprintln!("host-a: {failed}");
    a.wait_for("failed (attempt 2)", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        a.console().count("appliance ready"),
        0,
        "ready before the shared device was there"
    );
    cluster.storage_path("host-a").unwrap().pass();
    let line = logged_in(&cluster, "host-a", Duration::from_secs(120));
    assert!(
        !line.contains("attempt 1,"),
        "logged in at the first attempt through a severed path: {line}"
    );
    a.wait_for(
        "appliance ready: host=host-a generation=1",
        Duration::from_secs(120),
    )
    .unwrap();
    cluster.pass();
}
