//! Where a VM's new Secondary goes (respawn after a loss, issue 10) and where a
//! VM powers on: a pure, deterministic function of the signed config and what
//! the heartbeat view and the storage leases say about each host. No threads,
//! sockets or clocks; the caller gathers [`HostFacts`] and prints the line.
//!
//! Rules:
//! - Candidates are the hosts the VM's affinity allows ([`allowed_hosts`]: the
//!   listed hosts plus the hosts of the listed groups; no rule = every host).
//! - A candidate is eligible when it is alive (in the heartbeat view), holds a
//!   valid storage lease (it can be fenced and can win a generation), is not
//!   known to have lost the VM network (it could win but serve nobody:
//!   `respawn/secondary_vmnet.rs` says how that is known; unknown counts as
//!   reaching it), and has the VM's memory plus [`MEMORY_OVERHEAD_MIB`]
//!   free. Unknown free memory counts as enough, and the line says it was
//!   unknown.
//! - A Secondary never goes to the Primary's host (anti-affinity, by
//!   construction: that host is excluded first, and `debug_assert!`ed).
//! - The first eligible host in the config's `hosts` order is chosen. Why this
//!   order: it is in the signed config, identical on every host, so every
//!   member that sees the same facts computes the same answer without talking
//!   to the others; it is stable (the choice changes only when a host at or
//!   before the chosen one in that order changes); and the operator sets it by
//!   ordering `hosts`.
//!   Not "most free memory": free memory changes all the time and differs
//!   between members' views, so two members could pick two hosts.
//! - Hosts of the config missing from the facts count as down; facts about
//!   hosts not in the config are ignored; a host listed more than once gets the
//!   worst of its entries (alive and leased only if all say so, cut if any
//!   says so, the least known free memory), so the answer does not depend on the order of the facts.
//! - Power-on: the Primary goes to the first allowed host that is alive, leased
//!   and has the memory (the same test as a Secondary's: a Primary without
//!   memory would fail to start), the Secondary as above. A rule allowing one
//!   host runs the VM unprotected, and so does no host for a Secondary (a
//!   respawn adds it later); no host for the Primary: it waits. Each says why.
//! - A VM not in the config is allowed nowhere (every host: excluded by affinity).
//!
//! Every host not chosen because it cannot be is named with one [`Reason`], the
//! first that applies of: Primary, Affinity, Down, NoLease, NoVmNetwork, Memory.

use config_schema::validate::allowed_hosts;
use config_schema::ClusterConfig;

use crate::lockstep::log::MAX_BODY;
use crate::lockstep::primary::MAX_UNACKED_BYTES;
use crate::virtio::MAX_REQUEST_BYTES;

/// Memory a VM member needs on a host beyond the guest's `memory_mib`: the
/// Secondary may hold the Primary's whole unacknowledged log window (64 MiB),
/// one body being put together from its pieces (32 MiB) and one virtio request
/// (16 MiB); 16 MiB more for the VMM process itself (threads, channel buffers).
/// The Primary holds the same window on its side, so one figure serves both.
pub const MEMORY_OVERHEAD_MIB: u64 = 128;

const _: () = assert!(
    MEMORY_OVERHEAD_MIB << 20 >= (MAX_UNACKED_BYTES + MAX_BODY) as u64 + MAX_REQUEST_BYTES,
    "the overhead must cover the log window, one body and one virtio request"
);

/// What is known about one host when placing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub name: String,
    /// In the heartbeat view (not suspected).
    pub alive: bool,
    /// Holds a valid storage lease.
    pub lease_valid: bool,
    /// Known to hear no peer on the VM network while another host does
    /// (`false` when unknown).
    pub vm_network_cut: bool,
    /// Free memory; `None` = unknown.
    pub free_memory_mib: Option<u64>,
}

/// Why a host was not chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It runs the Primary (anti-affinity).
    Primary,
    /// Not in the heartbeat view, or no facts about it.
    Down,
    /// No valid storage lease.
    NoLease,
    /// Its VM network is cut: it would serve nobody.
    NoVmNetwork,
    /// The VM's affinity does not allow it.
    Affinity,
    /// Too little free memory (MiB).
    Memory { free: u64, need: u64 },
}

impl Reason {
    /// `host-b is down`
    pub fn said(&self, host: &str) -> String {
        match self {
            Reason::Primary => format!("{host} is primary"),
            Reason::Down => format!("{host} is down"),
            Reason::NoLease => format!("{host} has no storage lease"),
            Reason::NoVmNetwork => format!("{host} has no VM network"),
            Reason::Affinity => format!("{host} excluded by affinity"),
            Reason::Memory { free, need } => {
                format!("{host} has only {free} MiB free (needs {need} MiB)")
            }
        }
    }
}

/// Where a VM's Secondary goes, and why each other host does not get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub vm: String,
    pub primary: String,
    /// `None`: no host can take it; the VM runs unprotected.
    pub chosen: Option<String>,
    /// The chosen host's free memory was unknown (taken as enough).
    pub memory_unknown: bool,
    /// Every host of the config that cannot take it, in config order.
    pub excluded: Vec<(String, Reason)>,
}

impl Choice {
    /// One console line:
    /// `ftvmm: vm kv: secondary -> host-c (host-a is primary; host-b is down)` or
    /// `ftvmm: vm kv: UNPROTECTED: no host for a secondary (host-a is primary; ...)`.
    pub fn line(&self) -> String {
        match &self.chosen {
            Some(host) => format!(
                "ftvmm: vm {}: secondary -> {host}{}{}",
                self.vm,
                unknown(self.memory_unknown),
                because(&self.excluded)
            ),
            None => format!(
                "ftvmm: vm {}: UNPROTECTED: no host for a secondary{}",
                self.vm,
                because(&self.excluded)
            ),
        }
    }
}

/// Why a VM powers on without a Secondary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alone {
    /// Its affinity allows only the Primary's host.
    OneHostAllowed,
    /// No other host can take the Secondary now (`chosen` is `None`).
    NoSecondary(Choice),
}

/// Where a VM powers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerOn {
    /// Primary and Secondary on two different hosts (`choice.chosen == Some(secondary)`).
    Paired {
        primary: String,
        primary_memory_unknown: bool,
        secondary: String,
        choice: Choice,
    },
    /// Primary alone: the VM runs unprotected, for `reason`.
    Unprotected {
        vm: String,
        primary: String,
        primary_memory_unknown: bool,
        reason: Alone,
    },
    /// No host can run the Primary now; every host of the config, with why.
    Waiting {
        vm: String,
        excluded: Vec<(String, Reason)>,
    },
}

impl PowerOn {
    /// One console line, e.g. `ftvmm: vm kv: primary -> host-a, secondary -> host-c
    /// (host-b is down)`; the Primary's host is not listed again among the exclusions.
    pub fn line(&self) -> String {
        match self {
            PowerOn::Paired {
                primary,
                primary_memory_unknown,
                secondary,
                choice,
            } => format!(
                "ftvmm: vm {}: primary -> {primary}{}, secondary -> {secondary}{}{}",
                choice.vm,
                unknown(*primary_memory_unknown),
                unknown(choice.memory_unknown),
                because(&others(&choice.excluded))
            ),
            PowerOn::Unprotected {
                vm,
                primary,
                primary_memory_unknown,
                reason,
            } => {
                let why = match reason {
                    Alone::OneHostAllowed => "its affinity allows no other host".to_string(),
                    Alone::NoSecondary(c) => {
                        format!("no host for a secondary{}", because(&others(&c.excluded)))
                    }
                };
                format!(
                    "ftvmm: vm {vm}: UNPROTECTED: primary -> {primary}{}; {why}",
                    unknown(*primary_memory_unknown)
                )
            }
            PowerOn::Waiting { vm, excluded } => format!(
                "ftvmm: vm {vm}: waiting: no host for the primary{}",
                because(excluded)
            ),
        }
    }
}

fn unknown(memory_unknown: bool) -> &'static str {
    if memory_unknown {
        " (free memory unknown)"
    } else {
        ""
    }
}

/// The exclusions without the Primary's own host (a power-on line names it already).
fn others(excluded: &[(String, Reason)]) -> Vec<(String, Reason)> {
    excluded
        .iter()
        .filter(|(_, r)| *r != Reason::Primary)
        .cloned()
        .collect()
}

/// ` (a is primary; b is down)`, or nothing when nobody was excluded.
fn because(excluded: &[(String, Reason)]) -> String {
    if excluded.is_empty() {
        return String::new();
    }
    let said: Vec<String> = excluded.iter().map(|(h, r)| r.said(h)).collect();
    format!(" ({})", said.join("; "))
}

/// The VM's allowed hosts and the memory a member of it needs.
fn rule<'a>(config: &'a ClusterConfig, vm: &str) -> (Vec<&'a str>, u64) {
    match config.vms.iter().find(|v| v.name == vm) {
        Some(v) => (
            allowed_hosts(config, v).into_iter().collect(),
            u64::from(v.memory_mib) + MEMORY_OVERHEAD_MIB,
        ),
        None => (Vec::new(), MEMORY_OVERHEAD_MIB),
    }
}

/// Whether `host` can run a member needing `need` MiB: `Ok(memory known)` or
/// why not. Duplicate facts: the worst of them (see the module docs).
fn fit(facts: &[HostFacts], host: &str, need: u64) -> Result<bool, Reason> {
    let mine: Vec<&HostFacts> = facts.iter().filter(|f| f.name == host).collect();
    if mine.is_empty() || !mine.iter().all(|f| f.alive) {
        return Err(Reason::Down);
    }
    if !mine.iter().all(|f| f.lease_valid) {
        return Err(Reason::NoLease);
    }
    if mine.iter().any(|f| f.vm_network_cut) {
        return Err(Reason::NoVmNetwork);
    }
    match mine.iter().filter_map(|f| f.free_memory_mib).min() {
        Some(free) if free < need => Err(Reason::Memory { free, need }),
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

/// Whether `host` may run a member of the VM (allowed, and fits).
fn verdict(allowed: &[&str], facts: &[HostFacts], host: &str, need: u64) -> Result<bool, Reason> {
    if !allowed.contains(&host) {
        return Err(Reason::Affinity);
    }
    fit(facts, host, need)
}

/// Chooses the host for `vm`'s Secondary, its Primary running on `primary`:
/// the first eligible host in config order (see the module docs).
pub fn choose_secondary(
    config: &ClusterConfig,
    vm: &str,
    primary: &str,
    hosts: &[HostFacts],
) -> Choice {
    let (allowed, need) = rule(config, vm);
    let mut choice = Choice {
        vm: vm.to_string(),
        primary: primary.to_string(),
        chosen: None,
        memory_unknown: false,
        excluded: Vec::new(),
    };
    for h in &config.hosts {
        let name = h.name.as_str();
        let v = if name == primary {
            Err(Reason::Primary)
        } else {
            verdict(&allowed, hosts, name, need)
        };
        match v {
            Ok(known) if choice.chosen.is_none() => {
                choice.chosen = Some(name.to_string());
                choice.memory_unknown = !known;
            }
            Ok(_) => {}
            Err(r) => choice.excluded.push((name.to_string(), r)),
        }
    }
    debug_assert!(
        choice.chosen.as_deref() != Some(primary),
        "anti-affinity: the secondary of {vm} chosen on its primary's host {primary}"
    );
    choice
}

/// Where `vm` powers on: the Primary on the first allowed host that is alive,
/// leased and has the memory (config order), the Secondary by
/// [`choose_secondary`].
pub fn power_on(config: &ClusterConfig, vm: &str, hosts: &[HostFacts]) -> PowerOn {
    let (allowed, need) = rule(config, vm);
    let mut excluded = Vec::new();
    let mut primary = None;
    for h in &config.hosts {
        let name = h.name.as_str();
        match verdict(&allowed, hosts, name, need) {
            Ok(known) => {
                primary = Some((name.to_string(), !known));
                break;
            }
            Err(r) => excluded.push((name.to_string(), r)),
        }
    }
    let Some((primary, primary_memory_unknown)) = primary else {
        return PowerOn::Waiting {
            vm: vm.to_string(),
            excluded,
        };
    };
    if allowed.len() == 1 {
        return PowerOn::Unprotected {
            vm: vm.to_string(),
            primary,
            primary_memory_unknown,
            reason: Alone::OneHostAllowed,
        };
    }
    let choice = choose_secondary(config, vm, &primary, hosts);
    match choice.chosen.clone() {
        Some(secondary) => {
            debug_assert!(secondary != primary, "anti-affinity for {vm}");
            PowerOn::Paired {
                primary,
                primary_memory_unknown,
                secondary,
                choice,
            }
        }
        None => PowerOn::Unprotected {
            vm: vm.to_string(),
            primary,
            primary_memory_unknown,
            reason: Alone::NoSecondary(choice),
        },
    }
}

#[cfg(test)]
#[path = "choose_tests.rs"]
mod tests;
