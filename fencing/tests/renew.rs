//! What rides on the lease renewal, with agents sharing one region file and
//! times handed in: the sanlock-style slot claim, publication before Paxos,
//! the deposition watch and freeze detection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{file_region, runtime, take_slot};
use config_schema::clock::BootInstant;
use config_schema::ctl::{Response, RunningVm};
use fencing::agent::{Agent, ACQUIRE_BOUND};
use fencing::io::BlockIo;
use fencing::layout::{Block, LeaseRecord, Running};
use fencing::renew::Deposed;

fn agent(io: &Arc<dyn BlockIo>, host: &str, incarnation: u64) -> Arc<Agent> {
    Arc::new(Agent::new(&runtime(host), Arc::clone(io), incarnation).unwrap())
}

fn region() -> (tempfile::TempDir, Arc<dyn BlockIo>) {
    let (d, io) = file_region(512);
    (d, io)
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_second_machine_with_the_same_host_config_never_writes_the_slot_while_the_first_renews() {
    let (_d, io) = region();
    let first = agent(&io, "host-b", 1);
    take_slot(&first);
    let slot = first.geo.lease_block(1);
    let t0 = BootInstant::now();
    // The config disk of host-b in a second machine.
    let second = agent(&io, "host-b", 2);
    let r = second.renew_once(t0);
    assert!(r.result.is_err());
    assert!(
        r.lines[0].contains("watching this host's lease slot for 8000 ms"),
        "{:?}",
        r.lines
    );
    let mut refusals = Vec::new();
    for k in 1..=20u32 {
        first.renew_once(t0 + MS * 500 * k).result.unwrap();
        let r = second.renew_once(t0 + MS * (500 * k + 1));
        assert!(
            r.result.is_err() && r.withhold.is_some(),
            "round {k}: {r:?}"
        );
        refusals.extend(r.lines);
        let on_disk = LeaseRecord::decode(&io.read(slot).unwrap()).unwrap();
        assert_eq!(
            on_disk.incarnation, 1,
            "round {k}: the second machine wrote the slot"
        );
    }
    assert_eq!(refusals.len(), 1, "said once: {refusals:?}");
    assert!(refusals[0]
        .starts_with("fencing: not fencing: another machine renews this host's lease slot"));
    assert!(second.status(t0)["slot"]["refused"]
        .as_str()
        .unwrap()
        .contains("wrong machine"));
    match second.acquire("kv", 1, 1, ACQUIRE_BOUND) {
        Response::Error { message } => assert!(message.contains("does not hold its lease slot")),
        other => panic!("acquired without the slot: {other:?}"),
    }
    // The first machine goes away; T = 8 s after its last write the second
    // takes the slot, and the first, back, is refused in its turn.
    let quiet = t0 + MS * 10_000;
    assert!(second.renew_once(quiet).result.is_err());
    assert!(
        second.renew_once(quiet + MS * 8_500).result.is_err(),
        "writes, then checks"
    );
    let r = second.renew_once(quiet + MS * 10_000);
    r.result.unwrap();
    assert!(
        r.lines.iter().any(|l| l.contains("took it")),
        "{:?}",
        r.lines
    );
    let r = first.renew_once(quiet + MS * 10_500);
    assert!(r
        .result
        .unwrap_err()
        .contains("another machine wrote this host's lease slot"));
    assert!(r
        .lines
        .iter()
        .any(|l| l.contains("not fencing: another machine wrote")));
    assert!(!first.slot_held() && r.withhold.is_some());
}

/// A block I/O that logs every write: (block, bytes).
struct Recording {
    inner: Arc<dyn BlockIo>,
    writes: Mutex<Vec<(u64, Block)>>,
}

impl BlockIo for Recording {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn read(&self, index: u64) -> std::io::Result<Block> {
        self.inner.read(index)
    }
    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        self.writes.lock().unwrap().push((index, data.into()));
        self.inner.write(index, data)
    }
}

#[test]
fn an_acquire_is_published_in_the_lease_before_its_first_paxos_write() {
    let (_d, inner) = region();
    let rec = Arc::new(Recording {
        inner,
        writes: Mutex::new(Vec::new()),
    });
    let io: Arc<dyn BlockIo> = rec.clone();
    let a = agent(&io, "host-a", 1);
    let b = agent(&io, "host-b", 2);
    take_slot(&a);
    take_slot(&b);
    rec.writes.lock().unwrap().clear();
    assert!(matches!(
        a.acquire("kv", 2, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
    let writes = rec.writes.lock().unwrap().clone();
    let lease = a.geo.lease_block(0);
    let first_paxos = writes
        .iter()
        .position(|(at, _)| a.geo.paxos_position(*at).is_some())
        .expect("a Paxos write");
    let kv2 = Running {
        vm: 0,
        generation: 2,
    };
    let published = writes[..first_paxos].iter().any(|(at, bytes)| {
        *at == lease && LeaseRecord::decode(bytes).unwrap().running.contains(&kv2)
    });
    assert!(
        published,
        "no lease write listing kv@2 before the first Paxos write"
    );
    // Others read it; a renewal keeps it listed until ftvmm answers after it.
    b.renew_once(BootInstant::now()).result.unwrap();
    assert_eq!(b.leases(BootInstant::now())[0].running, ["kv"]);
    a.renew_once(BootInstant::now()).result.unwrap();
    let epoch = a.grant_sent();
    a.on_running(&[], epoch);
    a.renew_once(BootInstant::now()).result.unwrap();
    b.renew_once(BootInstant::now()).result.unwrap();
    assert!(b.leases(BootInstant::now())[0].running.is_empty());
}

fn runs(a: &Agent, vm: &str, generation: u64) {
    let epoch = a.grant_sent();
    a.on_running(
        &[RunningVm {
            vm: vm.into(),
            generation,
            slot: None,
        }],
        epoch,
    );
}

#[test]
fn a_later_generation_started_elsewhere_deposes_the_running_copy() {
    let (_d, io) = region();
    let a = agent(&io, "host-a", 1);
    let b = agent(&io, "host-b", 2);
    take_slot(&a);
    take_slot(&b);
    assert!(matches!(
        a.acquire("kv", 3, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
    runs(&a, "kv", 3);
    let r = a.renew_once(BootInstant::now());
    assert!(r.deposed.is_empty(), "{r:?}");
    // host-b starts generation 4 (a partition, a misconfiguration...).
    assert!(matches!(
        b.acquire("kv", 4, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
    let want = Deposed {
        vm: "kv".into(),
        generation: 4,
        by: "host-b".into(),
    };
    let r = a.renew_once(BootInstant::now());
    assert_eq!(r.deposed, std::slice::from_ref(&want));
    assert!(r.lines.iter().any(|l| l
        == "fencing: vm kv generation 3 is deposed: host host-b's block names generation 4; \
            telling ftvmm to stop it"));
    // Level-triggered: sent again while ftvmm still runs it, said once.
    let r = a.renew_once(BootInstant::now());
    assert_eq!((r.deposed, r.lines.len()), (vec![want], 0));
}

#[test]
fn racing_for_the_next_generation_is_not_deposition_but_losing_it_is() {
    let (_d, io) = region();
    let a = agent(&io, "host-a", 1);
    let b = agent(&io, "host-b", 2);
    take_slot(&a);
    take_slot(&b);
    runs(&a, "kv", 3);
    // host-a re-checks after a hold and wins 4 itself: not deposed, although
    // host-b's block of 4 (it learned the decision) names 4 too.
    assert!(matches!(
        a.acquire("kv", 4, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
    assert!(matches!(
        b.acquire("kv", 4, 1, ACQUIRE_BOUND),
        Response::Decided { won: false, .. }
    ));
    assert!(a.renew_once(BootInstant::now()).deposed.is_empty());
    // A copy at 7 whose 8 was won by host-b is deposed.
    runs(&a, "kv", 7);
    assert!(matches!(
        b.acquire("kv", 8, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
    assert_eq!(a.renew_once(BootInstant::now()).deposed.len(), 1);
}

#[test]
fn a_corrupt_block_in_the_next_instance_deposes_with_an_alarm() {
    let (_d, io) = region();
    let a = agent(&io, "host-a", 1);
    take_slot(&a);
    runs(&a, "kv", 3);
    let at = a.geo.paxos_block(0, 4, 2);
    let mut junk = vec![0u8; 512];
    junk[7] = 0x42;
    io.write(at, &junk).unwrap();
    let r = a.renew_once(BootInstant::now());
    assert_eq!(r.deposed.len(), 1);
    assert!(r
        .lines
        .iter()
        .any(|l| l.contains("vm kv generation 3 is deposed: fencing: ALARM")));
    assert_eq!(a.status(BootInstant::now())["alarms"]["count"], 1);
}

#[test]
fn peers_that_renewed_more_than_this_hosts_clock_allows_betray_a_freeze() {
    let (_d, io) = region();
    let a = agent(&io, "host-a", 1);
    let b = agent(&io, "host-b", 2);
    take_slot(&a);
    take_slot(&b);
    let t0 = BootInstant::now();
    let r = a.renew_once(t0);
    assert!(!r.frozen && r.withhold.is_none());
    // host-a's clock stands still while host-b renews 20 times.
    for k in 1..=20u32 {
        b.renew_once(t0 + MS * 500 * k).result.unwrap();
    }
    let r = a.renew_once(t0 + MS * 500);
    assert!(r.frozen, "{r:?}");
    let why = r.withhold.unwrap();
    assert!(
        why.contains("this host was frozen: host host-b's lease advanced 20 renewals"),
        "{why}"
    );
    assert!(r.lines[0].ends_with("withdrawing the output grant and checking for deposition"));
    // The grant comes back only after a clean renewal.
    b.renew_once(t0 + MS * 10_500).result.unwrap();
    let r = a.renew_once(t0 + MS * 1_000);
    assert!(!r.frozen && r.withhold.is_none(), "{r:?}");
    assert!(r.lines[0].contains("granting output again"));
    assert_eq!(a.status(t0)["freeze"]["detections"], 1);
}

/// Found on a loaded QEMU host: a renewal write of this agent landed after
/// a newer one, the slot showed its own incarnation with an older counter,
/// and the agent took it for another machine (grant withdrawn, the pair
/// handed over). Its own late record is rewritten; another incarnation is
/// still refused.
#[test]
fn an_own_older_record_landing_late_is_rewritten_not_taken_for_another_machine() {
    let (_d, io) = region();
    let a = agent(&io, "host-b", 7);
    take_slot(&a);
    let slot = a.geo.lease_block(1);
    let t0 = BootInstant::now();
    a.renew_once(t0).result.unwrap();
    let older = io.read(slot).unwrap();
    a.renew_once(t0 + MS * 500).result.unwrap();
    io.write(slot, &older).unwrap();
    let r = a.renew_once(t0 + MS * 1000);
    assert!(r.result.is_ok(), "{r:?}");
    let on_disk = LeaseRecord::decode(&io.read(slot).unwrap()).unwrap();
    assert_eq!(on_disk.incarnation, 7);
    assert!(on_disk.counter > LeaseRecord::decode(&older).unwrap().counter);
    // Another machine's record (another incarnation) is still refused.
    let mut other = LeaseRecord::decode(&older).unwrap();
    other.incarnation = 8;
    io.write(slot, &other.encode(a.geo.block_len())).unwrap();
    assert!(a.renew_once(t0 + MS * 1500).result.is_err());
}

/// A block I/O whose reads take `delay` (a slow or loaded storage path).
struct SlowReads {
    inner: Arc<dyn BlockIo>,
    delay: Mutex<Duration>,
}

impl BlockIo for SlowReads {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn read(&self, index: u64) -> std::io::Result<Block> {
        let delay = *self.delay.lock().unwrap();
        std::thread::sleep(delay);
        self.inner.read(index)
    }
    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(index, data)
    }
}

#[test]
fn a_renewal_that_takes_a_quarter_of_the_lease_timeout_says_where_its_time_went() {
    let (_d, inner) = region();
    let slow = Arc::new(SlowReads {
        inner,
        delay: Mutex::new(Duration::ZERO),
    });
    let io: Arc<dyn BlockIo> = slow.clone();
    let a = agent(&io, "host-a", 1);
    take_slot(&a);
    let r = a.renew_once(BootInstant::now());
    r.result.unwrap();
    assert!(
        !r.lines.iter().any(|l| l.contains("lease renewal took")),
        "{:?}",
        r.lines
    );
    // Three hosts: one read of its own lease, then the two others' at once
    // (one round trip, not two); with 1100 ms each the renewal takes 2.2 s,
    // past 8 s / 4.
    *slow.delay.lock().unwrap() = MS * 1100;
    let r = a.renew_once(BootInstant::now());
    r.result.unwrap();
    let line = r
        .lines
        .iter()
        .find(|l| l.contains("lease renewal took"))
        .unwrap_or_else(|| panic!("no slow-renewal line: {:?}", r.lines));
    let ms = |after: &str| -> u64 {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        ms("took ") >= 2_200 && (1_100..2_000).contains(&ms("other leases ")),
        "{line}"
    );
    assert!(
        line.ends_with("other hosts count the lease expired after 8000 ms without one"),
        "{line}"
    );
}
