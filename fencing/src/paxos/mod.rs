//! Disk Paxos (Gafni & Lamport, 2003) for the one-shot decision "who owns
//! (VM, generation)", over one disk with one block per host (see [`crate::layout`]).
//!
//! [`Proposer`] is a pure state machine: it asks for block reads and writes
//! ([`IoRequest`]) and advances on their completions ([`Proposer::complete`]).
//! The daemon drives it synchronously against the device ([`decide`]); the
//! simulation test drives the very same code against a disk that delays,
//! reorders and loses I/O.
//!
//! One attempt (a *ballot*), for host `p` with block `dblock`:
//! 1. *Recover*: read `p`'s own block (a restarted host continues from what
//!    reached the disk; nothing else is remembered across crashes).
//! 2. *Phase 1*: pick `mbal` above every ballot seen (`round * N + p + 1`, so
//!    ballots of different hosts never collide), write `dblock`, and only once
//!    that write is acknowledged read every other host's block. Abort if one
//!    has a higher `mbal`. Otherwise take the `inp` of the highest `bal` seen
//!    (own block included), or `p + 1` (propose itself) if none.
//! 3. *Phase 2*: `bal := mbal`, `inp := v`; write, then read all others; abort
//!    on a higher `mbal`. Otherwise `v` is decided.
//! 4. *Commit*: write `owner := v` into `dblock`. Anyone who reads a block with
//!    an owner adopts it at once (only decided values are ever committed).
//!
//! On abort the driver waits (randomized backoff, its window doubling with
//! each abort in a row: [`backoff_wait`]) and calls [`Proposer::retry`],
//! which starts phase 1 with a higher ballot.
//!
//! A block that is written but does not read as a block of its position
//! ([`SlotView::Corrupt`]) is read again up to [`CORRUPT_REREADS`] times (a
//! read racing a write can tear on some storage paths); if it stays corrupt the
//! run ends with [`Outcome::Corrupt`] naming the block. Nothing is decided over
//! a corrupt block and nothing is written after it was seen: it may hide the
//! accepted value of a decision, and reading it as empty could decide a second
//! owner.
//!
//! Ring slots are reused by later generations: if any block of the slot,
//! own included, names a *later* generation, the answer is
//! [`Outcome::Superseded`] and nothing is written over it (a host never moves
//! its own block back to an older generation, which would erase its accepted
//! value for the later one).

mod decide;

use std::collections::BTreeMap;

use crate::layout::{view_paxos, Block, Geometry, PaxosBlock, SlotView};

pub use decide::{backoff_wait, decide, decide_with, Ask, DecideError, Exec, BACKOFF_DOUBLINGS};

/// Identifies one I/O request of a proposer.
pub type Token = u64;

/// A block operation the proposer wants done (block index in the region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read { block: u64 },
    Write { block: u64, data: Block },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    pub token: Token,
    pub op: Op,
}

/// The completion of an [`IoRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoResult {
    Read(Block),
    Written,
    Failed,
}

/// How many times a block that reads as corrupt is read again before the
/// run ends with [`Outcome::Corrupt`].
pub const CORRUPT_REREADS: u32 = 2;

/// A block that stayed corrupt: whose, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlock {
    /// The host whose block it is (by position).
    pub host: u32,
    /// Its block index in the region.
    pub block: u64,
    pub reason: String,
}

/// The end of a proposer's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Final: host index `owner` owns the instance, decided with the config
    /// generation it proposed itself under.
    Decided { owner: u32, config_generation: u64 },
    /// A later generation reuses the ring slot; this one can no longer be decided.
    Superseded { by: u64 },
    /// A block of the instance is corrupt: the ballot is abandoned, nothing
    /// is decided (raise an alarm; do not retry blindly).
    Corrupt(CorruptBlock),
    /// An I/O failed; start again with a new proposer (it recovers from disk).
    IoFailed,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Perform these requests (in any order, possibly concurrently).
    Io(Vec<IoRequest>),
    /// Wait for outstanding completions.
    Wait,
    /// The ballot was overtaken: back off, then call [`Proposer::retry`].
    Retry,
    Done(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Recover,
    Write1,
    Read1,
    Write2,
    Read2,
    Aborted,
    Commit(Decision),
    Done(Outcome),
}

/// The decided value: the owner and the config generation it proposed
/// itself under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub owner: u32,
    pub config_generation: u64,
}

/// One host's run of Disk Paxos for one (VM, generation).
#[derive(Debug, Clone)]
pub struct Proposer {
    geo: Geometry,
    me: u32,
    vm: u32,
    generation: u64,
    /// The config generation this host proposes itself under.
    config_generation: u64,
    dblock: PaxosBlock,
    phase: Phase,
    next_token: Token,
    /// Outstanding requests: the host whose block, and how many times it was
    /// already read and found corrupt.
    pending: BTreeMap<Token, (u32, u32)>,
    views: BTreeMap<u32, SlotView>,
    max_seen: u64,
    ballots: u32,
}

impl Proposer {
    /// Starts host `me`'s run for (`vm`, `generation`), proposing itself
    /// under `config_generation`; perform the returned requests.
    pub fn new(
        geo: Geometry,
        me: u32,
        vm: u32,
        generation: u64,
        config_generation: u64,
    ) -> (Self, Vec<IoRequest>) {
        assert!(
            me < geo.hosts && vm < geo.vms,
            "host or vm index out of range"
        );
        assert!(generation > 0, "generations start at 1");
        let mut p = Proposer {
            geo,
            me,
            vm,
            generation,
            config_generation,
            dblock: PaxosBlock::empty(me, vm, generation),
            phase: Phase::Recover,
            next_token: 1,
            pending: BTreeMap::new(),
            views: BTreeMap::new(),
            max_seen: 0,
            ballots: 0,
        };
        let r = p.read(me, 0);
        (p, vec![r])
    }

    /// Ballots started so far.
    pub fn ballots(&self) -> u32 {
        self.ballots
    }

    /// The decision as soon as it is known (before the commit write
    /// completes: a lost commit does not undo a decision).
    pub fn decided(&self) -> Option<Decision> {
        match self.phase {
            Phase::Commit(d) => Some(d),
            Phase::Done(Outcome::Decided {
                owner,
                config_generation,
            }) => Some(Decision {
                owner,
                config_generation,
            }),
            _ => None,
        }
    }

    /// The outcome, once done.
    pub fn outcome(&self) -> Option<Outcome> {
        match &self.phase {
            Phase::Done(o) => Some(o.clone()),
            _ => None,
        }
    }

    /// Feeds the completion of request `token`. Unknown tokens (e.g. late
    /// completions after a failure) are ignored.
    pub fn complete(&mut self, token: Token, result: IoResult) -> Poll {
        let Some((host, rereads)) = self.pending.remove(&token) else {
            return self.idle_poll();
        };
        if result == IoResult::Failed {
            self.pending.clear();
            return self.finish(Outcome::IoFailed);
        }
        if let IoResult::Read(data) = &result {
            if let SlotView::Corrupt(reason) = self.view(data, host) {
                return self.on_corrupt(host, rereads, reason);
            }
        }
        match (self.phase.clone(), result) {
            (Phase::Recover, IoResult::Read(data)) => {
                debug_assert_eq!(host, self.me);
                match self.view(&data, self.me) {
                    SlotView::Corrupt(_) => unreachable!("handled above"),
                    SlotView::Later(by) => self.finish(Outcome::Superseded { by }),
                    SlotView::Block(b) if b.owner != 0 => self.finish(Outcome::Decided {
                        owner: (b.owner - 1) as u32,
                        config_generation: b.owner_config,
                    }),
                    SlotView::Block(b) => {
                        self.dblock = b;
                        self.max_seen = b.mbal;
                        Poll::Io(self.start_ballot())
                    }
                    SlotView::Empty => Poll::Io(self.start_ballot()),
                }
            }
            (Phase::Write1, IoResult::Written) => self.read_others(Phase::Read1),
            (Phase::Write2, IoResult::Written) => self.read_others(Phase::Read2),
            (Phase::Read1 | Phase::Read2, IoResult::Read(data)) => {
                let v = self.view(&data, host);
                self.views.insert(host, v);
                if self.pending.is_empty() {
                    self.evaluate()
                } else {
                    Poll::Wait
                }
            }
            (Phase::Commit(d), IoResult::Written) => self.finish(Outcome::Decided {
                owner: d.owner,
                config_generation: d.config_generation,
            }),
            (phase, result) => unreachable!("completion {result:?} in phase {phase:?}"),
        }
    }

    /// After [`Poll::Retry`]: starts a new, higher ballot.
    pub fn retry(&mut self) -> Vec<IoRequest> {
        assert_eq!(self.phase, Phase::Aborted, "retry only after an abort");
        self.start_ballot()
    }

    /// A read found host `host`'s block corrupt (`rereads` times before):
    /// read it again, or end the run without deciding anything.
    fn on_corrupt(&mut self, host: u32, rereads: u32, reason: String) -> Poll {
        if rereads < CORRUPT_REREADS {
            return Poll::Io(vec![self.read(host, rereads + 1)]);
        }
        // Outstanding reads of this ballot are dropped; their completions
        // are ignored as unknown tokens.
        self.pending.clear();
        let block = self.geo.paxos_block(self.vm, self.generation, host);
        self.finish(Outcome::Corrupt(CorruptBlock {
            host,
            block,
            reason,
        }))
    }

    fn idle_poll(&self) -> Poll {
        match &self.phase {
            Phase::Done(o) => Poll::Done(o.clone()),
            Phase::Aborted => Poll::Retry,
            _ => Poll::Wait,
        }
    }

    fn finish(&mut self, o: Outcome) -> Poll {
        if let Outcome::Decided { owner, .. } = o {
            assert!(
                owner < self.geo.hosts,
                "decided owner {owner} is not a host"
            );
        }
        self.phase = Phase::Done(o.clone());
        Poll::Done(o)
    }

    fn token(&mut self, host: u32, rereads: u32) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        self.pending.insert(t, (host, rereads));
        t
    }

    fn read(&mut self, host: u32, rereads: u32) -> IoRequest {
        let block = self.geo.paxos_block(self.vm, self.generation, host);
        IoRequest {
            token: self.token(host, rereads),
            op: Op::Read { block },
        }
    }

    fn write_own(&mut self) -> IoRequest {
        debug_assert!(self.dblock.bal <= self.dblock.mbal);
        debug_assert_eq!(self.dblock.bal == 0, self.dblock.inp == 0);
        let block = self.geo.paxos_block(self.vm, self.generation, self.me);
        let data = self.dblock.encode(self.geo.block_len());
        IoRequest {
            token: self.token(self.me, 0),
            op: Op::Write { block, data },
        }
    }

    /// A block read from disk. Values this algorithm never writes are
    /// corrupt: out-of-range hosts, `bal > mbal`, a value without a ballot, a
    /// ballot that is not the writer's (`round * N + host + 1`), `mbal` near
    /// overflow, or a block in the wrong ring slot.
    fn view(&self, data: &[u8], host: u32) -> SlotView {
        match view_paxos(data, host, self.vm, self.generation, self.geo.ring) {
            SlotView::Block(b) => match insane(&self.geo, &b) {
                Some(why) => SlotView::Corrupt(why),
                None => SlotView::Block(b),
            },
            other => other,
        }
    }

    fn start_ballot(&mut self) -> Vec<IoRequest> {
        let n = u64::from(self.geo.hosts);
        let round = self.max_seen.max(self.dblock.mbal) / n + 1;
        let mbal = round * n + u64::from(self.me) + 1;
        assert!(mbal > self.dblock.mbal, "ballots must grow");
        assert!(mbal > self.max_seen, "a new ballot beats every ballot seen");
        self.dblock.mbal = mbal;
        self.ballots += 1;
        self.phase = Phase::Write1;
        vec![self.write_own()]
    }

    fn read_others(&mut self, phase: Phase) -> Poll {
        self.phase = phase;
        self.views.clear();
        let others: Vec<u32> = (0..self.geo.hosts).filter(|&q| q != self.me).collect();
        let reqs: Vec<IoRequest> = others.into_iter().map(|q| self.read(q, 0)).collect();
        if reqs.is_empty() {
            self.evaluate()
        } else {
            Poll::Io(reqs)
        }
    }

    fn evaluate(&mut self) -> Poll {
        debug_assert_eq!(self.views.len() as u32, self.geo.hosts - 1);
        assert!(
            !self
                .views
                .values()
                .any(|v| matches!(v, SlotView::Corrupt(_))),
            "a corrupt block ends the run before it is evaluated"
        );
        let blocks: Vec<PaxosBlock> = self
            .views
            .values()
            .filter_map(|v| match v {
                SlotView::Block(b) => Some(*b),
                _ => None,
            })
            .collect();
        if let Some(by) = self.views.values().find_map(|v| match v {
            SlotView::Later(g) => Some(*g),
            _ => None,
        }) {
            return self.finish(Outcome::Superseded { by });
        }
        if let Some(b) = blocks.iter().find(|b| b.owner != 0) {
            return self.commit(b.owner, b.owner_config);
        }
        let highest = blocks.iter().map(|b| b.mbal).max().unwrap_or(0);
        self.max_seen = self.max_seen.max(highest);
        // Ballots are unique per host, so `==` means a block this code did not
        // write: treat it as a higher ballot (abort, retry above it).
        if highest >= self.dblock.mbal {
            self.phase = Phase::Aborted;
            return Poll::Retry;
        }
        match self.phase.clone() {
            Phase::Read1 => {
                // The value is (host, config generation): adopted whole.
                let (inp, inp_config) = blocks
                    .iter()
                    .chain(std::iter::once(&self.dblock))
                    .filter(|b| b.bal > 0)
                    .max_by_key(|b| b.bal)
                    .map_or((u64::from(self.me) + 1, self.config_generation), |b| {
                        (b.inp, b.inp_config)
                    });
                self.dblock.bal = self.dblock.mbal;
                self.dblock.inp = inp;
                self.dblock.inp_config = inp_config;
                self.phase = Phase::Write2;
                Poll::Io(vec![self.write_own()])
            }
            Phase::Read2 => {
                debug_assert_eq!(self.dblock.bal, self.dblock.mbal);
                self.commit(self.dblock.inp, self.dblock.inp_config)
            }
            p => unreachable!("evaluate in phase {p:?}"),
        }
    }

    fn commit(&mut self, owner_plus_one: u64, config_generation: u64) -> Poll {
        assert!(
            owner_plus_one >= 1 && owner_plus_one <= u64::from(self.geo.hosts),
            "only a host can be decided"
        );
        let owner = (owner_plus_one - 1) as u32;
        self.dblock.owner = owner_plus_one;
        self.dblock.owner_config = config_generation;
        self.phase = Phase::Commit(Decision {
            owner,
            config_generation,
        });
        Poll::Io(vec![self.write_own()])
    }
}

/// Why a block that decodes cannot have been written by [`Proposer`] at its
/// position; `None` if it can.
fn insane(geo: &Geometry, b: &PaxosBlock) -> Option<String> {
    let n = u64::from(geo.hosts);
    let own_ballot = |x: u64| x == 0 || x % n == (u64::from(b.host) + 1) % n;
    let why = if b.mbal >= 1 << 62 {
        "ballot near overflow"
    } else if b.mbal == 0 {
        "ballot 0 (every written block has started a ballot)"
    } else if b.inp > n || b.owner > n {
        "value or owner is not a host"
    } else if b.bal > b.mbal {
        "accepted ballot above its highest ballot"
    } else if (b.bal == 0) != (b.inp == 0) {
        "accepted value without ballot (or ballot without value)"
    } else if (b.inp == 0 && b.inp_config != 0) || (b.owner == 0 && b.owner_config != 0) {
        "config generation without a value or owner"
    } else if !own_ballot(b.mbal) || !own_ballot(b.bal) {
        "ballot number of another host"
    } else {
        return None;
    };
    Some(why.to_string())
}

#[cfg(test)]
mod tests;
