//! `fencing --config PATH`: started by init with the verified runtime config.
//!
//! Threads: the control socket (Status, Acquire, Leases), the lease renewer,
//! the guard (watchdog feeding and ftvmm output hold) and a signal waiter that
//! disarms the watchdog on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config_schema::clock::BootInstant;

use clap::Parser;
use config_schema::ctl::{self, Request, Response};
use config_schema::ctl_server::{self, Policy};
use config_schema::hooks::TestHook;
use config_schema::peer::Programs;
use config_schema::runtime::{RuntimeConfig, RUNTIME_CONFIG_PATH};
use config_schema::watchdog::{self, Candidate};
use fencing::agent::{Agent, ACQUIRE_BOUND};
use fencing::daemon::Shared;
use fencing::guard::Guard;
use fencing::io::{Device, RegionIo};
use fencing::layout::{valid_block_size, Geometry};
use fencing::pr::{self, PrError, ProbeError};
use fencing::storage_fence::{Probe, Prober};
use fencing::watchdog::GoLive;
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
    /// The watchdog device; not used if absent. Default: the best one the
    /// host has (`config_schema::watchdog::choose`), a hardware one over softdog.
    #[arg(long)]
    watchdog: Option<PathBuf>,
    /// Use this device or file instead of the one the config's locator finds.
    #[arg(long)]
    device: Option<PathBuf>,
    /// Lay the region out in blocks of this many bytes instead of the
    /// device's physical block size (a power of two from 512 to 65536, at
    /// least the logical block size; every host must use the same).
    #[arg(long)]
    block_size: Option<u32>,
    /// Where a preemption at the storage is recorded for the rest of the
    /// boot (tmpfs): a restarted agent that finds it never joins again.
    #[arg(long, default_value = "/run/fencing.preempted")]
    preempted_marker: PathBuf,
    /// For tests: which executable counts as PROGRAM (init, ftvmm, heartbeat,
    /// fencing) on the control socket, instead of the image's `/bin/<program>`.
    #[arg(long, value_name = "PROGRAM=PATH", hide = true)]
    peer_exe: Vec<String>,
}

/// Seconds between attempts to find and open the device while it is missing.
const RETRY: Duration = Duration::from_secs(2);

fn open_agent(cli: &Cli, rt: &RuntimeConfig, view: &View) -> Result<Arc<Agent>, String> {
    let path = match (&cli.device, &view.device) {
        (Some(p), _) => p.clone(),
        (None, Ok(d)) => d.path.clone(),
        (None, Err(e)) => return Err(e.clone()),
    };
    let dev = Device::open(&path).map_err(|e| e.to_string())?;
    let sizes = dev.sizes;
    let block = cli.block_size.unwrap_or_else(|| sizes.layout_block());
    if !valid_block_size(u64::from(block)) {
        return Err(format!(
            "block size {block} is not a power of two from 512 to 65536"
        ));
    }
    let geo = Geometry::of_config(&rt.config, block);
    let region = rt.config.storage.fencing;
    if geo.bytes() > region.size_mib << 20 {
        return Err(format!(
            "the fencing region ({} MiB) is smaller than the {} blocks of {block} bytes the layout needs",
            region.size_mib,
            geo.blocks()
        ));
    }
    let io = RegionIo::new(dev, region.offset_mib << 20, block, geo.blocks())
        .map_err(|e| e.to_string())?;
    println!(
        "fencing: region on {} at {} MiB, {} blocks of {block} bytes for {} VM slots (device blocks: logical {}, physical {}){}",
        path.display(),
        region.offset_mib,
        geo.blocks(),
        geo.vms,
        sizes.logical,
        sizes.physical,
        if io.direct() {
            ", O_DIRECT"
        } else {
            ", O_SYNC (no O_DIRECT)"
        }
    );
    let incarnation = fencing::rng::SplitMix::from_entropy(0).next_u64();
    let agent = Agent::new(rt, Arc::new(io), incarnation).map_err(|e| e.to_string())?;
    // Said once at start, not only at the VM's first Acquire.
    for vm in &rt.config.vms {
        if let Err(why) = agent.slot_of(&vm.name) {
            println!("{why}");
        }
    }
    let probe = if rt.config.test_hooks().contains(&TestHook::Pr) {
        // The hook's tool registers and preempts through this host's own
        // I_T nexus: two owners of one registration cannot coexist.
        no_reservations(
            "the signed config's test hook pr drives this device's persistent reservations \
             (NOT FOR PRODUCTION)",
        )
    } else {
        prober(path)
    };
    if let Some(line) = agent.offer_storage_fence(probe, Some(cli.preempted_marker.clone())) {
        println!("{line}");
    }
    Ok(Arc::new(agent))
}

/// A prober that always answers "not offered" for `why`.
fn no_reservations(why: &'static str) -> Prober {
    Box::new(move || Probe::Unavailable(why.into()))
}

/// Probes `path` for persistent reservations (docs/design.md §3 item 5).
fn prober(path: PathBuf) -> Prober {
    Box::new(move || match pr::probe(&path) {
        Ok((dev, caps)) => Probe::Offered {
            dev: Arc::new(dev),
            persists: caps.types.map(|m| m.ptpl_capable),
        },
        Err(e @ ProbeError::Failed(PrError::Transport { .. } | PrError::Io { .. })) => {
            Probe::Retry(e.to_string())
        }
        Err(e) => Probe::Unavailable(e.to_string()),
    })
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

/// Finds the device and opens the agent, retrying while that fails (the
/// shared device may appear late); then starts the renewer and the guard.
fn start(cli: Cli, rt: RuntimeConfig, shared: Arc<Shared>, view: Arc<Mutex<View>>) {
    let mut said = String::new();
    loop {
        let found = device::locate(Path::new("/"), &rt.config.storage.device);
        let Some(v) = View::new(&rt, found) else {
            return;
        };
        *view.lock().expect("lock") = v.clone();
        match open_agent(&cli, &rt, &v) {
            Ok(a) => {
                println!(
                    "fencing: host {} index {} of {}; lease every {} ms, timeout {} ms",
                    v.host,
                    a.me,
                    a.hosts.len(),
                    a.timing.renew.as_millis(),
                    a.timing.timeout.as_millis()
                );
                *shared.guard.lock().expect("lock") = Guard::new(a.timing);
                *shared.agent.lock().expect("lock") = Ok(Arc::clone(&a));
                let wd = cli
                    .watchdog
                    .clone()
                    .unwrap_or_else(|| "/dev/watchdog".into());
                fencing::daemon::start(a, shared, wd, cli.ftvmm_socket);
                return;
            }
            Err(e) => {
                if e != said {
                    println!(
                        "fencing: not fencing: {e} (retrying every {} s)",
                        RETRY.as_secs()
                    );
                    said = e.clone();
                }
                *shared.agent.lock().expect("lock") = Err(e);
                std::thread::sleep(RETRY);
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any thread starts, so every one inherits it: lease renewals and
    // the watchdog feed must not wait behind busy guests (`sched`'s doc).
    match config_schema::sched::realtime_thread(config_schema::sched::FENCING_PRIORITY) {
        Ok(()) => println!(
            "fencing: scheduling {}",
            config_schema::sched::describe_thread()
        ),
        Err(e) => println!(
            "fencing: no real-time scheduling ({e}); normal priority, so busy guests can delay \
             lease renewals"
        ),
    }
    let rt = RuntimeConfig::load(&cli.config)?;
    let programs = Programs::appliance()
        .with_overrides(&cli.peer_exe)
        .map_err(anyhow::Error::msg)?;
    let found = device::locate(Path::new("/"), &rt.config.storage.device);
    let view = View::new(&rt, found)
        .ok_or_else(|| anyhow::anyhow!("host {} not in config", rt.host_name))?;
    let mut cli = cli;
    let chosen = match &cli.watchdog {
        Some(p) => Some(Candidate::new(
            p.clone(),
            &watchdog::identity_of(Path::new("/"), p).unwrap_or_default(),
        )),
        None => watchdog::choose(&watchdog::scan(Path::new("/"))).cloned(),
    };
    cli.watchdog = chosen.as_ref().map(|c| c.device.clone());
    let go_live =
        fencing::watchdog::go_live(chosen.as_ref(), rt.config.cluster.accept_soft_watchdog);
    match &chosen {
        Some(c) => println!("fencing: watchdog {c}"),
        None => println!("fencing: no watchdog on this host"),
    }
    if let Some(line) = go_live.line() {
        println!("{line}");
    }
    let wd = WatchdogChoice {
        chosen,
        go_live,
        accept_soft_watchdog: rt.config.cluster.accept_soft_watchdog,
    };
    let timing = fencing::lease::LeaseTiming::from_config(&rt.config.timing);
    let shared = Arc::new(Shared::new(Guard::new(timing)));
    handle_signals(Arc::clone(&shared))?;
    let view = Arc::new(Mutex::new(view));
    let listener = ctl_server::bind(&cli.socket)?;
    let (s, v) = (Arc::clone(&shared), Arc::clone(&view));
    std::thread::spawn(move || start(cli, rt, s, v));
    println!(
        "fencing: serving on {}",
        listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_default()
    );
    ctl_server::serve(listener, Policy::fencing(programs), move |req| {
        let view = view.lock().expect("lock").clone();
        handle(&shared, &view, &wd, req)
    });
    Ok(())
}

/// The watchdog fencing uses, and what that means for go-live.
struct WatchdogChoice {
    chosen: Option<Candidate>,
    go_live: GoLive,
    accept_soft_watchdog: bool,
}

impl WatchdogChoice {
    /// Why an `Acquire` is refused now, if it is: no watchdog that keeps
    /// real time (known at start), or the armed one resets later than the
    /// plan (known once the guard loop opened it).
    fn acquire_error(&self, shared: &Shared) -> Option<String> {
        self.go_live.acquire_error().or_else(|| {
            let w = shared.watchdog.lock().expect("lock");
            fencing::watchdog::slow_refusal(w.over_plan.as_deref(), self.accept_soft_watchdog)
        })
    }
}

fn handle(shared: &Shared, view: &View, wd: &WatchdogChoice, req: Request) -> Response {
    let now = BootInstant::now();
    let agent = shared
        .agent
        .lock()
        .expect("lock")
        .clone()
        .map_err(|e| Response::Error {
            message: format!("fencing: not fencing: {e}"),
        });
    match req {
        Request::Status => {
            let mut s = view.status();
            let w = shared.watchdog.lock().expect("lock");
            s["watchdog"] = serde_json::json!({
                "state": w.state, "feeds": w.feeds, "timeout_s": w.timeout_s,
                "reset_bound_s": w.reset_bound_s, "over_plan": w.over_plan,
                "reset_requested": w.reset_requested,
                "device": wd.chosen.as_ref().map(|c| c.device.display().to_string()),
                "identity": wd.chosen.as_ref().map(|c| c.identity.clone()),
                "kind": wd.chosen.as_ref().map(|c| c.kind),
                "real_time": wd.chosen.as_ref().is_some_and(|c| c.kind.real_time()),
                "go_live": wd.go_live.status(),
            });
            {
                let g = shared.guard.lock().expect("lock");
                s["guard"] = serde_json::json!(g.state());
                s["grant"] = serde_json::json!({
                    "now": g.grant(now).ok,
                    "withheld": g.withheld(),
                });
            }
            match agent {
                Ok(a) => s["fencing"] = a.status(now),
                Err(Response::Error { message }) => s["error"] = message.into(),
                Err(_) => {}
            }
            config_schema::events::status_fields(&mut s);
            Response::Status { status: s }
        }
        Request::Acquire {
            vm,
            generation,
            config_generation,
            slot,
        } => match (agent, wd.acquire_error(shared)) {
            (_, Some(message)) => Response::Error { message },
            (Ok(a), None) => match learned(&a, &vm, slot) {
                Ok(()) => a.acquire(&vm, generation, config_generation, ACQUIRE_BOUND),
                Err(e) => e,
            },
            (Err(e), None) => e,
        },
        Request::Highest { vm, slot } => match agent {
            Ok(a) => match learned(&a, &vm, slot) {
                Ok(()) => a.highest(&vm, ACQUIRE_BOUND),
                Err(e) => e,
            },
            Err(e) => e,
        },
        Request::Leases => match agent {
            Ok(a) => Response::Leases {
                leases: a.leases(now),
                renewal_complete_ms: a.last_renewal_ok_ms(now),
            },
            Err(e) => e,
        },
        Request::ResetHost { reason } => {
            fencing::daemon::request_reset(shared, &reason);
            Response::Ok
        }
        other => Response::Error {
            message: format!("fencing does not handle {other:?}"),
        },
    }
}

/// Takes the slot an ftvmm names for `vm` (`Agent::learn`); the refusal
/// as the answer.
fn learned(a: &Agent, vm: &str, slot: Option<u32>) -> Result<(), Response> {
    match slot.map(|s| a.learn(vm, s)) {
        Some(Err(message)) => Err(Response::Error { message }),
        _ => Ok(()),
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
