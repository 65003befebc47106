//! The one thread that owns a pair member's [`Member`] and performs its
//! [`Action`]s: gates, fencing races, stopping the vCPU, the link's last
//! words, going live. Everything else that learns something — the link
//! threads, the vCPU's run thread, the daemon (fencing's grant and
//! depositions), the race workers — sends it an [`Event`]; a tick every
//! [`TICK`], and one when the channel's silence reaches the member's limit,
//! carries the silence.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::claim_vmnet;
use super::fence;
use super::link::{Link, Notify};
use super::member::{Action, Event, Member, State};
use super::primary::PrimaryLog;
use super::secondary::ReplayQueue;
use super::spec::{PairHandle, PairSpec};
use crate::vm::VmHandle;

/// How often the driver looks at the channel's silence and deadlines.
pub const TICK: Duration = Duration::from_millis(50);

/// What the driver tells a Secondary's run thread once its log is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It won `generation`: continue the VM from exit `at` on the real
    /// backends, and hand the new output gate back ([`Driver::attach_live`]).
    /// `storage_cut`: the win cut the previous owner off at the storage
    /// (fencing's PREEMPT AND ABORT), so its late writes cannot land.
    GoLive {
        generation: u64,
        at: u64,
        storage_cut: bool,
    },
    /// Halt the VM.
    Halt,
}

/// What the member's actions act on.
pub struct Resources {
    pub log: Option<Arc<PrimaryLog>>,
    pub queue: Option<Arc<ReplayQueue>>,
    pub link: Option<Link>,
    pub vm: VmHandle,
}

enum Msg {
    Event(Event),
    /// The run thread is done: close what is left and end.
    Quit,
}

/// A driver whose event channel exists (so the link can be given its
/// notifier) but which does not run yet.
pub struct Prepared {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    events: Sender<Event>,
}

impl Prepared {
    /// Where the link reports how it ended.
    pub fn notify(&self) -> Notify {
        let tx = Mutex::new(self.events.clone());
        Arc::new(move |ev| {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(ev);
        })
    }
}

/// A running driver.
pub struct Driver {
    tx: Sender<Msg>,
    state: Arc<Mutex<State>>,
    verdicts: Receiver<Verdict>,
    live_tx: Sender<Arc<PrimaryLog>>,
    thread: Option<JoinHandle<()>>,
}

struct Ctx {
    spec: PairSpec,
    handle: Arc<PairHandle>,
    res: Resources,
    /// Posts events back into the driver (race workers).
    events: Sender<Event>,
    verdict_tx: Sender<Verdict>,
    live_rx: Receiver<Arc<PrimaryLog>>,
    /// Ends race workers that still wait for storage.
    cancel: Arc<AtomicBool>,
    /// The generation whose win cut the previous owner off at the storage
    /// (0: none); set by the race worker before it posts `Decided`.
    cut: Arc<AtomicU64>,
    started: Instant,
    state: Arc<Mutex<State>>,
    /// Since when the member is paired without a link (see `tick`).
    unlinked_since: Option<Instant>,
}

impl Driver {
    /// The event channel of a driver about to start.
    pub fn prepare() -> Prepared {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (events, ev_rx) = mpsc::channel::<Event>();
        // Events from the link, the handle and race workers go through
        // `events`; a forwarder merges them into the driver's queue.
        {
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("member-events".into())
                .spawn(move || {
                    for ev in ev_rx {
                        if tx.send(Msg::Event(ev)).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawn member event forwarder");
        }
        Prepared { tx, rx, events }
    }

    /// Starts the driver of `member` over `res`; applies the member's initial
    /// gate first. The handle takes the daemon's events from now on.
    pub fn start(
        prepared: Prepared,
        member: Member,
        spec: &PairSpec,
        handle: &Arc<PairHandle>,
        res: Resources,
    ) -> Self {
        let Prepared { tx, rx, events } = prepared;
        let (verdict_tx, verdicts) = mpsc::channel();
        let (live_tx, live_rx) = mpsc::channel();
        let state = Arc::new(Mutex::new(member.state().clone()));
        handle.attach(events.clone());
        let mut ctx = Ctx {
            spec: spec.clone(),
            handle: Arc::clone(handle),
            res,
            events: events.clone(),
            verdict_tx,
            live_rx,
            cancel: Arc::new(AtomicBool::new(false)),
            cut: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            state: Arc::clone(&state),
            unlinked_since: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("member-{}", spec.hello.vm))
            .spawn(move || {
                let mut member = member;
                ctx.perform(Action::Gate(member.initial_gate()));
                ctx.show(&member);
                ctx.run(&mut member, rx);
            })
            .expect("spawn member driver");
        drop(events);
        Driver {
            tx,
            state,
            verdicts,
            live_tx,
            thread: Some(thread),
        }
    }

    /// Posts an event (the run thread's).
    pub fn post(&self, ev: Event) {
        let _ = self.tx.send(Msg::Event(ev));
    }

    /// The member's state now.
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Secondary: waits for the member's verdict after its log ran out.
    pub fn verdict(&self) -> Verdict {
        self.verdicts.recv().unwrap_or(Verdict::Halt)
    }

    /// Secondary gone live: the new output gate the member now drives.
    pub fn attach_live(&self, log: Arc<PrimaryLog>) {
        let _ = self.live_tx.send(log);
    }

    /// Waits until the member has halted (a hand-over completing) or
    /// `timeout` passed.
    pub fn wait_halted(&self, timeout: Duration) -> State {
        self.wait_while(|s| !matches!(s, State::Halted(_)), timeout)
    }

    /// Waits while the member's state is `during` (an event posted being
    /// taken, a hand-over completing), at most `timeout`; the state then.
    pub fn wait_while(&self, during: impl Fn(&State) -> bool, timeout: Duration) -> State {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if !during(&s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends the driver (closing a link still open with `Bye`) and returns
    /// the member's last state.
    pub fn finish(mut self) -> State {
        let _ = self.tx.send(Msg::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state()
    }
}

impl Ctx {
    fn run(&mut self, member: &mut Member, rx: Receiver<Msg>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            self.adopt_link(member);
            let wait = next_tick
                .saturating_duration_since(Instant::now())
                .min(self.until_silence_limit(member));
            let ev = match rx.recv_timeout(wait) {
                Ok(Msg::Event(ev)) => ev,
                Ok(Msg::Quit) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    next_tick = Instant::now() + TICK;
                    self.tick()
                }
            };
            // Events arriving faster than the tick must not starve it: the
            // tick is what notices silence.
            let ev = if Instant::now() >= next_tick {
                self.step(member, ev);
                next_tick = Instant::now() + TICK;
                self.tick()
            } else {
                ev
            };
            self.step(member, ev);
            if member.is_halted() {
                // A Secondary's run thread may wait for its verdict.
                let _ = self.verdict_tx.send(Verdict::Halt);
            }
            if matches!(member.state(), State::HandingOver { .. })
                && self.res.log.as_ref().is_some_and(|l| l.all_acked())
            {
                self.step(member, Event::AllAcked);
            }
        }
        // The run thread is done with the VM: nothing runs here any more.
        self.cancel.store(true, Ordering::SeqCst);
        self.handle.detach();
        if let Some(link) = self.res.link.take() {
            link.stop("vm stopped");
        }
        self.handle.running.store(0, Ordering::SeqCst);
        let _ = self.verdict_tx.send(Verdict::Halt);
    }

    /// One event: the new state is published *before* any action is
    /// performed, so a run thread whose vCPU an action stops reads the state
    /// that stopped it (a hand-over must never be mistaken for an orderly end
    /// of a paired VM, which would append `End` and make the Secondary halt).
    fn step(&mut self, member: &mut Member, ev: Event) {
        self.take_live_timing(member);
        let actions = member.on_event(ev);
        self.show(member);
        for a in actions {
            self.perform(a);
        }
    }

    /// What `ftctl apply` changed live: the failure timeout into the member
    /// (which applies its rules), the lag limit into the Primary's log.
    fn take_live_timing(&self, member: &mut Member) {
        let live = &self.spec.live_timing;
        let ft = live.failure_timeout(self.spec.failure_timeout);
        member.set_live_failure_timeout(ft.as_millis() as u64);
        if let Some(log) = &self.res.log {
            log.set_lag_limit(live.lag_limit(self.spec.lag_limit));
        }
    }

    /// How long until the channel's silence reaches the member's limit
    /// (just past it, so the tick then sees it reached); a long wait when
    /// the member watches no silence or has no link (then the regular tick
    /// counts the unlinked time).
    fn until_silence_limit(&self, member: &Member) -> Duration {
        match (member.silence_limit_ms(), &self.res.link) {
            (Some(limit), Some(l)) => {
                Duration::from_millis(limit).saturating_sub(l.silent_for())
                    + Duration::from_millis(1)
            }
            _ => TICK,
        }
    }

    fn tick(&mut self) -> Event {
        // A member paired with no link (a joined Secondary's link not yet
        // adopted, or never) hears nothing: that counts as silence, so it
        // never stays paired with nobody.
        let silent_ms = match (
            &self.res.link,
            &*self.state.lock().unwrap_or_else(|p| p.into_inner()),
        ) {
            (Some(l), _) => {
                self.unlinked_since = None;
                l.silent_for().as_millis() as u64
            }
            (None, State::Paired { .. }) => self
                .unlinked_since
                .get_or_insert_with(Instant::now)
                .elapsed()
                .as_millis() as u64,
            (None, _) => {
                self.unlinked_since = None;
                0
            }
        };
        // A Primary's oldest batch the Secondary has not acknowledged: a
        // Secondary heard but acknowledging nothing new is not silent.
        let unacked_ms = match (&self.res.link, &self.res.log) {
            (Some(_), Some(log)) => log.unacked_for().as_millis() as u64,
            _ => 0,
        };
        // Receipt acks are prompt, but they ride with the Secondary's
        // progress reports, and a Secondary still building its VM at the
        // pair start, or on a loaded host, reports late: `make test`'s
        // respawn run lost its pair at exit 47 to this guard at the plain
        // failure timeout. So a lockstep Secondary is lost to it only past
        // twice the failure timeout (silence alone still counts at once).
        let live = &self.spec.live_timing;
        let grace = live.failure_timeout(self.spec.failure_timeout);
        Event::Tick {
            now_ms: self.started.elapsed().as_millis() as u64,
            silent_ms,
            unacked_ms,
            unacked_grace_ms: grace.as_millis() as u64,
        }
    }

    /// Publishes the member's state to status, the run thread and fencing's
    /// publication (the generation acted in or being acquired as Primary).
    fn show(&self, member: &Member) {
        let st = member.state();
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = st.clone();
        *self.handle.member.lock().unwrap_or_else(|p| p.into_inner()) = Some(st.clone());
        *self.handle.hosts.lock().unwrap_or_else(|p| p.into_inner()) =
            (self.spec.host.clone(), member.peer().to_string());
        self.handle.set_role(&st.to_string());
        self.handle
            .generation
            .store(member.generation(), Ordering::SeqCst);
        self.handle
            .running
            .store(member.published_generation(), Ordering::SeqCst);
    }

    fn perform(&mut self, a: Action) {
        match a {
            Action::Gate(g) => {
                if let Some(log) = &self.res.log {
                    log.set_gate(g);
                }
            }
            Action::Acquire { generation } => self.race(generation),
            Action::StopVcpu => {
                if let Some(log) = &self.res.log {
                    log.stop_waiting();
                }
                if let Some(q) = &self.res.queue {
                    q.abort();
                }
                self.cancel.store(true, Ordering::SeqCst);
                self.res.vm.stop();
            }
            Action::Resign { reason } => {
                if let Some(link) = self.res.link.take() {
                    link.hand_over(&reason);
                }
            }
            Action::SendDiverged { what } => {
                if let Some(link) = self.res.link.take() {
                    link.diverged(&what);
                }
            }
            Action::CloseLink { reason } => {
                if let Some(q) = &self.res.queue {
                    q.close(&reason);
                }
                if let Some(link) = self.res.link.take() {
                    link.stop(&reason);
                }
            }
            Action::GoLive { generation, at } => self.go_live(generation, at),
            Action::Say(line) => println!("{line}"),
        }
    }

    /// Takes the link of a Secondary that joined by live transfer, if the
    /// member is paired with it; a link nobody is paired with is closed
    /// (the transfer's side already gave up, or the member moved on).
    fn adopt_link(&mut self, member: &Member) {
        let Some(link) = self.handle.take_new_link() else {
            return;
        };
        if matches!(member.state(), State::Paired { .. }) && self.res.link.is_none() {
            self.res.link = Some(link);
        } else {
            link.stop("not paired");
        }
    }

    /// Asks fencing for `generation` on a worker; the answer comes back as
    /// `Decided`. While storage does not answer it says so once. A
    /// Secondary's claim first waits as its own VM network says
    /// (`claim_vmnet.rs`: cut, it lets a member that can serve win first).
    fn race(&self, generation: u64) {
        let vm = self.spec.hello.vm.clone();
        let fencing = self.spec.fencing_socket.clone();
        let claiming = matches!(
            *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            State::Claiming { .. }
        );
        let (heartbeat, here) = (self.spec.heartbeat_socket.clone(), self.spec.host.clone());
        let config_generation = self.spec.applied_config_generation;
        let (events, cancel) = (self.events.clone(), Arc::clone(&self.cancel));
        let cut = Arc::clone(&self.cut);
        // Publication before the Acquire (docs/design.md §1).
        self.handle.running.store(generation, Ordering::SeqCst);
        let t = Instant::now();
        std::thread::Builder::new()
            .name(format!("race-{vm}-{generation}"))
            .spawn(move || {
                let waiting = |why: &str| {
                    println!(
                        "ftvmm: vm {vm}: storage does not answer ({why}); holding output and waiting"
                    )
                };
                if claiming
                    && !claim_vmnet::wait_before_claim(&heartbeat, (&vm, &here), generation, &cancel)
                {
                    return;
                }
                let decided = fence::acquire_until(
                    &fencing,
                    &vm,
                    generation,
                    config_generation,
                    &cancel,
                    waiting,
                );
                if let Some(fence::Acquired {
                    decision,
                    storage_cut,
                }) = decided
                {
                    tracing::info!(vm, generation, ?decision, storage_cut, ms = t.elapsed().as_millis() as u64, "decided");
                    if storage_cut {
                        cut.store(generation, Ordering::SeqCst);
                    }
                    let _ = events.send(Event::Decided {
                        generation,
                        decision,
                    });
                }
            })
            .expect("spawn race worker");
    }

    /// Tells the Secondary's run thread to go live and takes over the output
    /// gate it builds.
    fn go_live(&mut self, generation: u64, at: u64) {
        let storage_cut = self.cut.load(Ordering::SeqCst) == generation;
        let _ = self.verdict_tx.send(Verdict::GoLive {
            generation,
            at,
            storage_cut,
        });
        match self.live_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(log) => {
                *self
                    .handle
                    .primary
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&log));
                self.res.log = Some(log);
                self.res.queue = None;
            }
            Err(_) => println!(
                "ftvmm: vm {}: won generation {generation} but the VM could not go live; it stays stopped",
                self.spec.hello.vm
            ),
        }
    }
}
