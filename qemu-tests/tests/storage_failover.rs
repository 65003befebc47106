//! Failover when the Primary's host loses its storage path (issue 5, test 4)
//! or its writes reach storage late (docs/architecture.md §7); and no
//! failover, but an honest "not protected", while the Secondary's host has
//! lost its path. Each host reaches the shared
//! storage through its own NBD path (`Cluster::use_nbd_storage`) that the
//! harness can cut (I/O hangs, nothing more lands) or slow down (every byte
//! towards storage lands `d` late, in order). A client does PUT/GET over ONE
//! TCP connection throughout; the pause is printed against the failure
//! timeout.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64, qemu-nbd
//! and root; FAILS with a clear message when one is missing.

mod common;

use std::time::Duration;

use common::{
    all_on_disk, boot_pair, no_overlap, pair_with, survive, wait, wait_line,
    wait_storage_hand_over, StorageHandOver, VM,
};
use qemu_tests::Cluster;

#[test]
fn cut_the_primary_hosts_storage_path_it_stops_output_and_the_secondary_takes_over() {
    let cluster = pair_with("storage-cut", true);
    cut_the_primarys_path(cluster, None);
}

/// With a failure timeout (3 s) longer than a disk request's age limit (2 s)
/// the grant hold cannot hand over first: the request stuck on the cut path
/// gets the host reset, and the Primary hands the VM over before it is (it
/// does not merely stop and leave the Secondary to find the channel gone).
#[test]
fn a_request_stuck_on_the_primarys_cut_path_hands_the_vm_over_before_the_reset() {
    let cluster = Cluster::example_edited(
        "storage-cut-stuck",
        "failure_timeout_ms = 1000\n",
        "failure_timeout_ms = 3000\n",
    )
    .unwrap();
    cut_the_primarys_path(
        boot_pair(cluster, true),
        Some(StorageHandOver::StuckRequest),
    );
}

/// Cuts host-a's storage path under a client: host-a holds output and hands
/// the VM over to host-b (by `route` if given), the client's connection
/// goes on, host-a gets itself reset, every acknowledged PUT is on disk.
fn cut_the_primarys_path(mut cluster: Cluster, route: Option<StorageHandOver>) {
    let name = cluster.dir().display().to_string();
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let path_a = cluster.storage_path("host-a").unwrap();
    cluster.vm.start_capture();
    let mut took = None;
    let (_, acked) = survive(
        &cluster,
        "primary's storage path cut",
        || path_a.cut(),
        || {
            wait(a, "fencing: lease renewal failing".into());
            wait(a, "fencing: ftvmm confirmed the output hold".into());
            took = Some(wait_storage_hand_over(a, "host-b"));
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    let took = took.expect("handed over");
    eprintln!("storage cut ({name}): handed over by {took:?}");
    if let Some(route) = route {
        assert_eq!(took, route, "the hand-over's route");
    }
    let frames = cluster.vm.stop_capture();
    no_overlap(&frames);
    // The deposed side's disk requests hang on the dead path: it may not let
    // one land later, so it gets itself reset (ftvmm asks fencing, fencing
    // stops feeding the watchdog, the i6300esb resets the host).
    wait_line(
        a,
        regex::Regex::new(&format!(
            r"ftvmm: vm {VM}: disk .* has been in flight for \d+ ms since its submission"
        ))
        .unwrap(),
    );
    wait(a, "fencing: reset requested".into());
    // A real host resets whatever its HBA still has outstanding; QEMU first
    // waits for its in-flight requests, which on a hung path is for ever. The
    // path now fails them (NBD_RECONNECT_DELAY_SECS after the sever, like a
    // multipath device giving up), so QEMU can carry out the watchdog reset.
    path_a.sever();
    // The harness runs hosts with -no-reboot: the watchdog's reset ends the
    // QEMU process (a panic would too, so the console must not show one).
    assert!(
        a.wait_stopped(Duration::from_secs(60)),
        "host-a was not reset within 60 s of asking for it (path stats {:?})",
        path_a.stats()
    );
    a.assert_absent("Kernel panic", Duration::ZERO).unwrap();
    eprintln!(
        "storage cut: host-a reset by its watchdog; path stats {:?}",
        path_a.stats()
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    all_on_disk(&cluster, &acked, "storage cut");
    cluster.pass();
}

#[test]
fn delayed_writes_of_the_primary_land_late_and_no_acknowledged_write_is_lost() {
    let mut cluster = pair_with("storage-delay", true);
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let path_a = cluster.storage_path("host-a").unwrap();
    let delay = Duration::from_millis(1500);
    let (_, acked) = survive(
        &cluster,
        "primary's writes delayed 1.5 s",
        || path_a.delay(delay),
        || {
            // Its lease renewals land 1.5 s late: fencing holds its output
            // and it hands over to the Secondary, whose path is fine.
            wait(a, "fencing: lease renewal failing".into());
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    // Everything host-a sent has landed by now (the test ran on for 40
    // more replies); what is on disk must hold every acknowledged PUT.
    std::thread::sleep(delay * 2);
    let s = path_a.stats();
    assert!(s.delayed_chunks > 0, "nothing went through the delay");
    eprintln!("storage delay: host-a path stats {s:?}");
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    all_on_disk(&cluster, &acked, "storage delay");
    cluster.pass();
}

/// The Secondary's host loses its storage path (severed: its I/O fails, as
/// a path that is down does): its lease stops moving, so it could not win
/// the next generation were the Primary to die now. The Primary says the VM
/// is not protected, with the reason, goes on serving (its own storage is
/// fine: no failover, no pause beyond noise), and says protected again once
/// the path is back and the lease moves.
#[test]
fn the_secondary_hosts_storage_lost_means_not_protected_until_it_returns() {
    let mut cluster = pair_with("storage-secondary-lost", true);
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let path_b = cluster.storage_path("host-b").unwrap();
    let (ms, acked) = survive(
        &cluster,
        "secondary's storage path severed and restored",
        || path_b.sever(),
        || {
            wait(
                a,
                format!(
                    "ftvmm: vm {VM}: not protected: secondary host-b cannot renew its storage lease"
                ),
            );
            path_b.restore();
            wait(
                a,
                format!(
                    "ftvmm: vm {VM}: protected: secondary host-b renews its storage lease again"
                ),
            );
        },
    );
    for h in [a, b] {
        h.assert_absent(
            regex::Regex::new(&format!(r"ftvmm: vm {VM}: won generation [2-9]")).unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    }
    a.assert_absent("storage lost", Duration::ZERO).unwrap();
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    eprintln!("secondary's storage lost: the client's longest pause {ms:.0} ms (no failover)");
    all_on_disk(&cluster, &acked, "secondary's storage lost");
    cluster.pass();
}
