//! The invariants the Disk Paxos simulation checks on every outcome:
//! agreement, one live winner per (VM, generation), justified alarms.

use super::{FailureKind, SimFailure, World};
use crate::paxos::{Decision, Outcome};

impl World {
    pub(super) fn record(
        &mut self,
        m: usize,
        vm: u32,
        generation: u64,
        o: Outcome,
    ) -> Result<(), SimFailure> {
        self.log(format_args!("m{m} vm{vm} generation {generation}: {o:?}"));
        match o {
            Outcome::Decided {
                owner,
                config_generation,
            } => {
                self.stats.decisions += 1;
                let d = Decision {
                    owner,
                    config_generation,
                };
                self.agree(m, vm, generation, d)?;
            }
            Outcome::Superseded { by } if by <= generation => {
                return Err(self.fail(
                    FailureKind::Other,
                    format!("vm{vm} generation {generation} superseded by older {by}"),
                ));
            }
            Outcome::Superseded { .. } => self.stats.superseded += 1,
            Outcome::Corrupt(c) => {
                self.stats.corrupt_outcomes += 1;
                if !self.damaged.contains(&c.block) {
                    return Err(self.fail(
                        FailureKind::UnjustifiedAlarm,
                        format!(
                            "vm{vm} generation {generation}: alarm over block {} that was never \
                             damaged: {c:?}",
                            c.block
                        ),
                    ));
                }
            }
            Outcome::IoFailed => {}
        }
        Ok(())
    }

    pub(super) fn agree(
        &mut self,
        m: usize,
        vm: u32,
        generation: u64,
        d: Decision,
    ) -> Result<(), SimFailure> {
        let key = (vm, generation);
        if let Some(&before) = self.decided.get(&key) {
            if before != d {
                return Err(self.fail(
                    FailureKind::Agreement,
                    format!(
                        "vm{vm} generation {generation}: m{m} decided {d:?}, but {before:?} was \
                         decided before"
                    ),
                ));
            }
        }
        // The winner proposed itself: the config generation is one it runs.
        let own = 1 + u64::from(d.owner);
        if !(own..=own + 1).contains(&d.config_generation) {
            return Err(self.fail(
                FailureKind::Agreement,
                format!(
                    "vm{vm} generation {generation}: decided {d:?}, a config generation h{} \
                     never proposed",
                    d.owner
                ),
            ));
        }
        self.decided.insert(key, d);
        if d.owner == self.machines[m].host {
            self.won(m, key)?;
        }
        Ok(())
    }

    /// Machine `m` learned that its host won `key`: it would run the VM.
    fn won(&mut self, m: usize, key: (u32, u64)) -> Result<(), SimFailure> {
        let epoch = self.machines[m].epoch;
        if let Some(&(other, e)) = self.winners.get(&key) {
            let still = self.machines[other].alive && self.machines[other].epoch == e;
            if other != m && still {
                return Err(self.fail(
                    FailureKind::TwoWinners,
                    format!(
                        "vm{} generation {}: machines m{other} and m{m} (both host h{}) won it \
                         and both run",
                        key.0, key.1, self.machines[m].host
                    ),
                ));
            }
        }
        self.winners.insert(key, (m, epoch));
        Ok(())
    }
}
