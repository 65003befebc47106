//! Three agents (the example cluster's hosts) sharing one region file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use config_schema::ctl::Response;
use config_schema::runtime::RuntimeConfig;
use fencing::agent::{Agent, AgentError, RegionState, ACQUIRE_BOUND};
use fencing::io::{RegionIo, SectorIo};
use fencing::layout::Geometry;

fn runtime(host: &str) -> RuntimeConfig {
    RuntimeConfig {
        config: config_schema::parse(include_str!("../../examples/cluster.toml"))
            .expect("example config is valid")
            .config,
        host_name: host.into(),
        host_private_key: "00".repeat(32),
    }
}

fn region() -> (tempfile::TempDir, Arc<dyn SectorIo>) {
    let geo = Geometry::of_config(&runtime("host-a").config);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shared");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let io = RegionIo::open(&p, 0, geo.sectors()).unwrap();
    (dir, Arc::new(io))
}

fn agents(io: &Arc<dyn SectorIo>) -> Vec<Arc<Agent>> {
    ["host-a", "host-b", "host-c"]
        .iter()
        .enumerate()
        .map(|(i, h)| Arc::new(Agent::new(&runtime(h), Arc::clone(io), 100 + i as u64).unwrap()))
        .collect()
}

#[test]
fn blank_region_is_initialized_once_and_leases_go_live_by_counter_movement() {
    let (_d, io) = region();
    let a = agents(&io);
    assert_eq!(a[0].init_region().unwrap(), RegionState::Initialized);
    assert_eq!(a[1].init_region().unwrap(), RegionState::Found);
    let t = Instant::now();
    let (r, line) = a[0].renew_once(t);
    r.unwrap();
    assert!(line
        .unwrap()
        .starts_with("fencing: lease renewed (host host-a,"));
    assert_eq!(
        a[0].renew_once(t).1,
        None,
        "console line only at state changes"
    );
    // host-b's first reading of host-a is a baseline; movement makes it live.
    a[1].renew_once(Instant::now()).0.unwrap();
    let live = |ag: &Agent, h: usize| ag.leases(Instant::now())[h].live;
    assert!(!live(&a[1], 0));
    a[0].renew_once(Instant::now()).0.unwrap();
    a[1].renew_once(Instant::now()).0.unwrap();
    assert!(live(&a[1], 0) && live(&a[1], 1) && !live(&a[1], 2));
    let s = a[1].status(Instant::now());
    assert_eq!(s["own_lease"]["renewals"], 2);
    assert_eq!(s["region"]["state"], "found");
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
            std::thread::spawn(move || ag.acquire("kv", 2, ACQUIRE_BOUND))
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
            } if vm == "kv" => (owner.clone(), *won),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(owners.iter().all(|(o, _)| *o == owners[0].0));
    assert_eq!(owners.iter().filter(|(_, won)| *won).count(), 1);
    // Later askers get the same answer.
    let again = a[2].acquire("kv", 2, ACQUIRE_BOUND);
    assert!(matches!(again, Response::Decided { owner, .. } if owner == owners[0].0));
    assert!(matches!(
        a[0].acquire("nope", 1, ACQUIRE_BOUND),
        Response::Error { message } if message.contains("no vm")
    ));
    assert_eq!(a[0].status(Instant::now())["decisions"][0]["generation"], 2);
}

#[test]
fn a_header_of_another_layout_is_refused_and_acquire_errors() {
    let (_d, io) = region();
    let other = Geometry::new(["x", "y"], ["kv"], 16);
    io.write(0, &other.encode_header()).unwrap();
    let a = agents(&io);
    assert!(matches!(
        a[0].init_region(),
        Err(AgentError::Mismatch { hosts: 2, .. })
    ));
    let (r, line) = a[0].renew_once(Instant::now());
    assert!(r.unwrap_err().contains("another layout"));
    assert!(line.unwrap().starts_with("fencing: lease renewal failed"));
    match a[0].acquire("kv", 1, Duration::from_millis(500)) {
        Response::Error { message } => assert!(message.contains("another layout")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a[0].status(Instant::now())["region"]["state"], "refused");
    // Nothing was written over the foreign header.
    assert_eq!(io.read(0).unwrap(), other.encode_header());
}

/// Storage that answers nothing for a long time (a cut NBD path).
struct Hung;

impl SectorIo for Hung {
    fn read(&self, _: u64) -> std::io::Result<fencing::layout::Sector> {
        std::thread::sleep(Duration::from_secs(3));
        Err(std::io::Error::other("gone"))
    }
    fn write(&self, _: u64, _: &fencing::layout::Sector) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_secs(3));
        Err(std::io::Error::other("gone"))
    }
}

#[test]
fn acquire_on_hung_storage_answers_an_error_within_the_bound() {
    let a = Arc::new(Agent::new(&runtime("host-a"), Arc::new(Hung), 1).unwrap());
    // "no answer" (not the I/O error "gone" the hung calls end with later)
    // shows the answer came from the bound.
    match a.acquire("kv", 1, Duration::from_millis(300)) {
        Response::Error { message } => {
            assert!(message.contains("no answer from storage"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}
