//! Storage fencing on a real pair (issue 13, docs/design.md §3 item 5): the
//! shared storage is the iSCSI LUN with persistent reservations
//! (`Cluster::use_iscsi_storage`, Debian's tgt), each host through its own
//! path and I_T nexus. host-a is the Primary of `kv`, host-b its Secondary.
//!
//! Both fencing agents join the reservation at start. host-a's QEMU is then
//! frozen with QMP `stop` while a client writes through the pair and a second
//! client rewrites slots in place. host-b's fencing wins generation 2 and
//! preempts host-a's key *before* it answers `Decided` (its console says so
//! before ftvmm goes live); host-a stays frozen until well past the
//! late-write bound, then is thawed. Its first write after the thaw must be
//! refused by the target: its console says RESERVATION CONFLICT (for its
//! lease, and for a VM write ftvmm had in flight at the freeze if there was
//! one), its fencing counts it preempted, its VM stops, it asks for its reset
//! and its watchdog resets it. The image file tgt serves is the judge of what landed: none of
//! host-a's blocks of the fencing region (its lease, which it writes every
//! 500 ms, and its Disk Paxos blocks of `kv`) changes from the freeze to the
//! end, while host-b's lease moves on; no slot rolls back; every
//! acknowledged PUT is readable and in the on-disk log; no guest frame left
//! host-a after host-b went live but those its NIC held at the freeze
//! (`common::no_overlap_but_queued`: the network has no reservation to
//! refuse them; they were released in generation 1).
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 with
//! `qemu-block-extra`, the `tgt` package and root; FAILS with a clear message
//! when one is missing.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::slots::{slots_hold_their_last_acknowledged_version, start_slot_client, wait_acks};
use common::{all_on_disk, no_overlap_but_queued, pair_on_iscsi, survive, VM};
use config_schema::ctl::LATE_WRITE_BOUND_MS;
use fencing::layout::{decode_header, Geometry};
use qemu_tests::{Cluster, Host, Pattern};

const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for a line matching `re` on `host`, prints it with its time on the
/// host's console clock, and returns that time and the line.
fn line(host: &Host, re: &str) -> (Duration, String) {
    let l = host
        .wait_for_line(Pattern::regex(re).unwrap(), STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: no line matching {re:?}: {e}", host.name()));
    eprintln!("  [{} {:8.3}] {}", host.name(), l.at.as_secs_f64(), l.text);
    (l.at, l.text)
}

/// The fencing region's layout as the header block in the image records it.
fn geometry(cluster: &Cluster) -> (File, u64, Geometry) {
    let f = File::open(cluster.shared_storage()).unwrap();
    let offset = cluster.config().storage.fencing.offset_mib << 20;
    for block in [512u32, 4096] {
        let mut b = vec![0u8; block as usize];
        f.read_exact_at(&mut b, offset).unwrap();
        if let Ok(h) = decode_header(&b) {
            assert_eq!(h.geometry, Geometry::of_config(cluster.config(), block));
            return (f, offset, h.geometry);
        }
    }
    panic!("no fencing region header in the shared image");
}

/// Host `host`'s blocks of the fencing region in the image: its lease and
/// its Disk Paxos blocks of every ring slot of the VM.
fn blocks_of(cluster: &Cluster, host: u32) -> Vec<Vec<u8>> {
    let (f, offset, geo) = geometry(cluster);
    let mut at = vec![geo.lease_block(host)];
    at.extend((0..u64::from(geo.ring)).map(|slot| geo.paxos_block(0, slot, host)));
    at.into_iter()
        .map(|i| {
            let len = geo.block_len();
            let mut b = vec![0u8; len];
            f.read_exact_at(&mut b, offset + i * len as u64).unwrap();
            b
        })
        .collect()
}

/// What happened when (harness clock).
#[derive(Default, Clone, Copy)]
struct Phases {
    paused: Option<Instant>,
    b_live: Option<Instant>,
    resume_sent: Option<Instant>,
    thawed: Option<Instant>,
    reset: Option<Instant>,
}

#[test]
fn a_frozen_primary_is_preempted_at_the_storage_and_nothing_it_writes_after_the_thaw_lands() {
    let cluster = pair_on_iscsi("storage-fence");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    // Both agents joined with their own key (host id 1 and 2).
    line(
        a,
        r"^fencing: storage fencing active on /dev/sd[a-z]+: key 0x46540001[0-9a-f]{8} registered, reservation WERO held by ",
    );
    line(
        b,
        r"^fencing: storage fencing active on /dev/sd[a-z]+: key 0x46540002[0-9a-f]{8} registered, reservation WERO held by ",
    );
    cluster.vm.start_capture();
    let slots = start_slot_client(&cluster);
    let (stop, seen, worker) = (
        Arc::clone(&slots.stop),
        Arc::clone(&slots.seen),
        slots.worker,
    );
    let start = Instant::now();
    wait_acks(&seen, start, 20, STEP_TIMEOUT);
    let phases = Mutex::new(Phases::default());
    let frozen = Mutex::new(None);
    let frozen_for = Duration::from_millis(LATE_WRITE_BOUND_MS + 5_000);
    let (_pause, acked) = survive(
        &cluster,
        "primary host frozen (QMP stop) on reserved storage",
        || {
            a.pause().unwrap();
            phases.lock().unwrap().paused = Some(Instant::now());
        },
        || {
            let t = Instant::now();
            // host-b fences host-a at the device before it answers Decided,
            // hence before ftvmm goes live.
            let (deposed_at, _) = line(
                b,
                r"^fencing: deposed host host-a at the storage before answering vm kv generation 2 \(it owned generation 1\): removed \[0x46540001[0-9a-f]{8}\] with ",
            );
            let (live_at, _) = line(
                b,
                &format!(r"^ftvmm: vm {VM}: won generation 2; live as primary"),
            );
            assert!(
                deposed_at <= live_at,
                "host-b went live before it deposed host-a"
            );
            phases.lock().unwrap().b_live = Some(Instant::now());
            std::thread::sleep(frozen_for.saturating_sub(t.elapsed()));
            // What host-a has on the device, frozen since before the depose.
            *frozen.lock().unwrap() = Some((blocks_of(&cluster, 0), blocks_of(&cluster, 1)));
            phases.lock().unwrap().resume_sent = Some(Instant::now());
            a.resume().unwrap();
            phases.lock().unwrap().thawed = Some(Instant::now());
            eprintln!("  host-a thawed after {:.1} s", t.elapsed().as_secs_f64());
            // Its first write is refused at the target: its lease renewal
            // (every 500 ms; anything ftvmm had queued is older than the IO
            // age limit and never submitted).
            line(
                a,
                r"^fencing: lease renewal failed: writing own lease: the device refused it with RESERVATION CONFLICT",
            );
            line(a, r"^fencing: this host was preempted at the storage \(");
            // Its VM stops: told by fencing (deposed), or because ftvmm's
            // own disk write was refused and it asked for the reset.
            line(
                a,
                &format!(
                    r"^ftvmm: (vm {VM}: (lost generation 2 to host-b|deposed: ).*halting the VM|VM {VM} stopped: )"
                ),
            );
            line(a, r"^fencing: reset requested \(");
            assert!(
                a.wait_stopped(Duration::from_secs(60)),
                "host-a was not reset within 60 s of asking"
            );
            phases.lock().unwrap().reset = Some(Instant::now());
            // Writes of the VM that ftvmm submitted after the thaw (in
            // flight at the freeze) were refused at the target too.
            for l in a.console().lines() {
                if l.text.contains("storage refused the disk") {
                    eprintln!("  [host-a {:8.3}] {}", l.at.as_secs_f64(), l.text);
                }
            }
        },
    );
    let p = *phases.lock().unwrap();
    let (paused, b_live, resume_sent, thawed, reset) = (
        p.paused.unwrap(),
        p.b_live.unwrap(),
        p.resume_sent.unwrap(),
        p.thawed.unwrap(),
        p.reset.unwrap(),
    );
    wait_acks(&seen, thawed, 20, STEP_TIMEOUT);
    stop.store(true, Ordering::SeqCst);
    let mut slot_kv = worker.join().expect("slot client thread");
    let frames = cluster.vm.stop_capture();
    no_overlap_but_queued(&frames, resume_sent, thawed);

    // The image: host-a's blocks are as they were while it was frozen;
    // host-b's lease moved on meanwhile (the reading is live).
    let (a_then, b_then) = frozen.lock().unwrap().clone().unwrap();
    let a_now = blocks_of(&cluster, 0);
    assert_eq!(a_now.len(), a_then.len());
    for (i, (then, now)) in a_then.iter().zip(&a_now).enumerate() {
        assert!(
            then == now,
            "host-a's block {i} of its fencing blocks (0: lease, 1..: Disk Paxos of kv) changed after the thaw: a write of the preempted host landed"
        );
    }
    assert_ne!(
        blocks_of(&cluster, 1)[0],
        b_then[0],
        "host-b's lease did not move"
    );
    all_on_disk(&cluster, &acked, "storage fence");
    let s = seen.lock().unwrap();
    assert!(
        s.error.is_none(),
        "slot client: {}",
        s.error.as_ref().unwrap()
    );
    let count =
        |from: Instant, to: Instant| s.acks.iter().filter(|t| **t > from && **t <= to).count();
    let (before, during, after) = (
        count(start, paused),
        count(b_live, thawed),
        count(thawed, Instant::now()),
    );
    eprintln!(
        "storage fence: {} SETs sent, acknowledged {before} before the freeze, {during} while host-a was frozen and host-b live, {after} after the thaw; host-b live {:.1} s after the QMP stop, host-a thawed {:.1} s after it and reset {:.1} s after the thaw",
        s.ledger.sets_sent(),
        (b_live - paused).as_secs_f64(),
        (thawed - paused).as_secs_f64(),
        (reset - thawed).as_secs_f64(),
    );
    assert!(
        before >= 20 && during >= 20 && after >= 20,
        "the slot client did not rewrite its slots throughout the fault"
    );
    slots_hold_their_last_acknowledged_version(&cluster, &mut slot_kv, &s.ledger, "storage fence");
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    drop(s);
    let mut cluster = cluster;
    cluster.pass();
}
