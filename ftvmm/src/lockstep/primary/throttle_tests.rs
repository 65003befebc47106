//! Tests of the lag throttle: the pure decision, then its driver on threads.

use std::sync::mpsc;

use super::throttle::{Step, Throttle};
use super::*;
use crate::io::InputEvent;

struct Discard;
impl Outputs for Discard {
    fn emit(&mut self, _n: ExitIndex, _e: OutputEvent) {}
}

/// A paired log with a `limit_ms` lag limit.
fn log_with_limit(limit_ms: u64) -> Arc<PrimaryLog> {
    PrimaryLog::with_safety(
        Box::new(Discard),
        Duration::from_millis(limit_ms),
        Gate::ByAcks,
        HostGrant::always(),
        Duration::from_secs(10),
    )
}

/// Two batches of one record, sent `apart` apart, neither acked nor
/// replayed: a backlog spanning `apart`. Returns the first.
fn lagging(log: &PrimaryLog, apart: Duration) -> Batch {
    let send = || {
        log.append(1, Body::Events(vec![InputEvent::TimerTick]))
            .unwrap();
        log.take_batch(Duration::ZERO).expect("a record is pending")
    };
    let b = send();
    std::thread::sleep(apart);
    send();
    b
}

/// Runs `log.throttle()` on a thread and returns once it is slowed (its
/// counter moved: a late-scheduled thread cannot pass a test by not having
/// started yet); the receiver gets one message when it returns.
fn throttle_on_thread(log: &Arc<PrimaryLog>) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let before = log.stats().throttle.throttled;
    let l = Arc::clone(log);
    std::thread::spawn(move || {
        l.throttle();
        let _ = tx.send(());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().throttle.throttled == before {
        assert!(Instant::now() < deadline, "the vCPU was never slowed");
        std::thread::sleep(Duration::from_millis(1));
    }
    rx
}

const STILL_BLOCKED: Duration = Duration::from_millis(100);

#[test]
fn the_decision_never_slows_at_or_under_the_limit_and_waits_for_an_ack_over_it() {
    for mode in [ThrottleMode::UntilAck, ThrottleMode::FixedSleep] {
        let t = Throttle { limit_ms: 20, mode };
        for gate in [Gate::ByAcks, Gate::Held, Gate::Open] {
            for lag in 0..=20 {
                assert_eq!(
                    t.step(gate, false, lag),
                    Step::Run,
                    "{mode:?} {gate:?} {lag}"
                );
            }
        }
        // Over the limit only a paired, running log is slowed.
        assert_eq!(t.step(Gate::Held, false, 21), Step::Run);
        assert_eq!(t.step(Gate::Open, false, 1000), Step::Run);
        assert_eq!(t.step(Gate::ByAcks, true, 1000), Step::Run);
    }
    let until = Throttle {
        limit_ms: 20,
        mode: ThrottleMode::UntilAck,
    };
    assert_eq!(until.step(Gate::ByAcks, false, 21), Step::WaitForAck);
    let fixed = Throttle {
        limit_ms: 20,
        mode: ThrottleMode::FixedSleep,
    };
    assert_eq!(
        fixed.step(Gate::ByAcks, false, 21),
        Step::Sleep(Duration::from_millis(1))
    );
}

#[test]
fn under_the_limit_the_vcpu_never_waits() {
    let log = log_with_limit(10_000);
    let _b = lagging(&log, Duration::from_millis(5));
    let t0 = Instant::now();
    for _ in 0..1000 {
        log.throttle();
    }
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert_eq!(log.stats().throttle.throttled, 0);
    assert_eq!(log.stats().throttle.throttled_us, 0);
}

#[test]
fn over_the_limit_the_vcpu_waits_exactly_until_the_ack_that_brings_the_backlog_under_it() {
    let log = log_with_limit(1);
    let b = lagging(&log, Duration::from_millis(10));
    let done = throttle_on_thread(&log);
    assert!(
        done.recv_timeout(STILL_BLOCKED).is_err(),
        "returned while the lag was over the limit"
    );
    // Received but not replayed: the backlog is unchanged.
    log.on_ack(b.first_seq + 2, 0, 0, b.sent_ns);
    assert!(
        done.recv_timeout(STILL_BLOCKED).is_err(),
        "an ack of receipt alone does not shorten the replay backlog"
    );
    // The first batch replayed: what is left spans nothing.
    log.on_ack(b.first_seq + 2, b.first_seq + 1, 1, b.sent_ns);
    done.recv_timeout(THROTTLE_RECHECK / 2)
        .expect("the ack that replayed the backlog did not wake the vCPU");
    let s = log.stats().throttle;
    assert_eq!(s.throttled, 1);
    assert_eq!(
        s.rechecks, 0,
        "woken by the safety re-check: a wake-up was lost"
    );
    assert!(s.throttled_us >= 2 * STILL_BLOCKED.as_micros() as u64);
}

#[test]
fn an_ack_that_arrived_before_the_wait_is_not_waited_for_again() {
    // The condition is checked under the lock before waiting: an ack applied
    // between the vCPU's input call and its throttle check is seen, not lost.
    let log = log_with_limit(1);
    let b = lagging(&log, Duration::from_millis(10));
    log.on_ack(b.first_seq + 2, b.first_seq + 1, 1, b.sent_ns);
    let t0 = Instant::now();
    log.throttle();
    assert!(t0.elapsed() < STILL_BLOCKED);
    assert_eq!(log.stats().throttle.throttled, 0);
}

#[test]
fn holding_the_gate_or_stopping_ends_the_wait() {
    for end in ["held", "stop"] {
        let log = log_with_limit(1);
        let _b = lagging(&log, Duration::from_millis(10));
        let done = throttle_on_thread(&log);
        assert!(done.recv_timeout(STILL_BLOCKED).is_err(), "{end}");
        match end {
            "held" => log.set_gate(Gate::Held),
            _ => log.stop_waiting(),
        }
        done.recv_timeout(THROTTLE_RECHECK / 2)
            .unwrap_or_else(|_| panic!("{end}: the throttled vCPU was not woken"));
        assert_eq!(log.stats().throttle.rechecks, 0, "{end}");
    }
}

#[test]
fn the_fixed_controller_sleeps_one_slice_per_call() {
    let log = log_with_limit(1);
    log.set_throttle_mode(ThrottleMode::FixedSleep);
    let _b = lagging(&log, Duration::from_millis(10));
    let t0 = Instant::now();
    for _ in 0..5 {
        log.throttle();
    }
    assert!(t0.elapsed() >= Duration::from_millis(5));
    assert_eq!(log.stats().throttle.throttled, 5);
}

#[test]
fn a_waiting_primary_does_not_make_its_own_backlog_grow() {
    // The backlog is the Primary time the Secondary has yet to replay: while
    // the vCPU waits nothing is added, so time alone never keeps it waiting
    // (the age of the oldest batch, which the fixed controller used, grows).
    let log = log_with_limit(30);
    let b = lagging(&log, Duration::from_millis(50));
    let done = throttle_on_thread(&log);
    assert!(done.recv_timeout(STILL_BLOCKED).is_err());
    log.on_ack(b.first_seq + 2, b.first_seq + 1, 1, b.sent_ns);
    done.recv_timeout(THROTTLE_RECHECK / 2)
        .expect("a backlog back under the limit still held the vCPU");
    // The oldest unreplayed batch is older than the limit by now; the vCPU
    // runs anyway.
    assert!(log.lag().ms > 30);
    let t0 = Instant::now();
    log.throttle();
    assert!(t0.elapsed() < STILL_BLOCKED);
}

#[test]
fn a_lag_limit_raised_live_lets_a_slowed_vcpu_run_at_once() {
    let log = log_with_limit(1);
    let _b = lagging(&log, Duration::from_millis(10));
    let done = throttle_on_thread(&log);
    assert!(done.recv_timeout(STILL_BLOCKED).is_err(), "not slowed");
    // `ftctl apply` raised the limit: no ack came, the vCPU runs on.
    log.set_lag_limit(Duration::from_secs(60));
    done.recv_timeout(THROTTLE_RECHECK / 2)
        .expect("the raised limit did not wake the vCPU");
    assert_eq!(log.stats().throttle.rechecks, 0);
    // And lowered again: slowed again.
    log.set_lag_limit(Duration::from_millis(1));
    let done = throttle_on_thread(&log);
    assert!(done.recv_timeout(STILL_BLOCKED).is_err());
    log.set_lag_limit(Duration::from_secs(60));
    done.recv_timeout(THROTTLE_RECHECK / 2).unwrap();
}
