//! Deterministic simulation of checkpoint replication (TigerBeetle style):
//! a toy KV machine on a Primary ([`EpochGate`] + shipper), a Secondary
//! ([`Receiver`]), a link that loses, duplicates and reorders, a device
//! that writes one sector per tick, clients that see replies only from
//! released frames; then at an arbitrary tick the Primary crashes and the
//! Secondary takes over (or the Secondary dies and the Primary goes on
//! alone after winning the next generation; or the Secondary wedges: still
//! heard, it takes nothing in and acknowledges nothing, and the Primary's
//! member counts it lost by `ack_wait.rs`'s clock, then goes on alone as
//! for a dead one). A lone Primary may then take a
//! new Secondary (respawn, `respawn.rs`: a full epoch `F` and the epochs
//! after it streamed while the Primary still runs alone, then a switch
//! epoch `J` closed with [`EpochGate::close_epoch_joining`]), over a new
//! in-order connection; the join succeeds when `J`'s ack comes back, or is
//! given up at a random tick (streaming or after the switch), and is tried
//! again; and then the Primary crashes (the new Secondary takes
//! over if it heard `Paired`; a join in flight leaves nobody, the single
//! failure the pair does not survive), or the new Secondary dies too (the
//! Primary goes alone in the next generation), or the run drains
//! (`sim_join.rs`).
//!
//! Properties (always):
//! - `released_only_when_safe`: a frame of epoch e leaves only when the
//!   Secondary holds e complete (its real state, not just an ack message)
//!   and every write of epochs `<= e` is durable — or, alone, after the
//!   next generation was won and the writes are durable.
//! - `takeover_equals_primary`: the Secondary resumes from exactly the
//!   Primary's memory and machine state at the end of its last complete
//!   epoch, which is at least the last acknowledged one.
//! - `no_acknowledged_write_lost`: after the take-over's writes, every key
//!   on the device equals the resumed memory, and every reply a client saw
//!   is at or below the resumed value of its key.
//! - `writes_in_epoch_order`: the device sees one writer's writes in epoch
//!   order (asserted in `Device::tick`).
//! - `a_wedged_secondary_is_lost`: a Secondary that wedges is counted lost
//!   by the member, with its reason, within the failure timeout of the
//!   first epoch it leaves unacknowledged (no grace: the toy's epochs are
//!   tiny), and nothing of the epochs it never held leaves meanwhile.
//! - with joins: epochs closed alone (before `J`, the streamed ones
//!   included) release without a Secondary; `J` and later ones only once
//!   the new Secondary holds them; a new Secondary that takes over resumes
//!   exactly the Primary's state (the full epoch and every streamed one
//!   applied in order) and re-writes what was not durable, including the
//!   writes of the epochs before `F` that it never saw as epochs (`J`
//!   carries them).
//!
//! Sometimes (counted over all seeds, so a vacuous run fails): a frame
//! released, a take-over with writes to finish, a torn epoch refused, a
//! resend, a delta page, the Secondary lost, a wedged Secondary counted
//! lost, a join switched, a join
//! paired, a join given up while streaming and after the switch, a
//! take-over by a joined Secondary, a join's `J` carrying the writes of
//! epochs before `F`.
//!
//! Seeds: `FT_CHECKPOINT_SIM_SEEDS` (default 2000), from
//! `FT_CHECKPOINT_SIM_SEED` (default 0); a failing seed is printed.

use std::collections::BTreeMap;

use super::ack_wait::AckWait;
use super::delta_base::DeltaBase;
use super::epoch::{PageData, PAGE_SIZE};
use super::gate::{EpochGate, GateConfig, GateError, Mode};
use super::receiver::Receiver;
use super::sim_world::*;
use crate::lockstep::member::{Acks, Action, Event, Member, State};

#[path = "sim_join.rs"]
mod join;

const MAX_UNACKED: usize = 4;

/// A tick in the member's time (`Event::Tick`, `ack_wait.rs`).
const TICK_MS: u64 = 10;
/// The member's failure timeout.
const TIMEOUT_MS: u64 = 1_000;

#[derive(Default, Debug)]
struct Sometimes {
    released: u64,
    takeovers: u64,
    takeover_writes: u64,
    refused: u64,
    resends: u64,
    deltas: u64,
    secondary_lost: u64,
    wedged_lost: u64,
    joins_switched: u64,
    joins_paired: u64,
    joins_given_up: u64,
    joins_given_up_streaming: u64,
    joined_takeovers: u64,
    join_carried_writes: u64,
}

struct Params {
    crash_at: u64,
    kill_secondary: bool,
    /// With `kill_secondary`: it wedges instead of dying.
    wedge_secondary: bool,
    epoch_ticks: u64,
    request_per_mille: u64,
    get_per_mille: u64,
    chunk: usize,
    rto: u64,
}

struct World {
    rng: Rng,
    now: u64,
    gate: EpochGate,
    toy: Toy,
    /// The Primary's delta cache, of 0 to all `PAGES` pages (by the seed).
    base: DeltaBase,
    dev: Device,
    fwd: Link,
    back: Link,
    shipper: Shipper,
    /// The Primary's link's epochs waiting for an ack (`ack_wait.rs`),
    /// time in ms (`TICK_MS` a tick).
    acks: AckWait,
    rx: Option<Receiver<Vec<u8>>>,
    /// The Secondary takes no piece in (and so acknowledges nothing) but
    /// is heard.
    wedged: bool,
    /// The Primary's memory at the end of each closed epoch.
    snapshots: BTreeMap<u64, Vec<u8>>,
    /// Epochs that had disk writes.
    write_epochs: std::collections::BTreeSet<u64>,
    /// The guest wrote in the open epoch.
    wrote: bool,
    /// Replies clients saw: (key, value).
    seen: Vec<(u64, u64)>,
    next_value: u64,
    /// Epochs below this one were closed with the Primary alone and may
    /// release without a Secondary (0 while paired from the start;
    /// `u64::MAX` alone; the join's `J` while a joined Secondary is taken).
    alone_below: u64,
    /// The generation the Primary runs in.
    generation: u64,
    /// A join in progress (`sim_join.rs`).
    join: Option<join::Join>,
    /// No more client requests (draining at the end).
    quiet: bool,
    p: Params,
    st: Sometimes,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let fwd = Link::new(rng.below(80), rng.below(80), rng.below(6));
        let back = Link::new(rng.below(80), rng.below(80), rng.below(6));
        let p = Params {
            crash_at: 10 + rng.below(400),
            kill_secondary: rng.chance(250),
            // Its own stream: the other parameters stay as they were.
            wedge_secondary: Rng(seed ^ 0x3ed6_e5ec).chance(500),
            epoch_ticks: 2 + rng.below(8),
            request_per_mille: 200 + rng.below(800),
            get_per_mille: rng.below(500),
            chunk: 256 + rng.below(4096) as usize,
            rto: 10 + rng.below(20),
        };
        let delta_pages = rng.below(PAGES + 1) as usize;
        let cfg = GateConfig {
            max_dirty_pages: 1 + rng.below(PAGES),
            max_write_bytes: 512 * (1 + rng.below(8)),
        };
        let mut snapshots = BTreeMap::new();
        snapshots.insert(0, Toy::new().mem);
        World {
            rng,
            now: 0,
            gate: EpochGate::new(cfg, 1),
            toy: Toy::new(),
            base: DeltaBase::new(delta_pages * PAGE_SIZE),
            dev: Device::new(),
            fwd,
            back,
            shipper: Shipper {
                unacked: BTreeMap::new(),
                last_progress: 0,
            },
            acks: AckWait::default(),
            rx: Some(Receiver::new(1, Toy::new().mem, 0)),
            wedged: false,
            snapshots,
            seen: Vec::new(),
            write_epochs: Default::default(),
            wrote: false,
            next_value: 1,
            alone_below: 0,
            generation: 1,
            join: None,
            quiet: false,
            p,
            st: Sometimes::default(),
        }
    }

    fn release(&mut self, released: Vec<(u64, Vec<u8>)>) {
        for (e, frame) in released {
            let held = self.rx.as_ref().map_or(0, |r| r.last());
            assert!(
                e <= held || e < self.alone_below,
                "released_only_when_safe: frame of epoch {e}, Secondary holds {held}, alone below {}",
                self.alone_below
            );
            if e > held {
                assert!(
                    matches!(self.gate.mode(), Mode::Solo { generation } | Mode::Paired { generation } if generation == self.generation && generation > 1),
                    "released alone only in a generation won alone: {:?}",
                    self.gate.mode()
                );
            }
            let newest_write = self.write_epochs.range(..=e).next_back().copied();
            assert!(
                newest_write.is_none_or(|w| w <= self.dev.durable),
                "released_only_when_safe: frame of {e}, writes of {newest_write:?} not durable"
            );
            self.seen.push(parse_reply(&frame));
            self.st.released += 1;
        }
    }

    fn close_epoch(&mut self) {
        let (closed, actions) = self.gate.close_epoch();
        self.ship(closed, actions);
    }

    /// A closed epoch: its pages and machine state to the Secondary (if one
    /// is taken), the gate's actions performed.
    fn ship(&mut self, closed: super::gate::Closed, actions: Vec<super::gate::Action>) {
        // The guest's own writes of this epoch (a join's `J` also carries
        // earlier epochs' writes, which are not `J`'s).
        if std::mem::take(&mut self.wrote) {
            self.write_epochs.insert(closed.number);
        }
        let pages = self.toy.take_pages(&mut self.base);
        self.st.deltas += pages
            .iter()
            .filter(|p| matches!(p.data, PageData::Delta(_)))
            .count() as u64;
        self.snapshots.insert(closed.number, self.toy.mem.clone());
        let machine = Toy::counter(&self.toy.mem).to_le_bytes().to_vec();
        let number = closed.number;
        let pieces = self.shipper.ship(closed, pages, machine, self.p.chunk);
        if self.rx.is_some() {
            let bytes = pieces.iter().map(Vec::len).sum();
            self.acks.shipped(number, bytes, self.now * TICK_MS);
        }
        if self.shipper.unacked.len() == 1 {
            self.shipper.last_progress = self.now;
        }
        if self.rx.is_some() {
            for piece in pieces {
                self.fwd.send(&mut self.rng, self.now, Msg::Piece(piece));
            }
        } else {
            self.shipper.unacked.clear();
        }
        let r = perform(actions, &mut self.dev);
        self.release(r);
    }

    /// One tick of the paired (or solo) system.
    fn tick(&mut self) {
        self.now += 1;
        for m in self.fwd.due(self.now) {
            let (Msg::Piece(b), Some(rx), false) = (m, self.rx.as_mut(), self.wedged) else {
                continue;
            };
            match rx.on_piece(&b) {
                Ok(Some(e)) => self.back.send(&mut self.rng, self.now, Msg::Ack(e)),
                Ok(None) => {}
                Err(_) => self.st.refused += 1,
            }
        }
        for m in self.back.due(self.now) {
            let Msg::Ack(e) = m else { continue };
            if self.rx.is_none() {
                continue;
            }
            self.acks.acked(e, self.now * TICK_MS);
            match self.gate.on_ack(e) {
                Ok(actions) => {
                    self.shipper.on_ack(e, self.now);
                    let r = perform(actions, &mut self.dev);
                    self.release(r);
                }
                // A join streaming while the gate runs alone: the ack only
                // paces the switch (the Primary's link records it).
                Err(GateError::AckNotPaired {
                    mode: Mode::Solo { .. },
                }) => self.shipper.on_ack(e, self.now),
                Err(_) => {}
            }
        }
        self.join_tick();
        if let Some(e) = self.dev.tick() {
            let actions = self
                .gate
                .on_durable(e)
                .expect("the device reports what was submitted");
            let r = perform(actions, &mut self.dev);
            self.release(r);
        }
        if !self.quiet
            && self.shipper.unacked.len() < MAX_UNACKED
            && self.rng.chance(self.p.request_per_mille)
        {
            let key = self.rng.below(KEYS);
            let req = if self.rng.chance(self.p.get_per_mille) {
                Request::Get { key }
            } else {
                self.next_value += 1;
                self.wrote = true;
                Request::Put {
                    key,
                    value: self.next_value,
                }
            };
            self.toy.handle(req, &mut self.gate, &self.dev);
        }
        let early = self.gate.end_early(self.toy.dirty.len() as u64).is_some();
        if (early || self.now.is_multiple_of(self.p.epoch_ticks))
            && self.shipper.unacked.len() < MAX_UNACKED
        {
            self.close_epoch();
        }
        if self.rx.is_some()
            && !self.shipper.unacked.is_empty()
            && self.now - self.shipper.last_progress > self.p.rto
        {
            self.st.resends += 1;
            self.shipper.last_progress = self.now;
            let all: Vec<Vec<u8>> = self.shipper.unacked.values().flatten().cloned().collect();
            for piece in all {
                self.fwd.send(&mut self.rng, self.now, Msg::Piece(piece));
            }
        }
    }

    /// The Primary crashed: the Secondary takes over and finishes the writes.
    fn fail_over(mut self) -> Sometimes {
        let acked = self.gate.progress().0;
        // The crashed Primary's in-flight writes stop where they are.
        self.dev.busy = None;
        let t = self.rx.take().expect("the Secondary is alive").take_over();
        assert!(
            t.epoch >= acked,
            "takeover_equals_primary: holds {} < acked {acked}",
            t.epoch
        );
        assert!(
            t.memory == self.snapshots[&t.epoch],
            "takeover_equals_primary: memory at epoch {}",
            t.epoch
        );
        if t.epoch > 0 {
            let counter = Toy::counter(&self.snapshots[&t.epoch]);
            assert_eq!(
                t.machine,
                counter.to_le_bytes().to_vec(),
                "takeover_equals_primary: machine"
            );
        }
        self.st.takeovers += 1;
        if self.alone_below > 0 {
            self.st.joined_takeovers += 1;
        }
        self.st.takeover_writes += t.writes.len() as u64;
        for w in &t.writes {
            self.dev.write(w);
        }
        self.check_consistent(&t.memory);
        self.st
    }

    /// The Secondary died: the Primary loses it, races (some ticks), wins
    /// the next generation and goes on alone; then maybe takes a new
    /// Secondary (`sim_join.rs`), or at the end its writes drain.
    fn lose_secondary(mut self) -> Sometimes {
        self.go_alone();
        for _ in 0..self.rng.below(100) {
            self.tick();
        }
        if self.rng.chance(700) {
            return self.joins();
        }
        self.drain()
    }

    /// The Secondary wedges: heard (its keep-alives) but taking nothing in,
    /// it acknowledges nothing. The Primary's member counts it lost once no
    /// epoch was acknowledged for the failure timeout while one waited
    /// (`ack_wait.rs`): at the latest the timeout after the next epoch is
    /// shipped or the last ack in flight arrives. Then as for a dead one.
    fn wedge_secondary(mut self) -> Sometimes {
        let at = self.now;
        self.wedged = true;
        let mut m = Member::primary("kv", "host-b", self.generation, true, TIMEOUT_MS)
            .acknowledging(Acks::Epochs);
        let max_delay = self.back.max_delay.max(self.fwd.max_delay) + 1;
        let bound = at + self.p.epoch_ticks + max_delay + TIMEOUT_MS / TICK_MS + 1;
        loop {
            self.tick();
            let (unacked_ms, unacked_grace_ms) = self.acks.unacked(self.now * TICK_MS);
            let a = m.on_event(Event::Tick {
                now_ms: self.now * TICK_MS,
                silent_ms: 0,
                unacked_ms,
                unacked_grace_ms,
            });
            if a.contains(&Action::Acquire {
                generation: self.generation + 1,
            }) {
                break;
            }
            assert!(
                self.now <= bound,
                "a_wedged_secondary_is_lost: wedged at tick {at}, not lost by {bound} \
                 (waiting {:?}, unacked {unacked_ms} ms)",
                self.acks.waiting().collect::<Vec<_>>()
            );
        }
        let State::Racing { why, .. } = m.state() else {
            panic!("a_wedged_secondary_is_lost: {:?}", m.state());
        };
        assert!(
            why.starts_with("secondary host-b heard but acknowledged no epoch for "),
            "a_wedged_secondary_is_lost: {why}"
        );
        self.st.wedged_lost += 1;
        self.lose_secondary()
    }

    /// The Secondary is gone: hold while racing, then run alone in the next
    /// generation.
    fn go_alone(&mut self) {
        self.rx = None;
        self.gate.on_secondary_lost().expect("paired");
        self.st.secondary_lost += 1;
        let released_before = self.st.released;
        for _ in 0..self.rng.below(30) {
            self.tick();
        }
        assert_eq!(
            self.st.released, released_before,
            "nothing leaves while racing"
        );
        self.alone_below = u64::MAX;
        self.shipper.unacked.clear();
        self.generation += 1;
        let actions = self
            .gate
            .on_generation_won(self.generation)
            .expect("lost in the previous generation");
        let r = perform(actions, &mut self.dev);
        self.release(r);
    }

    /// No more requests: every closed epoch's writes reach the device
    /// (acknowledged first if a Secondary is taken), then the device must
    /// equal the Primary's memory.
    fn drain(mut self) -> Sometimes {
        self.quiet = true;
        self.close_epoch();
        // Every write is in an epoch up to this one (no requests now; the
        // empty epochs still closing after it carry none).
        let last = self.gate.current() - 1;
        let mut ticks = 0;
        while self.dev.busy.is_some() || self.gate.progress().2 < last {
            self.tick();
            ticks += 1;
            assert!(
                ticks < 100_000,
                "drain: the writes never became durable: gate {:?} {:?} current {} rx {:?} join {:?} unacked {:?}",
                self.gate.mode(),
                self.gate.progress(),
                self.gate.current(),
                self.rx.as_ref().map(|r| r.last()),
                self.join.as_ref().map(|j| j.j()),
                self.shipper.unacked.keys().collect::<Vec<_>>(),
            );
        }
        let mem = self.toy.mem.clone();
        self.check_consistent(&mem);
        self.st
    }

    fn check_consistent(&self, mem: &[u8]) {
        for k in 0..KEYS {
            assert_eq!(
                self.dev.value(k),
                Toy::value_in(mem, k),
                "no_acknowledged_write_lost: key {k} on the device"
            );
        }
        for &(k, v) in &self.seen {
            let now = Toy::value_in(mem, k);
            assert!(
                now >= v,
                "no_acknowledged_write_lost: a client saw {k}={v}, resumed {now}"
            );
        }
    }
}

fn run(seed: u64) -> Sometimes {
    let mut w = World::new(seed);
    while w.now < w.p.crash_at {
        w.tick();
    }
    if w.p.kill_secondary && w.p.wedge_secondary {
        w.wedge_secondary()
    } else if w.p.kill_secondary {
        w.lose_secondary()
    } else {
        w.fail_over()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn checkpoint_sim_seeds() {
    let first = env("FT_CHECKPOINT_SIM_SEED", 0);
    let seeds = env("FT_CHECKPOINT_SIM_SEEDS", 2000);
    let mut total = Sometimes::default();
    for seed in first..first + seeds {
        let s = std::panic::catch_unwind(|| run(seed)).unwrap_or_else(|e| {
            panic!("checkpoint sim seed {seed} failed (rerun: FT_CHECKPOINT_SIM_SEED={seed} FT_CHECKPOINT_SIM_SEEDS=1): {e:?}")
        });
        total.released += s.released;
        total.takeovers += s.takeovers;
        total.takeover_writes += s.takeover_writes;
        total.refused += s.refused;
        total.resends += s.resends;
        total.deltas += s.deltas;
        total.secondary_lost += s.secondary_lost;
        total.wedged_lost += s.wedged_lost;
        total.joins_switched += s.joins_switched;
        total.joins_paired += s.joins_paired;
        total.joins_given_up += s.joins_given_up;
        total.joins_given_up_streaming += s.joins_given_up_streaming;
        total.joined_takeovers += s.joined_takeovers;
        total.join_carried_writes += s.join_carried_writes;
    }
    eprintln!("checkpoint sim: {seeds} seeds from {first}: {total:?}");
    if seeds >= 100 {
        let t = &total;
        for (name, n) in [
            ("released", t.released),
            ("takeovers", t.takeovers),
            ("takeover_writes", t.takeover_writes),
            ("refused", t.refused),
            ("resends", t.resends),
            ("deltas", t.deltas),
            ("secondary_lost", t.secondary_lost),
            ("wedged_lost", t.wedged_lost),
            ("joins_switched", t.joins_switched),
            ("joins_paired", t.joins_paired),
            ("joins_given_up", t.joins_given_up),
            ("joins_given_up_streaming", t.joins_given_up_streaming),
            ("joined_takeovers", t.joined_takeovers),
            ("join_carried_writes", t.join_carried_writes),
        ] {
            assert!(n > 0, "sometimes: {name} never happened in {seeds} seeds");
        }
    }
}
