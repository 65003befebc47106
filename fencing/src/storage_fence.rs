//! The agent's storage fence: SCSI-3 persistent reservations on the shared
//! device (docs/design.md §3 item 5), built on [`crate::pr`]. The winner of a
//! generation removes the previous owner's key before it answers `Decided`,
//! so the old owner's late writes fail at the device whatever its clocks say.
//!
//! # Rules
//!
//! - **Offered or not.** The device is probed when the agent opens it
//!   ([`Probe`]; again at every renewal while the probe fails for a reason
//!   that may pass). Not offered (a file, virtio-blk, a target without
//!   persistent reservations or without Write Exclusive – Registrants Only, a
//!   reservation of other software): the agent works without it and says why
//!   (one console line, `Status` `storage_fence`).
//! - **Join** ([`crate::pr::fence::join`], this incarnation's key) right before
//!   this host's first write to its lease slot: after the slot claim's watch
//!   (an impostor never registers while the real host renews), and before any
//!   write, since an unregistered host cannot write a reserved device.
//! - **Depose before `Decided`.** Winning generation `g` of a VM, the agent
//!   finds the owner of the newest decided generation below `g` the ring holds.
//!   If that is another host, its keys are preempted before the answer —
//!   unless its lease is live and it does not publish the VM (it stopped
//!   acting for it; fencing it would reset a healthy host with every VM it
//!   runs). A Primary racing after losing its Secondary, or re-checking after
//!   a hold, wins after itself: nobody is deposed. Offered but not joined, a
//!   failed depose, or a scan that cannot name the previous owner: `Error`,
//!   never `Won` without the fence.
//! - **Preempted** (a write refused with RESERVATION CONFLICT while this
//!   host's key is gone, a `2a/03` or `2a/05` unit attention, or this host's
//!   key gone while another holds the reservation): final for this
//!   incarnation. The grant is withdrawn at once,
//!   every VM run here as Primary is deposed, the watchdog is starved, and
//!   the agent never registers again; a marker file (in `/run`, gone at the
//!   reboot) keeps a restarted agent from joining in the same boot.
//! - **Registrations lost** (this host's key gone, and the device holds no
//!   reservation or its PR generation went backwards: a target that does not
//!   persist registrations restarted; or a write refused with RESERVATION
//!   CONFLICT while this host's key is still registered: the iSCSI session
//!   was logged in again and the target, like tgt, ties registrations to the
//!   session, so the new I_T nexus is not registered — a preemption would
//!   have removed the key from every nexus): the agent joins again with the
//!   same key only if the deposition check of this renewal, and another one
//!   right after the registration, find nothing; otherwise it counts as
//!   preempted. The checks are what makes this safe: a host deposed before
//!   the second check sees it and takes its registration back; one deposed
//!   after it loses the new registration with the depose's PREEMPT, which
//!   removes the key from every nexus.
//!
//! Invariant: `Active` holds only after a successful join in this
//! incarnation, and nothing leaves `Preempted`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use config_schema::clock::BootInstant;

use crate::acquire::{previous_owner, scan_blocks, scan_highest, ScanError};
use crate::agent::Agent;
use crate::io::BlockIo;
use crate::layout::{Block, Running};
use crate::pr::fence::{self, FENCE_TYPE};
use crate::pr::{is_reservation_conflict, Key, PrError, Reservations};
use crate::renew::{Deposed, Renewal};

/// What a probe of the shared device found.
pub enum Probe {
    /// Persistent reservations with Write Exclusive – Registrants Only.
    Offered {
        dev: Arc<dyn Reservations>,
        /// Whether the target can persist registrations through its own
        /// restart (REPORT CAPABILITIES PTPL_C; `None`: not reported).
        persists: Option<bool>,
    },
    /// Not offered, and that will not change: why.
    Unavailable(String),
    /// The probe failed for a reason that may pass (transport): why.
    Retry(String),
}

/// Probes the shared device (again); `main.rs` wraps `pr::probe`.
pub type Prober = Box<dyn FnMut() -> Probe + Send>;

/// Where the storage fence stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Not probed yet, or the probe failed for a reason that may pass.
    Probing(String),
    Unavailable(String),
    /// Offered; not joined yet (the last failure, if any).
    Joining(Option<String>),
    Active,
    Preempted(String),
}

/// The storage fence of one agent (behind `Agent::fence`).
pub(crate) struct StorageFence {
    prober: Option<Prober>,
    dev: Option<Arc<dyn Reservations>>,
    persists: Option<bool>,
    /// This incarnation's key (`None`: the host id does not fit a key).
    key: Option<Key>,
    phase: Phase,
    holder: Option<Key>,
    /// PR generation of the last READ KEYS that listed this host's key.
    generation: Option<u32>,
    marker: Option<PathBuf>,
    /// Preemption said and acted on.
    said_preempted: bool,
    /// Keys removed by this host's deposes, and the last depose's line.
    removed: u64,
    last_depose: Option<String>,
    rejoins: u64,
    last_check_error: Option<String>,
}

impl StorageFence {
    /// Not probed: until [`Agent::offer_storage_fence`], the agent runs
    /// without persistent reservations.
    pub(crate) fn new(host_id: u32, incarnation: u64) -> StorageFence {
        StorageFence {
            prober: None,
            dev: None,
            persists: None,
            key: u16::try_from(host_id)
                .ok()
                .map(|id| Key::for_host(id, incarnation)),
            phase: Phase::Unavailable("the shared device was not probed".into()),
            holder: None,
            generation: None,
            marker: None,
            said_preempted: false,
            removed: 0,
            last_depose: None,
            rejoins: 0,
            last_check_error: None,
        }
    }

    fn probe(&mut self) -> Option<String> {
        let prober = self.prober.as_mut()?;
        let (phase, line) = match prober() {
            Probe::Offered { dev, persists } if self.key.is_some() => {
                self.dev = Some(dev);
                self.persists = persists;
                (Phase::Joining(None), None)
            }
            Probe::Offered { .. } => {
                let why = "the host id does not fit a reservation key (at most 65535)".to_string();
                (Phase::Unavailable(why.clone()), Some(why))
            }
            Probe::Unavailable(why) => (Phase::Unavailable(why.clone()), Some(why)),
            Probe::Retry(why) => (Phase::Probing(why.clone()), None),
        };
        if !matches!(phase, Phase::Probing(_)) {
            self.prober = None;
        }
        self.phase = phase;
        line.map(|why| format!("fencing: storage fencing not active: {why}"))
    }

    fn preempt(&mut self, why: String) {
        if !matches!(self.phase, Phase::Preempted(_)) {
            self.phase = Phase::Preempted(why);
        }
    }
}

/// The agent's block I/O, watched for reservation conflicts: the first
/// refused request is recorded for the next renewal to act on.
pub(crate) struct ConflictWatch {
    pub inner: Arc<dyn BlockIo>,
    pub seen: Arc<Mutex<Option<String>>>,
}

impl ConflictWatch {
    fn note<T>(&self, what: &str, index: u64, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if is_reservation_conflict(e) {
                let mut seen = self.seen.lock().expect("lock");
                seen.get_or_insert_with(|| {
                    format!("the device refused a {what} of block {index} of the fencing region with RESERVATION CONFLICT")
                });
            }
        }
        r
    }
}

impl BlockIo for ConflictWatch {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn read(&self, index: u64) -> std::io::Result<Block> {
        self.note("read", index, self.inner.read(index))
    }
    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        self.note("write", index, self.inner.write(index, data))
    }
    fn device_offset(&self, index: u64) -> u64 {
        self.inner.device_offset(index)
    }
}

/// What [`Agent::fence_for_win`] did before a win is answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WinFence {
    /// The console line of a depose, if a host was deposed.
    pub line: Option<String>,
    /// The previous owner's host was cut off with PREEMPT AND ABORT
    /// (`Response::Decided::storage_cut`).
    pub storage_cut: bool,
}

impl Agent {
    /// Hands the agent what the shared device offers (`probe` is called now,
    /// and again while it answers [`Probe::Retry`]). `marker`: the file that
    /// records a preemption for the rest of the boot; if it exists, this
    /// agent starts preempted. Returns the console line to print, if any.
    pub fn offer_storage_fence(&self, probe: Prober, marker: Option<PathBuf>) -> Option<String> {
        let mut f = self.fence.lock().expect("lock");
        f.prober = Some(probe);
        f.marker = marker.clone();
        if let Some(m) = marker.as_ref().filter(|m| m.exists()) {
            let earlier = std::fs::read_to_string(m).unwrap_or_default();
            f.prober = None;
            f.phase = Phase::Preempted(format!(
                "preempted earlier in this boot ({}: {}); a host rejoins only after a reboot",
                m.display(),
                earlier.trim()
            ));
            return None;
        }
        f.probe()
    }

    /// Whether persistent reservations fence this host now.
    pub fn storage_fence_active(&self) -> bool {
        self.fence.lock().expect("lock").phase == Phase::Active
    }

    /// Why this host counts as preempted at the storage, if it does.
    pub fn preempted(&self) -> Option<String> {
        match &self.fence.lock().expect("lock").phase {
            Phase::Preempted(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Joins the fence if the device offers it and this host has not joined
    /// yet; called right before this host's first write of its lease slot.
    /// `Err`: do not write yet (the join failed for a reason that may pass,
    /// or this host was preempted).
    pub(crate) fn join_fence(&self, lines: &mut Vec<String>) -> Result<(), String> {
        let mut f = self.fence.lock().expect("lock");
        if matches!(f.phase, Phase::Probing(_)) {
            lines.extend(f.probe());
        }
        match f.phase.clone() {
            Phase::Unavailable(_) | Phase::Active | Phase::Probing(_) => return Ok(()),
            Phase::Preempted(why) => return Err(format!("preempted at the storage: {why}")),
            Phase::Joining(_) => {}
        }
        let (dev, key) = (f.dev.clone().expect("offered"), f.key.expect("offered"));
        drop(f);
        let r = fence::join(&*dev, key);
        let mut f = self.fence.lock().expect("lock");
        if matches!(f.phase, Phase::Preempted(_)) {
            return Err("preempted at the storage".into());
        }
        match r {
            Ok(j) => {
                f.phase = Phase::Active;
                f.holder = Some(j.holder);
                f.generation = dev.read_keys().ok().map(|k| k.generation);
                let _ = dev.take_unit_attentions();
                lines.push(self.active_line(&f, &*dev, key, j.holder));
                Ok(())
            }
            Err(
                e @ (PrError::Conflict { .. }
                | PrError::Refused { .. }
                | PrError::NotScsi { .. }
                | PrError::Unsupported { .. }),
            ) => {
                let why = format!("joining refused: {e}");
                lines.push(format!("fencing: storage fencing not active: {why}"));
                f.phase = Phase::Unavailable(why);
                Ok(())
            }
            Err(e) => {
                let first = f.phase == Phase::Joining(None);
                f.phase = Phase::Joining(Some(e.to_string()));
                if first {
                    lines.push(format!(
                        "fencing: storage fencing: joining failed: {e} (retrying; no generation is won until it joins)"
                    ));
                }
                Err(format!("joining the storage fence: {e}"))
            }
        }
    }

    fn active_line(
        &self,
        f: &StorageFence,
        dev: &dyn Reservations,
        key: Key,
        holder: Key,
    ) -> String {
        let who = if holder == key {
            "this host".to_string()
        } else {
            self.key_owner(holder)
        };
        let persists = match f.persists {
            Some(false) => "; the target does not persist registrations (after a target restart hosts join again, docs/design.md §3 item 5)",
            _ => "",
        };
        format!(
            "fencing: storage fencing active on {}: key {key} registered, reservation {FENCE_TYPE} held by {who} ({holder}){persists}",
            dev.device()
        )
    }

    /// `host host-b` for an appliance key of a config host, else the key.
    fn key_owner(&self, k: Key) -> String {
        match k
            .host_id()
            .and_then(|id| self.host_ids.iter().position(|h| *h == u32::from(id)))
        {
            Some(i) => format!("host {}", self.hosts[i]),
            None => format!("key {k}"),
        }
    }

    /// After a renewal's steps: a refused write, the target's word, this
    /// host's key; preemption and what follows from it go into `r`.
    pub(crate) fn check_fence(&self, r: &mut Renewal) {
        let conflict = self.conflict.lock().expect("lock").take();
        let mut f = self.fence.lock().expect("lock");
        if matches!(f.phase, Phase::Probing(_)) {
            r.lines.extend(f.probe());
        }
        if f.phase == Phase::Active {
            drop(f);
            self.check_key(conflict, r);
            f = self.fence.lock().expect("lock");
        }
        let Phase::Preempted(why) = f.phase.clone() else {
            return;
        };
        let newly = !std::mem::replace(&mut f.said_preempted, true);
        if newly {
            if let Some(m) = &f.marker {
                if let Err(e) = std::fs::write(m, &why) {
                    tracing::warn!("fencing: cannot write {}: {e}", m.display());
                }
            }
        }
        let by = f
            .holder
            .map_or("the storage".to_string(), |h| self.key_owner(h));
        drop(f);
        self.on_preempted(why, by, newly, r);
    }

    fn on_preempted(&self, why: String, by: String, newly: bool, r: &mut Renewal) {
        if newly {
            r.lines.push(format!(
                "fencing: this host was preempted at the storage ({why}): withdrawing the output \
                 grant, stopping every VM it runs as primary, no longer feeding the watchdog; \
                 it joins again only after a reboot"
            ));
        }
        r.newly_preempted = newly;
        r.withhold = Some(format!("this host was preempted at the storage: {why}"));
        let running: Vec<Running> = self
            .publication
            .lock()
            .expect("lock")
            .running()
            .iter()
            .copied()
            .collect();
        for v in running {
            r.deposed.push(self.preempted_copy(v, &by));
        }
        r.preempted = Some(why);
    }

    /// The deposition to tell ftvmm for a copy this host runs when it was
    /// preempted: the ring's highest generation if another host owns it (a
    /// generation after the copy's: the exact deposition), else the next
    /// generation (the fence is per host: the copy may be deposed only
    /// because another VM of this host was taken over).
    fn preempted_copy(&self, v: Running, by: &str) -> Deposed {
        let vm = self.vm_name(v.vm);
        if let Ok(h) = scan_highest(&*self.io, &self.geo, v.vm) {
            if let Some(o) = h
                .owner
                .filter(|o| *o != self.me && h.generation >= v.generation)
            {
                return Deposed {
                    vm,
                    generation: h.generation,
                    by: self.hosts[o as usize].clone(),
                };
            }
        }
        Deposed {
            vm,
            generation: v.generation + 1,
            by: format!("{by} (preempted this host at the storage)"),
        }
    }

    /// Reads the keys: this host's still there, or preempted, or lost with
    /// a target restart (then joins again if no deposition is found).
    /// `conflict`: the device refused an I/O of this host since the last look.
    fn check_key(&self, conflict: Option<String>, r: &mut Renewal) {
        let (dev, key, seen) = {
            let f = self.fence.lock().expect("lock");
            (
                f.dev.clone().expect("active"),
                f.key.expect("active"),
                f.generation,
            )
        };
        let attentions = dev.take_unit_attentions();
        if let Some(ua) = attentions.iter().find(|s| s.is_preemption()) {
            let why = format!("the target reported {ua}");
            let holder = dev.read_reservation().ok().and_then(|res| res.held);
            let mut f = self.fence.lock().expect("lock");
            f.holder = holder.map(|(k, _)| k).or(f.holder);
            f.preempt(why);
            return;
        }
        let read = dev.read_keys().and_then(|k| {
            if k.contains(key) {
                Ok((k, None))
            } else {
                dev.read_reservation().map(|res| (k, Some(res)))
            }
        });
        let mut f = self.fence.lock().expect("lock");
        let (keys, res) = match (read, conflict.clone()) {
            (Ok(x), _) => x,
            (Err(e), Some(why)) => {
                f.preempt(format!("{why}, and reading the keys failed: {e}"));
                return;
            }
            (Err(e), None) => {
                f.last_check_error = Some(e.to_string());
                return;
            }
        };
        f.last_check_error = None;
        let Some(res) = res else {
            f.generation = Some(keys.generation);
            if let Some(why) = conflict {
                // Registered, yet refused: this I_T nexus is not registered
                // although the key is (through the nexus that registered it).
                // A preemption removes the key from every nexus, so this is
                // not one: the session was logged in again at a target that
                // ties registrations to the session (tgt). Join again like
                // after a target restart, between two deposition checks.
                drop(f);
                let lost = format!(
                    "{}: {why}, although this host's key {key} is registered: this host's I_T \
                     nexus is not (the target ties registrations to the iSCSI session, which was \
                     logged in again)",
                    dev.device()
                );
                self.rejoin(&*dev, key, lost, r);
            }
            return;
        };
        // A live target never counts its PR generation backwards.
        let went_back = seen.is_some_and(|g| keys.generation < g);
        match res.held {
            Some((holder, _)) if !went_back => {
                f.holder = Some(holder);
                let who = self.key_owner(holder);
                let gone = format!(
                    "this host's key {key} is no longer registered and {who} holds the reservation"
                );
                f.preempt(match conflict {
                    Some(why) => format!("{why}; {gone}"),
                    None => gone,
                });
            }
            _ => {
                drop(f);
                let lost = format!(
                    "{}: this host's key {key} is gone and the device holds no reservation or \
                     counts registrations from 0 again (the target lost its registrations)",
                    dev.device()
                );
                self.rejoin(&*dev, key, lost, r);
            }
        }
    }

    /// The device lost this host's registration (`lost` says how: a target
    /// restart without persistence, or a session logged in again where the
    /// target ties registrations to the session): join again only between
    /// two clean deposition checks; a deposition found after the
    /// registration takes it back.
    fn rejoin(&self, dev: &dyn Reservations, key: Key, lost: String, r: &mut Renewal) {
        let deposed = format!("{lost}, and a VM this host runs was deposed");
        match self.watch_deposition() {
            Ok(found) if found.is_empty() && r.deposed.is_empty() => {}
            Ok(_) => return self.fence.lock().expect("lock").preempt(deposed),
            Err(e) => {
                let e = format!("deposition check before joining again: {e}");
                self.fence.lock().expect("lock").last_check_error = Some(e);
                return;
            }
        }
        let joined = fence::join(dev, key);
        let after = self.watch_deposition();
        let mut f = self.fence.lock().expect("lock");
        match (joined, after) {
            (Ok(j), Ok(found)) if found.is_empty() => {
                f.holder = Some(j.holder);
                f.generation = dev.read_keys().ok().map(|k| k.generation);
                f.rejoins += 1;
                let _ = dev.take_unit_attentions();
                r.lines.push(format!(
                    "fencing: {lost}; joined again with the same key after clean deposition checks (reservation held by {})",
                    if j.holder == key { "this host".to_string() } else { self.key_owner(j.holder) }
                ));
            }
            (Err(e), _) => f.last_check_error = Some(format!("joining again: {e}")),
            (Ok(_), after) => {
                // Deposed meanwhile (or unknown): take the registration back.
                if let Err(e) = dev.unregister(key) {
                    tracing::warn!("fencing: taking back the registration {key}: {e}");
                }
                f.preempt(match after {
                    Ok(_) => deposed,
                    Err(e) => {
                        format!("{lost}, and the deposition check after joining again failed: {e}")
                    }
                });
            }
        }
    }

    /// Won generation `generation` of VM `vm`: deposes the previous owner at
    /// the storage if that is another host (see the module rules). `Ok`: the
    /// win may be answered (with a console line if a host was deposed).
    pub(crate) fn fence_for_win(&self, vm: u32, generation: u64) -> Result<WinFence, String> {
        let (dev, key) = {
            let f = self.fence.lock().expect("lock");
            match &f.phase {
                Phase::Unavailable(_) => return Ok(WinFence::default()),
                Phase::Active => (f.dev.clone().expect("active"), f.key.expect("active")),
                Phase::Probing(e) => return Err(format!("storage fencing: the device's persistent reservations are not known yet ({e}); no generation is won without them")),
                Phase::Joining(e) => return Err(format!("storage fencing: not joined yet ({}); no generation is won without it", e.as_deref().unwrap_or("joining"))),
                Phase::Preempted(why) => return Err(format!("storage fencing: this host was preempted at the storage: {why}")),
            }
        };
        let blocks = scan_blocks(&*self.io, &self.geo, vm).map_err(|e| match e {
            ScanError::Io(e) => format!("finding the previous owner: storage i/o failed: {e}"),
            ScanError::Corrupt(c) => self.alarm(&self.vm_name(vm), Some(generation), c),
        })?;
        let Some((prev, owner)) = previous_owner(&blocks, generation) else {
            return Ok(WinFence::default());
        };
        if owner == self.me || self.stopped_acting(owner, vm) {
            return Ok(WinFence::default());
        }
        let victim = self.host_ids[owner as usize] as u16;
        let name = &self.hosts[owner as usize];
        let vm_name = &self.vm_name(vm);
        match fence::depose(&*dev, key, victim) {
            Ok(d) => {
                let line = (!d.removed.is_empty()).then(|| {
                    let keys: Vec<String> = d.removed.iter().map(|k| k.to_string()).collect();
                    format!(
                        "fencing: deposed host {name} at the storage before answering vm {vm_name} generation {generation} (it owned generation {prev}): removed [{}] with {}",
                        keys.join(" "),
                        if d.aborted { "PREEMPT AND ABORT" } else { "PREEMPT (the target refused PREEMPT AND ABORT)" }
                    )
                });
                let mut f = self.fence.lock().expect("lock");
                f.removed += d.removed.len() as u64;
                if line.is_some() {
                    f.last_depose = line.clone();
                }
                Ok(WinFence {
                    // Keys removed by this depose with ABORT: the target
                    // terminated the victim's queued commands before the
                    // PREEMPT AND ABORT completed. No keys left to remove
                    // (an earlier attempt removed them, how is not known
                    // here) or plain PREEMPT: not counted as cut.
                    storage_cut: d.aborted && !d.removed.is_empty(),
                    line,
                })
            }
            Err(e @ PrError::Conflict { .. }) => {
                let why = format!("deposing host {name} was refused: {e}");
                self.fence.lock().expect("lock").preempt(why.clone());
                Err(format!("storage fencing: {why}"))
            }
            Err(e) => Err(format!(
                "storage fencing: deposing host {name} (owner of vm {vm_name} generation {prev}) failed: {e}; not answering the win without it"
            )),
        }
    }

    /// Host `h`'s lease is live and it does not publish `vm`: it stopped
    /// acting for it.
    fn stopped_acting(&self, h: u32, vm: u32) -> bool {
        let views = self.liveness.lock().expect("lock").views(
            &self.hosts,
            &self.slot_names(),
            BootInstant::now(),
        );
        let v = &views[h as usize];
        v.live && !v.running.contains(&self.vm_name(vm))
    }

    /// `Status` `storage_fence`.
    pub(crate) fn fence_status(&self) -> serde_json::Value {
        let f = self.fence.lock().expect("lock");
        let (state, why) = match &f.phase {
            Phase::Probing(w) => ("probing", Some(w.clone())),
            Phase::Unavailable(w) => ("unavailable", Some(w.clone())),
            Phase::Joining(w) => ("joining", w.clone()),
            Phase::Active => ("active", None),
            Phase::Preempted(w) => ("preempted", Some(w.clone())),
        };
        serde_json::json!({
            "active": f.phase == Phase::Active,
            "state": state,
            "why": why,
            "device": f.dev.as_ref().map(|d| d.device().to_string()),
            "key": f.key.map(|k| k.to_string()),
            "holder": f.holder.map(|k| k.to_string()),
            "persists_registrations": f.persists,
            "keys_removed": f.removed,
            "last_depose": f.last_depose,
            "rejoins": f.rejoins,
            "last_check_error": f.last_check_error,
        })
    }
}
