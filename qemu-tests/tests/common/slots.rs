//! The slot client of the frozen-host tests: a second client that rewrites
//! a few of the guest's slots in place (`SET`, one sector each, like a
//! database page update) through a fault. A write of an old generation
//! landing late would roll a slot back to an older version: at the end every
//! slot, on the disk image and through the guest, must hold its last
//! acknowledged version or a later one that was sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qemu_tests::kv::{slots_on_disk, Kv, SlotLedger};
use qemu_tests::{Cluster, NetnsTap};

use super::VM;

/// The slots the second client rewrites in turn: few, so that each is
/// rewritten every few requests, the one in flight at the freeze included.
pub const SLOTS: [usize; 3] = [0, 1, 63];

/// What the slot client saw.
#[derive(Default)]
pub struct SlotSeen {
    pub ledger: SlotLedger,
    /// Time of every acknowledged SET.
    pub acks: Vec<Instant>,
    pub error: Option<String>,
}

/// SETs the slots of [`SLOTS`] in turn with values that name a counter, one
/// request at a time, until `stop`; every reply must be `OK <version>` with
/// the slot's version growing.
pub fn rewrite_slots(mut kv: Kv, stop: Arc<AtomicBool>, seen: Arc<Mutex<SlotSeen>>) -> Kv {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let slot = SLOTS[n % SLOTS.len()];
        let value = format!("s{slot}-n{n:06}");
        seen.lock().unwrap().ledger.sent(slot, &value);
        let reply = kv.set(slot, &value);
        let mut s = seen.lock().unwrap();
        let acked = reply
            .map_err(|r| format!("SET {slot} {value} answered {r:?}"))
            .and_then(|version| s.ledger.acked(slot, version));
        match acked {
            Ok(()) => s.acks.push(Instant::now()),
            Err(e) => {
                s.error = Some(e);
                break;
            }
        }
        n += 1;
    }
    kv
}

/// The slot client running on its own namespace and connection: keep the
/// namespace alive, set `stop`, then join `worker` for the client's `Kv`.
pub struct SlotClient {
    pub _netns: NetnsTap,
    pub stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<SlotSeen>>,
    pub worker: std::thread::JoinHandle<Kv>,
}

/// Starts [`rewrite_slots`] from a namespace of its own on the VM network.
pub fn start_slot_client(cluster: &Cluster) -> SlotClient {
    let netns = cluster.vm_client("slots", "198.51.100.201/24").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(SlotSeen::default()));
    let worker = {
        let kv = Kv::connect(&netns);
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || rewrite_slots(kv, stop, seen))
    };
    SlotClient {
        _netns: netns,
        stop,
        seen,
        worker,
    }
}

/// Waits until `n` SETs were acknowledged after `since`.
pub fn wait_acks(seen: &Mutex<SlotSeen>, since: Instant, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = seen.lock().unwrap();
        assert!(
            s.error.is_none(),
            "slot client: {}",
            s.error.as_ref().unwrap()
        );
        if s.acks.iter().filter(|t| **t > since).count() >= n {
            return;
        }
        drop(s);
        assert!(
            Instant::now() < deadline,
            "slot client: fewer than {n} SETs acknowledged within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every slot the client set holds, on the disk image and through the guest,
/// its last acknowledged version or a later one it sent; guest and disk agree.
pub fn slots_hold_their_last_acknowledged_version(
    cluster: &Cluster,
    kv: &mut Kv,
    ledger: &SlotLedger,
    what: &str,
) {
    let disk = slots_on_disk(cluster.shared_storage(), cluster.config(), VM).unwrap();
    if let Err(e) = ledger.check_all(&disk, "the disk image") {
        panic!("{what}: {e}");
    }
    for slot in SLOTS {
        let guest = match kv.slot(slot) {
            Ok(Some((version, value))) => ftguest_kvlog::SlotState::Held {
                version,
                value: value.into_bytes(),
            },
            Ok(None) => ftguest_kvlog::SlotState::Empty,
            Err(reply) => panic!("SLOT {slot} answered {reply:?}"),
        };
        if let Err(e) = ledger.check(slot, &guest, "the guest") {
            panic!("{what}: {e}");
        }
        assert_eq!(
            guest, disk[slot],
            "slot {slot}: the guest and the disk image disagree"
        );
        let (version, value) = ledger.last_acked(slot).unwrap();
        let holds = match &disk[slot] {
            ftguest_kvlog::SlotState::Held { version, value } => {
                format!("version {version} ({})", String::from_utf8_lossy(value))
            }
            other => format!("{other:?}"),
        };
        eprintln!(
            "  slot {slot}: last acknowledged version {version} ({value}); disk and guest hold {holds}"
        );
    }
}
