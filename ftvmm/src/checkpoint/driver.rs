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
//!   `ChannelLost`: the member holds and races.
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
//! Not here: respawn of a checkpoint Secondary, fresh-ack stamps (acks are
//! taken as they come, as `remote.rs` does), the late-write fence at
//! take-over (the unfinished writes are the caller's `write_pending`), and
//! the daemon wiring (placement, pair start, images): the manager still
//! refuses checkpoint VMs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver as EventRx, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::epoch::DiskWrite;
use super::gate::{EpochGate, GateConfig};
use super::gated::{FrameOut, GatedOutputs};
use super::primary::{self, EpochLoopError, EpochSink, LoopConfig};
use super::receiver::Receiver;
use super::remote::{serve, LinkError};
use super::secondary::{self, Rebuild, Staging};
use crate::linux::machine::Running;
use crate::lockstep::channel::{Channel, ChannelError, ChannelSender, Message};
use crate::lockstep::fence;
use crate::lockstep::grant::HostGrant;
use crate::lockstep::member::{Action, Decision, Event, Gate, Grant, Member, State};
use crate::lockstep::spec::PairHandle;

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
}

/// The fencing agent behind its control socket (the daemon's).
pub struct SocketFencing {
    pub socket: std::path::PathBuf,
    pub config_generation: u64,
}

impl Fencing for SocketFencing {
    fn acquire(&self, vm: &str, generation: u64, cancel: &AtomicBool) -> Option<Decision> {
        let waiting = |why: &str| {
            println!("ftvmm: vm {vm}: storage does not answer ({why}); holding output and waiting")
        };
        fence::acquire_until(
            &self.socket,
            vm,
            generation,
            self.config_generation,
            cancel,
            waiting,
        )
        .map(|a| a.decision)
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
    /// Secondary whose Primary is gone: the epoch to resume from, once
    /// nothing is left to apply; `Some(0)`: none (it halts, never races).
    fn drained(&mut self) -> Option<u64>;
    /// Primary handing over: the Secondary holds every closed epoch.
    fn all_acked(&self) -> bool;
}

/// A running member driver.
pub struct MemberDriver {
    events: Sender<Event>,
    state: Arc<Mutex<State>>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemberDriver {
    /// The driver's event channel, made before the effects that post to it.
    pub fn channel() -> (Sender<Event>, EventRx<Event>) {
        mpsc::channel()
    }

    /// Runs `member` of `vm` on `host` over `effects`, published to `handle`
    /// (which takes the daemon's events from now on); applies its initial
    /// gate first.
    pub fn start(
        (vm, host): (&str, &str),
        member: Member,
        effects: Box<dyn Effects>,
        fencing: Arc<dyn Fencing>,
        handle: Arc<PairHandle>,
        (events, rx): (Sender<Event>, EventRx<Event>),
    ) -> Self {
        handle.attach(events.clone());
        let state = Arc::new(Mutex::new(member.state().clone()));
        let quit = Arc::new(AtomicBool::new(false));
        let mut run = Run {
            vm: vm.to_string(),
            effects,
            fencing,
            events: events.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
            state: Arc::clone(&state),
            handle,
            host: host.to_string(),
            started: Instant::now(),
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
        MemberDriver {
            events,
            state,
            quit,
            thread: Some(thread),
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
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state()
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
}

impl Run {
    fn run(&mut self, member: &mut Member, rx: &EventRx<Event>, quit: &AtomicBool) {
        loop {
            let ev = match rx.recv_timeout(TICK) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => Event::Tick {
                    now_ms: self.started.elapsed().as_millis() as u64,
                    silent_ms: self.effects.silent_ms(),
                },
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
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn step(&mut self, member: &mut Member, ev: Event) {
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
        let spawned = std::thread::Builder::new()
            .name(format!("ckpt-race-{vm}-{generation}"))
            .spawn(move || {
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

// ---- the Primary ----

/// The Primary's end of the link: the epoch sender, the ack thread's stop,
/// when the Secondary was last heard.
struct PrimaryLink {
    tx: Mutex<Option<ChannelSender>>,
    stop: AtomicBool,
    heard: Mutex<Instant>,
    events: Mutex<Sender<Event>>,
}

impl PrimaryLink {
    /// The link is gone (`why`): close it, tell the member once.
    fn lost(&self, why: String) {
        if let Some(tx) = lock(&self.tx).take() {
            tx.shutdown();
            let _ = lock(&self.events).send(Event::ChannelLost { why });
        }
    }

    fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = lock(&self.tx).take() {
            tx.shutdown();
        }
    }
}

/// Epochs into the link while there is one; without one (the member runs
/// alone, or races) an epoch is only closed, for the gate.
struct LinkSink(Arc<PrimaryLink>);

impl EpochSink for LinkSink {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String> {
        let mut tx = lock(&self.0.tx);
        let Some(t) = tx.as_mut() else {
            return Ok(());
        };
        if let Err(e) = t.send(&Message::EpochPiece { bytes: piece }) {
            let why = format!("sending an epoch to {}: {e}", t.peer());
            drop(tx);
            self.0.lost(why);
        }
        Ok(())
    }
}

/// A checkpoint Primary's VM, epochs and link (module doc).
pub struct PrimaryEffects {
    running: Arc<Running>,
    outputs: Arc<GatedOutputs>,
    link: Arc<PrimaryLink>,
    epochs_stop: Arc<AtomicBool>,
    /// The epoch loop ended: no epoch closes any more.
    epochs_done: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PrimaryEffects {
    /// Starts the epoch loop and the ack thread for `running`, whose
    /// backend is gated by `outputs`, over `ch` (read timeout set).
    pub fn start(
        running: Arc<Running>,
        outputs: Arc<GatedOutputs>,
        ch: Channel,
        cfg: LoopConfig,
        events: Sender<Event>,
    ) -> std::io::Result<Self> {
        let (tx, mut rx) = ch.split();
        let link = Arc::new(PrimaryLink {
            tx: Mutex::new(Some(tx)),
            stop: AtomicBool::new(false),
            heard: Mutex::new(Instant::now()),
            events: Mutex::new(events),
        });
        let acks = {
            let (link, outputs) = (Arc::clone(&link), Arc::clone(&outputs));
            std::thread::Builder::new()
                .name("ckpt-acks".into())
                .spawn(move || {
                    if let Some(why) = read_acks(&mut rx, &outputs, &link) {
                        link.lost(why);
                    }
                })?
        };
        let epochs_stop = Arc::new(AtomicBool::new(false));
        let epochs_done = Arc::new(AtomicBool::new(false));
        let epochs = {
            let (running, outputs) = (Arc::clone(&running), Arc::clone(&outputs));
            let (stop, mut sink) = (Arc::clone(&epochs_stop), LinkSink(Arc::clone(&link)));
            let (done, link) = (Arc::clone(&epochs_done), Arc::clone(&link));
            std::thread::Builder::new()
                .name("ckpt-epochs".into())
                .spawn(move || {
                    let end =
                        primary::run_epochs(&running, &outputs, &mut sink, cfg, &stop, |_| {});
                    done.store(true, Ordering::SeqCst);
                    on_epochs_end(end, &outputs, &link, &running);
                })?
        };
        Ok(PrimaryEffects {
            running,
            outputs,
            link,
            epochs_stop,
            epochs_done,
            threads: vec![acks, epochs],
        })
    }
}

/// The epoch loop ended. The member stopped the VM (it halted the outputs
/// first) or told it to stop: nothing to do. The guest ended on its own: an
/// orderly end, `Bye` to the Secondary (which halts without racing), and the
/// member stops. The loop failed: the VM stops and the member with it; the
/// link closes without `Bye`, so the Secondary races and resumes from its
/// last complete epoch.
fn on_epochs_end(
    end: Result<(), EpochLoopError>,
    outputs: &GatedOutputs,
    link: &PrimaryLink,
    running: &Running,
) {
    if outputs.failed() {
        return;
    }
    match end {
        Ok(()) => return,
        Err(EpochLoopError::VmEnded) => {
            let reason = format!(
                "the Primary's guest ended: {}",
                running.ended().map_or("?".to_string(), |e| e.to_string())
            );
            link.stop.store(true, Ordering::SeqCst);
            if let Some(mut tx) = lock(&link.tx).take() {
                let _ = tx.send_last(&Message::Bye { reason });
                tx.shutdown();
            }
        }
        Err(e) => {
            println!("ftvmm: checkpoint epoch loop ended: {e}; the VM stops");
            outputs.halt();
            running.stop();
            link.close();
        }
    }
    let _ = lock(&link.events).send(Event::Stop);
}

/// Acks into the gate until the link ends (`Some(why)`) or is closed here.
fn read_acks(
    rx: &mut crate::lockstep::channel::ChannelReceiver,
    outputs: &GatedOutputs,
    link: &PrimaryLink,
) -> Option<String> {
    loop {
        if link.stop.load(Ordering::SeqCst) {
            return None;
        }
        match rx.recv() {
            Ok(Message::EpochAck { epoch }) => {
                *lock(&link.heard) = Instant::now();
                if let Err(e) = outputs.on_ack(epoch) {
                    return Some(format!("acknowledgement of epoch {epoch} refused: {e}"));
                }
            }
            Ok(Message::Bye { reason }) => {
                return Some(format!("the secondary said bye: {reason}"))
            }
            Ok(m) => {
                return Some(format!(
                "a {} message on a checkpoint link, where the Primary takes only EpochAck and Bye",
                m.kind()
            ))
            }
            Err(ChannelError::Timeout) => {}
            Err(e) => return Some(format!("channel: {e}")),
        }
    }
}

#[cfg(test)]
impl PrimaryEffects {
    /// Cuts the link as a partition would (both sides see it end).
    pub(crate) fn link_cutter(&self) -> impl Fn() + Send + 'static {
        let link = Arc::clone(&self.link);
        move || link.lost("cut by the test".into())
    }

    pub(crate) fn outputs(&self) -> Arc<GatedOutputs> {
        Arc::clone(&self.outputs)
    }

    pub(crate) fn vm_control(&self) -> Arc<crate::linux::vcpus::Control> {
        self.running.control()
    }
}

impl Effects for PrimaryEffects {
    fn set_gate(&mut self, gate: Gate, generation: u64) {
        if let Err(e) = self.outputs.set_member_gate(gate, generation) {
            // Refused transitions leave the gate holding (gated.rs).
            tracing::warn!("checkpoint: gate {gate:?} in generation {generation}: {e}");
        }
    }

    fn stop_vcpu(&mut self) {
        self.outputs.halt();
        self.running.stop();
    }

    fn close_link(&mut self, reason: &str) {
        tracing::info!("checkpoint: closing the link to the Secondary: {reason}");
        self.link.close();
    }

    /// Every closed epoch is acknowledged and the VM stopped: `Resign`,
    /// then close.
    fn resign(&mut self, reason: &str) {
        self.link.stop.store(true, Ordering::SeqCst);
        if let Some(mut tx) = lock(&self.link.tx).take() {
            let _ = tx.send_last(&Message::Resign {
                reason: reason.to_string(),
            });
            tx.shutdown();
        }
    }

    fn grant_back(&mut self) {
        self.outputs.kick();
    }

    fn go_live(&mut self, generation: u64, _at: u64) {
        tracing::error!("checkpoint: a Primary told to go live in generation {generation}");
    }

    fn silent_ms(&self) -> u64 {
        if lock(&self.link.tx).is_none() {
            return 0;
        }
        lock(&self.link.heard).elapsed().as_millis() as u64
    }

    fn drained(&mut self) -> Option<u64> {
        None
    }

    /// The VM stopped (no epoch closes any more) and every closed one is
    /// acknowledged.
    fn all_acked(&self) -> bool {
        self.epochs_done.load(Ordering::SeqCst) && self.outputs.all_closed_acked()
    }
}

impl Drop for PrimaryEffects {
    /// This host's side goes away: nothing more leaves, the VM stops.
    fn drop(&mut self) {
        self.outputs.halt();
        self.epochs_stop.store(true, Ordering::SeqCst);
        self.link.close();
        self.running.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.running.wait();
    }
}

// ---- the Secondary ----

/// How a Secondary resumes the VM when it wins.
pub struct TakeOverPlan {
    pub grant: Arc<HostGrant>,
    pub gate: GateConfig,
    /// How often the lone Primary's gate closes an epoch (releases).
    pub epoch: Duration,
    pub frame_out: Option<FrameOut>,
    /// The VM around the staging memory, its backend gated by the outputs.
    pub rebuild: Box<dyn FnOnce(Arc<GatedOutputs>) -> Rebuild + Send>,
    /// The last epoch's unfinished writes, in order, durably.
    pub write_pending: WritePending,
}

/// Writes a take-over's unfinished epoch writes (`secondary::take_over`).
pub type WritePending = Box<dyn FnOnce(&[DiskWrite]) -> Result<(), String> + Send>;

/// The VM a Secondary resumed.
pub struct Live {
    pub running: Arc<Running>,
    pub outputs: Arc<GatedOutputs>,
    /// The epoch it resumed from.
    pub epoch: u64,
}

type Served = (Receiver<Staging>, LinkError);

/// A checkpoint Secondary's link, staging memory and take-over.
pub struct SecondaryEffects {
    vm: String,
    serve: Option<JoinHandle<Served>>,
    stop: Arc<AtomicBool>,
    applied_at: Arc<Mutex<Instant>>,
    receiver: Option<Receiver<Staging>>,
    plan: Option<TakeOverPlan>,
    live: Arc<Mutex<Option<Live>>>,
    ticker: Option<JoinHandle<()>>,
}

impl SecondaryEffects {
    /// Serves `ch` (read timeout set) into staging memory of `mem_size`
    /// bytes for the pair in `generation`.
    pub fn start(
        vm: &str,
        ch: Channel,
        generation: u64,
        mem_size: u64,
        plan: TakeOverPlan,
        events: Sender<Event>,
    ) -> Result<Self, crate::linux::LinuxVmError> {
        let mut r = Receiver::new(generation, Staging::new(mem_size)?, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let applied_at = Arc::new(Mutex::new(Instant::now()));
        let serve = {
            let (stop, at) = (Arc::clone(&stop), Arc::clone(&applied_at));
            std::thread::Builder::new()
                .name(format!("ckpt-serve-{vm}"))
                .spawn(move || {
                    let (mut tx, mut rx) = ch.split();
                    let end = serve(&mut tx, &mut rx, &mut r, &stop, |_| {
                        *lock(&at) = Instant::now()
                    });
                    let ev = match &end {
                        LinkError::Bye { .. } => Some(Event::PrimaryEnded),
                        LinkError::Resigned { reason } => Some(Event::PeerResigned {
                            why: format!("the Primary resigned: {reason}"),
                        }),
                        LinkError::Stopped => None,
                        e => Some(Event::ChannelLost {
                            why: format!("epoch link: {e}"),
                        }),
                    };
                    if let Some(ev) = ev {
                        let _ = events.send(ev);
                    }
                    (r, end)
                })
                .map_err(crate::linux::LinuxVmError::Thread)?
        };
        Ok(SecondaryEffects {
            vm: vm.to_string(),
            serve: Some(serve),
            stop,
            applied_at,
            receiver: None,
            plan: Some(plan),
            live: Arc::default(),
            ticker: None,
        })
    }

    /// Where the resumed VM appears (status, tests).
    pub fn live(&self) -> Arc<Mutex<Option<Live>>> {
        Arc::clone(&self.live)
    }

    fn take_over(&mut self, generation: u64) -> Result<Live, String> {
        let r = self.receiver.take().ok_or("no staging memory left")?;
        let plan = self.plan.take().ok_or("already taken over")?;
        // Held until the member opens it in `generation` (or later, if its
        // grant was away when it won).
        let outputs = GatedOutputs::with_grant(
            EpochGate::new(plan.gate, generation - 1),
            plan.frame_out,
            plan.grant,
            true,
        );
        let mut rebuild = (plan.rebuild)(Arc::clone(&outputs));
        rebuild.advance_ns = lock(&self.applied_at).elapsed().as_nanos() as u64;
        let (running, epoch) = secondary::take_over(r.take_over(), rebuild, plan.write_pending)
            .map_err(|e| e.to_string())?;
        let running = Arc::new(running);
        let (o, rn, every) = (Arc::clone(&outputs), Arc::clone(&running), plan.epoch);
        self.ticker = Some(
            std::thread::Builder::new()
                .name(format!("ckpt-solo-{}", self.vm))
                .spawn(move || {
                    while rn.ended().is_none() && !o.failed() {
                        std::thread::sleep(every);
                        o.close_epoch();
                    }
                })
                .map_err(|e| e.to_string())?,
        );
        Ok(Live {
            running,
            outputs,
            epoch,
        })
    }
}

impl Effects for SecondaryEffects {
    fn set_gate(&mut self, gate: Gate, generation: u64) {
        if let Some(l) = lock(&self.live).as_ref() {
            if let Err(e) = l.outputs.set_member_gate(gate, generation) {
                tracing::warn!("checkpoint: gate {gate:?} in generation {generation}: {e}");
            }
        }
    }

    fn stop_vcpu(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(l) = lock(&self.live).as_ref() {
            l.outputs.halt();
            l.running.stop();
        }
    }

    fn close_link(&mut self, reason: &str) {
        tracing::info!("checkpoint: closing the link to the Primary: {reason}");
        self.stop.store(true, Ordering::SeqCst);
    }

    fn resign(&mut self, _reason: &str) {}

    fn grant_back(&mut self) {
        if let Some(l) = lock(&self.live).as_ref() {
            l.outputs.kick();
        }
    }

    fn go_live(&mut self, generation: u64, at: u64) {
        let t = Instant::now();
        match self.take_over(generation) {
            Ok(live) => {
                println!(
                    "ftvmm: vm {}: resumed from epoch {} (member at {at}) in generation {generation} in {} ms",
                    self.vm,
                    live.epoch,
                    t.elapsed().as_millis()
                );
                *lock(&self.live) = Some(live);
            }
            Err(e) => println!(
                "ftvmm: vm {}: won generation {generation} but could not resume from epoch {at}: {e}; it stays stopped",
                self.vm
            ),
        }
    }

    fn silent_ms(&self) -> u64 {
        match &self.serve {
            Some(h) if !h.is_finished() => lock(&self.applied_at).elapsed().as_millis() as u64,
            _ => 0,
        }
    }

    fn drained(&mut self) -> Option<u64> {
        if self.serve.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.serve.take()?;
            match h.join() {
                Ok((r, _)) => self.receiver = Some(r),
                Err(_) => tracing::error!("checkpoint: the epoch link thread panicked"),
            }
        }
        self.receiver.as_ref().map(Receiver::last)
    }

    fn all_acked(&self) -> bool {
        false
    }
}

impl Drop for SecondaryEffects {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.serve.take() {
            let _ = h.join();
        }
        if let Some(l) = lock(&self.live).take() {
            l.outputs.halt();
            l.running.stop();
            let _ = l.running.wait();
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
