//! A host that lost the VM network, as the pair sees it. The Secondary's:
//! no failover, but an honest "not protected" (the chaos campaign's seed
//! 62: host-b's VM-network port dropped, host-a killed, host-b went live
//! into the cut and the client waited 17.8 s for the heal, while the pair
//! had said `protected`). The Primary's: it hands the VM over to its
//! Secondary, whose host still reaches the clients (seed 65: host-a's port
//! dropped, and the client had no service for 15.5 s, until the heal).
//! And a Secondary cut from the VM network that also stops hearing its
//! Primary (seed 94: a one-way FT cut Primary → Secondary at the same
//! moment) lets the Primary win the race, instead of winning it and going
//! live into the cut (the clients then waited 10.3–13.2 s for the heal).
//! The counterpart of `storage_failover.rs`'s
//! `the_secondary_hosts_storage_lost_means_not_protected_until_it_returns`:
//! the hub cuts host-b's port on the VM network (as chaos's `cut_vm_net`
//! does); the FT network and storage stay whole. A client does PUT/GET
//! over ONE TCP connection to the Primary throughout.
//!
//! With two hosts alone neither can tell whose side of a cut is cut; a VM
//! witness (`cluster.vm_witness`, the clients' router here: a port of its
//! own on the hub) tells them, and the Primary's cut hands the VM over
//! as with three hosts.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root;
//! FAILS with a clear message when one is missing.

mod common;

use std::time::Duration;

use common::{all_on_disk, pair, survive, wait, wait_paired, BOOT_TIMEOUT, VM};
use qemu_tests::cluster::VM_WITNESS;
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

/// Primary `p`, cut from the VM network, hands the VM over to secondary
/// `s` because `s` hears `hears` there, and `s` wins the next generation.
fn handed_over(cluster: &Cluster, p: &str, s: &str, hears: &str) {
    let (ph, sh) = (cluster.host(p).unwrap(), cluster.host(s).unwrap());
    wait(
        ph,
        format!("ftvmm: vm {VM}: VM network lost on {p} (no peer heard on it for"),
    );
    wait(
        ph,
        format!(
            "while secondary {s} hears {hears}; handed the VM over to secondary {s} in \
             generation"
        ),
    );
    wait(sh, format!("ftvmm: vm {VM}: won generation"));
}

/// After the cut (each host's console `marks`, in host order), only `live`
/// won a generation, and nobody diverged.
fn only_live_after_the_cut(cluster: &Cluster, marks: &[qemu_tests::Mark], live: &str) {
    let won = format!("ftvmm: vm {VM}: won generation");
    for (h, mark) in cluster.hosts().zip(marks) {
        let wins = (h.console().lines_after(*mark).iter())
            .filter(|l| l.text.contains(&won))
            .count();
        if h.name() != live {
            assert_eq!(wins, 0, "{} won a generation after the cut", h.name());
        }
        h.assert_absent("lockstep divergence", Duration::ZERO)
            .unwrap();
    }
}

/// The pair as the consoles say it now: `(primary, secondary)` of the
/// line with the highest generation among `paired with primary P;
/// generation G` (a Secondary at power-on) and `protected: secondary S in
/// lockstep from exit N; generation G` (a respawn), once no host won a
/// later generation (under load a storage hiccup can hand the VM over
/// before the test's fault: the fault then goes to whoever is Primary).
fn steady_pair(cluster: &Cluster) -> (String, String) {
    let paired = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: paired with primary (\S+); generation (\d+)"
    ))
    .unwrap();
    let protected = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: protected: secondary (\S+) in lockstep from exit \d+; generation (\d+)"
    ))
    .unwrap();
    let won = regex::Regex::new(&format!(r"ftvmm: vm {VM}: won generation (\d+)")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (mut best, mut latest_win) = (None::<(u64, String, String)>, 0u64);
        for h in cluster.hosts() {
            for l in h.console().lines() {
                let g = |c: &regex::Captures| c[2].parse::<u64>().unwrap();
                let pair = if let Some(c) = paired.captures(&l.text) {
                    Some((g(&c), c[1].to_string(), h.name().to_string()))
                } else {
                    (protected.captures(&l.text))
                        .map(|c| (g(&c), h.name().to_string(), c[1].to_string()))
                };
                if let Some(p) = pair {
                    if best.as_ref().is_none_or(|b| p.0 >= b.0) {
                        best = Some(p);
                    }
                }
                if let Some(c) = won.captures(&l.text) {
                    latest_win = latest_win.max(c[1].parse().unwrap());
                }
            }
        }
        if let Some((g, p, s)) = best {
            if latest_win <= g {
                return (p, s);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no steady pair of {VM} within 120 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The Primary's host loses its VM-network port while the Secondary's and
/// the third host still hear each other there; FT and storage stay whole.
/// The Primary hands the VM over to its Secondary, naming the cut and whom
/// the Secondary hears; the Secondary replays to the end, wins the next
/// generation and serves; its keeper places the new Secondary on the third
/// host, passing over the old Primary's for its VM network. The client's
/// one connection goes on after one pause, and every acknowledged PUT is
/// on disk. The old Primary never goes live again.
#[test]
fn the_primary_hosts_vm_network_lost_hands_the_vm_over_to_its_secondary() {
    let mut cluster = trio_on_vm_network("vm-network-primary-lost");
    // The pair when the cut came, and each console's mark then.
    let cut = std::cell::OnceCell::new();
    let (ms, acked) = survive(
        &cluster,
        "primary's VM network cut",
        || {
            let (p, s) = steady_pair(&cluster);
            let marks: Vec<_> = cluster.hosts().map(|h| h.console().mark()).collect();
            eprintln!("  the pair now: primary {p}, secondary {s}; cutting {p}'s VM network");
            cluster.vm.isolate(&p).unwrap();
            cut.set((p, s, marks)).unwrap();
        },
        || {
            let (p, s, _) = cut.get().unwrap();
            let (p, s) = (p.as_str(), s.as_str());
            let third = ["host-a", "host-b", "host-c"]
                .into_iter()
                .find(|h| *h != p && *h != s)
                .unwrap();
            handed_over(&cluster, p, s, third);
            let sh = cluster.host(s).unwrap();
            let placed = wait(sh, format!("ftvmm: vm {VM}: secondary -> {third}"));
            let why: Vec<String> = ["host-a", "host-b", "host-c"]
                .into_iter()
                .filter_map(|h| match h {
                    _ if h == p => Some(format!("{h} has no VM network")),
                    _ if h == s => Some(format!("{h} is primary")),
                    _ => None,
                })
                .collect();
            assert!(
                placed.ends_with(&format!("({})", why.join("; "))),
                "{placed}"
            );
            wait(sh, format!("ftvmm: vm {VM}: protected: secondary {third} "));
        },
    );
    cluster.vm.heal_all();
    // Only the old Secondary went live after the cut; the old Primary left
    // once and never came back, and nobody diverged.
    let (p, s, marks) = cut.into_inner().unwrap();
    only_live_after_the_cut(&cluster, &marks, &s);
    eprintln!(
        "primary's VM network lost: {p} handed the VM over to {s}; the client's longest pause \
         {ms:.0} ms"
    );
    all_on_disk(&cluster, &acked, "primary's VM network lost");
    cluster.pass();
}

/// Seed 94, made deterministic: the FT network is cut one way, Primary →
/// Secondary, and the Secondary's VM-network port is cut at the same
/// moment; the third host still hears the Primary on the VM network. The
/// Secondary suspects its Primary and claims the next generation, but its
/// own VM network is cut while the third host's works, so it defers its
/// race (`claim_vmnet.rs`); the Primary, told bye, races, wins and keeps
/// serving; the Secondary loses and halts. The client's one connection
/// goes on after one short pause, long before the heal; after the heal
/// the VM is protected again. Nobody diverges, only the Primary wins.
#[test]
fn a_secondary_cut_from_the_vm_network_lets_its_primary_win_the_race() {
    let mut cluster = trio_on_vm_network("vm-network-claim-deferred");
    let cut = std::cell::OnceCell::new();
    let (ms, acked) = survive(
        &cluster,
        "FT cut primary -> secondary and the secondary's VM network cut",
        || {
            let (p, s) = steady_pair(&cluster);
            let marks: Vec<_> = cluster.hosts().map(|h| h.console().mark()).collect();
            eprintln!("  the pair now: primary {p}, secondary {s}; cutting {p} -> {s} on FT and {s}'s VM network");
            cluster.ft.cut_one_way(&p, &s).unwrap();
            cluster.vm.isolate(&s).unwrap();
            cut.set((p, s, marks)).unwrap();
        },
        || {
            let (p, s, marks) = cut.get().unwrap();
            let after = |h: &str, what: String| {
                let i = cluster.hosts().position(|x| x.name() == h).unwrap();
                let host = cluster.host(h).unwrap();
                let l = host
                    .wait_after(marks[i], what.as_str(), Duration::from_secs(120))
                    .unwrap_or_else(|e| panic!("{e}"));
                eprintln!("  [{h}] {l}");
            };
            after(
                s,
                format!("ftvmm: vm {VM}: this host hears no peer on the VM network (for"),
            );
            after(p, format!("ftvmm: vm {VM}: won generation"));
            after(s, format!("ftvmm: vm {VM}: lost generation"));
        },
    );
    let (p, s, marks) = cut.into_inner().unwrap();
    cluster.ft.heal_all();
    cluster.vm.heal_all();
    let pi = cluster.hosts().position(|h| h.name() == p).unwrap();
    let protected = cluster
        .host(&p)
        .unwrap()
        .wait_after(
            marks[pi],
            format!("ftvmm: vm {VM}: protected: secondary ").as_str(),
            Duration::from_secs(180),
        )
        .unwrap();
    eprintln!("  [{p}] {protected}");
    // Only the Primary won a generation after the cut; nobody diverged.
    only_live_after_the_cut(&cluster, &marks, &p);
    eprintln!(
        "secondary {s} cut from the VM network and from its primary: {p} won the race; the \
         client's longest pause {ms:.0} ms"
    );
    all_on_disk(&cluster, &acked, "secondary's claim deferred");
    cluster.pass();
}

/// host-a (Primary) and host-b (Secondary) paired, no third host, the
/// config naming a VM witness; the witness (a router: its own network
/// namespace on its own hub port, answering pings) up, and both hosts
/// hearing it. Returns the router too: dropping it takes the witness away.
fn two_hosts_and_a_witness(name: &str) -> (Cluster, qemu_tests::netns::NetnsTap) {
    let mut cluster = Cluster::example_with_witness(name).unwrap();
    let router = cluster.vm_witness_router().unwrap();
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }
    let cluster = wait_paired(cluster);
    for h in ["host-a", "host-b"] {
        wait(
            cluster.host(h).unwrap(),
            format!("heartbeat: witness {VM_WITNESS} answers on the VM network"),
        );
    }
    (cluster, router)
}

/// Two hosts and a VM witness. First host-b's VM-network port is cut:
/// host-a, hearing the witness, blames host-b's side (with two hosts and
/// no witness it could only say "either side may be cut", as the first
/// test shows); healed, protected. Then the Primary's port is cut: it
/// hears neither host-b nor the witness while host-b hears the witness,
/// so it hands the VM over to host-b, naming the witness, and host-b
/// serves. The client's one connection goes on after one pause, every
/// acknowledged PUT is on disk, only host-b goes live, nobody diverges.
#[test]
fn of_two_hosts_a_vm_witness_shows_whose_side_is_cut_and_the_primary_hands_over() {
    let (mut cluster, _router) = two_hosts_and_a_witness("vm-network-witness");
    let cut = std::cell::OnceCell::new();
    let w = format!("witness:{VM_WITNESS}");
    let (ms, acked) = survive(
        &cluster,
        "two hosts and a witness: secondary's VM network cut and healed, then the primary's cut",
        || {
            let (p, s) = steady_pair(&cluster);
            let (ph, sh) = (cluster.host(&p).unwrap(), cluster.host(&s).unwrap());
            eprintln!("  the pair now: primary {p}, secondary {s}; cutting {s}'s VM network");
            cluster.vm.isolate(&s).unwrap();
            wait(
                sh,
                format!("heartbeat: witness {VM_WITNESS} not heard on the VM network (silent"),
            );
            wait(
                ph,
                format!(
                    "ftvmm: vm {VM}: not protected: secondary {s} has no VM network \
                     (no peer heard on it for"
                ),
            );
            cluster.vm.heal_all();
            wait(
                ph,
                format!(
                    "ftvmm: vm {VM}: protected: secondary {s} hears its peers on the VM \
                     network again"
                ),
            );
            let marks: Vec<_> = cluster.hosts().map(|h| h.console().mark()).collect();
            eprintln!("  healed; cutting {p}'s VM network");
            cluster.vm.isolate(&p).unwrap();
            cut.set((p, s, marks)).unwrap();
        },
        || {
            let (p, s, _) = cut.get().unwrap();
            handed_over(&cluster, p, s, &w);
        },
    );
    cluster.vm.heal_all();
    let (p, s, marks) = cut.into_inner().unwrap();
    only_live_after_the_cut(&cluster, &marks, &s);
    for h in cluster.hosts() {
        h.assert_absent("carries no heartbeat", Duration::ZERO)
            .unwrap();
    }
    eprintln!(
        "two hosts and a witness: {p}'s VM network lost, handed over to {s}; the client's \
         longest pause {ms:.0} ms"
    );
    all_on_disk(&cluster, &acked, "two hosts and a witness");
    cluster.pass();
}
