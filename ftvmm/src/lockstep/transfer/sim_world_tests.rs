//! The simulation's world (see `sim_tests.rs`): a toy guest, a sender
//! driver performing the [`Sender`]'s actions, a receiver driver, and an
//! ordered in-memory pipe of encoded messages with bandwidth and latency.

use std::collections::{BTreeSet, VecDeque};

use super::memory::{sha256, VecMemory};
use super::message::{decode, encode, Message, Page};
use super::receiver::{Expected, Receiver, RxAction};
use super::sender::{Action, Event, Sender, SenderConfig, StopReason};

pub(super) const PAGE: u32 = 64;
/// Pages per Pages message in the simulation (the real driver uses
/// `message::pages_per_message`), so rounds take several messages.
const PAGES_PER_MSG: usize = 8;
/// The link: bytes per millisecond (16 MiB/s) and one-way latency.
const BW_BYTES_PER_MS: u64 = 16 * 1024;
const LATENCY_US: u64 = 200;

pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The toy guest: memory, a dirty log, and a write rate.
pub(super) struct Guest {
    mem: Vec<u8>,
    pages: u64,
    hot: u64,
    /// Page writes per simulated millisecond, in thousandths.
    writes_per_ms_milli: u64,
    /// One write in `cold_one_in` goes anywhere, the rest to the hot set.
    cold_one_in: u64,
    owed_milli: u64,
    tracking: bool,
    dirty: BTreeSet<u64>,
    paused: bool,
    exits: u64,
    rng: Rng,
}

impl Guest {
    pub(super) fn new(
        rng: &mut Rng,
        pages: u64,
        hot: u64,
        writes_per_ms_milli: u64,
        cold_one_in: u64,
    ) -> Self {
        let mut g = Guest {
            mem: vec![0; (pages * u64::from(PAGE)) as usize],
            pages,
            hot: hot.clamp(1, pages),
            writes_per_ms_milli,
            cold_one_in,
            owed_milli: 0,
            tracking: false,
            dirty: BTreeSet::new(),
            paused: false,
            exits: 0,
            rng: Rng(rng.next()),
        };
        for b in g.mem.iter_mut() {
            *b = g.rng.next() as u8;
        }
        g
    }

    /// The guest runs for `micros` microseconds (if not paused).
    pub(super) fn run(&mut self, micros: u64) {
        if self.paused {
            return;
        }
        self.owed_milli += micros * self.writes_per_ms_milli / 1000;
        while self.owed_milli >= 1000 {
            self.owed_milli -= 1000;
            let gfn = if self.rng.below(self.cold_one_in) == 0 {
                self.rng.below(self.pages)
            } else {
                self.rng.below(self.hot)
            };
            let at = (gfn * u64::from(PAGE) + self.rng.below(u64::from(PAGE))) as usize;
            self.mem[at] = self.mem[at].wrapping_add(1 + self.rng.below(255) as u8);
            self.exits += 1;
            if self.tracking {
                self.dirty.insert(gfn);
            }
        }
    }

    fn page(&self, gfn: u64) -> Vec<u8> {
        let s = (gfn * u64::from(PAGE)) as usize;
        self.mem[s..s + PAGE as usize].to_vec()
    }
}

/// How one attempt ended.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) sender_done: bool,
    pub(super) sender_failed: bool,
    pub(super) receiver_done: bool,
    pub(super) receiver_failed: bool,
    /// Guest memory and state at the Switch.
    pub(super) switched: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) restored_state: Option<Vec<u8>>,
    pub(super) receiver_mem: Vec<u8>,
    pub(super) messages: usize,
    pub(super) bytes: u64,
    pub(super) rounds: u32,
    pub(super) final_round_pages: u64,
    pub(super) stop: Option<StopReason>,
}

/// A message in flight and the time it was sent.
type Queue = VecDeque<(Vec<u8>, u64)>;

/// One attempt's sender, receiver, pipe and clock around a guest.
struct World<'g> {
    guest: &'g mut Guest,
    clock_us: u64,
    exp: Expected,
    sender: Sender,
    receiver: Receiver<VecMemory>,
    to_rx: Queue,
    to_tx: Queue,
    out: Outcome,
}

impl World<'_> {
    /// Time passes; the guest runs unless paused.
    fn advance(&mut self, us: u64) {
        self.clock_us += us;
        self.guest.run(us);
    }

    /// The sender sends `m`: it takes its transmission time.
    fn send(&mut self, m: &Message) {
        let b = encode(m).expect("sim messages encode");
        self.out.bytes += b.len() as u64;
        self.advance(b.len() as u64 * 1000 / BW_BYTES_PER_MS);
        self.to_rx.push_back((b, self.clock_us));
    }

    /// Performs one sender action; returns the sender's answer to it.
    fn perform(&mut self, a: Action) -> Vec<Action> {
        match a {
            Action::SendOffer => self.send(&Message::Offer {
                vm: self.exp.vm.clone(),
                generation: 1,
                memory_bytes: self.exp.memory_bytes,
                page_size: PAGE,
                platform_sha256: self.exp.platform_sha256,
            }),
            Action::StartDirtyLog => {
                self.guest.tracking = true;
                self.guest.dirty.clear();
            }
            Action::ReadDirtyLog => {
                let d = std::mem::take(&mut self.guest.dirty).into_iter().collect();
                return self.sender.on_event(Event::DirtyPages(d));
            }
            // Pages are read as they are sent; the guest runs meanwhile.
            Action::SendPages { round, gfns } => {
                for chunk in gfns.chunks(PAGES_PER_MSG) {
                    let pages = chunk
                        .iter()
                        .map(|&gfn| Page {
                            gfn,
                            bytes: self.guest.page(gfn),
                        })
                        .collect();
                    self.send(&Message::Pages { round, pages });
                }
            }
            Action::SendRoundEnd {
                round,
                pages_sent,
                dirty_left,
            } => self.send(&Message::RoundEnd {
                round,
                pages_sent,
                dirty_left,
            }),
            Action::PauseVcpus { .. } => self.guest.paused = true,
            Action::SendSwitch { round } => return self.send_switch(round),
            Action::SendAbort { reason } => self.send(&Message::Abort { reason }),
            Action::ResumeVcpus => self.guest.paused = false,
            Action::Done => self.out.sender_done = true,
            Action::Failed { .. } => self.out.sender_failed = true,
        }
        Vec::new()
    }

    fn send_switch(&mut self, round: u32) -> Vec<Action> {
        assert!(self.guest.paused, "Switch while the guest runs");
        let state = self.guest.exits.to_le_bytes().to_vec();
        let memory_sha256 = sha256(&self.guest.mem);
        self.out.switched = Some((self.guest.mem.clone(), state.clone()));
        let log_start_exit = self.guest.exits;
        self.send(&Message::Switch {
            round,
            state,
            memory_sha256,
            log_start_exit,
        });
        self.sender.on_event(Event::SwitchSent { memory_sha256 })
    }

    /// The next message, receiver-bound first (each direction in order).
    fn next_message(&mut self) -> Option<(bool, Vec<u8>, u64)> {
        if let Some((b, at)) = self.to_rx.pop_front() {
            return Some((true, b, at));
        }
        self.to_tx.pop_front().map(|(b, at)| (false, b, at))
    }

    /// Delivers one message at its arrival time; returns the sender's actions.
    fn deliver(&mut self, to_receiver: bool, bytes: &[u8], sent_us: u64) -> Vec<Action> {
        self.out.messages += 1;
        let arrive_us = sent_us + LATENCY_US;
        if arrive_us > self.clock_us {
            self.advance(arrive_us - self.clock_us);
        }
        let m = decode(bytes).expect("sim messages decode");
        if !to_receiver {
            return self.sender.on_event(match m {
                Message::Accept => Event::PeerAccepted,
                Message::Refuse { reason } => Event::PeerRefused { reason },
                Message::RoundAck { round } => Event::RoundAcked(round),
                Message::Restored { memory_sha256 } => Event::PeerRestored { memory_sha256 },
                Message::Abort { reason } => Event::PeerAborted { reason },
                other => panic!("sender got {other:?}"),
            });
        }
        for a in self.receiver.on_message(m) {
            match a {
                RxAction::Send(m) => {
                    let b = encode(&m).expect("receiver messages encode");
                    self.to_tx.push_back((b, self.clock_us));
                }
                RxAction::Restore { state, .. } => self.out.restored_state = Some(state),
                RxAction::Done => self.out.receiver_done = true,
                RxAction::Failed(_) => self.out.receiver_failed = true,
                RxAction::Rejected(e) => panic!("receiver rejected a message: {e}"),
            }
        }
        Vec::new()
    }

    /// The link breaks: both sides are told, whatever is in flight is lost.
    fn cut(&mut self) -> Vec<Action> {
        for a in self.receiver.on_cut("cut") {
            self.out.receiver_failed |= matches!(a, RxAction::Failed(_));
        }
        self.to_rx.clear();
        self.to_tx.clear();
        self.sender.on_event(Event::LinkLost {
            detail: "cut".into(),
        })
    }
}

/// One transfer attempt; `cut_at` cuts the link before that message is
/// delivered.
pub(super) fn attempt(
    guest: &mut Guest,
    cfg: &SenderConfig,
    clock_us: &mut u64,
    cut_at: Option<usize>,
) -> Outcome {
    let exp = Expected {
        vm: "sim".into(),
        memory_bytes: guest.pages * u64::from(PAGE),
        page_size: PAGE,
        platform_sha256: [3; 32],
    };
    let mut w = World {
        receiver: Receiver::new(exp.clone(), VecMemory::new(exp.memory_bytes, PAGE)),
        sender: Sender::new(cfg.clone()),
        exp,
        guest,
        clock_us: *clock_us,
        to_rx: Queue::new(),
        to_tx: Queue::new(),
        out: Outcome::default(),
    };
    let mut actions: VecDeque<Action> = w
        .sender
        .on_event(Event::Start {
            now_ms: w.clock_us / 1000,
        })
        .into();
    loop {
        while let Some(a) = actions.pop_front() {
            let more = w.perform(a);
            actions.extend(more);
        }
        actions.extend(w.sender.on_event(Event::Tick {
            now_ms: w.clock_us / 1000,
        }));
        if !actions.is_empty() {
            continue;
        }
        let Some((to_receiver, bytes, sent_us)) = w.next_message() else {
            break;
        };
        if cut_at == Some(w.out.messages) {
            actions.extend(w.cut());
        } else {
            actions.extend(w.deliver(to_receiver, &bytes, sent_us));
        }
    }
    *clock_us = w.clock_us;
    w.out.receiver_mem = w.receiver.memory().bytes.clone();
    let st = w.sender.stats();
    (w.out.rounds, w.out.final_round_pages, w.out.stop) =
        (st.rounds, st.final_round_pages, st.stop_reason);
    assert!(!w.guest.paused, "the guest is left paused");
    assert!(!w.sender.vcpus_paused());
    w.out
}

/// Checks a successful attempt: both sides done, memory and state equal.
pub(super) fn check_converged(o: &Outcome) {
    assert!(o.sender_done && o.receiver_done, "{o:?}");
    assert!(!o.sender_failed && !o.receiver_failed);
    let (mem, state) = o.switched.as_ref().expect("a Switch was sent");
    assert_eq!(o.restored_state.as_ref(), Some(state));
    assert!(
        &o.receiver_mem == mem,
        "receiver memory differs from the guest's at the Switch"
    );
}

pub(super) fn config(pages: u64, stop_pages: u64, max_rounds: u32) -> SenderConfig {
    SenderConfig {
        total_pages: pages,
        page_size: PAGE,
        stop_copy_bytes: stop_pages * u64::from(PAGE),
        max_rounds,
        ack_timeout_ms: 60_000,
        pause_timeout_ms: 60_000,
    }
}

/// Runs an uncut attempt and checks it (memory compared inside).
pub(super) fn converge(guest: &mut Guest, cfg: &SenderConfig, clock: &mut u64) -> Outcome {
    let o = attempt(guest, cfg, clock, None);
    check_converged(&o);
    o
}
