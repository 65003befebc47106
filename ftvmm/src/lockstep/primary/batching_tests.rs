//! Tests of when the sender cuts batches (`batching.rs`) and that the Output
//! Rule holds whatever the cut.

use super::*;
use crate::io::InputEvent;

struct Sink(Arc<Mutex<Vec<OutputEvent>>>);
impl Outputs for Sink {
    fn emit(&mut self, _n: ExitIndex, e: OutputEvent) {
        self.0.lock().unwrap().push(e);
    }
}

type Out = Arc<Mutex<Vec<OutputEvent>>>;

fn log(batching: Batching) -> (Arc<PrimaryLog>, Out) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let log = PrimaryLog::new(Box::new(Sink(Arc::clone(&out))), Duration::from_secs(1));
    log.set_batching(batching);
    (log, out)
}

fn tick(log: &PrimaryLog, n: ExitIndex) {
    log.append(n, Body::Events(vec![InputEvent::TimerTick]))
        .unwrap();
}

fn console(b: u8) -> OutputEvent {
    OutputEvent::Console(vec![b])
}

/// The moment the pending records become due, relative to the oldest one.
fn due_after(log: &PrimaryLog) -> Option<Duration> {
    let st = log.lock();
    let since = st.pending_since.expect("something is pending");
    st.send_due().map(|at| at - since)
}

#[test]
fn a_burst_nobody_waits_on_leaves_as_one_batch_after_the_delay() {
    let (log, _) = log(Batching::Coalesced);
    let t0 = Instant::now();
    for n in 0..50 {
        tick(&log, n);
    }
    assert_eq!(due_after(&log), Some(COALESCE_DELAY));
    let b = log
        .take_due_batch(Duration::from_secs(5))
        .expect("due after the delay");
    assert!(
        t0.elapsed() >= COALESCE_DELAY,
        "sent before the coalescing delay with no output waiting"
    );
    assert_eq!(
        (b.first_seq, b.count),
        (0, 50),
        "the whole burst in one batch"
    );
    let s = log.stats();
    assert_eq!((s.records, s.batches), (50, 1));
    assert!(log.take_due_batch(Duration::from_millis(5)).is_none());
}

#[test]
fn eager_batching_sends_every_record_at_once() {
    let (log, _) = log(Batching::Eager);
    tick(&log, 0);
    assert_eq!(due_after(&log), Some(Duration::ZERO));
    let b = log.take_due_batch(Duration::ZERO).expect("due at once");
    assert_eq!((b.first_seq, b.count), (0, 1));
}

#[test]
fn a_held_output_makes_its_covering_record_due_at_once() {
    let (log, _) = log(Batching::Coalesced);
    tick(&log, 1);
    log.emit(2, console(b'a'));
    assert_eq!(
        due_after(&log),
        Some(COALESCE_DELAY),
        "the output's covering record is not appended yet"
    );
    log.append_output_digest(3).unwrap();
    assert_eq!(due_after(&log), Some(Duration::ZERO));
    let b = log.take_due_batch(Duration::ZERO).expect("due at once");
    assert_eq!((b.first_seq, b.count), (0, 2), "the tick rides along");
    // A record after the output is nobody's wait.
    tick(&log, 4);
    assert_eq!(due_after(&log), Some(COALESCE_DELAY));
}

#[test]
fn a_large_backlog_is_due_at_once() {
    let (log, _) = log(Batching::Coalesced);
    let mut n = 0;
    while log.lock().pending.len() < COALESCE_BYTES {
        log.append(
            n,
            Body::Events(vec![InputEvent::Frame {
                dev: 0,
                data: vec![0u8; 4096],
            }]),
        )
        .unwrap();
        n += 1;
    }
    assert_eq!(due_after(&log), Some(Duration::ZERO));
}

#[test]
fn under_coalescing_a_held_output_leaves_only_once_its_covering_record_is_acked() {
    let (log, out) = log(Batching::Coalesced);
    tick(&log, 1); // record 0
    log.emit(2, console(b'a'));
    log.append(
        2,
        Body::Check {
            rip: 0,
            gpr_hash: 0,
        },
    )
    .unwrap(); // record 1: after the output, not covering it
               // Not due yet: wait out the delay; the records nobody waits on leave.
    let b = log
        .take_due_batch(Duration::from_secs(5))
        .expect("due after the delay");
    assert_eq!((b.first_seq, b.count), (0, 2));
    log.on_ack(2, 2, 0, b.sent_ns);
    assert!(
        out.lock().unwrap().is_empty(),
        "released before its covering digest was even appended"
    );
    log.append_output_digest(3).unwrap(); // record 2 covers 'a'
    tick(&log, 4); // record 3
    let b = log.take_due_batch(Duration::ZERO).expect("wanted: at once");
    assert_eq!((b.first_seq, b.count), (2, 2));
    // An ack of everything but the covering record releases nothing.
    log.on_ack(2, 2, 0, b.sent_ns);
    assert!(out.lock().unwrap().is_empty());
    log.on_ack(3, 2, 0, b.sent_ns);
    assert_eq!(*out.lock().unwrap(), vec![console(b'a')]);
}

/// The sender's wait for the covering record.
const WAIT: Duration = Duration::from_secs(5);

#[test]
fn a_waiting_sender_ships_the_covering_record_as_soon_as_it_is_appended() {
    let (log, out) = log(Batching::Coalesced);
    tick(&log, 1);
    log.emit(2, console(b'a'));
    // The sender's second wait must be under way when the covering record
    // is appended: the main thread waits for its first batch (a sleep here
    // was not enough on a loaded machine: a starved sender then found both
    // records in its first batch and the second wait had nothing).
    let (first_taken, first) = std::sync::mpsc::channel();
    let sender = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            // First the tick alone after the delay, then the covering record.
            let a = log.take_due_batch(Duration::from_secs(5)).unwrap();
            first_taken.send(()).unwrap();
            let b = log.take_due_batch(WAIT).unwrap();
            (a, b)
        })
    };
    first.recv().unwrap();
    let t0 = Instant::now();
    log.append_output_digest(3).unwrap();
    let (a, b) = sender.join().unwrap();
    assert_eq!((a.count, b.first_seq, b.count), (1, 1, 1));
    // Woken by the append, not by the end of its wait (a wake-up, however
    // late on a loaded machine, is far below WAIT).
    assert!(
        t0.elapsed() < WAIT - Duration::from_secs(1),
        "the covering record waited for the sender's timeout"
    );
    log.on_ack(2, 0, 0, b.sent_ns);
    assert_eq!(*out.lock().unwrap(), vec![console(b'a')]);
}
