//! Machines of the Disk Paxos simulation and their lease slots.
//!
//! Each host index has its real machine; an *impostor* (a second machine
//! booted with the same host's config disk) may appear. A machine acts —
//! runs Disk Paxos as its host — only while it holds the host's lease slot,
//! taken with the agent's own [`SlotClaim`] over simulated lease I/O, which
//! completes within [`LEASE_IO`] steps. A machine holding its slot renews it
//! every [`RENEW`] steps, reading the block first (another record there: the
//! claim failed, a checked invariant). With the claim off (a negative
//! control), every machine acts from boot.

use std::time::Duration;

use config_schema::clock::BootInstant;

use super::{FailureKind, Run, SimFailure, World};
use crate::lease::OwnLease;
use crate::slot::{ClaimAction, SlotClaim};

/// Steps between lease renewals.
pub const RENEW: u64 = 20;
/// Lease I/O completes within this many steps.
pub const LEASE_IO: u64 = 4;
/// The claim's watch: longer than a live holder goes without a landed write.
pub const WATCH: u64 = 3 * RENEW;
/// The claim's check after writing: a concurrent claimer's write (issued
/// after its read, which preceded ours landing) has landed by then.
pub const SETTLE: u64 = 3 * LEASE_IO + 1;

/// The time of a step on the claim's clock (one step = 1 ms).
pub fn at(step: u64) -> BootInstant {
    BootInstant::from_nanos(1_000_000_000) + Duration::from_millis(step)
}

pub struct Machine {
    /// The host index it believes it is.
    pub host: u32,
    pub alive: bool,
    /// Bumped at each crash: requests of an older epoch are void.
    pub epoch: u64,
    pub own: OwnLease,
    pub claim: SlotClaim,
    pub written: Option<Vec<u8>>,
    pub next_lease: u64,
    pub lease_busy: bool,
    pub refused: bool,
    pub run: Option<Run>,
}

impl Machine {
    pub fn new(host: u32, incarnation: u64) -> Self {
        Machine {
            host,
            alive: false,
            epoch: 0,
            own: OwnLease::new(host, incarnation),
            claim: SlotClaim::new(Duration::from_millis(WATCH), Duration::from_millis(SETTLE)),
            written: None,
            next_lease: 0,
            lease_busy: false,
            refused: false,
            run: None,
        }
    }
}

enum LeaseKind {
    Claim,
    Check,
    ClaimWrite(Vec<u8>),
    Renew(Vec<u8>),
}

pub struct LeaseOp {
    machine: usize,
    epoch: u64,
    due: u64,
    kind: LeaseKind,
}

impl World {
    /// Whether machine `m` may run Disk Paxos as its host now.
    pub(super) fn acting(&self, m: usize) -> bool {
        let mc = &self.machines[m];
        mc.alive && (!self.opts.claim || mc.claim.held())
    }

    /// Boots machine `m` (a new incarnation; it claims its slot afresh).
    pub(super) fn boot(&mut self, m: usize) {
        let host = self.machines[m].host;
        let incarnation = self.rng.next_u64();
        let epoch = self.machines[m].epoch + 1;
        let mut mc = Machine::new(host, incarnation);
        mc.alive = true;
        mc.epoch = epoch;
        mc.next_lease = self.step;
        self.machines[m] = mc;
        self.log(format_args!("m{m} (host h{host}) boots"));
    }

    /// Completes due lease I/O, then issues what each machine needs.
    pub(super) fn lease_step(&mut self) -> Result<(), SimFailure> {
        if !self.opts.claim {
            return Ok(());
        }
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.lease_ops.len() {
            if self.lease_ops[i].due <= self.step {
                due.push(self.lease_ops.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for op in due {
            let mc = &self.machines[op.machine];
            if mc.alive && mc.epoch == op.epoch {
                self.lease_done(op)?;
            }
        }
        for m in 0..self.machines.len() {
            let mc = &self.machines[m];
            if mc.alive && !mc.lease_busy && mc.next_lease <= self.step {
                let kind = if mc.claim.held() {
                    LeaseKind::Check
                } else {
                    LeaseKind::Claim
                };
                self.lease_issue(m, kind);
            }
        }
        Ok(())
    }

    fn lease_issue(&mut self, m: usize, kind: LeaseKind) {
        let due = self.step + 1 + self.rng.below(LEASE_IO);
        let mc = &mut self.machines[m];
        mc.lease_busy = true;
        self.lease_ops.push(LeaseOp {
            machine: m,
            epoch: mc.epoch,
            due,
            kind,
        });
    }

    fn lease_done(&mut self, op: LeaseOp) -> Result<(), SimFailure> {
        let m = op.machine;
        let slot = self.geo.lease_block(self.machines[m].host);
        let now = self.step;
        match op.kind {
            LeaseKind::Claim => {
                let bytes = self.disk.read(slot);
                let mc = &mut self.machines[m];
                let action = mc.claim.on_read(&bytes, at(now));
                for l in mc.claim.take_lines() {
                    self.log(format_args!("m{m}: {l}"));
                }
                let mc = &mut self.machines[m];
                if mc.claim.refused().is_some() && !mc.refused {
                    mc.refused = true;
                    self.stats.slot_refusals += 1;
                }
                match action {
                    ClaimAction::Write => {
                        let rec = mc.own.next(true, Vec::new());
                        let bytes = rec.encode(self.geo.block_len()).to_vec();
                        self.lease_issue(m, LeaseKind::ClaimWrite(bytes));
                        return Ok(());
                    }
                    ClaimAction::Held => {
                        mc.next_lease = now + RENEW;
                        if std::mem::take(&mut mc.refused) {
                            self.stats.slot_takeovers += 1;
                        }
                        let host = self.machines[m].host;
                        self.log(format_args!("m{m} holds host h{host}'s slot"));
                    }
                    ClaimAction::Wait => mc.next_lease = now + 1 + RENEW / 4,
                }
            }
            LeaseKind::ClaimWrite(bytes) | LeaseKind::Renew(bytes) => {
                let claiming = !self.machines[m].claim.held();
                self.write_lease(slot, &bytes);
                let mc = &mut self.machines[m];
                if claiming {
                    mc.claim.on_written(&bytes, at(now));
                    mc.next_lease = now + SETTLE;
                } else {
                    mc.next_lease = now + RENEW;
                }
                mc.written = Some(bytes);
            }
            LeaseKind::Check => {
                let bytes = self.disk.read(slot);
                let mc = &self.machines[m];
                if mc.written.as_deref() != Some(&bytes[..]) {
                    return Err(self.fail(
                        FailureKind::Slot,
                        format!(
                            "m{m} holds host h{}'s slot but another machine wrote it meanwhile",
                            mc.host
                        ),
                    ));
                }
                let mc = &mut self.machines[m];
                let rec = mc.own.next(true, Vec::new());
                let bytes = rec.encode(self.geo.block_len()).to_vec();
                self.lease_issue(m, LeaseKind::Renew(bytes));
                return Ok(());
            }
        }
        self.machines[m].lease_busy = false;
        Ok(())
    }

    fn write_lease(&mut self, slot: u64, bytes: &[u8]) {
        let w = self.disk.issue(slot, bytes.into());
        let changed = self.disk.land(&w);
        self.stats.stale_neighbours += changed.len() as u64;
    }

    /// At a crash: the machine's lease writes in flight land or not.
    pub(super) fn crash_leases(&mut self, m: usize) {
        let mut kept = Vec::new();
        for op in std::mem::take(&mut self.lease_ops) {
            if op.machine != m {
                kept.push(op);
                continue;
            }
            if let LeaseKind::ClaimWrite(b) | LeaseKind::Renew(b) = &op.kind {
                if self.rng.chance(1, 2) {
                    let slot = self.geo.lease_block(self.machines[m].host);
                    self.write_lease(slot, b);
                }
            }
        }
        self.lease_ops = kept;
    }

    /// Runs lease I/O alone until machine `m` holds its slot.
    pub(super) fn claim_alone(&mut self, m: usize) -> Result<(), SimFailure> {
        let budget = WATCH + 20 * RENEW;
        for _ in 0..budget {
            if self.acting(m) {
                return Ok(());
            }
            self.step += 1;
            self.lease_step()?;
        }
        Err(self.fail(
            FailureKind::Liveness,
            format!("lone m{m} did not take its slot in {budget} steps"),
        ))
    }
}
