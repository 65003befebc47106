//! The network status service, served by the heartbeat daemon on TCP
//! [`remote::PORT`] of the host's FT address, and of its management address
//! when the config gives it one (`hosts[].mgmt`; [`ServiceConfig::listen_addrs`]
//! is the one list of both). `config_schema::remote` has the protocol and the
//! operator's authentication; this module answers. Both addresses answer the
//! same requests with the same authentication; hosts always talk to each
//! other on the FT network.
//!
//! Why here: heartbeat already binds the FT address, holds the host's
//! X25519 key and the config's host list, is not on any safety path (its
//! view is never a safety input, docs/architecture.md §3), and may ask the
//! other daemons for `Status` like any root process.
//!
//! - A host's report: heartbeat's own status, and fencing's and ftvmm's
//!   `Status` from their control sockets (each one's error in its place).
//! - A cluster report ([`gather`]): this host's report and every other
//!   host's, asked in parallel over Noise IK ([`noise`]) with a short
//!   deadline, except the hosts this host's heartbeat does not hear, which
//!   are not waited for; a host without a report is listed with the reason.
//! - Metrics: this host's report as OpenMetrics text ([`metrics`]), for the
//!   same operators over the same protocol (`ftctl metrics`).
//! - Apply: a newer signed config persisted on this host's config disk and
//!   passed on to the others ([`apply`], `ftctl apply`).

mod apply;
pub mod catch_up;
mod config_disk;
mod deadline;
mod gather;
pub mod metrics;
pub mod noise;

pub use apply::{ApplyTarget, Live};
pub use gather::{DAEMON_BUDGET, PEER_REPORT_DEADLINE};

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use config_schema::config_id::ConfigId;
use config_schema::ctl::{self, Request, Response};
use config_schema::events;
use config_schema::remote::auth::Operators;
use config_schema::remote::report::{digest_hex, ClusterReport, HostReport, VmConfig};
use config_schema::remote::server::{self, Backend};
use config_schema::remote::wire::ServerHello;
use config_schema::remote::{client, Reply};
use config_schema::runtime::RuntimeConfig;
use config_schema::signed::SignedConfig;
use serde_json::{json, Value};

use crate::node::{NodeConfig, PeerConf};

/// How long a host passing a config on (apply, pass-on) or fetching one
/// (catch-up) waits to connect to another host's service and read its hello.
pub const PEER_CONNECT: Duration = Duration::from_secs(2);
/// How long such an exchange may take after [`PEER_CONNECT`]: the other
/// host persists the config on its disk and tells its ftvmm (whose socket
/// answers within `ctl::query`'s 5 s). Reports have their own, shorter
/// deadline ([`PEER_REPORT_DEADLINE`]).
pub const PEER_DEADLINE: Duration = Duration::from_secs(10);
/// How often a host asks the others for a newer applied config.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(30);
/// Where the image keeps the trust root (as init reads it).
pub const TRUST_ROOT_PATH: &str = "/etc/ft/trust-root.pub";

/// How long asking another host may take ([`Service::ask_host_within`]),
/// counted from the start: connected and its hello read within `connect`,
/// the whole exchange within `total`.
#[derive(Debug, Clone, Copy)]
struct Patience {
    connect: Duration,
    total: Duration,
}

impl Patience {
    /// Passing a config on or fetching one ([`PEER_CONNECT`], [`PEER_DEADLINE`]).
    const CONFIG: Patience = Patience {
        connect: PEER_CONNECT,
        total: PEER_CONNECT.saturating_add(PEER_DEADLINE),
    };
}

/// Where a host finds its daemons and its peers' services.
#[derive(Clone)]
pub struct ServiceConfig {
    pub node: NodeConfig,
    pub cluster: String,
    pub config_generation: u64,
    /// The SHA-256 of the booted config ([`config_schema::config_id`]);
    /// reported as hex beside the generation.
    pub config_digest: [u8; 32],
    pub operators: Operators,
    pub vms: Vec<VmConfig>,
    /// Every host's name in config order (the report's order).
    pub host_order: Vec<String>,
    /// The status service's port on every host (7401; tests use others).
    pub port: u16,
    /// This host's management address (`hosts[].mgmt.addr`), which the
    /// service listens on beside the FT address; `None`: FT only.
    pub mgmt: Option<IpAddr>,
    pub fencing_socket: PathBuf,
    pub ftvmm_socket: PathBuf,
    /// Where applied configs are persisted; `None`: this host refuses them.
    pub apply: Option<ApplyTarget>,
}

impl ServiceConfig {
    pub fn from_runtime(rt: &RuntimeConfig, node: NodeConfig, port: u16) -> Self {
        ServiceConfig {
            node,
            cluster: rt.config.cluster.name.clone(),
            config_generation: rt.config.cluster.generation,
            config_digest: ConfigId::of_config(&rt.config).digest,
            operators: Operators::of(&rt.config),
            vms: VmConfig::all(&rt.config),
            host_order: rt.config.hosts.iter().map(|h| h.name.clone()).collect(),
            port,
            mgmt: mgmt_ip(rt),
            fencing_socket: ctl::FENCING_SOCKET.into(),
            ftvmm_socket: ctl::FTVMM_SOCKET.into(),
            apply: Some(ApplyTarget {
                config_disk: None,
                scan_root: "/".into(),
                trust_root: TRUST_ROOT_PATH.into(),
                catch_up_every: Some(CATCH_UP_EVERY),
                running: rt.config.clone(),
                timing: ApplyTarget::timing_of(&rt.config),
            }),
        }
    }

    /// The booted config's identity.
    pub fn config_id(&self) -> ConfigId {
        ConfigId {
            generation: self.config_generation,
            digest: self.config_digest,
        }
    }

    /// This host's service address on the FT network (the one other hosts use).
    pub fn ft_addr(&self) -> SocketAddr {
        SocketAddr::new(self.node.bind.ip(), self.port)
    }

    /// Every address the service listens on: the FT address, then the
    /// management address if the host has one.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mgmt = self.mgmt.map(|ip| SocketAddr::new(ip, self.port));
        std::iter::once(self.ft_addr()).chain(mgmt).collect()
    }

    fn peer_addr(&self, p: &PeerConf) -> SocketAddr {
        SocketAddr::new(p.addr.ip(), self.port)
    }
}

/// This host's management address in `rt`, if it has one. The config was
/// validated (init refuses any other), so the address parses.
fn mgmt_ip(rt: &RuntimeConfig) -> Option<IpAddr> {
    let me = rt.config.hosts.iter().find(|h| h.name == rt.host_name)?;
    let (ip, _) = config_schema::validate::parse_cidr(&me.mgmt.as_ref()?.addr)?;
    Some(IpAddr::V4(ip))
}

/// The service: config plus where heartbeat's own status comes from.
pub struct Service {
    cfg: ServiceConfig,
    heartbeat_status: Box<dyn Fn() -> Value + Send + Sync>,
    /// Operators (and the config to compare with) as applied configs changed them.
    live: RwLock<Live>,
    /// One apply at a time ([`apply`]); under it, what the last catch-up
    /// persisted, until another apply persists (`apply::CaughtUp`).
    apply_lock: Mutex<Option<apply::CaughtUp>>,
    /// The config disk once found under the scan root (it does not move
    /// while the host runs).
    found_disk: Mutex<Option<PathBuf>>,
}

impl Service {
    pub fn new(
        cfg: ServiceConfig,
        heartbeat_status: impl Fn() -> Value + Send + Sync + 'static,
    ) -> Self {
        let live = Live {
            running: cfg.apply.as_ref().map(|t| t.running.clone()),
            operators: cfg.operators.clone(),
            persisted: None,
        };
        Service {
            cfg,
            heartbeat_status: Box::new(heartbeat_status),
            live: RwLock::new(live),
            apply_lock: Mutex::new(None),
            found_disk: Mutex::new(None),
        }
    }

    /// The addresses to listen on ([`ServiceConfig::listen_addrs`]).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.cfg.listen_addrs()
    }

    /// Binds every address of [`Service::listen_addrs`], in that order; an
    /// error names the address.
    pub fn bind(&self) -> std::io::Result<Vec<TcpListener>> {
        self.listen_addrs()
            .into_iter()
            .map(|a| {
                TcpListener::bind(a).map_err(|e| std::io::Error::new(e.kind(), format!("{a}: {e}")))
            })
            .collect()
    }

    /// Serves `listeners` (those of [`Service::bind`]) forever, each in its
    /// own thread; see [`Service::start`].
    pub fn serve(self, listeners: Vec<TcpListener>) {
        let me = self.start();
        let threads: Vec<_> = listeners
            .into_iter()
            .map(|l| {
                let svc = Arc::clone(&me);
                std::thread::spawn(move || Service::serve_on(&svc, l))
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Readies the service to serve listeners from any number of threads
    /// ([`Service::serve_on`]); with an [`ApplyTarget`] that says so, also
    /// starts catching up with the other hosts' applied configs ([`catch_up`]).
    pub fn start(self) -> Arc<Service> {
        let me = Arc::new(self);
        let every = me.cfg.apply.as_ref().and_then(|t| t.catch_up_every);
        if let Some(every) = every {
            let svc = Arc::clone(&me);
            std::thread::spawn(move || catch_up::run(svc, every));
        }
        me
    }

    /// Serves one listener forever (each address has its own connection
    /// limit, [`server::MAX_CONNECTIONS`]).
    pub fn serve_on(me: &Arc<Service>, listener: TcpListener) {
        server::serve(listener, Arc::clone(me) as Arc<dyn Backend>)
    }

    /// What applied configs changed so far.
    fn live(&self) -> Live {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Answers another host's Noise exchange of `kind` on this connection as
    /// this host, knowing the other hosts by the config's keys: `respond`
    /// gets the asker's body and returns this host's.
    fn answer_host(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        (from, msg): (&str, &str),
        kind: noise::Kind,
        respond: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> Result<(), String> {
        let me = &self.cfg.node;
        let who = noise::Responder {
            cluster: &self.cfg.cluster,
            me: &me.name,
            my_key: &me.private_key,
            nonce,
        };
        let key_of = |h: &str| me.peers.iter().find(|p| p.name == h).map(|p| p.public_key);
        noise::answer_with(stream, &who, (from, msg), key_of, kind, respond)
            .map_err(|e| e.to_string())
    }

    /// Answers another host passing a config on (`kind`: the bare config
    /// or a `PassOn`; `apply::Service::apply_passed_on` reads either).
    fn answer_passed_on(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        (from, msg): (&str, &str),
        kind: noise::Kind,
    ) -> Result<(), String> {
        self.answer_host(stream, nonce, (from, msg), kind, |body| {
            self.apply_passed_on(from, &body)
        })?;
        tracing::info!("apply: config from host {from} answered");
        Ok(())
    }

    /// Asks peer `p` for `kind` (sending `body`) over Noise: connected and
    /// its hello read within [`PEER_CONNECT`], the whole exchange within
    /// [`PEER_DEADLINE`] more ([`Patience::CONFIG`]). The answer's bytes, or
    /// why not; `not_p` says it when the host that answers is not `p` of
    /// this cluster.
    fn ask_host(
        &self,
        p: &PeerConf,
        kind: noise::Kind,
        body: &[u8],
        not_p: impl FnOnce(&ServerHello) -> String,
    ) -> Result<Vec<u8>, AskError> {
        self.ask_host_within(p, kind, body, not_p, Patience::CONFIG)
    }

    /// [`Service::ask_host`] within `patience`: one deadline bounds every
    /// read and write, the hello's too.
    fn ask_host_within(
        &self,
        p: &PeerConf,
        kind: noise::Kind,
        body: &[u8],
        not_p: impl FnOnce(&ServerHello) -> String,
        patience: Patience,
    ) -> Result<Vec<u8>, AskError> {
        let addr = self.cfg.peer_addr(p);
        let start = Instant::now();
        let s = TcpStream::connect_timeout(&addr, patience.connect).map_err(|error| {
            AskError::Failed(client::ClientError::Connect { addr, error }.to_string())
        })?;
        let mut s = deadline::Deadline::until(s, start + patience.connect);
        let why = |s: &deadline::Deadline, e: String| match s.expired() {
            true => AskError::Late(e),
            false => AskError::Failed(e),
        };
        let hello = client::read_hello(&mut s, addr).map_err(|e| why(&s, e.to_string()))?;
        s.set_until(start + patience.total);
        if hello.host != p.name || hello.cluster != self.cfg.cluster {
            return Err(AskError::Failed(not_p(&hello)));
        }
        let me = (self.cfg.node.name.as_str(), &self.cfg.node.private_key);
        noise::ask_with(&mut s, &hello, me, &p.public_key, kind, body).map_err(|e| match e {
            noise::PeerError::Refused(_) => AskError::Refused(format!("{addr}: {e}")),
            _ => why(&s, format!("{addr}: {e}")),
        })
    }

    /// Why the host at `addr` that said `hello` is not `p` of this cluster.
    fn not_p(&self, addr: SocketAddr, hello: &ServerHello, p: &PeerConf) -> String {
        format!(
            "{addr} is host {:?} of cluster {:?}, not {} of {}",
            hello.host, hello.cluster, p.name, self.cfg.cluster
        )
    }

    /// This host's report with `heartbeat` as heartbeat's status, fencing
    /// and ftvmm asked for theirs at once, each given `within`.
    fn report_with(&self, mut heartbeat: Value, within: Duration) -> HostReport {
        // The two sockets are asked at once: a hung daemon costs one timeout.
        let (fencing, ftvmm) = std::thread::scope(|s| {
            let f = s.spawn(|| daemon_status(&self.cfg.fencing_socket, within));
            let v = daemon_status(&self.cfg.ftvmm_socket, within);
            let f = f
                .join()
                .unwrap_or_else(|_| json!({"error": "status thread panicked"}));
            (f, v)
        });
        if let (Some(p), Some(obj)) = (self.live().persisted, heartbeat.as_object_mut()) {
            // `ftctl status --cluster` shows it under the host (render.rs).
            obj.insert(
                "applied_config".into(),
                json!({"generation": p.generation, "digest": hex::encode(p.digest), "changes": p.changes}),
            );
        }
        HostReport {
            host: self.cfg.node.name.clone(),
            config_generation: self.cfg.config_generation,
            config_digest: digest_hex(&self.cfg.config_id()),
            unix_ms: events::unix_ms_now(),
            heartbeat,
            fencing,
            ftvmm,
        }
    }
}

/// Why asking another host ([`Service::ask_host`]) failed; Display is the
/// reason, starting with the host's address once it answered.
#[derive(Debug, thiserror::Error)]
enum AskError {
    /// It refused before the Noise handshake ([`noise::PeerError::Refused`]):
    /// it did nothing with the exchange.
    #[error("{0}")]
    Refused(String),
    /// Its deadline passed after it connected (the reason as the socket
    /// said it; a report's gathering says it with the deadline).
    #[error("{0}")]
    Late(String),
    #[error("{0}")]
    Failed(String),
}

/// A daemon's `Status` object, or `{"error": why}` (no answer within
/// `within` among the reasons).
fn daemon_status(path: &std::path::Path, within: Duration) -> Value {
    match ctl::query_within(path, &Request::Status, within) {
        Ok(Response::Status { status }) => status,
        Ok(other) => json!({ "error": format!("unexpected answer {other:?}") }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

impl Backend for Service {
    fn cluster(&self) -> String {
        self.cfg.cluster.clone()
    }

    fn host(&self) -> String {
        self.cfg.node.name.clone()
    }

    fn operators(&self) -> Operators {
        self.live().operators
    }

    fn reply_key(&self) -> [u8; 32] {
        self.cfg.node.private_key
    }

    fn host_report(&self) -> HostReport {
        self.report_with((self.heartbeat_status)(), ctl::QUERY_TIMEOUT)
    }

    fn cluster_report(&self) -> ClusterReport {
        self.gather()
    }

    fn apply(&self, config: SignedConfig, operator: &str) -> Reply {
        self.apply_cluster(config, operator)
    }

    fn peer_apply(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        from: &str,
        msg: &str,
    ) -> Result<(), String> {
        self.answer_passed_on(stream, nonce, (from, msg), noise::Kind::Apply)
    }

    fn peer_pass_on(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        from: &str,
        msg: &str,
    ) -> Result<(), String> {
        self.answer_passed_on(stream, nonce, (from, msg), noise::Kind::PassOn)
    }

    fn peer_fetch(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        from: &str,
        msg: &str,
    ) -> Result<(), String> {
        self.answer_host(stream, nonce, (from, msg), noise::Kind::Fetch, |_| {
            self.applied_for(from)
        })
    }

    fn metrics(&self) -> String {
        metrics::openmetrics(&self.host_report())
    }

    fn peer_query(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        from: &str,
        msg: &str,
    ) -> Result<(), String> {
        // Within the asker's deadline, a busy daemon said as such.
        let report = || self.report_with((self.heartbeat_status)(), DAEMON_BUDGET);
        self.answer_host(stream, nonce, (from, msg), noise::Kind::Status, |_| {
            serde_json::to_vec(&report()).expect("a report serializes")
        })?;
        tracing::debug!("status service: report sent to host {from}");
        Ok(())
    }
}
