//! The threads that move the log over the [`channel`](super::channel).
//!
//! Primary: a sender thread ships every pending record as one batch (an empty
//! batch every [`KEEPALIVE`] when idle, so the Secondary always hears from a
//! live Primary), and an ack thread feeds acknowledgements to the Output Rule.
//! Secondary: a receiver thread checks each batch (it must continue the log
//! exactly; it is decoded all-or-nothing), queues it, and acknowledges receipt
//! at once; an ack thread reports replay progress for the lag measurement.
//! Any refusal or channel error ends the link: the Primary holds its output
//! (`PrimaryLog::lose_secondary`), the Secondary's queue is closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::channel::{ChannelError, ChannelReceiver, ChannelSender, Message};
use super::log::decode_batch;
use super::primary::PrimaryLog;
use super::secondary::ReplayQueue;

/// An idle Primary sends an empty batch this often.
pub const KEEPALIVE: Duration = Duration::from_millis(50);
/// The Secondary reports replay progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);

/// A send that TCP cannot take within this long kills the link (a peer behind
/// a partition must not block the sender, or `Link::stop`, forever).
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// Called on every message from the peer (a sign of its life).
pub type OnTraffic = Arc<dyn Fn() + Send + Sync>;

/// Running link threads; [`Link::stop`] ends them.
pub struct Link {
    stop: Arc<AtomicBool>,
    tx: Arc<Mutex<ChannelSender>>,
    threads: Vec<JoinHandle<()>>,
    /// Last time anything arrived from the peer.
    last_heard: Arc<Mutex<Instant>>,
}

impl Link {
    /// Time since the peer was last heard on the channel.
    pub fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// A probe of [`Link::silent_for`] another thread can keep.
    pub fn silence_probe(&self) -> impl Fn() -> Duration + Send + 'static {
        let heard = Arc::clone(&self.last_heard);
        move || heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// Sends `Bye` and ends the threads.
    pub fn stop(self, reason: &str) {
        self.finish(Message::Bye {
            reason: reason.to_string(),
        });
    }

    /// Primary: sends `Resign` (the Secondary takes over) and ends the
    /// threads. False if it could not be sent.
    pub fn hand_over(self, reason: &str) -> bool {
        self.finish(Message::Resign {
            reason: reason.to_string(),
        })
    }

    fn finish(mut self, last: Message) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let sent = {
            let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let sent = tx.send_last(&last).is_ok();
            tx.shutdown();
            sent
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        sent
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawn link thread")
}

fn describe(e: &ChannelError) -> String {
    if e.is_refusal() {
        format!("refused: {e}")
    } else {
        e.to_string()
    }
}

/// What the threads of either side share.
struct Shared {
    stop: Arc<AtomicBool>,
    tx: Arc<Mutex<ChannelSender>>,
    last_heard: Arc<Mutex<Instant>>,
    peer: String,
}

impl Shared {
    fn new(tx: ChannelSender, rx: &ChannelReceiver) -> Self {
        if let Err(e) = tx.set_write_timeout(Some(SEND_TIMEOUT)) {
            tracing::warn!("lockstep: cannot set the channel's send timeout: {e}");
        }
        Shared {
            stop: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(Mutex::new(tx)),
            last_heard: Arc::new(Mutex::new(Instant::now())),
            peer: rx.peer().to_string(),
        }
    }
}

/// Starts the Primary's sender and ack threads.
pub fn start_primary(
    log: Arc<PrimaryLog>,
    tx: ChannelSender,
    mut rx: ChannelReceiver,
    on_traffic: OnTraffic,
) -> Link {
    let Shared {
        stop,
        tx,
        last_heard,
        peer,
    } = Shared::new(tx, &rx);
    let sender = {
        let (log, tx, stop) = (Arc::clone(&log), Arc::clone(&tx), Arc::clone(&stop));
        spawn("lockstep-send", move || {
            let mut last_sent = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let msg = match log.take_batch(KEEPALIVE / 2) {
                    Some(b) => Message::Batch {
                        first_seq: b.first_seq,
                        count: b.count,
                        bytes: b.bytes,
                    },
                    None if last_sent.elapsed() >= KEEPALIVE => Message::Batch {
                        first_seq: log.unsent_from(),
                        count: 0,
                        bytes: Vec::new(),
                    },
                    None => continue,
                };
                let res = tx.lock().unwrap_or_else(|p| p.into_inner()).send(&msg);
                if let Err(e) = res {
                    if !stop.load(Ordering::SeqCst) {
                        log.lose_secondary(&format!("send failed: {}", describe(&e)));
                    }
                    return;
                }
                last_sent = Instant::now();
            }
        })
    };
    let acks = {
        let (log, stop, heard) = (Arc::clone(&log), Arc::clone(&stop), Arc::clone(&last_heard));
        spawn("lockstep-ack", move || loop {
            let res = rx.recv();
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match res {
                Ok(m) => {
                    *heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    on_traffic();
                    match m {
                        Message::Ack {
                            received,
                            replayed,
                            replayed_exit,
                        } => log.on_ack(received, replayed, replayed_exit),
                        Message::Bye { reason } => {
                            log.lose_secondary(&format!("secondary {peer} said bye: {reason}"));
                            return;
                        }
                        other => {
                            tracing::warn!(
                                "channel: refused message from {peer}: unexpected {other:?} on the primary"
                            );
                            log.lose_secondary("unexpected message from the secondary");
                            return;
                        }
                    }
                }
                Err(ChannelError::Timeout) => {}
                Err(e) => {
                    log.lose_secondary(&format!("channel to {peer}: {}", describe(&e)));
                    return;
                }
            }
        })
    };
    Link {
        stop,
        tx,
        threads: vec![sender, acks],
        last_heard,
    }
}

/// Starts the Secondary's receiver and progress threads.
pub fn start_secondary(
    q: Arc<ReplayQueue>,
    tx: ChannelSender,
    mut rx: ChannelReceiver,
    on_traffic: OnTraffic,
) -> Link {
    let Shared {
        stop,
        tx,
        last_heard,
        peer,
    } = Shared::new(tx, &rx);
    let ack = |q: &ReplayQueue| {
        let (received, replayed, replayed_exit) = q.progress();
        Message::Ack {
            received,
            replayed,
            replayed_exit,
        }
    };
    let receiver = {
        let (q, tx, stop, heard) = (
            Arc::clone(&q),
            Arc::clone(&tx),
            Arc::clone(&stop),
            Arc::clone(&last_heard),
        );
        spawn("lockstep-recv", move || loop {
            let res = rx.recv();
            if stop.load(Ordering::SeqCst) {
                q.close("link stopped");
                return;
            }
            let msg = match res {
                Ok(m) => m,
                Err(ChannelError::Timeout) => continue,
                Err(e) => {
                    q.close(&format!("channel from {peer}: {}", describe(&e)));
                    return;
                }
            };
            *heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            on_traffic();
            match msg {
                Message::Batch {
                    first_seq,
                    count,
                    bytes,
                } => {
                    let expected = q.received();
                    let recs = if first_seq != expected {
                        Err(format!(
                            "batch starts at record {first_seq}, expected {expected}"
                        ))
                    } else {
                        match decode_batch(&bytes, first_seq) {
                            Ok(r) if r.len() as u64 == u64::from(count) => Ok(r),
                            Ok(r) => Err(format!("batch says {count} records, holds {}", r.len())),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    match recs {
                        Ok(recs) => {
                            q.push_batch(recs);
                            let m = ack(&q);
                            if tx
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .send(&m)
                                .is_err()
                            {
                                q.close("cannot send acks");
                                return;
                            }
                        }
                        Err(why) => {
                            // Nothing of this batch is applied; the log can
                            // not continue past it, so the link ends here.
                            tracing::warn!("channel: refused message from {peer}: {why}");
                            println!("ftvmm: lockstep: refused batch from {peer}: {why}");
                            q.close(&format!("refused batch: {why}"));
                            return;
                        }
                    }
                }
                Message::Bye { reason } => {
                    q.close(&format!("primary {peer} said bye: {reason}"));
                    return;
                }
                Message::Resign { reason } => {
                    // Everything it sent is queued; replay runs to its end
                    // and go-live follows (run_secondary).
                    println!("ftvmm: lockstep: primary {peer} hands over: {reason}");
                    q.close(&format!("primary {peer} handed over: {reason}"));
                    return;
                }
                other => {
                    tracing::warn!(
                        "channel: refused message from {peer}: unexpected {other:?} on the secondary"
                    );
                    q.close("unexpected message from the primary");
                    return;
                }
            }
        })
    };
    let progress = {
        let (q, tx, stop) = (Arc::clone(&q), Arc::clone(&tx), Arc::clone(&stop));
        spawn("lockstep-progress", move || {
            let mut last = q.progress();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(PROGRESS_EVERY);
                let now = q.progress();
                if now != last {
                    last = now;
                    if tx
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(&ack(&q))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    };
    Link {
        stop,
        tx,
        threads: vec![receiver, progress],
        last_heard,
    }
}
