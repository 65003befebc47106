//! A deterministic seeded simulation of a live state transfer: a [`Sender`]
//! and a [`Receiver`] joined by an in-memory, lossless, ordered pipe carrying
//! the real encoded messages, and a toy guest that writes random pages
//! (mostly in a hot set) while it runs: while pages are being sent and
//! while messages are in flight, never while paused.
//!
//! Properties: every transfer converges with the receiver's memory equal to
//! the guest's at the Switch and the Switch's state handed over; a guest
//! writing faster than the link is stopped (not shrinking / max rounds) and
//! still ends consistent; a cut at a random message fails both sides
//! (neither Done unless the Switch got through) and resumes the guest, and a
//! retry after the backoff converges. Outcomes are counted so that a vacuous
//! run fails.

use std::collections::{BTreeSet, VecDeque};

use super::backoff::Backoff;
use super::message::{decode, encode, Message, Page};
use super::receiver::{sha256, Expected, Receiver, RxAction, VecMemory};
use super::sender::{Action, Event, Sender, SenderConfig, StopReason};

const PAGE: u32 = 64;
/// Pages per Pages message in the simulation (the real driver uses
/// `message::pages_per_message`), so rounds take several messages.
const PAGES_PER_MSG: usize = 8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The toy guest: memory, a dirty log, and a write rate.
struct Guest {
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
    fn new(
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
    fn run(&mut self, micros: u64) {
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
struct Outcome {
    sender_done: bool,
    sender_failed: bool,
    receiver_done: bool,
    receiver_failed: bool,
    /// Guest memory and state at the Switch.
    switched: Option<(Vec<u8>, Vec<u8>)>,
    restored_state: Option<Vec<u8>>,
    receiver_mem: Vec<u8>,
    messages: usize,
    bytes: u64,
    rounds: u32,
    final_round_pages: u64,
    stop: Option<StopReason>,
}

/// One transfer attempt; `cut_at` cuts the link before that message is
/// delivered.
fn attempt(
    guest: &mut Guest,
    cfg: &SenderConfig,
    clock_us: &mut u64,
    cut_at: Option<usize>,
) -> Outcome {
    let bw_bytes_per_ms = 16 * 1024;
    let latency_us = 200;
    let mut sender = Sender::new(cfg.clone());
    let exp = Expected {
        vm: "sim".into(),
        memory_bytes: guest.pages * u64::from(PAGE),
        page_size: PAGE,
        platform_sha256: [3; 32],
    };
    let mut receiver = Receiver::new(exp.clone(), VecMemory::new(exp.memory_bytes, PAGE));
    // Messages with the time they were sent (they arrive `latency_us` later).
    let (mut to_rx, mut to_tx) = (
        VecDeque::<(Vec<u8>, u64)>::new(),
        VecDeque::<(Vec<u8>, u64)>::new(),
    );
    let mut out = Outcome::default();
    let mut actions: VecDeque<Action> = sender
        .on_event(Event::Start {
            now_ms: *clock_us / 1000,
        })
        .into();
    let send = |q: &mut VecDeque<(Vec<u8>, u64)>,
                m: &Message,
                guest: &mut Guest,
                clock: &mut u64,
                out: &mut Outcome| {
        let b = encode(m).expect("sim messages encode");
        let us = b.len() as u64 * 1000 / bw_bytes_per_ms;
        out.bytes += b.len() as u64;
        *clock += us;
        guest.run(us);
        q.push_back((b, *clock));
    };
    loop {
        while let Some(a) = actions.pop_front() {
            let more = match a {
                Action::SendOffer => {
                    let m = Message::Offer {
                        vm: exp.vm.clone(),
                        generation: 1,
                        memory_bytes: exp.memory_bytes,
                        page_size: PAGE,
                        platform_sha256: exp.platform_sha256,
                    };
                    send(&mut to_rx, &m, guest, clock_us, &mut out);
                    vec![]
                }
                Action::StartDirtyLog => {
                    guest.tracking = true;
                    guest.dirty.clear();
                    vec![]
                }
                Action::ReadDirtyLog => {
                    let d = std::mem::take(&mut guest.dirty).into_iter().collect();
                    sender.on_event(Event::DirtyPages(d))
                }
                Action::SendPages { round, gfns } => {
                    // Pages are read as they are sent; the guest runs meanwhile.
                    for chunk in gfns.chunks(PAGES_PER_MSG) {
                        let pages = chunk
                            .iter()
                            .map(|&gfn| Page {
                                gfn,
                                bytes: guest.page(gfn),
                            })
                            .collect();
                        send(
                            &mut to_rx,
                            &Message::Pages { round, pages },
                            guest,
                            clock_us,
                            &mut out,
                        );
                    }
                    vec![]
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
                    send(&mut to_rx, &m, guest, clock_us, &mut out);
                    vec![]
                }
                Action::PauseVcpus { .. } => {
                    guest.paused = true;
                    vec![]
                }
                Action::SendSwitch { round } => {
                    assert!(guest.paused, "Switch while the guest runs");
                    let state = guest.exits.to_le_bytes().to_vec();
                    let memory_sha256 = sha256(&guest.mem);
                    out.switched = Some((guest.mem.clone(), state.clone()));
                    let m = Message::Switch {
                        round,
                        state,
                        memory_sha256,
                        log_start_exit: guest.exits,
                    };
                    send(&mut to_rx, &m, guest, clock_us, &mut out);
                    sender.on_event(Event::SwitchSent { memory_sha256 })
                }
                Action::SendAbort { reason } => {
                    send(
                        &mut to_rx,
                        &Message::Abort { reason },
                        guest,
                        clock_us,
                        &mut out,
                    );
                    vec![]
                }
                Action::ResumeVcpus => {
                    guest.paused = false;
                    vec![]
                }
                Action::Done => {
                    out.sender_done = true;
                    vec![]
                }
                Action::Failed { .. } => {
                    out.sender_failed = true;
                    vec![]
                }
            };
            actions.extend(more);
        }
        actions.extend(sender.on_event(Event::Tick {
            now_ms: *clock_us / 1000,
        }));
        if !actions.is_empty() {
            continue;
        }
        // Deliver the next message, receiver-bound first (both directions
        // stay ordered).
        let (to_receiver, (bytes, sent_us)) = match (to_rx.pop_front(), to_tx.pop_front()) {
            (Some(b), back) => {
                if let Some(back) = back {
                    to_tx.push_front(back);
                }
                (true, b)
            }
            (None, Some(b)) => (false, b),
            (None, None) => break,
        };
        if cut_at == Some(out.messages) {
            actions.extend(sender.on_event(Event::LinkLost {
                detail: "cut".into(),
            }));
            for a in receiver.on_cut("cut") {
                out.receiver_failed |= matches!(a, RxAction::Failed(_));
            }
            to_rx.clear();
            to_tx.clear();
            // The sender's last actions (resume, failed) are performed; what it
            // would send goes nowhere.
            continue;
        }
        out.messages += 1;
        let arrive_us = sent_us + latency_us;
        if arrive_us > *clock_us {
            guest.run(arrive_us - *clock_us);
            *clock_us = arrive_us;
        }
        let m = decode(&bytes).expect("sim messages decode");
        if to_receiver {
            for a in receiver.on_message(m) {
                match a {
                    RxAction::Send(m) => {
                        let b = encode(&m).expect("receiver messages encode");
                        to_tx.push_back((b, *clock_us));
                    }
                    RxAction::Restore { state, .. } => out.restored_state = Some(state),
                    RxAction::Done => out.receiver_done = true,
                    RxAction::Failed(_) => out.receiver_failed = true,
                    RxAction::Rejected(e) => panic!("receiver rejected a message: {e}"),
                }
            }
        } else {
            let ev = match m {
                Message::Accept => Event::PeerAccepted,
                Message::Refuse { reason } => Event::PeerRefused { reason },
                Message::RoundAck { round } => Event::RoundAcked(round),
                Message::Restored { memory_sha256 } => Event::PeerRestored { memory_sha256 },
                Message::Abort { reason } => Event::PeerAborted { reason },
                other => panic!("sender got {other:?}"),
            };
            actions.extend(sender.on_event(ev));
        }
    }
    out.receiver_mem = receiver.memory().bytes.clone();
    let st = sender.stats();
    (out.rounds, out.final_round_pages, out.stop) =
        (st.rounds, st.final_round_pages, st.stop_reason);
    assert!(!guest.paused, "the guest is left paused");
    assert!(!sender.vcpus_paused());
    out
}

/// Checks a successful attempt: both sides done, memory and state equal.
fn check_converged(o: &Outcome) {
    assert!(o.sender_done && o.receiver_done, "{o:?}");
    assert!(!o.sender_failed && !o.receiver_failed);
    let (mem, state) = o.switched.as_ref().expect("a Switch was sent");
    assert_eq!(o.restored_state.as_ref(), Some(state));
    assert!(
        &o.receiver_mem == mem,
        "receiver memory differs from the guest's at the Switch"
    );
}

fn config(pages: u64, stop_pages: u64, max_rounds: u32) -> SenderConfig {
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
fn converge(guest: &mut Guest, cfg: &SenderConfig, clock: &mut u64) -> Outcome {
    let o = attempt(guest, cfg, clock, None);
    check_converged(&o);
    o
}

#[derive(Default, Debug)]
struct Totals {
    converged: u64,
    rounds: u64,
    max_rounds: u32,
    bytes: u64,
    final_pages: u64,
    max_final_pages: u64,
    reasons: [u64; 3],
}

impl Totals {
    fn add(&mut self, o: &Outcome) {
        self.converged += 1;
        self.rounds += u64::from(o.rounds);
        self.max_rounds = self.max_rounds.max(o.rounds);
        self.bytes += o.bytes;
        self.final_pages += o.final_round_pages;
        self.max_final_pages = self.max_final_pages.max(o.final_round_pages);
        let i = match o.stop {
            Some(StopReason::SmallEnough) => 0,
            Some(StopReason::NotShrinking) => 1,
            Some(StopReason::MaxRounds) => 2,
            None => unreachable!("a converged transfer stopped for a reason"),
        };
        self.reasons[i] += 1;
    }

    fn report(&self, name: &str) {
        let n = self.converged.max(1);
        println!(
            "{name}: {} converged; rounds avg {:.2} max {}; bytes avg {}; final round pages avg {:.1} max {}; \
             stop small/not-shrinking/max-rounds {:?}",
            self.converged,
            self.rounds as f64 / n as f64,
            self.max_rounds,
            self.bytes / n,
            self.final_pages as f64 / n as f64,
            self.max_final_pages,
            self.reasons
        );
    }
}

const SEEDS: u64 = 1000;

#[test]
fn transfers_converge_with_equal_memory() {
    let mut t = Totals::default();
    for seed in 0..SEEDS {
        let mut rng = Rng(seed);
        let pages = 64 + rng.below(448);
        let hot = 1 + rng.below(pages / 4);
        // Up to 100 writes/ms; the link moves ~215 pages/ms.
        let rate = rng.below(100_000);
        let mut g = Guest::new(&mut rng, pages, hot, rate, 100);
        let cfg = config(pages, 4 + rng.below(12), 10);
        let mut clock = 0;
        let o = converge(&mut g, &cfg, &mut clock);
        assert!(o.rounds <= cfg.max_rounds + 1, "seed {seed}: {o:?}");
        t.add(&o);
    }
    t.report("normal guest");
    assert_eq!(t.converged, SEEDS);
    assert!(
        t.reasons[0] > 0,
        "some transfers converge below the threshold"
    );
    assert!(
        t.max_rounds > 2,
        "some transfers need several pre-copy rounds"
    );
}

#[test]
fn a_guest_faster_than_the_link_is_stopped_and_ends_consistent() {
    let mut t = Totals::default();
    for seed in 0..SEEDS {
        let mut rng = Rng(seed ^ 0xfa57);
        let pages = 256 + rng.below(256);
        let hot = pages / 8 + rng.below(pages / 8);
        // 200-400 writes/ms (the link moves ~215 pages/ms), half of them
        // anywhere: the dirty set shrinks towards the hot set but stays over
        // the threshold.
        let rate = 200_000 + rng.below(200_000);
        let mut g = Guest::new(&mut rng, pages, hot, rate, 2);
        let cfg = config(pages, 8, 3);
        let mut clock = 0;
        let o = converge(&mut g, &cfg, &mut clock);
        assert_ne!(o.stop, Some(StopReason::SmallEnough), "seed {seed}");
        assert!(o.rounds <= cfg.max_rounds + 1, "seed {seed}: {o:?}");
        t.add(&o);
    }
    t.report("fast guest");
    assert_eq!(t.converged, SEEDS);
    assert!(
        t.reasons[1] > 0,
        "some fast guests stop when the dirty set does not shrink"
    );
    assert!(
        t.reasons[2] > 0,
        "some fast guests are stopped at the max rounds"
    );
}

#[test]
fn a_cut_fails_both_sides_and_a_retry_converges() {
    let (mut cut_clean, mut cut_after_switch, mut retried) = (0u64, 0u64, 0u64);
    for seed in 0..SEEDS {
        let mut rng = Rng(seed ^ 0xc07);
        let pages = 64 + rng.below(192);
        let hot = 1 + rng.below(pages / 8);
        let rate = rng.below(20_000);
        let guest_seed = rng.next();
        let cfg = config(pages, hot + 8, 8);
        // An uncut run of the same guest tells how many messages there are.
        let mut g = Guest::new(&mut Rng(guest_seed), pages, hot, rate, 100);
        let total = converge(&mut g, &cfg, &mut 0).messages as u64;
        let cut = rng.below(total) as usize;
        let mut g = Guest::new(&mut Rng(guest_seed), pages, hot, rate, 100);
        let mut clock = 0;
        let o = attempt(&mut g, &cfg, &mut clock, Some(cut));
        assert!(
            o.sender_failed && !o.sender_done,
            "seed {seed} cut {cut}: {o:?}"
        );
        if o.receiver_done {
            // Only the Restored answer was lost: the integration discards
            // that Secondary, as the Primary did not start logging to it.
            assert_eq!(cut, total as usize - 1, "seed {seed}");
            cut_after_switch += 1;
        } else {
            assert!(o.receiver_failed, "seed {seed} cut {cut}: {o:?}");
            cut_clean += 1;
        }
        let mut backoff = Backoff::with_limits(50, 5_000, seed);
        let mut delay_ms = 0;
        for _ in 0..=rng.below(3) {
            delay_ms = backoff.on_failure();
        }
        assert!((25..=5_000).contains(&delay_ms), "seed {seed}: {delay_ms}");
        clock += delay_ms * 1000;
        g.run(delay_ms * 1000);
        converge(&mut g, &cfg, &mut clock);
        backoff.on_success();
        assert_eq!(backoff.failures(), 0);
        retried += 1;
    }
    println!("cuts: {cut_clean} failed both sides, {cut_after_switch} lost only Restored; {retried} retries converged");
    assert!(cut_clean > SEEDS / 2, "most cuts come before the Switch");
    assert_eq!(retried, SEEDS);
}
