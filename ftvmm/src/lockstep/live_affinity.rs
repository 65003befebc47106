//! The hosts each VM may run on, taken live from applied configs (`ftctl
//! apply` of a new `affinity` or `host_groups`; heartbeat sends each VM's
//! allowed hosts, resolved, in `ctl::Request::ConfigApplied`). One per
//! daemon ([`crate::members::Members::affinity`]); every placement decision
//! reads it: a member's role when it starts or ends (`manager.rs`), the
//! keeper's choice of a new Secondary and its hand-over off a host no longer
//! allowed (`respawn/keeper.rs`), whether a listener takes a join or a
//! pair (`placement::run_member`, `checkpoint/daemon_listen.rs`), and which
//! Primary a power-on pair's Hellos name (both sides check it: by the
//! booted rule, a VM powered on after a change would not pair).
//!
//! What a change does on each host (`crate::power::apply` plans it with
//! [`plan`]):
//! - this host no longer allowed, its member passive (a Secondary
//!   following, a standby): the member stops ([`Step::Leave`]); its
//!   Primary runs alone and its keeper places a new Secondary on an allowed
//!   host;
//! - this host no longer allowed, its member acting (a Primary): it keeps
//!   running; once paired with a Secondary on an allowed host that is fit
//!   (its lease moves, it hears the VM network: the keeper's look finds
//!   nothing against the pair) its keeper hands the VM over to it
//!   (`member::Event::LeaveHost`), and until then
//!   it places the new Secondary on an allowed host ([`Step::MoveOff`]
//!   only says so);
//! - this host newly allowed and running nothing of the VM: it waits as a
//!   standby for a join ([`Step::Join`]).
//!
//! # Why no change of affinity can make two copies live
//!
//! Affinity only says where members may run; going live still needs a
//! generation won on shared storage (Disk Paxos), which no rule here
//! touches. Each step is an existing, safe transition: a passive member
//! stopping (`Event::Stop` halts it before any race, as a power-off's does),
//! a standby starting (it races only when the hosts before it are down, as
//! at boot), a planned hand-over (`LeaveHost`: the Primary holds its output,
//! hands over only a fully acknowledged log, and resigns its generation).
//! Hosts take the config at different moments (the asked host first, the
//! others by pass-on or a catch-up round): meanwhile a host may still place
//! a Secondary where the new rule forbids it, or accept one. That host,
//! once it takes the config, stops that Secondary, and the next catch-up
//! round re-checks (the same config again is planned again). The cost is a
//! second respawn, never a second live copy.

use std::collections::BTreeMap;
use std::sync::RwLock;

use config_schema::ctl::VmPower;
use config_schema::runtime::RuntimeConfig;
use config_schema::validate::allowed_hosts;
use config_schema::{Affinity, ClusterConfig, Power};

use crate::manager::MemberHere;

/// Live overrides of the booted affinity (none yet: the booted rules).
#[derive(Debug, Default)]
pub struct LiveAffinity {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The config generation they come from (0: booted).
    generation: u64,
    /// VM name -> allowed hosts, in the config's `hosts` order.
    allowed: BTreeMap<String, Vec<String>>,
}

/// One VM whose allowed hosts a config changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub vm: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

impl LiveAffinity {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes config `generation`'s allowed hosts (older than one taken:
    /// ignored). Only VMs of the booted config count (a VM added needs a
    /// reboot); an empty list is ignored (validation refuses a rule that
    /// allows no host). Returns the VMs whose allowed hosts changed.
    pub fn adopt(&self, booted: &ClusterConfig, generation: u64, vms: &[VmPower]) -> Vec<Moved> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if generation < inner.generation {
            return Vec::new();
        }
        inner.generation = generation;
        let mut moved = Vec::new();
        for v in vms {
            let Some(after) = v.allowed.as_ref().filter(|a| !a.is_empty()) else {
                continue;
            };
            let Some(vm) = booted.vms.iter().find(|b| b.name == v.vm) else {
                continue;
            };
            // Only names of this config's hosts, in its order.
            let after: Vec<String> = (booted.hosts.iter())
                .filter(|h| after.contains(&h.name))
                .map(|h| h.name.clone())
                .collect();
            if after.is_empty() {
                continue;
            }
            let before = match inner.allowed.get(&v.vm) {
                Some(b) => b.clone(),
                None => resolved(booted, vm),
            };
            if before != after {
                moved.push(Moved {
                    vm: v.vm.clone(),
                    before,
                    after: after.clone(),
                });
            }
            inner.allowed.insert(v.vm.clone(), after);
        }
        moved
    }

    /// The config generation the live rules come from (0: booted).
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The hosts `vm` may run on now, in config order.
    pub fn allowed(&self, booted: &ClusterConfig, vm: &str) -> Vec<String> {
        if let Some(a) = self.read().allowed.get(vm) {
            return a.clone();
        }
        (booted.vms.iter().find(|v| v.name == vm))
            .map(|v| resolved(booted, v))
            .unwrap_or_default()
    }

    /// Whether `vm` may run on `host` now.
    pub fn allows(&self, booted: &ClusterConfig, vm: &str, host: &str) -> bool {
        self.allowed(booted, vm).iter().any(|h| h == host)
    }

    /// Whether a listener on `host` may take a pair or a join of `vm` now:
    /// a Primary that has not taken the newest config may still ask a host
    /// that config excludes.
    pub fn check(&self, booted: &ClusterConfig, vm: &str, host: &str) -> Result<(), String> {
        if self.allows(booted, vm, host) {
            return Ok(());
        }
        Err(match self.generation() {
            0 => format!("the config does not allow vm {vm} on {host}"),
            g => format!("config generation {g} does not allow vm {vm} on {host}"),
        })
    }

    /// Why a paired Primary on `here` hands `vm` over to its Secondary on
    /// `secondary`: this host is no longer allowed and that one is (else
    /// it stays: a Secondary on a host no longer allowed is stopped by its
    /// own host, and the keeper places the next one on an allowed host).
    pub fn leave_why(
        &self,
        booted: &ClusterConfig,
        vm: &str,
        here: &str,
        secondary: &str,
    ) -> Option<String> {
        let allowed = self.allowed(booted, vm);
        let has = |h: &str| allowed.iter().any(|a| a == h);
        (!has(here) && has(secondary)).then(|| {
            format!(
                "config generation {} allows vm {vm} on {} only, not on {here}",
                self.generation(),
                allowed.join(", ")
            )
        })
    }

    /// `rc` with every VM's affinity replaced by the live one (as an
    /// explicit host list), so that the placement functions, which read a
    /// config, place by the live rules.
    pub fn apply(&self, rc: &RuntimeConfig) -> RuntimeConfig {
        let inner = self.read();
        let mut out = rc.clone();
        for vm in out.config.vms.iter_mut() {
            if let Some(a) = inner.allowed.get(&vm.name) {
                vm.affinity = Affinity {
                    hosts: a.clone(),
                    groups: Vec::new(),
                };
            }
        }
        out
    }
}

/// `vm`'s allowed hosts by `config`, in its `hosts` order.
fn resolved(config: &ClusterConfig, vm: &config_schema::Vm) -> Vec<String> {
    let a = allowed_hosts(config, vm);
    (config.hosts.iter())
        .filter(|h| a.contains(h.name.as_str()))
        .map(|h| h.name.clone())
        .collect()
}

/// One step of a live affinity change on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop this host's passive member of `vm` (no longer allowed here).
    Leave { vm: String, allowed: Vec<String> },
    /// This host's member of `vm` acts as Primary and is no longer allowed
    /// here: its keeper moves the VM (nothing to do but say so).
    MoveOff { vm: String, allowed: Vec<String> },
    /// Newly allowed here and nothing of `vm` runs here: wait as a standby.
    Join { vm: String },
}

/// The steps on `here` for the VMs a config left powered on (pure):
/// `moved` what this config changed, `allowed` each VM's allowed hosts now,
/// `member` how this host runs it. Re-planned for every `ConfigApplied`,
/// also the same config again: a passive member on a host not allowed is
/// stopped whenever it is found (a standby restarted meanwhile, a join
/// accepted from a Primary that had not taken the config yet).
pub fn plan(
    here: &str,
    vms: &[VmPower],
    moved: &[Moved],
    allowed: impl Fn(&str) -> Vec<String>,
    member: impl Fn(&str) -> MemberHere,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for v in vms.iter().filter(|v| v.power == Power::On) {
        let now = allowed(&v.vm);
        if now.is_empty() {
            // Not a VM of the booted config.
            continue;
        }
        let changed = moved.iter().find(|m| m.vm == v.vm);
        let vm = v.vm.clone();
        match (now.iter().any(|h| h == here), member(&v.vm)) {
            (false, MemberHere::Passive) => steps.push(Step::Leave { vm, allowed: now }),
            (false, MemberHere::Acting) if changed.is_some() => {
                steps.push(Step::MoveOff { vm, allowed: now })
            }
            (true, MemberHere::None)
                if changed.is_some_and(|m| !m.before.iter().any(|h| h == here)) =>
            {
                steps.push(Step::Join { vm })
            }
            _ => {}
        }
    }
    steps
}

#[cfg(test)]
#[path = "live_affinity_tests.rs"]
mod tests;
