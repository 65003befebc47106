//! The checkpoint pair's member driver: the one thread that owns a pair
//! member's [`Member`] — the same state machine lockstep uses
//! (`lockstep/member.rs`: pairing, racing for a generation, going live) —
//! and performs its [`Action`]s on a checkpoint VM. Beside
//! `lockstep/driver.rs`; what differs by mode is behind [`Effects`], and
//! fencing's `Acquire` behind [`Fencing`] (the daemon's socket, or an
//! in-process one in tests).
//!
//! - Primary ([`PrimaryEffects`]): the epoch loop ships epochs over the
//!   channel (`remote.rs`), an ack thread feeds the gate; the member's gate
//!   goes to [`GatedOutputs::set_member_gate`] (held while racing, open —
//!   every closed epoch acknowledged — once it won `g + 1` and runs alone).
//!   Losing the link (send or receive failing, the Secondary saying bye) is
//!   `ChannelLost`: the member holds and races; so is the link's silence,
//!   and a Secondary that is heard but acknowledges no epoch for the
//!   failure timeout past the waiting epoch's apply grace (`ack_wait.rs`:
//!   its serve loop wedged or taking nothing in; the tick carries it).
//! - Secondary ([`SecondaryEffects`]): applies epochs to staging memory and
//!   acknowledges them. It never replays, so once its Primary is gone
//!   ("draining" in the member's words) it has nothing left to apply: the
//!   driver reports `ReplayExhausted` at the last complete epoch at once, and
//!   the member races for `g + 1`. Won: [`Effects::go_live`] resumes the VM
//!   from that epoch (its unfinished disk writes written first), behind a
//!   gate that starts held and that the member opens in `g + 1`: its
//!   outputs are released as soon as their epoch closes and its writes are
//!   durable (no Secondary left), still only under the host's grant. Lost
//!   or superseded: it halts. A Secondary that never completed an epoch has
//!   nothing to resume from: it halts without racing.
//!
//! Rules:
//! - A link that ends is never taken for an orderly end unless the peer
//!   said `Bye` (Secondary: `PrimaryEnded`, it halts without racing). A side
//!   that closes the link because its peer is lost shuts the socket without
//!   `Bye`, so the peer races too; fencing lets exactly one win.
//! - The state is published before the actions are performed (as in
//!   lockstep's driver), to the caller and to the VM's [`PairHandle`]: its
//!   role for status, and the generation it runs (or acquires) as Primary
//!   for fencing's publication; the daemon's grant changes and depositions
//!   arrive through the handle (`members.rs`), as for lockstep.
//!
//! - The Primary's guest ending on its own is an orderly end: `Bye`, and
//!   both members halt (the Secondary without racing). Its epoch loop
//!   failing stops the VM and the member, and closes the link without `Bye`.
//! - Storage lost on a paired Primary (fencing withdrew its grant past the
//!   failure timeout): the member stops the VM; once the epoch loop has
//!   ended and the Secondary acknowledged every closed epoch, `Resign` goes
//!   out and the Secondary races at once (`PeerResigned`).
//!
//! - A Secondary's take-over writes the unfinished epochs' writes through
//!   its new gate first, as an epoch of their own with the plan's
//!   gratuitous ARPs, and sets the late-write fence over them unless
//!   fencing answered its win with `storage_cut` (`late_fence.rs`).
//!
//! - A Secondary that took over runs the Primary's epoch loop on the
//!   resumed VM ([`PrimaryEffects::start_alone`]), so a respawned Secondary
//!   can join it (`respawn.rs`); from then on the effects of a Primary
//!   (the new link's silence, closing it, resigning) are that loop's.
//!
//! Not here: fresh-ack stamps (acks are taken as they come, as `remote.rs`
//! does). The daemon runs this driver from `daemon_member.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver as EventRx, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stall::{self, Busy};
use crate::lockstep::live_timing::LiveTiming;
use crate::lockstep::member::{Action, Decision, Event, Gate, Grant, Member, State};
use crate::lockstep::spec::PairHandle;
use crate::lockstep::{claim_vmnet, fence};

#[path = "driver_link.rs"]
mod link;
#[path = "driver_primary.rs"]
mod primary_effects;
#[path = "driver_secondary.rs"]
mod secondary_effects;

pub(crate) use link::{JoinNews, JoinedLink, PendingJoin, SEND_TIMEOUT};
pub use primary_effects::{JoinPort, PrimaryEffects};
pub use secondary_effects::{Live, SecondaryEffects, StorageCut, TakeOverPlan};

/// How often the driver looks at the link's silence and deadlines.
pub const TICK: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fencing as a member's race sees it.
pub trait Fencing: Send + Sync {
    /// Blocks until fencing decides `generation` of `vm` for this host;
    /// `None` once `cancel` is set.
    fn acquire(&self, vm: &str, generation: u64, cancel: &AtomicBool) -> Option<Decision>;

    /// Before a Secondary that lost its Primary asks for `generation`:
    /// waits as this host's own VM network says
    /// (`lockstep/claim_vmnet.rs`: cut while a third host's works, it lets
    /// a member that can serve win first); `false` once `cancel` is set.
    /// By default it asks at once.
    fn before_claim(&self, _vm: &str, _generation: u64, _cancel: &AtomicBool) -> bool {
        true
    }
}

/// The fencing agent behind its control socket (the daemon's).
pub struct SocketFencing {
    pub socket: std::path::PathBuf,
    pub config_generation: u64,
    /// Generations won with the old owner cut off at the storage.
    cut: Mutex<std::collections::BTreeSet<u64>>,
    /// This host's heartbeat socket and name, for a claim's look at its
    /// own VM network ([`Fencing::before_claim`]; `None`: claim at once).
    claim_view: Option<(std::path::PathBuf, String)>,
}

impl SocketFencing {
    pub fn new(socket: std::path::PathBuf, config_generation: u64) -> Self {
        SocketFencing {
            socket,
            config_generation,
            cut: Mutex::default(),
            claim_view: None,
        }
    }

    /// Claims look at this host's VM network first, in heartbeat's view at
    /// `heartbeat`, as host `host` ([`Fencing::before_claim`]).
    pub fn with_claim_view(mut self, heartbeat: std::path::PathBuf, host: &str) -> Self {
        self.claim_view = Some((heartbeat, host.to_string()));
        self
    }

    /// Whether fencing answered this host's win of `generation` with
    /// `storage_cut` (PREEMPT AND ABORT of the old owner).
    pub fn storage_cut(&self, generation: u64) -> bool {
        lock(&self.cut).contains(&generation)
    }
}

impl Fencing for SocketFencing {
    fn acquire(&self, vm: &str, generation: u64, cancel: &AtomicBool) -> Option<Decision> {
        let waiting = |why: &str| {
            println!("ftvmm: vm {vm}: storage does not answer ({why}); holding output and waiting")
        };
        let a = fence::acquire_until(
            &self.socket,
            vm,
            generation,
            self.config_generation,
            cancel,
            waiting,
        )?;
        if a.storage_cut && a.decision == Decision::Won {
            lock(&self.cut).insert(generation);
        }
        Some(a.decision)
    }

    fn before_claim(&self, vm: &str, generation: u64, cancel: &AtomicBool) -> bool {
        match &self.claim_view {
            Some((heartbeat, host)) => {
                claim_vmnet::wait_before_claim(heartbeat, (vm, host), generation, cancel)
            }
            None => !cancel.load(Ordering::SeqCst),
        }
    }
}

/// What the member's actions act on, by replication mode.
pub trait Effects: Send {
    /// The member's gate; `generation` the one it now acts in.
    fn set_gate(&mut self, gate: Gate, generation: u64);
    /// Stop the VM here (halting, or handing over); nothing more leaves.
    fn stop_vcpu(&mut self);
    /// Close the link to the peer (no `Bye`: module doc).
    fn close_link(&mut self, reason: &str);
    /// Primary handing over after a storage loss, every epoch acknowledged.
    fn resign(&mut self, reason: &str);
    /// Secondary that won `generation`: resume the VM from epoch `at`.
    fn go_live(&mut self, generation: u64, at: u64);
    /// The host's grant came back: release what waited for it now rather
    /// than at the next epoch close.
    fn grant_back(&mut self);
    /// How long the peer has been silent (0 without a link).
    fn silent_ms(&self) -> u64;
    /// Primary: how long its Secondary has acknowledged nothing while an
    /// epoch it was sent waits, and the part of that the epoch's apply may
    /// take, in ms (`ack_wait.rs`; `(0, 0)`: nothing waits, or no link).
    fn unacked(&self) -> (u64, u64);
    /// Secondary whose Primary is gone: the epoch to resume from, once
    /// nothing is left to apply; `Some(0)`: none (it halts, never races).
    fn drained(&mut self) -> Option<u64>;
    /// Primary handing over: the Secondary holds every closed epoch.
    fn all_acked(&self) -> bool;
}

/// The failure timeout `ftctl apply` may change live, and the booted one
/// it stands for until then.
pub struct LiveFailureTimeout {
    pub timing: Arc<LiveTiming>,
    pub booted: Duration,
}

/// Gives `member` the failure timeout in force now (none: it keeps its own).
fn take_live(member: &mut Member, live: Option<&LiveFailureTimeout>) {
    if let Some(l) = live {
        member.set_live_failure_timeout(l.timing.failure_timeout(l.booted).as_millis() as u64);
    }
}

/// A running member driver.
pub struct MemberDriver {
    events: Sender<Event>,
    state: Arc<Mutex<State>>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// What the member thread is doing, for its watch (`stall.rs`).
    busy: Arc<Busy>,
    watch: Option<JoinHandle<()>>,
}

impl MemberDriver {
    /// The driver's event channel, made before the effects that post to it.
    pub fn channel() -> (Sender<Event>, EventRx<Event>) {
        mpsc::channel()
    }

    /// Runs `member` of `vm` on `host` over `effects`, published to `handle`
    /// (which takes the daemon's events from now on); applies its initial
    /// gate first. Its failure timeout stays the one it was made with.
    pub fn start(
        names: (&str, &str),
        member: Member,
        effects: Box<dyn Effects>,
        fencing: Arc<dyn Fencing>,
        handle: Arc<PairHandle>,
        events: (Sender<Event>, EventRx<Event>),
    ) -> Self {
        Self::start_timed(names, member, effects, fencing, handle, events, None)
    }

    /// [`MemberDriver::start`], the member taking the failure timeout
    /// `ftctl apply` changes live from `live` before every step, as a
    /// lockstep member's driver does (`lockstep/live_timing.rs` has the
    /// rules the member applies to it).
    pub fn start_timed(
        (vm, host): (&str, &str),
        member: Member,
        effects: Box<dyn Effects>,
        fencing: Arc<dyn Fencing>,
        handle: Arc<PairHandle>,
        (events, rx): (Sender<Event>, EventRx<Event>),
        live: Option<LiveFailureTimeout>,
    ) -> Self {
        handle.attach(events.clone());
        let state = Arc::new(Mutex::new(member.state().clone()));
        let quit = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(Busy::default());
        let started = Instant::now();
        let mut run = Run {
            vm: vm.to_string(),
            effects,
            fencing,
            events: events.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
            state: Arc::clone(&state),
            handle,
            host: host.to_string(),
            started,
            live,
            busy: Arc::clone(&busy),
        };
        let q = Arc::clone(&quit);
        let thread = std::thread::Builder::new()
            .name(format!("ckpt-member-{vm}"))
            .spawn(move || {
                let mut member = member;
                run.show(&member);
                run.effects
                    .set_gate(member.initial_gate(), member.generation());
                run.run(&mut member, &rx, &q);
                run.handle.detach();
                run.handle.running.store(0, Ordering::SeqCst);
            })
            .expect("spawn checkpoint member driver");
        let watch = stall::watch(
            vm.to_string(),
            Arc::clone(&busy),
            started,
            Arc::clone(&quit),
        )
        .map_err(|e| tracing::error!("checkpoint member of vm {vm}: no watch on it: {e}"))
        .ok();
        MemberDriver {
            events,
            state,
            quit,
            thread: Some(thread),
            busy,
            watch,
        }
    }

    /// Posts an event (the daemon's grant and depositions, a stop).
    pub fn post(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// The member's state now.
    pub fn state(&self) -> State {
        lock(&self.state).clone()
    }

    /// Waits until `f` holds for the member's state, or `timeout`; the
    /// state last seen.
    pub fn wait_for(&self, timeout: Duration, f: impl Fn(&State) -> bool) -> State {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if f(&s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends the driver thread (the effects are dropped with it: a host that
    /// goes away) and returns the member's last state.
    pub fn finish(mut self) -> State {
        self.quit.store(true, Ordering::SeqCst);
        let _ = self.events.send(Event::Tick {
            now_ms: 0,
            silent_ms: 0,
            unacked_ms: 0,
            unacked_grace_ms: 0,
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.watch.take() {
            let _ = t.join();
        }
        self.state()
    }

    /// Steps of the member thread its watch reported as stalled.
    pub fn stalls(&self) -> u64 {
        self.busy.stalls.load(Ordering::SeqCst)
    }
}

struct Run {
    vm: String,
    effects: Box<dyn Effects>,
    fencing: Arc<dyn Fencing>,
    events: Sender<Event>,
    /// Ends race workers once the VM stops here.
    cancel: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    handle: Arc<PairHandle>,
    host: String,
    started: Instant,
    /// Where the live failure timeout comes from (`None`: the booted one).
    live: Option<LiveFailureTimeout>,
    /// Marked around every step, for the watch (`stall.rs`).
    busy: Arc<Busy>,
}

impl Run {
    fn run(&mut self, member: &mut Member, rx: &EventRx<Event>, quit: &AtomicBool) {
        loop {
            self.busy.end();
            let got = rx.recv_timeout(TICK);
            let what = match &got {
                Ok(_) => "an event",
                Err(_) => "the tick (the link's silence and unacknowledged epochs)",
            };
            self.busy.begin(what, self.started.elapsed());
            let ev = match got {
                Ok(ev) => ev,
                // A Secondary heard (its keep-alives) but acknowledging no
                // epoch is not silent: its waiting epochs age instead.
                Err(RecvTimeoutError::Timeout) => {
                    let (unacked_ms, unacked_grace_ms) = self.effects.unacked();
                    Event::Tick {
                        now_ms: self.started.elapsed().as_millis() as u64,
                        silent_ms: self.effects.silent_ms(),
                        unacked_ms,
                        unacked_grace_ms,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if quit.load(Ordering::SeqCst) {
                break;
            }
            self.step(member, ev);
            // The mode-specific steps the member waits for.
            if matches!(member.state(), State::Draining { .. }) {
                match self.effects.drained() {
                    // Nothing to resume from: never race (the Primary, if
                    // alive, races and runs on alone). The member's only
                    // "halt, never promote" input is `Diverged`.
                    Some(0) => self.step(
                        member,
                        Event::Diverged {
                            what: "no complete epoch received: nothing to resume from".into(),
                        },
                    ),
                    Some(at) => self.step(member, Event::ReplayExhausted { at }),
                    None => {}
                }
            }
            if matches!(member.state(), State::HandingOver { .. }) && self.effects.all_acked() {
                self.step(member, Event::AllAcked);
            }
        }
        self.busy.end();
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn step(&mut self, member: &mut Member, ev: Event) {
        take_live(member, self.live.as_ref());
        let back = ev == Event::Grant(Grant::Ok);
        let actions = member.on_event(ev);
        self.show(member);
        if back {
            self.effects.grant_back();
        }
        for a in actions {
            self.perform(member, a);
        }
    }

    /// Publishes the member's state (module doc).
    fn show(&self, member: &Member) {
        let st = member.state().clone();
        *lock(&self.state) = st.clone();
        *lock(&self.handle.member) = Some(st.clone());
        *lock(&self.handle.hosts) = (self.host.clone(), member.peer().to_string());
        self.handle.set_role(&format!("checkpoint {st}"));
        self.handle
            .generation
            .store(member.generation(), Ordering::SeqCst);
        self.handle
            .running
            .store(member.published_generation(), Ordering::SeqCst);
    }

    fn perform(&mut self, member: &Member, a: Action) {
        match a {
            Action::Gate(g) => self.effects.set_gate(g, member.generation()),
            Action::Acquire { generation } => self.race(generation),
            Action::StopVcpu => {
                self.cancel.store(true, Ordering::SeqCst);
                self.effects.stop_vcpu();
            }
            Action::Resign { reason } => self.effects.resign(&reason),
            Action::SendDiverged { what } => self.effects.close_link(&what),
            Action::CloseLink { reason } => self.effects.close_link(&reason),
            Action::GoLive { generation, at } => self.effects.go_live(generation, at),
            Action::Say(line) => println!("{line}"),
        }
    }

    /// Asks fencing for `generation` on a worker; the answer comes back as
    /// `Decided`.
    fn race(&self, generation: u64) {
        let (vm, fencing) = (self.vm.clone(), Arc::clone(&self.fencing));
        let (events, cancel) = (self.events.clone(), Arc::clone(&self.cancel));
        let claiming = matches!(*lock(&self.state), State::Claiming { .. });
        let spawned = std::thread::Builder::new()
            .name(format!("ckpt-race-{vm}-{generation}"))
            .spawn(move || {
                if claiming && !fencing.before_claim(&vm, generation, &cancel) {
                    return;
                }
                if let Some(decision) = fencing.acquire(&vm, generation, &cancel) {
                    tracing::info!(vm, generation, ?decision, "checkpoint: decided");
                    let _ = events.send(Event::Decided {
                        generation,
                        decision,
                    });
                }
            });
        if let Err(e) = spawned {
            println!(
                "ftvmm: vm {}: cannot race for generation {generation}: {e}; output stays held",
                self.vm
            );
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
