//! The duel phase of the Disk Paxos simulation: two machines of different
//! hosts race for one fresh (VM, generation), as two hosts do when both ask
//! for the next generation at a failover — one of them possibly slow (a host
//! throttled to a quarter of its CPU: its I/O completes at a quarter of the
//! rate, its backoff lasts four times longer).
//!
//! Unlike the chaos phase (one pool of requests completed in random order,
//! no clock), the duel has a clock in [`TICK_US`] ticks and drives each
//! proposer as [`crate::paxos::decide`] does: one request at a time (taken
//! from the end of its queue), each taking a random latency, its effect on
//! the disk (a read's snapshot, a write landing) at a random moment between
//! issue and acknowledgement; after an abort it waits a uniform backoff and
//! retries. No faults: this phase checks liveness.
//!
//! Checked: the fast machine's run ends with a decision within
//! [`FAST_BOUND_TICKS`] of its start (well under `2 × ACQUIRE_BOUND`: an
//! `Acquire` that times out once already costs a failover seconds), the
//! slow one's within [`SLOW_BOUND_TICKS`], and both learn the same decision.

use super::{FailureKind, SimFailure, World};
use crate::acquire::ACQUIRE_BOUND;
use crate::paxos::{backoff_wait, IoRequest, IoResult, Op, Outcome, Poll, Proposer};
use crate::sim::disk::PendingWrite;

impl DuelStats {
    /// Whether the fast machine decided within [`FAST_BOUND_TICKS`]; the
    /// failure's text if not.
    pub fn check_fast(&self) -> Result<(), String> {
        let f = self.fast;
        if f.ticks <= FAST_BOUND_TICKS {
            return Ok(());
        }
        Err(format!(
            "duel {:?}: the fast machine took {} ms ({} ballots, {} aborts) to decide",
            self.setup,
            f.ticks / TICKS_PER_MS,
            f.ballots,
            f.aborts
        ))
    }
}

/// One tick of the duel's clock, in microseconds.
pub const TICK_US: u64 = 100;

/// Ticks per millisecond.
pub const TICKS_PER_MS: u64 = 1000 / TICK_US;

/// The fast machine decides within this: three quarters of ACQUIRE_BOUND
/// (3 s), so its `Acquire` does not time out, with a second to spare (a
/// ballot alone takes up to ~0.5 s at [`Pace::CRAWL`]).
pub const FAST_BOUND_TICKS: u64 = ACQUIRE_BOUND.as_millis() as u64 * TICKS_PER_MS * 3 / 4;

/// Any machine's run ends within this (twice ACQUIRE_BOUND).
pub const SLOW_BOUND_TICKS: u64 = 2 * ACQUIRE_BOUND.as_millis() as u64 * TICKS_PER_MS;

/// How fast a fast host is, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// A fast host's I/O takes a latency uniform in `1..=io`.
    pub io: u64,
    /// After an abort a fast host waits uniform in `[0, backoff)` (the
    /// daemon: `renew / 10`, 50 ms with the default 100 ms heartbeat).
    pub backoff: u64,
}

impl Pace {
    /// iSCSI-like latency (≤ 2 ms) and the daemon's 50 ms backoff.
    pub const LAN: Pace = Pace {
        io: 2 * TICKS_PER_MS,
        backoff: 50 * TICKS_PER_MS,
    };
    /// A loaded device (≤ 12.5 ms; the slow host's ≤ 50 ms, the backoff).
    pub const LOADED: Pace = Pace {
        io: 125,
        backoff: 50 * TICKS_PER_MS,
    };
    /// A device as slow as the backoff is long (the worst for dueling).
    pub const CRAWL: Pace = Pace {
        io: 50 * TICKS_PER_MS,
        backoff: 50 * TICKS_PER_MS,
    };
}

/// The second machine of a duel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rival {
    /// Its I/O latency is this many times the fast one's.
    pub slowdown: u64,
    /// Its backoff too (its clock runs slow as well); `false`: its backoff
    /// is wall-clock time like the fast one's (a sleep is not slowed by a
    /// throttled CPU).
    pub slow_backoff: bool,
    /// Ticks it starts after the fast one (negative: before).
    pub start: i64,
}

/// What a duel runs: the fast machine alone (`rival: None`) or against a rival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuelSetup {
    pub pace: Pace,
    pub rival: Option<Rival>,
}

impl DuelSetup {
    /// The variants run after the chaos: both fast, or the rival at a
    /// quarter of the speed starting together, first, or later.
    pub fn drawn(rng: &mut crate::rng::SplitMix) -> Self {
        let pace = match rng.below(4) {
            0 | 1 => Pace::LAN,
            2 => Pace::LOADED,
            _ => Pace::CRAWL,
        };
        let slowdown = if rng.chance(1, 4) { 1 } else { 4 };
        // Up to a few of the rival's ballots apart.
        let spread = 10 * pace.io * slowdown;
        let start = match rng.below(3) {
            0 => 0,
            1 => -(1 + rng.below(spread) as i64),
            _ => 1 + rng.below(spread) as i64,
        };
        DuelSetup {
            pace,
            rival: Some(Rival {
                slowdown,
                slow_backoff: rng.chance(1, 2),
                start,
            }),
        }
    }
}

/// How one machine's run of a duel went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Finish {
    /// Ticks from its start to the end of its run.
    pub ticks: u64,
    pub ballots: u32,
    pub aborts: u32,
    /// It decided itself the owner.
    pub won: bool,
}

/// The result of a duel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuelStats {
    pub setup: DuelSetup,
    pub fast: Finish,
    pub rival: Option<Finish>,
}

/// The request a machine has out, and when it takes effect and completes.
struct InFlight {
    req: IoRequest,
    write: Option<PendingWrite>,
    effect_at: u64,
    /// What it did, once it took effect.
    result: Option<IoResult>,
    ack_at: u64,
}

/// One machine in the duel, driven like `decide` drives its proposer.
struct Contender {
    m: usize,
    slowdown: u64,
    backoff_slowdown: u64,
    start: u64,
    proposer: Option<Proposer>,
    queue: Vec<IoRequest>,
    inflight: Option<InFlight>,
    retry_at: Option<u64>,
    aborts: u32,
    done: Option<(u64, Outcome)>,
}

impl Contender {
    /// When it next does something, if ever.
    fn next(&self) -> Option<u64> {
        if self.done.is_some() {
            return None;
        }
        if self.proposer.is_none() {
            return Some(self.start);
        }
        if let Some(f) = &self.inflight {
            // Its effect on the disk first, then the acknowledgement.
            return Some(if f.effect_at > 0 {
                f.effect_at
            } else {
                f.ack_at
            });
        }
        self.retry_at
    }
}

impl World {
    /// The duel phase: two machines of different hosts (every other one
    /// crashed) take their slots and race for a fresh generation; `None` if
    /// every fresh instance holds damage from the chaos.
    pub(super) fn duel_phase(&mut self, setup: DuelSetup) -> Result<Option<DuelStats>, SimFailure> {
        for m in 0..self.machines.len() {
            if self.machines[m].alive {
                self.crash(m);
            }
        }
        let hosts = u64::from(self.geo.hosts);
        let fast = self.rng.below(hosts) as usize;
        let rival = (fast + 1 + self.rng.below(hosts - 1) as usize) % hosts as usize;
        assert_ne!(
            self.machines[fast].host, self.machines[rival].host,
            "the duel is between two hosts"
        );
        self.boot(fast);
        if setup.rival.is_some() {
            self.boot(rival);
        }
        if self.opts.claim {
            self.claim_alone(fast)?;
            if setup.rival.is_some() {
                self.claim_alone(rival)?;
            }
        }
        let ring = u64::from(self.geo.ring);
        // Above every generation the chaos and the lone phase asked, in a
        // ring slot without damage (the chaos may have damaged them all).
        let fresh = (0..self.geo.vms).find_map(|vm| {
            (1..=ring)
                .map(|k| self.max_generation + ring + k)
                .find(|&g| !self.instance_damaged(vm, g))
                .map(|g| (vm, g))
        });
        let Some((vm, generation)) = fresh else {
            self.log(format_args!("duel: every fresh instance is damaged"));
            return Ok(None);
        };
        self.log(format_args!(
            "duel: fast m{fast} vs m{rival} for vm{vm} generation {generation}: {setup:?}"
        ));
        let offset = setup.rival.map_or(0, |r| r.start);
        let base = offset.min(0).unsigned_abs();
        let contender = |m, slowdown, backoff_slowdown, start| Contender {
            m,
            slowdown,
            backoff_slowdown,
            start,
            proposer: None,
            queue: Vec::new(),
            inflight: None,
            retry_at: None,
            aborts: 0,
            done: None,
        };
        let mut cs = vec![contender(fast, 1, 1, base)];
        if let Some(r) = setup.rival {
            let backoff = if r.slow_backoff { r.slowdown } else { 1 };
            let start = base.saturating_add_signed(r.start);
            cs.push(contender(rival, r.slowdown, backoff, start));
        }
        let end = cs.iter().map(|c| c.start).max().expect("fast") + SLOW_BOUND_TICKS;
        while let Some((now, i)) = self.next_event(&cs) {
            if now > end {
                break;
            }
            self.step += 1;
            self.duel_event(&mut cs[i], now, setup.pace, (vm, generation))?;
        }
        let finish = |c: &Contender| -> Option<(Finish, Outcome)> {
            let (at, o) = c.done.clone()?;
            let p = c.proposer.as_ref().expect("started");
            let won =
                matches!(o, Outcome::Decided { owner, .. } if owner == self.machines[c.m].host);
            Some((
                Finish {
                    ticks: at - c.start,
                    ballots: p.ballots(),
                    aborts: c.aborts,
                    won,
                },
                o,
            ))
        };
        let mut ends = Vec::new();
        for c in &cs {
            let Some((f, o)) = finish(c) else {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "duel {setup:?}: m{} did not finish in {} ms",
                        c.m,
                        SLOW_BOUND_TICKS / TICKS_PER_MS
                    ),
                ));
            };
            if !matches!(o, Outcome::Decided { .. }) {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!("duel {setup:?}: m{} ended without a decision: {o:?}", c.m),
                ));
            }
            ends.push((f, o));
        }
        if let [(_, a), (_, b)] = &ends[..] {
            // Also checked by `agree`, decision by decision.
            if a != b {
                return Err(self.fail(
                    FailureKind::Agreement,
                    format!("duel {setup:?}: m{fast} decided {a:?}, m{rival} {b:?}"),
                ));
            }
        }
        Ok(Some(DuelStats {
            setup,
            fast: ends[0].0,
            rival: ends.get(1).map(|e| e.0),
        }))
    }

    /// The contender that acts next and when (ties broken at random).
    fn next_event(&mut self, cs: &[Contender]) -> Option<(u64, usize)> {
        let times: Vec<(u64, usize)> = cs
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.next().map(|t| (t, i)))
            .collect();
        let first = times.iter().map(|t| t.0).min()?;
        let tied: Vec<usize> = times.iter().filter(|t| t.0 == first).map(|t| t.1).collect();
        let i = tied[self.rng.below(tied.len() as u64) as usize];
        Some((first, i))
    }

    fn duel_event(
        &mut self,
        c: &mut Contender,
        now: u64,
        pace: Pace,
        (vm, generation): (u32, u64),
    ) -> Result<(), SimFailure> {
        let m = c.m;
        let h = self.machines[m].host;
        let Some(p) = c.proposer.as_mut() else {
            let config = 1 + u64::from(h);
            let (p, reqs) = Proposer::new(self.geo, h, vm, generation, config);
            self.log(format_args!("duel t={now}: m{m} (h{h}) starts"));
            c.proposer = Some(p);
            c.queue = reqs;
            self.duel_issue(c, now, pace);
            return Ok(());
        };
        if let Some(f) = c.inflight.as_mut().filter(|f| f.effect_at > 0) {
            debug_assert_eq!(f.effect_at, now);
            f.effect_at = 0;
            f.result = Some(self.take_effect(&f.req.op, f.write.as_ref()));
            return Ok(());
        }
        let poll = match c.inflight.take() {
            Some(f) => {
                debug_assert_eq!(f.ack_at, now);
                let result = (f.result).expect("a request is acknowledged after it took effect");
                p.complete(f.req.token, result)
            }
            None => {
                assert!(c.retry_at == Some(now), "a duel event is an I/O or a retry");
                c.retry_at = None;
                Poll::Io(p.retry())
            }
        };
        let early = p.decided();
        match poll {
            Poll::Io(reqs) => {
                c.queue.extend(reqs);
                if let Some(d) = early {
                    self.agree(m, vm, generation, d)?;
                }
            }
            Poll::Wait => assert!(
                !c.queue.is_empty(),
                "a proposer waits only for requests it asked for"
            ),
            Poll::Retry => {
                assert!(c.queue.is_empty(), "one request at a time: none left");
                c.aborts += 1;
                // The daemon's policy, in ticks, stretched for a slow host.
                let base = std::time::Duration::from_micros(pace.backoff * TICK_US);
                let unit = self.rng.unit();
                let wait = backoff_wait(base, c.aborts, unit).as_micros() as u64 / TICK_US
                    * c.backoff_slowdown;
                self.log(format_args!(
                    "duel t={now}: m{m} (h{h}) aborted (ballot {}), retries in {wait}",
                    p.ballots()
                ));
                c.retry_at = Some(now + wait);
            }
            Poll::Done(o) => {
                self.log(format_args!("duel t={now}: m{m} (h{h}) ends: {o:?}"));
                c.done = Some((now, o.clone()));
                self.record(m, vm, generation, o)?;
                return Ok(());
            }
        }
        self.duel_issue(c, now, pace);
        Ok(())
    }

    /// Starts the next request of `c`'s queue if it has none out.
    fn duel_issue(&mut self, c: &mut Contender, now: u64, pace: Pace) {
        if c.inflight.is_some() {
            return;
        }
        let Some(req) = c.queue.pop() else {
            return;
        };
        let latency = (1 + self.rng.below(pace.io)) * c.slowdown;
        // Effect strictly after issue (0 means "taken effect").
        let effect_at = now + 1 + self.rng.below(latency);
        let write = match &req.op {
            Op::Write { block, data } => Some(self.disk.issue(*block, data.clone())),
            Op::Read { .. } => None,
        };
        c.inflight = Some(InFlight {
            req,
            write,
            effect_at,
            result: None,
            ack_at: now + latency.max(1) + 1,
        });
    }
}
