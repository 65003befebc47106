//! How the schedule generator picks a fault: a [`FaultClass`] (a fault kind
//! aimed at a role: the Primary's host, the Secondary's, a spare) by the
//! weights of its [`Draw`]'s table, then one of the class's kinds and one of
//! its targets uniformly, then the fault's parameters from [`Params`].
//!
//! Rules:
//! - A class is enabled if one of its kinds is in `Params::kinds`; an enabled
//!   class without an allowed target now (cluster model, pair-failure cap,
//!   the kind the step already has) is left out and the others' weights
//!   renormalize.
//! - Stratified first fault: the first fault of seed `s`'s schedule is of
//!   class `enabled[s % K]` ([`first_class`]; `K` enabled classes, in the
//!   table's order), or weighted if that class has no target. A campaign
//!   runs consecutive seeds, so any `K` of its runs start with every enabled
//!   class once (unless the seeds wrap past `u64::MAX`); the rest of each
//!   schedule is weighted. The schedule stays a function of the seed alone:
//!   replaying a seed gives its campaign schedule.
//! - The classes, their order and their weights are part of every seed's
//!   schedule: changing a table changes nearly every seed's (its first class
//!   is `seed % K`, and every weighted draw maps the PRNG's number through
//!   the weights). So a table, once campaigns ran with it, is never edited: a
//!   new one is a new [`Draw`] version, `Params::draw` picks it, and a seed
//!   is replayed with the draw it ran with (`FT_CHAOS_DRAW`, on the replay
//!   line when not the default).
//! - [`Draw::V1`] ([`WEIGHTS_V1`], 11 classes) drew every campaign before
//!   draws had versions (the notes' seeds 1–158, the Makefile's seed 105);
//!   use it only to replay those seeds. It starves storage faults.
//!   [`Draw::V2`] ([`WEIGHTS_V2`], 15 classes, the default) splits the
//!   storage class by kind and role so campaigns draw each storage kind about
//!   as often as a kill.

use super::fault::{Fault, FaultKind};
use super::model::Model;
use super::rng::Rng;
use super::roles::Roles;
use super::schedule::Params;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A version of the draw: which weight table the generator uses. Part of
/// [`Params`], so of every schedule and report (JSON `1` or `2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Draw {
    /// [`WEIGHTS_V1`]: every campaign before draws had versions.
    V1,
    /// [`WEIGHTS_V2`]: storage classes by kind and role.
    #[default]
    V2,
}

impl Draw {
    /// The versions, as `FT_CHAOS_DRAW` takes them.
    pub const ALL: [Draw; 2] = [Draw::V1, Draw::V2];

    /// The draw of a schedule whose JSON has none: it was written before
    /// draws had versions, so with the only table there was, draw 1 (not the
    /// default, which new campaigns use).
    pub fn unrecorded() -> Draw {
        Draw::V1
    }

    /// The weight table, in stratified first-fault order.
    pub fn weights(self) -> &'static [(FaultClass, u32)] {
        match self {
            Draw::V1 => &WEIGHTS_V1,
            Draw::V2 => &WEIGHTS_V2,
        }
    }

    /// The version's number, as in JSON and `FT_CHAOS_DRAW`.
    pub fn number(self) -> u8 {
        match self {
            Draw::V1 => 1,
            Draw::V2 => 2,
        }
    }
}

impl From<Draw> for u8 {
    fn from(d: Draw) -> u8 {
        d.number()
    }
}

impl TryFrom<u8> for Draw {
    type Error = String;
    fn try_from(n: u8) -> Result<Draw, String> {
        Draw::ALL
            .into_iter()
            .find(|d| d.number() == n)
            .ok_or_else(|| format!("draw {n}: this build has draws 1 and 2"))
    }
}

impl fmt::Display for Draw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// A class of faults the generator draws from: a kind aimed at a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// Kill the Primary's host.
    KillPrimary,
    /// Kill the Secondary's host.
    KillSecondary,
    /// Freeze (QMP `stop`) the Primary's host for `Params::freeze_ms`.
    FreezePrimary,
    /// Cut the FT link between the pair one way (either direction).
    PartitionOneWay,
    /// Cut the FT link between the pair both ways.
    PartitionBoth,
    /// Freeze the Secondary's host.
    FreezeSecondary,
    /// Draw 1 only: cut or sever a pair host's storage path.
    StorageCut,
    /// Draw 1 only: delay a pair host's storage requests.
    StorageDelay,
    /// Cut the Primary's host's storage path (requests hang).
    CutStoragePrimary,
    /// Cut the Secondary's host's storage path.
    CutStorageSecondary,
    /// Sever the Primary's host's storage connection (requests fail).
    SeverStoragePrimary,
    /// Sever the Secondary's host's storage connection.
    SeverStorageSecondary,
    /// Delay the Primary's host's storage requests.
    DelayStoragePrimary,
    /// Delay the Secondary's host's storage requests.
    DelayStorageSecondary,
    /// Cut a pair host's VM network link.
    CutVmNet,
    /// Slow a pair host down.
    SlowHost,
    /// Any fault on a spare host (an FT partition to it included).
    Spare,
}

/// Draw 1's classes and weights (out of 100; the order is the stratified
/// first faults'), as every campaign before draws had versions ran them.
/// Never edit: old seeds replay by it.
///
/// Two thirds go to the faults the appliance exists for, which the first 18
/// campaign runs (uniform over kinds, then hosts) never drew: losing the
/// Primary's host (killed, or frozen for 0.5–4 s) or the Secondary's
/// (killed), and FT partitions between the pair. The last third keeps the
/// paths around them exercised at a lower rate, storage faults among them:
/// since a run has one pair failure, that starved them ([`WEIGHTS_V2`]).
pub const WEIGHTS_V1: [(FaultClass, u32); 11] = [
    (FaultClass::KillPrimary, 16),
    (FaultClass::KillSecondary, 14),
    (FaultClass::FreezePrimary, 16),
    (FaultClass::PartitionOneWay, 10),
    (FaultClass::PartitionBoth, 10),
    (FaultClass::FreezeSecondary, 6),
    (FaultClass::StorageCut, 6),
    (FaultClass::StorageDelay, 5),
    (FaultClass::CutVmNet, 5),
    (FaultClass::SlowHost, 4),
    (FaultClass::Spare, 8),
];

/// Draw 2's classes and weights (the default): out of 100 with every class
/// enabled. The order is the stratified first faults' (module doc).
///
/// A run has one pair failure (two with `FT_CHAOS_SEQUENTIAL=1`), so the
/// pair-failure classes ([`FaultClass::is_pair_failure`]) share one slot per
/// run, and once it is taken only VM-network cuts, slowdowns and faults on a
/// spare are left to draw. The six pair-failure kinds get about the same
/// share of that slot: a kill (the Secondary must go live, or the Primary go
/// on alone), a freeze for 0.5–4 s (the thawed Primary must not emit after
/// the go-live), an FT partition one way (a member still hears the other but
/// is not heard) or both ways (both race for fencing), and a storage path
/// cut (requests hang) or severed (requests fail), where a member must hold
/// output and hand over, or slow (lease renewals land late). Storage faults
/// were one class of 6 and one of 5 out of 100, and one stratified slot for
/// cut and sever together of 11: over seeds 1..=400 the runner kept 128
/// kills, 23 cuts, 30 severs and 46 delays (`tests/chaos/plan_tests.rs`).
/// Each kind is split by role, the Primary's host weighing more than the
/// Secondary's (losing the Primary is the failover), so each has two
/// stratified slots. The rest keeps the paths around them
/// exercised at a lower rate: a VM-network cut (clients lose the guest, the
/// pair is fine), a slowed host, and faults on a spare (a heartbeat and
/// fencing member that costs the pair nothing; with respawn, the next
/// Secondary's host). The order puts each kind's two classes 7 apart, so any
/// 10 consecutive seeds start with every pair-failure kind.
pub const WEIGHTS_V2: [(FaultClass, u32); 15] = [
    (FaultClass::KillPrimary, 8),
    (FaultClass::FreezePrimary, 8),
    (FaultClass::PartitionBoth, 6),
    (FaultClass::CutStoragePrimary, 8),
    (FaultClass::SeverStoragePrimary, 8),
    (FaultClass::DelayStoragePrimary, 8),
    (FaultClass::CutVmNet, 5),
    (FaultClass::KillSecondary, 7),
    (FaultClass::FreezeSecondary, 4),
    (FaultClass::PartitionOneWay, 5),
    (FaultClass::CutStorageSecondary, 7),
    (FaultClass::SeverStorageSecondary, 7),
    (FaultClass::DelayStorageSecondary, 7),
    (FaultClass::SlowHost, 4),
    (FaultClass::Spare, 8),
];

const fn total_weight(table: &[(FaultClass, u32)]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < table.len() {
        sum += table[i].1;
        i += 1;
    }
    sum
}
const _: () = assert!(total_weight(&WEIGHTS_V1) == 100, "the weights are per cent");
const _: () = assert!(total_weight(&WEIGHTS_V2) == 100, "the weights are per cent");

impl FaultClass {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::KillPrimary => "kill_primary",
            FaultClass::KillSecondary => "kill_secondary",
            FaultClass::FreezePrimary => "freeze_primary",
            FaultClass::PartitionOneWay => "partition_one_way",
            FaultClass::PartitionBoth => "partition_both",
            FaultClass::FreezeSecondary => "freeze_secondary",
            FaultClass::StorageCut => "storage_cut",
            FaultClass::StorageDelay => "storage_delay",
            FaultClass::CutStoragePrimary => "cut_storage_primary",
            FaultClass::CutStorageSecondary => "cut_storage_secondary",
            FaultClass::SeverStoragePrimary => "sever_storage_primary",
            FaultClass::SeverStorageSecondary => "sever_storage_secondary",
            FaultClass::DelayStoragePrimary => "delay_storage_primary",
            FaultClass::DelayStorageSecondary => "delay_storage_secondary",
            FaultClass::CutVmNet => "cut_vm_net",
            FaultClass::SlowHost => "slow_host",
            FaultClass::Spare => "spare",
        }
    }

    /// The class's weight in `draw` (0 if not in its table).
    pub fn weight(self, draw: Draw) -> u32 {
        (draw.weights().iter())
            .find(|(c, _)| *c == self)
            .map_or(0, |(_, w)| *w)
    }

    /// The classes of pair failures (`super::roles`: a kill, freeze or
    /// storage fault of a pair host, an FT partition between the pair): the
    /// faults the appliance exists for, given most weight ([`WEIGHTS_V2`]).
    /// (After a respawn a [`FaultClass::Spare`] fault can be one too: the
    /// loser's host stays a member.)
    pub fn is_pair_failure(self) -> bool {
        !matches!(
            self,
            FaultClass::CutVmNet | FaultClass::SlowHost | FaultClass::Spare
        )
    }

    /// The fault kinds of the class.
    pub fn kinds(self) -> &'static [FaultKind] {
        match self {
            FaultClass::KillPrimary | FaultClass::KillSecondary => &[FaultKind::KillHost],
            FaultClass::FreezePrimary | FaultClass::FreezeSecondary => &[FaultKind::FreezeHost],
            FaultClass::PartitionOneWay | FaultClass::PartitionBoth => &[FaultKind::PartitionFt],
            FaultClass::StorageCut => &[FaultKind::CutStorage, FaultKind::SeverStorage],
            FaultClass::StorageDelay => &[FaultKind::DelayStorage],
            FaultClass::CutStoragePrimary | FaultClass::CutStorageSecondary => {
                &[FaultKind::CutStorage]
            }
            FaultClass::SeverStoragePrimary | FaultClass::SeverStorageSecondary => {
                &[FaultKind::SeverStorage]
            }
            FaultClass::DelayStoragePrimary | FaultClass::DelayStorageSecondary => {
                &[FaultKind::DelayStorage]
            }
            FaultClass::CutVmNet => &[FaultKind::CutVmNet],
            FaultClass::SlowHost => &[FaultKind::SlowHost],
            FaultClass::Spare => &FaultKind::INJECTIONS,
        }
    }

    /// The enabled classes of `params`, in its draw's table order.
    pub fn enabled(params: &Params) -> Vec<FaultClass> {
        (params.draw.weights().iter())
            .filter(|(c, w)| *w > 0 && c.kinds().iter().any(|k| params.kinds.contains(k)))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The class of an injected `fault` in `draw` at the start of a run on
    /// `hosts` (the Primary's first, the Secondary's second, spares after);
    /// `None` for recovery steps and faults on unknown hosts.
    pub fn of(fault: &Fault, hosts: &[String], draw: Draw) -> Option<FaultClass> {
        FaultClass::under(fault, &Roles::new(hosts), draw)
    }

    /// The class of an injected `fault` in `draw` under `roles`.
    pub(crate) fn under(fault: &Fault, roles: &Roles, draw: Draw) -> Option<FaultClass> {
        if fault.hosts().iter().any(|h| roles.is_spare(h)) {
            return Some(FaultClass::Spare);
        }
        let is = |h: &str, role: &Option<String>| role.as_deref() == Some(h);
        let (p, s) = (&roles.primary, &roles.secondary);
        let pair = |h: &str| is(h, p) || is(h, s);
        let class = match fault {
            Fault::KillHost { host } if is(host, p) => FaultClass::KillPrimary,
            Fault::KillHost { host } if is(host, s) => FaultClass::KillSecondary,
            Fault::FreezeHost { host, .. } if is(host, p) => FaultClass::FreezePrimary,
            Fault::FreezeHost { host, .. } if is(host, s) => FaultClass::FreezeSecondary,
            Fault::PartitionFt { a, b, one_way } if pair(a) && pair(b) => match one_way {
                true => FaultClass::PartitionOneWay,
                false => FaultClass::PartitionBoth,
            },
            Fault::CutStorage { host } if is(host, p) => FaultClass::CutStoragePrimary,
            Fault::CutStorage { host } if is(host, s) => FaultClass::CutStorageSecondary,
            Fault::SeverStorage { host } if is(host, p) => FaultClass::SeverStoragePrimary,
            Fault::SeverStorage { host } if is(host, s) => FaultClass::SeverStorageSecondary,
            Fault::DelayStorage { host, .. } if is(host, p) => FaultClass::DelayStoragePrimary,
            Fault::DelayStorage { host, .. } if is(host, s) => FaultClass::DelayStorageSecondary,
            Fault::CutVmNet { host } if pair(host) => FaultClass::CutVmNet,
            Fault::SlowHost { host, .. } if pair(host) => FaultClass::SlowHost,
            _ => return None,
        };
        // Draw 1 has one class for pair hosts' storage cuts and severs, one
        // for their delays.
        Some(match (draw, class.kinds()) {
            (Draw::V1, [FaultKind::CutStorage | FaultKind::SeverStorage]) => FaultClass::StorageCut,
            (Draw::V1, [FaultKind::DelayStorage]) => FaultClass::StorageDelay,
            _ => class,
        })
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The class of the first fault of `seed`'s schedule (module doc).
pub fn first_class(seed: u64, params: &Params) -> Option<FaultClass> {
    let enabled = FaultClass::enabled(params);
    let k = enabled.len() as u64;
    (k > 0).then(|| enabled[(seed % k) as usize])
}

/// What may be drawn at one step time.
pub(crate) struct Scope<'a> {
    pub model: &'a Model,
    pub roles: &'a Roles,
    pub params: &'a Params,
    /// Whether a pair failure may be drawn now.
    pub pair_failure_ok: bool,
    /// A kind the step already has.
    pub not: Option<FaultKind>,
}

impl<'a> Scope<'a> {
    /// What may be drawn at `at_ms` (a kind other than `not`).
    pub fn at(
        model: &'a Model,
        roles: &'a Roles,
        params: &'a Params,
        at_ms: u64,
        not: Option<FaultKind>,
    ) -> Scope<'a> {
        Scope {
            model,
            roles,
            params,
            pair_failure_ok: roles.pair_failure_allowed(
                at_ms,
                params.pair_failures,
                params.respawn_ms,
            ),
            not,
        }
    }

    /// The allowed faults of `class` now, with placeholder parameters.
    fn targets(&self, class: FaultClass) -> Vec<Fault> {
        let r = self.roles;
        let on = |role: &Option<String>, f: fn(String) -> Fault| -> Vec<Fault> {
            role.iter().map(|h| f(h.clone())).collect()
        };
        let pair: Vec<&String> = r.primary.iter().chain(&r.secondary).collect();
        let both = |f: fn(String) -> Fault| -> Vec<Fault> {
            pair.iter().map(|h| f(h.to_string())).collect()
        };
        let cut = |host| Fault::CutStorage { host };
        let sever = |host| Fault::SeverStorage { host };
        let delay = |host| Fault::DelayStorage { host, ms: 1 };
        let partition = |one_way: bool| -> Vec<Fault> {
            let (Some(p), Some(s)) = (&r.primary, &r.secondary) else {
                return Vec::new();
            };
            let cut = |a: &String, b: &String| Fault::PartitionFt {
                a: a.clone(),
                b: b.clone(),
                one_way,
            };
            match one_way {
                true => vec![cut(p, s), cut(s, p)],
                false => vec![cut(p, s)],
            }
        };
        let all = match class {
            FaultClass::KillPrimary => on(&r.primary, |host| Fault::KillHost { host }),
            FaultClass::KillSecondary => on(&r.secondary, |host| Fault::KillHost { host }),
            FaultClass::FreezePrimary => {
                on(&r.primary, |host| Fault::FreezeHost { host, for_ms: 1 })
            }
            FaultClass::FreezeSecondary => {
                on(&r.secondary, |host| Fault::FreezeHost { host, for_ms: 1 })
            }
            FaultClass::PartitionOneWay => partition(true),
            FaultClass::PartitionBoth => partition(false),
            // Draw 1: in this order (the draw picks among them by index).
            FaultClass::StorageCut => [both(cut), both(sever)].concat(),
            FaultClass::StorageDelay => both(delay),
            FaultClass::CutStoragePrimary => on(&r.primary, cut),
            FaultClass::CutStorageSecondary => on(&r.secondary, cut),
            FaultClass::SeverStoragePrimary => on(&r.primary, sever),
            FaultClass::SeverStorageSecondary => on(&r.secondary, sever),
            FaultClass::DelayStoragePrimary => on(&r.primary, delay),
            FaultClass::DelayStorageSecondary => on(&r.secondary, delay),
            FaultClass::CutVmNet => both(|host| Fault::CutVmNet { host }),
            FaultClass::SlowHost => both(|host| Fault::SlowHost { host, factor: 2 }),
            FaultClass::Spare => FaultKind::INJECTIONS
                .iter()
                .flat_map(|k| self.model.targets(*k))
                .filter(|f| f.hosts().iter().any(|h| r.is_spare(h)))
                .collect(),
        };
        all.into_iter()
            .filter(|f| {
                let k = f.kind();
                self.params.kinds.contains(&k)
                    && Some(k) != self.not
                    && self.model.refuse(f).is_none()
                    && (self.pair_failure_ok || !r.is_pair_failure(f))
            })
            .collect()
    }

    /// Draws a fault: of class `forced` if it has a target now, else of a
    /// class drawn by weight; a kind of the class and a target uniformly.
    pub fn draw(&self, rng: &mut Rng, forced: Option<FaultClass>) -> Option<Fault> {
        let forced = forced
            .map(|c| (c, self.targets(c)))
            .filter(|(_, t)| !t.is_empty());
        let (class, targets) = match forced {
            Some(ct) => ct,
            None => self.weighted(rng)?,
        };
        let mut kinds: Vec<FaultKind> = targets.iter().map(Fault::kind).collect();
        kinds.sort();
        kinds.dedup();
        let kind = *rng.pick(&kinds)?;
        let of_kind: Vec<&Fault> = targets.iter().filter(|f| f.kind() == kind).collect();
        let mut fault = (*rng.pick(&of_kind)?).clone();
        self.fill(&mut fault, class, rng);
        Some(fault)
    }

    /// A class by weight among those with targets now, with its targets.
    fn weighted(&self, rng: &mut Rng) -> Option<(FaultClass, Vec<Fault>)> {
        let choices: Vec<(FaultClass, u32, Vec<Fault>)> = FaultClass::enabled(self.params)
            .into_iter()
            .map(|c| (c, c.weight(self.params.draw), self.targets(c)))
            .filter(|(_, _, t)| !t.is_empty())
            .collect();
        let total: u64 = choices.iter().map(|(_, w, _)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.below(total);
        for (class, w, targets) in choices {
            if r < u64::from(w) {
                return Some((class, targets));
            }
            r -= u64::from(w);
        }
        None
    }

    /// Draws the fault's parameters (a pair partition's direction is its
    /// class's).
    fn fill(&self, fault: &mut Fault, class: FaultClass, rng: &mut Rng) {
        let p = self.params;
        match fault {
            Fault::FreezeHost { for_ms, .. } => {
                *for_ms = rng.range(p.freeze_ms.0, p.freeze_ms.1).max(1)
            }
            Fault::DelayStorage { ms, .. } => {
                *ms = rng.range(p.storage_delay_ms.0, p.storage_delay_ms.1).max(1)
            }
            Fault::SlowHost { factor, .. } => {
                let (lo, hi) = p.slow_factor;
                let f = rng.range(u64::from(lo), u64::from(hi)).max(2);
                *factor = u32::try_from(f).unwrap_or(u32::MAX)
            }
            Fault::PartitionFt { one_way, .. } if class == FaultClass::Spare => {
                *one_way = rng.percent(p.one_way_percent)
            }
            _ => {}
        }
    }
}
