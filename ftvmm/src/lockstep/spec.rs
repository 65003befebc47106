//! What a pair member is given and what it shows: the spec both sides agree
//! on ([`PairSpec`]), the handle status and the daemon use to reach a running
//! member ([`PairHandle`]), and the errors of starting one ([`PairError`]).
//! A leaf module: the driver and the pair code import it, never the reverse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::channel::{ChannelError, Hello, Identity};
use super::grant::HostGrant;
use super::link::{Link, Notify};
use super::member::{Event, State};
use super::pause::PausePoint;
use super::primary::PrimaryLog;
use super::secondary::ReplayQueue;
use crate::runner::{RunError, VmSpec};

/// TCP port of the logging channel for the VM at `index` in the config.
pub fn channel_port(index: usize) -> u16 {
    7100 + index as u16
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
}

impl PairHandle {
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
    }

    /// The keeper's verdict on the paired Secondary `peer`: `Some(reason)`
    /// it could not take over now, `None` it could.
    pub fn set_secondary_unfit(&self, peer: &str, reason: Option<String>) {
        *self
            .secondary_unfit
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reason.map(|r| (peer.to_string(), r));
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
        let protection = self
            .protection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut v = serde_json::json!({
            "role": role,
            "generation": self.generation.load(Ordering::Relaxed),
        });
        if !protection.is_empty() {
            v["protection"] = protection.into();
        }
        let (here, peer) = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.member_state() {
            Some(State::Paired { .. }) => {
                v["primary"] = here.into();
                v["secondary"] = peer.clone().into();
                v["protection"] = self.paired_protection(&peer).into();
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
