//! Tests of the per-request timeline: the recorder alone, then inside the log.

use super::timeline::{Segment, Timeline};
use super::*;
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent};

fn frame() -> OutputEvent {
    OutputEvent::Frame {
        dev: 0,
        data: vec![1, 2, 3],
    }
}

fn write(id: u64) -> OutputEvent {
    OutputEvent::Block(BlockRequest {
        dev: 0,
        id,
        op: BlockOp::Write {
            sector: 0,
            data: vec![0; 512],
        },
    })
}

fn done(id: u64) -> InputEvent {
    InputEvent::BlockDone {
        dev: 0,
        id,
        status: BlockStatus::Ok,
        data: Vec::new(),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_reply_is_measured_segment_by_segment() {
    let mut t = Timeline::new(1);
    let t0 = Instant::now();
    let id = t.on_output(&frame(), t0).expect("every output is traced");
    t.on_covered(id, 5, t0 + ms(1));
    t.on_batch(4, t0 + ms(2)); // does not hold the covering record
    t.on_batch(5, t0 + ms(3));
    t.on_fresh_ack(4, t0 + ms(4));
    t.on_fresh_ack(5, t0 + ms(7));
    t.on_released(id, t0 + ms(8));
    t.on_wire(id, t0 + ms(10));
    for (seg, want) in [
        (Segment::ReplyProducedToCovered, 1),
        (Segment::ReplyCoveredToSent, 2),
        (Segment::ReplySentToAcked, 4),
        (Segment::ReplyAckedToReleased, 1),
        (Segment::ReplyHeld, 8),
        (Segment::ReplyReleasedToWire, 2),
    ] {
        assert_eq!(t.median(seg), Some(ms(want)), "{seg:?}");
    }
    assert_eq!(
        t.report().len(),
        6,
        "only the reply's segments have samples"
    );
}

#[test]
fn a_write_ends_at_its_own_completion_not_when_handed_to_the_disk() {
    let mut t = Timeline::new(1);
    let t0 = Instant::now();
    let id = t.on_output(&write(7), t0).unwrap();
    t.on_covered(id, 1, t0);
    t.on_batch(1, t0);
    t.on_fresh_ack(1, t0 + ms(1));
    t.on_released(id, t0 + ms(1));
    t.on_wire(id, t0 + ms(1));
    assert_eq!(t.median(Segment::WriteReleasedToCompleted), None);
    t.on_inputs(&[done(8)], Some(2), t0 + ms(3));
    assert_eq!(t.median(Segment::WriteReleasedToCompleted), None);
    t.on_inputs(&[done(7)], Some(2), t0 + ms(5));
    assert_eq!(t.median(Segment::WriteReleasedToCompleted), Some(ms(4)));
    assert_eq!(t.median(Segment::WriteHeld), Some(ms(1)));
}

#[test]
fn a_received_frame_ends_when_its_record_is_freshly_acked() {
    let mut t = Timeline::new(1);
    let t0 = Instant::now();
    let rx = InputEvent::Frame {
        dev: 0,
        data: vec![9],
    };
    t.on_inputs(std::slice::from_ref(&rx), Some(3), t0);
    t.on_batch(3, t0 + ms(1));
    t.on_fresh_ack(2, t0 + ms(2));
    assert_eq!(t.median(Segment::InSentToAcked), None);
    t.on_fresh_ack(3, t0 + ms(4));
    assert_eq!(t.median(Segment::InRecordedToSent), Some(ms(1)));
    assert_eq!(t.median(Segment::InSentToAcked), Some(ms(3)));
    // Running alone nothing is recorded: nothing to trace.
    t.on_inputs(&[rx], None, t0);
    t.on_fresh_ack(u64::MAX, t0 + ms(5));
    assert_eq!(t.report()[0].count, 1);
}

#[test]
fn one_in_every_n_is_traced_and_zero_traces_nothing() {
    let mut t = Timeline::new(4);
    let now = Instant::now();
    let traced = (0..8)
        .filter(|_| t.on_output(&frame(), now).is_some())
        .count();
    assert_eq!(traced, 2);
    // Console bytes and reads are not requests of the timeline.
    assert!(t.on_output(&OutputEvent::Console(vec![1]), now).is_none());
    let mut off = Timeline::new(0);
    assert!((0..8).all(|_| off.on_output(&frame(), now).is_none()));
}

#[test]
fn traces_that_never_end_do_not_stop_the_sampling() {
    let mut t = Timeline::new(1);
    let t0 = Instant::now();
    for id in 0..super::timeline::MAX_OPEN as u64 {
        assert!(t.on_output(&write(id), t0).is_some());
    }
    assert!(t.on_output(&frame(), t0 + ms(10)).is_none(), "full");
    let later = t0 + super::timeline::ABANDON_AFTER + ms(1);
    assert!(
        t.on_output(&frame(), later).is_some(),
        "abandoned traces made room"
    );
}

#[test]
fn the_log_traces_a_held_reply_from_production_to_the_wire() {
    struct Discard;
    impl Outputs for Discard {
        fn emit(&mut self, _n: ExitIndex, _e: OutputEvent) {}
    }
    let log = PrimaryLog::new(Box::new(Discard), Duration::from_secs(1));
    log.set_timeline_every(1);
    log.append_events(
        1,
        &[InputEvent::Frame {
            dev: 0,
            data: vec![1],
        }],
    )
    .unwrap();
    log.emit(2, frame());
    log.append_output_digest(3).unwrap();
    let b = log.take_batch(Duration::ZERO).unwrap();
    assert_eq!(log.held(), 1);
    log.on_ack(b.first_seq + u64::from(b.count), 0, 0, b.sent_ns);
    assert_eq!(log.held(), 0);
    let names: Vec<&str> = log.timeline().iter().map(|s| s.segment).collect();
    for want in [
        Segment::InRecordedToSent,
        Segment::InSentToAcked,
        Segment::ReplyProducedToCovered,
        Segment::ReplySentToAcked,
        Segment::ReplyHeld,
        Segment::ReplyReleasedToWire,
    ] {
        assert!(
            names.contains(&want.name()),
            "{want:?} missing in {names:?}"
        );
    }
    assert!(log.status()["timeline"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
}

fn request() -> InputEvent {
    InputEvent::Frame {
        dev: 0,
        data: vec![9; 60],
    }
}

#[test]
fn a_request_is_measured_to_the_guests_next_frame_or_disk_request() {
    let mut t = Timeline::new(2);
    let t0 = Instant::now();
    // Sampled also with nothing recorded (FT off): the guest's own work.
    t.on_inputs(&[request()], None, t0);
    t.on_output(&OutputEvent::Console(b"log line".to_vec()), t0 + ms(1));
    t.on_output(&write(7), t0 + ms(3));
    // The write answered it: a later output is not the request's.
    t.on_output(&frame(), t0 + ms(9));
    assert_eq!(t.median(Segment::InRecordedToNextOutput), Some(ms(3)));
    // The second request of two is not sampled (one in `every`), the third is.
    t.on_inputs(&[request()], Some(4), t0 + ms(10));
    t.on_output(&frame(), t0 + ms(11));
    t.on_inputs(&[request()], Some(5), t0 + ms(20));
    t.on_output(&frame(), t0 + ms(25));
    assert_eq!(t.samples(Segment::InRecordedToNextOutput), vec![3000, 5000]);
    let names: Vec<_> = t.report().iter().map(|r| r.segment).collect();
    assert!(names.contains(&"frame in: recorded -> next output produced"));
}
