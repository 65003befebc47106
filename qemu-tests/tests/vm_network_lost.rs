//! A host that lost the VM network, as the pair sees it. The Secondary's:
//! no failover, but an honest "not protected" (the chaos campaign's seed
//! 62: host-b's VM-network port dropped, host-a killed, host-b went live
//! into the cut and the client waited 17.8 s for the heal, while the pair
//! had said `protected`). The Primary's: it hands the VM over to its
//! Secondary, whose host still reaches the clients (seed 65: host-a's port
//! dropped, and the client had no service for 15.5 s, until the heal).
//! The counterpart of `storage_failover.rs`'s
//! `the_secondary_hosts_storage_lost_means_not_protected_until_it_returns`:
//! the hub cuts host-b's port on the VM network (as chaos's `cut_vm_net`
//! does); the FT network and storage stay whole. A client does PUT/GET
//! over ONE TCP connection to the Primary throughout.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root;
//! FAILS with a clear message when one is missing.

mod common;

use std::time::Duration;

use common::{all_on_disk, pair, survive, wait, BOOT_TIMEOUT, VM};
use qemu_tests::Cluster;

/// host-a (Primary) and host-b (Secondary) paired and host-c up, each
/// hearing the others on the VM network.
fn trio_on_vm_network(name: &str) -> Cluster {
    let mut cluster = pair(name);
    cluster.boot("host-c").unwrap();
    let c = cluster.host("host-c").unwrap();
    c.wait_for("appliance ready: host=host-c generation=1", BOOT_TIMEOUT)
        .unwrap();
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    wait(a, "heartbeat: peer host-b heard on the VM network".into());
    wait(a, "heartbeat: peer host-c heard on the VM network".into());
    wait(b, "heartbeat: peer host-c heard on the VM network".into());
    cluster
}

/// host-a (Primary) and host-b (Secondary) paired, host-c up (so host-a
/// hears a third host on the VM network, and the cut can be put on host-b's
/// side). host-b's VM-network port is cut: host-a says the VM is not
/// protected, naming host-b's VM network, and keeps saying so while the cut
/// lasts; healed, protected again. Then host-c goes away and host-b's port
/// is cut again: with two hosts up nobody can tell which side is cut, and
/// host-a says so; healed, protected. Nobody goes live, and the client's
/// connection goes on throughout.
#[test]
fn the_secondary_hosts_vm_network_lost_means_not_protected_until_it_returns() {
    let mut cluster = trio_on_vm_network("vm-network-secondary-lost");
    let (a, b, c) = (
        cluster.host("host-a").unwrap(),
        cluster.host("host-b").unwrap(),
        cluster.host("host-c").unwrap(),
    );
    a.assert_absent(
        format!("ftvmm: vm {VM}: not protected").as_str(),
        Duration::ZERO,
    )
    .unwrap();
    let (ms, acked) = survive(
        &cluster,
        "secondary's VM network cut and healed",
        || cluster.vm.isolate("host-b").unwrap(),
        || {
            wait(
                b,
                "heartbeat: peer host-a not heard on the VM network (silent".into(),
            );
            wait(
                a,
                format!(
                    "ftvmm: vm {VM}: not protected: secondary host-b has no VM network \
                     (no peer heard on it for"
                ),
            );
            // The verdict stays while the cut lasts (no flapping).
            let again = format!(
                "ftvmm: vm {VM}: protected: secondary host-b hears its peers on the VM network \
                 again"
            );
            a.assert_absent(again.as_str(), Duration::from_secs(3))
                .unwrap();
            cluster.vm.heal_all();
            wait(a, again.clone());

            // Two hosts up: the cut cannot be put on one side.
            c.kill().unwrap();
            wait(
                a,
                "heartbeat: peer host-c not heard on the VM network (silent".into(),
            );
            cluster.vm.isolate("host-b").unwrap();
            wait(
                a,
                format!(
                    "ftvmm: vm {VM}: not protected: the VM network between host-a and host-b \
                     carries no heartbeat (for"
                ),
            );
            cluster.vm.heal_all();
            a.wait_for_next(again.as_str(), Duration::from_secs(120))
                .unwrap();
        },
    );
    // Never blamed on host-b in the two-host phase: exactly one line that
    // names host-b's VM network (the first cut's).
    let blamed = a
        .console()
        .lines()
        .iter()
        .filter(|l| {
            l.text
                .contains("not protected: secondary host-b has no VM network")
        })
        .count();
    assert_eq!(blamed, 1, "host-b blamed {blamed} times");
    // FT was whole: neither member of the pair was suspected after having
    // been heard (a boot may say `never heard in …` before the other is up),
    // nobody went live.
    let won = regex::Regex::new(&format!(r"ftvmm: vm {VM}: won generation [2-9]")).unwrap();
    let suspected = regex::Regex::new(r"heartbeat: peer host-[ab] suspected \(silent").unwrap();
    for h in [a, b] {
        h.assert_absent(won.clone(), Duration::ZERO).unwrap();
        h.assert_absent(suspected.clone(), Duration::ZERO).unwrap();
    }
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    eprintln!("secondary's VM network lost: the client's longest pause {ms:.0} ms (no failover)");
    all_on_disk(&cluster, &acked, "secondary's VM network lost");
    cluster.pass();
}

/// host-a (Primary) loses its VM-network port while host-b (Secondary) and
/// host-c still hear each other there; FT and storage stay whole. host-a
/// hands the VM over to host-b, naming the cut and whom host-b hears;
/// host-b replays to the end, wins generation 2 and serves; its keeper
/// places the new Secondary on host-c, passing over host-a for its VM
/// network. The client's one connection goes on after one pause, and every
/// acknowledged PUT is on disk. host-a never goes live again.
#[test]
fn the_primary_hosts_vm_network_lost_hands_the_vm_over_to_its_secondary() {
    let mut cluster = trio_on_vm_network("vm-network-primary-lost");
    let (a, b, c) = (
        cluster.host("host-a").unwrap(),
        cluster.host("host-b").unwrap(),
        cluster.host("host-c").unwrap(),
    );
    let (ms, acked) = survive(
        &cluster,
        "primary's VM network cut",
        || cluster.vm.isolate("host-a").unwrap(),
        || {
            wait(
                a,
                format!("ftvmm: vm {VM}: VM network lost on host-a (no peer heard on it for"),
            );
            wait(
                a,
                "while secondary host-b hears host-c; handed the VM over to secondary \
                     host-b in generation 1; halting here"
                    .to_string(),
            );
            wait(b, format!("ftvmm: vm {VM}: won generation 2"));
            let placed = wait(b, format!("ftvmm: vm {VM}: secondary -> host-c"));
            assert!(
                placed.ends_with("(host-a has no VM network; host-b is primary)"),
                "{placed}"
            );
            wait(b, format!("ftvmm: vm {VM}: protected: secondary host-c "));
        },
    );
    cluster.vm.heal_all();
    // Only host-b went live; host-a left once and never came back.
    let won = regex::Regex::new(&format!(r"ftvmm: vm {VM}: won generation [2-9]")).unwrap();
    a.assert_absent(won.clone(), Duration::ZERO).unwrap();
    c.assert_absent(won, Duration::ZERO).unwrap();
    for h in [b, c] {
        h.assert_absent("lockstep divergence", Duration::ZERO)
            .unwrap();
    }
    eprintln!(
        "primary's VM network lost: hand-over to the secondary; the client's longest pause \
         {ms:.0} ms"
    );
    all_on_disk(&cluster, &acked, "primary's VM network lost");
    cluster.pass();
}
