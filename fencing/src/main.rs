//! `fencing --config PATH`: started by init with the verified runtime config.
//!
//! Threads: the control socket (Status, Acquire, Leases), the lease renewer,
//! the guard (watchdog feeding and ftvmm output hold) and a signal waiter that
//! disarms the watchdog on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use config_schema::ctl::{self, Request, Response};
use config_schema::ctl_server;
use config_schema::runtime::{RuntimeConfig, RUNTIME_CONFIG_PATH};
use fencing::agent::{Agent, ACQUIRE_BOUND};
use fencing::io::RegionIo;
use fencing::layout::Geometry;
use fencing::lease::WATCHDOG_TIMEOUT_S;
use fencing::watchdog::{DevWatchdog, Guard, Watchdog};
use fencing::{device, View};

#[derive(Parser)]
#[command(name = "fencing", about = "The appliance's storage-fencing agent")]
struct Cli {
    #[arg(long, default_value = RUNTIME_CONFIG_PATH)]
    config: PathBuf,
    #[arg(long, default_value = ctl::FENCING_SOCKET)]
    socket: PathBuf,
    /// ftvmm's control socket (output hold requests).
    #[arg(long, default_value = ctl::FTVMM_SOCKET)]
    ftvmm_socket: PathBuf,
    /// The watchdog device; not used if absent.
    #[arg(long, default_value = "/dev/watchdog")]
    watchdog: PathBuf,
    /// Use this device or file instead of the one the config's locator finds.
    #[arg(long)]
    device: Option<PathBuf>,
}

#[derive(Default)]
struct WatchdogSlot {
    dev: Option<Box<dyn Watchdog>>,
    state: String,
    feeds: u64,
    timeout_s: Option<u32>,
}

struct Shared {
    agent: Result<Arc<Agent>, String>,
    guard: Mutex<Guard>,
    watchdog: Mutex<WatchdogSlot>,
}

fn open_agent(cli: &Cli, rt: &RuntimeConfig, view: &View) -> Result<Arc<Agent>, String> {
    let path = match (&cli.device, &view.device) {
        (Some(p), _) => p.clone(),
        (None, Ok(d)) => d.path.clone(),
        (None, Err(e)) => return Err(e.clone()),
    };
    let geo = Geometry::of_config(&rt.config);
    let region = rt.config.storage.fencing;
    if geo.sectors() * 512 > region.size_mib << 20 {
        return Err(format!(
            "the fencing region ({} MiB) is smaller than the {} sectors the layout needs",
            region.size_mib,
            geo.sectors()
        ));
    }
    let io =
        RegionIo::open(&path, region.offset_mib << 20, geo.sectors()).map_err(|e| e.to_string())?;
    println!(
        "fencing: region on {} at {} MiB, {} sectors{}",
        path.display(),
        region.offset_mib,
        geo.sectors(),
        if io.direct() {
            ", O_DIRECT"
        } else {
            ", O_SYNC (no O_DIRECT)"
        }
    );
    let incarnation = fencing::rng::SplitMix::from_entropy(0).next_u64();
    Agent::new(rt, Arc::new(io), incarnation)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn renewer(agent: Arc<Agent>, shared: Arc<Shared>) {
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

fn guard_loop(agent: Arc<Agent>, shared: Arc<Shared>, watchdog: PathBuf, ftvmm: PathBuf) {
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
            if let (true, Some(dev)) = (actions.feed, w.dev.as_mut()) {
                match dev.feed() {
                    Ok(()) => w.feeds += 1,
                    Err(e) => tracing::warn!("fencing: feeding the watchdog failed: {e}"),
                }
            }
            if w.dev.is_some() {
                w.state = if actions.feed { "fed" } else { "starving" }.into();
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

/// Blocks SIGTERM and SIGINT in every thread and waits for them in one,
/// which disarms the watchdog (magic close) and exits.
fn handle_signals(shared: Arc<Shared>) -> std::io::Result<()> {
    // SAFETY: `set` is a plain C struct initialized by sigemptyset before use;
    // the calls only read or write that local and the thread's signal mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialized sigset_t owned by this closure and
        // `sig` a live local the call writes the signal number to.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        let mut w = shared.watchdog.lock().expect("lock");
        if let Some(mut dev) = w.dev.take() {
            match dev.disarm() {
                Ok(()) => println!("fencing: signal {sig}: watchdog disarmed, exiting"),
                Err(e) => println!("fencing: signal {sig}: watchdog disarm failed: {e}"),
            }
        }
        std::process::exit(0);
    });
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = RuntimeConfig::load(&cli.config)?;
    let found = device::locate(Path::new("/"), &rt.config.storage.device);
    let view = View::new(&rt, found)
        .ok_or_else(|| anyhow::anyhow!("host {} not in config", rt.host_name))?;
    let agent = open_agent(&cli, &rt, &view);
    let timing = fencing::lease::LeaseTiming::from_config(&rt.config.timing);
    match &agent {
        Ok(a) => println!(
            "fencing: host {} index {} of {}; lease every {} ms, timeout {} ms",
            view.host,
            a.me,
            a.hosts.len(),
            timing.renew.as_millis(),
            timing.timeout.as_millis()
        ),
        Err(e) => println!("fencing: not fencing: {e}"),
    }
    let shared = Arc::new(Shared {
        agent: agent.clone(),
        guard: Mutex::new(Guard::new(timing, Instant::now())),
        watchdog: Mutex::new(WatchdogSlot {
            state: "not opened yet".into(),
            ..WatchdogSlot::default()
        }),
    });
    handle_signals(Arc::clone(&shared))?;
    if let Ok(a) = agent {
        let (a1, s1) = (Arc::clone(&a), Arc::clone(&shared));
        std::thread::spawn(move || renewer(a1, s1));
        let s2 = Arc::clone(&shared);
        let (wd, ftvmm) = (cli.watchdog.clone(), cli.ftvmm_socket.clone());
        std::thread::spawn(move || guard_loop(a, s2, wd, ftvmm));
    }
    let listener = ctl_server::bind(&cli.socket)?;
    println!("fencing: serving on {}", cli.socket.display());
    ctl_server::serve(listener, move |req| handle(&shared, &view, req));
    Ok(())
}

fn handle(shared: &Shared, view: &View, req: Request) -> Response {
    let now = Instant::now();
    let agent = shared.agent.as_ref().map_err(|e| Response::Error {
        message: format!("fencing: not fencing: {e}"),
    });
    match req {
        Request::Status => {
            let mut s = view.status();
            let w = shared.watchdog.lock().expect("lock");
            s["watchdog"] = serde_json::json!({
                "state": w.state, "feeds": w.feeds, "timeout_s": w.timeout_s,
            });
            s["guard"] = serde_json::json!(shared.guard.lock().expect("lock").state());
            match agent {
                Ok(a) => s["fencing"] = a.status(now),
                Err(Response::Error { message }) => s["error"] = message.into(),
                Err(_) => {}
            }
            Response::Status { status: s }
        }
        Request::Acquire { vm, generation } => match agent {
            Ok(a) => a.acquire(&vm, generation, ACQUIRE_BOUND),
            Err(e) => e,
        },
        Request::Leases => match agent {
            Ok(a) => Response::Leases {
                leases: a.leases(now),
            },
            Err(e) => e,
        },
        other => Response::Error {
            message: format!("fencing does not handle {other:?}"),
        },
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fencing: {e:#}");
            ExitCode::FAILURE
        }
    }
}
