//! No failover, but an honest "not protected", while the Secondary's host has
//! lost the VM network (the chaos campaign's seed 62: host-b's VM-network
//! port dropped, host-a killed, host-b went live into the cut and the
//! client waited 17.8 s for the heal, while the pair had said `protected`).
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
    let mut cluster = pair("vm-network-secondary-lost");
    cluster.boot("host-c").unwrap();
    let c = cluster.host("host-c").unwrap();
    c.wait_for("appliance ready: host=host-c generation=1", BOOT_TIMEOUT)
        .unwrap();
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    // Every host hears the others on the VM network first.
    wait(a, "heartbeat: peer host-b heard on the VM network".into());
    wait(a, "heartbeat: peer host-c heard on the VM network".into());
    wait(b, "heartbeat: peer host-c heard on the VM network".into());
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
