//! How the schedule generator picks a fault: a [`FaultClass`] (a fault kind
//! aimed at a role: the Primary's host, the Secondary's, a spare) by the
//! weights of [`WEIGHTS`], then one of the class's kinds and one of its
//! targets uniformly, then the fault's parameters from [`Params`].
//!
//! Rules:
//! - A class is enabled if one of its kinds is in `Params::kinds`; an enabled
//!   class without an allowed target now (cluster model, pair-failure cap,
//!   the kind the step already has) is left out and the others' weights
//!   renormalize.
//! - Stratified first fault: the first fault of seed `s`'s schedule is of
//!   class `enabled[s % K]` ([`first_class`]; `K` enabled classes, in
//!   [`WEIGHTS`] order), or weighted if that class has no target. A campaign
//!   runs consecutive seeds, so any `K` of its runs start with every enabled
//!   class once (unless the seeds wrap past `u64::MAX`); the rest of each
//!   schedule is weighted. The schedule stays a function of the seed alone:
//!   replaying a seed gives its campaign schedule.

use super::fault::{Fault, FaultKind};
use super::model::Model;
use super::rng::Rng;
use super::roles::Roles;
use super::schedule::Params;
use std::fmt;

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
    /// Cut or sever a pair host's storage path.
    StorageCut,
    /// Delay a pair host's storage requests.
    StorageDelay,
    /// Cut a pair host's VM network link.
    CutVmNet,
    /// Slow a pair host down.
    SlowHost,
    /// Any fault on a spare host (an FT partition to it included).
    Spare,
}

/// The classes and their weights: out of 100 with every class enabled.
///
/// Two thirds go to the faults the appliance exists for, which the first 18
/// campaign runs (uniform over kinds, then hosts) never drew: losing the
/// Primary's host (killed, or frozen for 0.5–4 s: the Secondary must go live
/// and the thawed Primary must not emit after it) or the Secondary's
/// (killed: the Primary goes on alone), and FT partitions between the pair,
/// one way (a member still hears the other but is not heard) and both ways
/// (both must race for fencing). The last third keeps the paths around them
/// exercised at a lower rate: a frozen Secondary, a storage path cut or
/// severed (a member must hold output and hand over) or slow (lease renewals
/// land late), a VM-network cut (clients lose the guest, the pair is fine), a
/// slowed host, and faults on a spare (a heartbeat and fencing member that
/// costs the pair nothing; with respawn, the next Secondary's host).
pub const WEIGHTS: [(FaultClass, u32); 11] = [
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

const fn total_weight() -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < WEIGHTS.len() {
        sum += WEIGHTS[i].1;
        i += 1;
    }
    sum
}
const _: () = assert!(total_weight() == 100, "the weights are per cent");

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
            FaultClass::CutVmNet => "cut_vm_net",
            FaultClass::SlowHost => "slow_host",
            FaultClass::Spare => "spare",
        }
    }

    pub fn weight(self) -> u32 {
        WEIGHTS
            .iter()
            .find(|(c, _)| *c == self)
            .map_or(0, |(_, w)| *w)
    }

    /// The classes given most weight: kills of either pair host, a freeze of
    /// the Primary's, partitions between the pair.
    pub fn is_heavy(self) -> bool {
        matches!(
            self,
            FaultClass::KillPrimary
                | FaultClass::KillSecondary
                | FaultClass::FreezePrimary
                | FaultClass::PartitionOneWay
                | FaultClass::PartitionBoth
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
            FaultClass::CutVmNet => &[FaultKind::CutVmNet],
            FaultClass::SlowHost => &[FaultKind::SlowHost],
            FaultClass::Spare => &FaultKind::INJECTIONS,
        }
    }

    /// The enabled classes of `params`, in [`WEIGHTS`] order.
    pub fn enabled(params: &Params) -> Vec<FaultClass> {
        WEIGHTS
            .iter()
            .filter(|(c, w)| *w > 0 && c.kinds().iter().any(|k| params.kinds.contains(k)))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The class of an injected `fault` at the start of a run on `hosts`
    /// (the Primary's first, the Secondary's second, spares after); `None`
    /// for recovery steps and faults on unknown hosts.
    pub fn of(fault: &Fault, hosts: &[String]) -> Option<FaultClass> {
        FaultClass::under(fault, &Roles::new(hosts))
    }

    /// The class of an injected `fault` under `roles`.
    pub(crate) fn under(fault: &Fault, roles: &Roles) -> Option<FaultClass> {
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
            Fault::CutStorage { host } | Fault::SeverStorage { host } if pair(host) => {
                FaultClass::StorageCut
            }
            Fault::DelayStorage { host, .. } if pair(host) => FaultClass::StorageDelay,
            Fault::CutVmNet { host } if pair(host) => FaultClass::CutVmNet,
            Fault::SlowHost { host, .. } if pair(host) => FaultClass::SlowHost,
            _ => return None,
        };
        Some(class)
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
            FaultClass::StorageCut => {
                let mut v = both(|host| Fault::CutStorage { host });
                v.extend(both(|host| Fault::SeverStorage { host }));
                v
            }
            FaultClass::StorageDelay => both(|host| Fault::DelayStorage { host, ms: 1 }),
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
            .map(|c| (c, c.weight(), self.targets(c)))
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
