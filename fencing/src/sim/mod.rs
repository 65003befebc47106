//! Deterministic simulation of several machines running [`crate::paxos`]
//! against one simulated device, everything drawn from one seeded PRNG.
//!
//! The device (`disk.rs`) holds the real encoded blocks. Every machine's Disk
//! Paxos requests wait in one pool; each step completes a random one (so I/O
//! of and between machines is delayed and reordered arbitrarily), or lets a
//! machine start an `Acquire`, retry after a backoff, crash, or restart. A
//! crash drops the machine's proposer and its unacknowledged requests: each
//! pending write lands, is lost, or tears. Machines take their host's lease
//! slot before they act (`machines.rs`).
//!
//! Faults: delayed and reordered I/O, I/O errors (a failed write may still
//! land), crashes, torn writes, bit rot in a random block, reads that return
//! garbage once (a read racing a write on some paths), and an impostor: a
//! second machine with the same host's config disk. [`Options`] also runs the
//! 512-byte packing of layout 1 on a 512e device, and the impostor without
//! the slot claim: both must break (tests show it), layout 2 with the claim
//! must not.
//!
//! Checked invariants:
//! - *agreement*: no two decisions of one (VM, generation) differ (owner and
//!   config generation);
//! - *one winner*: no two machines alive at once both won one (VM,
//!   generation) — two machines acting as one host would both "win";
//! - *justified alarms*: a run ends `Corrupt` only over a block that was
//!   damaged (a garbage read alone must be read again, not believed);
//! - *slots*: a machine holding a slot never finds another's record in it;
//! - *liveness*: after the chaos one machine alone takes its slot and decides
//!   a fresh generation for itself within two ballots (in a ring slot without
//!   damage), and re-asking any generation decided before yields the same
//!   decision, "superseded", or an alarm over a damaged block;
//! - *no duel* (`duel.rs`): then two machines of different hosts race for a
//!   fresh generation on a clock (one request at a time each, random
//!   latencies, the daemon's backoff), the rival as fast or at a quarter of
//!   the speed, starting together, first or later: the fast machine decides
//!   within three quarters of `ACQUIRE_BOUND`, the rival within twice it,
//!   and both learn the same decision.

mod check;
mod disk;
mod duel;
mod liveness;
mod machines;
mod pool;

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::Geometry;
use crate::paxos::{Decision, IoRequest, IoResult, Op, Proposer};
use crate::rng::SplitMix;
use disk::{Disk, PendingWrite};
use machines::Machine;

pub use duel::{
    DuelSetup, DuelStats, Finish, Pace, Rival, FAST_BOUND_TICKS, SLOW_BOUND_TICKS, TICKS_PER_MS,
    TICK_US,
};

/// What a run simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Bytes per block of the layout.
    pub block: usize,
    /// Physical sector size of the device (logical sectors are 512 bytes).
    pub physical: usize,
    /// Machines claim their slot before acting.
    pub claim: bool,
    /// An impostor machine may appear.
    pub impostor: bool,
    /// Bit rot and garbage reads.
    pub corrupt: bool,
    /// Writes in flight at a crash may tear.
    pub tear: bool,
}

impl Options {
    /// Layout 2 (block = physical sector) on a device drawn from 512n and
    /// 512e/4Kn (a quarter: 4 KiB blocks cost more), every fault on.
    pub fn drawn(rng: &mut SplitMix) -> Self {
        let physical = if rng.chance(1, 4) { 4096 } else { 512 };
        Options {
            block: physical,
            physical,
            claim: true,
            impostor: true,
            corrupt: true,
            tear: true,
        }
    }
}

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
    /// Runs that ended over a corrupt block (alarms).
    pub corrupt_outcomes: u64,
    /// Blocks garbled by bit rot.
    pub corruptions: u64,
    /// Reads that returned garbage once.
    pub garbage_reads: u64,
    /// Torn writes, and other hosts' blocks they damaged.
    pub tears: u64,
    pub neighbours_torn: u64,
    /// Other blocks a read-modify-write put back stale.
    pub stale_neighbours: u64,
    pub impostors: u64,
    /// Claims refused because another machine wrote the slot.
    pub slot_refusals: u64,
    /// Slots taken after such a refusal (the other machine had stopped).
    pub slot_takeovers: u64,
    /// Duels run after the lone phase, and the fast machine's aborts in them.
    pub duels: u64,
    pub duel_aborts: u64,
}

/// Which invariant a run broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Agreement,
    TwoWinners,
    UnjustifiedAlarm,
    Slot,
    Liveness,
    Other,
    /// The lease simulation's invariant ([`crate::sim_lease`]).
    Lease,
}

/// A violated invariant, with the seed that reproduces it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}: {kind:?}: {what}")]
pub struct SimFailure {
    pub seed: u64,
    pub kind: FailureKind,
    pub what: String,
}

struct Pending {
    machine: usize,
    epoch: u64,
    req: IoRequest,
    write: Option<PendingWrite>,
}

pub(crate) struct Run {
    vm: u32,
    generation: u64,
    proposer: Proposer,
    /// Step after which an aborted ballot is retried.
    retry_at: Option<u64>,
}

pub(crate) struct World {
    seed: u64,
    rng: SplitMix,
    opts: Options,
    geo: Geometry,
    disk: Disk,
    machines: Vec<Machine>,
    /// Step at which the impostor (the last machine) appears.
    impostor_at: Option<u64>,
    pending: Vec<Pending>,
    lease_ops: Vec<machines::LeaseOp>,
    decided: BTreeMap<(u32, u64), Decision>,
    /// (VM, generation) -> (machine, epoch) that won it.
    winners: BTreeMap<(u32, u64), (usize, u64)>,
    /// Blocks that were ever damaged (torn, rotten, stale-restored).
    damaged: BTreeSet<u64>,
    /// Consecutive garbage reads of a block by a machine: a transient fault
    /// never outlasts the proposer's rereads (three bad reads in a row are
    /// damage as far as anyone can tell, and would be a right alarm).
    garbage_streak: BTreeMap<(usize, u64), u32>,
    max_generation: u64,
    current: u64,
    step: u64,
    stats: SimStats,
    trace: bool,
}

/// At most this many garbage reads of one block in a row by one machine:
/// a proposer that reads a corrupt-looking block fewer times again than this
/// raises alarms over undamaged blocks (an invariant violation).
const GARBAGE_STREAK: u32 = 2;

/// Chaos steps per run before the liveness phase.
const CHAOS_STEPS: u64 = 600;

/// Runs one seeded simulation with options drawn from the seed, then a
/// duel ([`DuelSetup::drawn`]).
pub fn run(seed: u64, trace: bool) -> Result<SimStats, SimFailure> {
    let mut rng = SplitMix::new(seed ^ 0x6f70_7473);
    let mut w = chaos_and_lone(seed, trace, Options::drawn(&mut rng))?;
    let setup = DuelSetup::drawn(&mut w.rng);
    if let Some(d) = w.duel_phase(setup)? {
        d.check_fast()
            .map_err(|what| w.fail(FailureKind::Liveness, what))?;
        w.stats.duels += 1;
        w.stats.duel_aborts += u64::from(d.fast.aborts);
    }
    w.stats.steps = w.step;
    Ok(w.stats)
}

/// Runs one seeded simulation with `opts` (no duel).
pub fn run_with(seed: u64, trace: bool, opts: Options) -> Result<SimStats, SimFailure> {
    chaos_and_lone(seed, trace, opts).map(|w| w.stats)
}

fn chaos_and_lone(seed: u64, trace: bool, opts: Options) -> Result<World, SimFailure> {
    let mut w = World::new(seed, trace, opts);
    while w.step < CHAOS_STEPS {
        w.step += 1;
        w.chaos_step()?;
    }
    w.liveness()?;
    w.stats.steps = w.step;
    w.stats.distinct_decided = w.decided.len() as u64;
    Ok(w)
}

/// Runs one duel ([`DuelSetup`]) on a fresh world drawn from `seed`, no
/// chaos before it: an error if a machine does not decide within
/// [`SLOW_BOUND_TICKS`] or two decisions differ; the fast machine's time is
/// left to [`DuelStats::check_fast`] (measurements want it unchecked).
pub fn duel(seed: u64, trace: bool, setup: DuelSetup) -> Result<DuelStats, SimFailure> {
    let mut rng = SplitMix::new(seed ^ 0x6f70_7473);
    let mut w = World::new(seed, trace, Options::drawn(&mut rng));
    let d = w.duel_phase(setup)?;
    Ok(d.expect("a fresh world has no damage"))
}

impl World {
    fn new(seed: u64, trace: bool, opts: Options) -> Self {
        let mut rng = SplitMix::new(seed);
        let hosts = 3 + rng.below(3) as u32;
        let vms = 1 + rng.below(2) as u32;
        let ring = 2 + rng.below(3) as u32;
        let names: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
        let geo = Geometry::new(
            names.iter().map(String::as_str),
            vms,
            ring,
            opts.block as u32,
        );
        let mut machines: Vec<Machine> = (0..hosts).map(|h| Machine::new(h, 0)).collect();
        let impostor_at = (opts.impostor && rng.chance(1, 2)).then(|| 50 + rng.below(400));
        if impostor_at.is_some() {
            machines.push(Machine::new(rng.below(u64::from(hosts)) as u32, 0));
        }
        let mut w = World {
            seed,
            rng,
            opts,
            geo,
            disk: Disk::new(geo.blocks(), opts.block, opts.physical),
            machines,
            impostor_at,
            pending: Vec::new(),
            lease_ops: Vec::new(),
            decided: BTreeMap::new(),
            winners: BTreeMap::new(),
            damaged: BTreeSet::new(),
            garbage_streak: BTreeMap::new(),
            max_generation: 2 * u64::from(ring) + 1,
            current: 1,
            step: 0,
            stats: SimStats {
                hosts,
                ..SimStats::default()
            },
            trace,
        };
        for m in 0..hosts as usize {
            w.boot(m);
        }
        w.log(format_args!(
            "{hosts} hosts, {vms} vms, ring {ring}, generations 1..={}, {opts:?}, impostor at {:?}",
            w.max_generation, w.impostor_at
        ));
        w
    }

    fn fail(&self, kind: FailureKind, what: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            kind,
            what,
        }
    }

    fn log(&self, args: std::fmt::Arguments) {
        if self.trace {
            println!("[{:>5}] {args}", self.step);
        }
    }

    fn chaos_step(&mut self) -> Result<(), SimFailure> {
        self.lease_step()?;
        if self.impostor_at == Some(self.step) {
            let m = self.machines.len() - 1;
            self.stats.impostors += 1;
            self.boot(m);
        }
        if self.opts.corrupt && self.rng.chance(1, 200) {
            self.rot();
        }
        let roll = self.rng.below(100);
        if roll < 65 && !self.pending.is_empty() {
            let i = self.rng.below(self.pending.len() as u64) as usize;
            return self.complete(i);
        }
        let m = self.rng.below(self.machines.len() as u64) as usize;
        if !self.machines[m].alive {
            let impostor_waits =
                self.impostor_at.is_some_and(|at| at > self.step) && m == self.machines.len() - 1;
            if !impostor_waits && self.machines[m].epoch > 0 && self.rng.chance(1, 4) {
                self.boot(m);
            }
            return Ok(());
        }
        if self.rng.chance(1, 60) {
            self.crash(m);
            return Ok(());
        }
        if !self.acting(m) {
            return Ok(());
        }
        match &self.machines[m].run {
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
                self.start(m, vm, generation);
            }
            Some(run) => {
                if run.retry_at.is_some_and(|at| at <= self.step) {
                    let run = self.machines[m].run.as_mut().expect("checked");
                    run.retry_at = None;
                    let reqs = run.proposer.retry();
                    self.issue(m, reqs);
                }
            }
        }
        Ok(())
    }

    /// Bit rot in a random Paxos block that was written.
    fn rot(&mut self) {
        let first = self.geo.lease_block(self.geo.hosts - 1) + 1;
        let b = first + self.rng.below(self.geo.blocks() - first);
        if self.disk.blank(b) {
            return;
        }
        self.disk.garble(b, &mut self.rng);
        self.damaged.insert(b);
        self.stats.corruptions += 1;
        self.log(format_args!("block {b} rots"));
    }

    fn start(&mut self, m: usize, vm: u32, generation: u64) {
        let h = self.machines[m].host;
        self.log(format_args!(
            "m{m} (h{h}) acquires vm{vm} generation {generation}"
        ));
        // Hosts run different config generations (a rolling change): the
        // decision must carry the winner's own.
        let config = 1 + u64::from(h) + self.rng.below(2);
        let (proposer, reqs) = Proposer::new(self.geo, h, vm, generation, config);
        self.machines[m].run = Some(Run {
            vm,
            generation,
            proposer,
            retry_at: None,
        });
        self.issue(m, reqs);
    }

    fn issue(&mut self, machine: usize, reqs: Vec<IoRequest>) {
        let epoch = self.machines[machine].epoch;
        for req in reqs {
            let write = match &req.op {
                Op::Write { block, data } => Some(self.disk.issue(*block, data.clone())),
                Op::Read { .. } => None,
            };
            self.pending.push(Pending {
                machine,
                epoch,
                req,
                write,
            });
        }
    }

    fn crash(&mut self, m: usize) {
        self.stats.crashes += 1;
        let mc = &mut self.machines[m];
        mc.alive = false;
        mc.run = None;
        let mut kept = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.machine != m {
                kept.push(p);
            } else if let Some(w) = &p.write {
                match self.rng.below(10) {
                    0 if self.opts.tear => self.tear(w),
                    0..=4 => self.land(w),
                    _ => {}
                }
            }
        }
        self.pending = kept;
        self.crash_leases(m);
        self.log(format_args!("m{m} crashes"));
    }

    /// Carries out a request without a fault: a read returns the block, a
    /// write (`write`, its issued copy) lands. The lone and duel phases
    /// complete every request so; the chaos pool (`pool.rs`) adds its faults
    /// around the same steps.
    fn take_effect(&mut self, op: &Op, write: Option<&PendingWrite>) -> IoResult {
        match (op, write) {
            (Op::Read { block }, _) => IoResult::Read(self.disk.read(*block)),
            (Op::Write { .. }, Some(w)) => {
                self.land(w);
                IoResult::Written
            }
            (Op::Write { .. }, None) => unreachable!("every write is issued to the disk"),
        }
    }

    fn land(&mut self, w: &PendingWrite) {
        let changed = self.disk.land(w);
        if !changed.is_empty() {
            self.log(format_args!(
                "write of block {} puts back stale blocks {changed:?}",
                w.block
            ));
        }
        self.stats.stale_neighbours += changed.len() as u64;
        self.damaged.extend(changed);
    }

    fn tear(&mut self, w: &PendingWrite) {
        let damaged = self.disk.tear(w, &mut self.rng);
        self.stats.tears += 1;
        self.stats.neighbours_torn += damaged.iter().filter(|&&b| b != w.block).count() as u64;
        self.log(format_args!(
            "write of block {} tears: {damaged:?}",
            w.block
        ));
        self.damaged.extend(damaged);
    }
}
