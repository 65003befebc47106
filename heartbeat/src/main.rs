//! `heartbeat --config PATH`: started by init with the verified runtime config.
//!
//! Serves the control socket at once (init waits for `Status`), then binds the
//! FT address; until that works (the interface may still be coming up) it
//! retries every second and `Status` says why it is not running yet. The
//! network status service (`status_service`, TCP 7401 on the FT address and
//! on the management address if the host has one) binds each address the
//! same way, each in its own thread.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use config_schema::ctl::{Request, Response};
use config_schema::ctl_server::{self, Policy};
use config_schema::peer::Programs;
use config_schema::runtime::{RuntimeConfig, RUNTIME_CONFIG_PATH};
use heartbeat::daemon::Handle;
use heartbeat::status_service::{Service, ServiceConfig};
use heartbeat::{Daemon, NodeConfig, PORT};

#[derive(Parser)]
#[command(name = "heartbeat", about = "The appliance's heartbeat daemon")]
struct Cli {
    #[arg(long, default_value = RUNTIME_CONFIG_PATH)]
    config: PathBuf,
    #[arg(long, default_value = config_schema::ctl::HEARTBEAT_SOCKET)]
    socket: PathBuf,
    /// UDP port on the FT network.
    #[arg(long, default_value_t = PORT)]
    port: u16,
    /// TCP port of the network status service (FT and management addresses).
    #[arg(long, default_value_t = config_schema::remote::PORT)]
    status_port: u16,
    /// For tests: fencing's and ftvmm's control sockets the status service asks.
    #[arg(long, default_value = config_schema::ctl::FENCING_SOCKET, hide = true)]
    fencing_socket: PathBuf,
    #[arg(long, default_value = config_schema::ctl::FTVMM_SOCKET, hide = true)]
    ftvmm_socket: PathBuf,
    /// For tests: which executable counts as PROGRAM (init, ftvmm, heartbeat,
    /// fencing) on the control socket, instead of the image's `/bin/<program>`.
    #[arg(long, value_name = "PROGRAM=PATH", hide = true)]
    peer_exe: Vec<String>,
    /// For tests: the config disk `ftctl apply` persists to, instead of the
    /// one found under /sys/block and /dev.
    #[arg(long, hide = true)]
    config_disk: Option<PathBuf>,
    /// For tests: the trust root instead of the image's.
    #[arg(long, default_value = heartbeat::status_service::TRUST_ROOT_PATH, hide = true)]
    trust_root: PathBuf,
}

enum Running {
    Starting(String),
    Up(Handle),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = RuntimeConfig::load(&cli.config)?;
    let cfg = NodeConfig::from_runtime(&rt, cli.port)?;
    let programs = Programs::appliance()
        .with_overrides(&cli.peer_exe)
        .map_err(anyhow::Error::msg)?;
    println!(
        "heartbeat: host {} (id {}) on {}; interval {} ms, failure timeout {} ms; peers: {}",
        cfg.name,
        cfg.id,
        cfg.bind,
        cfg.interval_ms,
        cfg.failure_timeout_ms,
        cfg.peers
            .iter()
            .map(|p| format!("{} at {}", p.name, p.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let state = Arc::new(Mutex::new(Running::Starting("starting".into())));
    let listener = ctl_server::bind(&cli.socket)?;
    let st = Arc::clone(&state);
    let host = cfg.name.clone();
    std::thread::spawn(move || {
        ctl_server::serve(listener, Policy::heartbeat(programs), move |req| {
            let guard = st.lock().unwrap_or_else(|e| e.into_inner());
            match &*guard {
                Running::Up(h) => h.handle(req),
                Running::Starting(why) => match req {
                    Request::Status => Response::Status {
                        status: starting_status(&host, why),
                    },
                    _ => Response::Error {
                        message: format!("heartbeat not running yet: {why}"),
                    },
                },
            }
        })
    });
    let mut scfg = ServiceConfig::from_runtime(&rt, cfg.clone(), cli.status_port);
    scfg.fencing_socket = cli.fencing_socket.clone();
    scfg.ftvmm_socket = cli.ftvmm_socket.clone();
    if let Some(t) = scfg.apply.as_mut() {
        t.config_disk = cli.config_disk.clone();
        t.trust_root = cli.trust_root.clone();
    }
    // The timing `ftctl apply` changes live: the status service adopts it,
    // the daemon's threads read it every round.
    let timing = match scfg.apply.as_ref() {
        Some(t) => Arc::clone(&t.timing),
        None => Arc::new(heartbeat::live::LiveTiming::new(
            cfg.interval_ms,
            cfg.failure_timeout_ms,
        )),
    };
    let (st, host) = (Arc::clone(&state), cfg.name.clone());
    let service = Service::new(scfg, move || {
        match &*st.lock().unwrap_or_else(|e| e.into_inner()) {
            Running::Up(h) => h.status(),
            Running::Starting(why) => starting_status(&host, why),
        }
    });
    serve_status(service);
    let mut reported = false;
    let daemon = loop {
        match Daemon::start_live(cfg.clone(), Arc::clone(&timing)) {
            Ok(d) => break d,
            Err(e) => {
                if !reported {
                    println!("heartbeat: {e}; retrying every second");
                    reported = true;
                }
                *state.lock().unwrap_or_else(|e| e.into_inner()) = Running::Starting(e.to_string());
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    println!(
        "heartbeat: sending to {} peers from {}",
        cfg.peers.len(),
        daemon.handle().local_addr()
    );
    *state.lock().unwrap_or_else(|e| e.into_inner()) = Running::Up(daemon.handle());
    loop {
        std::thread::park();
    }
}

/// heartbeat's `Status` before its UDP socket is bound.
fn starting_status(host: &str, why: &str) -> serde_json::Value {
    let mut s = serde_json::json!({
        "daemon": "heartbeat", "host": host, "running": false, "reason": why,
    });
    config_schema::events::status_fields(&mut s);
    s
}

/// Starts the status service: one thread per address it listens on, which
/// binds it (retrying every second, like the UDP socket: the interface may
/// still be coming up), then serves it. An address that cannot be bound
/// does not keep the others from serving.
fn serve_status(service: Service) {
    let addrs = service.listen_addrs();
    let service = service.start();
    for addr in addrs {
        let svc = Arc::clone(&service);
        std::thread::spawn(move || {
            let listener = bind_retrying(addr);
            match listener.local_addr() {
                Ok(a) => println!("heartbeat: status service on tcp {a}"),
                Err(e) => println!("heartbeat: status service: {e}"),
            }
            Service::serve_on(&svc, listener)
        });
    }
}

fn bind_retrying(addr: std::net::SocketAddr) -> std::net::TcpListener {
    let mut reported = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) => {
                if !reported {
                    println!(
                        "heartbeat: status service: cannot listen on {addr}: {e}; retrying \
                         every second"
                    );
                    reported = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
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
            eprintln!("heartbeat: {e:#}");
            ExitCode::FAILURE
        }
    }
}
