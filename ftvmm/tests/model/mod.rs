//! The state, actions and transitions of the member model (`member_model.rs`
//! says what is modelled and why): the real [`Member`] per host, a decide-once
//! register per generation for Disk Paxos, logging channels between a Primary
//! and a Secondary chosen at run time (`channel.rs`), joins by live transfer
//! (`join.rs`), and faults as nondeterministic actions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ftvmm::lockstep::member::{Event, Gate, Member, State};

mod actions;
mod channel;
pub mod check;
mod join;
mod step;

pub use channel::{Body, Msg};
pub use join::Xfer;

/// One time unit of the model, in the member's milliseconds.
pub const UNIT_MS: u64 = 1_500;
/// The failure timeout: two units (so is `HAND_OVER_MS`).
pub const TIMEOUT_MS: u64 = 2 * UNIT_MS;
const _: () = assert!(ftvmm::lockstep::member::HAND_OVER_MS == TIMEOUT_MS);
/// An ack is fresh while the batch it echoes is younger than the timeout.
const FRESH_UNITS: u8 = 2;

pub const NAMES: [&str; 3] = ["host-a", "host-b", "host-c"];

/// How far the checker explores.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// 2 (a Primary and a Secondary) or 3 (host-c may start the VM).
    pub members: usize,
    /// Crashes, freezes, grant withdrawals, link failures, divergence,
    /// duplicates and host-c's start, together.
    pub faults: u8,
    /// Time units that may pass (each is half the failure timeout).
    pub time: u8,
    /// Messages in flight on the logging channel at once.
    pub in_flight: usize,
    /// States with a generation above this are not explored further.
    pub max_gen: u8,
    /// Joins by live transfer that may begin (a crashed host may reboot
    /// empty only while one may still follow).
    pub joins: u8,
    /// With 3 members: host-c may start the VM (else it only joins).
    pub c_starts: bool,
    /// Also check that a paired Primary always has a channel to its
    /// Secondary (a liveness claim: member_model.rs, the stale join).
    pub check_stuck: bool,
}

/// The real member, compared and hashed by its full `Debug` form (it has
/// private fields: the generation it acted in, its clock, its grant),
/// kept up to date in `key`.
#[derive(Clone)]
pub struct Mem {
    pub m: Member,
    key: String,
}
impl Mem {
    fn new(m: Member) -> Self {
        let key = format!("{m:?}");
        Mem { m, key }
    }
}
impl fmt::Debug for Mem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.m.state())
    }
}
impl PartialEq for Mem {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Mem {}
impl Hash for Mem {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key.hash(h)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Run {
    Up,
    Crashed,
    /// Frozen since time `since`: receives nothing, does nothing; its clock
    /// runs (a clock-stopping freeze is the residual of design §3).
    Frozen {
        since: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// `None`: host-c has not started the VM (yet).
    pub m: Option<Mem>,
    pub run: Run,
    /// The gate as the driver applied it (`Gate` is not `Hash`: 0 held,
    /// 1 by acks, 2 open).
    pub gate: u8,
    /// The host-wide output grant as the driver checks it.
    pub grant: bool,
    /// The grant lapsed during a freeze: `Grant(Lapsed)` comes first at thaw.
    pub lapsed: bool,
    /// The logging channel: open or not, its id (0 is the power-on pair's,
    /// join `k` opens channel `k`) and the node at its other end.
    pub link_open: bool,
    pub chan: u8,
    pub peer: u8,
    /// A copy restored by live transfer in generation `g` that has not seen
    /// `Paired { g }` yet: no member, never races (design §11).
    pub joining: Option<u8>,
    /// This member became a Secondary by a join.
    pub joined: bool,
    /// The member loop's incarnation (a reboot, or a join replacing a
    /// halted member, starts a new one): fencing answers to an older one
    /// are never delivered, though its proposals can still be decided.
    pub inc: u8,
    pub vcpu_stopped: bool,
    /// When this member last heard its peer, and last ticked.
    pub heard: u8,
    pub ticked: u8,
    /// Newest batch stamp a Secondary received (its acks echo it).
    pub newest: u8,
    /// Bit `g`: this member released output in generation `g`.
    pub released: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ans {
    Won,
    Lost(u8),
    Superseded(u8),
}

/// Violations noticed at a transition (checked by `always` properties).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// Output through an open gate (nobody vouches) in `g` after output in a later one.
    pub stale_open: bool,
    /// An ack released output in a generation other than the one its sender followed.
    pub ack_other_gen: bool,
    /// The gate let output out while the member acts in no generation.
    pub unowned_release: bool,
    /// Not a violation: an ack released output in `g` after output in a
    /// later generation (its sender had acked, so replayed, those records).
    pub late_vouched: bool,
    /// Not a violation: a paired Primary was asked to leave its host
    /// (`Act::Leave`).
    pub left_host: bool,
    /// Two members (hosts, or incarnations of one host) released output
    /// in the same generation.
    pub two_releasers: bool,
    /// `Member::on_event` panicked (one of its asserted invariants).
    pub member_assert: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sys {
    pub now: u8,
    pub faults: u8,
    pub nodes: Vec<Node>,
    /// Disk Paxos: generation -> owner, decided once.
    pub register: BTreeMap<u8, u8>,
    /// `Acquire` asked, not decided yet: (who, its incarnation, generation).
    pub asks: BTreeSet<(u8, u8, u8)>,
    /// Decided, the answer not delivered yet.
    pub answers: BTreeSet<(u8, u8, Ans)>,
    /// The logging channels: what is in flight (order is not kept; a second
    /// copy of a message in flight is the `Duplicate` fault instead).
    pub net: BTreeSet<Msg>,
    /// The latest generation anyone released output in.
    pub out_max: u8,
    /// Who released output in each generation: (host, incarnation).
    pub releasers: BTreeMap<u8, (u8, u8)>,
    /// host-c asked for a generation to start the VM (it tries once).
    pub c_tried: bool,
    /// Joins begun (join `k` runs on channel `k`).
    pub joins: u8,
    /// A transfer whose target restored, waiting for the Primary to pair.
    pub xfer: Option<Xfer>,
    pub flags: Flags,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Act {
    Deliver(Msg),
    Lose(Msg),
    Duplicate(Msg),
    SendBatch(usize),
    Tick(usize),
    TimePasses,
    Decide(u8, u8, u8),
    Answer(u8, u8, Ans),
    Crash(usize),
    Freeze(usize),
    Thaw(usize),
    Withdraw(usize),
    Restore(usize),
    LinkFails(usize),
    Diverge(usize),
    ReplayDone(usize),
    AllAcked(usize),
    /// The keeper finds the paired Primary's host cannot serve the VM
    /// (its VM network cut) and asks it to hand over (`LeaveHost`).
    Leave(usize),
    Depose(usize),
    Emit(usize),
    StartC,
    /// Live transfer from the lone Primary `.0` to the empty host `.1`, up
    /// to the target's `Restored`.
    Join(usize, usize),
    /// The Primary of the pending transfer takes `Restored`: its member is
    /// fed `SecondaryJoined`; `Paired` or `Abort` goes to the target.
    Pair,
    /// A crashed host boots again, with no member (joinable).
    Reboot(usize),
}

pub fn gate_code(g: Gate) -> u8 {
    match g {
        Gate::Held => 0,
        Gate::ByAcks => 1,
        Gate::Open => 2,
    }
}

impl Node {
    /// A power-on member (its link on channel 0 to `peer`), or an empty host.
    fn new(m: Option<Member>, peer: u8) -> Self {
        let gate = m.as_ref().map_or(0, |m| gate_code(m.initial_gate()));
        Node {
            link_open: m.is_some(),
            chan: 0,
            peer,
            joining: None,
            joined: false,
            inc: 0,
            m: m.map(Mem::new),
            run: Run::Up,
            gate,
            grant: true,
            lapsed: false,
            vcpu_stopped: false,
            heard: 0,
            ticked: 0,
            newest: 0,
            released: 0,
        }
    }
    /// A host with no member (booted again, or its copy discarded).
    fn empty(inc: u8) -> Self {
        Node {
            inc,
            ..Node::new(None, 0)
        }
    }
    pub fn member(&self) -> Option<&Member> {
        self.m.as_ref().map(|m| &m.m)
    }
    /// Up and running a member that has not halted.
    pub fn active(&self) -> bool {
        self.run == Run::Up && self.member().is_some_and(|m| !m.is_halted())
    }
    pub fn state(&self) -> Option<&State> {
        self.member().map(|m| m.state())
    }
}

impl Sys {
    pub fn initial(b: &Bounds) -> Self {
        let p = Member::primary("kv", NAMES[1], 1, true, TIMEOUT_MS);
        let s = Member::secondary("kv", NAMES[0], 1, TIMEOUT_MS);
        let mut nodes = vec![Node::new(Some(p), 1), Node::new(Some(s), 0)];
        if b.members == 3 {
            nodes.push(Node::new(None, 0));
        }
        Sys {
            now: 0,
            faults: 0,
            nodes,
            register: BTreeMap::from([(1, 0)]),
            asks: BTreeSet::new(),
            answers: BTreeSet::new(),
            net: BTreeSet::new(),
            out_max: 0,
            releasers: BTreeMap::new(),
            c_tried: false,
            joins: 0,
            xfer: None,
            flags: Flags::default(),
        }
    }

    /// Feeds one event to the real member and performs its actions.
    pub fn feed(&mut self, b: &Bounds, i: usize, ev: Event) {
        let Some(m) = self.nodes[i].m.as_mut() else {
            return;
        };
        let r = catch_unwind(AssertUnwindSafe(|| m.m.on_event(ev.clone())));
        m.key = format!("{:?}", m.m);
        let actions = match r {
            Ok(a) => a,
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.flags.member_assert = Some(format!("{}: {ev:?}: {why}", NAMES[i]));
                return;
            }
        };
        for a in actions {
            self.perform(b, i, a);
        }
    }

    /// Output leaves member `i`, released by an ack (`ack_gen`) or an open gate.
    fn release(&mut self, i: usize, ack_gen: Option<u8>) {
        let Some(g) = self.nodes[i].member().and_then(|m| m.acting_generation()) else {
            self.flags.unowned_release = true;
            return;
        };
        let g = g as u8;
        match ack_gen {
            Some(a) if a != g => self.flags.ack_other_gen = true,
            Some(_) if g < self.out_max => self.flags.late_vouched = true,
            Some(_) => {}
            None if g < self.out_max => self.flags.stale_open = true,
            None => {}
        }
        let me = (i as u8, self.nodes[i].inc);
        if *self.releasers.entry(g).or_insert(me) != me {
            self.flags.two_releasers = true;
        }
        self.nodes[i].released |= 1 << g;
        self.out_max = self.out_max.max(g);
    }

    /// What fencing answers `Acquire(gen)` from `who` (the sim's oracle).
    fn decide(&mut self, who: u8, gen: u8) -> Ans {
        if let Some((&later, _)) = self.register.range(gen + 1..).next() {
            if !self.register.contains_key(&gen) {
                return Ans::Superseded(later);
            }
        }
        let owner = *self.register.entry(gen).or_insert(who);
        if owner == who {
            Ans::Won
        } else {
            Ans::Lost(owner)
        }
    }

    /// host-c may start only if the owner of the newest generation is gone
    /// (crashed, halted, or frozen past its lease: not live and publishing).
    fn c_may_start(&self) -> bool {
        let Some((_, &owner)) = self.register.iter().next_back() else {
            return false;
        };
        let o = &self.nodes[owner as usize];
        let gone = match o.run {
            Run::Crashed => true,
            Run::Frozen { since } => self.now - since >= FRESH_UNITS,
            Run::Up => o.member().is_none_or(|m| m.is_halted()),
        };
        // Design §1 "Publication": a host besides the owner that publishes
        // the VM (a Secondary draining or claiming) and whose lease is not
        // expired holds it; host-c does not cold-start it meanwhile (chaos
        // seed 105).
        let claimed = self.nodes.iter().enumerate().any(|(i, n)| {
            i != owner as usize
                && i != 2
                && n.member().is_some_and(|m| m.published_generation() > 0)
                && match n.run {
                    Run::Crashed => false,
                    Run::Frozen { since } => self.now - since < FRESH_UNITS,
                    Run::Up => true,
                }
        });
        gone && !claimed && owner != 2
    }

    /// Whether a later generation than `i` acts in is owned by another host.
    fn deposer(&self, i: usize) -> Option<(u8, u8)> {
        let m = self.nodes[i].member()?;
        // Fencing watches what the host runs or acquires (its publication):
        // a claimer of `g + 1` is deposed by a generation after that.
        let mine = match m.state() {
            State::Following { .. } => return None,
            State::Draining { g, .. } | State::Claiming { g, .. } => *g as u8 + 1,
            _ => m.generation() as u8,
        };
        self.register
            .range(mine + 1..)
            .rfind(|(_, &o)| o as usize != i)
            .map(|(&g, &o)| (g, o))
    }
}
