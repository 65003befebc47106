//! The small typed control protocol the daemons serve on their Unix sockets.
//!
//! One request per connection: the client writes one JSON `Request` line, the
//! daemon answers one JSON `Response` line and closes. Each daemon answers
//! `Status` with its own JSON object (a free-form map, so each daemon owns its
//! fields) and refuses requests it does not know with `Response::Error`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const FTVMM_SOCKET: &str = "/run/ftvmm.sock";
pub const HEARTBEAT_SOCKET: &str = "/run/heartbeat.sock";
pub const FENCING_SOCKET: &str = "/run/fencing.sock";

/// Requests understood by the daemons (each answers the ones that concern it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every daemon: its status as a JSON object.
    Status,
    /// ftvmm: start the named VM from the config.
    StartVm { name: String },
    /// ftvmm: stop the named VM.
    StopVm { name: String },
    /// fencing: decide, once and for all, who owns `generation` of `vm`. The
    /// answer is final: every later `Acquire` of the same (vm, generation) by
    /// any host returns the same owner, and the config generation the winner
    /// proposed it under. Before running Disk Paxos the agent publishes in its
    /// lease sector that this host runs (or is about to run) `vm` as Primary
    /// (see [`LeaseView::running`]). Answered with `Response::Decided`, or
    /// `Response::Superseded` when a later generation already reuses the
    /// instance (ask again higher, or halt, depending on why one asked).
    Acquire {
        vm: String,
        generation: u64,
        /// The config generation the asking host runs under; recorded with
        /// the decision (a host refuses to start a VM under an older config
        /// than the one recorded, docs/design.md §1).
        #[serde(default)]
        config_generation: u64,
        /// The VM's fencing slot in the asking host's config. An agent
        /// whose booted config lacks the VM (it was added live,
        /// `crate::live_add`) learns it here when no VM of its config has
        /// the slot; one that has the VM checks the slot is the same.
        /// Absent from an older ftvmm.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<u32>,
    },
    /// fencing: the highest generation of `vm` that any host's block on disk
    /// names (decided or not). Answered with `Response::Highest`. Every start
    /// of a VM asks for `generation + 1` of this. `slot`: as in `Acquire`.
    Highest {
        vm: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<u32>,
    },
    /// fencing: the host-liveness (delta) leases it reads on the shared device.
    /// Answered with `Response::Leases`.
    Leases,
    /// heartbeat: the membership/suspicion view. Answered with `Response::Peers`.
    Peers,
    /// heartbeat: ftvmm saw traffic from `host` on a logging channel (a sign of
    /// life that counts like a heartbeat).
    PeerAlive { host: String },
    /// heartbeat: which peers this host and, by their FT heartbeats, every
    /// other host hear on the VM network. Answered with
    /// `Response::VmNetwork`. Not an input to failure suspicion.
    VmNetwork,
    /// fencing -> ftvmm, every renewal period (level-triggered hold): whether
    /// this host may release the output of the VMs it runs as Primary. `ok`
    /// grants it for `valid_ms` from receipt (measured on `CLOCK_BOOTTIME`);
    /// ftvmm holds every Primary's output when the last grant has expired or
    /// said `ok = false`, so a restarted fencing agent (no grant yet) or a
    /// restarted ftvmm (no grant yet) holds by default. ftvmm answers
    /// `Running` once the resulting state is in force (a hold: no output
    /// leaves), listing the VMs it runs or is acquiring as Primary: the
    /// agent publishes exactly those in its lease sector and watches them
    /// for deposition (docs/design.md §1).
    OutputGrant {
        ok: bool,
        valid_ms: u64,
        reason: String,
    },
    /// fencing -> ftvmm: another host started a later generation of a VM this
    /// host runs as Primary (`generation` is the later one, `by` its writer):
    /// this host's copy is deposed and must stop at once, releasing nothing.
    Deposed {
        vm: String,
        generation: u64,
        by: String,
    },
    /// ftvmm -> fencing: this host must be reset (a disk request of a VM has
    /// been in flight longer than [`IO_AGE_LIMIT_MS`], so it may land late; a
    /// write waited longer than that to be submitted; or the storage refused
    /// a write because another host preempted this one's reservation;
    /// docs/architecture.md §7). Fencing stops feeding the watchdog and answers `Ok`.
    ResetHost { reason: String },
    /// heartbeat -> ftvmm: this host persisted a newer signed config
    /// (`ftctl apply` or catch-up; heartbeat checked its signature, the
    /// trust root and anti-rollback). It carries what ftvmm takes live
    /// (`changes::LIVE`): every VM's `power` and the hosts its affinity
    /// allows (`VmPower::allowed`). ftvmm ignores a generation
    /// older than one it took, powers off (fenced on shared storage first
    /// when it runs the VM as Primary) and powers on as at boot; answered
    /// `Ok` once queued (docs/operators-guide.md §3). heartbeat sends it
    /// again every catch-up round, so an ftvmm that restarted learns it.
    /// `timing`: the timing ftvmm takes live (failure timeout, lag limit;
    /// `crate::timing_live` says how), taken at once, not queued; absent
    /// from an older heartbeat.
    ConfigApplied {
        generation: u64,
        vms: Vec<VmPower>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timing: Option<crate::model::Timing>,
        /// The config itself, for the VMs it adds: ftvmm takes each into
        /// the config it runs (`crate::live_add`). Absent from an older
        /// heartbeat: a VM added then waits for the host's next boot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<Box<crate::model::ClusterConfig>>,
    },
}

/// One VM's power in a config ([`Request::ConfigApplied`]), and where it
/// may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPower {
    pub vm: String,
    pub power: crate::model::Power,
    /// The hosts the VM's affinity allows in this config, resolved
    /// (`validate::allowed_hosts`: listed hosts plus the hosts of listed
    /// groups; every host when the rule is empty), in the config's `hosts`
    /// order. Resolved by the sender so that a change of `host_groups`
    /// reaches ftvmm as what it means for each VM. Absent from an older
    /// heartbeat: ftvmm keeps the affinity it booted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
}

impl VmPower {
    /// Every VM's power and allowed hosts in `config`, in config order.
    pub fn all(config: &crate::model::ClusterConfig) -> Vec<VmPower> {
        (config.vms.iter())
            .map(|v| VmPower {
                vm: v.name.clone(),
                power: v.power,
                allowed: Some(crate::validate::allowed_in_order(config, v)),
            })
            .collect()
    }
}

/// A disk write of a VM that waited this long to be submitted is never
/// submitted, and a disk request in flight this long since its submission to
/// storage gets the host reset ([`Request::ResetHost`]).
pub const IO_AGE_LIMIT_MS: u64 = 2_000;

/// The watchdog timeout every host plans for (fencing arms `/dev/watchdog`
/// with it; lease and late-write arithmetic use it).
pub const WATCHDOG_TIMEOUT_S: u32 = 6;

/// After a new Primary goes live it defers writes to sectors the deposed
/// Primary may still have had in flight for this long: such a write was
/// released no later than the go-live, is submitted to storage within
/// [`IO_AGE_LIMIT_MS`] of its release or never, completes within
/// [`IO_AGE_LIMIT_MS`] of its submission or the old host is reset by its
/// watchdog within [`WATCHDOG_TIMEOUT_S`] after that; one second covers the
/// checks' periods (ftvmm `live/late_write.rs`, rule 1).
pub const LATE_WRITE_BOUND_MS: u64 = 2 * IO_AGE_LIMIT_MS + WATCHDOG_TIMEOUT_S as u64 * 1000 + 1_000;

/// One host as the heartbeat daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub host: String,
    /// Heard from (heartbeat or logging channel) within the failure timeout.
    pub alive: bool,
    /// Milliseconds since the last sign of life; `None` if never heard.
    pub last_seen_ms: Option<u64>,
}

/// One host's reachability on the VM network: heartbeats exchanged with its
/// peers at their `hosts[].vm.addr` (heartbeat's VM-network view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReach {
    /// How long the host has listened on its VM-network address (ms);
    /// `None`: it does not (address not up yet): nothing below counts.
    pub watch_ms: Option<u64>,
    /// How long since it last heard any peer (or the VM witness) there (ms;
    /// counted from the start of its watch if it never heard one); 0 while
    /// it hears one.
    pub quiet_ms: u64,
    /// The peers it heard there within the failure timeout, by host name,
    /// then `witness:<ip>` if it heard the VM witness (`cluster.vm_witness`)
    /// within it too (no host name has a `:`).
    pub hears: Vec<String>,
}

/// A peer's own VM-network reachability, as its last FT heartbeat said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerVmReach {
    pub host: String,
    /// Heard on the FT network within the failure timeout.
    pub ft_alive: bool,
    /// Its report and the report's age (ms since the FT heartbeat that
    /// carried it); `None`: none received since this daemon started.
    pub reach: Option<VmReach>,
    pub age_ms: Option<u64>,
}

/// heartbeat's answer to `Request::VmNetwork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetView {
    /// The failure timeout in force (the judgement's threshold).
    pub failure_timeout_ms: u64,
    /// This host's own reachability.
    pub own: VmReach,
    /// Every peer's, by its FT heartbeats.
    pub peers: Vec<PeerVmReach>,
    /// How long since this host last heard any peer (or the VM witness) on
    /// the VM network (ms), whether or not it still counts as hearing one (`own.quiet_ms`
    /// stays 0 until the failure timeout passed); `None`: it never heard
    /// one, or does not listen. What a Secondary's claim looks at
    /// (`ftvmm/src/lockstep/claim_vmnet.rs`); absent from an older daemon.
    #[serde(default)]
    pub own_since_heard_ms: Option<u64>,
}

/// A VM this host runs (or is acquiring) as Primary, in `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningVm {
    pub vm: String,
    pub generation: u64,
    /// The VM's fencing slot (as in `Request::Acquire`: a fencing agent
    /// restarted since the VM was added live learns it here). Absent from
    /// an older ftvmm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// One host's delta lease as the fencing agent last read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub host: String,
    /// The lease was renewed (its counter moved) within the lease timeout.
    pub live: bool,
    /// Milliseconds since the counter was last seen to move; `None` if never.
    pub last_renewal_ms: Option<u64>,
    /// Seen, and not moved for the lease timeout since (sanlock's rule): the
    /// host is dead. Not the negation of `live`: a lease this agent has not
    /// watched long enough (it just booted) is neither live nor expired.
    #[serde(default)]
    pub expired: bool,
    /// The VMs this host publishes (in its lease sector) that it runs, or is
    /// about to run, as Primary.
    #[serde(default)]
    pub running: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status {
        status: serde_json::Value,
    },
    Ok,
    Error {
        message: String,
    },
    /// fencing: the owner of (vm, generation); `won` is true when that is the
    /// asking host.
    Decided {
        vm: String,
        generation: u64,
        owner: String,
        won: bool,
        /// The config generation the owner proposed it under.
        #[serde(default)]
        config_generation: u64,
        /// This host won and, before answering, cut the previous owner's
        /// host off at the storage with PREEMPT AND ABORT: the target
        /// terminated its queued commands and refuses every later one, so
        /// none of its writes can land any more and the winner need not
        /// wait out the late-write bound (docs/design.md §3 item 5). False
        /// everywhere else: a lost race, no fence on the device, a target
        /// that only did PREEMPT (commands it had already accepted may still
        /// run), a previous owner that was not deposed.
        #[serde(default)]
        storage_cut: bool,
    },
    /// fencing: (vm, generation) can no longer be decided: a later
    /// generation `by` reuses its instance on disk.
    Superseded {
        vm: String,
        generation: u64,
        by: u64,
    },
    /// fencing: the highest generation of `vm` named on disk (0: none yet),
    /// its owner if decided, and the config generation recorded with it.
    Highest {
        vm: String,
        generation: u64,
        owner: Option<String>,
        config_generation: u64,
    },
    Leases {
        leases: Vec<LeaseView>,
        /// Milliseconds since this agent's last *complete* renewal: its own
        /// lease written and every other host's read (the `leases` above
        /// are that current). `None`: none yet, or an agent that predates
        /// the field. The own `LeaseView` counts the write alone, so a host
        /// whose reads fail still looks fresh there while every other lease
        /// stands still in its view.
        #[serde(default)]
        renewal_complete_ms: Option<u64>,
    },
    /// ftvmm's answer to `OutputGrant`: the VMs it runs (or is acquiring)
    /// as Primary here, with the generation each acts in.
    Running {
        vms: Vec<RunningVm>,
    },
    Peers {
        peers: Vec<PeerView>,
    },
    VmNetwork {
        view: VmNetView,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed message on {path}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("message on {path} exceeds {MAX_LINE} bytes")]
    TooLong { path: String },
    #[error("no answer on {path} within {ms} ms")]
    Timeout { path: String, ms: u128 },
}

/// A message line longer than this is refused.
pub const MAX_LINE: usize = 1 << 20;

/// How long [`query`] waits for a daemon's answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request to the daemon at `path` and returns its response,
/// waiting up to [`QUERY_TIMEOUT`] for it.
pub fn query(path: &Path, req: &Request) -> Result<Response, CtlError> {
    query_within(path, req, QUERY_TIMEOUT)
}

/// [`query`] waiting up to `timeout` (at least 1 ms) for the answer, which
/// a daemon writes as one line: a daemon busy for longer is
/// [`CtlError::Timeout`], for a caller that would rather say so than wait.
pub fn query_within(path: &Path, req: &Request, timeout: Duration) -> Result<Response, CtlError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let p = path.display().to_string();
    let io = |source| CtlError::Io {
        path: p.clone(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: p.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("Request always serializes");
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    read_message(&mut BufReader::new(s), &p).map_err(|e| match e {
        CtlError::Io { path, source }
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            CtlError::Timeout {
                path,
                ms: timeout.as_millis(),
            }
        }
        e => e,
    })
}

/// Reads one JSON line (bounded by `MAX_LINE`) and decodes it.
pub fn read_message<T: for<'de> Deserialize<'de>, R: BufRead>(
    r: &mut R,
    path: &str,
) -> Result<T, CtlError> {
    let mut buf = Vec::new();
    let mut limited = std::io::Read::take(r, MAX_LINE as u64 + 1);
    limited
        .read_until(b'\n', &mut buf)
        .map_err(|source| CtlError::Io {
            path: path.to_string(),
            source,
        })?;
    if buf.len() > MAX_LINE {
        return Err(CtlError::TooLong {
            path: path.to_string(),
        });
    }
    serde_json::from_slice(&buf).map_err(|source| CtlError::Decode {
        path: path.to_string(),
        source,
    })
}

/// Writes one JSON line.
pub fn write_message<T: Serialize, W: Write>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_garbage_is_an_error() {
        let line = serde_json::to_string(&Request::StartVm { name: "kv".into() }).unwrap();
        let mut r = std::io::Cursor::new(format!("{line}\n"));
        let back: Request = read_message(&mut r, "test").unwrap();
        assert_eq!(back, Request::StartVm { name: "kv".into() });
        let mut g = std::io::Cursor::new(b"\xff\x00garbage\n".to_vec());
        assert!(matches!(
            read_message::<Request, _>(&mut g, "test"),
            Err(CtlError::Decode { .. })
        ));
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut r = std::io::Cursor::new(vec![b'a'; MAX_LINE + 10]);
        assert!(matches!(
            read_message::<Request, _>(&mut r, "test"),
            Err(CtlError::TooLong { .. })
        ));
    }

    #[test]
    fn a_daemon_that_takes_the_request_and_never_answers_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Accepted and held, never answered (a daemon stuck behind a lock).
        let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
        let e = query_within(&path, &Request::Status, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, CtlError::Timeout { ms: 50, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("no answer on {} within 50 ms", path.display())
        );
        drop(held.join());
    }
}
