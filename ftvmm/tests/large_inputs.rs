//! A guest must never crash the VMM (issue 14): inputs larger than a log
//! record or a channel message are recorded, shipped and replayed whole.
//!
//! Each test drives the real recording path — `PrimaryInputs` →
//! `PrimaryLog` (append, take_batch) → channel message, sealed and decoded
//! under a real Noise session → `ReplayQueue` → `SecondaryInputs` — through
//! `ftvmm::lockstep::recording_sim`, which checks that the Secondary's vCPU
//! gets exactly what the Primary's got, at the same exits, and that the
//! Primary's got everything the backends produced, in order. (Log format 1
//! asserted on a 16 MiB read — an abort in release — and a backlog above
//! 16 MiB made a batch no channel message could carry.)

use ftvmm::io::{BlockStatus, InputEvent, OutputEvent};
use ftvmm::lockstep::channel::MAX_MESSAGE;
use ftvmm::lockstep::log::MAX_BODY;
use ftvmm::lockstep::recording_sim::{self, Pair};
use ftvmm::virtio::MAX_REQUEST_BYTES;

fn read_done(id: u64, len: usize) -> InputEvent {
    let mut data = vec![id as u8; len];
    for (i, b) in data.iter_mut().enumerate().step_by(4093) {
        *b = (i / 4093) as u8 ^ 0x5a;
    }
    InputEvent::BlockDone {
        dev: 0,
        id,
        status: BlockStatus::Ok,
        data,
    }
}

#[test]
fn a_16_mib_virtio_blk_read_is_recorded_and_replayed_whole() {
    let mut pair = Pair::new();
    let len = MAX_REQUEST_BYTES as usize;
    pair.time_read(1).unwrap();
    pair.emit(1, OutputEvent::Console(b"reading".to_vec()));
    pair.events_at(1).unwrap();
    pair.offer(read_done(0, len));
    let got = pair.events_at(2).unwrap();
    assert_eq!(got, vec![read_done(0, len)], "handed over at once");
    pair.time_read(3).unwrap();
    pair.ship().unwrap();
    let mut replayed = Vec::new();
    let report = pair
        .finish_with(4, |n, evs| {
            if !evs.is_empty() {
                replayed.push((n, evs.to_vec()));
            }
        })
        .unwrap();
    assert_eq!(replayed, vec![(2, vec![read_done(0, len)])]);
    assert_eq!(report.split_bodies, 1, "{report:?}");
    assert!(report.batches >= 4, "16 MiB in batches: {report:?}");
    assert!(report.largest_message <= MAX_MESSAGE, "{report:?}");
}

#[test]
fn a_burst_of_1_mib_completions_at_one_exit_is_handed_over_across_exits() {
    let mut pair = Pair::new();
    let burst = 100;
    for id in 0..burst {
        pair.offer(read_done(id, 1 << 20));
    }
    // All of them completed before the vCPU's next input call.
    let first = pair.events_at(1).unwrap();
    assert!(
        !first.is_empty() && first.len() < burst as usize,
        "one body's worth at the first call: {}",
        first.len()
    );
    let bytes: usize = first.len() << 20;
    assert!(bytes <= MAX_BODY, "{bytes}");
    // A halted vCPU (the burst did not make an interrupt deliverable, say)
    // gets the rest at the same exit without waiting for new events.
    while pair.waiting() > 0 {
        let got = pair.events_at_halt(1).unwrap();
        assert!(!got.is_empty());
    }
    let report = pair.finish(2).unwrap();
    assert_eq!(report.events, burst, "{report:?}");
    assert!(report.deferred >= 3, "{report:?}");
    assert!(report.split_bodies >= 4, "{report:?}");
    assert!(report.largest_message <= MAX_MESSAGE, "{report:?}");
}

#[test]
fn a_pending_backlog_larger_than_a_message_leaves_in_batches_that_fit() {
    let mut pair = Pair::new();
    // 24 MiB recorded at 24 exits while the sender does not run (a stalled
    // link, a busy host): one batch of it would not fit one message.
    for n in 1..=24 {
        pair.offer(read_done(n, 1 << 20));
        pair.time_read(n).unwrap();
        pair.events_at(n).unwrap();
    }
    pair.ship().unwrap();
    let report = pair.finish(25).unwrap();
    assert!(report.batches >= 6, "{report:?}");
    assert!(report.largest_message <= MAX_MESSAGE, "{report:?}");
    assert_eq!(report.events, 24);
}

#[test]
fn frames_console_and_ticks_at_arbitrary_exits_replay_in_place() {
    let mut pair = Pair::new();
    let mut n = 1;
    for i in 0..200u64 {
        match i % 5 {
            0 => pair.offer(InputEvent::Frame {
                dev: 1,
                data: vec![i as u8; 1 + (i as usize * 331) % 65535],
            }),
            1 => pair.offer(InputEvent::ConsoleIn(vec![b'a' + (i % 26) as u8])),
            2 => pair.offer(InputEvent::TimerTick),
            3 => pair.offer(read_done(i, 512 * (i as usize % 9))),
            _ => pair.emit(n, OutputEvent::Console(vec![i as u8])),
        }
        if i % 3 == 0 {
            pair.events_at(n).unwrap();
            n += 1 + i % 4;
        }
        if i % 17 == 0 {
            pair.ship().unwrap();
        }
    }
    let report = pair.finish(n).unwrap();
    assert_eq!(report.events, 160, "{report:?}");
}

/// The fuzzer's first find (in the harness's oracle, not in the recorder):
/// an input call that got nothing, then halted calls at the same exit that
/// got events. A record names only its exit, so the Secondary's input call
/// takes the first of them — as the vCPU loop does, the same events leaving
/// the same interrupt state — and its halted calls the rest.
#[test]
fn events_of_halted_calls_after_an_empty_one_replay_at_the_same_exit() {
    let mut pair = Pair::new();
    assert!(pair.events_at(1).unwrap().is_empty());
    for id in 0..3 {
        pair.offer(read_done(id, MAX_REQUEST_BYTES as usize));
    }
    let mut calls = 0;
    while pair.waiting() > 0 {
        assert_eq!(
            pair.events_at_halt(1).unwrap().len(),
            1,
            "one 16 MiB read per body"
        );
        calls += 1;
    }
    assert_eq!(calls, 3);
    let mut at = Vec::new();
    let report = pair
        .finish_with(2, |n, evs| at.push((n, evs.len())))
        .unwrap();
    assert_eq!(&at[..3], &[(1, 1), (1, 1), (1, 1)]);
    assert_eq!(report.events, 3);
}

/// The fuzz target's body on a few fixed scripts (the fuzzer explores more).
#[test]
fn the_fuzz_body_runs_hostile_scripts() {
    let mut first_find = vec![0x3b];
    first_find.extend([0; 76]);
    first_find.extend([0x34, 0xc3, 0x41]);
    let scripts: [&[u8]; 5] = [
        // The fuzzer's first find: an empty input call, 16 MiB reads, a
        // halted call at the same exit.
        &first_find,
        // 16 MiB reads (class 0) in a burst of 3, then an input call.
        &[0, 0, 2, 3, 0],
        // 1 MiB reads x 40, halt calls, a ship, time reads, outputs.
        &[0, 1, 39, 4, 4, 4, 7, 5, 6, 2, 6, 3, 3, 4, 4],
        // Frames of 65535 bytes x 200 and ticks at exits far apart.
        &[1, 255, 255, 199, 3, 4, 2, 0, 3, 4, 2, 200, 3, 1, 4, 4, 4, 4],
        // Nothing but calls.
        &[3, 5, 6, 1, 6, 2, 7, 3, 9],
    ];
    for s in scripts {
        let report = recording_sim::run(s, recording_sim::FUZZ_BUDGET).unwrap();
        assert!(report.largest_message <= MAX_MESSAGE);
    }
}
