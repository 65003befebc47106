//! Unit tests of the Primary's log, gate and doors.

use super::*;
use crate::io::InputEvent;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Sink(Arc<Mutex<Vec<OutputEvent>>>);
impl Outputs for Sink {
    fn emit(&mut self, _n: ExitIndex, e: OutputEvent) {
        self.0.lock().unwrap().push(e);
    }
}

type Out = Arc<Mutex<Vec<OutputEvent>>>;

fn log_with(gate: Gate, grant: Arc<HostGrant>) -> (Arc<PrimaryLog>, Out) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let log = PrimaryLog::with_safety(
        Box::new(Sink(Arc::clone(&out))),
        Duration::from_secs(1),
        gate,
        grant,
        Duration::from_secs(1),
    );
    (log, out)
}

fn log() -> (Arc<PrimaryLog>, Out) {
    log_with(Gate::ByAcks, HostGrant::always())
}

fn console(b: u8) -> OutputEvent {
    OutputEvent::Console(vec![b])
}

fn now_ns() -> u64 {
    BootInstant::now().as_nanos()
}

/// Sends what is pending and acks it freshly.
fn ship_and_ack(log: &PrimaryLog) {
    if let Some(b) = log.take_batch(Duration::ZERO) {
        log.on_ack(b.first_seq + u64::from(b.count), 0, 0, b.sent_ns);
    }
}

#[test]
fn output_rule_waits_for_the_covering_digest_record() {
    let (log, out) = log();
    log.append(1, Body::Events(vec![InputEvent::TimerTick]))
        .unwrap(); // record 0
    log.emit(3, console(b'a'));
    log.append(
        3,
        Body::Check {
            rip: 0,
            gpr_hash: 0,
        },
    )
    .unwrap(); // record 1: after it, not covering
    let b = log.take_batch(Duration::ZERO).unwrap();
    assert_eq!((b.first_seq, b.count), (0, 2));
    log.on_ack(2, 0, 0, b.sent_ns);
    assert!(
        out.lock().unwrap().is_empty(),
        "released before the digest that covers it was acked: a Secondary going live \
         with only these records never checks what the world saw"
    );
    log.append_output_digest(4).unwrap(); // record 2 covers 'a'
    log.emit(5, console(b'b'));
    let b = log.take_batch(Duration::ZERO).unwrap();
    log.on_ack(3, 0, 0, b.sent_ns);
    assert_eq!(*out.lock().unwrap(), vec![console(b'a')]);
    log.append_output_digest(6).unwrap(); // record 3 covers 'b'
    ship_and_ack(&log);
    assert_eq!(*out.lock().unwrap(), vec![console(b'a'), console(b'b')]);
    assert_eq!(log.held(), 0);
}

#[test]
fn a_stale_ack_moves_the_window_but_releases_nothing() {
    let (log, out) = log();
    log.append(1, Body::End).unwrap();
    log.emit(1, console(b'x'));
    log.append_output_digest(2).unwrap();
    let b = log.take_batch(Duration::ZERO).unwrap();
    // The ack echoes a batch sent "two seconds ago" (this host stalled with
    // the ack in its socket buffer): not fresh against a 1 s limit.
    let old = b.sent_ns.saturating_sub(2_000_000_000);
    log.on_ack(2, 0, 0, old);
    assert!(
        out.lock().unwrap().is_empty(),
        "a stale ack released output"
    );
    assert!(log.all_acked(), "the window still moves");
    assert_eq!(log.stats().stale_acks, 1);
    log.on_ack(2, 0, 0, now_ns());
    assert_eq!(*out.lock().unwrap(), vec![console(b'x')]);
    // Both acks timed: the stale one's round trip is its echo's age (at
    // least the 2 s), the longest; the last one's is the fresh one's.
    let st = log.stats();
    assert_eq!(st.ack_round_trip_acks, 2);
    assert!(st.ack_round_trip_us_max >= 2_000_000, "{st:?}");
    assert!(
        st.ack_round_trip_us_last < st.ack_round_trip_us_max,
        "{st:?}"
    );
    assert_eq!(
        st.ack_round_trip_us_total,
        st.ack_round_trip_us_max + st.ack_round_trip_us_last
    );
}

#[test]
fn a_keepalive_starts_at_the_first_unsent_record_not_the_next_one() {
    let (log, _) = log();
    log.append(1, Body::End).unwrap();
    let b = log.take_batch(Duration::ZERO).unwrap();
    assert_eq!((b.first_seq, b.count), (0, 1));
    log.append(2, Body::End).unwrap(); // pending, not yet taken by the sender
    assert_eq!(log.next_seq(), 2);
    assert_eq!(
        log.unsent_from(),
        1,
        "an empty batch must not skip record 1"
    );
}

#[test]
fn the_oldest_unacknowledged_batch_ages_until_an_ack_covers_it() {
    let (log, _) = log();
    assert_eq!(log.unacked_for(), Duration::ZERO, "nothing sent");
    log.append(1, Body::End).unwrap();
    assert_eq!(log.unacked_for(), Duration::ZERO, "pending is not sent");
    let first = log.take_batch(Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    log.append(2, Body::End).unwrap();
    let second = log.take_batch(Duration::ZERO).unwrap();
    // No ack at all yet: a Secondary still starting its side (respawn run
    // of `make test`, exit 47) is judged by silence, not by this age.
    assert_eq!(log.unacked_for(), Duration::ZERO, "before the first ack");
    log.on_ack(0, 0, 0, first.sent_ns);
    let aged = log.unacked_for();
    assert!(aged >= Duration::from_millis(30), "{aged:?}");
    // Receipt of the first batch only: the second's age counts now.
    log.on_ack(1, 0, 0, first.sent_ns);
    assert!(log.unacked_for() < aged, "{:?}", log.unacked_for());
    // Replay progress alone does not count as receipt.
    log.on_ack(1, 1, 1, first.sent_ns);
    assert!(log.unacked_for() > Duration::ZERO);
    log.on_ack(2, 1, 1, second.sent_ns);
    assert_eq!(log.unacked_for(), Duration::ZERO);
}

#[test]
fn an_ack_for_unsent_records_releases_nothing() {
    let (log, out) = log();
    log.append(1, Body::End).unwrap();
    log.emit(1, console(b'x'));
    log.append_output_digest(1).unwrap();
    log.on_ack(2, 0, 0, now_ns()); // records 0 and 1 are pending, never sent
    assert!(out.lock().unwrap().is_empty());
    assert_eq!(log.held(), 1);
}

#[test]
fn outputs_keep_their_order_behind_a_held_one() {
    let (log, out) = log();
    log.emit(1, console(b'1'));
    log.append_output_digest(1).unwrap(); // record 0
    ship_and_ack(&log);
    log.emit(2, console(b'2'));
    log.emit(2, console(b'3'));
    assert_eq!(out.lock().unwrap().len(), 1);
    log.append_output_digest(2).unwrap(); // record 1
    ship_and_ack(&log);
    let got: Vec<_> = out.lock().unwrap().clone();
    assert_eq!(got, vec![console(b'1'), console(b'2'), console(b'3')]);
}

#[test]
fn a_held_gate_holds_acked_outputs_and_open_releases_everything() {
    let (log, out) = log();
    log.emit(1, console(b'z'));
    log.append_output_digest(1).unwrap();
    log.set_gate(Gate::Held);
    ship_and_ack(&log);
    assert!(out.lock().unwrap().is_empty(), "released while held");
    log.set_gate(Gate::Open);
    assert_eq!(*out.lock().unwrap(), vec![console(b'z')]);
    let before = log.next_seq();
    log.append(2, Body::End).unwrap();
    assert_eq!(log.next_seq(), before, "running alone records nothing");
    log.emit(2, console(b'y'));
    assert_eq!(out.lock().unwrap().len(), 2, "open: outputs pass at once");
}

#[test]
fn nothing_leaves_without_the_host_grant() {
    let grant = HostGrant::none();
    let (log, out) = log_with(Gate::Open, Arc::clone(&grant));
    log.stop_waiting(); // this test emits from the test thread
    log.emit(1, console(b'g'));
    assert!(out.lock().unwrap().is_empty(), "released without a grant");
    grant.renew(Duration::from_secs(5));
    log.kick();
    assert_eq!(*out.lock().unwrap(), vec![console(b'g')]);
    grant.withdraw();
    log.emit(2, console(b'h'));
    assert_eq!(
        out.lock().unwrap().len(),
        1,
        "released after the grant was withdrawn"
    );
}

#[test]
fn the_vcpu_stalls_while_output_is_held_until_the_gate_opens() {
    let (log, out) = log_with(Gate::Held, HostGrant::always());
    let done = Arc::new(AtomicUsize::new(0));
    let (l2, d2) = (Arc::clone(&log), Arc::clone(&done));
    let t = std::thread::spawn(move || {
        l2.emit(1, console(b's'));
        d2.store(1, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(done.load(Ordering::SeqCst), 0, "emit did not stall");
    log.set_gate(Gate::Open);
    t.join().unwrap();
    assert_eq!(*out.lock().unwrap(), vec![console(b's')]);
    assert_eq!(log.stats().held_stalls, 1);
    // A stop request ends a stall too, and releases nothing.
    log.set_gate(Gate::Held);
    let l3 = Arc::clone(&log);
    let t = std::thread::spawn(move || l3.emit(2, console(b't')));
    std::thread::sleep(Duration::from_millis(100));
    log.stop_waiting();
    t.join().unwrap();
    assert_eq!(out.lock().unwrap().len(), 1);
}

#[test]
fn a_full_window_stalls_the_appender_until_acked() {
    let (log, _) = log();
    // One record each (a body larger than a record would stall between its
    // pieces, on this very thread), together just over the window.
    let big = vec![0u8; (1 << 20) - 64];
    for i in 0..=(MAX_UNACKED_BYTES >> 20) {
        log.append(
            i as u64,
            Body::Events(vec![InputEvent::ConsoleIn(big.clone())]),
        )
        .unwrap();
    }
    let done = Arc::new(AtomicUsize::new(0));
    let (l2, d2) = (Arc::clone(&log), Arc::clone(&done));
    let t = std::thread::spawn(move || {
        l2.append(999, Body::End).unwrap();
        d2.store(1, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(done.load(Ordering::SeqCst), 0, "append did not stall");
    ship_and_ack(&log);
    t.join().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(log.stats().stalls, 1);
}

fn read_done(id: u64, len: usize) -> InputEvent {
    InputEvent::BlockDone {
        dev: 0,
        id,
        status: crate::io::BlockStatus::Ok,
        data: vec![id as u8; len],
    }
}

/// A live door with a fixed queue that must never be waited on.
struct Burst(std::collections::VecDeque<InputEvent>);
impl crate::io::Inputs for Burst {
    fn events_at(&mut self, _n: ExitIndex, out: &mut Vec<InputEvent>) {
        out.extend(self.0.drain(..));
    }
    fn events_at_halt(&mut self, _n: ExitIndex, _out: &mut Vec<InputEvent>) {
        panic!("the door was waited on while events were waiting in the recorder");
    }
    fn time_read(&mut self, _n: ExitIndex, _s: crate::io::TimeSource) -> u64 {
        0
    }
}

#[test]
fn a_backlog_leaves_in_batches_that_each_fit_a_message_and_read_back_whole() {
    let (log, _) = log();
    // 40 completions of 1 MiB at 40 exits, none taken by the sender yet.
    for n in 0..40 {
        log.append(n, Body::Events(vec![read_done(n, 1 << 20)]))
            .unwrap();
    }
    let mut reader = crate::lockstep::log::Reader::new(0);
    let mut bodies = Vec::new();
    while let Some(b) = log.take_batch(Duration::ZERO) {
        assert!(b.bytes.len() <= MAX_BATCH_BYTES, "{}", b.bytes.len());
        let m = crate::lockstep::channel::Message::Batch {
            first_seq: b.first_seq,
            count: b.count,
            bytes: b.bytes.clone(),
            sent_ns: b.sent_ns,
        };
        crate::lockstep::channel::encode_message(&m).expect("every batch is one message");
        bodies.extend(reader.read_batch(&b.bytes, b.first_seq, b.count).unwrap());
    }
    assert_eq!(bodies.len(), 40);
    for (n, w) in bodies.iter().enumerate() {
        assert_eq!(w.rec.body, Body::Events(vec![read_done(n as u64, 1 << 20)]));
    }
    assert_eq!(reader.next_seq(), log.next_seq());
    assert!(log.stats().batches >= 10);
}

#[test]
fn a_body_the_log_cannot_carry_is_refused_and_nothing_of_it_is_appended() {
    let (log, _) = log();
    let huge = Body::Events(vec![read_done(0, crate::lockstep::log::MAX_BODY + 1)]);
    let err = log.append(7, huge).unwrap_err();
    assert!(err.to_string().contains("at exit 7"), "{err}");
    assert_eq!(log.next_seq(), 0);
    assert!(log.take_batch(Duration::ZERO).is_none());
}

#[test]
fn a_full_window_stalls_between_the_pieces_of_a_large_body() {
    let (log, _) = log();
    // Fill the window to within 2 MiB, in one-record bodies.
    let mut n = 0;
    while log.unacked_bytes() + (3 << 20) < MAX_UNACKED_BYTES {
        log.append(n, Body::Events(vec![read_done(n, (1 << 20) - 64)]))
            .unwrap();
        n += 1;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let (l2, d2) = (Arc::clone(&log), Arc::clone(&done));
    let t = std::thread::spawn(move || {
        l2.append(n, Body::Events(vec![read_done(n, 16 << 20)]))
            .unwrap();
        d2.store(1, Ordering::SeqCst);
    });
    // Some pieces go in, then it stalls (counted when it starts waiting).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.stats().stalls == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(log.stats().stalls, 1, "append did not stall");
    assert_eq!(done.load(Ordering::SeqCst), 0, "append did not stall");
    let before = log.next_seq();
    assert!(before > n + 1, "no piece went in before the window filled");
    assert!(log.unacked_bytes() >= MAX_UNACKED_BYTES);
    assert!(
        log.unacked_bytes() < MAX_UNACKED_BYTES + (2 << 20),
        "the window overshoots by at most one piece"
    );
    // Acks let the rest in, piece by piece.
    while done.load(Ordering::SeqCst) == 0 {
        ship_and_ack(&log);
        std::thread::sleep(Duration::from_millis(5));
    }
    t.join().unwrap();
    assert_eq!(log.next_seq(), n + 17, "16 MiB and framing: 17 pieces");
}

#[test]
fn a_burst_is_handed_over_one_body_per_input_call_and_a_halt_does_not_wait() {
    use crate::io::Inputs;
    let (log, _) = log();
    let door = Burst((0..48).map(|i| read_done(i, 1 << 20)).collect());
    let mut pin = PrimaryInputs::new(door, Arc::clone(&log));
    let mut got = Vec::new();
    let mut calls = 0;
    pin.events_at(1, &mut got);
    calls += 1;
    assert!(got.len() < 48 && pin.waiting() == 48 - got.len());
    while pin.waiting() > 0 {
        let before = got.len();
        pin.events_at_halt(1 + calls, &mut got);
        assert!(got.len() > before);
        calls += 1;
    }
    assert_eq!(
        got,
        (0..48).map(|i| read_done(i, 1 << 20)).collect::<Vec<_>>()
    );
    assert_eq!(calls, 2);
    assert!(pin.fault().is_none());
}

#[test]
fn an_input_the_log_cannot_carry_stops_the_vm_and_is_not_handed_over() {
    use crate::io::Inputs;
    let (log, _) = log();
    let vm = crate::vm::VmHandle::standalone();
    let huge = read_done(0, crate::lockstep::log::MAX_BODY + 1);
    let door = Burst([huge, InputEvent::TimerTick].into_iter().collect());
    let mut pin = PrimaryInputs::new(door, Arc::clone(&log)).with_vm(vm.clone());
    let mut got = Vec::new();
    pin.events_at(3, &mut got);
    assert!(got.is_empty(), "handed over an input that was not recorded");
    assert!(vm.is_stopping(), "the VM was not stopped");
    let err = pin.fault().expect("a fault").to_string();
    assert!(err.contains("at exit 3"), "{err}");
    pin.events_at(4, &mut got);
    assert!(got.is_empty(), "handed over after a fault");
    assert_eq!(log.next_seq(), 0, "nothing recorded");
}
