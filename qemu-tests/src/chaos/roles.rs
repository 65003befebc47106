//! The pair's roles as the schedule generator predicts them, what counts as
//! a pair failure, and the [`Gate`] that holds a second pair failure until
//! the pair is protected again.
//!
//! Rules:
//! - `Schedule::generate` takes its hosts Primary's host first, Secondary's
//!   second, spares after.
//! - A *pair failure* is a fault that can cost the pair a member
//!   ([`costs_a_member`]): a kill, freeze or storage fault of a member's host
//!   (even a storage delay: a Primary whose lease renewals land late hands
//!   over), or an FT partition between two members.
//! - Without respawn (`Params::pair_failures` 1, the default) the roles never
//!   change and a run has at most one pair failure.
//! - With respawn (`pair_failures` > 1, `FT_CHAOS_SEQUENTIAL=1`) a pair
//!   failure is predicted to leave the loser out (the fault's host; for a
//!   partition the Secondary, since the Primary holds the lease), the other
//!   member Primary and the first spare the new Secondary. The new
//!   Secondary's host joins the members and the loser stays one: who wins
//!   after a partition or a freeze is decided at run time, so faults on any
//!   of them may cost the pair a member. Each later pair failure carries a
//!   [`Gate`] naming the predicted pair; the nemesis renames hosts by the pair
//!   it actually sees (the old pair when the failure cost no member after
//!   all, a storage fault of the Secondary's host for one: `pair_watch`).

use super::fault::Fault;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether `fault` can cost a pair of `members` a member (module doc).
pub fn costs_a_member<S: AsRef<str>>(fault: &Fault, members: &[S]) -> bool {
    let member = |h: &str| members.iter().any(|m| m.as_ref() == h);
    match fault {
        Fault::KillHost { host }
        | Fault::FreezeHost { host, .. }
        | Fault::CutStorage { host }
        | Fault::SeverStorage { host }
        | Fault::DelayStorage { host, .. } => member(host),
        Fault::PartitionFt { a, b, .. } => member(a) && member(b),
        _ => false,
    }
}

/// A step held until the pair is protected again after the previous pair
/// failure: the nemesis applies it only once it has seen `ftvmm: vm <vm>:
/// protected: secondary <host>` on a console after that failure (on the
/// Primary's console, naming the respawned Secondary), or found that the
/// failure cost no member after all (`super::pair_watch`: a pair failure
/// *can* cost a member; a storage fault of the Secondary's host never does),
/// and moves it and every later step by the wait. The schedule assumed
/// `primary` and `secondary` as that pair; from this step on the nemesis
/// renames hosts to the pair it found ([`Gate::renaming`]).
///
/// NOTICE: serialized in run reports (a step's `gate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    pub primary: String,
    pub secondary: String,
}

impl Gate {
    /// The renaming of `hosts` that maps the predicted pair onto the seen one
    /// (`primary` printed the line naming `secondary`), and the other hosts,
    /// in order, onto the others. `None` if a seen name is not one of `hosts`
    /// or both are the same.
    pub fn renaming(
        &self,
        hosts: &[String],
        primary: &str,
        secondary: &str,
    ) -> Option<BTreeMap<String, String>> {
        let known = |h: &str| hosts.iter().any(|k| k == h);
        if primary == secondary || !known(primary) || !known(secondary) {
            return None;
        }
        let mut map = BTreeMap::new();
        map.insert(self.primary.clone(), primary.to_string());
        map.insert(self.secondary.clone(), secondary.to_string());
        let rest = |a: &str, b: &str| -> Vec<String> {
            hosts
                .iter()
                .filter(|h| *h != a && *h != b)
                .cloned()
                .collect()
        };
        let from = rest(&self.primary, &self.secondary);
        let to = rest(primary, secondary);
        for (f, t) in from.into_iter().zip(to) {
            map.insert(f, t);
        }
        Some(map)
    }
}

/// The predicted roles while a schedule is drawn (module doc).
#[derive(Debug, Clone)]
pub(crate) struct Roles {
    pub primary: Option<String>,
    pub secondary: Option<String>,
    pub spares: Vec<String>,
    /// Hosts whose faults count as pair failures.
    members: Vec<String>,
    /// Pair failures so far.
    pub failures: usize,
    /// When the last pair failure was.
    pub last_failure_ms: Option<u64>,
}

impl Roles {
    /// The roles at the start: `hosts[0]` Primary, `hosts[1]` Secondary.
    pub fn new(hosts: &[String]) -> Roles {
        let primary = hosts.first().cloned();
        let secondary = hosts.get(1).cloned();
        Roles {
            members: primary.iter().chain(&secondary).cloned().collect(),
            primary,
            secondary,
            spares: hosts.iter().skip(2).cloned().collect(),
            failures: 0,
            last_failure_ms: None,
        }
    }

    pub fn is_spare(&self, host: &str) -> bool {
        self.spares.iter().any(|s| s == host)
    }

    pub fn is_pair_failure(&self, fault: &Fault) -> bool {
        costs_a_member(fault, &self.members)
    }

    /// Whether a pair failure may be drawn at `at_ms`: fewer than `cap` so
    /// far, and a later one only with a Secondary predicted (respawned) and
    /// `respawn_ms` after the previous one.
    pub fn pair_failure_allowed(&self, at_ms: u64, cap: usize, respawn_ms: u64) -> bool {
        match self.last_failure_ms {
            _ if self.failures >= cap => false,
            None => true,
            Some(last) => self.secondary.is_some() && at_ms >= last.saturating_add(respawn_ms),
        }
    }

    /// The gate a pair failure drawn now carries: one after the first.
    pub fn gate(&self) -> Option<Gate> {
        if self.failures == 0 {
            return None;
        }
        Some(Gate {
            primary: self.primary.clone()?,
            secondary: self.secondary.clone()?,
        })
    }

    /// Records the pair failure `fault` at `at_ms`; with `respawn`, moves the
    /// roles as predicted (module doc).
    pub fn fail(&mut self, fault: &Fault, at_ms: u64, respawn: bool) {
        self.failures += 1;
        self.last_failure_ms = Some(at_ms);
        if !respawn {
            return;
        }
        let loser = match fault {
            Fault::PartitionFt { .. } => self.secondary.clone(),
            f => f.hosts().first().map(|h| h.to_string()),
        };
        if loser.is_some() && loser == self.primary {
            self.primary = self.secondary.take();
        } else if loser.is_some() && loser == self.secondary {
            self.secondary = None;
        }
        self.spares.retain(|s| Some(s) != loser.as_ref());
        if self.secondary.is_none() && !self.spares.is_empty() {
            self.secondary = Some(self.spares.remove(0));
        }
        if let Some(l) = loser {
            self.spares.push(l);
        }
        if let Some(s) = &self.secondary {
            if !self.members.contains(s) {
                self.members.push(s.clone());
            }
        }
    }
}
