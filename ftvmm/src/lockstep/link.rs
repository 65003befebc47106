//! The threads that move the log over the [`channel`](super::channel).
//!
//! Primary: a sender thread ships the pending records as one batch when they
//! are due (`primary/batching.rs`: at once when a held output waits on them,
//! else coalesced; an empty batch every [`KEEPALIVE`] when idle, so the
//! Secondary always hears from a live Primary), and an ack thread feeds
//! acknowledgements to the Output Rule.
//! Secondary: a receiver thread checks each batch (it must continue the log
//! exactly; it is decoded all-or-nothing) and queues it; a progress thread
//! reports replay progress for the lag (every [`PROGRESS_EVERY`]; every
//! [`PROGRESS_PROMPT_GAP`] while the Primary is quiet). Acks are cumulative,
//! and when they are sent depends on the [`Batching`] (issue 17):
//! - [`Batching::Coalesced`]: a batch the Primary may wait on (it completes
//!   an `Outputs` or `End` record, or is an empty keepalive) is acknowledged
//!   at once; the receipt of any other rides with the next ack, or with the
//!   progress report (within [`PROGRESS_PROMPT_GAP`] once the Primary is
//!   quiet — a Primary waiting in its lag throttle or for room sends nothing
//!   — else within [`PROGRESS_EVERY`]).
//! - [`Batching::Eager`] (before issue 17): every batch is acknowledged at
//!   once, and progress is also reported within [`PROGRESS_PROMPT_GAP`] when
//!   the replay caught up with what was received.
//!
//! Neither changes what an ack says: it claims exactly the records the
//! Secondary holds, and the Output Rule releases by it alone.
//!
//! Every ending — a refusal, a channel error, the peer's `Bye`, `Resign` or
//! `Diverged` — is reported to the member as an [`Event`]. On the Primary the
//! ack thread first holds the gate itself (holding is always safe, and the
//! member's own decision arrives a moment later), and it reads everything the
//! socket already holds before it acts on any of it: a loss found in that read
//! wins over the acks before it, so a Primary that wakes up after a stall to
//! "acks..., then bye" releases nothing (docs/design.md §3).
//!
//! Silence ([`Link::silent_for`], what the member compares with the failure
//! timeout) is counted from the peer's last message; before its first one,
//! from [`FIRST_CONTACT`] after the link started. After `Hello` each side
//! still builds its VM (memory, kernel, devices) before its link threads
//! run, and on a starved host that took longer than a 1 s failure timeout:
//! the Secondary suspected a Primary that was only booting, raced, lost, and
//! the pair re-formed unprotected for seconds (a `make test` failure of
//! `respawn.rs` under load, stop 25). Suspicion only ever makes a member ask
//! fencing, so the allowance costs detection time of a peer that dies in its
//! first seconds, never safety.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::channel::{ChannelError, ChannelReceiver, ChannelSender, Message};
use super::member::{Event, Gate};
use super::primary::{Batching, PrimaryLog};
use super::secondary::ReplayQueue;

/// An idle Primary sends an empty batch this often.
pub const KEEPALIVE: Duration = Duration::from_millis(50);
/// Before the peer's first message its silence counts only from this long
/// after the link started (module docs).
pub const FIRST_CONTACT: Duration = Duration::from_secs(5);
/// The Secondary reports replay progress at least this often while it changes;
/// more often ([`PROGRESS_PROMPT_GAP`]) when it caught up with what it
/// received, or while the Primary has been quiet that long: a Primary whose
/// lag throttle waits sends nothing and resumes on such a report (issue 17).
/// While batches flow, their receipt acks carry the progress anyway.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);
/// The shortest gap between two progress reports.
const PROGRESS_PROMPT_GAP: Duration = Duration::from_millis(2);
/// The shortest sleep of a progress thread waiting to report.
const PROGRESS_NAP: Duration = Duration::from_micros(200);

/// A send that TCP cannot take within this long kills the link (a peer behind
/// a partition must not block the sender, or `Link::stop`, forever).
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// Called on every message from the peer (a sign of its life).
pub type OnTraffic = Arc<dyn Fn() + Send + Sync>;
/// Where the link reports how it ended (the member's driver).
pub type Notify = Arc<dyn Fn(Event) + Send + Sync>;

/// Running link threads; [`Link::stop`] ends them.
pub struct Link {
    stop: Arc<AtomicBool>,
    tx: Arc<Mutex<ChannelSender>>,
    threads: Vec<JoinHandle<()>>,
    /// Last time anything arrived from the peer.
    last_heard: Arc<Mutex<Heard>>,
}

/// When the peer was last heard (the link's start until it is), and whether
/// it was heard at all.
#[derive(Debug, Clone, Copy)]
struct Heard {
    at: Instant,
    ever: bool,
}

impl Heard {
    fn new() -> Self {
        Heard {
            at: Instant::now(),
            ever: false,
        }
    }

    /// Time since the peer's last message, as the module docs count it.
    fn silence(&self) -> Duration {
        let since = self.at.elapsed();
        if self.ever {
            since
        } else {
            since.saturating_sub(FIRST_CONTACT)
        }
    }
}

/// Notes a message from the peer.
fn mark_heard(h: &Mutex<Heard>) {
    *h.lock().unwrap_or_else(|p| p.into_inner()) = Heard {
        at: Instant::now(),
        ever: true,
    };
}

impl Link {
    /// Time the peer has been silent on the channel: since its last message,
    /// or before its first one, since [`FIRST_CONTACT`] after the start.
    pub fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .silence()
    }

    /// A probe of [`Link::silent_for`] another thread can keep.
    pub fn silence_probe(&self) -> impl Fn() -> Duration + Send + 'static {
        let heard = Arc::clone(&self.last_heard);
        move || heard.lock().unwrap_or_else(|p| p.into_inner()).silence()
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

    /// Secondary: says it diverged (never promote it) and ends the threads.
    pub fn diverged(self, what: &str) -> bool {
        self.finish(Message::Diverged {
            what: what.to_string(),
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

/// Starts a link thread, real-time (`crate::priority`: a replay or a busy
/// guest on every core must not delay an ack or a keep-alive).
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            crate::priority::link_thread();
            f()
        })
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
    last_heard: Arc<Mutex<Heard>>,
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
            last_heard: Arc::new(Mutex::new(Heard::new())),
            peer: rx.peer().to_string(),
        }
    }
}

/// Starts the Primary's sender and ack threads.
pub fn start_primary(
    log: Arc<PrimaryLog>,
    tx: ChannelSender,
    rx: ChannelReceiver,
    on_traffic: OnTraffic,
    notify: Notify,
) -> Link {
    let Shared {
        stop,
        tx,
        last_heard,
        peer,
    } = Shared::new(tx, &rx);
    let lost = {
        let (log, notify) = (Arc::clone(&log), Arc::clone(&notify));
        Arc::new(move |why: String| {
            log.set_gate(Gate::Held);
            notify(Event::ChannelLost { why });
        })
    };
    let sender = {
        let (log, tx, stop, lost) = (
            Arc::clone(&log),
            Arc::clone(&tx),
            Arc::clone(&stop),
            Arc::clone(&lost),
        );
        spawn("lockstep-send", move || {
            let mut last_sent = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let msg = match log.take_due_batch(KEEPALIVE / 2) {
                    Some(b) => Message::Batch {
                        first_seq: b.first_seq,
                        count: b.count,
                        bytes: b.bytes,
                        sent_ns: b.sent_ns,
                    },
                    None if last_sent.elapsed() >= KEEPALIVE => Message::Batch {
                        first_seq: log.unsent_from(),
                        count: 0,
                        bytes: Vec::new(),
                        sent_ns: config_schema::clock::BootInstant::now().as_nanos(),
                    },
                    None => continue,
                };
                let res = tx.lock().unwrap_or_else(|p| p.into_inner()).send(&msg);
                if let Err(e) = res {
                    if !stop.load(Ordering::SeqCst) {
                        lost(format!("send failed: {}", describe(&e)));
                    }
                    return;
                }
                last_sent = Instant::now();
            }
        })
    };
    let acks = {
        let (stop, heard) = (Arc::clone(&stop), Arc::clone(&last_heard));
        spawn("lockstep-ack", move || {
            primary_acks(rx, &log, &stop, &heard, &peer, &on_traffic, &notify, &*lost)
        })
    };
    Link {
        stop,
        tx,
        threads: vec![sender, acks],
        last_heard,
    }
}

/// The Primary's ack thread: reads everything available, then acts on it,
/// losses first (module docs).
#[allow(clippy::too_many_arguments)]
fn primary_acks(
    mut rx: ChannelReceiver,
    log: &PrimaryLog,
    stop: &AtomicBool,
    heard: &Mutex<Heard>,
    peer: &str,
    on_traffic: &OnTraffic,
    notify: &Notify,
    lost: &dyn Fn(String),
) {
    loop {
        let first = rx.recv();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut read = vec![first];
        while matches!(read.last(), Some(Ok(_))) {
            match rx.try_recv() {
                Ok(Some(m)) => read.push(Ok(m)),
                Ok(None) => break,
                Err(e) => read.push(Err(e)),
            }
        }
        if read.iter().all(|r| matches!(r, Err(ChannelError::Timeout))) {
            continue;
        }
        if read.iter().any(|r| r.is_ok()) {
            mark_heard(heard);
            on_traffic();
        }
        // A loss anywhere in what was read holds the gate before any ack of
        // the same read is applied.
        let loss = read.iter().find_map(|r| match r {
            Ok(Message::Ack { .. }) | Err(ChannelError::Timeout) => None,
            Ok(Message::Bye { reason }) => Some(format!("secondary {peer} said bye: {reason}")),
            Ok(Message::Diverged { .. }) => None,
            Ok(other) => {
                tracing::warn!(
                    "channel: refused message from {peer}: unexpected {other:?} on the primary"
                );
                Some("unexpected message from the secondary".to_string())
            }
            Err(e) => Some(format!("channel to {peer}: {}", describe(e))),
        });
        let diverged = read.iter().find_map(|r| match r {
            Ok(Message::Diverged { what }) => Some(what.clone()),
            _ => None,
        });
        if let Some(what) = diverged {
            log.set_gate(Gate::Held);
            notify(Event::PeerDiverged { what });
            return;
        }
        if let Some(why) = loss {
            lost(why);
            return;
        }
        for r in read {
            if let Ok(Message::Ack {
                received,
                replayed,
                replayed_exit,
                echo_ns,
            }) = r
            {
                log.on_ack(received, replayed, replayed_exit, echo_ns);
            }
        }
    }
}

/// The Secondary's acks, sent by the receiver and the progress thread,
/// remembering the progress the last one carried.
struct Acker {
    tx: Arc<Mutex<ChannelSender>>,
    q: Arc<ReplayQueue>,
    last: Mutex<(u64, u64, u64)>,
}

impl Acker {
    /// Sends an ack of the queue's progress now.
    fn send(&self) -> Result<(), ChannelError> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let (received, replayed, replayed_exit) = self.q.progress();
        let m = Message::Ack {
            received,
            replayed,
            replayed_exit,
            echo_ns: self.q.newest_sent_ns(),
        };
        tx.send(&m)?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (received, replayed, replayed_exit);
        Ok(())
    }

    /// The progress the last ack carried.
    fn last(&self) -> (u64, u64, u64) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the Secondary's receiver and progress threads, acking as the
/// default [`Batching`] does.
pub fn start_secondary(
    q: Arc<ReplayQueue>,
    tx: ChannelSender,
    rx: ChannelReceiver,
    on_traffic: OnTraffic,
    notify: Notify,
) -> Link {
    start_secondary_with(q, tx, rx, on_traffic, notify, Batching::default())
}

/// [`start_secondary`], acking as `batching` says (module docs; the
/// benchmark compares them).
pub fn start_secondary_with(
    q: Arc<ReplayQueue>,
    tx: ChannelSender,
    mut rx: ChannelReceiver,
    on_traffic: OnTraffic,
    notify: Notify,
    batching: Batching,
) -> Link {
    let Shared {
        stop,
        tx,
        last_heard,
        peer,
    } = Shared::new(tx, &rx);
    let acker = Arc::new(Acker {
        tx: Arc::clone(&tx),
        q: Arc::clone(&q),
        last: Mutex::new(q.progress()),
    });
    let receiver = {
        let (q, acker, stop, heard) = (
            Arc::clone(&q),
            Arc::clone(&acker),
            Arc::clone(&stop),
            Arc::clone(&last_heard),
        );
        spawn("lockstep-recv", move || {
            let end = |why: String, ev: Event| {
                q.close(&why);
                notify(ev);
            };
            loop {
                let res = rx.recv();
                if stop.load(Ordering::SeqCst) {
                    q.close("link stopped");
                    return;
                }
                let msg = match res {
                    Ok(m) => m,
                    Err(ChannelError::Timeout) => continue,
                    Err(e) => {
                        let why = format!("channel from {peer}: {}", describe(&e));
                        return end(why.clone(), Event::ChannelLost { why });
                    }
                };
                mark_heard(&heard);
                on_traffic();
                match msg {
                    Message::Batch {
                        first_seq,
                        count,
                        bytes,
                        sent_ns,
                    } => match q.receive_batch(first_seq, count, &bytes, sent_ns) {
                        Ok(awaited) => {
                            if !awaited && batching == Batching::Coalesced {
                                // Rides with the next ack (module docs).
                                continue;
                            }
                            if acker.send().is_err() {
                                let why = "cannot send acks".to_string();
                                return end(why.clone(), Event::ChannelLost { why });
                            }
                        }
                        Err(why) => {
                            // Nothing of this batch is applied; the log can
                            // not continue past it, so the link ends here and
                            // the member decides (it asks fencing; it does not
                            // assume the Primary is dead).
                            tracing::warn!("channel: refused message from {peer}: {why}");
                            println!("ftvmm: lockstep: refused batch from {peer}: {why}");
                            let why = format!("refused batch: {why}");
                            return end(why.clone(), Event::ChannelLost { why });
                        }
                    },
                    Message::Bye { reason } => {
                        let why = format!("primary {peer} said bye: {reason}");
                        return end(why.clone(), Event::ChannelLost { why });
                    }
                    Message::Resign { reason } => {
                        // Everything it sent is queued; replay runs to its end
                        // and the member races for the next generation.
                        println!("ftvmm: lockstep: primary {peer} hands over: {reason}");
                        let why = format!("primary {peer} handed over: {reason}");
                        return end(why.clone(), Event::PeerResigned { why });
                    }
                    other => {
                        tracing::warn!(
                            "channel: refused message from {peer}: unexpected {other:?} on the secondary"
                        );
                        let why = "unexpected message from the primary".to_string();
                        return end(why.clone(), Event::ChannelLost { why });
                    }
                }
            }
        })
    };
    let progress = {
        let (stop, heard) = (Arc::clone(&stop), Arc::clone(&last_heard));
        spawn("lockstep-progress", move || {
            progress_reports(&q, &acker, &stop, &heard, batching)
        })
    };
    Link {
        stop,
        tx,
        threads: vec![receiver, progress],
        last_heard,
    }
}

/// The Secondary's progress thread: reports replay progress (and receipts
/// not acknowledged yet) as the module docs say.
fn progress_reports(
    q: &ReplayQueue,
    acker: &Acker,
    stop: &AtomicBool,
    heard: &Mutex<Heard>,
    batching: Batching,
) {
    let mut own_last = q.progress();
    let mut last_sent = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // Eager reports against its own last report (as before issue 17);
        // coalesced against the last ack of either thread.
        let last = match batching {
            Batching::Eager => own_last,
            Batching::Coalesced => acker.last(),
        };
        let behind = last.0 > last.1;
        let wait = if behind {
            PROGRESS_PROMPT_GAP
        } else {
            PROGRESS_EVERY
        };
        let (mut now, caught_up) = q.wait_progress(last, wait);
        let heard_ago = heard.lock().unwrap_or_else(|p| p.into_inner()).at.elapsed();
        let quiet = heard_ago >= PROGRESS_PROMPT_GAP;
        let due = last_sent.elapsed() >= PROGRESS_EVERY;
        let report = match batching {
            Batching::Eager => caught_up || quiet || due,
            Batching::Coalesced => quiet || due,
        };
        if now == last {
            continue;
        }
        if !report {
            if caught_up {
                // `wait_progress` returns at once while nothing changes:
                // sleep until the Primary could be quiet or a report due.
                let to_quiet = PROGRESS_PROMPT_GAP.saturating_sub(heard_ago);
                let to_due = PROGRESS_EVERY.saturating_sub(last_sent.elapsed());
                std::thread::sleep(to_quiet.min(to_due).max(PROGRESS_NAP));
            }
            continue;
        }
        let since = last_sent.elapsed();
        if since < PROGRESS_PROMPT_GAP {
            std::thread::sleep(PROGRESS_PROMPT_GAP - since);
            now = q.progress();
        }
        own_last = now;
        last_sent = Instant::now();
        if acker.send().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(ago: Duration, ever: bool) -> Heard {
        Heard {
            at: Instant::now()
                .checked_sub(ago)
                .expect("monotonic clock past ago"),
            ever,
        }
    }

    #[test]
    fn silence_before_first_contact_starts_after_the_allowance() {
        let ms = |h: Heard| h.silence().as_millis();
        // A peer still building its VM 3 s after the link started is not
        // silent yet; 1.5 s past the allowance it is silent for 1.5 s.
        assert_eq!(ms(heard(Duration::from_secs(3), false)), 0);
        let late = ms(heard(FIRST_CONTACT + Duration::from_millis(1500), false));
        assert!((1500..2500).contains(&late), "{late}");
        // Once heard, silence is the plain time since its last message.
        let after = ms(heard(Duration::from_secs(3), true));
        assert!((3000..4000).contains(&after), "{after}");
    }

    #[test]
    fn a_message_ends_the_allowance() {
        let h = Mutex::new(heard(Duration::from_secs(3), false));
        mark_heard(&h);
        let h = *h.lock().unwrap();
        assert!(h.ever);
        assert!(h.silence() < Duration::from_secs(1));
    }
}
