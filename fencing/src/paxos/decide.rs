//! The synchronous driver of [`Proposer`]: performs its requests against a
//! [`BlockIo`] — the reads a step asks for together at once, one thread
//! each ([`Exec::Batched`]) — backs off after aborts and starts again after
//! I/O errors, until a deadline.
//!
//! Why batched: a phase reads every other host's block, and on a slow path
//! each read is a round trip. One at a time, a phase costs `N - 1` round
//! trips and a decision about `2N + 2`; together, one per phase. A proposer
//! asks for a set of requests only when any completion order is right (it
//! writes alone and reads only after the write completed; the simulation
//! drives it against a disk that reorders), so issuing them together
//! changes nothing it relies on. `make bench` prints both side by side
//! (`decide_bench`). A RESERVATION CONFLICT (`EBADE`) is not
//! retried: the device refuses this host's writes (it was preempted), and no
//! later attempt can change that.

use std::time::Duration;

use config_schema::clock::BootInstant;

use super::{IoRequest, IoResult, Op, Outcome, Poll, Proposer};
use crate::io::{each_at_once, BlockIo};
use crate::layout::Geometry;

/// Why [`decide`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("storage i/o failed: {0}")]
    Io(std::io::Error),
    #[error("no decision within {0:?} ({1} ballots)")]
    Timeout(Duration, u32),
    #[error("storage refused this host's i/o: {0} (a persistent reservation conflict: another host preempted this one)")]
    Refused(std::io::Error),
}

/// What one host asks Disk Paxos: who owns (`vm`, `generation`), proposing
/// itself (`me`) under `config_generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub geo: Geometry,
    pub me: u32,
    pub vm: u32,
    pub generation: u64,
    pub config_generation: u64,
}

/// The backoff window doubles with each abort in a row, at most this often
/// (16 × `backoff`: 800 ms with the daemon's 50 ms).
///
/// A fixed window cannot part two proposers whose ballots take longer than
/// it: each retries while the other is still in its ballot and overtakes it
/// (the simulation's duel phase, `fencing/src/sim/duel.rs`, at
/// `Pace::CRAWL` with two equally fast hosts: p99 3.7 s and 26 of 20000
/// seeds undecided after 8 s with a fixed window; p99 1.4 s, max 2.3 s
/// doubling).
pub const BACKOFF_DOUBLINGS: u32 = 4;

/// How long to wait before the next ballot after the `aborts`-th abort in a
/// row (`aborts >= 1`), `backoff` being the driver's base window and `unit`
/// a uniform draw in `[0, 1)`. Liveness only: safety never depends on when a
/// ballot starts.
pub fn backoff_wait(backoff: Duration, aborts: u32, unit: f64) -> Duration {
    debug_assert!(aborts >= 1 && (0.0..1.0).contains(&unit));
    let window = backoff * (1 << (aborts - 1).min(BACKOFF_DOUBLINGS));
    window.mul_f64(unit)
}

/// How [`decide`] performs the requests a proposer asks for together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// One at a time (before batching; kept for the benchmark).
    Sequential,
    /// All at once, one thread each, completions fed in request order.
    Batched,
}

/// One request against `io`; a RESERVATION CONFLICT is `Err` (not retried).
fn perform(io: &dyn BlockIo, req: &IoRequest) -> Result<IoResult, std::io::Error> {
    match &req.op {
        Op::Read { block } => io.read(*block).map(IoResult::Read),
        Op::Write { block, data } => io.write(*block, data).map(|()| IoResult::Written),
    }
}

/// Performs `batch`, in parallel when `exec` says so and there is more than
/// one request; results in request order.
fn perform_all(
    io: &dyn BlockIo,
    batch: &[IoRequest],
    exec: Exec,
) -> Vec<Result<IoResult, std::io::Error>> {
    if exec == Exec::Sequential || batch.len() < 2 {
        return batch.iter().map(|r| perform(io, r)).collect();
    }
    each_at_once(batch, |r| perform(io, r))
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| Err(std::io::Error::other("an i/o thread panicked"))))
        .collect()
}

/// Runs Disk Paxos for `ask` on `io`, retrying after aborts (randomized
/// backoff, see [`backoff_wait`]) and after I/O errors until `deadline`. Blocks
/// for at most about `deadline` plus one I/O.
pub fn decide(
    io: &dyn BlockIo,
    ask: Ask,
    deadline: BootInstant,
    backoff: Duration,
) -> Result<Outcome, DecideError> {
    decide_with(io, ask, deadline, backoff, Exec::Batched)
}

/// [`decide`] with the requests performed as `exec` says.
pub fn decide_with(
    io: &dyn BlockIo,
    ask: Ask,
    deadline: BootInstant,
    backoff: Duration,
    exec: Exec,
) -> Result<Outcome, DecideError> {
    let Ask {
        geo,
        me,
        vm,
        generation,
        config_generation,
    } = ask;
    let started = BootInstant::now();
    let mut rng = crate::rng::SplitMix::from_entropy(u64::from(me));
    let mut ballots = 0;
    // Aborts in a row of this call (an I/O error does not reset them).
    let mut aborts = 0;
    let mut last_io_error = None;
    while BootInstant::now() < deadline {
        let (mut p, mut queue) = Proposer::new(geo, me, vm, generation, config_generation);
        let outcome = 'ballot: loop {
            if queue.is_empty() {
                // Every request was completed and the last poll asked to back off.
                aborts += 1;
                let wait = backoff_wait(backoff, aborts, rng.unit());
                if BootInstant::now() + wait >= deadline {
                    break None;
                }
                std::thread::sleep(wait);
                queue = p.retry();
                continue;
            }
            let batch = match exec {
                Exec::Batched => std::mem::take(&mut queue),
                // As before batching: the last asked first.
                Exec::Sequential => queue.pop().into_iter().collect(),
            };
            let results = perform_all(io, &batch, exec);
            for (req, result) in batch.iter().zip(results) {
                let result = match result {
                    Ok(r) => r,
                    Err(e) if crate::pr::is_reservation_conflict(&e) => {
                        return Err(DecideError::Refused(e))
                    }
                    Err(e) => {
                        last_io_error = Some(e);
                        IoResult::Failed
                    }
                };
                match p.complete(req.token, result) {
                    Poll::Io(more) => queue.extend(more),
                    Poll::Wait | Poll::Retry => {}
                    Poll::Done(o) => break 'ballot Some(o),
                }
            }
        };
        ballots += p.ballots();
        match outcome {
            Some(Outcome::IoFailed) => {
                let wait = backoff.max(Duration::from_millis(10));
                if BootInstant::now() + wait >= deadline {
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
