//! Deterministic simulation of several hosts running [`crate::paxos`] against
//! one simulated disk, everything drawn from one seeded PRNG.
//!
//! The disk holds the real encoded sectors and applies each write atomically
//! when the simulation completes it. Every host's requests wait in one pool;
//! each step completes a random one (so I/O of and between hosts is delayed and
//! reordered arbitrarily), or lets a host start an `Acquire`, retry after a
//! backoff, crash, or restart. A crash drops the host's proposer and its
//! unacknowledged requests: each pending write is lost or lands (both happen
//! on real disks). I/O errors are injected too; a failed write may still land.
//!
//! Checked invariants:
//! - *agreement*: no two hosts (nor one host before and after a restart) ever
//!   learn different owners for one (VM, generation);
//! - *liveness*: after the chaos, every host but one crashes; the lone survivor
//!   decides a fresh generation for itself within two ballots, and re-asking
//!   any generation decided before yields the same owner or "superseded".

use std::collections::BTreeMap;

use crate::layout::{Geometry, Sector, SECTOR};
use crate::paxos::{IoRequest, IoResult, Op, Outcome, Poll, Proposer};
use crate::rng::SplitMix;

/// Numbers from one simulated run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub hosts: u32,
    pub steps: u64,
    pub decisions: u64,
    pub distinct_decided: u64,
    pub superseded: u64,
    pub crashes: u64,
    pub aborts: u64,
    pub io_failures: u64,
}

/// A violated invariant, with the seed that reproduces it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}: {what}")]
pub struct SimFailure {
    pub seed: u64,
    pub what: String,
}

struct Pending {
    host: u32,
    epoch: u64,
    req: IoRequest,
}

#[derive(Default)]
struct Host {
    alive: bool,
    epoch: u64,
    run: Option<Run>,
}

struct Run {
    vm: u32,
    generation: u64,
    proposer: Proposer,
    /// Step after which an aborted ballot is retried.
    retry_at: Option<u64>,
}

struct World {
    seed: u64,
    rng: SplitMix,
    geo: Geometry,
    disk: Vec<Sector>,
    hosts: Vec<Host>,
    pending: Vec<Pending>,
    decided: BTreeMap<(u32, u64), u32>,
    max_generation: u64,
    current: u64,
    step: u64,
    stats: SimStats,
    trace: bool,
}

/// Chaos steps per run before the liveness phase.
const CHAOS_STEPS: u64 = 600;

/// Runs one seeded simulation.
pub fn run(seed: u64, trace: bool) -> Result<SimStats, SimFailure> {
    let mut rng = SplitMix::new(seed);
    let hosts = 3 + rng.below(3) as u32;
    let vms = 1 + rng.below(2) as u32;
    let ring = 2 + rng.below(3) as u32;
    let names: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
    let vm_names: Vec<String> = (0..vms).map(|i| format!("vm{i}")).collect();
    let geo = Geometry::new(
        names.iter().map(String::as_str),
        vm_names.iter().map(String::as_str),
        ring,
    );
    let mut w = World {
        seed,
        rng,
        geo,
        disk: vec![[0u8; SECTOR]; geo.sectors() as usize],
        hosts: (0..hosts)
            .map(|_| Host {
                alive: true,
                ..Host::default()
            })
            .collect(),
        pending: Vec::new(),
        decided: BTreeMap::new(),
        max_generation: 2 * u64::from(ring) + 1,
        current: 1,
        step: 0,
        stats: SimStats {
            hosts,
            ..SimStats::default()
        },
        trace,
    };
    w.log(format_args!(
        "{hosts} hosts, {vms} vms, ring {ring}, generations 1..={}",
        w.max_generation
    ));
    while w.step < CHAOS_STEPS {
        w.step += 1;
        w.chaos_step()?;
    }
    w.liveness()?;
    w.stats.steps = w.step;
    w.stats.distinct_decided = w.decided.len() as u64;
    Ok(w.stats)
}

impl World {
    fn fail(&self, what: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            what,
        }
    }

    fn log(&self, args: std::fmt::Arguments) {
        if self.trace {
            println!("[{:>5}] {args}", self.step);
        }
    }

    fn chaos_step(&mut self) -> Result<(), SimFailure> {
        let roll = self.rng.below(100);
        if roll < 65 && !self.pending.is_empty() {
            let i = self.rng.below(self.pending.len() as u64) as usize;
            return self.complete(i);
        }
        let h = self.rng.below(self.hosts.len() as u64) as u32;
        let host = &self.hosts[h as usize];
        if !host.alive {
            if self.rng.chance(1, 4) {
                self.hosts[h as usize].alive = true;
                self.log(format_args!("h{h} restarts"));
            }
            return Ok(());
        }
        if self.rng.chance(1, 60) {
            self.crash(h);
            return Ok(());
        }
        match &host.run {
            None => {
                let vm = self.rng.below(u64::from(self.geo.vms)) as u32;
                // Mostly the current generation (contention), sometimes the
                // next one (moving on), sometimes any (late or stale askers).
                let r = self.rng.below(100);
                let generation = if r < 70 {
                    self.current
                } else if r < 85 {
                    self.current = (self.current + 1).min(self.max_generation);
                    self.current
                } else {
                    1 + self.rng.below(self.max_generation)
                };
                self.start(h, vm, generation)
            }
            Some(run) => {
                if run.retry_at.is_some_and(|at| at <= self.step) {
                    let run = self.hosts[h as usize].run.as_mut().expect("checked");
                    run.retry_at = None;
                    let reqs = run.proposer.retry();
                    self.issue(h, reqs);
                }
                Ok(())
            }
        }
    }

    fn start(&mut self, h: u32, vm: u32, generation: u64) -> Result<(), SimFailure> {
        self.log(format_args!("h{h} acquires vm{vm} generation {generation}"));
        let (proposer, reqs) = Proposer::new(self.geo, h, vm, generation);
        self.hosts[h as usize].run = Some(Run {
            vm,
            generation,
            proposer,
            retry_at: None,
        });
        self.issue(h, reqs);
        Ok(())
    }

    fn issue(&mut self, host: u32, reqs: Vec<IoRequest>) {
        let epoch = self.hosts[host as usize].epoch;
        self.pending
            .extend(reqs.into_iter().map(|req| Pending { host, epoch, req }));
    }

    fn crash(&mut self, h: u32) {
        self.stats.crashes += 1;
        let host = &mut self.hosts[h as usize];
        host.alive = false;
        host.epoch += 1;
        host.run = None;
        let mut kept = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.host != h {
                kept.push(p);
            } else if let Op::Write { sector, data } = p.req.op {
                if self.rng.chance(1, 2) {
                    self.disk[sector as usize] = *data;
                }
            }
        }
        self.pending = kept;
        self.log(format_args!("h{h} crashes"));
    }

    fn complete(&mut self, i: usize) -> Result<(), SimFailure> {
        let p = self.pending.swap_remove(i);
        let failed = self.rng.chance(1, 100);
        let result = match p.req.op {
            Op::Read { sector } if !failed => IoResult::Read(Box::new(self.disk[sector as usize])),
            Op::Read { .. } => IoResult::Failed,
            Op::Write { sector, data } => {
                if !failed || self.rng.chance(1, 2) {
                    self.disk[sector as usize] = *data;
                }
                if failed {
                    IoResult::Failed
                } else {
                    IoResult::Written
                }
            }
        };
        if failed {
            self.stats.io_failures += 1;
        }
        let host = &mut self.hosts[p.host as usize];
        assert!(
            host.alive && host.epoch == p.epoch,
            "a crashed host's requests are removed at the crash"
        );
        let run = host.run.as_mut().expect("pending requests belong to a run");
        let poll = run.proposer.complete(p.req.token, result);
        let (vm, generation, early) = (run.vm, run.generation, run.proposer.decided());
        if let (Some(owner), Poll::Io(_)) = (early, &poll) {
            // Decided, commit write not yet done: check agreement already.
            self.agree(p.host, vm, generation, owner)?;
        }
        self.after(p.host, poll)
    }

    fn after(&mut self, h: u32, poll: Poll) -> Result<(), SimFailure> {
        match poll {
            Poll::Io(reqs) => self.issue(h, reqs),
            Poll::Wait => {}
            Poll::Retry => {
                self.stats.aborts += 1;
                let at = self.step + 1 + self.rng.below(30);
                let run = self.hosts[h as usize].run.as_mut().expect("running");
                run.retry_at = Some(at);
            }
            Poll::Done(o) => {
                let run = self.hosts[h as usize].run.take().expect("running");
                // Failed I/O may leave completions of the run pending: drop them.
                let epoch = self.hosts[h as usize].epoch;
                self.pending.retain(|p| !(p.host == h && p.epoch == epoch));
                self.record(h, run.vm, run.generation, o)?;
            }
        }
        Ok(())
    }

    fn record(&mut self, h: u32, vm: u32, generation: u64, o: Outcome) -> Result<(), SimFailure> {
        self.log(format_args!("h{h} vm{vm} generation {generation}: {o:?}"));
        match o {
            Outcome::Decided { owner } => {
                self.stats.decisions += 1;
                self.agree(h, vm, generation, owner)?;
            }
            Outcome::Superseded { by } => {
                self.stats.superseded += 1;
                if by <= generation {
                    return Err(self.fail(format!(
                        "vm{vm} generation {generation} superseded by older {by}"
                    )));
                }
            }
            Outcome::IoFailed => {}
        }
        Ok(())
    }

    fn agree(&mut self, h: u32, vm: u32, generation: u64, owner: u32) -> Result<(), SimFailure> {
        let key = (vm, generation);
        if let Some(&before) = self.decided.get(&key) {
            if before != owner {
                return Err(self.fail(format!(
                    "vm{vm} generation {generation}: h{h} decided owner h{owner}, \
                     but h{before} was decided before"
                )));
            }
        }
        self.decided.insert(key, owner);
        Ok(())
    }

    /// Runs host `h` alone until its run ends; returns the outcome and ballots.
    fn run_alone(
        &mut self,
        h: u32,
        vm: u32,
        generation: u64,
    ) -> Result<(Outcome, u32), SimFailure> {
        self.start(h, vm, generation)?;
        let budget = 200;
        for _ in 0..budget {
            self.step += 1;
            let Some(run) = self.hosts[h as usize].run.as_mut() else {
                unreachable!("run ends only through record below")
            };
            if run.retry_at.is_some() {
                run.retry_at = None;
                let reqs = run.proposer.retry();
                self.issue(h, reqs);
                continue;
            }
            assert!(
                !self.pending.is_empty(),
                "a live run always has requests out"
            );
            let i = self.rng.below(self.pending.len() as u64) as usize;
            let p = self.pending.swap_remove(i);
            let result = match p.req.op {
                Op::Read { sector } => IoResult::Read(Box::new(self.disk[sector as usize])),
                Op::Write { sector, data } => {
                    self.disk[sector as usize] = *data;
                    IoResult::Written
                }
            };
            let run = self.hosts[h as usize].run.as_mut().expect("running");
            let poll = run.proposer.complete(p.req.token, result);
            let ballots = run.proposer.ballots();
            if let Poll::Done(o) = poll {
                self.after(h, poll)?;
                return Ok((o, ballots));
            }
            self.after(h, poll)?;
        }
        Err(self.fail(format!(
            "liveness: lone h{h} did not finish vm{vm} generation {generation} in {budget} steps"
        )))
    }

    fn liveness(&mut self) -> Result<(), SimFailure> {
        let survivor = self.rng.below(self.hosts.len() as u64) as u32;
        for h in 0..self.hosts.len() as u32 {
            if h != survivor && self.hosts[h as usize].alive {
                self.crash(h);
            }
        }
        // The survivor, too, may have crashed in the middle of a run.
        if self.hosts[survivor as usize].alive {
            self.crash(survivor);
        }
        self.hosts[survivor as usize].alive = true;
        self.log(format_args!("liveness: h{survivor} alone"));
        for vm in 0..self.geo.vms {
            let fresh = self.max_generation + 1 + u64::from(vm);
            let (o, ballots) = self.run_alone(survivor, vm, fresh)?;
            if o != (Outcome::Decided { owner: survivor }) || ballots > 2 {
                return Err(self.fail(format!(
                    "liveness: lone h{survivor} got {o:?} after {ballots} ballots for fresh \
                     vm{vm} generation {fresh}"
                )));
            }
        }
        let known: Vec<((u32, u64), u32)> = self.decided.iter().map(|(k, v)| (*k, *v)).collect();
        for ((vm, generation), owner) in known {
            if generation > self.max_generation {
                continue;
            }
            let (o, ballots) = self.run_alone(survivor, vm, generation)?;
            let ok = match o {
                Outcome::Decided { owner: o } => o == owner,
                Outcome::Superseded { .. } => true,
                Outcome::IoFailed => false,
            };
            if !ok || ballots > 2 {
                return Err(self.fail(format!(
                    "lone h{survivor} re-asking vm{vm} generation {generation} (owner h{owner}) \
                     got {o:?} after {ballots} ballots"
                )));
            }
        }
        Ok(())
    }
}
