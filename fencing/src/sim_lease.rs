//! Deterministic simulation of delta leases, the guard, the output grant and
//! the watchdog on a virtual clock (one step = 10 ms), all drawn from one
//! seeded PRNG.
//!
//! Each host renews like the daemon does (write its lease block; once that is
//! acknowledged, read the others'), ticks a [`Guard`] every grant period,
//! feeds a watchdog that resets the host `W` after the last feed, and sends
//! its ftvmm an `OutputGrant` every grant period (one at a time). ftvmm is
//! modelled too: it takes a grant after a delivery delay, enables output
//! until `receipt + valid_ms` (an `ok: false` grant disables it) and answers
//! `Running`, or it is *hung* (takes nothing, answers nothing; the grant it
//! holds expires on its own) or *rogue* (answers nothing and releases output
//! whatever the grants say: only the watchdog stops such a host).
//!
//! Faults: I/O completes after random delays; a host's storage path is
//! sometimes cut for 1–15 s (its requests hang, then fail or land late);
//! hosts crash and reboot; a host's fencing agent dies while the host runs on
//! (no more renewals, grants or feeds); ftvmm hangs or turns rogue.
//!
//! Checked invariant (the arithmetic in [`crate::lease`]): whenever a reader
//! that has read a host's block since that host's latest write landed judges
//! the host's lease expired, that host releases no output: it has been reset
//! (or crashed), or its ftvmm holds (no valid grant).

use std::time::Duration;

use config_schema::clock::BootInstant;
use config_schema::Timing;

use crate::guard::{Grant, Guard, GuardState};
use crate::layout::{Block, LeaseRecord};
use crate::lease::{LeaseTiming, Liveness, OwnLease};
use crate::rng::SplitMix;
use crate::sim::{FailureKind, SimFailure};

const STEP: Duration = Duration::from_millis(10);
const STEPS: u64 = 2500;
/// Steps a grant query waits for ftvmm before it fails (the 5 s socket timeout).
const QUERY_TIMEOUT: u64 = 500;

/// Numbers from one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSimStats {
    pub renewals: u64,
    pub cuts: u64,
    pub crashes: u64,
    pub agent_deaths: u64,
    pub watchdog_resets: u64,
    /// Grants ftvmm took.
    pub grants: u64,
    /// Checks where a reader judged a dead (crashed or reset) host expired.
    pub expiries_dead: u64,
    /// Checks where a reader judged a running host expired whose ftvmm held
    /// output because its grant had expired or was withdrawn.
    pub expiries_held: u64,
}

/// The lease blocks, and per host the issue step and completion number of
/// its latest landed write.
struct Store {
    disk: Vec<Block>,
    landed: Vec<Option<(u64, u64)>>,
}

enum Kind {
    Write { rec: LeaseRecord, issued: u64 },
    Read { of: u32 },
}

struct Op {
    host: u32,
    epoch: u64,
    due: u64,
    fail: bool,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Hung,
    Rogue,
}

/// A grant on its way to ftvmm (and its answer on the way back).
struct InFlight {
    grant: Grant,
    sent: u64,
    due: u64,
}

struct Ftvmm {
    mode: Mode,
    /// Output is released while `now < output_until`.
    output_until: u64,
}

struct Host {
    alive: bool,
    agent_alive: bool,
    epoch: u64,
    own: OwnLease,
    live: Liveness,
    guard: Guard,
    armed: bool,
    last_feed: u64,
    /// Renewed at least once since boot (runs VMs).
    member: bool,
    busy: bool,
    reads_out: u32,
    next_renew: u64,
    cut_until: u64,
    reboot_at: u64,
    /// Per other host: completion number of this host's last read of it.
    sampled: Vec<Option<u64>>,
    ftvmm: Ftvmm,
    grant: Option<InFlight>,
}

struct World {
    seed: u64,
    rng: SplitMix,
    timing: LeaseTiming,
    n: usize,
    hosts: Vec<Host>,
    store: Store,
    ops: Vec<Op>,
    /// Completions so far: orders events within one step.
    seq: u64,
    next_epoch: u64,
    stats: LeaseSimStats,
    trace: bool,
}

fn steps(d: Duration) -> u64 {
    (d.as_millis() / STEP.as_millis()) as u64
}

fn at(t: u64) -> BootInstant {
    BootInstant::from_nanos(1_000_000_000) + STEP * t as u32
}

/// Runs one seeded lease simulation.
pub fn run(seed: u64, trace: bool) -> Result<LeaseSimStats, SimFailure> {
    run_with(seed, trace, |_| {})
}

/// Runs one seeded lease simulation with the timing changed by `tweak` (to
/// show that the simulation catches arithmetic that does not hold).
pub fn run_with(
    seed: u64,
    trace: bool,
    tweak: impl Fn(&mut LeaseTiming),
) -> Result<LeaseSimStats, SimFailure> {
    let mut rng = SplitMix::new(seed ^ 0x006c_6561_7365);
    let n = 3 + rng.below(3) as usize;
    let mut timing = LeaseTiming::from_config(&Timing {
        heartbeat_interval_ms: 100,
        failure_timeout_ms: 1000,
        lag_limit_ms: 500,
    });
    tweak(&mut timing);
    let mut w = World {
        seed,
        rng,
        timing,
        n,
        hosts: Vec::new(),
        store: Store {
            disk: vec![vec![0u8; 512].into_boxed_slice(); n],
            landed: vec![None; n],
        },
        ops: Vec::new(),
        seq: 0,
        next_epoch: 5000,
        stats: LeaseSimStats::default(),
        trace,
    };
    for h in 0..n {
        let host = w.boot(h, 1000 + h as u64, 0);
        w.hosts.push(host);
    }
    for now in 0..STEPS {
        w.reboots(now);
        w.faults(now);
        w.completions(now);
        for h in 0..n {
            w.host_step(h, now);
        }
        w.check(now)?;
    }
    Ok(w.stats)
}

impl World {
    fn log(&self, now: u64, args: std::fmt::Arguments) {
        if self.trace {
            println!("[{now:>5}] {args}");
        }
    }

    fn boot(&mut self, h: usize, inc: u64, t: u64) -> Host {
        let mode = match self.rng.below(10) {
            0 => Mode::Hung,
            1 => Mode::Rogue,
            _ => Mode::Healthy,
        };
        Host {
            alive: true,
            agent_alive: true,
            epoch: inc,
            own: OwnLease::new(h as u32, inc),
            live: Liveness::new(self.n, self.timing.timeout),
            guard: Guard::new(self.timing),
            armed: false,
            last_feed: t,
            member: false,
            busy: false,
            reads_out: 0,
            next_renew: t,
            cut_until: 0,
            reboot_at: 0,
            sampled: vec![None; self.n],
            ftvmm: Ftvmm {
                mode,
                output_until: 0,
            },
            grant: None,
        }
    }

    fn reboots(&mut self, now: u64) {
        for h in 0..self.n {
            if !self.hosts[h].alive && self.hosts[h].reboot_at == now {
                self.next_epoch += 1;
                let inc = self.next_epoch;
                self.hosts[h] = self.boot(h, inc, now);
                self.log(
                    now,
                    format_args!("h{h} boots, ftvmm {:?}", self.hosts[h].ftvmm.mode),
                );
            }
        }
    }

    fn faults(&mut self, now: u64) {
        let h = self.rng.below(self.n as u64) as usize;
        if !self.hosts[h].alive {
            return;
        }
        if self.rng.chance(1, 2000) {
            self.stats.crashes += 1;
            self.log(now, format_args!("h{h} crashes"));
            self.crash(h, now);
        } else if self.hosts[h].cut_until <= now && self.rng.chance(1, 800) {
            self.hosts[h].cut_until = now + 100 + self.rng.below(1400);
            self.stats.cuts += 1;
            self.log(
                now,
                format_args!("h{h} storage cut until {}", self.hosts[h].cut_until),
            );
        } else if self.hosts[h].agent_alive && self.rng.chance(1, 3000) {
            self.hosts[h].agent_alive = false;
            self.stats.agent_deaths += 1;
            self.log(now, format_args!("h{h}'s fencing agent dies"));
        } else if self.hosts[h].ftvmm.mode == Mode::Healthy && self.rng.chance(1, 3000) {
            // A rogue ftvmm (releasing whatever the grants say) can only be
            // stopped by the watchdog if it turned rogue before it had to
            // hold: one that confirms a hold and then releases anyway is a
            // lie no agent can catch. So it turns rogue only while granted.
            let granted = self.hosts[h].guard.state() == GuardState::Normal;
            let m = if granted && self.rng.chance(1, 2) {
                Mode::Rogue
            } else {
                Mode::Hung
            };
            self.hosts[h].ftvmm.mode = m;
            self.log(now, format_args!("h{h}'s ftvmm turns {m:?}"));
        }
    }

    fn completions(&mut self, now: u64) {
        let mut due: Vec<Op> = Vec::new();
        let mut i = 0;
        while i < self.ops.len() {
            if self.ops[i].due <= now {
                due.push(self.ops.swap_remove(i));
            } else {
                i += 1;
            }
        }
        while !due.is_empty() {
            let op = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            self.seq += 1;
            let host = &self.hosts[op.host as usize];
            if !host.alive || !host.agent_alive || host.epoch != op.epoch {
                continue;
            }
            match op.kind {
                Kind::Write { rec, issued } => {
                    self.written(op.host as usize, rec, issued, op.fail, now)
                }
                Kind::Read { of } => self.read_done(op.host as usize, of, op.fail, now),
            }
        }
    }

    fn written(&mut self, h: usize, rec: LeaseRecord, issued: u64, fail: bool, now: u64) {
        if fail {
            self.hosts[h].busy = false;
            return;
        }
        self.store.disk[h] = rec.encode(512);
        self.store.landed[h] = Some((issued, self.seq));
        self.stats.renewals += 1;
        let cut = self.hosts[h].cut_until;
        let host = &mut self.hosts[h];
        host.live.own_renewed(h, &rec, at(issued));
        host.guard.renewed(at(issued));
        host.member = true;
        if !host.armed {
            host.armed = true;
            host.last_feed = now;
        }
        for of in (0..self.n as u32).filter(|&o| o as usize != h) {
            let (due, fail) = io_delay(&mut self.rng, cut, now);
            let host = &mut self.hosts[h];
            host.reads_out += 1;
            self.ops.push(Op {
                host: h as u32,
                epoch: host.epoch,
                due,
                fail,
                kind: Kind::Read { of },
            });
        }
    }

    fn read_done(&mut self, h: usize, of: u32, fail: bool, now: u64) {
        let host = &mut self.hosts[h];
        host.reads_out -= 1;
        if host.reads_out == 0 {
            host.busy = false;
        }
        if fail {
            return;
        }
        let rec = LeaseRecord::decode(&self.store.disk[of as usize]).ok();
        host.live.observe(of as usize, rec, at(now));
        host.sampled[of as usize] = Some(self.seq);
    }

    /// Renewal, grant and watchdog of host `h` at `now`.
    fn host_step(&mut self, h: usize, now: u64) {
        if !self.hosts[h].alive {
            return;
        }
        let period = steps(self.timing.grant_period);
        if self.hosts[h].agent_alive {
            self.renew(h, now);
            if now.is_multiple_of(period) {
                let a = self.hosts[h].guard.tick(at(now));
                if a.feed && self.hosts[h].armed {
                    self.hosts[h].last_feed = now;
                }
                self.send_grant(h, now);
            }
            self.grant_answer(h, now);
        }
        let host = &self.hosts[h];
        if host.armed && now >= host.last_feed + steps(self.timing.watchdog) {
            self.stats.watchdog_resets += 1;
            self.log(now, format_args!("h{h} reset by its watchdog"));
            self.crash(h, now);
        }
    }

    fn renew(&mut self, h: usize, now: u64) {
        let renew = steps(self.timing.renew);
        let cut = self.hosts[h].cut_until;
        let host = &mut self.hosts[h];
        if host.busy || host.next_renew > now {
            return;
        }
        host.busy = true;
        host.next_renew = now + renew;
        let rec = host.own.bump();
        let epoch = host.epoch;
        let (due, fail) = io_delay(&mut self.rng, cut, now);
        self.ops.push(Op {
            host: h as u32,
            epoch,
            due,
            fail,
            kind: Kind::Write { rec, issued: now },
        });
    }

    fn send_grant(&mut self, h: usize, now: u64) {
        if self.hosts[h].grant.is_some() {
            return;
        }
        let grant = self.hosts[h].guard.grant(at(now));
        // Local delivery: quick, sometimes a scheduling stall.
        let delay = if self.rng.chance(1, 50) {
            self.rng.below(100)
        } else {
            self.rng.below(3)
        };
        self.hosts[h].grant = Some(InFlight {
            grant,
            sent: now,
            due: now + delay,
        });
    }

    fn grant_answer(&mut self, h: usize, now: u64) {
        let host = &mut self.hosts[h];
        let Some(g) = host.grant.as_ref() else {
            return;
        };
        let answer = match host.ftvmm.mode {
            Mode::Healthy if g.due <= now => {
                host.ftvmm.output_until = if g.grant.ok {
                    now + g.grant.valid_ms.div_ceil(STEP.as_millis() as u64)
                } else {
                    now
                };
                self.stats.grants += 1;
                Ok(())
            }
            Mode::Hung | Mode::Rogue if g.sent + QUERY_TIMEOUT <= now => {
                Err("no answer within 5 s".to_string())
            }
            _ => return,
        };
        let g = host.grant.take().expect("checked");
        host.guard.on_answer(&g.grant, at(g.sent), answer);
    }

    /// Whether host `h` releases output at `now`.
    fn releases_output(&self, h: usize, now: u64) -> bool {
        let host = &self.hosts[h];
        host.alive
            && host.member
            && match host.ftvmm.mode {
                Mode::Rogue => true,
                Mode::Healthy | Mode::Hung => now < host.ftvmm.output_until,
            }
    }

    fn check(&mut self, now: u64) -> Result<(), SimFailure> {
        for r in 0..self.n {
            for w in (0..self.n).filter(|&w| w != r) {
                let reader = &self.hosts[r];
                if !reader.alive || !reader.agent_alive || !reader.live.expired(w, at(now)) {
                    continue;
                }
                let Some((issued, landed_seq)) = self.store.landed[w] else {
                    continue;
                };
                if reader.sampled[w].is_none_or(|s| s < landed_seq) {
                    continue;
                }
                if self.releases_output(w, now) {
                    let writer = &self.hosts[w];
                    return Err(SimFailure {
                        seed: self.seed,
                        kind: FailureKind::Lease,
                        what: format!(
                            "step {now}: h{r} judges h{w} expired, but h{w} still releases output \
                             (latest landed write issued at step {issued}; lease timeout {} \
                             steps; guard {:?}; ftvmm {:?}, output until step {})",
                            steps(self.timing.timeout),
                            writer.guard.state(),
                            writer.ftvmm.mode,
                            writer.ftvmm.output_until
                        ),
                    });
                }
                if self.hosts[w].alive && self.hosts[w].member {
                    self.stats.expiries_held += 1;
                } else {
                    self.stats.expiries_dead += 1;
                }
            }
        }
        Ok(())
    }

    fn crash(&mut self, h: usize, now: u64) {
        self.seq += 1;
        let seq = self.seq;
        // Unacknowledged writes of the host land now or never.
        let mut kept = Vec::new();
        for op in std::mem::take(&mut self.ops) {
            if op.host as usize != h {
                kept.push(op);
                continue;
            }
            if let Kind::Write { rec, issued } = &op.kind {
                if !op.fail && self.rng.chance(1, 2) {
                    self.store.disk[h] = rec.encode(512);
                    self.store.landed[h] = Some((*issued, seq));
                }
            }
        }
        self.ops = kept;
        let reboot = now + 50 + self.rng.below(300);
        let host = &mut self.hosts[h];
        host.alive = false;
        host.member = false;
        host.reboot_at = reboot;
    }
}

/// Completion step of a request issued at `now`, and whether it fails: quick
/// normally, hanging until the end of a cut (then failing or landing late).
fn io_delay(rng: &mut SplitMix, cut_until: u64, now: u64) -> (u64, bool) {
    if cut_until > now {
        (cut_until + rng.below(20), rng.chance(1, 2))
    } else if rng.chance(1, 50) {
        (now + rng.below(100), false)
    } else {
        (now + rng.below(10), false)
    }
}
