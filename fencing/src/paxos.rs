//! Disk Paxos (Gafni & Lamport, 2003) for the one-shot decision "who owns
//! (VM, generation)", over one disk with one block per host (see [`crate::layout`]).
//!
//! [`Proposer`] is a pure state machine: it asks for sector reads and writes
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
//! On abort the driver waits (randomized backoff) and calls
//! [`Proposer::retry`], which starts phase 1 with a higher ballot.
//!
//! Ring slots are reused by later generations: if any block of the slot,
//! own included, names a *later* generation, the answer is
//! [`Outcome::Superseded`] and nothing is written over it (a host never moves
//! its own block back to an older generation, which would erase its accepted
//! value for the later one).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::io::SectorIo;
use crate::layout::{view_paxos, Geometry, PaxosBlock, Sector, SlotView};

/// Identifies one I/O request of a proposer.
pub type Token = u64;

/// A sector operation the proposer wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read { sector: u64 },
    Write { sector: u64, data: Box<Sector> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    pub token: Token,
    pub op: Op,
}

/// The completion of an [`IoRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoResult {
    Read(Box<Sector>),
    Written,
    Failed,
}

/// The end of a proposer's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Final: host index `owner` owns the instance.
    Decided { owner: u32 },
    /// A later generation reuses the ring slot; this one can no longer be decided.
    Superseded { by: u64 },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Recover,
    Write1,
    Read1,
    Write2,
    Read2,
    Aborted,
    Commit(u32),
    Done(Outcome),
}

/// One host's run of Disk Paxos for one (VM, generation).
#[derive(Debug, Clone)]
pub struct Proposer {
    geo: Geometry,
    me: u32,
    vm: u32,
    generation: u64,
    dblock: PaxosBlock,
    phase: Phase,
    next_token: Token,
    pending: BTreeMap<Token, u32>,
    views: BTreeMap<u32, SlotView>,
    max_seen: u64,
    ballots: u32,
}

impl Proposer {
    /// Starts host `me`'s run for (`vm`, `generation`); perform the returned requests.
    pub fn new(geo: Geometry, me: u32, vm: u32, generation: u64) -> (Self, Vec<IoRequest>) {
        assert!(
            me < geo.hosts && vm < geo.vms,
            "host or vm index out of range"
        );
        let mut p = Proposer {
            geo,
            me,
            vm,
            generation,
            dblock: PaxosBlock::empty(me, vm, generation),
            phase: Phase::Recover,
            next_token: 1,
            pending: BTreeMap::new(),
            views: BTreeMap::new(),
            max_seen: 0,
            ballots: 0,
        };
        let r = p.read(me);
        (p, vec![r])
    }

    /// Ballots started so far.
    pub fn ballots(&self) -> u32 {
        self.ballots
    }

    /// The decided owner as soon as it is known (before the commit write
    /// completes: a lost commit does not undo a decision).
    pub fn decided(&self) -> Option<u32> {
        match self.phase {
            Phase::Commit(o) | Phase::Done(Outcome::Decided { owner: o }) => Some(o),
            _ => None,
        }
    }

    /// The outcome, once done.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.phase {
            Phase::Done(o) => Some(o),
            _ => None,
        }
    }

    /// Feeds the completion of request `token`. Unknown tokens (e.g. late
    /// completions after a failure) are ignored.
    pub fn complete(&mut self, token: Token, result: IoResult) -> Poll {
        let Some(host) = self.pending.remove(&token) else {
            return self.idle_poll();
        };
        if result == IoResult::Failed {
            self.pending.clear();
            return self.finish(Outcome::IoFailed);
        }
        match (self.phase, result) {
            (Phase::Recover, IoResult::Read(data)) => {
                debug_assert_eq!(host, self.me);
                match self.view(&data, self.me) {
                    SlotView::Later(by) => self.finish(Outcome::Superseded { by }),
                    SlotView::Block(b) if b.owner != 0 => self.finish(Outcome::Decided {
                        owner: (b.owner - 1) as u32,
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
            (Phase::Commit(owner), IoResult::Written) => self.finish(Outcome::Decided { owner }),
            (phase, result) => unreachable!("completion {result:?} in phase {phase:?}"),
        }
    }

    /// After [`Poll::Retry`]: starts a new, higher ballot.
    pub fn retry(&mut self) -> Vec<IoRequest> {
        assert_eq!(self.phase, Phase::Aborted, "retry only after an abort");
        self.start_ballot()
    }

    fn idle_poll(&self) -> Poll {
        match self.phase {
            Phase::Done(o) => Poll::Done(o),
            Phase::Aborted => Poll::Retry,
            _ => Poll::Wait,
        }
    }

    fn finish(&mut self, o: Outcome) -> Poll {
        if let Outcome::Decided { owner } = o {
            assert!(
                owner < self.geo.hosts,
                "decided owner {owner} is not a host"
            );
        }
        self.phase = Phase::Done(o);
        Poll::Done(o)
    }

    fn token(&mut self, host: u32) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        self.pending.insert(t, host);
        t
    }

    fn read(&mut self, host: u32) -> IoRequest {
        let sector = self.geo.paxos_sector(self.vm, self.generation, host);
        IoRequest {
            token: self.token(host),
            op: Op::Read { sector },
        }
    }

    fn write_own(&mut self) -> IoRequest {
        debug_assert!(self.dblock.bal <= self.dblock.mbal);
        debug_assert_eq!(self.dblock.bal == 0, self.dblock.inp == 0);
        let sector = self.geo.paxos_sector(self.vm, self.generation, self.me);
        let data = Box::new(self.dblock.encode());
        IoRequest {
            token: self.token(self.me),
            op: Op::Write { sector, data },
        }
    }

    /// A block read from disk, with values that cannot come from this
    /// algorithm (out-of-range hosts, `bal > mbal`) treated as empty.
    fn view(&self, data: &Sector, host: u32) -> SlotView {
        match view_paxos(data, host, self.vm, self.generation) {
            SlotView::Block(b) => {
                let n = u64::from(self.geo.hosts);
                // `mbal` far below where ballot arithmetic could overflow.
                let sane = b.mbal < 1 << 62
                    && b.inp <= n
                    && b.owner <= n
                    && b.bal <= b.mbal
                    && (b.bal == 0) == (b.inp == 0);
                if sane {
                    SlotView::Block(b)
                } else {
                    SlotView::Empty
                }
            }
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
        let reqs: Vec<IoRequest> = others.into_iter().map(|q| self.read(q)).collect();
        if reqs.is_empty() {
            self.evaluate()
        } else {
            Poll::Io(reqs)
        }
    }

    fn evaluate(&mut self) -> Poll {
        debug_assert_eq!(self.views.len() as u32, self.geo.hosts - 1);
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
            return self.commit(b.owner);
        }
        let highest = blocks.iter().map(|b| b.mbal).max().unwrap_or(0);
        self.max_seen = self.max_seen.max(highest);
        // Ballots are unique per host, so `==` means a block this code did not
        // write: treat it as a higher ballot (abort, retry above it).
        if highest >= self.dblock.mbal {
            self.phase = Phase::Aborted;
            return Poll::Retry;
        }
        match self.phase {
            Phase::Read1 => {
                let chosen = blocks
                    .iter()
                    .chain(std::iter::once(&self.dblock))
                    .filter(|b| b.bal > 0)
                    .max_by_key(|b| b.bal)
                    .map(|b| b.inp);
                self.dblock.bal = self.dblock.mbal;
                self.dblock.inp = chosen.unwrap_or(u64::from(self.me) + 1);
                self.phase = Phase::Write2;
                Poll::Io(vec![self.write_own()])
            }
            Phase::Read2 => {
                debug_assert_eq!(self.dblock.bal, self.dblock.mbal);
                self.commit(self.dblock.inp)
            }
            p => unreachable!("evaluate in phase {p:?}"),
        }
    }

    fn commit(&mut self, owner_plus_one: u64) -> Poll {
        assert!(
            owner_plus_one >= 1 && owner_plus_one <= u64::from(self.geo.hosts),
            "only a host can be decided"
        );
        let owner = (owner_plus_one - 1) as u32;
        self.dblock.owner = owner_plus_one;
        self.phase = Phase::Commit(owner);
        Poll::Io(vec![self.write_own()])
    }
}

/// Why [`decide`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("storage i/o failed: {0}")]
    Io(std::io::Error),
    #[error("no decision within {0:?} ({1} ballots)")]
    Timeout(Duration, u32),
}

/// Runs Disk Paxos for (`vm`, `generation`) as host `me` on `io`, retrying
/// after aborts (randomized backoff up to `backoff`) and after I/O errors
/// until `deadline`. Blocks for at most about `deadline` plus one I/O.
pub fn decide(
    io: &dyn SectorIo,
    geo: Geometry,
    me: u32,
    vm: u32,
    generation: u64,
    deadline: Instant,
    backoff: Duration,
) -> Result<Outcome, DecideError> {
    let started = Instant::now();
    let mut rng = crate::rng::SplitMix::from_entropy(u64::from(me));
    let mut ballots = 0;
    let mut last_io_error = None;
    while Instant::now() < deadline {
        let (mut p, mut queue) = Proposer::new(geo, me, vm, generation);
        let outcome = loop {
            let Some(req) = queue.pop() else {
                // Every request was completed and the last poll asked to back off.
                let wait = backoff.mul_f64(rng.unit());
                if Instant::now() + wait >= deadline {
                    break None;
                }
                std::thread::sleep(wait);
                queue = p.retry();
                continue;
            };
            let result = match &req.op {
                Op::Read { sector } => io.read(*sector).map(|s| IoResult::Read(Box::new(s))),
                Op::Write { sector, data } => io.write(*sector, data).map(|()| IoResult::Written),
            };
            let result = result.unwrap_or_else(|e| {
                last_io_error = Some(e);
                IoResult::Failed
            });
            match p.complete(req.token, result) {
                Poll::Io(more) => queue.extend(more),
                Poll::Wait | Poll::Retry => {}
                Poll::Done(o) => break Some(o),
            }
        };
        ballots += p.ballots();
        match outcome {
            Some(Outcome::IoFailed) => {
                let wait = backoff.max(Duration::from_millis(10));
                if Instant::now() + wait >= deadline {
                    break;
                }
                std::thread::sleep(wait);
            }
            Some(o) => return Ok(o),
            None => break,
        }
    }
    match last_io_error {
        Some(e) => Err(DecideError::Io(e)),
        None => Err(DecideError::Timeout(started.elapsed(), ballots)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RegionIo;
    use std::sync::Arc;

    fn geo(n: usize) -> Geometry {
        let names: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
        Geometry::new(names.iter().map(String::as_str), ["kv"], 4)
    }

    fn region(g: &Geometry) -> (tempfile::TempDir, Arc<RegionIo>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev");
        std::fs::write(&p, vec![0u8; g.sectors() as usize * 512]).unwrap();
        let io = RegionIo::open(&p, 0, g.sectors()).unwrap();
        (dir, Arc::new(io))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn lone_host_decides_itself_and_others_learn_it() {
        let g = geo(3);
        let (_d, io) = region(&g);
        let o = decide(&*io, g, 1, 0, 5, far(), Duration::from_millis(5)).unwrap();
        assert_eq!(o, Outcome::Decided { owner: 1 });
        for me in [0, 2] {
            let o = decide(&*io, g, me, 0, 5, far(), Duration::from_millis(5)).unwrap();
            assert_eq!(o, Outcome::Decided { owner: 1 });
        }
        // Generation 9 shares the ring slot of 5 (ring of 4 is 1): a new
        // decision, after which 5 is superseded for a host whose block moved on,
        // while a host whose block still holds the decision of 5 answers it.
        let o = decide(&*io, g, 2, 0, 9, far(), Duration::from_millis(5)).unwrap();
        assert_eq!(o, Outcome::Decided { owner: 2 });
        let o = decide(&*io, g, 2, 0, 5, far(), Duration::from_millis(5)).unwrap();
        assert_eq!(o, Outcome::Superseded { by: 9 });
        let o = decide(&*io, g, 0, 0, 5, far(), Duration::from_millis(5)).unwrap();
        assert_eq!(o, Outcome::Decided { owner: 1 });
    }

    #[test]
    fn three_hosts_in_threads_agree_on_one_owner() {
        let g = geo(3);
        let (_d, io) = region(&g);
        for generation in 1..=6u64 {
            let handles: Vec<_> = (0..3)
                .map(|me| {
                    let io = Arc::clone(&io);
                    std::thread::spawn(move || {
                        decide(&*io, g, me, 0, generation, far(), Duration::from_millis(3)).unwrap()
                    })
                })
                .collect();
            let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let Outcome::Decided { owner } = outcomes[0] else {
                panic!("not decided: {outcomes:?}");
            };
            assert!(outcomes.iter().all(|o| *o == Outcome::Decided { owner }));
        }
    }

    #[test]
    fn a_higher_ballot_on_disk_makes_the_proposer_retry_higher() {
        let g = geo(2);
        let (p, reqs) = Proposer::new(g, 0, 0, 1);
        let mut p = p;
        assert_eq!(reqs.len(), 1);
        let Poll::Io(w) = p.complete(reqs[0].token, IoResult::Read(Box::new([0; 512]))) else {
            panic!()
        };
        let Op::Write { data, .. } = &w[0].op else {
            panic!()
        };
        let mine = PaxosBlock::decode(&**data).unwrap();
        assert_eq!(mine.mbal, 3); // round 1 * 2 hosts + index 0 + 1
        let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
            panic!()
        };
        let other = PaxosBlock {
            mbal: 8,
            ..PaxosBlock::empty(1, 0, 1)
        };
        assert_eq!(
            p.complete(r[0].token, IoResult::Read(Box::new(other.encode()))),
            Poll::Retry
        );
        let w = p.retry();
        let Op::Write { data, .. } = &w[0].op else {
            panic!()
        };
        assert_eq!(PaxosBlock::decode(&**data).unwrap().mbal, 11);
        // A block no correct host writes (ballot equal to ours, or near
        // overflow) neither panics nor wins: equal aborts, huge reads as empty.
        let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
            panic!()
        };
        let twin = PaxosBlock {
            mbal: 11,
            ..PaxosBlock::empty(1, 0, 1)
        };
        assert_eq!(
            p.complete(r[0].token, IoResult::Read(Box::new(twin.encode()))),
            Poll::Retry
        );
        let w = p.retry();
        let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
            panic!()
        };
        let huge = PaxosBlock {
            mbal: u64::MAX,
            ..PaxosBlock::empty(1, 0, 1)
        };
        let Poll::Io(w) = p.complete(r[0].token, IoResult::Read(Box::new(huge.encode()))) else {
            panic!("a huge ballot must read as empty, and phase 2 follow")
        };
        // A failed I/O ends the run; late completions are ignored.
        assert_eq!(
            p.complete(w[0].token, IoResult::Failed),
            Poll::Done(Outcome::IoFailed)
        );
        assert_eq!(
            p.complete(w[0].token, IoResult::Written),
            Poll::Done(Outcome::IoFailed)
        );
    }
}
