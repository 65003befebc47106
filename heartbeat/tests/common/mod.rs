//! What the integration tests share: the test clusters' node configs
//! (`hosts`, the file the unit tests use too), waiting on a condition, and
//! the loopback cluster the `ftctl apply` tests share: three status
//! services on 127.79.`net`.x with temp config disks (real signed images),
//! real TCP, Noise between hosts. Each test file uses part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::config_id::ConfigId;
use config_schema::ctl::{Request, Response};
use config_schema::ctl_server::{self, Policy, Senders};
use config_schema::model::{ClusterConfig, Operator};
use config_schema::peer::Programs;
use config_schema::remote::apply::{self, HostApplied};
use config_schema::remote::auth::{OperatorKey, Operators};
use config_schema::remote::{client, Reply};
use config_schema::signed::SignedConfig;
use config_schema::{disk, keys, slots};
use heartbeat::status_service::{ApplyTarget, Service, ServiceConfig};
use ring::signature::Ed25519KeyPair;

#[path = "../../src/test_hosts.rs"]
pub mod hosts;
pub use hosts::NAMES;

pub const TCP: u16 = 17431;
pub const T: Duration = Duration::from_secs(30);
/// How long any condition may take to become true on a slow shared machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `cond` every 50 ms until it holds; fails the test after [`DEADLINE`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon's VM-network view, as ftvmm asks for it (`Request::VmNetwork`).
pub fn vm_view(d: &heartbeat::Daemon) -> config_schema::ctl::VmNetView {
    match d.handle().handle(Request::VmNetwork) {
        Response::VmNetwork { view } => view,
        other => panic!("{other:?}"),
    }
}

pub fn host_key(i: usize) -> [u8; 32] {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dev-keys/hosts");
    let text = std::fs::read_to_string(format!("{dir}/{}.key", NAMES[i])).unwrap();
    keys::parse_hex_key(&text).unwrap()
}

pub fn dev_key() -> OperatorKey {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/dev-keys/operators/dev-operator.pk8"
    );
    OperatorKey::from_pkcs8(&std::fs::read(p).unwrap()).unwrap()
}

pub fn other_key() -> OperatorKey {
    OperatorKey::from_pkcs8(&keys::generate_signing_key().unwrap().0).unwrap()
}

/// The example cluster at `generation`, with the development operator.
pub fn config(generation: u64) -> ClusterConfig {
    let mut c = config_schema::parse(include_str!("../../../examples/cluster.toml"))
        .unwrap()
        .config;
    c.cluster.generation = generation;
    c.operators = vec![Operator {
        name: "dev-operator".into(),
        public_key: dev_key().public_hex(),
    }];
    c
}

/// A cluster of services on 127.79.`net`.x with config disks in a temp dir.
pub struct Cluster {
    pub net: u8,
    /// The services' catch-up period (`None` in most tests: only what an
    /// apply does is under test there).
    pub catch_up_every: Option<Duration>,
    /// Services find their disk by scanning `<dir>/root-<host>/{sys/block,dev}`
    /// as on the appliance, instead of being told the path.
    pub scan: bool,
    pub dir: tempfile::TempDir,
    pub signer: Ed25519KeyPair,
    /// Hosts whose ftvmm socket is a fake that records what it is told
    /// (the others have none).
    pub ftvmm: Vec<usize>,
    pub told: Arc<Mutex<Vec<(usize, Request)>>>,
    /// Each started host's heartbeat live timing.
    pub timings: Mutex<Vec<(usize, Arc<heartbeat::live::LiveTiming>)>>,
}

impl Cluster {
    pub fn new(net: u8) -> Self {
        Self::with_scan(net, false)
    }

    pub fn with_scan(net: u8, scan: bool) -> Self {
        let (pk8, public) = keys::generate_signing_key().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trust.pub"), public).unwrap();
        let signer = keys::load_signing_key(&pk8).unwrap();
        for (i, name) in NAMES.iter().enumerate() {
            let mut img = disk::write_disk(&config(7), name, &host_key(i), &signer).unwrap();
            // As init leaves it after booting generation 7.
            img[disk::STATE_OFFSET as usize..].copy_from_slice(&disk::encode_state(7));
            std::fs::write(dir.path().join(name), img).unwrap();
        }
        let c = Cluster {
            net,
            catch_up_every: None,
            scan,
            dir,
            signer,
            ftvmm: Vec::new(),
            told: Arc::default(),
            timings: Mutex::default(),
        };
        for (i, name) in NAMES.iter().enumerate() {
            let from = c.dir.path().join(name);
            if scan {
                let root = c.root(i);
                std::fs::create_dir_all(root.join("sys/block/vda")).unwrap();
                std::fs::create_dir_all(root.join("sys/block/vdb")).unwrap();
                std::fs::create_dir_all(root.join("dev")).unwrap();
                std::fs::write(root.join("dev/vda"), vec![0u8; 8192]).unwrap();
                std::fs::rename(&from, c.disk(i)).unwrap();
            }
        }
        c
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 79, self.net, i as u8 + 1], TCP))
    }

    pub fn root(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("root-{}", NAMES[i]))
    }

    pub fn disk(&self, i: usize) -> PathBuf {
        match self.scan {
            true => self.root(i).join("dev/vdb"),
            false => self.dir.path().join(NAMES[i]),
        }
    }

    /// Starts host `i`'s service (booted with generation 7).
    pub fn start(&self, i: usize) {
        let svc = self.service(i);
        let l = svc.bind().unwrap();
        std::thread::spawn(move || svc.serve(l));
    }

    /// Host `i`'s service bound but not serving yet ([`Paused`]).
    pub fn start_paused(&self, i: usize) -> Paused {
        let svc = self.service(i);
        let listeners = svc.bind().unwrap();
        Paused {
            svc: svc.start(),
            listeners,
        }
    }

    /// Host `i`'s service (booted with generation 7), not yet bound.
    fn service(&self, i: usize) -> Service {
        let node = hosts::config(i, 3, host_key, |j| self.addr(j), 100, 1000);
        let cfg = ServiceConfig {
            node,
            cluster: "demo".into(),
            config_generation: 7,
            config_digest: [0x1a; 32],
            operators: Operators::of(&config(7)),
            vms: vec![],
            host_order: NAMES.iter().map(|n| n.to_string()).collect(),
            port: TCP,
            mgmt: None,
            fencing_socket: self.dir.path().join("none"),
            ftvmm_socket: match self.ftvmm.contains(&i) {
                true => self.fake_ftvmm(i),
                false => self.dir.path().join("none"),
            },
            apply: Some(ApplyTarget {
                config_disk: (!self.scan).then(|| self.disk(i)),
                scan_root: match self.scan {
                    true => self.root(i),
                    false => Path::new("/nonexistent").into(),
                },
                trust_root: self.dir.path().join("trust.pub"),
                catch_up_every: self.catch_up_every,
                running: config(7),
                timing: ApplyTarget::timing_of(&config(7)),
            }),
        };
        if let Some(t) = &cfg.apply {
            self.timings
                .lock()
                .unwrap()
                .push((i, Arc::clone(&t.timing)));
        }
        Service::new(cfg, || serde_json::json!({"daemon": "heartbeat"}))
    }

    /// Serves host `i`'s fake ftvmm socket, recording every request.
    pub fn fake_ftvmm(&self, i: usize) -> PathBuf {
        let socket = self.dir.path().join(format!("ftvmm-{i}.sock"));
        let listener = ctl_server::bind(&socket).unwrap();
        let told = Arc::clone(&self.told);
        let policy = Policy::new("ftvmm", |_| Senders::AnyRoot, Programs::appliance());
        std::thread::spawn(move || {
            ctl_server::serve(listener, policy, move |req| {
                if let Request::ConfigApplied { .. } = req {
                    told.lock().unwrap().push((i, req));
                    return Response::Ok;
                }
                Response::Status {
                    status: serde_json::json!({"daemon": "ftvmm"}),
                }
            })
        });
        socket
    }

    pub fn signed(&self, c: &ClusterConfig) -> SignedConfig {
        SignedConfig::sign(c, &self.signer).unwrap()
    }

    /// `ftctl apply` to host `i`: the per-host results.
    pub fn apply(&self, i: usize, key: &OperatorKey, c: &ClusterConfig) -> (u64, Vec<HostApplied>) {
        match apply::apply(
            self.addr(i),
            key,
            &client::HostKeys::of(&config(7)),
            &self.signed(c),
            T,
        )
        .unwrap()
        {
            Reply::Applied { generation, hosts } => (generation, hosts),
            other => panic!("not an apply result: {other:?}"),
        }
    }

    /// The generation on host `i`'s disk (active slot and STATE agree).
    pub fn on_disk(&self, i: usize) -> u64 {
        let img = std::fs::read(self.disk(i)).unwrap();
        let trust = std::fs::read(self.dir.path().join("trust.pub")).unwrap();
        let a = slots::read_active(&img, &trust).unwrap();
        let st = disk::decode_state(&img[disk::STATE_OFFSET as usize..]).unwrap();
        assert_eq!(st, Some(a.current.generation()), "{}", NAMES[i]);
        a.current.generation()
    }

    /// The generation on host `i`'s disk once the active slot and STATE agree, or
    /// `None` while a write is under way (the daemon writes the slot, then STATE:
    /// a poll between the two sees them differ, which is not a failure).
    pub fn settled_on_disk(&self, i: usize) -> Option<u64> {
        let img = std::fs::read(self.disk(i)).ok()?;
        let trust = std::fs::read(self.dir.path().join("trust.pub")).ok()?;
        let a = slots::read_active(&img, &trust).ok()?;
        let st = disk::decode_state(&img[disk::STATE_OFFSET as usize..]).ok()?;
        (st == Some(a.current.generation())).then(|| a.current.generation())
    }
}

/// Configs of `generation` that differ (in `timing.lag_limit_ms`, a live
/// change), with their ids, lowest id first.
pub fn same_generation(generation: u64, n: u64) -> Vec<(ClusterConfig, ConfigId)> {
    let mut v: Vec<_> = (0..n)
        .map(|k| {
            let mut c = config(generation);
            c.timing.lag_limit_ms = 400 + k;
            let id = ConfigId::of_canonical(generation, &config_schema::canonical::encode(&c));
            (c, id)
        })
        .collect();
    v.sort_by_key(|(_, id)| *id);
    v
}

impl Cluster {
    /// The config id on host `i`'s disk (active slot and STATE agree).
    pub fn id_on_disk(&self, i: usize) -> ConfigId {
        self.settled_id(i)
            .unwrap_or_else(|| panic!("{}: slot and STATE differ", NAMES[i]))
    }

    /// The config id on host `i`'s disk once the active slot and STATE agree
    /// (see [`Cluster::settled_on_disk`]).
    pub fn settled_id(&self, i: usize) -> Option<ConfigId> {
        let img = std::fs::read(self.disk(i)).ok()?;
        let trust = std::fs::read(self.dir.path().join("trust.pub")).ok()?;
        let a = slots::read_active(&img, &trust).ok()?;
        let st = disk::decode_state_id(&img[disk::STATE_OFFSET as usize..]).ok()?;
        (st == Some(a.current.id)).then_some(a.current.id)
    }

    /// Persists `c` on host `i`'s disk directly (before its service starts).
    pub fn seed(&self, i: usize, c: &ClusterConfig) {
        let trust = std::fs::read(self.dir.path().join("trust.pub")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.disk(i))
            .unwrap();
        config_schema::persist::persist(&mut f, &trust, &self.signed(c)).unwrap();
    }
}

/// A host's service that listens but does not answer yet: a host that
/// connects waits in the listen backlog (for its hello, up to
/// `status_service::PEER_CONNECT`) until [`Paused::serve`]. Meanwhile the
/// test can run the service's catch-up (`svc.catch_up_once()`; it runs no
/// catch-up of its own unless `Cluster::catch_up_every` says so).
pub struct Paused {
    pub svc: Arc<Service>,
    listeners: Vec<TcpListener>,
}

impl Paused {
    /// Answers from now on, the connections waiting first.
    pub fn serve(self) {
        for l in self.listeners {
            let svc = Arc::clone(&self.svc);
            std::thread::spawn(move || Service::serve_on(&svc, l));
        }
    }
}

pub fn lines(hosts: &[HostApplied]) -> Vec<String> {
    hosts.iter().map(|h| h.line.clone()).collect()
}
