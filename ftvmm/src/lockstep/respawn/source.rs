//! The Primary's side of a live state transfer to a new Secondary: the
//! [`Sender`] state machine (`transfer/sender.rs`) decides, this file
//! performs its actions on the real VM and the logging channel.
//!
//! Pre-copy rounds run on this thread while the guest runs: the dirty log is
//! read on the vCPU thread between two exits ([`PausePoint`], a few
//! microseconds), pages are read from guest memory here. The stop-and-copy
//! runs entirely on the vCPU thread, so the guest is paused exactly while
//! it runs: the last dirty pages, the log restart ([`PrimaryLog::join_secondary`]),
//! the vCPU and device state, the digest of what was sent
//! (`pagehash.rs`), the Switch, waiting for
//! `Restored`, the member's `Solo -> Paired` (gate to the Output Rule
//! first), `Paired` to the new Secondary and the log's link. Any failure
//! before the member is paired resumes the guest alone, unharmed: the gate
//! stayed open and nothing was recorded for anyone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::keeper::await_paired;
use super::pagehash::{is_zero, PageHashes};
use super::{from_channel, to_channel, SwitchState, PAGE_SIZE};
use crate::lockstep::channel::{Channel, Message as ChannelMessage};
use crate::lockstep::link::{self, OnTraffic};
use crate::lockstep::member::{Event as MemberEvent, State};
use crate::lockstep::pause::PausePoint;
use crate::lockstep::primary::PrimaryLog;
use crate::lockstep::spec::PairHandle;
use crate::lockstep::transfer::message::{pages_per_message, Message, Page};
use crate::lockstep::transfer::sender::{
    Action, Event, Sender, SenderConfig, SenderStats, ACK_TIMEOUT_MS, PAUSE_TIMEOUT_MS,
};
use crate::vm::Vm;

/// Stop-and-copy when at most this much is left to send (256 pages).
pub const STOP_COPY_BYTES: u64 = 1 << 20;
/// How long the vCPU may take to reach an exit for a short piece of work
/// (the new Secondary allows the Primary this much silence, `target.rs`).
pub const VCPU_WAIT: Duration = Duration::from_secs(5);

/// What the transfer needs from the running Primary.
pub struct SourceCtx {
    pub vm: String,
    pub generation: u64,
    /// The new Secondary's host.
    pub target: String,
    pub handle: Arc<PairHandle>,
    pub log: Arc<PrimaryLog>,
    pub platform_sha256: [u8; 32],
    pub on_traffic: OnTraffic,
    /// Told the percentage of pages sent (first pass over memory).
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

/// A transfer that ended with the new Secondary in lockstep.
#[derive(Debug, Clone)]
pub struct Joined {
    pub stats: SenderStats,
    pub log_start_exit: u64,
    /// The generation the pair formed in: the member's when the new
    /// Secondary restored, which is later than the one the join began in if
    /// the lone Primary re-won its generation meanwhile (`StopAndCopy::pair`).
    pub generation: u64,
    /// How long the guest was paused for the stop-and-copy.
    pub pause: Duration,
    pub bytes_sent: u64,
    pub memory_bytes: u64,
    /// Where the pause went: `final pages N (X ms), state X ms, digest X ms,
    /// restore on the secondary X ms`.
    pub pause_detail: String,
}

/// The channel and the counters, owned by whichever thread performs.
struct Io {
    /// Taken by the link at the end of a successful transfer.
    ch: Option<Channel>,
    bytes_sent: u64,
    /// The last version of every page sent (the Switch's digest).
    sent: PageHashes,
}

impl Io {
    fn send(&mut self, m: &Message) -> Result<(), String> {
        let msg = to_channel(m)?;
        if let ChannelMessage::Transfer { bytes } = &msg {
            self.bytes_sent += bytes.len() as u64;
        }
        self.channel()?
            .send(&msg)
            .map_err(|e| format!("send failed: {e}"))
    }

    fn channel(&mut self) -> Result<&mut Channel, String> {
        self.ch
            .as_mut()
            .ok_or_else(|| "the channel was handed to the link".into())
    }

    fn recv(&mut self, timeout: Duration) -> Result<Message, String> {
        let ch = self.channel()?;
        ch.set_read_timeout(Some(timeout))
            .map_err(|e| format!("channel: {e}"))?;
        let m = ch
            .recv()
            .map_err(|e| format!("no answer from the new secondary: {e}"))?;
        from_channel(m)
    }

    fn send_pages(
        &mut self,
        mem: &GuestMemoryMmap,
        round: u32,
        gfns: &[u64],
    ) -> Result<(), String> {
        for chunk in gfns.chunks(pages_per_message(PAGE_SIZE)) {
            let pages = read_pages(mem, chunk, &mut self.sent)?;
            self.send(&Message::Pages { round, pages })?;
        }
        Ok(())
    }
}

/// The pages `gfns` as they are in guest memory now, for one `Pages`
/// message; `sent` keeps the version of each that goes out (the Switch's
/// digest). Public for the benchmark, which drives the same path.
pub fn read_pages(
    mem: &GuestMemoryMmap,
    gfns: &[u64],
    sent: &mut PageHashes,
) -> Result<Vec<Page>, String> {
    let mut pages = Vec::with_capacity(gfns.len());
    for &gfn in gfns {
        let mut bytes = vec![0u8; PAGE_SIZE as usize];
        mem.read_slice(&mut bytes, GuestAddress(gfn * u64::from(PAGE_SIZE)))
            .map_err(|e| format!("cannot read guest page {gfn}: {e}"))?;
        if is_zero(&bytes) {
            // Most of a guest's memory, at first: sent as no bytes.
            bytes = Vec::new();
        }
        sent.set(gfn, &bytes);
        pages.push(Page { gfn, bytes });
    }
    Ok(pages)
}

/// Answers of the receiver as sender events (anything else fails it).
pub fn event_of(m: Message) -> Event {
    match m {
        Message::Accept => Event::PeerAccepted,
        Message::Refuse { reason } => Event::PeerRefused { reason },
        Message::RoundAck { round } => Event::RoundAcked(round),
        Message::Restored { memory_sha256 } => Event::PeerRestored { memory_sha256 },
        Message::Abort { reason } => Event::PeerAborted { reason },
        other => Event::PeerAborted {
            reason: format!("unexpected message from the receiver: {other:?}"),
        },
    }
}

/// Transfers the running Primary to the new Secondary at the other end of
/// `ch` (handshake and Hello done). Returns when the new Secondary is in
/// lockstep, or with the reason it failed; the guest runs either way.
pub fn transfer(ctx: &SourceCtx, ch: Channel) -> Result<Joined, String> {
    let pause = Arc::clone(&ctx.handle.pause);
    let (mem, memory_bytes) = pause
        .run(VCPU_WAIT, |vm: &mut Vm| {
            (vm.memory().clone(), vm.mem_size())
        })
        .map_err(|e| e.to_string())?;
    let mut cfg = SenderConfig::new(memory_bytes, PAGE_SIZE);
    // The defaults assume a 1 Gbit/s link and a 0.5 s pause; the pause is
    // worth more than a few pre-copy rounds: stop only when the rest is
    // small (or stops shrinking, or the rounds run out).
    cfg.stop_copy_bytes = STOP_COPY_BYTES;
    let mut sender = Sender::new(cfg);
    let mut io = Io {
        ch: Some(ch),
        bytes_sent: 0,
        sent: PageHashes::new(memory_bytes / u64::from(PAGE_SIZE), PAGE_SIZE),
    };
    let started = Instant::now();
    let now = move || started.elapsed().as_millis() as u64;
    let total_pages = memory_bytes / u64::from(PAGE_SIZE);
    let mut queue = sender.on_event(Event::Start { now_ms: now() });
    let res = loop {
        let Some(action) = (!queue.is_empty()).then(|| queue.remove(0)) else {
            // Waiting for the receiver (an Accept or a round's ack).
            let ev = match io.recv(Duration::from_millis(ACK_TIMEOUT_MS)) {
                Ok(m) => event_of(m),
                Err(detail) => Event::LinkLost { detail },
            };
            queue = sender.on_event(ev);
            queue.extend(sender.on_event(Event::Tick { now_ms: now() }));
            continue;
        };
        match action {
            Action::SendOffer => {
                let offer = Message::Offer {
                    vm: ctx.vm.clone(),
                    generation: ctx.generation,
                    memory_bytes,
                    page_size: PAGE_SIZE,
                    platform_sha256: ctx.platform_sha256,
                };
                if let Err(detail) = io.send(&offer) {
                    queue = sender.on_event(Event::LinkLost { detail });
                }
            }
            Action::StartDirtyLog => {
                match pause.run(VCPU_WAIT, |vm: &mut Vm| vm.start_dirty_tracking()) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => queue = cancel(&mut sender, format!("dirty log: {e}")),
                    Err(e) => queue = cancel(&mut sender, e.to_string()),
                }
            }
            Action::ReadDirtyLog => {
                match pause.run(VCPU_WAIT, |vm: &mut Vm| vm.dirty_pages_since_last_call()) {
                    Ok(Ok(gfns)) => queue.extend(sender.on_event(Event::DirtyPages(gfns))),
                    Ok(Err(e)) => queue = cancel(&mut sender, format!("dirty log: {e}")),
                    Err(e) => queue = cancel(&mut sender, e.to_string()),
                }
            }
            Action::SendPages { round, gfns } => {
                if let Err(detail) = io.send_pages(&mem, round, &gfns) {
                    queue = sender.on_event(Event::LinkLost { detail });
                }
                if round == 0 {
                    (ctx.progress)((sender.stats().pages_sent * 100 / total_pages.max(1)).min(99));
                }
            }
            Action::SendRoundEnd {
                round,
                pages_sent,
                dirty_left,
            } => {
                let m = Message::RoundEnd {
                    round,
                    pages_sent,
                    dirty_left,
                };
                if let Err(detail) = io.send(&m) {
                    queue = sender.on_event(Event::LinkLost { detail });
                }
            }
            Action::PauseVcpus { .. } => {
                // Everything up to the sender's Done or Failed runs on the
                // vCPU thread, the guest paused; see `stop_and_copy`.
                let rest = std::mem::take(&mut queue);
                let job = StopAndCopy {
                    sender,
                    io,
                    queue: rest,
                    marks: Vec::new(),
                    log: Arc::clone(&ctx.log),
                    handle: Arc::clone(&ctx.handle),
                    generation: ctx.generation,
                    paired_in: None,
                    target: ctx.target.clone(),
                    on_traffic: Arc::clone(&ctx.on_traffic),
                    started,
                };
                let timeout = Duration::from_millis(PAUSE_TIMEOUT_MS) + VCPU_WAIT;
                return match pause.run(timeout, move |vm: &mut Vm| job.run(vm)) {
                    Ok((res, stats, bytes_sent, pause_detail)) => {
                        res.map(|(log_start_exit, paused, generation)| Joined {
                            stats,
                            log_start_exit,
                            generation,
                            pause: paused,
                            bytes_sent,
                            memory_bytes,
                            pause_detail,
                        })
                    }
                    Err(e) => {
                        stop_dirty_log(&pause);
                        Err(format!("stop-and-copy did not run: {e}"))
                    }
                };
            }
            Action::SendAbort { reason } => {
                let _ = io.send(&Message::Abort { reason });
            }
            Action::Failed { reason } => break Err(reason),
            // Only after a pause, which never returns here.
            Action::SendSwitch { .. } | Action::ResumeVcpus | Action::Done => {
                break Err(format!("sender asked for {action:?} before the pause"));
            }
        }
    };
    stop_dirty_log(&pause);
    res
}

fn cancel(sender: &mut Sender, reason: String) -> Vec<Action> {
    sender.on_event(Event::Cancel { reason })
}

fn stop_dirty_log(pause: &PausePoint) {
    let _ = pause.run(VCPU_WAIT, |vm: &mut Vm| vm.stop_dirty_tracking());
}

/// The stop-and-copy, moved onto the vCPU thread.
struct StopAndCopy {
    sender: Sender,
    io: Io,
    queue: Vec<Action>,
    log: Arc<PrimaryLog>,
    handle: Arc<PairHandle>,
    generation: u64,
    /// The generation [`StopAndCopy::pair`] paired in.
    paired_in: Option<u64>,
    target: String,
    on_traffic: OnTraffic,
    started: Instant,
    /// Milestones of the pause (ms since it began), for the console.
    marks: Vec<(&'static str, u128)>,
}

/// (log start exit, pause, generation paired in) or why it failed, the
/// sender's stats, bytes sent, where the pause went.
type StopResult = (
    Result<(u64, Duration, u64), String>,
    SenderStats,
    u64,
    String,
);

impl StopAndCopy {
    /// Runs with the guest paused; returns (log start exit, pause) or why
    /// it failed, and the sender's stats.
    fn run(mut self, vm: &mut Vm) -> StopResult {
        let t0 = Instant::now();
        let res = self.perform(vm, t0);
        let _ = vm.stop_dirty_tracking();
        let paired_in = self.paired_in.unwrap_or(self.generation);
        let res = res.map(|n| (n, t0.elapsed(), paired_in));
        let mut last = 0;
        let detail: Vec<String> = self
            .marks
            .iter()
            .map(|(what, at)| {
                let d = at - last;
                last = *at;
                format!("{what} {d} ms")
            })
            .collect();
        let stats = self.sender.stats().clone();
        let detail = format!(
            "{} final pages; {}",
            stats.final_round_pages,
            detail.join(", ")
        );
        (res, stats, self.io.bytes_sent, detail)
    }

    fn mark(&mut self, what: &'static str, t0: Instant) {
        self.marks.push((what, t0.elapsed().as_millis()));
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn perform(&mut self, vm: &mut Vm, t0: Instant) -> Result<u64, String> {
        let mut log_start = None;
        loop {
            let Some(action) = (!self.queue.is_empty()).then(|| self.queue.remove(0)) else {
                let ev = match self.io.recv(Duration::from_millis(PAUSE_TIMEOUT_MS)) {
                    Ok(m) => event_of(m),
                    Err(detail) => Event::LinkLost { detail },
                };
                self.queue = self.sender.on_event(ev);
                let tick = self.sender.on_event(Event::Tick { now_ms: self.now() });
                self.queue.extend(tick);
                continue;
            };
            match action {
                Action::ReadDirtyLog => match vm.dirty_pages_since_last_call() {
                    Ok(gfns) => {
                        let next = self.sender.on_event(Event::DirtyPages(gfns));
                        self.queue.extend(next);
                    }
                    Err(e) => self.fail(format!("dirty log: {e}")),
                },
                Action::SendPages { round, gfns } => {
                    if let Err(detail) = self.io.send_pages(vm.memory(), round, &gfns) {
                        self.queue = self.sender.on_event(Event::LinkLost { detail });
                    }
                }
                Action::SendSwitch { round } => match self.switch(vm, round, t0) {
                    Ok((n, memory_sha256)) => {
                        log_start = Some(n);
                        let next = self.sender.on_event(Event::SwitchSent { memory_sha256 });
                        self.queue.extend(next);
                    }
                    Err(reason) => self.fail(reason),
                },
                Action::SendAbort { reason } => {
                    let _ = self.io.send(&Message::Abort { reason });
                }
                Action::Done => {
                    let n = log_start.ok_or("done without a switch")?;
                    self.mark("restore on the secondary", t0);
                    self.pair()?;
                    self.mark("pairing", t0);
                    return Ok(n);
                }
                Action::Failed { reason } => return Err(reason),
                // The guest resumes when this closure returns.
                Action::ResumeVcpus | Action::PauseVcpus { .. } => {}
                other => return Err(format!("sender asked for {other:?} while paused")),
            }
        }
    }

    fn fail(&mut self, reason: String) {
        self.queue = self.sender.on_event(Event::Cancel { reason });
    }

    /// The log restarts here; the state and the digest go out in `Switch`.
    fn switch(&mut self, vm: &mut Vm, round: u32, t0: Instant) -> Result<(u64, [u8; 32]), String> {
        self.mark("final pages", t0);
        let first_seq = self.log.join_secondary()?;
        let state = vm
            .save_state()
            .map_err(|e| format!("cannot save the VM state: {e}"))?;
        self.mark("state", t0);
        let n = vm.exit_index();
        let sw = SwitchState {
            vm: state,
            first_seq,
            last_time: self.log.last_time(),
        };
        let state = postcard::to_allocvec(&sw).map_err(|e| format!("cannot encode state: {e}"))?;
        // Of what was sent, not of all memory (`pagehash.rs`).
        let digest = self.io.sent.digest();
        self.mark("digest", t0);
        self.io.send(&Message::Switch {
            round,
            state,
            memory_sha256: digest,
            log_start_exit: n,
        })?;
        Ok((n, digest))
    }

    /// The new Secondary restored: pair the member (gate to the Output Rule
    /// first), tell the Secondary, start the log's link.
    fn pair(&mut self) -> Result<(), String> {
        // The join pairs in the generation the member owns *now*, which may
        // be later than the one the Hello offered: a lone Primary whose
        // output grant flapped re-wins `g + 1` (member.rs, `Fenced`), and
        // under a slow storage path that happened every few seconds, so a
        // join named at the Hello never completed (chaos seed 21: 50
        // generations, never protected). The new Secondary checks this
        // generation on disk before it follows (`target::receive`), and the
        // member takes the join only in `Solo { g }` of exactly this `g`.
        let g = match self.handle.member_state() {
            Some(State::Solo { g }) if g >= self.generation => g,
            other => {
                return Err(format!(
                    "the member cannot pair (it is {other:?}; the join began in generation {})",
                    self.generation
                ))
            }
        };
        if !self.handle.post(MemberEvent::SecondaryJoined {
            peer: self.target.clone(),
            generation: g,
        }) {
            return Err("the member is gone".into());
        }
        self.paired_in = Some(g);
        if let Err(other) = await_paired(&self.handle, g, Duration::from_secs(2)) {
            let why = format!("the member did not pair (it is {other:?})");
            let _ = self.io.send(&Message::Abort {
                reason: why.clone(),
            });
            // Should the member still take the join after this, it must not
            // stay paired with nobody: a loss makes it race (in `Solo` it is
            // ignored).
            self.handle.post(MemberEvent::ChannelLost {
                why: format!("join of {} given up: {why}", self.target),
            });
            return Err(why);
        }
        // From here on a loss of the new Secondary is a loss like any other:
        // the member holds and races for g + 1.
        if let Err(e) = self.io.send(&Message::Paired { generation: g }) {
            self.handle
                .post(MemberEvent::ChannelLost { why: e.clone() });
            return Err(e);
        }
        let ch = self.io.ch.take().ok_or("the channel is gone")?;
        // As a power-on pair's: the link's threads poll with short reads.
        ch.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| format!("channel: {e}"))?;
        let (tx, rx) = ch.split();
        let link = link::start_primary(
            Arc::clone(&self.log),
            tx,
            rx,
            Arc::clone(&self.on_traffic),
            self.handle.notify(),
        );
        self.handle.offer_link(link);
        Ok(())
    }
}
