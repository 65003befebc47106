//! Publication: the (VM, generation) pairs this host runs or is acquiring as
//! Primary, as written into its lease record (docs/design.md §1).
//!
//! # Rules
//!
//! - What runs comes from ftvmm, level-triggered: every answer
//!   (`Response::Running`) to an `OutputGrant` replaces the set.
//! - An `Acquire` adds its (VM, generation) *before* any Paxos write of it,
//!   and the agent writes its lease record with it before the first Paxos
//!   write (see `Agent::acquire`): a reader that sees this host's Paxos block
//!   for a generation also sees its publication.
//! - A finished `Acquire` stays published until ftvmm answers a grant sent
//!   after it finished: from then on ftvmm's own answer says whether it runs
//!   the VM.
//!
//! # Invariants
//!
//! - The published list is sorted without duplicates and never longer than
//!   the lease block holds (`capacity`): an `Acquire` that would overflow it
//!   is refused before anything is written.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::Running;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Acquiring {
    /// Grant epoch at which the Acquire finished (`None`: in flight).
    done_at: Option<u64>,
}

/// What this host publishes.
#[derive(Debug, Clone)]
pub struct Publication {
    capacity: usize,
    running: BTreeSet<Running>,
    acquiring: BTreeMap<Running, Acquiring>,
    /// Counts grants sent.
    epoch: u64,
}

impl Publication {
    /// A publication that holds at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Publication {
            capacity,
            running: BTreeSet::new(),
            acquiring: BTreeMap::new(),
            epoch: 0,
        }
    }

    /// The list to write (sorted, no duplicates).
    pub fn published(&self) -> Vec<Running> {
        let all: BTreeSet<Running> = self
            .running
            .iter()
            .chain(self.acquiring.keys())
            .copied()
            .collect();
        let v: Vec<Running> = all.into_iter().collect();
        assert!(v.len() <= self.capacity, "publication over capacity");
        v
    }

    /// What ftvmm reports it runs (or is acquiring) as Primary.
    pub fn running(&self) -> &BTreeSet<Running> {
        &self.running
    }

    /// Whether an Acquire of `r` by this host is in flight or finished and
    /// not yet superseded by ftvmm's answer.
    pub fn acquiring(&self, r: Running) -> bool {
        self.acquiring.contains_key(&r)
    }

    /// An Acquire of `r` starts; refused if the list would not fit.
    pub fn begin_acquire(&mut self, r: Running) -> Result<(), String> {
        let mut all: BTreeSet<Running> = self.published().into_iter().collect();
        all.insert(r);
        if all.len() > self.capacity {
            return Err(format!(
                "publishing vm index {} generation {} would list {} VMs, the lease block holds {}",
                r.vm,
                r.generation,
                all.len(),
                self.capacity
            ));
        }
        self.acquiring.insert(r, Acquiring { done_at: None });
        Ok(())
    }

    /// The Acquire of `r` was answered.
    pub fn end_acquire(&mut self, r: Running) {
        if let Some(a) = self.acquiring.get_mut(&r) {
            a.done_at = Some(self.epoch);
        }
    }

    /// A grant is being sent; returns its epoch (pass it to [`Publication::on_running`]).
    pub fn grant_sent(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// ftvmm answered the grant of epoch `sent` with the VMs it runs. Unknown
    /// VM names are dropped by the caller. Entries beyond the capacity are
    /// dropped (highest generations kept last); returns how many.
    pub fn on_running(&mut self, vms: impl IntoIterator<Item = Running>, sent: u64) -> usize {
        self.acquiring
            .retain(|_, a| a.done_at.is_none_or(|done| done >= sent));
        let mut running: BTreeSet<Running> = vms.into_iter().collect();
        let room = self.capacity.saturating_sub(self.acquiring.len());
        let mut dropped = 0;
        while running.len() > room {
            let first = *running.iter().next().expect("non-empty");
            running.remove(&first);
            dropped += 1;
        }
        self.running = running;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(vm: u32, generation: u64) -> Running {
        Running { vm, generation }
    }

    #[test]
    fn an_acquire_is_published_until_ftvmm_answers_after_it() {
        let mut p = Publication::new(4);
        let e1 = p.grant_sent();
        p.begin_acquire(r(0, 3)).unwrap();
        assert_eq!(p.published(), [r(0, 3)]);
        // An answer to a grant sent before the Acquire finished keeps it.
        p.on_running([], e1);
        assert_eq!(p.published(), [r(0, 3)]);
        p.end_acquire(r(0, 3));
        let e2 = p.grant_sent();
        p.on_running([], e1);
        assert_eq!(p.published(), [r(0, 3)], "a late answer to an older grant");
        // ftvmm's answer to a grant sent after it: ftvmm decides.
        p.on_running([r(0, 3), r(1, 1)], e2);
        assert_eq!(p.published(), [r(0, 3), r(1, 1)]);
        assert!(!p.acquiring(r(0, 3)));
        let e3 = p.grant_sent();
        p.on_running([r(1, 1)], e3);
        assert_eq!(p.published(), [r(1, 1)]);
    }

    #[test]
    fn the_list_never_outgrows_the_lease_block() {
        let mut p = Publication::new(2);
        p.begin_acquire(r(0, 1)).unwrap();
        p.begin_acquire(r(1, 1)).unwrap();
        let e = p.begin_acquire(r(2, 1)).unwrap_err();
        assert!(
            e.contains("would list 3 VMs, the lease block holds 2"),
            "{e}"
        );
        p.begin_acquire(r(1, 1)).unwrap();
        let e = p.grant_sent();
        assert_eq!(p.on_running([r(5, 1), r(6, 1), r(7, 1)], e), 3);
        assert_eq!(p.published().len(), 2);
    }
}
