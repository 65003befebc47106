//! The server side of the control protocol ([`crate::ctl`]), shared by every
//! daemon: bind the socket (replacing a stale file), then answer one request per
//! connection, one thread per connection, with the daemon's own handler — after
//! checking that the peer may send that request ([`Policy`]).
//!
//! Rules:
//! - Every accepted connection's peer is read from the kernel (`SO_PEERCRED`,
//!   [`crate::peer`]). Only root peers are served at all.
//! - Each daemon takes each request only from the program that needs it
//!   ([`ftvmm_senders`], [`fencing_senders`], [`heartbeat_senders`]; programs
//!   are told apart by executable, [`Programs`]). `Status` is read-only and
//!   served to any root process (init's readiness probe, `ftctl status`).
//! - A refused request is answered `Response::Error` naming the daemon, the
//!   request, the peer and who may send it; the daemon logs a warning, at
//!   most one every [`REFUSAL_LOG_PERIOD`] (the rest are counted).
//!
//! Invariant: a handler never sees a request its policy refused. The tables
//! match every request variant without a wildcard, so a new request cannot
//! be added without deciding who may send it.

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ctl::{self, Request, Response};
use crate::peer::{Peer, Program, Programs};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// Binds `path` (creating its directory), replacing a stale socket file left
/// by an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// The handler of a daemon that only reports status: `Status` gets `status()`,
/// every other request an error naming the daemon.
pub fn status_only(
    daemon: &str,
    req: Request,
    status: impl FnOnce() -> serde_json::Value,
) -> Response {
    match req {
        Request::Status => Response::Status { status: status() },
        other => Response::Error {
            message: format!("{daemon} does not handle {other:?}"),
        },
    }
}

/// Who may send a request to a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Senders {
    /// Any root process (read-only requests).
    AnyRoot,
    /// Only these programs (root, and identified by executable).
    Only(&'static [Program]),
    /// No process: the daemon does not take it over its socket.
    Nobody,
}

/// ftvmm's socket: the output grant, hold and deposition come from fencing.
/// `StartVm`/`StopVm` are what ftvmm does itself (config placement, the
/// console test hook): no process sends them. A persisted newer config
/// comes from heartbeat (its status service persists `ftctl apply`).
pub fn ftvmm_senders(req: &Request) -> Senders {
    match req {
        Request::Status => Senders::AnyRoot,
        Request::OutputGrant { .. } | Request::Deposed { .. } => Senders::Only(&[Program::Fencing]),
        Request::ConfigApplied { .. } => Senders::Only(&[Program::Heartbeat]),
        Request::StartVm { .. } | Request::StopVm { .. } => Senders::Nobody,
        Request::Acquire { .. }
        | Request::Highest { .. }
        | Request::Leases
        | Request::Peers
        | Request::PeerAlive { .. }
        | Request::VmNetwork
        | Request::ResetHost { .. } => Senders::Nobody,
    }
}

/// fencing's socket: decisions, the lease view and the reset come from ftvmm.
pub fn fencing_senders(req: &Request) -> Senders {
    match req {
        Request::Status => Senders::AnyRoot,
        Request::Acquire { .. }
        | Request::Highest { .. }
        | Request::Leases
        | Request::ResetHost { .. } => Senders::Only(&[Program::Ftvmm]),
        Request::StartVm { .. }
        | Request::StopVm { .. }
        | Request::Peers
        | Request::PeerAlive { .. }
        | Request::VmNetwork
        | Request::OutputGrant { .. }
        | Request::Deposed { .. }
        | Request::ConfigApplied { .. } => Senders::Nobody,
    }
}

/// heartbeat's socket: the membership view and logging-channel signs of
/// life come from ftvmm.
pub fn heartbeat_senders(req: &Request) -> Senders {
    match req {
        Request::Status => Senders::AnyRoot,
        Request::Peers | Request::PeerAlive { .. } | Request::VmNetwork => {
            Senders::Only(&[Program::Ftvmm])
        }
        Request::StartVm { .. }
        | Request::StopVm { .. }
        | Request::Acquire { .. }
        | Request::Highest { .. }
        | Request::Leases
        | Request::OutputGrant { .. }
        | Request::Deposed { .. }
        | Request::ResetHost { .. }
        | Request::ConfigApplied { .. } => Senders::Nobody,
    }
}

/// The request's name on the wire (`acquire`, `peer_alive`, ...).
pub fn request_name(req: &Request) -> String {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Which peer may send which request to one daemon.
#[derive(Debug, Clone)]
pub struct Policy {
    daemon: &'static str,
    senders: fn(&Request) -> Senders,
    programs: Programs,
}

impl Policy {
    /// A daemon's policy: its table and who is who.
    pub fn new(daemon: &'static str, senders: fn(&Request) -> Senders, programs: Programs) -> Self {
        Policy {
            daemon,
            senders,
            programs,
        }
    }

    pub fn ftvmm(programs: Programs) -> Self {
        Policy::new("ftvmm", ftvmm_senders, programs)
    }

    pub fn fencing(programs: Programs) -> Self {
        Policy::new("fencing", fencing_senders, programs)
    }

    pub fn heartbeat(programs: Programs) -> Self {
        Policy::new("heartbeat", heartbeat_senders, programs)
    }

    /// Fencing's policy with the calling test binary standing in for ftvmm
    /// (tests whose fake fencing agent serves the VMM code running in the
    /// test process itself).
    pub fn fencing_for_this_test() -> Self {
        let me = std::env::current_exe().expect("the test binary's path");
        Policy::fencing(Programs::appliance().with(crate::peer::Program::Ftvmm, &me))
    }

    /// `Ok` if `peer` may send `req`; else the refusal, one line.
    pub fn check(&self, peer: &Peer, req: &Request) -> Result<(), String> {
        let (daemon, op) = (self.daemon, request_name(req));
        if peer.uid != 0 {
            return Err(format!(
                "{daemon} refuses {op} from {peer}: only root processes may use its control socket"
            ));
        }
        match (self.senders)(req) {
            Senders::AnyRoot => Ok(()),
            Senders::Nobody => Err(format!(
                "{daemon} refuses {op} from {peer}: {daemon} does not take {op} over its control socket"
            )),
            Senders::Only(programs) => {
                let who = peer.exe.as_ref().ok().and_then(|e| self.programs.identify(e));
                if who.is_some_and(|p| programs.contains(&p)) {
                    return Ok(());
                }
                let allowed: Vec<String> = programs
                    .iter()
                    .map(|p| format!("{p} ({})", self.programs.exe(*p).display()))
                    .collect();
                Err(format!(
                    "{daemon} refuses {op} from {peer}: only {} may send it",
                    allowed.join(" or ")
                ))
            }
        }
    }
}

/// At most one refusal warning per this period; the others are counted.
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The rate limit of refusal warnings.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// When the last warning was logged, and refusals not logged since.
    state: Mutex<Option<(Instant, u64)>>,
}

impl RefusalLog {
    /// The warning to log for a refusal at `now`, if one is due: the refusal,
    /// plus how many were not logged since the last warning.
    pub fn on_refusal(&self, now: Instant, refusal: &str) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            Some((last, ref mut quiet)) if now.duration_since(last) < REFUSAL_LOG_PERIOD => {
                *quiet += 1;
                None
            }
            prev => {
                let quiet = prev.map_or(0, |(_, q)| q);
                *s = Some((now, 0));
                Some(if quiet == 0 {
                    refusal.to_string()
                } else {
                    format!("{refusal} (and {quiet} more refused requests not logged)")
                })
            }
        }
    }
}

/// Serves connections forever, one thread each: checks each request against
/// `policy`, then `handle` answers it.
pub fn serve<F>(listener: UnixListener, policy: Policy, handle: F)
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    serve_urgent(listener, policy, None, handle)
}

/// Requests a daemon answers at real-time priority (`sched`): the priority
/// and which requests.
#[derive(Clone, Copy)]
pub struct Urgent {
    pub priority: i32,
    pub is_urgent: fn(&Request) -> bool,
}

/// [`serve`], with the `urgent` requests answered at real-time priority: the
/// accept loop runs at it (the calling thread: call this last, after every
/// thread of normal priority was started), each connection's thread
/// inherits it, and a thread whose request is not urgent goes back to the
/// normal policy before `handle` sees the request (so threads a handler
/// starts, such as a VM's vCPUs, are never real-time). Without the
/// privilege for it everything runs as [`serve`] does (a warning says so).
pub fn serve_urgent<F>(listener: UnixListener, policy: Policy, urgent: Option<Urgent>, handle: F)
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    let urgent = urgent.filter(|u| match crate::sched::realtime_thread(u.priority) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("{}: urgent requests at normal priority: {e}", policy.daemon);
            false
        }
    });
    let handle = Arc::new(handle);
    let policy = Arc::new(policy);
    let log = Arc::new(RefusalLog::default());
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let (handle, policy, log) =
                    (Arc::clone(&handle), Arc::clone(&policy), Arc::clone(&log));
                std::thread::spawn(move || serve_one(stream, &policy, &log, urgent, &*handle));
            }
            Err(e) => tracing::warn!("control accept failed: {e}"),
        }
    }
}

fn serve_one(
    stream: UnixStream,
    policy: &Policy,
    log: &RefusalLog,
    urgent: Option<Urgent>,
    handle: &dyn Fn(Request) -> Response,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let peer = Peer::of(&stream);
    let request = ctl::read_message::<Request, _>(&mut BufReader::new(&stream), "client");
    if let Some(u) = urgent {
        let keep = request.as_ref().is_ok_and(|r| (u.is_urgent)(r));
        if !keep {
            if let Err(e) = crate::sched::normal_thread() {
                // Refuse rather than run a handler that may start
                // threads at real-time priority.
                let message = format!("{}: cannot leave real-time priority: {e}", policy.daemon);
                tracing::error!("{message}");
                let _ = ctl::write_message(&mut &stream, &Response::Error { message });
                return;
            }
        }
    }
    let resp = match request {
        Ok(req) => {
            let allowed = peer
                .map_err(|e| {
                    format!(
                        "{} refuses {}: cannot read the peer's credentials: {e}",
                        policy.daemon,
                        request_name(&req)
                    )
                })
                .and_then(|p| policy.check(&p, &req));
            match allowed {
                Ok(()) => handle(req),
                Err(message) => {
                    if let Some(w) = log.on_refusal(Instant::now(), &message) {
                        tracing::warn!("{w}");
                    }
                    Response::Error { message }
                }
            }
        }
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    if let Err(e) = ctl::write_message(&mut &stream, &resp) {
        tracing::warn!("control reply failed: {e}");
    }
}

#[cfg(test)]
#[path = "ctl_server_tests.rs"]
mod tests;
