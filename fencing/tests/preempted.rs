//! A host preempted at the storage, with the daemon's real threads (renewer,
//! granter, guard loop), a fake ftvmm on a control socket and a fake watchdog
//! file; the device is the SPC-4 fake target (docs/design.md §3 item 5). Once
//! another host deposes it, its next renewal must withdraw the output grant
//! at once (not at the next grant period), tell ftvmm its VM is deposed,
//! and starve the watchdog so the host resets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::clock::BootInstant;
use config_schema::ctl::{Request, Response, RunningVm};
use config_schema::ctl_server::{self, Policy};
use config_schema::peer::{Program, Programs};
use fencing::agent::{Agent, ACQUIRE_BOUND};
use fencing::daemon::Shared;
use fencing::guard::Guard;
use fencing::io::BlockIo;
use fencing::pr::fake::{FakeTarget, GatedIo};
use fencing::pr::Reservations;
use fencing::storage_fence::Probe;

/// What the fake ftvmm received, with the time it arrived.
#[derive(Default)]
struct Heard {
    grants: Vec<(Instant, bool, String)>,
    deposed: Vec<(Instant, String, u64, String)>,
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fed(p: &std::path::Path) -> usize {
    std::fs::read(p).unwrap().len()
}

fn agent_on(
    region: &Arc<dyn BlockIo>,
    target: &FakeTarget,
    host: &str,
    inc: u64,
    marker: std::path::PathBuf,
) -> Arc<Agent> {
    let nexus = target.nexus(host);
    let io = Arc::new(GatedIo::new(Arc::clone(region), nexus.clone()));
    let agent = Arc::new(Agent::new(&common::runtime(host), io, inc).unwrap());
    let dev: Arc<dyn Reservations> = Arc::new(nexus);
    agent.offer_storage_fence(
        Box::new(move || Probe::Offered {
            dev: Arc::clone(&dev),
            persists: Some(false),
        }),
        Some(marker),
    );
    agent
}

#[test]
fn a_preempted_host_withdraws_its_grant_at_once_stops_its_vm_and_starves_the_watchdog() {
    let (dir, region) = common::file_region(512);
    let region: Arc<dyn BlockIo> = region;
    let target = FakeTarget::new();
    let a = agent_on(
        &region,
        &target,
        "host-a",
        1,
        dir.path().join("a.preempted"),
    );
    let b = agent_on(
        &region,
        &target,
        "host-b",
        2,
        dir.path().join("b.preempted"),
    );

    // host-a's ftvmm: runs kv in generation 1 as Primary.
    let heard = Arc::new(Mutex::new(Heard::default()));
    let ftvmm = dir.path().join("ftvmm.sock");
    let l = ctl_server::bind(&ftvmm).unwrap();
    let h = Arc::clone(&heard);
    std::thread::spawn(move || {
        let me = std::env::current_exe().unwrap();
        let programs = Programs::appliance().with(Program::Fencing, &me);
        ctl_server::serve(l, Policy::ftvmm(programs), move |req| match req {
            Request::OutputGrant { ok, reason, .. } => {
                h.lock().unwrap().grants.push((Instant::now(), ok, reason));
                Response::Running {
                    vms: vec![RunningVm {
                        vm: "kv".into(),
                        generation: 1,
                        slot: None,
                    }],
                }
            }
            Request::Deposed { vm, generation, by } => {
                h.lock()
                    .unwrap()
                    .deposed
                    .push((Instant::now(), vm, generation, by));
                Response::Ok
            }
            _ => Response::Error {
                message: "fake".into(),
            },
        })
    });
    let wd = dir.path().join("watchdog");
    std::fs::write(&wd, b"").unwrap();
    let shared = Arc::new(Shared::new(Guard::new(a.timing)));
    *shared.agent.lock().unwrap() = Ok(Arc::clone(&a));
    fencing::daemon::start(Arc::clone(&a), Arc::clone(&shared), wd.clone(), ftvmm);
    wait_for("host-a granting and feeding", || {
        fed(&wd) >= 2 && heard.lock().unwrap().grants.last().is_some_and(|g| g.1)
    });
    assert!(a.storage_fence_active());
    assert!(matches!(
        a.acquire("kv", 1, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));

    // host-b (no daemon: driven here) sees host-a's lease move with kv in
    // it, then wins generation 2 and deposes host-a at the device.
    common::take_slot(&b);
    wait_for("host-a live and publishing kv on host-b", || {
        b.renew_once(BootInstant::now()).result.unwrap();
        let v = &b.leases(BootInstant::now())[0];
        std::thread::sleep(Duration::from_millis(100));
        v.live && v.running == ["kv"]
    });
    assert!(matches!(
        b.acquire("kv", 2, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
    let deposed_at = Instant::now();

    wait_for("Deposed sent to host-a's ftvmm", || {
        !heard.lock().unwrap().deposed.is_empty()
    });
    wait_for("the reset request", || {
        shared.watchdog.lock().unwrap().reset_requested.is_some()
    });
    // The grant messages reach this test's stand-in ftvmm on their own
    // thread: the reset request can be seen first (failed once under load
    // with "a withdrawn grant" not yet recorded).
    wait_for("a withdrawn grant after the depose", || {
        heard
            .lock()
            .unwrap()
            .grants
            .iter()
            .any(|g| g.0 > deposed_at && !g.1)
    });
    let hd = heard.lock().unwrap();
    let (at, vm, generation, by) = hd.deposed[0].clone();
    assert_eq!((vm.as_str(), generation, by.as_str()), ("kv", 2, "host-b"));
    // The first withdrawn grant after the depose came with the renewal that
    // noticed it (at most one renewal interval, 500 ms), not a grant period
    // later; and no ok grant was sent after it.
    let first_withdrawal = hd
        .grants
        .iter()
        .find(|g| g.0 > deposed_at && !g.1)
        .expect("a withdrawn grant")
        .clone();
    assert!(
        first_withdrawal.2.contains("preempted at the storage"),
        "{}",
        first_withdrawal.2
    );
    let noticed = first_withdrawal.0.duration_since(deposed_at);
    eprintln!(
        "withdrawn {} ms after the depose, Deposed sent {} ms after it",
        noticed.as_millis(),
        at.duration_since(deposed_at).as_millis()
    );
    assert!(
        noticed < a.timing.renew + Duration::from_millis(300),
        "{noticed:?}"
    );
    assert!(hd.grants.iter().all(|g| g.0 <= first_withdrawal.0 || !g.1));
    drop(hd);
    let reason = shared
        .watchdog
        .lock()
        .unwrap()
        .reset_requested
        .clone()
        .unwrap();
    assert!(
        reason.starts_with("this host was preempted at the storage: "),
        "{reason}"
    );
    // A feed already under way may still land; none after it.
    std::thread::sleep(Duration::from_millis(300));
    let n = fed(&wd);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(fed(&wd), n, "the watchdog is still fed");
    assert!(dir.path().join("a.preempted").exists());
}
