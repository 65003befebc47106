//! The daemon's background threads: the lease renewer and the guard loop
//! (watchdog feeding, output hold requests to ftvmm). `main.rs` starts them;
//! tests run them against a failing sector I/O and a fake ftvmm.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};

use crate::agent::Agent;
use crate::lease::WATCHDOG_TIMEOUT_S;
use crate::watchdog::{DevWatchdog, Guard, Watchdog};

/// The watchdog as opened (or not) by the guard loop.
#[derive(Default)]
pub struct WatchdogSlot {
    pub dev: Option<Box<dyn Watchdog>>,
    pub state: String,
    pub feeds: u64,
    pub timeout_s: Option<u32>,
    /// ftvmm asked for a reset (`Request::ResetHost`): never fed again.
    pub reset_requested: Option<String>,
}

/// `Request::ResetHost`: from now on the watchdog is never fed, so the host
/// resets within its timeout. Without a watchdog nothing can reset the host;
/// that is said loudly (the output hold stays ftvmm's business).
pub fn request_reset(shared: &Shared, reason: &str) {
    let mut w = shared.watchdog.lock().expect("lock");
    if w.reset_requested.is_none() {
        match w.timeout_s {
            Some(t) => println!(
                "fencing: reset requested ({reason}); no longer feeding the watchdog, the host resets within {t} s"
            ),
            None if w.dev.is_some() => println!(
                "fencing: reset requested ({reason}); no longer feeding the watchdog"
            ),
            None => println!(
                "fencing: reset requested ({reason}) but there is no watchdog to reset this host"
            ),
        }
        w.reset_requested = Some(reason.to_string());
    }
}

/// State shared by the daemon's threads.
pub struct Shared {
    /// The agent, or why there is none yet (no device, region too small...).
    pub agent: Mutex<Result<Arc<Agent>, String>>,
    pub guard: Mutex<Guard>,
    pub watchdog: Mutex<WatchdogSlot>,
}

/// Renews the own lease every `renew` interval, forever.
pub fn renewer(agent: Arc<Agent>, shared: Arc<Shared>) {
    loop {
        let issued = Instant::now();
        let (result, line) = agent.renew_once(issued);
        if let Some(l) = line {
            println!("{l}");
        }
        if result.is_ok() {
            shared.guard.lock().expect("lock").renewed(issued);
        }
        let next = issued + agent.timing.renew;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn open_watchdog(path: &Path, slot: &mut WatchdogSlot) {
    if !path.exists() {
        slot.state = format!("absent ({})", path.display());
        println!(
            "fencing: no watchdog at {}; a hung host will not be reset",
            path.display()
        );
        return;
    }
    match DevWatchdog::open(path, WATCHDOG_TIMEOUT_S) {
        Ok(w) => {
            slot.timeout_s = w.timeout_s;
            slot.state = "armed".into();
            match w.timeout_s {
                Some(t) if t <= WATCHDOG_TIMEOUT_S => {
                    println!("fencing: watchdog {} armed, timeout {t} s", path.display())
                }
                Some(t) => println!(
                    "fencing: watchdog {} armed, but its timeout is {t} s, not the planned \
                     {WATCHDOG_TIMEOUT_S} s: the lease arithmetic does not hold",
                    path.display()
                ),
                None => println!(
                    "fencing: watchdog {} armed; it refused WDIOC_SETTIMEOUT, its own timeout applies",
                    path.display()
                ),
            }
            slot.dev = Some(Box::new(w));
        }
        Err(e) => {
            slot.state = format!("cannot open: {e}");
            println!("fencing: cannot open watchdog {}: {e}", path.display());
        }
    }
}

/// Ticks the guard: opens the watchdog after the first renewal, feeds it,
/// and sends `HoldOutput` to ftvmm at `ftvmm`, forever.
pub fn guard_loop(agent: Arc<Agent>, shared: Arc<Shared>, watchdog: PathBuf, ftvmm: PathBuf) {
    let period = (agent.timing.renew / 5).min(Duration::from_millis(100));
    let mut opened = false;
    let hold_failed = Arc::new(AtomicBool::new(false));
    loop {
        std::thread::sleep(period);
        if !opened && agent.renewals() > 0 {
            // Armed only once the own lease works: a host without storage at
            // boot keeps running (holding nothing) instead of reset-looping.
            opened = true;
            open_watchdog(&watchdog, &mut shared.watchdog.lock().expect("lock"));
        }
        let actions = shared.guard.lock().expect("lock").tick(Instant::now());
        for l in &actions.say {
            println!("{l}");
        }
        {
            let mut w = shared.watchdog.lock().expect("lock");
            let feed = actions.feed && w.reset_requested.is_none();
            if let (true, Some(dev)) = (feed, w.dev.as_mut()) {
                match dev.feed() {
                    Ok(()) => w.feeds += 1,
                    Err(e) => tracing::warn!("fencing: feeding the watchdog failed: {e}"),
                }
            }
            if w.dev.is_some() {
                w.state = if feed { "fed" } else { "starving" }.into();
            }
        }
        if let Some(hold) = actions.send_hold {
            let (shared, ftvmm, hold_failed) =
                (Arc::clone(&shared), ftvmm.clone(), Arc::clone(&hold_failed));
            std::thread::spawn(move || {
                let reason = if hold {
                    "fencing: own lease renewal failing"
                } else {
                    "fencing: own lease renewed again"
                };
                let req = Request::HoldOutput {
                    hold,
                    reason: reason.into(),
                };
                let answer = ctl::query(&ftvmm, &req);
                let ok = matches!(answer, Ok(Response::Ok));
                if ok {
                    hold_failed.store(false, Ordering::Relaxed);
                    println!(
                        "fencing: ftvmm confirmed {}",
                        if hold {
                            "the output hold"
                        } else {
                            "the output release"
                        }
                    );
                } else if !hold_failed.swap(true, Ordering::Relaxed) {
                    println!("fencing: ftvmm did not accept HoldOutput(hold={hold}): {answer:?}");
                }
                shared
                    .guard
                    .lock()
                    .expect("lock")
                    .hold_answer(hold, ok, Instant::now());
            });
        }
    }
}
