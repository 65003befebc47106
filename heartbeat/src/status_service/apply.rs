//! `ftctl apply` on a host: persist a newer signed config on this host's
//! config disk, take what can change live, and pass it on to the other hosts
//! over Noise ([`noise::Kind::Apply`](super::noise::Kind::Apply)); one line
//! per host back.
//!
//! Rules:
//! - One apply at a time per host ([`Service::apply_lock`]): the check and
//!   the write are one step, so of two concurrent applies the newer ends on
//!   disk whichever order they come in (a lower one after a higher one is
//!   refused as not newer). Newer is the order of
//!   `config_schema::config_id`: a higher generation, or the same
//!   generation with a higher digest, so two operators' different configs
//!   of one generation end as the same one on every host (the one with the
//!   higher digest; a host holding it refuses the other and says so).
//! - The host an operator asked passes the config on unless every host
//!   would refuse it or it is older than this host's, the same generation
//!   with a lower digest included ([`pass_on_despite`]); a host that
//!   received it from another host does not pass it on.
//! - The asked host tells each host whether it persisted the config in
//!   this apply (`config_schema::remote::pass_on::PassOn`, over
//!   [`Kind::PassOn`]); a host that refuses that message before the
//!   handshake (one without it) gets the bare config over [`Kind::Apply`]
//!   ([`Service::pass_on`]).
//! - A host that was down catches up by itself ([`super::catch_up`]).
//! - A host whose last catch-up took the config it is offered says so
//!   ([`CaughtUp`]). When the catch-up took it from the asked host and the
//!   asked host persisted it in this apply, the catch-up was part of this
//!   apply ([`CaughtUp::during_this_apply`] says why): the host answers
//!   what that catch-up did, `Applied` or `NeedsReboot` (`host-b:
//!   generation 8 persisted (was 7); …; taken by this host's catch-up from
//!   host-a 212 ms before this request, during this apply`). Otherwise it
//!   refuses the config as held, with from whom and how long before the
//!   request its catch-up took it: nothing says whether that was in this
//!   apply, and a refusal never claims a persist.
//! - Live: what `config_schema::changes::LIVE` lists: the operators (taken
//!   here), heartbeat's timing (interval, failure timeout: taken here into
//!   [`ApplyTarget::timing`], which the daemon's threads read every round,
//!   `crate::live`) and each VM's power and ftvmm's timing (failure timeout,
//!   lag limit; ftvmm takes them: after every persist this host tells its
//!   ftvmm, `ctl::Request::ConfigApplied`, and tells it again every catch-up
//!   round, so an ftvmm that restarted or did not answer learns it; ftvmm
//!   ignores generations older than one it took, and takes one of the same
//!   generation in arrival order, so heartbeat tells it under the apply
//!   lock, in persist order, and the last it hears is this host's newest).
//!   Anything else is persisted and said to need a reboot. Status keeps
//!   reporting the generation the host booted (the one its daemons pair
//!   under); the VMs' power in the cluster report follows the live one.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use config_schema::changes::Changes;
use config_schema::config_id::ConfigId;
use config_schema::ctl::{self, Request, Response, VmPower};
use config_schema::events::{self, EventKind};
use config_schema::model::ClusterConfig;
use config_schema::persist::{self as disk_persist, PersistError};
use config_schema::remote::apply::{HostApplied, Outcome};
use config_schema::remote::auth::Operators;
use config_schema::remote::pass_on::PassOn;
use config_schema::remote::{Reply, ServerHello};
use config_schema::signed::SignedConfig;
use config_schema::timing_live;
use config_schema::Timing;

use super::noise::Kind;
use super::{config_disk, AskError, Service};
use crate::live::LiveTiming;
use crate::node::PeerConf;

/// Where a host persists applied configs.
#[derive(Debug, Clone)]
pub struct ApplyTarget {
    /// The config disk; `None`: found at apply time under `scan_root`.
    pub config_disk: Option<PathBuf>,
    /// Where block devices are looked for (`/` on the appliance).
    pub scan_root: PathBuf,
    /// The trust root (raw 32-byte Ed25519 public key).
    pub trust_root: PathBuf,
    /// How often to ask the other hosts for a newer applied config
    /// ([`super::catch_up`]); `None`: never.
    pub catch_up_every: Option<std::time::Duration>,
    /// The config the daemons run (what a new one is compared with).
    pub running: ClusterConfig,
    /// Heartbeat's live timing (the daemon reads it every round).
    pub timing: Arc<LiveTiming>,
}

impl ApplyTarget {
    /// The daemon's live timing, starting at `running`'s.
    pub fn timing_of(running: &ClusterConfig) -> Arc<LiveTiming> {
        let t = &running.timing;
        Arc::new(LiveTiming::new(
            t.heartbeat_interval_ms,
            t.failure_timeout_ms,
        ))
    }
}

/// What the running host has taken of the configs applied so far.
#[derive(Debug, Clone)]
pub struct Live {
    /// The config the daemons run, with the live changes applied (`None`
    /// without an [`ApplyTarget`]).
    pub running: Option<ClusterConfig>,
    pub operators: Operators,
    /// The newest config persisted since boot, if any.
    pub persisted: Option<Persisted>,
}

/// A config persisted since boot: its generation and what it changes
/// against the booted config (`changes::Changes` as one line).
#[derive(Debug, Clone)]
pub struct Persisted {
    pub generation: u64,
    /// Its digest ([`config_schema::config_id`]).
    pub digest: [u8; 32],
    pub changes: String,
    /// Every VM's power in it (what ftvmm is told, [`Service::tell_ftvmm`]).
    pub vms: Vec<VmPower>,
    /// Its timing (ftvmm is told it too).
    pub timing: Timing,
    /// The config itself (ftvmm takes the VMs it adds from it).
    pub config: Box<ClusterConfig>,
}

/// What this host's last catch-up persisted (kept under
/// [`Service::apply_lock`]): a pass-on or apply of that very config says
/// that and when the catch-up took it. The asked host's heartbeat announces
/// a new generation at once and a peer's catch-up can fetch and persist it
/// before the asked host's pass-on (a Noise handshake) arrives; a bare
/// "already holds this very config" then reads as if the peer had refused
/// what it just took (stop 36). How long ago tells "a moment before this
/// request" from "seconds ago" (stop 36's first try answered with the
/// catch-up's own result whenever the ids matched, and claimed a persist a
/// host had made seconds before the operator asked). The catch-up's own
/// result is the answer only when the catch-up provably belongs to this
/// apply ([`CaughtUp::during_this_apply`]).
#[derive(Debug, Clone)]
pub(super) struct CaughtUp {
    pub(super) id: ConfigId,
    pub(super) from: String,
    pub(super) at: Instant,
    /// What the catch-up apply did ([`persisted_text`]).
    pub(super) text: String,
    /// The catch-up's outcome: `NeedsReboot`, else `Applied` (it persisted).
    pub(super) needs_reboot: bool,
}

impl CaughtUp {
    /// Whether this catch-up is part of the apply `via` passes on: the
    /// pass-on comes from the host this catch-up took the config from, and
    /// that host persisted the config in this apply (the caller checked
    /// that the catch-up took this very config). Why that is enough: a host
    /// persists only a config newer than the one it holds, and what it
    /// holds only grows (its anti-rollback record), so before this apply's
    /// persist the sender never held the config and could hand it to no
    /// catch-up; this catch-up fetched it from the sender after that
    /// persist, i.e. during this apply. From another host, or without the
    /// flag (the sender held the config already, or is a host without
    /// `PassOn`), nothing says when the catch-up ran against this apply.
    pub(super) fn during_this_apply(&self, via: Via) -> bool {
        matches!(via, Via::PassOn { from, persisted_there: true } if from == self.from)
    }

    /// The catch-up's outcome as an apply's.
    fn outcome(&self) -> Outcome {
        match self.needs_reboot {
            true => Outcome::NeedsReboot,
            false => Outcome::Applied,
        }
    }
}

/// How a config reaches [`Service::apply_here`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via<'a> {
    /// An operator's `ftctl apply` to this host.
    Operator,
    /// Host `from` passes an operator's apply on; `persisted_there`: it
    /// persisted the config in this apply (`PassOn::persisted_by_sender`).
    PassOn {
        from: &'a str,
        persisted_there: bool,
    },
    /// This host's catch-up from peer `from` ([`super::catch_up`]).
    CatchUp { from: &'a str },
}

/// One host's result and whether an operator's apply passes it on.
pub(super) struct Local {
    pub(super) result: HostApplied,
    pass_on: bool,
    /// This call persisted the config (what a pass-on tells the others).
    persisted_now: bool,
}

impl Service {
    /// Persists `config` here (module rules) and takes its live changes.
    pub(super) fn apply_here(&self, config: &SignedConfig, via: Via) -> Local {
        let host = self.cfg.node.name.clone();
        let mut caught_up = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let persisted = match self.persist(config) {
            Ok(p) => p,
            Err(e) => return not_persisted(host, &e, caught_up.as_ref(), via),
        };
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let new = &persisted.config.config;
        let changes = match &live.running {
            Some(r) => Changes::between(r, new),
            None => Changes::default(),
        };
        live.operators = Operators::of(new);
        if let Some(r) = live.running.as_mut() {
            r.operators = new.operators.clone();
            // What the daemons take of the new timing (an interval that would
            // move fencing's lease renewal stays: `timing_live`).
            r.timing = timing_live::adoptable(&r.timing, &new.timing);
            // Affinity and the groups it names are live too (ftvmm takes
            // each VM's allowed hosts, `VmPower::allowed`).
            r.host_groups = new.host_groups.clone();
            for vm in r.vms.iter_mut() {
                if let Some(n) = new.vms.iter().find(|n| n.name == vm.name) {
                    vm.power = n.power;
                    vm.affinity = n.affinity.clone();
                }
            }
            // VMs added, as ftvmm takes them (`config_schema::live_add`).
            for n in &new.vms {
                if let Ok(added) = config_schema::live_add::with_added(r, new, &n.name) {
                    *r = added;
                }
            }
        }
        let vms = VmPower::all(new);
        live.persisted = Some(Persisted {
            generation: new.cluster.generation,
            digest: persisted.id.digest,
            changes: changes.to_string(),
            vms: vms.clone(),
            timing: new.timing.clone(),
            config: Box::new(new.clone()),
        });
        drop(live);
        if let Some(t) = &self.cfg.apply {
            if let Some(line) = t.timing.adopt(new.cluster.generation, &new.timing) {
                println!("{line}");
            }
        }
        let told = match self.tell_ftvmm(new.cluster.generation, vms, &new.timing, new) {
            Ok(()) => String::new(),
            Err(why)
                if changes.live.iter().any(|c| {
                    ["vms[", "timing.", "host_groups"]
                        .iter()
                        .any(|p| c.starts_with(p))
                }) =>
            {
                format!("; ftvmm not told yet ({why}): told again every catch-up round")
            }
            Err(why) => {
                tracing::info!("apply: ftvmm not told: {why}");
                String::new()
            }
        };
        let text = persisted_text(&persisted, &format!("{changes}{told}"));
        let line = format!("{host}: {text}");
        *caught_up = match via {
            Via::CatchUp { from } => Some(CaughtUp {
                id: persisted.id,
                from: from.to_string(),
                at: Instant::now(),
                text,
                needs_reboot: changes.needs_reboot(),
            }),
            Via::Operator | Via::PassOn { .. } => None,
        };
        events::record(EventKind::ConfigApplied, None, None, &line);
        tracing::info!("apply: {line}");
        let outcome = if changes.needs_reboot() {
            Outcome::NeedsReboot
        } else {
            Outcome::Applied
        };
        Local {
            result: HostApplied {
                host,
                outcome,
                line,
                holds: true,
            },
            pass_on: true,
            persisted_now: true,
        }
    }

    /// Tells this host's ftvmm that config `generation` is persisted, with
    /// every VM's power (module rules).
    pub(super) fn tell_ftvmm(
        &self,
        generation: u64,
        vms: Vec<VmPower>,
        timing: &Timing,
        config: &ClusterConfig,
    ) -> Result<(), String> {
        let req = Request::ConfigApplied {
            generation,
            vms,
            timing: Some(timing.clone()),
            config: Some(Box::new(config.clone())),
        };
        match ctl::query(&self.cfg.ftvmm_socket, &req) {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error { message }) => Err(message),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Tells ftvmm again about the newest config persisted since boot (a
    /// catch-up round); nothing when none was. Under the apply lock: ftvmm
    /// takes a config of the generation it has in arrival order (it cannot
    /// tell two configs of one generation apart), so this must not resend a
    /// config that an apply replaced meanwhile with one of its generation.
    pub(super) fn tell_ftvmm_again(&self) {
        let _one = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = self.live().persisted else {
            return;
        };
        if let Err(why) = self.tell_ftvmm(p.generation, p.vms, &p.timing, &p.config) {
            tracing::warn!(
                "ftvmm not told of config generation {}: {why}",
                p.generation
            );
        }
    }

    /// This host's config disk and trust root.
    pub(super) fn disk_and_trust(&self) -> Result<(PathBuf, Vec<u8>), Persist> {
        let t = self.cfg.apply.as_ref().ok_or(Persist::NotConfigured)?;
        let trust = std::fs::read(&t.trust_root)
            .map_err(|e| Persist::Setup(format!("trust root {}: {e}", t.trust_root.display())))?;
        if let Some(p) = &t.config_disk {
            return Ok((p.clone(), trust));
        }
        let mut found = self.found_disk.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*found {
            return Ok((p.clone(), trust));
        }
        let p =
            config_disk::find(&t.scan_root, &trust, &self.cfg.node.name).map_err(Persist::Setup)?;
        *found = Some(p.clone());
        Ok((p, trust))
    }

    fn persist(&self, config: &SignedConfig) -> Result<disk_persist::Persisted, Persist> {
        let (path, trust) = self.disk_and_trust()?;
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Persist::Setup(format!("config disk {}: {e}", path.display())))?;
        disk_persist::persist(&mut f, &trust, config).map_err(Persist::Refused)
    }

    /// An operator's apply: here, then the other hosts in parallel.
    pub(super) fn apply_cluster(&self, config: SignedConfig, operator: &str) -> Reply {
        tracing::info!("apply: operator {operator} offers a config");
        let generation = config_schema::canonical::decode(&config.canonical)
            .map(|c| c.cluster.generation)
            .unwrap_or(0);
        let local = self.apply_here(&config, Via::Operator);
        let mut hosts = vec![local.result];
        if local.pass_on {
            let offer = PassOn {
                config,
                persisted_by_sender: local.persisted_now,
            };
            let others: Vec<HostApplied> = std::thread::scope(|s| {
                let asks: Vec<_> = (self.cfg.node.peers.iter())
                    .map(|p| (p, s.spawn(|| self.pass_on(p, &offer))))
                    .collect();
                asks.into_iter()
                    .map(|(p, h)| {
                        h.join()
                            .unwrap_or_else(|_| Err("thread panicked".into()))
                            .unwrap_or_else(|why| HostApplied {
                                host: p.name.clone(),
                                outcome: Outcome::Unreachable,
                                line: format!(
                                    "{}: unreachable: {why}; if it has not taken generation \
                                     {generation} yet, it does at its next catch-up (every {} s) \
                                     from a host that holds it; `ftctl status --cluster` shows \
                                     each host's config",
                                    p.name,
                                    super::CATCH_UP_EVERY.as_secs()
                                ),
                                holds: false,
                            })
                    })
                    .collect()
            });
            hosts.extend(others);
        }
        let order = |h: &HostApplied| self.cfg.host_order.iter().position(|n| *n == h.host);
        hosts.sort_by_key(order);
        Reply::Applied { generation, hosts }
    }

    /// Passes `offer` on to `p` ([`Kind::PassOn`]); its result. A host that
    /// refuses that before the handshake, as one without it does (an unknown
    /// message), did nothing: it is asked again with the bare signed config
    /// ([`Kind::Apply`]), which says nothing of this host's persist. (A
    /// host that refuses for another reason, an unknown key, refuses that
    /// too, and its second refusal is the answer.)
    fn pass_on(&self, p: &PeerConf, offer: &PassOn) -> Result<HostApplied, String> {
        let addr = self.cfg.peer_addr(p);
        let not_p = |h: &ServerHello| self.not_p(addr, h, p);
        let bytes = match self.ask_host(p, Kind::PassOn, &offer.encode(), not_p) {
            Ok(bytes) => bytes,
            Err(AskError::Refused(why)) => {
                tracing::info!(
                    "apply: {} refused a pass-on ({why}); sending the bare config",
                    p.name
                );
                let bare = offer.config.encode();
                (self.ask_host(p, Kind::Apply, &bare, not_p)).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let r: HostApplied =
            serde_json::from_slice(&bytes).map_err(|e| format!("{addr}: malformed result: {e}"))?;
        if r.host != p.name {
            return Err(format!("{addr} answered for host {:?}", r.host));
        }
        Ok(r)
    }

    /// Host `from` passes a config on (`body`: a `PassOn`, or the bare
    /// signed config of a host without it): persist it here; the result to
    /// answer with ([`Backend::peer_pass_on`](super::Backend::peer_pass_on),
    /// [`Backend::peer_apply`](super::Backend::peer_apply)).
    pub(super) fn apply_passed_on(&self, from: &str, body: &[u8]) -> Vec<u8> {
        let me = &self.cfg.node;
        let result = match PassOn::decode(body) {
            Ok(offer) => {
                let via = Via::PassOn {
                    from,
                    persisted_there: offer.persisted_by_sender,
                };
                self.apply_here(&offer.config, via).result
            }
            Err(e) => HostApplied {
                host: me.name.clone(),
                outcome: Outcome::Refused,
                line: format!("{}: refused: {e}", me.name),
                holds: false,
            },
        };
        serde_json::to_vec(&result).expect("a result serializes")
    }
}

/// This host's result for a config it did not persist (`e`): refused, or,
/// when it holds the config because its last catch-up (`caught_up`) took
/// it during this apply ([`CaughtUp::during_this_apply`]), what that
/// catch-up did.
fn not_persisted(host: String, e: &Persist, caught_up: Option<&CaughtUp>, via: Via) -> Local {
    let held = held_id(e);
    let (pass_on, holds) = (pass_on_despite(e), held.is_some());
    let refused = |line: String| {
        events::record(EventKind::ConfigRefused, None, None, &line);
        tracing::warn!("apply: {line}");
        let result = HostApplied {
            host: host.clone(),
            outcome: Outcome::Refused,
            line,
            holds,
        };
        Local {
            result,
            pass_on,
            persisted_now: false,
        }
    };
    let Some(c) = caught_up.filter(|c| held == Some(c.id)) else {
        return refused(format!("{host}: {e}"));
    };
    let ago_ms = c.at.elapsed().as_millis();
    if !c.during_this_apply(via) {
        return refused(format!(
            "{host}: {e}; this host's catch-up took it from {} {ago_ms} ms before this request ({})",
            c.from, c.text
        ));
    }
    let line = format!(
        "{host}: {}; taken by this host's catch-up from {} {ago_ms} ms before this request, \
         during this apply",
        c.text, c.from
    );
    // No event: the catch-up recorded its persist (`ConfigApplied`).
    tracing::info!("apply: {line}");
    let result = HostApplied {
        host,
        outcome: c.outcome(),
        line,
        holds: true,
    };
    Local {
        result,
        pass_on,
        persisted_now: false,
    }
}

/// What a persist did, for its line (`host-a: ` goes before it):
/// `generation 8 persisted (was 7); <changes>`, or for one that replaced
/// another config of its generation `persisted generation 8 (replaced
/// another generation-8 config, digest 1a2b… < 3c4d…); <changes>`.
fn persisted_text(p: &disk_persist::Persisted, rest: &str) -> String {
    let (g, was) = (p.id.generation, p.previous);
    if was.generation == g {
        format!(
            "persisted generation {g} (replaced another generation-{g} config, digest {} < {}); {rest}",
            was.short_digest(),
            p.id.short_digest()
        )
    } else {
        format!("generation {g} persisted (was {}); {rest}", was.generation)
    }
}

/// Whether the asked host passes on a config it did not persist: not one
/// every host would refuse (its signature or content) nor one older than
/// this host's; yes one this host already has (the others may not), and one
/// this host could not persist for its own reasons (no disk, a config that
/// drops this host).
fn pass_on_despite(e: &Persist) -> bool {
    match e {
        Persist::Refused(PersistError::Signed(_)) => false,
        Persist::Refused(PersistError::NotNewer { .. }) => holds_already(e),
        _ => true,
    }
}

/// The config this host holds when a refusal says it holds the offered one.
fn held_id(e: &Persist) -> Option<ConfigId> {
    match e {
        Persist::Refused(PersistError::NotNewer { offered, current }) if offered == current => {
            Some(*current)
        }
        _ => None,
    }
}

/// Whether a refusal leaves this host holding the offered config (it had
/// this very one already).
fn holds_already(e: &Persist) -> bool {
    held_id(e).is_some()
}

/// Why this host did not persist.
#[derive(Debug, thiserror::Error)]
pub(super) enum Persist {
    #[error("refused: this host has no config disk to persist to")]
    NotConfigured,
    #[error("not persisted: {0}")]
    Setup(String),
    #[error(transparent)]
    Refused(PersistError),
}
