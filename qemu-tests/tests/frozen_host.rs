//! A frozen Primary (issue 13, docs/design.md §3) on storage without
//! persistent reservations (the NBD paths): host-a's QEMU is stopped with QMP
//! `stop` — its vCPUs, its clocks and its virtual watchdog all stand still —
//! while a client writes through the pair. host-b takes over; the freeze
//! lasts well past the late-write bound while host-b keeps writing; then
//! host-a is thawed. What it held must never reach the world: no guest frame
//! from host-a after host-b went live (VM network capture) but those its NIC
//! held at the freeze, released before it (`common::no_overlap_but_queued`).
//! host-a must notice it lost and halt; the client's connection goes on;
//! every acknowledged PUT is readable and in the on-disk log.
//!
//! The disk is where this storage cannot be absolute, and the test checks the
//! bound the design states instead: a freeze that stops the host's clocks
//! hides its age from every local timer, so a write host-a had released and
//! queued *before* the freeze can still land right after the thaw (its
//! virtqueue is served as soon as QEMU runs again). Nothing released later
//! may land: every write of host-a to the VM's disk region that lands after
//! host-b's first one there must land within [`THAW_WINDOW`] of the thaw, and
//! be one of the requests host-b re-issued at its go-live (host-b's console
//! counts them). `storage_fence.rs` runs the same freeze on a device with
//! persistent reservations, where no such write lands at all. (The harness
//! watches each host's NBD stream; the fencing region, which both hosts'
//! agents write all along, is not judged here.)
//!
//! Beside the PUT/GET client (whose log records a late write would only
//! rewrite with the same bytes), a second client rewrites a few of the
//! guest's slots in place (`SET`, one sector each, like a database page
//! update) before the freeze, during it and after the thaw. At the end every
//! slot, on the disk image and through the guest, holds its last acknowledged
//! version or a later one that was sent.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64, qemu-nbd
//! and root; FAILS with a clear message when one is missing.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::slots::{
    slots_hold_their_last_acknowledged_version, start_slot_client, wait_acks, SLOTS,
};
use common::{all_on_disk, no_overlap_but_queued, pair_with, survive, THAW_WINDOW, VM};
use config_schema::ctl::LATE_WRITE_BOUND_MS;
use qemu_tests::guest_disk::region_bytes;

/// `to - from` in seconds, negative when `to` came first.
fn secs_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64(),
        None => -(from - to).as_secs_f64(),
    }
}

/// When the fault's steps happened.
#[derive(Default, Clone, Copy)]
struct Phases {
    paused: Option<Instant>,
    b_live: Option<Instant>,
    resume_sent: Option<Instant>,
    thawed: Option<Instant>,
    /// The requests host-b re-issued at its go-live.
    reissued: usize,
}

#[test]
fn a_primary_frozen_past_the_late_write_bound_emits_nothing_and_lands_only_what_it_had_queued() {
    let mut cluster = pair_with("frozen-primary", true);
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    cluster.vm.start_capture();
    // The slot client: its own namespace and connection, rewriting slots
    // from before the fault until well after the thaw.
    let slots = start_slot_client(&cluster);
    let (stop, seen, worker) = (
        Arc::clone(&slots.stop),
        Arc::clone(&slots.seen),
        slots.worker,
    );
    let start = Instant::now();
    wait_acks(&seen, start, 20, Duration::from_secs(120));
    let phases = Mutex::new(Phases::default());
    let frozen_for = Duration::from_millis(LATE_WRITE_BOUND_MS + 5_000);
    let (_pause, acked) = survive(
        &cluster,
        "primary host frozen (QMP stop)",
        || {
            a.pause().unwrap();
            phases.lock().unwrap().paused = Some(Instant::now());
        },
        || {
            let t = Instant::now();
            let live = b
                .wait_for_line(
                    regex::Regex::new(&format!(
                        r"ftvmm: vm {VM}: won generation 2; live as primary.*? disk requests re-issued"
                    ))
                    .unwrap(),
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|e| panic!("host-b did not go live: {e}"));
            let n: usize = regex::Regex::new(r"; (\d+) disk requests re-issued")
                .unwrap()
                .captures(&live.text)
                .map_or(0, |c| c[1].parse().unwrap());
            let mut p = phases.lock().unwrap();
            p.b_live = Some(Instant::now());
            p.reissued = n;
            drop(p);
            // host-b writes on while host-a stays frozen past the bound.
            std::thread::sleep(frozen_for.saturating_sub(t.elapsed()));
            phases.lock().unwrap().resume_sent = Some(Instant::now());
            a.resume().unwrap();
            phases.lock().unwrap().thawed = Some(Instant::now());
            eprintln!("  host-a thawed after {:.1} s", t.elapsed().as_secs_f64());
            // It finds out it lost: a race for generation 2 it cannot win,
            // or fencing's deposition watch.
            let halted = a
                .wait_for_line(
                    regex::Regex::new(&format!(
                        r"ftvmm: vm {VM}: (lost generation 2 to host-b|deposed: host-b).*halting the VM"
                    ))
                    .unwrap(),
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|e| panic!("the thawed host-a did not halt: {e}"));
            eprintln!("  [host-a {:7.3}] {}", halted.at.as_secs_f64(), halted.text);
            // Let anything it still had in its queues come out, if it would.
            std::thread::sleep(Duration::from_secs(3));
        },
    );
    // The slot client goes on after the thaw, then stops.
    let phases = *phases.lock().unwrap();
    let (paused, b_live, resume_sent, thawed) = (
        phases.paused.unwrap(),
        phases.b_live.unwrap(),
        phases.resume_sent.unwrap(),
        phases.thawed.unwrap(),
    );
    wait_acks(&seen, thawed, 20, Duration::from_secs(120));
    stop.store(true, Ordering::SeqCst);
    let mut slot_kv = worker.join().expect("slot client thread");
    let frames = cluster.vm.stop_capture();
    no_overlap_but_queued(&frames, resume_sent, thawed);
    // Only the VM's disk region: both hosts' fencing agents write their
    // lease and Disk Paxos blocks in the fencing region all along, host-b's
    // from boot and host-a's again after the thaw (its lease, its lost race
    // for generation 2), by design.
    let region = region_bytes(cluster.config(), VM).unwrap();
    let vm_writes = |host: &str| -> Vec<_> {
        let all = cluster.storage_path(host).unwrap().landed_writes().unwrap();
        all.into_iter()
            .filter(|w| w.offset < region.end && w.offset + w.len > region.start)
            .collect()
    };
    let (writes_a, writes_b) = (vm_writes("host-a"), vm_writes("host-b"));
    let first_b = writes_b
        .first()
        .expect("host-b wrote nothing to the VM's disk after going live")
        .at;
    let late: Vec<_> = writes_a.iter().filter(|w| w.at > first_b).collect();
    let outside: Vec<_> = late
        .iter()
        .filter(|w| w.at < thawed || w.at > thawed + THAW_WINDOW)
        .collect();
    assert!(
        outside.is_empty(),
        "{} write(s) of host-a to the VM's disk landed after host-b's first and outside the {THAW_WINDOW:?} after the thaw (released after the freeze?): {outside:?}",
        outside.len()
    );
    // NBD may split one request into several writes, never merge two.
    let requests = {
        let mut spans: Vec<(u64, u64)> =
            late.iter().map(|w| (w.offset, w.offset + w.len)).collect();
        spans.sort_unstable();
        spans.dedup();
        spans.windows(2).filter(|w| w[0].1 != w[1].0).count() + usize::from(!spans.is_empty())
    };
    assert!(
        requests <= phases.reissued,
        "host-a landed {requests} request(s) after host-b's first write, more than the {} host-b re-issued (what host-a could have had queued): {late:?}",
        phases.reissued
    );
    if !late.is_empty() {
        eprintln!(
            "frozen primary: the residual without persistent reservations: {} write(s) host-a had queued before the freeze landed {:.3} s after the thaw: {late:?}",
            late.len(),
            secs_between(thawed, late[0].at)
        );
    }
    let last_a = writes_a.last().map(|w| w.at);
    eprintln!(
        "frozen primary: host-a landed {} writes to the VM's disk, the last {:.3} s after the QMP stop; host-b's first of {} landed {:.3} s after it",
        writes_a.len(),
        last_a.map_or(f64::NAN, |t| secs_between(paused, t)),
        writes_b.len(),
        secs_between(paused, first_b)
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    all_on_disk(&cluster, &acked, "frozen primary");
    let s = seen.lock().unwrap();
    assert!(
        s.error.is_none(),
        "slot client: {}",
        s.error.as_ref().unwrap()
    );
    let count =
        |from: Instant, to: Instant| s.acks.iter().filter(|t| **t > from && **t <= to).count();
    let far = Instant::now();
    let (before, frozen, after) = (
        count(start, paused),
        count(b_live, thawed),
        count(thawed, far),
    );
    eprintln!(
        "frozen primary: {} SETs sent to slots {SLOTS:?}, acknowledged {} before the freeze, {} while host-a was frozen and host-b live, {} after the thaw",
        s.ledger.sets_sent(),
        before,
        frozen,
        after
    );
    assert!(
        before >= 20 && frozen >= 20 && after >= 20,
        "the slot client did not rewrite its slots throughout the fault (before, during the freeze, after the thaw)"
    );
    slots_hold_their_last_acknowledged_version(&cluster, &mut slot_kv, &s.ledger, "frozen primary");
    cluster.pass();
}
