//! The agent's state on one host: the region (header check and
//! initialization), its lease slot and renewals (`renew.rs`), what it read of
//! the others' leases, what it publishes, the decisions it made and the alarms
//! it raised. The daemon (`daemon.rs`, `main.rs`) runs it in threads; tests
//! run it on a temporary file or a loop device.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use config_schema::clock::BootInstant;
use config_schema::ctl::{LeaseView, RunningVm};
use config_schema::runtime::RuntimeConfig;
use serde::Serialize;

use crate::alarm::Alarms;
use crate::freeze::{Evidence, FreezeDetector};
use crate::io::BlockIo;
use crate::layout::{
    decode_header, DecodeError, Geometry, LeaseRecord, Running, VERSION, VERSION_2,
};
use crate::lease::{LeaseTiming, Liveness, OwnLease};
use crate::publish::Publication;
use crate::slot::SlotClaim;
use crate::storage_fence::{ConflictWatch, StorageFence};

pub use crate::acquire::ACQUIRE_BOUND;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("host {0} is not in the config")]
    UnknownHost(String),
    #[error("storage i/o: {0}")]
    Io(String),
    #[error(
        "the fencing region's header names another layout (version {version}, {block}-byte \
         blocks, {hosts} hosts, {vms} VM slots, ring {ring}, names digest {digest:08x}); this config \
         and device need version {VERSION}, {want_block}-byte blocks, {want_hosts} hosts, \
         {want_vms} VM slots, ring {want_ring}, names digest {want_digest:08x}"
    )]
    Mismatch {
        version: u32,
        block: u32,
        hosts: u32,
        vms: u32,
        ring: u32,
        digest: u32,
        want_block: u32,
        want_hosts: u32,
        want_vms: u32,
        want_ring: u32,
        want_digest: u32,
    },
    #[error(
        "the fencing region's header block is not this build's ({0}) and not blank; \
         to lay the region out again, stop fencing on every host and zero the region"
    )]
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
    /// Was version 2 with this config's VMs in the slots of their
    /// positions; this host rewrote it as version 3.
    Upgraded,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Counters {
    pub renewals: u64,
    pub failures: u64,
    #[serde(skip)]
    pub last_ok: Option<BootInstant>,
    pub last_error: Option<String>,
    pub renewing: Option<bool>,
    /// Disk Paxos runs of `Acquire` that decided (or found the instance
    /// superseded): how many, and how long each took from the request to
    /// the answer, publication and a win's storage fence included (µs).
    pub decide: DecideTimes,
}

/// How long `Acquire`s took to decide ([`Counters::decide`]).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct DecideTimes {
    pub runs: u64,
    pub us_total: u64,
    pub us_last: u64,
    pub us_max: u64,
}

impl DecideTimes {
    pub fn add(&mut self, took: std::time::Duration) {
        let us = took.as_micros() as u64;
        self.runs += 1;
        self.us_total += us;
        self.us_last = us;
        self.us_max = self.us_max.max(us);
    }
}

/// The own lease slot: the claim, the record, and what was written.
#[derive(Debug)]
pub(crate) struct OwnSlot {
    pub own: OwnLease,
    pub claim: SlotClaim,
    /// The last own-lease block whose write completed.
    pub written: Option<Vec<u8>>,
    /// One whose write failed after that (it may have landed anyway).
    pub maybe: Option<Vec<u8>>,
}

/// Freeze detection state.
#[derive(Debug)]
pub(crate) struct Freeze {
    pub detector: FreezeDetector,
    /// The evidence of a freeze not yet cleared by a clean renewal.
    pub active: Option<Evidence>,
    pub detections: u64,
}

/// One host's fencing agent.
pub struct Agent {
    pub hosts: Vec<String>,
    /// `hosts[].id` of the config, in config order (reservation keys).
    pub host_ids: Vec<u32>,
    /// VM names by fencing slot (`ClusterConfig::vm_slot`): the index of
    /// a VM's blocks and running-list entries. A slot no VM of this config
    /// has holds [`no_vm`]'s `(slot N)`, which no VM name can be, until a
    /// VM added live is learned there ([`Agent::learn`]).
    vms: RwLock<Vec<String>>,
    pub me: u32,
    pub geo: Geometry,
    pub timing: LeaseTiming,
    pub(crate) io: Arc<dyn BlockIo>,
    pub(crate) slot: Mutex<OwnSlot>,
    pub(crate) liveness: Mutex<Liveness>,
    pub(crate) freeze: Mutex<Freeze>,
    pub(crate) publication: Mutex<Publication>,
    pub(crate) counters: Mutex<Counters>,
    region: Mutex<Option<Result<RegionState, AgentError>>>,
    /// (vm, generation) -> (owner, config generation), as decided here.
    pub(crate) decisions: Mutex<BTreeMap<(String, u64), (String, u64)>>,
    pub(crate) alarms: Mutex<Alarms>,
    /// (vm index, generation) of running copies found deposed (said once).
    pub(crate) deposed: Mutex<BTreeSet<Running>>,
    /// One Disk Paxos run (or scan) at a time per VM, by VM index. The
    /// instances of different VMs are different blocks, so their rounds run
    /// side by side: a host taking over several Primaries at once decides
    /// them together, not one after another (measured with 8 VMs: the third
    /// of three decisions on one host waited for the first two, 125 → 266
    /// ms). One VM's runs stay serial: a run that outlived its bound still
    /// holds the lock, so a retry never overlaps it.
    pub(crate) paxos: Arc<Vec<Mutex<()>>>,
    /// Deposing a previous owner at the storage (persistent reservations)
    /// stays one at a time, as before per-VM Paxos.
    pub(crate) win_fence: Mutex<()>,
    /// Persistent reservations on the shared device.
    pub(crate) fence: Mutex<StorageFence>,
    /// The first I/O the device refused with RESERVATION CONFLICT since the
    /// last renewal looked (`io` records it).
    pub(crate) conflict: Arc<Mutex<Option<String>>>,
    /// The config the agent started with (a version 2 header is checked
    /// against it, [`Geometry::upgrades_v2`]).
    config: config_schema::ClusterConfig,
}

/// What [`Agent::vms`] holds for a slot no VM of the config has.
pub fn no_vm(slot: u32) -> String {
    format!("(slot {slot})")
}

/// VM names by fencing slot, up to the highest slot in use.
fn by_slot(c: &config_schema::ClusterConfig) -> Vec<String> {
    let n = (0..c.vms.len())
        .map(|i| c.vm_slot(i) + 1)
        .max()
        .unwrap_or(0);
    let mut v: Vec<String> = (0..n).map(no_vm).collect();
    for (i, vm) in c.vms.iter().enumerate() {
        v[c.vm_slot(i) as usize] = vm.name.clone();
    }
    v
}

impl Agent {
    /// The agent of the runtime config's host on `io`, whose block size is
    /// the layout's (touches no storage).
    pub fn new(
        rt: &RuntimeConfig,
        io: Arc<dyn BlockIo>,
        incarnation: u64,
    ) -> Result<Self, AgentError> {
        let c = &rt.config;
        let me = c
            .hosts
            .iter()
            .position(|h| h.name == rt.host_name)
            .ok_or_else(|| AgentError::UnknownHost(rt.host_name.clone()))? as u32;
        let timing = LeaseTiming::from_config(&c.timing);
        let geo = Geometry::of_config(c, io.block_size() as u32);
        let conflict = Arc::new(Mutex::new(None));
        let io: Arc<dyn BlockIo> = Arc::new(ConflictWatch {
            inner: io,
            seen: Arc::clone(&conflict),
        });
        let vms = by_slot(c);
        // A lock per slot the region holds (a VM learned later gets one).
        let locks = vms.len().max(geo.vms as usize);
        let paxos = Arc::new((0..locks).map(|_| Mutex::new(())).collect());
        Ok(Agent {
            hosts: c.hosts.iter().map(|h| h.name.clone()).collect(),
            host_ids: c.hosts.iter().map(|h| h.id).collect(),
            vms: RwLock::new(vms),
            me,
            geo,
            timing,
            io,
            slot: Mutex::new(OwnSlot {
                own: OwnLease::new(me, incarnation),
                claim: SlotClaim::new(timing.timeout, timing.renew * 2),
                written: None,
                maybe: None,
            }),
            liveness: Mutex::new(Liveness::new(c.hosts.len(), timing.timeout)),
            freeze: Mutex::new(Freeze {
                detector: FreezeDetector::new(c.hosts.len(), timing.renew),
                active: None,
                detections: 0,
            }),
            publication: Mutex::new(Publication::new(LeaseRecord::capacity(geo.block_len()))),
            counters: Mutex::new(Counters::default()),
            region: Mutex::new(None),
            decisions: Mutex::new(BTreeMap::new()),
            alarms: Mutex::new(Alarms::default()),
            deposed: Mutex::new(BTreeSet::new()),
            paxos,
            win_fence: Mutex::new(()),
            fence: Mutex::new(StorageFence::new(c.hosts[me as usize].id, incarnation)),
            conflict,
            config: c.clone(),
        })
    }

    /// Checks the header, writing it if the block is blank (every host may
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
            Ok(h) if h.version == VERSION && h.geometry.same_layout(&self.geo) => {
                Ok(RegionState::Found)
            }
            // Every host that finds the version 2 header writes the same
            // block (a function of the config, like the first header), and
            // a host still on a version 2 build keeps its header read at
            // start: the blocks it uses are where version 3 has them.
            Ok(h) if h.version == VERSION_2 && self.geo.upgrades_v2(&self.config, &h.geometry) => {
                self.io
                    .write(0, &self.geo.encode_header())
                    .map_err(io_err)?;
                println!(
                    "fencing: region header upgraded from layout version 2 ({} VMs) to 3 ({} VM \
                     slots): every VM's blocks stay where they were",
                    h.geometry.vms, self.geo.vms
                );
                Ok(RegionState::Upgraded)
            }
            Ok(h) => Err(self.mismatch(h.version, h.geometry)),
            Err(DecodeError::BlockSize { recorded, .. }) => Err(self.mismatch(
                VERSION,
                Geometry {
                    block: recorded,
                    ..self.geo
                },
            )),
            Err(DecodeError::Blank) => {
                self.io
                    .write(0, &self.geo.encode_header())
                    .map_err(io_err)?;
                Ok(RegionState::Initialized)
            }
            Err(e) => Err(AgentError::Damaged(e)),
        }
    }

    fn mismatch(&self, version: u32, h: Geometry) -> AgentError {
        AgentError::Mismatch {
            version,
            block: h.block,
            hosts: h.hosts,
            vms: h.vms,
            ring: h.ring,
            digest: h.names_digest,
            want_block: self.geo.block,
            want_hosts: self.geo.hosts,
            want_vms: self.geo.vms,
            want_ring: self.geo.ring,
            want_digest: self.geo.names_digest,
        }
    }

    /// The name of the VM in `slot` ([`no_vm`]'s `(slot N)` for one this
    /// config does not have: another host's config may).
    pub(crate) fn vm_name(&self, slot: u32) -> String {
        (self.slot_names().get(slot as usize).cloned()).unwrap_or_else(|| no_vm(slot))
    }

    /// VM names by slot ([`Agent::vms`]).
    pub fn slot_names(&self) -> std::sync::RwLockReadGuard<'_, Vec<String>> {
        self.vms.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes VM `vm` in fencing slot `slot`, as the asking ftvmm's config
    /// has it: nothing to do when this agent's table says the same; learned
    /// when `vm` is not in the table and no VM of it has the slot (a VM
    /// added live, `config_schema::live_add`); refused otherwise — the two
    /// configs disagree on the slot, and racing in either ring could let
    /// the VM win twice (docs/design.md §15).
    pub fn learn(&self, vm: &str, slot: u32) -> Result<(), String> {
        let mut names = self.vms.write().unwrap_or_else(|p| p.into_inner());
        if let Some(have) = names.iter().position(|n| n == vm) {
            if have as u32 == slot {
                return Ok(());
            }
            return Err(format!(
                "fencing: vm {vm}: this host's config has it in fencing slot {have}, the request \
                 says slot {slot}; refused (the two configs disagree)"
            ));
        }
        if slot >= self.geo.vms {
            return Err(format!(
                "fencing: vm {vm}: fencing slot {slot} is beyond the {} slots the fencing region \
                 holds",
                self.geo.vms
            ));
        }
        let at = slot as usize;
        if let Some(other) = names.get(at).filter(|n| **n != no_vm(slot)) {
            return Err(format!(
                "fencing: vm {vm}: fencing slot {slot} is vm {other}'s in this host's config; \
                 refused (a host reuses a slot after a reboot)"
            ));
        }
        while names.len() <= at {
            let n = names.len() as u32;
            names.push(no_vm(n));
        }
        names[at] = vm.to_string();
        println!("fencing: vm {vm}: learned in fencing slot {slot} (a VM added live)");
        Ok(())
    }

    /// The fencing slot of `vm`, or why it has none here: not in the
    /// config (nor learned), or beyond the slots the region holds.
    pub fn slot_of(&self, vm: &str) -> Result<u32, String> {
        let Some(v) = self.slot_names().iter().position(|n| n == vm) else {
            return Err(format!("fencing: no vm {vm:?} in the config"));
        };
        let v = v as u32;
        if v >= self.geo.vms {
            return Err(format!(
                "fencing: vm {vm}: fencing slot {v} is beyond the {} slots the fencing region \
                 holds ({} MiB in {}-byte blocks for {} hosts); give it a lower `slot` or \
                 enlarge storage.fencing",
                self.geo.vms, self.config.storage.fencing.size_mib, self.geo.block, self.geo.hosts
            ));
        }
        Ok(v)
    }

    fn region_ok(&self) -> Result<(), String> {
        match &*self.region.lock().expect("lock") {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("fencing region not checked yet (storage unreachable?)".into()),
        }
    }

    /// Renewals that succeeded so far.
    pub fn renewals(&self) -> u64 {
        self.counters.lock().expect("lock").renewals
    }

    /// Whether this host holds its lease slot.
    pub fn slot_held(&self) -> bool {
        self.slot.lock().expect("lock").claim.held()
    }

    /// Milliseconds since the last complete renewal (own write and every
    /// other host's lease read; `renew.rs`), `None` before the first.
    pub fn last_renewal_ok_ms(&self, now: BootInstant) -> Option<u64> {
        let c = self.counters.lock().expect("lock");
        c.last_ok
            .map(|t| now.saturating_duration_since(t).as_millis() as u64)
    }

    /// `Request::Leases`.
    pub fn leases(&self, now: BootInstant) -> Vec<LeaseView> {
        let mut v = self
            .liveness
            .lock()
            .expect("lock")
            .views(&self.hosts, &self.slot_names(), now);
        v[self.me as usize].running =
            self.names(&self.publication.lock().expect("lock").published());
        v
    }

    fn names(&self, list: &[Running]) -> Vec<String> {
        list.iter().map(|r| self.vm_name(r.vm)).collect()
    }

    /// Hosts whose lease this host judges expired (seen, and not moving for
    /// the lease timeout): see [`Liveness::expired`].
    pub fn expired(&self, now: BootInstant) -> Vec<String> {
        let l = self.liveness.lock().expect("lock");
        (0..self.hosts.len())
            .filter(|&h| l.expired(h, now))
            .map(|h| self.hosts[h].clone())
            .collect()
    }

    /// A grant is being sent to ftvmm; returns its epoch for [`Agent::on_running`].
    pub fn grant_sent(&self) -> u64 {
        self.publication.lock().expect("lock").grant_sent()
    }

    /// ftvmm answered the grant of epoch `epoch` with the VMs it runs or
    /// acquires as Primary. Returns a console line if some are unknown here.
    pub fn on_running(&self, vms: &[RunningVm], epoch: u64) -> Option<String> {
        let mut unknown = Vec::new();
        let list: Vec<Running> = vms
            .iter()
            .filter_map(|r| {
                match (r.slot.map(|s| self.learn(&r.vm, s)))
                    .unwrap_or(Ok(()))
                    .and_then(|()| self.slot_of(&r.vm))
                {
                    Ok(v) => Some(Running {
                        vm: v,
                        generation: r.generation,
                    }),
                    Err(_) => {
                        unknown.push(r.vm.clone());
                        None
                    }
                }
            })
            .collect();
        let dropped = self
            .publication
            .lock()
            .expect("lock")
            .on_running(list, epoch);
        (!unknown.is_empty() || dropped > 0).then(|| {
            format!(
                "fencing: ftvmm runs VMs this host cannot publish (not in the config: [{}]; \
                 beyond the lease block's room: {dropped})",
                unknown.join(", ")
            )
        })
    }

    /// Status fields of the agent.
    pub fn status(&self, now: BootInstant) -> serde_json::Value {
        // One lock at a time: the renewal takes them in its own order.
        let own_lease = {
            let c = self.counters.lock().expect("lock");
            let s = self.slot.lock().expect("lock");
            serde_json::json!({
                "renewing": c.renewing,
                "renewals": c.renewals,
                "failures": c.failures,
                "last_ok_ms_ago": c.last_ok.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                "last_error": c.last_error,
                "counter": s.own.counter,
                "incarnation": s.own.incarnation,
            })
        };
        let slot = self.slot.lock().expect("lock").claim.status();
        let decisions: Vec<serde_json::Value> = self
            .decisions
            .lock()
            .expect("lock")
            .iter()
            .map(|((vm, g), (o, c))| {
                serde_json::json!({"vm": vm, "generation": g, "owner": o, "config_generation": c})
            })
            .collect();
        let region = match &*self.region.lock().expect("lock") {
            Some(Ok(s)) => serde_json::json!({"state": s}),
            Some(Err(e)) => serde_json::json!({"state": "refused", "error": e.to_string()}),
            None => serde_json::json!({"state": "unchecked"}),
        };
        let published: Vec<serde_json::Value> = self
            .publication
            .lock()
            .expect("lock")
            .published()
            .iter()
            .map(|r| serde_json::json!({"vm": self.vm_name(r.vm), "generation": r.generation}))
            .collect();
        let freeze = {
            let f = self.freeze.lock().expect("lock");
            serde_json::json!({
                "detections": f.detections,
                "active": f.active.as_ref().map(|e| self.freeze_line(e)),
            })
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
                "grant_valid": self.timing.grant_valid.as_millis() as u64,
                "grant_period": self.timing.grant_period.as_millis() as u64,
            },
            "slot": slot,
            "own_lease": own_lease,
            "published": published,
            "freeze": freeze,
            "leases": self.leases(now),
            "leases_expired": self.expired(now),
            "decisions": decisions,
            "decide": self.counters.lock().expect("lock").decide,
            "alarms": self.alarms.lock().expect("lock").status(),
            "deposed": self.deposed.lock().expect("lock").len(),
            "storage_fence": self.fence_status(),
        })
    }
}
