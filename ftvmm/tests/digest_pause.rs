//! Memory-digest pauses in a running pair, by simulation (no KVM). The
//! Primary pauses at a digest point both sides agreed on, tells the Secondary
//! how its input call at that exit ended, and both run on; the Secondary must
//! follow through any number of pauses without a divergence and hash the same
//! state at each, whether the Primary's input call at the pause exit returned
//! events or nothing.
//!
//! (The QEMU pair test found the case this pins down: when the call at the
//! pause exit returned events, the Primary used to append a `Mark` for that
//! exit anyway, and the Secondary, already past it, called it a divergence.)

use std::sync::Arc;
use std::time::Duration;

use ftvmm::io::{ExitIndex, Inputs, Outputs};
use ftvmm::lockstep::log::{decode_batch, Body};
use ftvmm::lockstep::primary::{PrimaryInputs, PrimaryLog, PrimaryOutputs};
use ftvmm::lockstep::secondary::{ReplayEnd, ReplayQueue, SecondaryInputs, SecondaryOutputs};
use ftvmm::vm::VmHandle;

mod toy;

use toy::{event_hash, exit_work, mix, Live, Rng, Sink};

const EXITS: u64 = 3_000;

/// The vCPU loop's shape around pauses: the pause check at the top of the
/// loop, then one exit (its work, then the input call), up to `limit` exits.
/// Returns the last exit and the (pause exit, guest state) of every pause.
fn run<I: Inputs>(
    limit: ExitIndex,
    inputs: &mut I,
    outputs: &mut dyn Outputs,
    take_pause: impl Fn(&mut I) -> Option<ExitIndex>,
    stopped: impl Fn(&I) -> bool,
    mut after_exit: impl FnMut(ExitIndex),
) -> (ExitIndex, Vec<(ExitIndex, u64)>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut n = 0;
    let mut pauses = Vec::new();
    loop {
        if let Some(at) = inputs.pause_at().filter(|&at| n >= at) {
            assert_eq!(n, at, "ran past the pause point");
            assert_eq!(take_pause(inputs), Some(at));
            pauses.push((at, state));
            continue;
        }
        if n == limit || stopped(inputs) {
            return (n, pauses);
        }
        n += 1;
        state = exit_work(state, n, inputs, outputs);
        let mut ev = Vec::new();
        inputs.events_at(n, &mut ev);
        for e in &ev {
            state = mix(state, event_hash(e));
        }
        after_exit(n);
    }
}

struct Outcome {
    pauses: usize,
    with_events_at_pause: usize,
}

/// One pair run: a Primary with input at one exit in `one_in` and digests
/// requested at random, its log shipped to a concurrently replaying
/// Secondary after every exit.
fn pair(seed: u64, one_in: u64) -> Outcome {
    let q = ReplayQueue::new(0);
    let secondary = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            let mut sin = SecondaryInputs::new(Arc::clone(&q), VmHandle::standalone());
            let mut out = SecondaryOutputs(Arc::clone(&q));
            let (n, pauses) = run(
                u64::MAX,
                &mut sin,
                &mut out,
                |s| s.take_pause(),
                |s| s.end().is_some(),
                |_| {},
            );
            (n, pauses, sin.end().cloned())
        })
    };

    let log = PrimaryLog::new(Box::new(Sink::default()), Duration::from_secs(3600));
    let mut pin = PrimaryInputs::new(Live::new(seed, one_in), Arc::clone(&log));
    let request = pin.digest_request();
    let mut rng = Rng(seed.rotate_left(29) | 1);
    let mut records = Vec::new();
    let ship = |records: &mut Vec<_>| {
        if let Some(b) = log.take_batch(Duration::ZERO) {
            let recs = decode_batch(&b.bytes, b.first_seq).expect("own batch decodes");
            records.extend(recs.iter().cloned());
            q.push_batch(recs, b.sent_ns);
            let all = records.len() as u64;
            log.on_ack(all, all, 0, b.sent_ns);
        }
    };
    let (n, p_pauses) = run(
        EXITS,
        &mut pin,
        &mut PrimaryOutputs(Arc::clone(&log)),
        |p| p.take_pause(),
        |_| false,
        |_| {
            if rng.next().is_multiple_of(61) {
                request.store(1 + rng.next() % 4, std::sync::atomic::Ordering::SeqCst);
            }
            ship(&mut records);
        },
    );
    log.append(n, Body::End).unwrap();
    ship(&mut records);

    let (s_n, s_pauses, end) = secondary.join().expect("secondary thread");
    assert!(
        matches!(end, Some(ReplayEnd::PrimaryEnded(e)) if e == n),
        "seed {seed}: the Secondary's replay ended with {end:?} (primary ended at exit {n})"
    );
    // It learns of the end at exit n, or at n + 1 if its call at n had events.
    assert!(
        s_n == n || s_n == n + 1,
        "seed {seed}: the Secondary stopped at exit {s_n}, the Primary at {n}"
    );
    // A digest asked for just before the end may fall after it: only the
    // Secondary, one exit ahead, can reach that one.
    let s_pauses: Vec<_> = s_pauses.into_iter().filter(|(at, _)| *at <= n).collect();
    assert_eq!(s_pauses, p_pauses, "seed {seed}: pauses or states differ");
    let with_events_at_pause = p_pauses
        .iter()
        .filter(|(at, _)| {
            records
                .iter()
                .any(|r| r.n == *at && matches!(r.body, Body::Events(_)))
        })
        .count();
    Outcome {
        pauses: p_pauses.len(),
        with_events_at_pause,
    }
}

#[test]
fn the_secondary_follows_the_primary_through_digest_pauses_with_and_without_input_at_the_pause() {
    let (mut pauses, mut with_events) = (0, 0);
    for seed in 1..=120u64 {
        let o = pair(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 2 + seed % 3);
        pauses += o.pauses;
        with_events += o.with_events_at_pause;
    }
    // Both ways an input call at a pause exit can end must have been run.
    assert!(
        with_events >= 50 && pauses - with_events >= 50,
        "{pauses} pauses, {with_events} with input at the pause exit: too few of one kind"
    );
}
