//! The agent's state on one host: the region (header check and
//! initialization), its own lease renewals and what it read of the others',
//! and the decisions it made. The daemon (`main.rs`) runs it in threads; tests
//! run it on a temporary file.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{LeaseView, Response};
use config_schema::runtime::RuntimeConfig;
use serde::Serialize;

use crate::io::SectorIo;
use crate::layout::{decode_header, DecodeError, Geometry, LeaseRecord, VERSION};
use crate::lease::{LeaseTiming, Liveness, OwnLease};
use crate::paxos::{decide, Outcome};

/// How long one `Acquire` may take before it is answered with an error. Below
/// the 5 s read timeout of `config_schema::ctl::query`.
pub const ACQUIRE_BOUND: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("host {0} is not in the config")]
    UnknownHost(String),
    #[error("storage i/o: {0}")]
    Io(String),
    #[error(
        "the fencing region's header names another layout (version {version}, {hosts} hosts, \
         {vms} vms, ring {ring}, names digest {digest:08x}); this config needs version {VERSION}, \
         {want_hosts} hosts, {want_vms} vms, ring {want_ring}, names digest {want_digest:08x}"
    )]
    Mismatch {
        version: u32,
        hosts: u32,
        vms: u32,
        ring: u32,
        digest: u32,
        want_hosts: u32,
        want_vms: u32,
        want_ring: u32,
        want_digest: u32,
    },
    #[error("the fencing region's header sector is damaged ({0}) and not blank")]
    Damaged(DecodeError),
}

/// What happened to the region header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// Found, matching this config.
    Found,
    /// Was blank; this host wrote it.
    Initialized,
}

#[derive(Debug, Default, Serialize)]
struct Counters {
    renewals: u64,
    failures: u64,
    #[serde(skip)]
    last_ok: Option<Instant>,
    last_error: Option<String>,
    renewing: Option<bool>,
}

/// One host's fencing agent.
pub struct Agent {
    pub hosts: Vec<String>,
    pub vms: Vec<String>,
    pub me: u32,
    pub geo: Geometry,
    pub timing: LeaseTiming,
    io: Arc<dyn SectorIo>,
    own: Mutex<OwnLease>,
    liveness: Mutex<Liveness>,
    counters: Mutex<Counters>,
    region: Mutex<Option<Result<RegionState, AgentError>>>,
    decisions: Mutex<BTreeMap<(String, u64), String>>,
    paxos: Arc<Mutex<()>>,
}

impl Agent {
    /// The agent of the runtime config's host on `io` (touches no storage).
    pub fn new(
        rt: &RuntimeConfig,
        io: Arc<dyn SectorIo>,
        incarnation: u64,
    ) -> Result<Self, AgentError> {
        let c = &rt.config;
        let me = c
            .hosts
            .iter()
            .position(|h| h.name == rt.host_name)
            .ok_or_else(|| AgentError::UnknownHost(rt.host_name.clone()))? as u32;
        let timing = LeaseTiming::from_config(&c.timing);
        Ok(Agent {
            hosts: c.hosts.iter().map(|h| h.name.clone()).collect(),
            vms: c.vms.iter().map(|v| v.name.clone()).collect(),
            me,
            geo: Geometry::of_config(c),
            timing,
            io,
            own: Mutex::new(OwnLease::new(me, incarnation)),
            liveness: Mutex::new(Liveness::new(c.hosts.len(), timing.timeout)),
            counters: Mutex::new(Counters::default()),
            region: Mutex::new(None),
            decisions: Mutex::new(BTreeMap::new()),
            paxos: Arc::new(Mutex::new(())),
        })
    }

    /// Checks the header, writing it if the sector is blank (every host may
    /// race to do so: the content is a function of the config, so identical
    /// writes are harmless). The result is kept; I/O errors are not (retry).
    pub fn init_region(&self) -> Result<RegionState, AgentError> {
        if let Some(r) = self.region.lock().expect("lock").clone() {
            return r;
        }
        let r = self.check_header();
        if !matches!(r, Err(AgentError::Io(_))) {
            *self.region.lock().expect("lock") = Some(r.clone());
        }
        r
    }

    fn check_header(&self) -> Result<RegionState, AgentError> {
        let io_err = |e: std::io::Error| AgentError::Io(e.to_string());
        let s = self.io.read(0).map_err(io_err)?;
        match decode_header(&s) {
            Ok(h) if h.version == VERSION && h.geometry == self.geo => Ok(RegionState::Found),
            Ok(h) => Err(AgentError::Mismatch {
                version: h.version,
                hosts: h.geometry.hosts,
                vms: h.geometry.vms,
                ring: h.geometry.ring,
                digest: h.geometry.names_digest,
                want_hosts: self.geo.hosts,
                want_vms: self.geo.vms,
                want_ring: self.geo.ring,
                want_digest: self.geo.names_digest,
            }),
            Err(DecodeError::Blank) => {
                self.io
                    .write(0, &self.geo.encode_header())
                    .map_err(io_err)?;
                Ok(RegionState::Initialized)
            }
            Err(e) => Err(AgentError::Damaged(e)),
        }
    }

    fn region_ok(&self) -> Result<(), String> {
        match &*self.region.lock().expect("lock") {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("fencing region not checked yet (storage unreachable?)".into()),
        }
    }

    /// One renewal: write the own lease sector (issued at `issued`), then read
    /// every other host's. Returns a console line when renewal starts or stops
    /// succeeding.
    pub fn renew_once(&self, issued: Instant) -> (Result<(), String>, Option<String>) {
        let result = self.renew_io(issued);
        let mut c = self.counters.lock().expect("lock");
        let ok = result.is_ok();
        match &result {
            Ok(()) => {
                c.renewals += 1;
                c.last_ok = Some(issued);
            }
            Err(e) => {
                c.failures += 1;
                c.last_error = Some(e.clone());
            }
        }
        let line = (c.renewing != Some(ok)).then(|| match &result {
            Ok(()) => format!(
                "fencing: lease renewed (host {}, every {} ms, timeout {} ms)",
                self.hosts[self.me as usize],
                self.timing.renew.as_millis(),
                self.timing.timeout.as_millis()
            ),
            Err(e) => format!("fencing: lease renewal failed: {e}"),
        });
        c.renewing = Some(ok);
        (result, line)
    }

    fn renew_io(&self, issued: Instant) -> Result<(), String> {
        self.init_region().map_err(|e| e.to_string())?;
        let rec = self.own.lock().expect("lock").bump();
        let me = self.me;
        self.io
            .write(self.geo.lease_sector(me), &rec.encode())
            .map_err(|e| format!("writing own lease: {e}"))?;
        self.liveness
            .lock()
            .expect("lock")
            .own_renewed(me as usize, rec, issued);
        for h in (0..self.geo.hosts).filter(|&h| h != me) {
            let s = self
                .io
                .read(self.geo.lease_sector(h))
                .map_err(|e| format!("reading lease of {}: {e}", self.hosts[h as usize]))?;
            let rec = LeaseRecord::decode(&s).ok().filter(|r| r.host == h);
            self.liveness
                .lock()
                .expect("lock")
                .observe(h as usize, rec, Instant::now());
        }
        Ok(())
    }

    /// Renewals that succeeded so far.
    pub fn renewals(&self) -> u64 {
        self.counters.lock().expect("lock").renewals
    }

    /// `Request::Leases`.
    pub fn leases(&self, now: Instant) -> Vec<LeaseView> {
        self.liveness.lock().expect("lock").views(&self.hosts, now)
    }

    /// Hosts whose lease this host judges expired (seen, and not moving for
    /// the lease timeout): see [`Liveness::expired`].
    pub fn expired(&self, now: Instant) -> Vec<String> {
        let l = self.liveness.lock().expect("lock");
        (0..self.hosts.len())
            .filter(|&h| l.expired(h, now))
            .map(|h| self.hosts[h].clone())
            .collect()
    }

    /// `Request::Acquire`: runs Disk Paxos for (`vm`, `generation`), answering
    /// within about `bound`.
    pub fn acquire(self: &Arc<Self>, vm: &str, generation: u64, bound: Duration) -> Response {
        let err = |message: String| Response::Error { message };
        let Some(v) = self.vms.iter().position(|n| n == vm) else {
            return err(format!("fencing: no vm {vm:?} in the config"));
        };
        let deadline = Instant::now() + bound;
        let (tx, rx) = mpsc::channel();
        let agent = Arc::clone(self);
        // A worker, so that a hung device cannot hold the answer past `bound`.
        std::thread::spawn(move || {
            let Ok(_one_at_a_time) = agent.paxos.lock() else {
                return;
            };
            if Instant::now() >= deadline {
                return;
            }
            // The header check may do I/O too: here, inside the bound.
            if let Err(e) = agent.init_region() {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            let backoff = agent.timing.renew / 10;
            let r = decide(
                &*agent.io, agent.geo, agent.me, v as u32, generation, deadline, backoff,
            );
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        let answer = match rx.recv_timeout(bound + Duration::from_millis(100)) {
            Ok(Ok(Outcome::Decided { owner })) => owner,
            Ok(Ok(Outcome::Superseded { by })) => {
                return err(format!(
                    "fencing: vm {vm} generation {generation} is superseded by generation {by}"
                ))
            }
            Ok(Ok(Outcome::IoFailed)) => unreachable!("decide retries failed I/O"),
            Ok(Err(e)) => return err(format!("fencing: vm {vm} generation {generation}: {e}")),
            Err(_) => {
                return err(format!(
                    "fencing: vm {vm} generation {generation}: no answer from storage within {} ms",
                    bound.as_millis()
                ))
            }
        };
        let owner = self.hosts[answer as usize].clone();
        let first = self
            .decisions
            .lock()
            .expect("lock")
            .insert((vm.to_string(), generation), owner.clone())
            .is_none();
        if first {
            println!("fencing: decided vm={vm} generation={generation} owner={owner}");
        }
        Response::Decided {
            vm: vm.to_string(),
            generation,
            won: answer == self.me,
            owner,
        }
    }

    /// Status fields of the agent.
    pub fn status(&self, now: Instant) -> serde_json::Value {
        let c = self.counters.lock().expect("lock");
        let own = *self.own.lock().expect("lock");
        let decisions: Vec<serde_json::Value> = self
            .decisions
            .lock()
            .expect("lock")
            .iter()
            .map(|((vm, g), o)| serde_json::json!({"vm": vm, "generation": g, "owner": o}))
            .collect();
        let region = match &*self.region.lock().expect("lock") {
            Some(Ok(s)) => serde_json::json!({"state": s}),
            Some(Err(e)) => serde_json::json!({"state": "refused", "error": e.to_string()}),
            None => serde_json::json!({"state": "unchecked"}),
        };
        serde_json::json!({
            "region": region,
            "region_ok": self.region_ok().is_ok(),
            "geometry": self.geo,
            "timing_ms": {
                "renew": self.timing.renew.as_millis() as u64,
                "hold_after": self.timing.hold_after.as_millis() as u64,
                "confirm": self.timing.confirm.as_millis() as u64,
                "watchdog": self.timing.watchdog.as_millis() as u64,
                "lease_timeout": self.timing.timeout.as_millis() as u64,
            },
            "own_lease": {
                "renewing": c.renewing,
                "renewals": c.renewals,
                "failures": c.failures,
                "last_ok_ms_ago": c.last_ok.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                "last_error": c.last_error,
                "counter": own.counter,
                "incarnation": own.incarnation,
            },
            "leases": self.leases(now),
            "leases_expired": self.expired(now),
            "decisions": decisions,
        })
    }
}
