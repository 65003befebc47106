//! What a pair member is given and what it shows: the spec both sides agree
//! on ([`PairSpec`]), the handle status and the daemon use to reach a running
//! member ([`PairHandle`]), and the errors of starting one ([`PairError`]).
//! A leaf module: the driver and the pair code import it, never the reverse.
//! The handle also records a `protection` event whenever the protection
//! status shows changes meaning (`protection_change.rs` decides).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::events::{self, EventKind};

use super::channel::{ChannelError, Hello, Identity};
use super::grant::HostGrant;
use super::link::{Link, Notify};
use super::member::{Event, State};
use super::pause::PausePoint;
use super::primary::PrimaryLog;
use super::protection_change::ProtectionChanges;
use super::secondary::ReplayQueue;
use crate::runner::{RunError, VmSpec};

/// TCP port of the logging channel for the VM in fencing slot `slot`
/// (`ClusterConfig::vm_slot`: its `slot`, or its position in `vms`). The
/// slot, not the position: a VM keeps it for life, so two hosts whose
/// configs list the VMs differently (one has taken a config that adds or
/// removes another VM, the other not yet) still meet on one port.
pub fn channel_port(slot: usize) -> u16 {
    7100 + slot as u16
}

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("logging channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("cannot read guest image {path}: {source}")]
    Image {
        path: String,
        source: std::io::Error,
    },
    #[error("secondary refused the pair: {0}")]
    Refused(String),
    #[error("pair start: {0}")]
    Protocol(String),
    #[error("stopped before the pair started")]
    Stopped,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("not starting: {0}")]
    NotStarting(String),
    /// Another live host runs the VM: wait as a standby for a transfer.
    #[error("not starting: {owner} runs the VM")]
    RunningElsewhere { owner: String },
}

/// What both sides must agree on, plus this host's identity.
#[derive(Clone)]
pub struct PairSpec {
    pub vm: VmSpec,
    pub hello: Hello,
    pub identity: Identity,
    pub lag_limit: Duration,
    /// This host's name.
    pub host: String,
    /// The other member's host name (empty when running alone).
    pub peer: String,
    /// Silence on the logging channel after which the peer is lost
    /// (`timing.failure_timeout_ms` as booted); also the freshness limit of
    /// acks, which never changes live. `lag_limit` is the booted one too.
    pub failure_timeout: Duration,
    /// What `ftctl apply` changed live (failure timeout, lag limit); the
    /// member's driver reads it each step (`live_timing` has the rules).
    pub live_timing: Arc<super::live_timing::LiveTiming>,
    /// Where `ftctl apply` says the VM may run now (`live_affinity` has the
    /// rules); the keeper and the listeners read it (the booted rule until
    /// a config changed it).
    pub live_affinity: Arc<super::live_affinity::LiveAffinity>,
    pub heartbeat_socket: PathBuf,
    pub fencing_socket: PathBuf,
    /// The host's output grant from fencing.
    pub grant: Arc<HostGrant>,
    /// The newest config generation this host took live changes from
    /// (`ftctl apply`; at least `hello.config_generation`, which stays the
    /// booted one both members pair under): every `Acquire` records it,
    /// and a start refuses a VM decided under a newer one (start.rs). So a
    /// power-off fenced under config `N` stops every host that has not
    /// taken `N` from starting the VM again.
    pub applied_config_generation: u64,
}

/// SHA-256 of the guest image file.
pub fn image_sha256(path: &Path) -> Result<[u8; 32], PairError> {
    let bytes = std::fs::read(path).map_err(|source| PairError::Image {
        path: path.display().to_string(),
        source,
    })?;
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(d.as_ref().try_into().expect("SHA-256 is 32 bytes"))
}

/// Live state a running pair member exposes to status, the daemon and test
/// hooks. Written by the member's driver and run threads.
#[derive(Default)]
pub struct PairHandle {
    /// The VM's name, for its events (empty in tests that need none).
    vm: String,
    /// The member's state, as shown in status (`member::State`'s Display).
    pub role: Mutex<String>,
    pub primary: Mutex<Option<Arc<PrimaryLog>>>,
    pub secondary: Mutex<Option<Arc<ReplayQueue>>>,
    /// `> 0`: ask both sides for a memory digest that many exits ahead.
    pub digest_request: Arc<AtomicU64>,
    pub generation: Arc<AtomicU64>,
    pub started: Mutex<Option<Instant>>,
    /// The generation this host acts (or is acquiring) in as Primary, for
    /// fencing's publication and deposition watch; 0: none.
    pub running: AtomicU64,
    /// The member's driver: the daemon posts fencing's grant and
    /// depositions here.
    events: Mutex<Option<Sender<Event>>>,
    /// The member's state as its driver last published it.
    pub member: Mutex<Option<State>>,
    /// Work for the vCPU thread of a Primary (live state transfer).
    pub pause: Arc<PausePoint>,
    /// A link to a newly joined Secondary, for the driver to adopt.
    pub new_link: Mutex<Option<Link>>,
    /// Protection as shown in status and on the console (respawn keeper).
    pub protection: Mutex<String>,
    /// When redundancy was last restored by a transfer.
    pub protected_at: Mutex<Option<Instant>>,
    /// While paired: the Secondary (named) and why it could not take over
    /// now (its host cannot renew its storage lease), as the keeper judged
    /// it (`respawn/secondary_lease.rs`); status then says `not protected`.
    pub secondary_unfit: Mutex<Option<(String, String)>>,
    /// This host and the member's peer, as its driver last published them.
    pub hosts: Mutex<(String, String)>,
    /// Whether the protection shown changed meaning (a `protection` event).
    protection_changes: Mutex<ProtectionChanges>,
}

impl PairHandle {
    /// The handle of a member of VM `vm`.
    pub fn for_vm(vm: &str) -> Self {
        PairHandle {
            vm: vm.to_string(),
            ..PairHandle::default()
        }
    }

    /// Sets the role shown in status.
    pub fn set_role(&self, role: &str) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = role.to_string();
    }

    /// The member's driver takes events from now on.
    pub fn attach(&self, tx: Sender<Event>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    pub fn detach(&self) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Posts `ev` to the member, if one runs. True if it was taken.
    pub fn post(&self, ev: Event) -> bool {
        let tx = self.events.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().is_some_and(|t| t.send(ev).is_ok())
    }

    /// The member's state now (`None` before its driver started).
    pub fn member_state(&self) -> Option<State> {
        self.member
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where a link reports to the member (a Secondary joined later).
    pub fn notify(self: &Arc<Self>) -> Notify {
        let h = Arc::downgrade(self);
        Arc::new(move |ev| {
            if let Some(h) = h.upgrade() {
                h.post(ev);
            }
        })
    }

    /// Hands the link of a joined Secondary to the member's driver.
    pub fn offer_link(&self, link: Link) {
        *self.new_link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    pub fn take_new_link(&self) -> Option<Link> {
        self.new_link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn set_protection(&self, p: &str) {
        *self.protection.lock().unwrap_or_else(|p| p.into_inner()) = p.to_string();
        self.note_protection();
    }

    /// The keeper's verdict on the paired Secondary `peer`: `Some(reason)`
    /// it could not take over now, `None` it could.
    pub fn set_secondary_unfit(&self, peer: &str, reason: Option<String>) {
        *self
            .secondary_unfit
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reason.map(|r| (peer.to_string(), r));
        self.note_protection();
    }

    /// The protection of a member paired with `peer`: protected unless the
    /// keeper found that `peer` could not take over.
    pub fn paired_protection(&self, peer: &str) -> String {
        match &*self
            .secondary_unfit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some((p, reason)) if p == peer => format!("not protected: {reason}"),
            _ => format!("protected: secondary {peer}"),
        }
    }

    /// The protection status shows for a member in `state` whose peer is
    /// `peer` (`None`: status shows none).
    fn shown_protection(&self, state: Option<&State>, peer: &str) -> Option<String> {
        if let Some(State::Paired { .. }) = state {
            return Some(self.paired_protection(peer));
        }
        let p = self
            .protection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (!p.is_empty()).then_some(p)
    }

    /// Records a `protection` event if the protection status shows now
    /// changed meaning (`protection_change.rs`). Called on every write of
    /// the line or the verdict: the keeper writes one at each look, so a
    /// member that left `Paired` is seen within a look too.
    fn note_protection(&self) {
        let peer = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let shown = self.shown_protection(self.member_state().as_ref(), &peer);
        let mut changes = self
            .protection_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // `on_line` is true only for a line (never for `None`).
        if let Some(line) = shown
            .as_deref()
            .filter(|_| changes.on_line(shown.as_deref()))
        {
            let vm = (!self.vm.is_empty()).then_some(self.vm.as_str());
            let text = match vm {
                Some(vm) => format!("ftvmm: vm {vm}: {line}"),
                None => format!("ftvmm: {line}"),
            };
            events::record(EventKind::Protection, vm, None, &text);
        }
    }

    /// Releases what waited for the host grant (it came back).
    pub fn kick(&self) {
        if let Some(log) = &*self.primary.lock().unwrap_or_else(|p| p.into_inner()) {
            log.kick();
        }
    }

    /// The generation this host runs the VM in as Primary, if it does.
    pub fn running_generation(&self) -> Option<u64> {
        match self.running.load(Ordering::SeqCst) {
            0 => None,
            g => Some(g),
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let role = self.role.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let p = self
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let s = self
            .secondary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let secs = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let mut v = serde_json::json!({
            "role": role,
            "generation": self.generation.load(Ordering::Relaxed),
        });
        let (here, peer) = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let state = self.member_state();
        if let Some(p) = self.shown_protection(state.as_ref(), &peer) {
            v["protection"] = p.into();
        }
        match state {
            Some(State::Paired { .. }) => {
                v["primary"] = here.into();
                v["secondary"] = peer.into();
            }
            Some(State::Following { .. } | State::Draining { .. }) => {
                v["primary"] = peer.into();
                v["secondary"] = here.into();
            }
            Some(State::Solo { .. } | State::Fenced { .. } | State::Rechecking { .. }) => {
                v["primary"] = here.into();
            }
            _ => {}
        }
        if let Some(t) = *self.protected_at.lock().unwrap_or_else(|p| p.into_inner()) {
            v["redundancy_restored_s_ago"] = serde_json::json!(t.elapsed().as_secs());
        }
        if let Some(p) = p {
            let st = p.status();
            let bytes = st["stats"]["log_bytes"].as_u64().unwrap_or(0);
            v["log"] = st;
            v["log_bytes_per_s"] = serde_json::json!(if secs > 0.0 {
                (bytes as f64 / secs) as u64
            } else {
                0
            });
        }
        if let Some(s) = s {
            v["replay"] = s.status();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_schema::events::Event as Recorded;

    /// The `protection` events of VM `vm` recorded so far (the ring is the
    /// process's: other tests' events are left out by the name).
    fn protection_events(vm: &str) -> Vec<Recorded> {
        events::recent()
            .into_iter()
            .filter(|e| e.kind == EventKind::Protection && e.vm.as_deref() == Some(vm))
            .collect()
    }

    fn paired(vm: &str) -> PairHandle {
        let h = PairHandle::for_vm(vm);
        *h.member.lock().unwrap() = Some(State::Paired { g: 3 });
        *h.hosts.lock().unwrap() = ("host-a".into(), "host-b".into());
        h
    }

    fn stale(ms: u64) -> Option<String> {
        Some(format!(
            "secondary host-b cannot renew its storage lease (for {ms} ms); it could not take over"
        ))
    }

    #[test]
    fn a_paired_vm_records_losing_and_regaining_protection_once_each() {
        let vm = "spec-test-paired";
        let h = paired(vm);
        h.set_secondary_unfit("host-b", None);
        assert!(protection_events(vm).is_empty(), "protected is no change");
        for ms in [1500, 1750, 2000] {
            h.set_secondary_unfit("host-b", stale(ms));
        }
        h.set_secondary_unfit("host-b", None);
        h.set_secondary_unfit("host-b", None);
        let got: Vec<String> = protection_events(vm).into_iter().map(|e| e.text).collect();
        assert_eq!(
            got,
            [
                format!("ftvmm: vm {vm}: not protected: {}", stale(1500).unwrap()),
                format!("ftvmm: vm {vm}: protected: secondary host-b"),
            ]
        );
        assert_eq!(h.status()["protection"], "protected: secondary host-b");
    }

    #[test]
    fn an_unpaired_vm_records_the_keeper_s_line_but_not_its_progress() {
        let vm = "spec-test-solo";
        let h = PairHandle::for_vm(vm);
        *h.member.lock().unwrap() = Some(State::Solo { g: 4 });
        h.set_protection("not protected: no host for a secondary (host-b is down)");
        h.set_protection("not protected: no host for a secondary (host-b is down; host-c is down)");
        h.set_protection("starting secondary on host-c (0%)");
        h.set_protection("starting secondary on host-c (37%)");
        assert_eq!(
            h.status()["protection"],
            "starting secondary on host-c (37%)"
        );
        h.set_protection("protected: secondary host-c");
        let got: Vec<String> = protection_events(vm).into_iter().map(|e| e.text).collect();
        assert_eq!(
            got,
            [
                format!("ftvmm: vm {vm}: not protected: no host for a secondary (host-b is down)"),
                format!("ftvmm: vm {vm}: protected: secondary host-c"),
            ]
        );
    }

    #[test]
    fn status_shows_the_paired_verdict_over_the_keeper_s_line() {
        let h = paired("spec-test-status");
        h.set_protection("protected: secondary host-b");
        h.set_secondary_unfit("host-b", stale(900));
        assert_eq!(
            h.status()["protection"],
            format!("not protected: {}", stale(900).unwrap())
        );
        *h.member.lock().unwrap() = Some(State::Solo { g: 3 });
        assert_eq!(h.status()["protection"], "protected: secondary host-b");
        h.set_protection("");
        assert!(h.status().get("protection").is_none());
    }
}
