//! Three agents (the example cluster's hosts) sharing one region file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use config_schema::clock::BootInstant;

use common::{file_region, runtime, take_slot};
use config_schema::ctl::Response;
use fencing::agent::{Agent, AgentError, RegionState, ACQUIRE_BOUND};
use fencing::io::BlockIo;
use fencing::layout::{Block, Geometry};

fn region() -> (tempfile::TempDir, Arc<dyn BlockIo>) {
    let (d, io) = file_region(512);
    (d, io)
}

fn unclaimed(io: &Arc<dyn BlockIo>) -> Vec<Arc<Agent>> {
    ["host-a", "host-b", "host-c"]
        .iter()
        .enumerate()
        .map(|(i, h)| Arc::new(Agent::new(&runtime(h), Arc::clone(io), 100 + i as u64).unwrap()))
        .collect()
}

/// The three agents, each holding its lease slot.
fn agents(io: &Arc<dyn BlockIo>) -> Vec<Arc<Agent>> {
    let a = unclaimed(io);
    for ag in &a {
        take_slot(ag);
    }
    a
}

#[test]
fn blank_region_is_initialized_once_and_leases_go_live_by_counter_movement() {
    let (_d, io) = region();
    let a = unclaimed(&io);
    assert_eq!(a[0].init_region().unwrap(), RegionState::Initialized);
    assert_eq!(a[1].init_region().unwrap(), RegionState::Found);
    let t = BootInstant::now();
    let claim = a[0].renew_once(t);
    assert!(claim.result.is_err() && claim.lines.is_empty(), "{claim:?}");
    let r = a[0].renew_once(t + a[0].timing.renew * 3);
    r.result.unwrap();
    assert!(r.lines[0].starts_with("fencing: lease renewed (host host-a,"));
    assert!(
        a[0].renew_once(BootInstant::now()).lines.is_empty(),
        "console line only at state changes"
    );
    // host-b's first reading of host-a is a baseline; movement makes it live.
    take_slot(&a[1]);
    let live = |ag: &Agent, h: usize| ag.leases(BootInstant::now())[h].live;
    assert!(!live(&a[1], 0));
    a[0].renew_once(BootInstant::now()).result.unwrap();
    a[1].renew_once(BootInstant::now()).result.unwrap();
    assert!(live(&a[1], 0) && live(&a[1], 1) && !live(&a[1], 2));
    let s = a[1].status(BootInstant::now());
    assert_eq!(s["own_lease"]["renewals"], 2);
    assert_eq!(s["region"]["state"], "found");
    assert_eq!(s["slot"]["state"], "held");
    assert_eq!(s["leases_expired"], serde_json::json!([]));
}

#[test]
fn acquire_from_three_threads_names_one_owner_for_everyone() {
    let (_d, io) = region();
    let a = agents(&io);
    let handles: Vec<_> = a
        .iter()
        .map(|ag| {
            let ag = Arc::clone(ag);
            std::thread::spawn(move || ag.acquire("kv", 2, 1, ACQUIRE_BOUND))
        })
        .collect();
    let answers: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let owners: Vec<(String, bool)> = answers
        .iter()
        .map(|r| match r {
            Response::Decided {
                vm,
                generation: 2,
                owner,
                won,
                ..
            } if vm == "kv" => (owner.clone(), *won),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(owners.iter().all(|(o, _)| *o == owners[0].0));
    assert_eq!(owners.iter().filter(|(_, won)| *won).count(), 1);
    // Later askers get the same answer.
    let again = a[2].acquire("kv", 2, 1, ACQUIRE_BOUND);
    assert!(matches!(again, Response::Decided { owner, .. } if owner == owners[0].0));
    assert!(matches!(
        a[0].acquire("nope", 1, 1, ACQUIRE_BOUND),
        Response::Error { message } if message.contains("no vm")
    ));
    assert_eq!(
        a[0].status(BootInstant::now())["decisions"][0]["generation"],
        2
    );
}

#[test]
fn decisions_carry_the_config_generation_superseded_is_typed_and_highest_reads_the_disk() {
    let (_d, io) = region();
    let a = agents(&io);
    let highest = |ag: &Arc<Agent>| ag.highest("kv", ACQUIRE_BOUND);
    let want = |generation, owner: Option<&str>, config_generation| Response::Highest {
        vm: "kv".into(),
        generation,
        owner: owner.map(String::from),
        config_generation,
    };
    assert_eq!(highest(&a[0]), want(0, None, 0));
    let decided = |owner: &str, won, config_generation, generation| Response::Decided {
        vm: "kv".into(),
        generation,
        owner: owner.into(),
        won,
        config_generation,
        storage_cut: false,
    };
    // host-b wins generation 3 under config generation 4; host-a, which runs
    // config generation 9, learns the decision with the config it was made under.
    assert_eq!(
        a[1].acquire("kv", 3, 4, ACQUIRE_BOUND),
        decided("host-b", true, 4, 3)
    );
    assert_eq!(
        a[0].acquire("kv", 3, 9, ACQUIRE_BOUND),
        decided("host-b", false, 4, 3)
    );
    assert_eq!(highest(&a[2]), want(3, Some("host-b"), 4));
    // Generation 19 reuses the ring slot of 3 (16 slots).
    assert_eq!(
        a[2].acquire("kv", 19, 5, ACQUIRE_BOUND),
        decided("host-c", true, 5, 19)
    );
    // host-c's block moved on to 19: for it, 3 is superseded. (A host whose
    // block still records the decision of 3 answers that decision, which
    // stays true.)
    assert_eq!(
        a[2].acquire("kv", 3, 5, ACQUIRE_BOUND),
        Response::Superseded {
            vm: "kv".into(),
            generation: 3,
            by: 19
        }
    );
    assert_eq!(highest(&a[1]), want(19, Some("host-c"), 5));
    assert!(matches!(
        a[0].acquire("kv", 0, 9, ACQUIRE_BOUND),
        Response::Error { message } if message.contains("generation 0 is not a generation")
    ));
    assert!(matches!(
        a[0].highest("nope", ACQUIRE_BOUND),
        Response::Error { message } if message.contains("no vm \"nope\"")
    ));
    let s = a[0].status(BootInstant::now());
    assert_eq!(s["decisions"][0]["config_generation"], 4);
}

#[test]
fn highest_over_a_corrupt_block_is_an_alarm_not_a_number() {
    let (_d, io) = region();
    let a = agents(&io);
    a[1].acquire("kv", 5, 2, ACQUIRE_BOUND);
    let at = a[1].geo.paxos_block(0, 5, 1);
    let mut s = io.read(at).unwrap();
    s[40] ^= 1;
    io.write(at, &s).unwrap();
    match a[0].highest("kv", ACQUIRE_BOUND) {
        Response::Error { message } => assert!(
            message.contains("block of host host-b for vm kv ring slot 5")
                && message.contains("bad checksum"),
            "{message}"
        ),
        other => panic!("a number over a corrupt block: {other:?}"),
    }
}

#[test]
fn a_header_of_another_layout_is_refused_and_acquire_errors() {
    let (_d, io) = region();
    let other = Geometry::new(["x", "y"], 1, 16, 512);
    io.write(0, &other.encode_header()).unwrap();
    let a = unclaimed(&io);
    assert!(matches!(
        a[0].init_region(),
        Err(AgentError::Mismatch { hosts: 2, .. })
    ));
    let r = a[0].renew_once(BootInstant::now());
    assert!(r.result.unwrap_err().contains("another layout"));
    assert!(r.lines[0].starts_with("fencing: lease renewal failed"));
    assert!(r.withhold.unwrap().contains("another layout"));
    match a[0].acquire("kv", 1, 1, Duration::from_millis(500)) {
        Response::Error { message } => assert!(message.contains("another layout")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        a[0].status(BootInstant::now())["region"]["state"],
        "refused"
    );
    // Nothing was written over the foreign header.
    assert_eq!(io.read(0).unwrap(), other.encode_header());
}

#[test]
fn a_damaged_block_with_a_decision_is_an_alarm_not_an_empty_block() {
    let (_d, io) = region();
    let a = agents(&io);
    match a[1].acquire("kv", 3, 1, ACQUIRE_BOUND) {
        Response::Decided { owner, won, .. } => assert!(won && owner == "host-b"),
        other => panic!("unexpected {other:?}"),
    }
    // host-b's block is the only record of the decision; one bit of it rots.
    let at = a[1].geo.paxos_block(0, 3, 1);
    let mut s = io.read(at).unwrap();
    s[100] ^= 0x10;
    io.write(at, &s).unwrap();
    for _ in 0..2 {
        match a[0].acquire("kv", 3, 1, ACQUIRE_BOUND) {
            Response::Error { message } => assert!(
                message.contains(
                    "ALARM: corrupt Disk Paxos block of host host-b for vm kv generation 3"
                ) && message.contains(&format!(
                    "(block {at} of the fencing region, device byte {})",
                    at * 512
                )) && message.contains("bad checksum"),
                "{message}"
            ),
            other => panic!("host-a decided over host-b's damaged block: {other:?}"),
        }
    }
    let st = a[0].status(BootInstant::now());
    assert_eq!(st["alarms"]["count"], 2);
    assert_eq!(st["alarms"]["last"]["host"], "host-b");
    assert_eq!(st["alarms"]["last"]["block"], at);
    assert_eq!(st["decisions"], serde_json::json!([]));
}

/// Storage that answers nothing for a long time (a cut NBD path).
struct Hung;

impl BlockIo for Hung {
    fn block_size(&self) -> usize {
        512
    }
    fn read(&self, _: u64) -> std::io::Result<Block> {
        std::thread::sleep(Duration::from_secs(3));
        Err(std::io::Error::other("gone"))
    }
    fn write(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_secs(3));
        Err(std::io::Error::other("gone"))
    }
}

#[test]
fn acquire_on_hung_storage_answers_an_error_within_the_bound() {
    let a = Arc::new(Agent::new(&runtime("host-a"), Arc::new(Hung), 1).unwrap());
    // "no answer" (not the I/O error "gone" the hung calls end with later)
    // shows the answer came from the bound.
    match a.acquire("kv", 1, 1, Duration::from_millis(300)) {
        Response::Error { message } => {
            assert!(message.contains("no answer from storage"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The example cluster with a second VM (`kv2`), as `host` sees it.
fn two_vm_runtime(host: &str) -> config_schema::runtime::RuntimeConfig {
    let text = include_str!("../../examples/cluster.toml").replace(
        "[[host_groups]]",
        "[[storage.regions]]\nname = \"kv2-disk\"\noffset_mib = 80\nsize_mib = 64\n\n[[host_groups]]",
    ) + "\n[[vms]]\nname = \"kv2\"\nmemory_mib = 64\nimage = \"kv-guest\"\nmode = \"kv\"\n\
         disk_region = \"kv2-disk\"\nmac = \"52:54:00:12:34:57\"\nip = \"198.51.100.11/24\"\n";
    let mut r = runtime(host);
    r.config = config_schema::parse(&text).expect("two-VM config").config;
    r
}

/// A region whose reads of VM 0's Paxos blocks wait until `open` is set:
/// storage that is stuck for one VM only.
struct StuckForVm0 {
    inner: Arc<dyn BlockIo>,
    geo: Geometry,
    open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl BlockIo for StuckForVm0 {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn read(&self, at: u64) -> std::io::Result<Block> {
        if matches!(self.geo.paxos_position(at), Some((0, _, _))) {
            let (m, cv) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        }
        self.inner.read(at)
    }
    fn write(&self, at: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(at, data)
    }
}

/// A host taking over several VMs decides them side by side: one VM's
/// Disk Paxos stuck on its storage does not hold up another VM's (it did
/// when every run of a host took one lock: the second Acquire ran out of
/// its bound waiting for the first). The stuck one still decides once its
/// storage answers.
#[test]
fn a_decision_for_one_vm_does_not_wait_for_another_vms() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shared");
    std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
    let rt = two_vm_runtime("host-a");
    let geo = Geometry::of_config(&rt.config, 512);
    let dev = fencing::io::Device::open(&p).unwrap();
    let region: Arc<dyn BlockIo> =
        Arc::new(fencing::io::RegionIo::new(dev, 0, 512, geo.blocks()).unwrap());
    let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let io: Arc<dyn BlockIo> = Arc::new(StuckForVm0 {
        inner: region,
        geo,
        open: Arc::clone(&open),
    });
    let a = Arc::new(Agent::new(&rt, io, 7).unwrap());
    take_slot(&a);
    let stuck = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || a.acquire("kv", 1, 1, Duration::from_secs(30)))
    };
    // Give the first Acquire time to take its VM's lock and get stuck (if
    // it has not yet, the second one simply runs first: still no wait).
    std::thread::sleep(Duration::from_millis(200));
    match a.acquire("kv2", 1, 1, Duration::from_secs(5)) {
        Response::Decided { vm, won: true, .. } => assert_eq!(vm, "kv2"),
        other => panic!("kv2 waited for kv's stuck decision: {other:?}"),
    }
    assert!(!stuck.is_finished(), "kv's decision is still stuck");
    {
        let (m, cv) = &*open;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
    match stuck.join().unwrap() {
        Response::Decided { vm, won: true, .. } => assert_eq!(vm, "kv"),
        other => panic!("kv: {other:?}"),
    }
}
