//! The daemon's renewer and guard threads against a sector I/O that can be
//! broken at will, a fake ftvmm and a fake watchdog file: a failing lease
//! leads to `HoldOutput { hold: true }`; with ftvmm confirming the watchdog
//! keeps being fed and recovery releases the hold; without ftvmm it starves.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{Request, Response};
use config_schema::ctl_server;
use config_schema::runtime::RuntimeConfig;
use fencing::agent::Agent;
use fencing::daemon::{guard_loop, renewer, request_reset, Shared, WatchdogSlot};
use fencing::io::{RegionIo, SectorIo};
use fencing::layout::{Geometry, Sector};
use fencing::watchdog::{Guard, GuardState};

struct Flaky {
    inner: RegionIo,
    broken: AtomicBool,
}

impl SectorIo for Flaky {
    fn read(&self, index: u64) -> std::io::Result<Sector> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected"));
        }
        self.inner.read(index)
    }
    fn write(&self, index: u64, data: &Sector) -> std::io::Result<()> {
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

struct Rig {
    _dir: tempfile::TempDir,
    io: Arc<Flaky>,
    shared: Arc<Shared>,
    holds: Arc<Mutex<Vec<bool>>>,
    wd: std::path::PathBuf,
}

fn rig(with_ftvmm: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let rt = RuntimeConfig {
        config: config_schema::parse(include_str!("../../examples/cluster.toml"))
            .unwrap()
            .config,
        host_name: "host-a".into(),
        host_private_key: "00".repeat(32),
    };
    let geo = Geometry::of_config(&rt.config);
    let p = dir.path().join("shared");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let io = Arc::new(Flaky {
        inner: RegionIo::open(&p, 0, geo.sectors()).unwrap(),
        broken: AtomicBool::new(false),
    });
    let agent = Arc::new(Agent::new(&rt, io.clone(), 1).unwrap());
    let holds = Arc::new(Mutex::new(Vec::new()));
    let ftvmm = dir.path().join("ftvmm.sock");
    if with_ftvmm {
        let l = ctl_server::bind(&ftvmm).unwrap();
        let h = Arc::clone(&holds);
        std::thread::spawn(move || {
            ctl_server::serve(l, move |req| match req {
                Request::HoldOutput { hold, .. } => {
                    h.lock().unwrap().push(hold);
                    Response::Ok
                }
                _ => Response::Error {
                    message: "fake".into(),
                },
            })
        });
    }
    let wd = dir.path().join("watchdog");
    std::fs::write(&wd, b"").unwrap();
    let shared = Arc::new(Shared {
        agent: Mutex::new(Ok(Arc::clone(&agent))),
        guard: Mutex::new(Guard::new(agent.timing, Instant::now())),
        watchdog: Mutex::new(WatchdogSlot::default()),
    });
    let (a, s) = (Arc::clone(&agent), Arc::clone(&shared));
    std::thread::spawn(move || renewer(a, s));
    let (a, s, w) = (agent, Arc::clone(&shared), wd.clone());
    std::thread::spawn(move || guard_loop(a, s, w, ftvmm));
    Rig {
        _dir: dir,
        io,
        shared,
        holds,
        wd,
    }
}

fn state(r: &Rig) -> GuardState {
    r.shared.guard.lock().unwrap().state()
}

fn fed(p: &Path) -> usize {
    std::fs::read(p).unwrap().len()
}

#[test]
fn failing_lease_holds_output_keeps_feeding_once_confirmed_and_releases_on_recovery() {
    let r = rig(true);
    wait_for("first feeds", || fed(&r.wd) >= 2);
    r.io.broken.store(true, Ordering::SeqCst);
    wait_for("confirmed hold", || state(&r) == GuardState::Held);
    assert_eq!(*r.holds.lock().unwrap(), [true]);
    let before = fed(&r.wd);
    wait_for("feeding while held", || fed(&r.wd) > before + 2);
    r.io.broken.store(false, Ordering::SeqCst);
    wait_for("release", || state(&r) == GuardState::Normal);
    assert_eq!(*r.holds.lock().unwrap(), [true, false]);
}

#[test]
fn without_ftvmm_confirming_the_watchdog_starves() {
    let r = rig(false);
    wait_for("first feeds", || fed(&r.wd) >= 2);
    r.io.broken.store(true, Ordering::SeqCst);
    wait_for("starving", || state(&r) == GuardState::Starving);
    let n = fed(&r.wd);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fed(&r.wd), n, "no feed once starving");
    assert_eq!(r.shared.watchdog.lock().unwrap().state, "starving");
}

#[test]
fn a_reset_request_stops_feeding_even_with_a_healthy_lease() {
    let r = rig(true);
    wait_for("first feeds", || fed(&r.wd) >= 2);
    request_reset(&r.shared, "test: disk request in flight too long");
    // A feed already under way may still land; none after it.
    std::thread::sleep(Duration::from_millis(300));
    let n = fed(&r.wd);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fed(&r.wd), n, "fed after a reset request");
    assert_eq!(state(&r), GuardState::Normal, "the lease itself is fine");
    assert!(r.holds.lock().unwrap().is_empty());
}
