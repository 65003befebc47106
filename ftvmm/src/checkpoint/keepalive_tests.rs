//! Keep-alives (`keepalive.rs`) on their own: they go out only while the
//! side's loop moves, and only when nothing else went out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keepalive::{self, Progress, SharedSender, KEEPALIVE};
use super::test_support::{channel_pair, slow_channel_pair};
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

/// A message of many frames crossing a slow link moves the receiver's
/// frame counter before it is whole (the Secondary's member counts such
/// frames as heard): one 1 MiB epoch piece through a proxy that passes
/// 256 KiB/s.
#[test]
fn the_frame_counter_moves_while_a_large_message_arrives() {
    // Primary -> Secondary at 16 KiB per 62 ms; the other way as it comes.
    let (p, s) = slow_channel_pair(16 << 10);
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let frames = s.frame_counter();
    let (mut tx, _) = p.split();
    let (_, mut rx) = s.split();
    let big = Message::EpochPiece {
        bytes: vec![7u8; 1 << 20],
    };
    let sender = std::thread::spawn(move || tx.send(&big).map(|()| tx));
    let mut counts = Vec::new();
    let got = loop {
        counts.push(frames.load(Ordering::Relaxed));
        match rx.recv() {
            Ok(m) => break m,
            Err(ChannelError::Timeout) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(got, Message::EpochPiece { ref bytes } if bytes.len() == 1 << 20));
    counts.dedup();
    let whole = frames.load(Ordering::Relaxed);
    assert!(
        whole >= 17,
        "a 1 MiB message is at least 17 frames: {whole}"
    );
    assert!(
        counts.iter().filter(|&&c| c > 0 && c < whole).count() >= 3,
        "the counter did not move while the message arrived: {counts:?} of {whole}"
    );
    sender.join().unwrap().unwrap();
}

/// The keep-alive thread runs real-time (`SCHED_RR` at the link priority)
/// where the process may, and a thread it starts does not inherit that:
/// a Primary's vCPU threads must never run real-time.
#[test]
fn the_keepalive_thread_runs_real_time_and_its_threads_do_not() {
    use config_schema::sched;
    use std::sync::Mutex;
    let allowed = std::thread::spawn(|| sched::realtime_thread(1).is_ok())
        .join()
        .unwrap();
    let seen: Arc<Mutex<Option<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&seen);
    let t = keepalive::spawn(
        "test-alive".into(),
        (Arc::clone(&stop), Duration::from_secs(60)),
        Arc::new(Progress::default()),
        move || {
            let child = std::thread::spawn(sched::describe_thread).join().unwrap();
            *s2.lock().unwrap() = Some((sched::describe_thread(), child));
            Err("seen".into())
        },
    )
    .unwrap();
    t.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let (own, child) = seen.lock().unwrap().take().expect("the tick ran");
    let want = if allowed {
        format!("SCHED_RR {}", sched::FTVMM_LINK_PRIORITY)
    } else {
        "SCHED_OTHER".to_string()
    };
    assert_eq!(own, want);
    assert_eq!(child, "SCHED_OTHER");
}
