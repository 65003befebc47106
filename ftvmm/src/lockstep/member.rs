//! A pair member's decisions as a pure state machine: what a Primary or a
//! Secondary does when its peer, its storage or its generation changes.
//!
//! No threads, sockets, clocks or sleeps here: [`Member::on_event`] takes one
//! [`Event`] and returns the [`Action`]s to perform, in order; the driver
//! (`driver.rs`) performs them, and the simulation (`sim_member.rs`) runs the
//! same code under lost and late messages, freezes and fencing answers.
//!
//! # Rules (docs/design.md §1–§3)
//!
//! - A member releases output in generation `g` only while it owns `g`: a
//!   paired Primary through the Output Rule ([`Gate::ByAcks`]), a Primary
//!   running alone through [`Gate::Open`]; everything else is [`Gate::Held`].
//! - A Primary that loses its Secondary for any reason (the channel closed or
//!   failed, it was silent for the failure timeout, the Secondary diverged)
//!   holds everything and races for `g + 1` at once. Won: it runs alone.
//!   Lost or superseded: it halts.
//! - A Secondary whose Primary is gone (channel closed or silent, or the
//!   Primary resigned) replays everything it holds, then races for `g + 1`.
//!   Won: it goes live as a Primary running alone. Lost or superseded: halt.
//! - A Secondary that diverged says so and halts; it never races.
//! - Fencing withdrawing the grant (this host cannot renew its lease) makes a
//!   paired Primary hold its output; if the grant is not back within the
//!   failure timeout it hands the VM over to its Secondary (a storage hiccup
//!   costs a pause, not the pair: under load one slow lease write withdrew
//!   the grant for a moment and a healthy pair was handed over). A lone
//!   Primary holds; when its grant comes back it re-wins `g + 1` before
//!   output flows again (no Secondary vouches for it meanwhile).
//! - `Deposed` (another host started a later generation) halts at once.
//!
//! # Invariants (asserted in [`Member::on_event`])
//!
//! - The generation a member acts in never decreases.
//! - [`Gate::Open`] or [`Gate::ByAcks`] is only ever set in a state that owns
//!   its generation (`Paired`, `Solo`).
//! - `Halted` is final.

use std::fmt;

/// What lets a Primary's outputs leave (the driver applies it to the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Paired: the Output Rule (fresh acknowledgements) releases outputs.
    ByAcks,
    /// Nothing leaves.
    Held,
    /// Running alone in an owned generation: outputs leave at once.
    Open,
}

/// Fencing's answer to `Acquire(generation)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Won,
    Lost { owner: String },
    Superseded { by: u64 },
}

/// The host's output grant as fencing last stated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A fresh grant.
    Ok,
    /// Fencing said no: this host cannot renew its lease (or was frozen).
    Withdrawn { reason: String },
    /// The last grant expired without a new word (fencing gone or stuck).
    Lapsed,
}

/// Why a member halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// Another host owns the next generation.
    Lost { generation: u64, owner: String },
    /// A later generation exists on disk.
    Superseded { generation: u64, by: u64 },
    /// Another host started `generation` while this one acted in an older one.
    Deposed { generation: u64, by: String },
    /// This Secondary's replay differs from the Primary's execution.
    Diverged { what: String },
    /// This host could not serve the VM while paired (storage lost, or its
    /// VM network cut): the VM was handed to the Secondary.
    HandedOver { to_secondary: bool },
    /// The Primary ended the VM in an orderly way (Secondary side).
    PrimaryEnded,
    /// Stopped on request.
    Stopped,
}

/// Where a member stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Primary with a Secondary in generation `g`.
    Paired {
        g: u64,
    },
    /// Primary running alone in generation `g` (won at start or in a race).
    Solo {
        g: u64,
    },
    /// Primary that lost its Secondary: everything held, racing for `g + 1`.
    Racing {
        g: u64,
        why: String,
    },
    /// Lone Primary whose grant is gone: held until it comes back.
    Fenced {
        g: u64,
    },
    /// Lone Primary whose grant came back: re-winning `g + 1` before output.
    Rechecking {
        g: u64,
    },
    /// Paired Primary whose grant fencing withdrew at `since_ms` (its lease
    /// renewal failing, or a freeze): output held, the Secondary still
    /// following. The grant coming back within the failure timeout resumes
    /// the pair (a storage hiccup costs a pause, not the pair); past it the
    /// VM is handed over.
    StorageHeld {
        g: u64,
        since_ms: u64,
        reason: String,
    },
    /// Paired Primary whose host cannot serve the VM (storage lost, or
    /// its VM network cut, `why`): VM stopped, handing over.
    HandingOver {
        g: u64,
        deadline_ms: u64,
        why: String,
    },
    /// Secondary replaying the Primary's log in generation `g`.
    Following {
        g: u64,
    },
    /// Secondary whose Primary is gone: replaying what it holds.
    Draining {
        g: u64,
        why: String,
    },
    /// Secondary whose log is exhausted at exit `at`: racing for `g + 1`.
    Claiming {
        g: u64,
        at: u64,
        why: String,
    },
    Halted(Halt),
}

/// What happened (one source per variant, see the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Monitor tick: time now, how long the channel has been silent, and
    /// (a Primary) how long the oldest batch the Secondary has not
    /// acknowledged has waited (0: none waits). A Secondary that is still
    /// heard (its progress reports while it replays a backlog) but does not
    /// acknowledge what it is sent — the Primary-to-Secondary direction cut
    /// or stalled, or its receiving side wedged — is not silent; its
    /// unacknowledged log ages instead.
    ///
    /// Checkpoint mode ([`Acks::Epochs`]): `unacked_ms` is how long the
    /// Secondary has acknowledged nothing while an epoch it was sent waits,
    /// and `unacked_grace_ms` the part of it the Secondary may spend
    /// applying that epoch (it acknowledges an epoch only once it applied
    /// it whole; the grace grows with the epoch's size,
    /// `checkpoint/ack_wait.rs`). Lockstep's receipt acks need none (0).
    Tick {
        now_ms: u64,
        silent_ms: u64,
        unacked_ms: u64,
        unacked_grace_ms: u64,
    },
    /// The channel ended or failed, or the peer said bye.
    ChannelLost { why: String },
    /// The Secondary diverged and says so: never promote it.
    PeerDiverged { what: String },
    /// The Primary resigned (its host could not serve the VM).
    PeerResigned { why: String },
    /// The Primary ended the VM in an orderly way.
    PrimaryEnded,
    /// This Secondary's replay diverged.
    Diverged { what: String },
    /// This Secondary's log is exhausted at exit `at` (its VM stopped there).
    ReplayExhausted { at: u64 },
    /// Fencing's answer for `generation`.
    Decided { generation: u64, decision: Decision },
    /// The host's output grant changed.
    Grant(Grant),
    /// Another host started `generation` of this VM.
    Deposed { generation: u64, by: String },
    /// The Secondary acknowledged every record (hand-over may complete).
    AllAcked,
    /// This host cannot serve the VM although its Secondary's host could
    /// (the keeper found this host's VM network cut while the Secondary's
    /// host is heard there: `respawn/own_vmnet.rs`): a paired Primary hands
    /// the VM over at once, as after a long storage hold; in any other
    /// state there is nobody to hand it to and nothing changes.
    LeaveHost { why: String },
    /// Stop on request (operator, power-off, daemon shutdown).
    Stop,
    /// A new Secondary on `peer` restored this Primary's state by live
    /// transfer in `generation` (respawn, docs/design.md §11); its log
    /// starts now. Only a lone Primary in that very generation that holds
    /// its grant takes it (`Solo{generation}` -> `Paired`); anywhere else it
    /// is refused and the transfer fails. (Without the generation, a
    /// Primary that re-won `g + 1` during a join in `g` paired in `g + 1`
    /// with a Secondary that had given up: found by the member model.)
    SecondaryJoined { peer: String, generation: u64 },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Gate(Gate),
    /// Ask fencing for `generation`; its answer comes back as `Decided`.
    Acquire {
        generation: u64,
    },
    /// Stop the vCPU loop.
    StopVcpu,
    /// Send `Resign` (every record is acked) and close the channel.
    Resign {
        reason: String,
    },
    /// Tell the Primary "diverged, do not promote me" and close the channel.
    SendDiverged {
        what: String,
    },
    /// Close the channel (and a Secondary's replay queue) with a reason.
    CloseLink {
        reason: String,
    },
    /// Secondary: switch to the real backends and run as a lone Primary.
    GoLive {
        generation: u64,
        at: u64,
    },
    /// One console line.
    Say(String),
}

/// How long a resigning Primary waits for the last acknowledgements.
pub const HAND_OVER_MS: u64 = 3_000;

/// Why a Primary whose grant stayed withdrawn hands over (the console's
/// words since storage hand-over exists; the QEMU tests look for them).
const STORAGE_LOST: &str = "storage lost (fencing holds output)";

/// What a paired Primary's Secondary acknowledges: the words a Primary
/// uses when it counts a Secondary that is heard but acknowledges nothing
/// as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Lockstep: the receipt of log records.
    #[default]
    Log,
    /// Checkpoint: epochs, each once applied whole.
    Epochs,
}

/// One member of a pair for one VM.
#[derive(Debug, Clone)]
pub struct Member {
    vm: String,
    peer: String,
    /// What the Secondary acknowledges ([`Member::acknowledging`]).
    acks: Acks,
    /// The failure timeout the member was made with (the booted one).
    failure_timeout_ms: u64,
    /// The live one (`ftctl apply`; [`Member::set_live_failure_timeout`]).
    live_timeout_ms: u64,
    state: State,
    /// Highest generation this member ever acted in (never decreases).
    acted: u64,
    /// Latest time seen on a tick.
    now_ms: u64,
    /// Whether the grant is currently good (a lone Primary holds without it).
    granted: bool,
}

impl Member {
    /// A Primary paired in `g` (`paired`) or running alone in `g`.
    pub fn primary(vm: &str, peer: &str, g: u64, paired: bool, failure_timeout_ms: u64) -> Self {
        let state = if paired {
            State::Paired { g }
        } else {
            State::Solo { g }
        };
        Self::new(vm, peer, state, g, failure_timeout_ms)
    }

    /// A Secondary following its Primary in `g`.
    pub fn secondary(vm: &str, peer: &str, g: u64, failure_timeout_ms: u64) -> Self {
        Self::new(vm, peer, State::Following { g }, 0, failure_timeout_ms)
    }

    fn new(vm: &str, peer: &str, state: State, acted: u64, failure_timeout_ms: u64) -> Self {
        Member {
            vm: vm.to_string(),
            peer: peer.to_string(),
            acks: Acks::default(),
            failure_timeout_ms,
            live_timeout_ms: failure_timeout_ms,
            state,
            acted,
            now_ms: 0,
            granted: true,
        }
    }

    /// The member of a pair whose Secondary acknowledges `acks` (lockstep's
    /// log by default; a checkpoint pair's members say [`Acks::Epochs`]).
    pub fn acknowledging(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Takes a failure timeout changed live (`ftctl apply`, read by the
    /// driver each step). A Primary's silence and grant waits follow it: a
    /// race is decided by Disk Paxos and a hold releases nothing. A
    /// Secondary never waits less than the timeout it was made with, which
    /// both members booted with and which bounds the Primary's ack freshness
    /// (`live_timing`, `config_schema::timing_live`).
    pub fn set_live_failure_timeout(&mut self, ms: u64) {
        self.live_timeout_ms = ms;
    }

    /// A Secondary's channel silence before it drains and races.
    fn secondary_silence_ms(&self) -> u64 {
        config_schema::timing_live::secondary_silence_ms(
            self.failure_timeout_ms,
            self.live_timeout_ms,
        )
    }

    /// The channel silence at which this member acts on a tick (a paired
    /// Primary races, a following Secondary drains), if it watches silence
    /// at all: the driver wakes for it instead of at its next regular tick,
    /// so suspicion lands when the timeout runs out, not up to a tick later.
    pub fn silence_limit_ms(&self) -> Option<u64> {
        match self.state {
            State::Paired { .. } | State::StorageHeld { .. } => Some(self.live_timeout_ms),
            State::Following { .. } => Some(self.secondary_silence_ms()),
            _ => None,
        }
    }

    /// Whether `silent_ms` of channel silence is what this member acts on
    /// (the one test the driver's wake-up and the tick guards share).
    fn silence_reached(&self, silent_ms: u64) -> bool {
        self.silence_limit_ms()
            .is_some_and(|limit| silent_ms >= limit)
    }

    /// Why a Primary counts a Secondary that is heard but acknowledges
    /// nothing as lost (`grace_ms`: the apply time its epoch was allowed).
    fn unacked_loss(&self, unacked_ms: u64, grace_ms: u64) -> String {
        let peer = &self.peer;
        match self.acks {
            Acks::Log => {
                format!("secondary {peer} heard but acknowledged none of the log sent {unacked_ms} ms ago")
            }
            Acks::Epochs if grace_ms == 0 => {
                format!("secondary {peer} heard but acknowledged no epoch for {unacked_ms} ms")
            }
            Acks::Epochs => format!(
                "secondary {peer} heard but acknowledged no epoch for {unacked_ms} ms \
                 ({grace_ms} ms of it allowed for applying the epoch that waits)"
            ),
        }
    }

    /// The gate a member starts with (the driver applies it first).
    pub fn initial_gate(&self) -> Gate {
        match self.state {
            State::Paired { .. } => Gate::ByAcks,
            State::Solo { .. } => Gate::Open,
            _ => Gate::Held,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The generation this member acts in, if it acts at all.
    pub fn acting_generation(&self) -> Option<u64> {
        match self.state {
            State::Paired { g } | State::Solo { g } => Some(g),
            _ => None,
        }
    }

    /// The generation shown in status (the pair's, or the one acted in).
    pub fn generation(&self) -> u64 {
        match &self.state {
            State::Paired { g }
            | State::Solo { g }
            | State::Racing { g, .. }
            | State::Fenced { g }
            | State::Rechecking { g }
            | State::StorageHeld { g, .. }
            | State::HandingOver { g, .. }
            | State::Following { g }
            | State::Draining { g, .. }
            | State::Claiming { g, .. } => *g,
            State::Halted(_) => self.acted,
        }
    }

    /// The Secondary's host (empty while running alone from the start).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn is_halted(&self) -> bool {
        matches!(self.state, State::Halted(_))
    }

    /// The generation this host runs the VM in as Primary, or is acquiring
    /// as one, for fencing's publication (docs/design.md §1); 0: none.
    ///
    /// A draining Secondary publishes `g + 1` already: it will claim it once
    /// it has replayed what it holds, and that drain can take seconds on a
    /// loaded host. Unpublished, a third host saw the VM's owner dead and
    /// nobody else publishing it, and cold-started the VM from its disk
    /// while the Secondary that held all of its state was still draining
    /// (chaos seed 105): every client's connection broke. A start elsewhere
    /// waits while a live host publishes the VM (`start::Owner::Claimed`).
    pub fn published_generation(&self) -> u64 {
        match &self.state {
            State::Paired { g }
            | State::Solo { g }
            | State::Fenced { g }
            | State::StorageHeld { g, .. }
            | State::HandingOver { g, .. } => *g,
            State::Racing { g, .. }
            | State::Rechecking { g }
            | State::Draining { g, .. }
            | State::Claiming { g, .. } => g + 1,
            State::Following { .. } | State::Halted(_) => 0,
        }
    }

    /// Takes one event; returns what to do. The only place `state` changes.
    pub fn on_event(&mut self, ev: Event) -> Vec<Action> {
        if let Event::Tick { now_ms, .. } = ev {
            self.now_ms = self.now_ms.max(now_ms);
        }
        if let Event::Grant(g) = &ev {
            self.granted = *g == Grant::Ok;
        }
        let joined = match &ev {
            Event::SecondaryJoined { peer, .. } => Some(peer.clone()),
            _ => None,
        };
        let before = self.state.clone();
        let (next, actions) = self.transition(ev);
        if let Some(next) = next {
            self.check_transition(&before, &next, &actions);
            self.state = next;
            if let Some(peer) = joined {
                self.peer = peer;
            }
        }
        actions
    }

    /// The asserted invariants of a transition (module docs).
    fn check_transition(&mut self, from: &State, to: &State, actions: &[Action]) {
        assert!(
            !matches!(from, State::Halted(_)),
            "invalid transition [{from} -> {to}]: halted is final"
        );
        for a in actions {
            if let Action::Gate(Gate::Open | Gate::ByAcks) = a {
                assert!(
                    matches!(to, State::Paired { .. } | State::Solo { .. }),
                    "invalid transition [{from} -> {to}]: output released in a state that \
                     does not own its generation"
                );
            }
        }
        if let Some(g) = match to {
            State::Paired { g } | State::Solo { g } => Some(*g),
            _ => None,
        } {
            assert!(
                g >= self.acted,
                "invalid transition [{from} -> {to}]: acting generation went back from {}",
                self.acted
            );
            self.acted = g;
        }
    }

    fn say(&self, line: String) -> Action {
        Action::Say(format!("ftvmm: vm {}: {line}", self.vm))
    }

    fn transition(&self, ev: Event) -> (Option<State>, Vec<Action>) {
        if let State::Halted(_) = self.state {
            return (None, Vec::new());
        }
        match ev {
            Event::Stop => (
                Some(State::Halted(Halt::Stopped)),
                vec![Action::Gate(Gate::Held), Action::StopVcpu],
            ),
            Event::Deposed { generation, by } => self.on_deposed(generation, by),
            Event::Decided {
                generation,
                decision,
            } => self.on_decided(generation, decision),
            Event::Grant(g) => self.on_grant(g),
            Event::SecondaryJoined { peer, generation } => match self.state {
                // The gate goes to the Output Rule before the new Secondary
                // is told it is paired (it races only after that), so
                // nothing this Primary releases from now on is unknown to it.
                State::Solo { g } if self.granted && g == generation => (
                    Some(State::Paired { g }),
                    vec![
                        Action::Gate(Gate::ByAcks),
                        self.say(format!("secondary {peer} joined in generation {g}")),
                    ],
                ),
                _ => (None, Vec::new()),
            },
            other => match &self.state {
                State::Paired { .. }
                | State::StorageHeld { .. }
                | State::Racing { .. }
                | State::HandingOver { .. } => self.primary_event(other),
                State::Following { .. } | State::Draining { .. } | State::Claiming { .. } => {
                    self.secondary_event(other)
                }
                // A lone Primary has no channel: link events are stale.
                State::Solo { .. } | State::Fenced { .. } | State::Rechecking { .. } => {
                    (None, Vec::new())
                }
                State::Halted(_) => unreachable!("handled above"),
            },
        }
    }

    /// Paired Primary: losing the Secondary, handing over after a long
    /// storage hold, and completing a hand-over.
    fn primary_event(&self, ev: Event) -> (Option<State>, Vec<Action>) {
        let paired = matches!(self.state, State::Paired { .. } | State::StorageHeld { .. });
        let lost = match (&self.state, ev) {
            (_, Event::ChannelLost { why }) if paired => why,
            (_, Event::PeerDiverged { what }) if paired => {
                format!("secondary {} diverged: {what}", self.peer)
            }
            (_, Event::Tick { silent_ms, .. }) if paired && self.silence_reached(silent_ms) => {
                format!(
                    "{} silent on the logging channel for {silent_ms} ms",
                    self.peer
                )
            }
            // Heard, but acknowledging nothing new: the records do not
            // reach it (the Primary-to-Secondary direction cut or stalled)
            // or its receiving side is wedged, while it still reports
            // progress. A Secondary that receives acknowledges within a
            // round trip plus its progress period (20 ms); the failure
            // timeout is far above that. A checkpoint Secondary heard (its
            // keep-alives) whose serve loop takes no epoch in: the same,
            // past the time its apply may take.
            (
                _,
                Event::Tick {
                    unacked_ms,
                    unacked_grace_ms,
                    ..
                },
            ) if paired
                && unacked_ms > unacked_grace_ms
                && self.silence_reached(unacked_ms - unacked_grace_ms) =>
            {
                self.unacked_loss(unacked_ms, unacked_grace_ms)
            }
            (
                State::StorageHeld {
                    g,
                    since_ms,
                    reason,
                },
                Event::Tick { now_ms, .. },
            ) if now_ms >= since_ms + self.live_timeout_ms => {
                return self.hand_over(
                    *g,
                    STORAGE_LOST.to_string(),
                    format!(
                        "fencing withdrew the output grant {} ms ago ({reason}); handing the VM \
                         over to secondary {}",
                        now_ms - since_ms,
                        self.peer
                    ),
                );
            }
            (State::Paired { g } | State::StorageHeld { g, .. }, Event::LeaveHost { why }) => {
                let line = format!("{why}; handing the VM over to secondary {}", self.peer);
                return self.hand_over(*g, why, line);
            }
            (State::HandingOver { g, why, .. }, Event::AllAcked) => {
                let g = *g;
                return (
                    Some(State::Halted(Halt::HandedOver { to_secondary: true })),
                    vec![
                        Action::Resign {
                            reason: why.clone(),
                        },
                        self.say(format!(
                            "{why}; handed the VM over to secondary {} in generation {g}; \
                             halting here",
                            self.peer
                        )),
                    ],
                );
            }
            (
                State::HandingOver {
                    deadline_ms, why, ..
                },
                Event::Tick { now_ms, .. },
            ) if now_ms >= *deadline_ms => {
                return (
                    Some(State::Halted(Halt::HandedOver {
                        to_secondary: false,
                    })),
                    vec![
                        Action::CloseLink {
                            reason: format!("{why}; could not hand over"),
                        },
                        self.say(format!(
                            "{why}; could not hand over to secondary {} (log not fully \
                             acknowledged or channel down); halting here",
                            self.peer
                        )),
                    ],
                );
            }
            (State::HandingOver { why, .. }, Event::ChannelLost { why: lost }) => {
                return (
                    Some(State::Halted(Halt::HandedOver {
                        to_secondary: false,
                    })),
                    vec![self.say(format!(
                        "{why}; channel to secondary {} ended ({lost}) before the hand-over; \
                         halting here",
                        self.peer
                    ))],
                );
            }
            _ => return (None, Vec::new()),
        };
        let (State::Paired { g } | State::StorageHeld { g, .. }) = self.state else {
            unreachable!("only a paired Primary loses its Secondary")
        };
        let next = g + 1;
        (
            Some(State::Racing {
                g,
                why: lost.clone(),
            }),
            vec![
                Action::Gate(Gate::Held),
                Action::CloseLink {
                    reason: format!("secondary lost: {lost}"),
                },
                Action::Acquire { generation: next },
                self.say(format!(
                    "secondary suspected ({lost}); holding output, asking for generation {next}"
                )),
            ],
        )
    }

    /// Secondary: the Primary going away, divergence, the log running out.
    fn secondary_event(&self, ev: Event) -> (Option<State>, Vec<Action>) {
        let g = self.generation();
        match (&self.state, ev) {
            (_, Event::Diverged { what }) => (
                Some(State::Halted(Halt::Diverged { what: what.clone() })),
                vec![
                    Action::SendDiverged { what: what.clone() },
                    Action::StopVcpu,
                    self.say(format!(
                        "this secondary halts and is never promoted ({what})"
                    )),
                ],
            ),
            (_, Event::PrimaryEnded) => (Some(State::Halted(Halt::PrimaryEnded)), Vec::new()),
            (State::Following { .. }, Event::ChannelLost { why })
            | (State::Following { .. }, Event::PeerResigned { why }) => (
                Some(State::Draining {
                    g,
                    why: why.clone(),
                }),
                vec![Action::CloseLink { reason: why }],
            ),
            (State::Following { .. }, Event::Tick { silent_ms, .. })
                if self.silence_reached(silent_ms) =>
            {
                let why = format!(
                    "{} silent on the logging channel for {silent_ms} ms",
                    self.peer
                );
                // Said: a drain can take seconds on a loaded host, and while
                // it lasts this host claims the VM (it publishes `g + 1`).
                let line = self.say(format!(
                    "primary {} suspected ({why}); replaying what the log holds, then asking \
                     for generation {}",
                    self.peer,
                    g + 1
                ));
                (
                    Some(State::Draining {
                        g,
                        why: why.clone(),
                    }),
                    vec![
                        Action::CloseLink {
                            reason: format!("primary suspected: {why}"),
                        },
                        line,
                    ],
                )
            }
            (State::Following { .. } | State::Draining { .. }, Event::ReplayExhausted { at }) => {
                let why = match &self.state {
                    State::Draining { why, .. } => why.clone(),
                    _ => "the channel ended".to_string(),
                };
                let next = g + 1;
                (
                    Some(State::Claiming {
                        g,
                        at,
                        why: why.clone(),
                    }),
                    vec![
                        Action::Acquire { generation: next },
                        self.say(format!(
                            "primary {} lost ({why}); replayed every record up to exit {at}; \
                             asking for generation {next}",
                            self.peer
                        )),
                    ],
                )
            }
            _ => (None, Vec::new()),
        }
    }

    fn on_decided(&self, generation: u64, decision: Decision) -> (Option<State>, Vec<Action>) {
        let (g, live_at) = match &self.state {
            State::Racing { g, .. } | State::Rechecking { g } => (*g, None),
            State::Claiming { g, at, .. } => (*g, Some(*at)),
            // A decision that arrives after a state change (a late answer
            // for a race that no longer runs): a lone Primary fenced again
            // while re-checking keeps the generation it won, held.
            State::Fenced { g } if generation == g + 1 => {
                return match decision {
                    Decision::Won => (Some(State::Fenced { g: generation }), Vec::new()),
                    d => self.halt_on(generation, d),
                };
            }
            _ => return (None, Vec::new()),
        };
        if generation != g + 1 {
            return (None, Vec::new());
        }
        match decision {
            Decision::Won => match live_at {
                Some(at) if self.granted => (
                    Some(State::Solo { g: generation }),
                    vec![Action::GoLive { generation, at }, Action::Gate(Gate::Open)],
                ),
                // A Secondary that won while its host's grant was away (a
                // freeze or a storage hiccup between its Acquire and the
                // answer) goes live held, like a lone Primary fenced: when
                // the grant comes back it re-wins `g + 1` before output
                // flows, since another host may have started a later
                // generation meanwhile (found by tests/member_model.rs).
                Some(at) => (
                    Some(State::Fenced { g: generation }),
                    vec![
                        Action::GoLive { generation, at },
                        self.say(format!(
                            "won generation {generation}; live but output stays held until fencing grants it"
                        )),
                    ],
                ),
                None if self.granted => (
                    Some(State::Solo { g: generation }),
                    vec![
                        Action::Gate(Gate::Open),
                        self.say(format!(
                            "won generation {generation}; primary continues without secondary"
                        )),
                    ],
                ),
                // Won, but the grant went away meanwhile: hold, re-check later.
                None => (
                    Some(State::Fenced { g: generation }),
                    vec![self.say(format!(
                        "won generation {generation}; output stays held until fencing grants it"
                    ))],
                ),
            },
            d => self.halt_on(generation, d),
        }
    }

    /// A paired Primary in `g` stops its VM and holds output to hand the
    /// VM over: once the Secondary acknowledged every record it resigns
    /// (the Secondary replays to the end and races for `g + 1`), or halts
    /// after [`HAND_OVER_MS`] without. `why` heads its later lines.
    fn hand_over(&self, g: u64, why: String, line: String) -> (Option<State>, Vec<Action>) {
        (
            Some(State::HandingOver {
                g,
                deadline_ms: self.now_ms + HAND_OVER_MS,
                why,
            }),
            vec![Action::Gate(Gate::Held), Action::StopVcpu, self.say(line)],
        )
    }

    fn halt_on(&self, generation: u64, d: Decision) -> (Option<State>, Vec<Action>) {
        let (halt, line) = match d {
            Decision::Lost { owner } => (
                Halt::Lost {
                    generation,
                    owner: owner.clone(),
                },
                format!("lost generation {generation} to {owner}; halting the VM"),
            ),
            Decision::Superseded { by } => (
                Halt::Superseded { generation, by },
                format!("generation {generation} is superseded by generation {by}; halting the VM"),
            ),
            Decision::Won => unreachable!("a win does not halt"),
        };
        (
            Some(State::Halted(halt)),
            vec![Action::Gate(Gate::Held), Action::StopVcpu, self.say(line)],
        )
    }

    fn on_grant(&self, grant: Grant) -> (Option<State>, Vec<Action>) {
        match (&self.state, grant) {
            (State::Paired { g }, Grant::Withdrawn { reason }) => (
                Some(State::StorageHeld {
                    g: *g,
                    since_ms: self.now_ms,
                    reason: reason.clone(),
                }),
                vec![
                    Action::Gate(Gate::Held),
                    self.say(format!(
                        "fencing withdrew the output grant ({reason}); output held; handing \
                         the VM over to secondary {} unless it is back within {} ms",
                        self.peer, self.live_timeout_ms
                    )),
                ],
            ),
            // Back in time: the Secondary followed all along (a loss would
            // have moved this member to Racing), so the pair goes on in `g`
            // under the Output Rule; fresh acks still gate every release.
            (State::StorageHeld { g, since_ms, .. }, Grant::Ok) => (
                Some(State::Paired { g: *g }),
                vec![
                    Action::Gate(Gate::ByAcks),
                    self.say(format!(
                        "output grant back after {} ms; the pair goes on",
                        self.now_ms.saturating_sub(*since_ms)
                    )),
                ],
            ),
            (State::Solo { g }, Grant::Withdrawn { .. } | Grant::Lapsed) => (
                Some(State::Fenced { g: *g }),
                vec![Action::Gate(Gate::Held)],
            ),
            (State::Fenced { g }, Grant::Ok) => {
                let next = g + 1;
                (
                    Some(State::Rechecking { g: *g }),
                    vec![
                        Action::Acquire { generation: next },
                        self.say(format!(
                            "storage is back; re-winning generation {next} before output flows"
                        )),
                    ],
                )
            }
            (State::Rechecking { g }, Grant::Withdrawn { .. } | Grant::Lapsed) => {
                (Some(State::Fenced { g: *g }), Vec::new())
            }
            // A paired Primary's lapsed grant holds its output through the
            // host-wide grant check (the Output Rule still applies on top).
            _ => (None, Vec::new()),
        }
    }

    fn on_deposed(&self, generation: u64, by: String) -> (Option<State>, Vec<Action>) {
        let mine = self.generation();
        // Only a Primary (or one racing/fenced) acts; a deposition names a
        // generation later than the one it acts in. A Secondary draining or
        // claiming publishes `g + 1` and is deposed by a later one (its win,
        // arriving after a freeze, would be stale: tests/member_model.rs);
        // `g + 1` itself is its race, which its own answer settles.
        let deposes = match self.state {
            State::Following { .. } => false,
            State::Draining { g, .. } | State::Claiming { g, .. } => generation > g + 1,
            _ => generation > mine,
        };
        if !deposes {
            return (None, Vec::new());
        }
        (
            Some(State::Halted(Halt::Deposed {
                generation,
                by: by.clone(),
            })),
            vec![
                Action::Gate(Gate::Held),
                Action::StopVcpu,
                self.say(format!(
                    "deposed: {by} started generation {generation} while this host acted in \
                     generation {mine}; halting the VM"
                )),
            ],
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Paired { g } => write!(f, "primary (generation {g})"),
            State::Solo { g } => write!(f, "primary (unprotected, generation {g})"),
            State::Racing { g, why } => {
                write!(
                    f,
                    "primary holding output, racing for generation {} ({why})",
                    g + 1
                )
            }
            State::Fenced { g } => write!(f, "primary held by fencing (generation {g})"),
            State::Rechecking { g } => {
                write!(
                    f,
                    "primary re-winning generation {} after a fencing hold",
                    g + 1
                )
            }
            State::StorageHeld { g, .. } => {
                write!(f, "primary holding output for fencing (generation {g})")
            }
            State::HandingOver { g, .. } => write!(f, "primary handing over (generation {g})"),
            State::Following { g } => write!(f, "secondary (generation {g})"),
            State::Draining { g, why } => {
                write!(f, "secondary replaying the rest of generation {g} ({why})")
            }
            State::Claiming { g, at, .. } => {
                write!(f, "secondary racing for generation {} at exit {at}", g + 1)
            }
            State::Halted(h) => write!(f, "halted ({h})"),
        }
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Halt::Lost { generation, owner } => {
                write!(f, "lost generation {generation} to {owner}")
            }
            Halt::Superseded { generation, by } => {
                write!(f, "generation {generation} superseded by {by}")
            }
            Halt::Deposed { generation, by } => {
                write!(f, "deposed by {by} in generation {generation}")
            }
            Halt::Diverged { what } => write!(f, "diverged: {what}"),
            Halt::HandedOver { to_secondary: true } => write!(f, "handed over"),
            Halt::HandedOver {
                to_secondary: false,
            } => write!(f, "hand-over failed"),
            Halt::PrimaryEnded => write!(f, "primary ended the VM"),
            Halt::Stopped => write!(f, "stopped"),
        }
    }
}

#[cfg(test)]
#[path = "member_tests.rs"]
mod tests;
