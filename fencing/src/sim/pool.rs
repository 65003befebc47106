//! Completions of the chaos phase's pool of requests: a random pending
//! request completes (a read may fail or return garbage once, a failed
//! write may still land), its proposer advances, and its next poll is acted
//! on (more requests, a backoff, or the run's end, checked by `check.rs`).

use super::disk;
use super::{SimFailure, World, GARBAGE_STREAK};
use crate::paxos::{IoResult, Op, Poll};

impl World {
    pub(super) fn complete(&mut self, i: usize) -> Result<(), SimFailure> {
        let p = self.pending.swap_remove(i);
        let failed = self.rng.chance(1, 100);
        let result = match (&p.req.op, &p.write) {
            (Op::Read { .. }, _) if failed => IoResult::Failed,
            (Op::Read { block }, _) => {
                let mut data = self.disk.read(*block);
                let streak = self.garbage_streak.entry((p.machine, *block)).or_default();
                if self.opts.corrupt
                    && *streak < GARBAGE_STREAK
                    && self.rng.chance(1, 150)
                    && !self.disk.blank(*block)
                {
                    *streak += 1;
                    self.stats.garbage_reads += 1;
                    disk::garbage(&mut data, &mut self.rng);
                } else {
                    *streak = 0;
                }
                IoResult::Read(data)
            }
            (Op::Write { .. }, Some(w)) => {
                if !failed || self.rng.chance(1, 2) {
                    self.land(w);
                }
                if failed {
                    IoResult::Failed
                } else {
                    IoResult::Written
                }
            }
            (Op::Write { .. }, None) => unreachable!("every write is issued to the disk"),
        };
        if failed {
            self.stats.io_failures += 1;
        }
        let mc = &mut self.machines[p.machine];
        assert!(
            mc.alive && mc.epoch == p.epoch,
            "a crashed machine's requests are removed at the crash"
        );
        let run = mc.run.as_mut().expect("pending requests belong to a run");
        let poll = run.proposer.complete(p.req.token, result);
        let (vm, generation, early) = (run.vm, run.generation, run.proposer.decided());
        if let (Some(d), Poll::Io(_)) = (early, &poll) {
            // Decided, commit write not yet done: check agreement already.
            self.agree(p.machine, vm, generation, d)?;
        }
        self.after(p.machine, poll)
    }

    pub(super) fn after(&mut self, m: usize, poll: Poll) -> Result<(), SimFailure> {
        match poll {
            Poll::Io(reqs) => self.issue(m, reqs),
            Poll::Wait => {}
            Poll::Retry => {
                self.stats.aborts += 1;
                let at = self.step + 1 + self.rng.below(30);
                let run = self.machines[m].run.as_mut().expect("running");
                run.retry_at = Some(at);
            }
            Poll::Done(o) => {
                let run = self.machines[m].run.take().expect("running");
                // Failed or corrupt reads may leave requests of the run
                // pending: drop them (their writes land or not).
                let epoch = self.machines[m].epoch;
                let mut kept = Vec::new();
                for p in std::mem::take(&mut self.pending) {
                    if p.machine == m && p.epoch == epoch {
                        if let Some(w) = &p.write {
                            if self.rng.chance(1, 2) {
                                self.land(w);
                            }
                        }
                    } else {
                        kept.push(p);
                    }
                }
                self.pending = kept;
                self.record(m, run.vm, run.generation, o)?;
            }
        }
        Ok(())
    }
}
