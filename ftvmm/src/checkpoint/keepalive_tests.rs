//! Keep-alives (`keepalive.rs`) on their own: they go out only while the
//! side's loop moves, and only when nothing else went out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keepalive::{self, Progress, SharedSender, KEEPALIVE};
use super::remote_tests::channel_pair;
use crate::lockstep::channel::{ChannelError, Message};

/// A loop that stops moving stops its keep-alives once the limit passed;
/// they resume when it moves again.
#[test]
fn a_stalled_loop_stops_its_keepalives() {
    let progress = Arc::new(Progress::default());
    let (stop, ticks) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let limit = KEEPALIVE * 5;
    let t = {
        let ticks = Arc::clone(&ticks);
        let tick = move || {
            ticks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        keepalive::spawn(
            "test-alive".into(),
            (Arc::clone(&stop), limit),
            Arc::clone(&progress),
            tick,
        )
        .unwrap()
    };
    let moving = Instant::now();
    while moving.elapsed() < KEEPALIVE * 10 {
        progress.stamp();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        ticks.load(Ordering::SeqCst) >= 2,
        "no keep-alive while moving"
    );
    // Stalled: past the limit (and one tick), no more.
    std::thread::sleep(limit + KEEPALIVE * 3);
    let at = ticks.load(Ordering::SeqCst);
    std::thread::sleep(KEEPALIVE * 10);
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        at,
        "keep-alives from a stalled loop"
    );
    progress.stamp();
    let again = Instant::now();
    while ticks.load(Ordering::SeqCst) == at {
        assert!(again.elapsed() < Duration::from_secs(10), "never resumed");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
}

/// `keep_alive` sends `Alive` only when the side sent nothing for the
/// period; the peer gets it as a message of its own.
#[test]
fn a_keepalive_goes_out_only_when_nothing_else_did() {
    let (p, s) = channel_pair();
    let (tx, _) = p.split();
    let (_, mut rx) = s.split();
    let tx = SharedSender::new(tx);
    tx.send(&Message::EpochAck { epoch: 3 }).unwrap();
    tx.keep_alive(Duration::from_secs(3600)).unwrap();
    tx.keep_alive(Duration::ZERO).unwrap();
    assert_eq!(rx.recv().unwrap(), Message::EpochAck { epoch: 3 });
    assert_eq!(rx.recv().unwrap(), Message::Alive);
    match rx.recv() {
        Err(ChannelError::Timeout) => {}
        other => panic!("a keep-alive although one was sent just now: {other:?}"),
    }
}
