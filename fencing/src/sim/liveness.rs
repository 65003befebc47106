//! The liveness phase of the Disk Paxos simulation: after the chaos, one
//! machine alone (every other one crashed) takes its slot and must decide.

use super::{FailureKind, SimFailure, World};
use crate::layout::{view_paxos, SlotView};
use crate::paxos::{Decision, Outcome, Poll};

impl World {
    /// Runs machine `m` alone until its run ends; returns the outcome and ballots.
    fn run_alone(
        &mut self,
        m: usize,
        vm: u32,
        generation: u64,
    ) -> Result<(Outcome, u32), SimFailure> {
        self.start(m, vm, generation);
        let budget = 200;
        for _ in 0..budget {
            self.step += 1;
            let run = self.machines[m]
                .run
                .as_mut()
                .expect("a run ends only when it is done");
            if run.retry_at.is_some() {
                run.retry_at = None;
                let reqs = run.proposer.retry();
                self.issue(m, reqs);
                continue;
            }
            assert!(
                !self.pending.is_empty(),
                "a live run always has requests out"
            );
            let i = self.rng.below(self.pending.len() as u64) as usize;
            let p = self.pending.swap_remove(i);
            let result = self.take_effect(&p.req.op, p.write.as_ref());
            let run = self.machines[m].run.as_mut().expect("running");
            let poll = run.proposer.complete(p.req.token, result);
            let ballots = run.proposer.ballots();
            if let Poll::Done(o) = &poll {
                let o = o.clone();
                self.after(m, poll)?;
                return Ok((o, ballots));
            }
            self.after(m, poll)?;
        }
        Err(self.fail(
            FailureKind::Liveness,
            format!("lone m{m} did not finish vm{vm} generation {generation} in {budget} steps"),
        ))
    }

    /// Whether a block of (`vm`, `generation`)'s instance is corrupt now.
    pub(super) fn instance_damaged(&self, vm: u32, generation: u64) -> bool {
        (0..self.geo.hosts).any(|h| {
            let b = self.disk.read(self.geo.paxos_block(vm, generation, h));
            matches!(
                view_paxos(&b, h, vm, generation, self.geo.ring),
                SlotView::Corrupt(_)
            )
        })
    }

    pub(super) fn liveness(&mut self) -> Result<(), SimFailure> {
        let survivor = self.rng.below(u64::from(self.geo.hosts)) as usize;
        for m in 0..self.machines.len() {
            if self.machines[m].alive {
                self.crash(m);
            }
        }
        self.boot(survivor);
        self.log(format_args!("liveness: m{survivor} alone"));
        if self.opts.claim {
            self.claim_alone(survivor)?;
        }
        let h = self.machines[survivor].host;
        for vm in 0..self.geo.vms {
            let ring = u64::from(self.geo.ring);
            let Some(fresh) = (1..=ring)
                .map(|k| self.max_generation + k)
                .find(|&g| !self.instance_damaged(vm, g))
            else {
                continue;
            };
            let (o, ballots) = self.run_alone(survivor, vm, fresh)?;
            let won = matches!(o, Outcome::Decided { owner, .. } if owner == h);
            if !won || ballots > 2 {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "lone m{survivor} (h{h}) got {o:?} after {ballots} ballots for fresh \
                         vm{vm} generation {fresh}"
                    ),
                ));
            }
        }
        let known: Vec<((u32, u64), Decision)> =
            self.decided.iter().map(|(k, v)| (*k, *v)).collect();
        for ((vm, generation), d) in known {
            if generation > self.max_generation {
                continue;
            }
            let (o, ballots) = self.run_alone(survivor, vm, generation)?;
            let ok = match &o {
                Outcome::Decided {
                    owner,
                    config_generation,
                } => *owner == d.owner && *config_generation == d.config_generation,
                Outcome::Superseded { .. } => true,
                // Justified (checked in `record`): the instance holds damage.
                Outcome::Corrupt(_) => true,
                Outcome::IoFailed => false,
            };
            if !ok || ballots > 2 {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "lone m{survivor} re-asking vm{vm} generation {generation} ({d:?}) \
                         got {o:?} after {ballots} ballots"
                    ),
                ));
            }
        }
        Ok(())
    }
}
