//! The daemon's renewer, granter and guard threads against a block I/O that
//! can be broken at will, a fake ftvmm and a fake watchdog file: while the
//! lease renews, ftvmm gets `OutputGrant { ok: true }` every grant period;
//! a failing lease turns the grants into `ok: false`; with ftvmm answering
//! `Running` the watchdog keeps being fed and recovery grants again; without
//! ftvmm it starves. ftvmm's `Running` list ends up in the lease record.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{Request, Response, RunningVm};
use config_schema::ctl_server::{self, Policy};
use config_schema::peer::{Program, Programs};
use fencing::agent::Agent;
use fencing::daemon::{request_reset, Shared};
use fencing::guard::{Guard, GuardState};
use fencing::io::{BlockIo, RegionIo};
use fencing::layout::{Block, LeaseRecord, Running};

struct Flaky {
    inner: Arc<RegionIo>,
    broken: AtomicBool,
}

impl BlockIo for Flaky {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn read(&self, index: u64) -> std::io::Result<Block> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected"));
        }
        self.inner.read(index)
    }
    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected"));
        }
        self.inner.write(index, data)
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The grants a fake ftvmm received: (ok, valid_ms).
type Grants = Arc<Mutex<Vec<(bool, u64)>>>;

struct Rig {
    _dir: tempfile::TempDir,
    io: Arc<Flaky>,
    shared: Arc<Shared>,
    grants: Grants,
    wd: std::path::PathBuf,
}

/// host-a's daemon threads; a fake ftvmm (if `running` is given) answers
/// every grant with `Running` of that list.
fn rig(running: Option<Vec<RunningVm>>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime("host-a");
    let p = dir.path().join("shared");
    std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
    let io = Arc::new(Flaky {
        inner: common::region_on(&p, None),
        broken: AtomicBool::new(false),
    });
    let agent = Arc::new(Agent::new(&rt, io.clone(), 1).unwrap());
    let grants: Grants = Arc::new(Mutex::new(Vec::new()));
    let ftvmm = dir.path().join("ftvmm.sock");
    if let Some(vms) = running {
        let l = ctl_server::bind(&ftvmm).unwrap();
        let g = Arc::clone(&grants);
        std::thread::spawn(move || {
            // The guard runs in this test process: it plays fencing.
            let me = std::env::current_exe().unwrap();
            let programs = Programs::appliance().with(Program::Fencing, &me);
            ctl_server::serve(l, Policy::ftvmm(programs), move |req| match req {
                Request::OutputGrant { ok, valid_ms, .. } => {
                    g.lock().unwrap().push((ok, valid_ms));
                    Response::Running { vms: vms.clone() }
                }
                _ => Response::Error {
                    message: "fake".into(),
                },
            })
        });
    }
    let wd = dir.path().join("watchdog");
    std::fs::write(&wd, b"").unwrap();
    let shared = Arc::new(Shared::new(Guard::new(agent.timing)));
    *shared.agent.lock().unwrap() = Ok(Arc::clone(&agent));
    fencing::daemon::start(agent, Arc::clone(&shared), wd.clone(), ftvmm);
    Rig {
        _dir: dir,
        io,
        shared,
        grants,
        wd,
    }
}

fn state(r: &Rig) -> GuardState {
    r.shared.guard.lock().unwrap().state()
}

fn fed(p: &Path) -> usize {
    std::fs::read(p).unwrap().len()
}

fn last_grant(r: &Rig) -> Option<(bool, u64)> {
    r.grants.lock().unwrap().last().copied()
}

#[test]
fn a_renewing_lease_grants_output_a_failing_one_withdraws_it_and_recovery_grants_again() {
    let r = rig(Some(vec![]));
    wait_for("first feeds", || fed(&r.wd) >= 2);
    wait_for("ok grants", || last_grant(&r).is_some_and(|(ok, _)| ok));
    assert!(r
        .grants
        .lock()
        .unwrap()
        .iter()
        .all(|(ok, v)| !ok || (1..=500).contains(v)));
    // Grants come every grant period, not only at changes.
    let n = r.grants.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        r.grants.lock().unwrap().len() >= n + 3,
        "level-triggered grants"
    );
    r.io.broken.store(true, Ordering::SeqCst);
    wait_for("confirmed hold", || state(&r) == GuardState::Held);
    assert_eq!(last_grant(&r), Some((false, 0)));
    let before = fed(&r.wd);
    wait_for("feeding while held", || fed(&r.wd) > before + 2);
    r.io.broken.store(false, Ordering::SeqCst);
    wait_for("granting again", || state(&r) == GuardState::Normal);
    wait_for("ok grants again", || {
        last_grant(&r).is_some_and(|(ok, _)| ok)
    });
}

#[test]
fn without_ftvmm_answering_the_watchdog_starves() {
    let r = rig(None);
    wait_for("first feeds", || fed(&r.wd) >= 2);
    r.io.broken.store(true, Ordering::SeqCst);
    wait_for("starving", || state(&r) == GuardState::Starving);
    // A feed already under way may still land; none after it.
    std::thread::sleep(Duration::from_millis(300));
    let n = fed(&r.wd);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fed(&r.wd), n, "no feed once starving");
    assert_eq!(r.shared.watchdog.lock().unwrap().state, "starving");
}

#[test]
fn a_reset_request_stops_feeding_even_with_a_healthy_lease() {
    let r = rig(Some(vec![]));
    wait_for("first feeds", || fed(&r.wd) >= 2);
    request_reset(&r.shared, "test: disk request in flight too long");
    std::thread::sleep(Duration::from_millis(300));
    let n = fed(&r.wd);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fed(&r.wd), n, "fed after a reset request");
    assert_eq!(state(&r), GuardState::Normal, "the lease itself is fine");
    assert!(last_grant(&r).is_some_and(|(ok, _)| ok));
}

#[test]
fn what_ftvmm_answers_it_runs_is_published_in_the_lease_record() {
    let kv = RunningVm {
        vm: "kv".into(),
        generation: 5,
        slot: None,
    };
    let r = rig(Some(vec![kv]));
    let geo = fencing::layout::Geometry::of_config(&common::runtime("host-a").config, 512);
    wait_for("kv@5 in host-a's lease record", || {
        let b = r.io.inner.read(geo.lease_block(0)).unwrap();
        LeaseRecord::decode(&b).is_ok_and(|rec| {
            rec.running
                == [Running {
                    vm: 0,
                    generation: 5,
                }]
        })
    });
    let agent = r.shared.agent.lock().unwrap().clone().unwrap();
    assert_eq!(
        agent.leases(config_schema::clock::BootInstant::now())[0].running,
        ["kv"]
    );
}
