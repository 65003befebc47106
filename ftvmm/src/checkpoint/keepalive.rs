//! Keep-alives on a checkpoint link: each side's process says "alive"
//! ([`Message::Alive`]) from a thread of its own whenever it sent nothing
//! for [`KEEPALIVE`], so the peer's silence clock (`driver.rs`'s
//! `silent_ms`, which runs from one complete message to the next) measures
//! whether the process runs, not how long the epoch work takes. Without it
//! a Primary harvesting, encoding or pre-copying a large epoch (a second or
//! more for 32 MiB on a busy host) sent nothing for longer than the failure
//! timeout, and its Secondary took it for dead: a false suspicion (safe,
//! fencing let one copy go on, but a needless failover), and with a 1 s
//! timeout both sides suspected each other during the first full epoch.
//!
//! Rules:
//! - `Alive` says only "this process runs". It never acknowledges,
//!   completes or releases an epoch: the receivers take it as heard and
//!   nothing else (`remote::on_message` returns no ack for it; the Primary's
//!   ack reader only stamps `heard`). The Output Rule is untouched. Nor
//!   does it keep a Secondary that acknowledges no epoch paired: its
//!   Primary counts it lost past the failure timeout (`ack_wait.rs`).
//! - The keep-alive thread belongs to the same process as the epoch loop
//!   (Primary) or the serve loop (Secondary): a host that is frozen (QMP
//!   `stop`, SIGSTOP, a hung kernel) or a process that died stops its
//!   keep-alives with everything else, so the peer still sees it silent
//!   after the failure timeout and races.
//! - A side whose link work is wedged (one step of the epoch or serve loop
//!   — a harvest, a pre-copy, an encode, one piece's send, one epoch's
//!   apply — has not moved for [`STALL_LIMIT`]) stops its keep-alives, so a
//!   process whose link thread hangs is still taken for dead, only later
//!   than the failure timeout. The loops stamp [`Progress`] at every step.
//! - Keep-alives go through the same sender as the epoch pieces and acks,
//!   one whole message at a time under its lock, so they interleave between
//!   pieces (at most `MAX_CHUNK_BYTES` each) and never inside one. A piece
//!   itself can take a second on a slow FT network, so the Secondary also
//!   counts every authentic frame (64 KiB) of a message still arriving as
//!   heard (`ChannelReceiver::frame_counter`, `driver_secondary.rs`).
//! - A join (`respawn.rs`) has them too, from its first message: the
//!   joining Secondary's thread starts with the join ([`AliveLink`]) and
//!   runs on into the Secondary it becomes, and the Primary's speaks on the
//!   join's link from the moment its epoch loop took it. Both sides judge a
//!   join by them, never by how long its full epoch takes.
//!
//! Checked: `driver_tests` (a Primary whose every piece waits three failure
//! timeouts stays heard on the Secondary, and the Secondary on it: neither
//! member suspects), `respawn_tests` (a join whose full epoch crawls
//! through a 2 MiB/s proxy for several failure timeouts: the Primary
//! hears the joining Secondary throughout, and neither member suspects
//! after the hand-over), `keepalive_tests` (a stalled loop stops its
//! keep-alives; one goes out only when nothing else did; the frame counter
//! moves while a 1 MiB piece crawls through a slow proxy),
//! the channel's round trip of every message kind, and the `channel_frame`
//! fuzz target (mode bit 2 interleaves `Alive` between epoch pieces).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lockstep::channel::{Channel, ChannelError, ChannelReceiver, ChannelSender, Message};

/// How long a side may send nothing before its keep-alive thread says
/// `Alive` (and how often that thread looks).
pub const KEEPALIVE: Duration = Duration::from_millis(100);

/// A side whose link loop has not moved for this long stops its
/// keep-alives (module doc). Far above any step seen on a loaded 2-core
/// host (a 128 MiB pre-copy or a 32 MiB harvest: about a second).
pub const STALL_LIMIT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// When a side's link loop last moved (module doc).
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    at_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            base: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl Progress {
    /// The loop moved now.
    pub fn stamp(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.at_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long since the loop last moved.
    pub fn stalled_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.at_ms.load(Ordering::Relaxed)))
    }

    /// Whether keep-alives may go out (the loop moved within
    /// [`STALL_LIMIT`]).
    pub fn fresh(&self, limit: Duration) -> bool {
        self.stalled_for() < limit
    }
}

/// A sending half shared by a side's link loop and its keep-alive thread;
/// it remembers when it last sent anything.
pub struct SharedSender {
    inner: Mutex<(ChannelSender, Instant)>,
    peer: String,
}

impl SharedSender {
    pub fn new(tx: ChannelSender) -> Self {
        let peer = tx.peer().to_string();
        SharedSender {
            inner: Mutex::new((tx, Instant::now())),
            peer,
        }
    }

    pub fn send(&self, m: &Message) -> Result<(), ChannelError> {
        let mut g = lock(&self.inner);
        g.1 = Instant::now();
        g.0.send(m)
    }

    pub fn send_last(&self, m: &Message) -> Result<(), ChannelError> {
        lock(&self.inner).0.send_last(m)
    }

    pub fn shutdown(&self) {
        lock(&self.inner).0.shutdown();
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends `Alive` if nothing went out for `period`.
    pub fn keep_alive(&self, period: Duration) -> Result<(), ChannelError> {
        let mut g = lock(&self.inner);
        if g.1.elapsed() < period {
            return Ok(());
        }
        g.1 = Instant::now();
        g.0.send(&Message::Alive)
    }
}

/// Runs `tick` every [`KEEPALIVE`] while `progress` moved within `limit`
/// ([`STALL_LIMIT`] outside tests), until `stop` is set or `tick` fails
/// (its error is logged; the link's own threads see the dead connection
/// and report it).
pub fn spawn(
    name: String,
    (stop, limit): (Arc<AtomicBool>, Duration),
    progress: Arc<Progress>,
    mut tick: impl FnMut() -> Result<(), String> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        crate::priority::link_thread();
        let mut said_stalled = false;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(KEEPALIVE);
            if !progress.fresh(limit) {
                if !said_stalled {
                    tracing::warn!(
                        "checkpoint: the link loop has not moved for {} ms; no more keep-alives",
                        progress.stalled_for().as_millis()
                    );
                    said_stalled = true;
                }
                continue;
            }
            said_stalled = false;
            if let Err(e) = tick() {
                tracing::debug!("checkpoint: keep-alive not sent: {e}");
                return;
            }
        }
    })
}

/// One side's end of a checkpoint link with its keep-alive thread running:
/// the sending half (shared by the link loop and the thread), the receiving
/// half, and the link loop's [`Progress`]. A joining Secondary starts it at
/// its first message (`respawn.rs`'s `receive_join`) and hands it on, with
/// the thread still running, to the Secondary it becomes
/// (`SecondaryEffects::start_on`), so the Primary hears it every
/// [`KEEPALIVE`] from the join's first piece to the end of the link, while
/// a full epoch arrives and while it is applied. Dropping it stops the
/// thread.
pub struct AliveLink {
    pub tx: Arc<SharedSender>,
    pub rx: ChannelReceiver,
    pub progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AliveLink {
    /// Splits `ch` and starts its keep-alive thread (`name`); without a
    /// thread (it could not start, logged) the link runs without
    /// keep-alives, as before they existed.
    pub fn start(ch: Channel, name: &str) -> Self {
        // A send the Primary's TCP cannot take (a partition) fails after
        // this instead of blocking the acks and keep-alives for ever.
        if let Err(e) = ch.set_write_timeout(Some(super::driver::SEND_TIMEOUT)) {
            tracing::warn!(
                "checkpoint: no write timeout on the link to {}: {e}",
                ch.peer()
            );
        }
        let (tx, rx) = ch.split();
        let tx = Arc::new(SharedSender::new(tx));
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tx2 = Arc::clone(&tx);
        let tick = move || tx2.keep_alive(KEEPALIVE).map_err(|e| e.to_string());
        let limits = (Arc::clone(&stop), STALL_LIMIT);
        let thread = match spawn(name.to_string(), limits, Arc::clone(&progress), tick) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("checkpoint: no keep-alive thread to {}: {e}", tx.peer());
                None
            }
        };
        AliveLink {
            tx,
            rx,
            progress,
            stop,
            thread,
        }
    }
}

impl Drop for AliveLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
