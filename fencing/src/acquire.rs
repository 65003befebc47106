//! The agent's answers about generations: `Acquire` (Disk Paxos for one
//! (VM, generation)) and `Highest` (the highest generation any host's block
//! names for a VM).
//!
//! # Rules
//!
//! - Both answer within a bound (a worker thread does the I/O, so a hung
//!   device cannot hold the answer past it; [`ACQUIRE_BOUND`] is below the 5 s
//!   read timeout of `config_schema::ctl::query`).
//! - One Disk Paxos run at a time per agent.
//! - A corrupt block is an alarm and an `Error` naming it, never a decision
//!   or a generation number (see [`crate::alarm`]).
//! - `Superseded` is a typed answer: a later generation reuses the ring slot.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use config_schema::clock::BootInstant;

use config_schema::ctl::Response;
use config_schema::events::{self, EventKind};

use crate::agent::Agent;
use crate::alarm::Alarm;
use crate::io::BlockIo;
use crate::layout::{view_paxos, Geometry, PaxosBlock, Running, SlotView};
use crate::paxos::{decide, Ask, CorruptBlock, Outcome, CORRUPT_REREADS};
use crate::storage_fence::WinFence;

/// How long one `Acquire` or `Highest` may take before it is answered with
/// an error. Below the 5 s read timeout of `config_schema::ctl::query`.
pub const ACQUIRE_BOUND: Duration = Duration::from_secs(4);

/// What a scan of every block of one VM found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HighestSeen {
    /// The highest generation a valid block names (0: none).
    pub generation: u64,
    /// Its decided owner (host index), if a block of it records one.
    pub owner: Option<u32>,
    /// The config generation recorded with that decision; undecided: the
    /// highest one proposed with an accepted value of it (0: none).
    pub config_generation: u64,
}

/// Why a scan gave no answer.
#[derive(Debug)]
pub enum ScanError {
    Io(std::io::Error),
    Corrupt(CorruptBlock),
}

/// Reads every host's block of every ring slot of VM `vm`: the valid ones
/// (a corrupt one is read [`CORRUPT_REREADS`] more times, then an error).
pub fn scan_blocks(
    io: &dyn BlockIo,
    geo: &Geometry,
    vm: u32,
) -> Result<Vec<PaxosBlock>, ScanError> {
    let mut blocks: Vec<PaxosBlock> = Vec::new();
    for slot in 0..u64::from(geo.ring) {
        for h in 0..geo.hosts {
            let at = geo.paxos_block(vm, slot, h);
            let mut rereads = 0;
            loop {
                let data = io.read(at).map_err(ScanError::Io)?;
                // Asked about generation `slot`: every valid block of the
                // slot reads as "later" (or as this one), which is what the
                // scan wants; a block of generation 0 is corrupt anyway.
                let asked = if slot == 0 { u64::from(geo.ring) } else { slot };
                match view_paxos(&data, h, vm, asked, geo.ring) {
                    SlotView::Empty => {}
                    SlotView::Block(_) | SlotView::Later(_) => {
                        blocks.push(PaxosBlock::decode(&data).expect("viewed as valid"));
                    }
                    SlotView::Corrupt(reason) if rereads >= CORRUPT_REREADS => {
                        return Err(ScanError::Corrupt(CorruptBlock {
                            host: h,
                            block: at,
                            reason,
                        }))
                    }
                    SlotView::Corrupt(_) => {
                        rereads += 1;
                        continue;
                    }
                }
                break;
            }
        }
    }
    Ok(blocks)
}

/// Reads every host's block of every ring slot of VM `vm` and finds the
/// highest generation named.
pub fn scan_highest(io: &dyn BlockIo, geo: &Geometry, vm: u32) -> Result<HighestSeen, ScanError> {
    scan_blocks(io, geo, vm).map(|b| highest_of(&b))
}

/// The newest generation below `below` whose owner a block records, and
/// that owner (host index): the host that acted for the VM last before
/// `below` (only a recorded decision can have been acted on: a winner
/// answers `Decided` only after its commit write).
pub fn previous_owner(blocks: &[PaxosBlock], below: u64) -> Option<(u64, u32)> {
    blocks
        .iter()
        .filter(|b| b.owner != 0 && b.generation < below)
        .max_by_key(|b| b.generation)
        .map(|b| (b.generation, (b.owner - 1) as u32))
}

fn highest_of(blocks: &[PaxosBlock]) -> HighestSeen {
    let Some(top) = blocks.iter().map(|b| b.generation).max() else {
        return HighestSeen::default();
    };
    let of_top = || blocks.iter().filter(move |b| b.generation == top);
    match of_top().find(|b| b.owner != 0) {
        Some(b) => HighestSeen {
            generation: top,
            owner: Some((b.owner - 1) as u32),
            config_generation: b.owner_config,
        },
        None => HighestSeen {
            generation: top,
            owner: None,
            config_generation: of_top().map(|b| b.inp_config).max().unwrap_or(0),
        },
    }
}

impl Agent {
    /// `Request::Acquire`: runs Disk Paxos for (`vm`, `generation`),
    /// proposing this host under `config_generation`, answering within about
    /// `bound`.
    pub fn acquire(
        self: &Arc<Self>,
        vm: &str,
        generation: u64,
        config_generation: u64,
        bound: Duration,
    ) -> Response {
        let err = |message: String| Response::Error { message };
        let v = match self.slot_of(vm) {
            Ok(v) => v,
            Err(e) => return err(e),
        };
        if generation == 0 {
            return err(format!(
                "fencing: vm {vm}: generation 0 is not a generation (they start at 1)"
            ));
        }
        if let Some(why) = self.preempted() {
            return err(format!(
                "fencing: vm {vm} generation {generation}: this host was preempted at the \
                 storage ({why}); it acts for no VM until it rebooted"
            ));
        }
        let me = Running { vm: v, generation };
        let started = std::time::Instant::now();
        let r = self.bounded(v, bound, move |agent, deadline| {
            // Published, and that lease write completed, before any Paxos
            // write of this Acquire (docs/design.md §1).
            agent.publication.lock().expect("lock").begin_acquire(me)?;
            let published = agent.publish();
            let r = published.and_then(|()| {
                let backoff = agent.timing.renew / 10;
                let ask = Ask {
                    geo: agent.geo,
                    me: agent.me,
                    vm: v,
                    generation,
                    config_generation,
                };
                decide(&*agent.io, ask, deadline, backoff).map_err(|e| e.to_string())
            });
            // A win is answered only once the previous owner is fenced at
            // the storage (storage_fence.rs).
            let r = r.and_then(|o| match o {
                Outcome::Decided { owner, .. } if owner == agent.me => {
                    let _one_at_a_time = agent.win_fence.lock().expect("lock");
                    agent.fence_for_win(v, generation).map(|w| (o, w))
                }
                o => Ok((o, WinFence::default())),
            });
            agent.publication.lock().expect("lock").end_acquire(me);
            r
        });
        let (outcome, storage_cut) = match r {
            Ok((o, w)) => {
                if let Some(l) = w.line {
                    config_schema::console::say(l);
                }
                (o, w.storage_cut)
            }
            Err(e) => return err(format!("fencing: vm {vm} generation {generation}: {e}")),
        };
        if matches!(
            outcome,
            Outcome::Decided { .. } | Outcome::Superseded { .. }
        ) {
            self.counters
                .lock()
                .expect("lock")
                .decide
                .add(started.elapsed());
        }
        match outcome {
            Outcome::Decided {
                owner,
                config_generation,
            } => {
                let mut r = self.decided(vm, generation, owner, config_generation);
                if let Response::Decided {
                    storage_cut: cut, ..
                } = &mut r
                {
                    *cut = storage_cut;
                }
                r
            }
            Outcome::Superseded { by } => Response::Superseded {
                vm: vm.to_string(),
                generation,
                by,
            },
            Outcome::Corrupt(c) => err(self.alarm(vm, Some(generation), c)),
            Outcome::IoFailed => unreachable!("decide retries failed I/O"),
        }
    }

    /// `Request::Highest`: the highest generation any host's block names
    /// for `vm`, its owner and config generation, within about `bound`.
    pub fn highest(self: &Arc<Self>, vm: &str, bound: Duration) -> Response {
        let err = |message: String| Response::Error { message };
        let v = match self.slot_of(vm) {
            Ok(v) => v,
            Err(e) => return err(e),
        };
        let r = self.bounded(v, bound, move |agent, _| {
            Ok(scan_highest(&*agent.io, &agent.geo, v))
        });
        match r {
            Ok(Ok(h)) => Response::Highest {
                vm: vm.to_string(),
                generation: h.generation,
                owner: h.owner.map(|o| self.hosts[o as usize].clone()),
                config_generation: h.config_generation,
            },
            // The corrupt block may name a higher generation than any
            // readable one: no number is answered.
            Ok(Err(ScanError::Corrupt(c))) => err(self.alarm(vm, None, c)),
            Ok(Err(ScanError::Io(e))) => err(format!("fencing: vm {vm}: storage i/o failed: {e}")),
            Err(e) => err(format!("fencing: vm {vm}: {e}")),
        }
    }

    /// Runs `f` in a worker (one at a time for VM index `vm`, after the
    /// header check) and waits at most about `bound` for its result.
    fn bounded<T: Send + 'static>(
        self: &Arc<Self>,
        vm: u32,
        bound: Duration,
        f: impl FnOnce(&Agent, BootInstant) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let deadline = BootInstant::now() + bound;
        let (tx, rx) = mpsc::channel();
        let agent = Arc::clone(self);
        std::thread::spawn(move || {
            let Some(Ok(_one_at_a_time)) = agent.paxos.get(vm as usize).map(|m| m.lock()) else {
                return;
            };
            if BootInstant::now() >= deadline {
                return;
            }
            // The header check may do I/O too: here, inside the bound.
            let r = match agent.init_region() {
                Err(e) => Err(e.to_string()),
                Ok(_) => f(&agent, deadline),
            };
            let _ = tx.send(r);
        });
        rx.recv_timeout(bound + Duration::from_millis(100))
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer from storage within {} ms",
                    bound.as_millis()
                ))
            })
    }

    fn decided(&self, vm: &str, generation: u64, owner: u32, config: u64) -> Response {
        let name = self.hosts[owner as usize].clone();
        let first = self
            .decisions
            .lock()
            .expect("lock")
            .insert((vm.to_string(), generation), (name.clone(), config))
            .is_none();
        if first {
            let line = format!(
                "fencing: decided vm={vm} generation={generation} owner={name} (config generation {config})"
            );
            config_schema::console::say(line.clone());
            events::record(EventKind::Fencing, Some(vm), None, &line);
        }
        Response::Decided {
            vm: vm.to_string(),
            generation,
            won: owner == self.me,
            owner: name,
            config_generation: config,
            storage_cut: false,
        }
    }

    /// Raises the alarm for a corrupt block; returns the message to answer.
    pub(crate) fn alarm(&self, vm: &str, generation: Option<u64>, c: CorruptBlock) -> String {
        let (_, slot, _) = self
            .geo
            .paxos_position(c.block)
            .expect("a corrupt Paxos block is a Paxos block");
        let alarm = Alarm {
            vm: vm.to_string(),
            generation,
            slot,
            host: self.hosts[c.host as usize].clone(),
            block: c.block,
            device_offset: self.io.device_offset(c.block),
            reason: c.reason,
        };
        let message = alarm.line();
        if let Some(line) = self.alarms.lock().expect("lock").raise(alarm) {
            config_schema::console::say(line);
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host: u32, generation: u64, owner: u64, owner_config: u64, inp_config: u64) -> PaxosBlock {
        PaxosBlock {
            host,
            generation,
            mbal: 1,
            owner,
            owner_config,
            inp: u64::from(inp_config > 0),
            bal: u64::from(inp_config > 0),
            inp_config,
            ..PaxosBlock::default()
        }
    }

    #[test]
    fn highest_names_the_top_generation_its_owner_and_config() {
        assert_eq!(highest_of(&[]), HighestSeen::default());
        let decided = [b(0, 3, 2, 5, 5), b(1, 7, 0, 0, 0), b(2, 7, 2, 4, 4)];
        assert_eq!(previous_owner(&decided, 8), Some((7, 1)));
        assert_eq!(previous_owner(&decided, 7), Some((3, 1)));
        assert_eq!(previous_owner(&decided, 3), None);
        assert_eq!(
            highest_of(&decided),
            HighestSeen {
                generation: 7,
                owner: Some(1),
                config_generation: 4
            }
        );
        let open = [b(0, 7, 0, 0, 3), b(1, 7, 0, 0, 6), b(2, 2, 1, 1, 1)];
        assert_eq!(
            highest_of(&open),
            HighestSeen {
                generation: 7,
                owner: None,
                config_generation: 6
            }
        );
    }
}
