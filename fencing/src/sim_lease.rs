//! Deterministic simulation of delta leases, the guard and the watchdog on a
//! virtual clock (one step = 10 ms), all drawn from one seeded PRNG.
//!
//! Each host renews like the daemon does (write its lease sector; once that is
//! acknowledged, read the others'), ticks a [`Guard`] every 100 ms and feeds a
//! watchdog that resets the host `W` after the last feed. I/O completes after
//! random delays; a host's storage path is sometimes cut for 1–15 s (its
//! requests hang, then fail or land late); hosts crash and reboot. ftvmm is
//! modelled as never confirming an output hold: the worst case, where only
//! the watchdog stops a host.
//!
//! Checked invariant (the arithmetic in [`crate::lease`]): whenever a reader
//! that has read a host's sector since that host's latest write landed judges
//! the host's lease expired, that host is not running with output enabled:
//! it has been reset (or crashed) already.

use std::time::{Duration, Instant};

use config_schema::Timing;

use crate::layout::{LeaseRecord, Sector, SECTOR};
use crate::lease::{LeaseTiming, Liveness, OwnLease};
use crate::rng::SplitMix;
use crate::sim::SimFailure;
use crate::watchdog::Guard;

const STEP: Duration = Duration::from_millis(10);
const STEPS: u64 = 2500;

/// Numbers from one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSimStats {
    pub renewals: u64,
    pub cuts: u64,
    pub crashes: u64,
    pub watchdog_resets: u64,
    /// Checks where a reader judged a (reset) host expired.
    pub expiries: u64,
}

/// The lease sectors, and per host the issue step and completion number of
/// its latest landed write.
struct Store {
    disk: Vec<Sector>,
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

struct Host {
    alive: bool,
    epoch: u64,
    own: OwnLease,
    live: Liveness,
    guard: Guard,
    armed: bool,
    last_feed: u64,
    /// Renewed at least once since boot (a running member of the cluster).
    member: bool,
    busy: bool,
    reads_out: u32,
    next_renew: u64,
    cut_until: u64,
    reboot_at: u64,
    /// Per other host: completion number of this host's last read of it.
    sampled: Vec<Option<u64>>,
}

/// Runs one seeded lease simulation.
pub fn run(seed: u64, trace: bool) -> Result<LeaseSimStats, SimFailure> {
    let mut rng = SplitMix::new(seed ^ 0x006c_6561_7365);
    let n = 3 + rng.below(3) as usize;
    let timing = LeaseTiming::from_config(&Timing {
        heartbeat_interval_ms: 100,
        failure_timeout_ms: 1000,
        lag_limit_ms: 500,
    });
    let steps = |d: Duration| (d.as_millis() / STEP.as_millis()) as u64;
    let (renew, lease_t, wd) = (
        steps(timing.renew),
        steps(timing.timeout),
        steps(timing.watchdog),
    );
    let base = Instant::now();
    let at = |t: u64| base + STEP * t as u32;
    let fail = |what: String| SimFailure { seed, what };
    let new_host = |h: usize, inc: u64, t: u64| Host {
        alive: true,
        epoch: inc,
        own: OwnLease::new(h as u32, inc),
        live: Liveness::new(n, timing.timeout),
        guard: Guard::new(timing, at(t)),
        armed: false,
        last_feed: t,
        member: false,
        busy: false,
        reads_out: 0,
        next_renew: t,
        cut_until: 0,
        reboot_at: 0,
        sampled: vec![None; n],
    };
    let mut hosts: Vec<Host> = (0..n).map(|h| new_host(h, 1000 + h as u64, 0)).collect();
    let mut store = Store {
        disk: vec![[0u8; SECTOR]; n],
        landed: vec![None; n],
    };
    // Completions so far: orders events within one step.
    let mut seq: u64 = 0;
    let mut ops: Vec<Op> = Vec::new();
    let mut stats = LeaseSimStats::default();
    let mut next_epoch = 5000;

    for now in 0..STEPS {
        // Reboots.
        for (h, host) in hosts.iter_mut().enumerate() {
            if !host.alive && host.reboot_at == now {
                next_epoch += 1;
                *host = new_host(h, next_epoch, now);
                if trace {
                    println!("[{now:>5}] h{h} boots");
                }
            }
        }
        // Faults.
        let h = rng.below(n as u64) as usize;
        if hosts[h].alive && rng.chance(1, 2000) {
            seq += 1;
            crash(&mut hosts, &mut ops, &mut store, &mut rng, h, now, seq);
            stats.crashes += 1;
            if trace {
                println!("[{now:>5}] h{h} crashes");
            }
        } else if hosts[h].alive && hosts[h].cut_until <= now && rng.chance(1, 800) {
            hosts[h].cut_until = now + 100 + rng.below(1400);
            stats.cuts += 1;
            if trace {
                println!("[{now:>5}] h{h} storage cut until {}", hosts[h].cut_until);
            }
        }
        // I/O completions due now, in random order.
        let mut due: Vec<Op> = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            if ops[i].due <= now {
                due.push(ops.swap_remove(i));
            } else {
                i += 1;
            }
        }
        while !due.is_empty() {
            let op = due.swap_remove(rng.below(due.len() as u64) as usize);
            seq += 1;
            let host = &mut hosts[op.host as usize];
            if !host.alive || host.epoch != op.epoch {
                continue;
            }
            match op.kind {
                Kind::Write { rec, issued } => {
                    if op.fail {
                        host.busy = false;
                        continue;
                    }
                    store.disk[op.host as usize] = rec.encode();
                    store.landed[op.host as usize] = Some((issued, seq));
                    stats.renewals += 1;
                    host.live.own_renewed(op.host as usize, rec, at(issued));
                    host.guard.renewed(at(issued));
                    host.member = true;
                    if !host.armed {
                        host.armed = true;
                        host.last_feed = now;
                    }
                    for of in (0..n as u32).filter(|&o| o != op.host) {
                        host.reads_out += 1;
                        let (due, fail) = io_delay(&mut rng, host.cut_until, now);
                        ops.push(Op {
                            host: op.host,
                            epoch: op.epoch,
                            due,
                            fail,
                            kind: Kind::Read { of },
                        });
                    }
                    if n == 1 {
                        host.busy = false;
                    }
                }
                Kind::Read { of } => {
                    host.reads_out -= 1;
                    if host.reads_out == 0 {
                        host.busy = false;
                    }
                    if op.fail {
                        continue;
                    }
                    let rec = LeaseRecord::decode(&store.disk[of as usize]).ok();
                    host.live.observe(of as usize, rec, at(now));
                    host.sampled[of as usize] = Some(seq);
                }
            }
        }
        // Renewals, guard ticks, watchdogs.
        for h in 0..n {
            let host = &mut hosts[h];
            if !host.alive {
                continue;
            }
            if !host.busy && host.next_renew <= now {
                host.busy = true;
                host.next_renew = now + renew;
                let rec = host.own.bump();
                let (due, fail) = io_delay(&mut rng, host.cut_until, now);
                ops.push(Op {
                    host: h as u32,
                    epoch: host.epoch,
                    due,
                    fail,
                    kind: Kind::Write { rec, issued: now },
                });
            }
            if now % 10 == 0 {
                let a = host.guard.tick(at(now));
                if a.feed && host.armed {
                    host.last_feed = now;
                }
            }
            if host.armed && now >= host.last_feed + wd {
                stats.watchdog_resets += 1;
                if trace {
                    println!("[{now:>5}] h{h} reset by its watchdog");
                }
                seq += 1;
                crash(&mut hosts, &mut ops, &mut store, &mut rng, h, now, seq);
            }
        }
        // The invariant.
        for r in 0..n {
            for w in (0..n).filter(|&w| w != r) {
                let (reader, writer) = (&hosts[r], &hosts[w]);
                if !reader.alive || !reader.live.expired(w, at(now)) {
                    continue;
                }
                let Some((issued, landed_seq)) = store.landed[w] else {
                    continue;
                };
                if reader.sampled[w].is_none_or(|s| s < landed_seq) {
                    continue;
                }
                if writer.alive && writer.member {
                    return Err(fail(format!(
                        "step {now}: h{r} judges h{w} expired, but h{w} still runs with output \
                         (latest landed write issued at step {issued}; lease \
                         timeout {lease_t} steps; guard {:?})",
                        writer.guard.state()
                    )));
                }
                stats.expiries += 1;
            }
        }
    }
    Ok(stats)
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

fn crash(
    hosts: &mut [Host],
    ops: &mut Vec<Op>,
    store: &mut Store,
    rng: &mut SplitMix,
    h: usize,
    now: u64,
    seq: u64,
) {
    // Unacknowledged writes of the host land now or never.
    ops.retain(|op| {
        if op.host as usize != h {
            return true;
        }
        if let Kind::Write { rec, issued } = op.kind {
            if !op.fail && rng.chance(1, 2) {
                store.disk[h] = rec.encode();
                store.landed[h] = Some((issued, seq));
            }
        }
        false
    });
    let host = &mut hosts[h];
    host.alive = false;
    host.member = false;
    host.reboot_at = now + 50 + rng.below(300);
}
