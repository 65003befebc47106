//! Failover of a lockstep pair (issue 5): host-a runs VM `kv` as Primary,
//! host-b as Secondary; a client does PUT/GET over ONE TCP connection while
//! the harness kills a host (SIGKILL to its QEMU) or partitions the FT
//! network between them. The same connection must go on; every acknowledged
//! PUT must be readable afterwards; each test prints the failover pause (last
//! client response before the fault, first after) against the configured
//! failure timeout.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root;
//! FAILS with a clear message when one is missing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pair, survive, wait, VM};

#[test]
fn kill_the_primary_host_connection_continues_on_the_secondary() {
    let mut cluster = pair("failover-primary");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    survive(
        &cluster,
        "primary host killed",
        || a.kill().unwrap(),
        || {
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    cluster.pass();
}

#[test]
fn kill_the_secondary_host_primary_continues_alone() {
    let mut cluster = pair("failover-secondary");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    survive(
        &cluster,
        "secondary host killed",
        || b.kill().unwrap(),
        || {
            wait(a, format!("ftvmm: vm {VM}: won generation 2"));
        },
    );
    cluster.pass();
}

#[test]
fn ft_partition_exactly_one_continues_and_outputs_never_overlap() {
    let mut cluster = pair("failover-partition");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    cluster.vm.start_capture();
    let winner = Arc::new(Mutex::new(String::new()));
    let w2 = Arc::clone(&winner);
    survive(
        &cluster,
        "FT network partitioned",
        || cluster.ft.partition(&["host-a"], &["host-b"]).unwrap(),
        move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let a_won = a
                    .console()
                    .count(format!("ftvmm: vm {VM}: won generation 2"))
                    > 0;
                let b_won = b
                    .console()
                    .count(format!("ftvmm: vm {VM}: won generation 2"))
                    > 0;
                assert!(!(a_won && b_won), "both hosts won generation 2");
                if a_won || b_won {
                    let (w, l, lname) = if a_won {
                        ("host-a", b, "host-b")
                    } else {
                        ("host-b", a, "host-a")
                    };
                    l.wait_for(
                        format!("ftvmm: vm {VM}: lost generation 2 to {w}; halting the VM"),
                        Duration::from_secs(60),
                    )
                    .unwrap_or_else(|e| panic!("{lname} did not halt: {e}"));
                    *w2.lock().unwrap() = w.to_string();
                    return;
                }
                assert!(Instant::now() < deadline, "nobody won generation 2");
                std::thread::sleep(Duration::from_millis(100));
            }
        },
    );
    let frames = cluster.vm.stop_capture();
    let winner = winner.lock().unwrap().clone();
    let loser = if winner == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    eprintln!("failover: FT network partitioned: {winner} won generation 2, {loser} halted its VM");
    // Guest output (frames from the guest's MAC) came from one port at a
    // time: the loser's last one precedes the winner's first one after the
    // old Primary's last, and the Secondary emitted nothing before it won.
    let guest = common::guest_frames(&frames);
    assert!(!guest.is_empty(), "no guest frames captured");
    if winner == "host-b" {
        let first_b = guest.iter().find(|f| f.from == "host-b").map(|f| f.at);
        let last_a = guest
            .iter()
            .rev()
            .find(|f| f.from == "host-a")
            .map(|f| f.at);
        if let (Some(fb), Some(la)) = (first_b, last_a) {
            assert!(
                la < fb,
                "host-a emitted guest output after host-b went live"
            );
        }
    } else {
        assert!(
            guest.iter().all(|f| f.from == "host-a"),
            "the secondary {loser} emitted guest output"
        );
    }
    cluster.pass();
}

/// One-way loss (issue 14): host-a's FT traffic no longer reaches host-b,
/// while host-b's still reaches host-a. host-b hears nothing and takes over;
/// host-a hears host-b's heartbeats but no acks, and must not hold output
/// forever with its vCPU running: a silent channel is a lost Secondary, it
/// races for generation 2 at once, loses, and halts.
#[test]
fn one_way_cut_from_the_primary_the_old_primary_halts_instead_of_holding_forever() {
    let mut cluster = pair("failover-one-way");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    cluster.vm.start_capture();
    survive(
        &cluster,
        "FT network cut one way (host-a -> host-b)",
        || cluster.ft.cut_one_way("host-a", "host-b").unwrap(),
        || {
            let w = Instant::now();
            let deadline = w + Duration::from_secs(120);
            // Whoever wins generation 2, the other must halt on its own.
            loop {
                let a_won = a
                    .console()
                    .count(format!("ftvmm: vm {VM}: won generation 2"))
                    > 0;
                let b_won = b
                    .console()
                    .count(format!("ftvmm: vm {VM}: won generation 2"))
                    > 0;
                assert!(!(a_won && b_won), "both hosts won generation 2");
                if a_won || b_won {
                    let (w, l) = if a_won { ("host-a", b) } else { ("host-b", a) };
                    let halted = l
                        .wait_for_line(
                            format!("ftvmm: vm {VM}: lost generation 2 to {w}; halting the VM"),
                            Duration::from_secs(30),
                        )
                        .unwrap_or_else(|e| panic!("the loser kept the VM: {e}"));
                    eprintln!(
                        "  [{} {:7.3}] {}",
                        l.name(),
                        halted.at.as_secs_f64(),
                        halted.text
                    );
                    return;
                }
                assert!(Instant::now() < deadline, "nobody won generation 2");
                std::thread::sleep(Duration::from_millis(100));
            }
        },
    );
    let frames = cluster.vm.stop_capture();
    common::no_overlap_either_way(&frames);
    cluster.pass();
}
