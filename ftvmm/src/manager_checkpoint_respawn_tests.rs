//! Respawn of checkpoint VMs (issue 11, `checkpoint/respawn.rs`) on
//! /dev/kvm: three hosts' managers in one process, as in
//! `manager_checkpoint_tests.rs` (their channel over loopback addresses,
//! each its own fencing and heartbeat socket onto one shared view). The
//! guest counts in a 64-bit word, so a guest that was restarted instead of
//! resumed shows (its count starts again from 0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::checkpoint_tests::{wait_for, web, World, SETTLE};
use super::*;
use crate::checkpoint::daemon_spec::Boot;
use crate::lockstep::channel::Hello;
use crate::virtio::GuestMemoryMmap;

/// Real mode, vCPU 0 at 0x1000: `add dword [0x2000], 1; adc dword
/// [0x2004], 0; jmp` — a 64-bit count that never wraps here. vCPU 1 at
/// 0x1100: `cli; hlt; jmp`.
const COUNT: &[u8] = &[
    0x66, 0x83, 0x06, 0x00, 0x20, 0x01, // add dword [0x2000], 1
    0x66, 0x83, 0x16, 0x04, 0x20, 0x00, // adc dword [0x2004], 0
    0xeb, 0xf2, // jmp -14
];
const HALT: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

/// The count guest, with `ballast` bytes of non-zero memory from 1 MiB on
/// (so the full epoch of a join is several pieces).
fn count_guest(ballast: usize) -> Boot {
    Arc::new(move |vm, _spec| {
        let mem = vm.memory();
        let err =
            |e: vm_memory::GuestMemoryError| crate::linux::LinuxVmError::Memory(e.to_string());
        mem.write_slice(COUNT, GuestAddress(0x1000)).map_err(err)?;
        mem.write_slice(HALT, GuestAddress(0x1100)).map_err(err)?;
        let fill: Vec<u8> = (0..ballast).map(|i| (i % 251) as u8 + 1).collect();
        mem.write_slice(&fill, GuestAddress(0x10_0000))
            .map_err(err)?;
        vm.enter_real_mode(0, 0x1000)?;
        vm.enter_real_mode(1, 0x1100)
    })
}

fn count(mem: &GuestMemoryMmap) -> u64 {
    mem.read_obj(GuestAddress(0x2000)).unwrap()
}

fn primary_memory(m: &VmManager) -> GuestMemoryMmap {
    let fig = m.slots["web"].figures.clone().unwrap();
    fig.primary_memory().expect("a primary runs here")
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// host-a and host-b paired in generation 1, host-c a standby.
fn three_hosts(net: u8, ballast: usize) -> (World, VmManager, VmManager, VmManager) {
    let mut w = World::new(net);
    w.boot = count_guest(ballast);
    w.set_alive(&["host-a", "host-b", "host-c"]);
    let (mut a, mut b, mut c) = (w.manager(0), w.manager(1), w.manager(2));
    b.start("web").unwrap();
    c.start("web").unwrap();
    a.start("web").unwrap();
    wait_for("host-a and host-b paired", SETTLE, || {
        let s = web(&a);
        u(&s["checkpoint"]["acknowledged"]) >= 5 && s["lockstep"]["secondary"] == "host-b"
    });
    assert_eq!(web(&c)["lockstep"]["role"], "checkpoint standby");
    // The Primary's epoch figures (status and metrics read them).
    let f = &web(&a)["checkpoint"];
    assert!(u(&f["epochs"]) >= u(&f["acknowledged"]), "{f}");
    assert!(u(&f["pause_us_max"]) >= u(&f["pause_us_last"]), "{f}");
    assert!(u(&f["pause_us_total"]) >= u(&f["pause_us_max"]), "{f}");
    assert!(
        u(&f["pause_us_max"]) > 0 && u(&f["epoch_bytes_total"]) > 0,
        "{f}"
    );
    // The counter's page ships as a delta from the third epoch on.
    assert!(
        u(&f["epoch_pages_total"]) >= u(&f["epoch_delta_pages_total"])
            && u(&f["epoch_delta_pages_total"]) > 0,
        "{f}"
    );
    // Where the epochs' outputs waited: the Secondary's acks and the
    // durability of what the acks let go (`checkpoint/latency.rs`).
    assert!(u(&f["ack_wait_epochs"]) > 0, "{f}");
    assert!(u(&f["durable_wait_epochs"]) > 0, "{f}");
    assert!(u(&f["ack_wait_us_max"]) >= u(&f["ack_wait_us_last"]), "{f}");
    assert!(
        u(&f["ack_wait_us_total"]) >= u(&f["ack_wait_us_max"]),
        "{f}"
    );
    assert_eq!(
        f["output_hold_buckets"]["epochs"].as_array().map(Vec::len),
        Some(11),
        "{f}"
    );
    (w, a, b, c)
}

/// host-b's manager stops: host-a runs alone in generation 2 (host-b is
/// gone from the heartbeat view too, so host-c is the next eligible host).
fn lose_host_b(w: &World, a: &VmManager, b: &mut VmManager) {
    w.set_alive(&["host-a", "host-c"]);
    b.stop("web").unwrap();
    wait_for("host-a wins generation 2", SETTLE, || {
        w.decided().iter().any(|(_, g, o)| *g == 2 && o == "host-a")
    });
    let _ = a;
}

/// (a) The Secondary's host goes away, the Primary runs alone, its keeper
/// places a new Secondary on host-c by a full checkpoint, then the
/// Primary's host goes away and host-c takes over: the guest goes on from
/// where it was (its count continues; it was not restarted). Then host-b
/// comes back and the resumed VM on host-c gets it as its new Secondary;
/// and once host-b is gone again, host-a (whose start finds the VM running
/// on host-c and turns it into a standby).
#[test]
fn a_lone_checkpoint_primary_gets_a_new_secondary_that_takes_over() {
    let (w, mut a, mut b, mut c) = three_hosts(46, 0);
    lose_host_b(&w, &a, &mut b);
    wait_for("host-c joined as host-a's secondary", SETTLE, || {
        let (sa, sc) = (web(&a), web(&c));
        sa["lockstep"]["role"] == "checkpoint primary (generation 2)"
            && sa["lockstep"]["secondary"] == "host-c"
            && sc["lockstep"]["role"] == "checkpoint secondary (generation 2)"
            && u(&sc["checkpoint"]["applied"]) > 0
    });
    let sa = web(&a);
    assert_eq!(
        sa["checkpoint"]["protection"], "protected: secondary host-c",
        "{sa}"
    );
    assert_eq!(sa["lockstep"]["protection"], "protected: secondary host-c");
    assert_eq!(web(&c)["lockstep"]["primary"], "host-a");
    // Epochs after the join are acknowledged by host-c.
    let applied = u(&web(&c)["checkpoint"]["applied"]);
    wait_for(
        "host-c applies and acknowledges more epochs",
        SETTLE,
        || {
            u(&web(&c)["checkpoint"]["applied"]) >= applied + 5
                && u(&web(&a)["checkpoint"]["acknowledged"]) >= applied + 5
        },
    );

    // The count as host-a's guest has it, then an epoch closed after that
    // read, acknowledged by host-c: host-c holds a state at least that far.
    let seen = count(&primary_memory(&a));
    assert!(seen > 0, "the guest counts");
    let open = u(&web(&a)["checkpoint"]["epoch"]);
    wait_for("an epoch after the read acknowledged", SETTLE, || {
        u(&web(&a)["checkpoint"]["acknowledged"]) >= open
    });
    a.stop("web").unwrap();
    wait_for("host-c runs alone in generation 3", SETTLE, || {
        web(&c)["lockstep"]["role"] == "checkpoint primary (unprotected, generation 3)"
    });
    assert_eq!(
        w.decided(),
        vec![
            ("web".into(), 1, "host-a".into()),
            ("web".into(), 2, "host-a".into()),
            ("web".into(), 3, "host-c".into()),
        ]
    );
    let fig = c.slots["web"].figures.clone().unwrap();
    wait_for("the VM resumed on host-c", SETTLE, || {
        fig.resumed_memory().is_some()
    });
    let sc = web(&c);
    assert!(
        u(&sc["checkpoint"]["resumed_from_epoch"]) >= open,
        "resumed before epoch {open}: {sc}"
    );
    let mem = fig.resumed_memory().unwrap();
    let resumed = count(&mem);
    assert!(
        resumed >= seen,
        "the guest's count went back from {seen} to {resumed}: it was restarted, not resumed"
    );
    wait_for("the resumed guest counts on", SETTLE, || {
        count(&mem) > resumed
    });

    // After the take-over host-c runs alone; host-b comes back (its
    // configured Secondary's listener) and host-c's keeper brings it in.
    w.set_alive(&["host-b", "host-c"]);
    b.start("web").unwrap();
    wait_for("host-b joined host-c in generation 3", SETTLE, || {
        let (sb, sc) = (web(&b), web(&c));
        sc["lockstep"]["role"] == "checkpoint primary (generation 3)"
            && sc["checkpoint"]["protection"] == "protected: secondary host-b"
            && sb["lockstep"]["role"] == "checkpoint secondary (generation 3)"
            && u(&sb["checkpoint"]["applied"]) > 0
    });
    let acked = u(&web(&c)["checkpoint"]["acknowledged"]);
    wait_for(
        "host-b acknowledges epochs of the resumed guest",
        SETTLE,
        || u(&web(&c)["checkpoint"]["acknowledged"]) >= acked + 5,
    );
    assert!(count(&mem) > resumed);

    // host-b goes away again; host-a's manager starts the VM as its
    // configured Primary, finds it running on host-c, and waits as a
    // standby: host-c's keeper brings it in.
    w.set_alive(&["host-a", "host-c"]);
    b.stop("web").unwrap();
    a.start("web").unwrap();
    wait_for("host-a joined host-c in generation 4", SETTLE, || {
        let (sa, sc) = (web(&a), web(&c));
        sc["lockstep"]["role"] == "checkpoint primary (generation 4)"
            && sc["checkpoint"]["protection"] == "protected: secondary host-a"
            && sa["lockstep"]["role"] == "checkpoint secondary (generation 4)"
    });
    assert_eq!(
        w.decided().last(),
        Some(&("web".to_string(), 4, "host-c".to_string()))
    );
    assert!(count(&mem) > resumed);
    c.stop("web").unwrap();
    a.stop("web").unwrap();
}

/// (b) A join whose link breaks in the middle of its full epoch (host-c
/// cuts it after the first piece, three times) leaves host-a alone and
/// serving — its epochs close and count as acknowledged, the guest runs —
/// and the keeper retries with back-off until the join succeeds.
#[test]
fn a_join_cut_in_its_full_epoch_leaves_the_primary_alone_and_it_retries() {
    // 4 MiB of ballast: the full epoch is at least four 1 MiB pieces.
    let (w, mut a, mut b, mut c) = three_hosts(47, 4 << 20);
    c.cut_checkpoint_joins(3);
    lose_host_b(&w, &a, &mut b);
    // Watch host-a's protection closely while the cut joins fail.
    let mut failed_while_serving = 0;
    let t = Instant::now();
    let mem = primary_memory(&a);
    loop {
        assert!(t.elapsed() < SETTLE, "timed out: host-c joined at last");
        let s = web(&a);
        let p = s["checkpoint"]["protection"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if p == "protected: secondary host-c" {
            break;
        }
        if p.starts_with("not protected: secondary on host-c failed: ") {
            // Cut while streaming: the gate never left the lone run.
            assert!(p.contains("while it was brought up to date"), "{p}");
            // Alone again: every closed epoch counts as acknowledged (one
            // may close between the two figures' reads).
            let (acked, epoch) = (
                u(&s["checkpoint"]["acknowledged"]),
                u(&s["checkpoint"]["epoch"]),
            );
            assert!(
                acked + 2 >= epoch,
                "a lone primary's epochs count as acknowledged: {s}"
            );
            assert_eq!(
                s["lockstep"]["role"],
                "checkpoint primary (unprotected, generation 2)"
            );
            assert_eq!(s["checkpoint"]["outputs_stopped"], false);
            // And the guest runs.
            let at = count(&mem);
            wait_for("the guest counts", SETTLE, || count(&mem) > at);
            failed_while_serving += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(failed_while_serving > 0, "a failed join was seen");
    assert_eq!(
        c.checkpoint_join_cuts
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "all three cuts happened"
    );
    let sa = web(&a);
    assert_eq!(sa["lockstep"]["role"], "checkpoint primary (generation 2)");
    wait_for("host-c acknowledges epochs", SETTLE, || {
        u(&web(&c)["checkpoint"]["applied"]) > 0
            && web(&c)["lockstep"]["role"] == "checkpoint secondary (generation 2)"
    });
    // Only host-a ever owned a generation after 1.
    assert_eq!(
        w.decided(),
        vec![
            ("web".into(), 1, "host-a".into()),
            ("web".into(), 2, "host-a".into()),
        ]
    );
    a.stop("web").unwrap();
    c.stop("web").unwrap();
}

/// (c) A host the config does not allow for the VM refuses the join (in the
/// Hello's check, whoever offers it) and runs no standby.
#[test]
fn a_host_the_config_does_not_allow_refuses_the_join() {
    let mut w = World::new(48);
    let web_cfg = w.config.vms.iter_mut().find(|v| v.name == "web").unwrap();
    web_cfg.affinity.hosts = vec!["host-a".into(), "host-b".into()];
    let mut c = w.manager(2);
    let err = c.start("web").unwrap_err().to_string();
    assert_eq!(
        err,
        "VM \"web\" (replication = \"checkpoint\"): the config does not allow it on this host"
    );
    assert!(c.pair("web").is_none());
    let spec = c.checkpoint_spec_for("web").unwrap();
    let mut hello: Hello = spec.pair.hello.clone();
    hello.generation = 2;
    hello.primary_host = "host-a".into();
    hello.start_exit = crate::lockstep::respawn::JOIN_BY_TRANSFER;
    let vm = c.find("web").unwrap().clone();
    let e =
        crate::checkpoint::daemon_member::check_join(&c.config, &vm, c.fencing_socket(), &hello)
            .unwrap_err();
    assert_eq!(e, "the config does not allow vm web on host-c");
    // The same check on an allowed host goes on to fencing's owner.
    let a = w.manager(0);
    let e =
        crate::checkpoint::daemon_member::check_join(&a.config, &vm, a.fencing_socket(), &hello)
            .unwrap_err();
    assert!(
        e.starts_with("join in generation 2 offered by host-a"),
        "{e}"
    );
}
