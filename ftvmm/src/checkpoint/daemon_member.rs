//! The daemon's checkpoint member: this host's part of a checkpoint VM,
//! run to its end — the mirror of lockstep's `placement::run_member`, by the
//! same placement, generations, pair start and failure handling, with the
//! checkpoint [`MemberDriver`] (`driver.rs`) in place of the lockstep one.
//!
//! - Primary: wins the generation to start in, pairs with the Secondary
//!   over the channel (`pair::hello`: the Secondary refuses another VM,
//!   image, config generation, memory, mode, vCPU count or epoch), boots
//!   the VM behind the epoch gate and ships epochs. Its Secondary's host
//!   down past the power-on grace: it runs alone (`wait.rs`).
//! - Secondary: accepts only the configured Primary, for the generation
//!   fencing says that host owns; applies epochs; on the Primary's loss its
//!   member races for `g + 1` and, won, resumes the VM from the last
//!   complete epoch: the unfinished writes first, under the late-write
//!   fence, then gratuitous ARPs (`driver_secondary.rs`). Its Primary's
//!   host down past the grace with no live host running the VM: it powers
//!   the VM on alone, as lockstep's listener does.
//! - Unprotected (the VM's rule allows this host only): wins and runs alone.
//!
//! - Standby (allowed here, not one of the pair): listens for a running
//!   Primary's join only. A join (`Hello.start_exit == JOIN_BY_TRANSFER`)
//!   is taken by a standby or the configured Secondary, only for a VM the
//!   config allows here and only from the owner of the generation on disk
//!   ([`check_join`]); the full first checkpoint is received
//!   (`respawn.rs`), and after `Paired` this host is a normal checkpoint
//!   Secondary. A join that fails before `Paired` discards the copy and the
//!   host listens again.
//! - Respawn: beside every Primary (and every Secondary, for after its
//!   take-over) runs lockstep's keeper with the checkpoint [`CheckpointJoin`]:
//!   whenever the member runs alone it places a new Secondary.
//!
//! The run returns once the member halted (stopped, lost, handed over, its
//! guest ended) — [`MemberDriver::finish`] then stops whatever runs here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use config_schema::runtime::RuntimeConfig;

use super::daemon_spec::CheckpointSpec;
use super::daemon_status::Figures;
use super::driver::{
    Effects, JoinPort, Live, LiveFailureTimeout, MemberDriver, PrimaryEffects, SecondaryEffects,
    SocketFencing, TakeOverPlan,
};
use super::gate::EpochGate;
use super::gated::{FrameOut, GatedBackend, GatedOutputs};
use super::keepalive::AliveLink;
use super::local::GATE;
use super::primary::{self, LoopConfig};
use super::receiver::Receiver;
use super::respawn::CheckpointJoin;
use super::secondary::{Rebuild, Staging};
use crate::linux::machine::{LinuxVm, Running};
use crate::linux::run::{open_devices, transports, LinuxSpec};
use crate::linux::{End, LinuxVmError};
use crate::live::{self, ConsoleSink, Tap};
use crate::lockstep::channel::Channel;
use crate::lockstep::member::{Acks, Event, Member, State};
use crate::lockstep::pair::primary_handshake;
use crate::lockstep::placement::wait::{WaitEnd, Watch};
use crate::lockstep::placement::{ft_ip, key, win_generation, Role, StopOnDrop};
use crate::lockstep::respawn::keeper::Keeper;
use crate::lockstep::spec::{channel_port, PairError, PairHandle};

/// How often the run looks at its member and VM.
const LOOK: Duration = Duration::from_millis(50);
/// Beyond the last epoch's limit, before a guest's own end stops the member
/// from here ([`wait_for_end`]): the epoch loop's own stop follows its wait.
const LAST_EPOCH_SLACK: Duration = Duration::from_secs(2);

/// How a member's run ended.
#[derive(Debug)]
pub struct CheckpointEnd {
    /// The member's last state.
    pub member: State,
}

/// What the member's run needs besides the spec.
pub struct MemberCtx<'a> {
    pub rc: &'a RuntimeConfig,
    pub vm: &'a config_schema::Vm,
    pub handle: &'a Arc<PairHandle>,
    /// Set by the daemon to stop the member (with `Event::Stop`).
    pub stop: &'a Arc<AtomicBool>,
    pub figures: &'a Arc<Figures>,
    /// The fencing the member races with (the daemon: the agent's socket).
    pub fencing: Arc<SocketFencing>,
}

/// Runs this host's part of checkpoint VM `ctx.vm` to its end (blocking;
/// module doc). `on_start` runs once a VM or a Secondary runs here.
pub fn run_checkpoint_member(
    ctx: &MemberCtx<'_>,
    role: &Role,
    spec: CheckpointSpec,
    console: ConsoleSink,
    on_start: impl FnOnce(),
) -> Result<CheckpointEnd, PairError> {
    let mut spec = spec;
    // The Primary a power-on pair comes from, by the rule in force for
    // this run (`live_affinity`), as in lockstep's `run_member`.
    if let Some(p) = crate::lockstep::placement::pair_hosts(&ctx.rc.config, ctx.vm).first() {
        spec.pair.hello.primary_host = p.clone();
    }
    let (handle, stop) = (ctx.handle, ctx.stop);
    match role {
        Role::Primary { secondary } => {
            handle.set_role("checkpoint primary (winning its generation)");
            spec.pair.hello.generation = win_generation(&spec.pair, handle, stop)?;
            handle.set_role("checkpoint primary (pairing)");
            spec.pair.peer = secondary.clone();
            let Some(ch) = pair_with_secondary(ctx, &spec, secondary)? else {
                println!(
                    "ftvmm: vm {}: secondary {secondary} is down after power-on; running alone in generation {} until a secondary can be placed",
                    ctx.vm.name, spec.pair.hello.generation
                );
                return run_alone(ctx, &spec, console, on_start);
            };
            println!(
                "ftvmm: vm {}: paired with secondary {secondary}; generation {}; checkpoint every {} ms",
                ctx.vm.name,
                spec.pair.hello.generation,
                spec.epoch.as_millis()
            );
            run_primary(ctx, &spec, Some(ch), console, on_start)
        }
        Role::Secondary { .. } | Role::Standby => loop {
            let standby = *role == Role::Standby;
            handle.set_role(if standby {
                "checkpoint standby"
            } else {
                "checkpoint secondary (pairing)"
            });
            match accept_primary(ctx, &spec, role)? {
                Accepted::Paired(paired) => {
                    let (ch, hello) = *paired;
                    spec.pair.hello.generation = hello.generation;
                    spec.pair.peer = hello.primary_host.clone();
                    println!(
                        "ftvmm: vm {}: paired with primary {}; generation {}",
                        ctx.vm.name, spec.pair.peer, hello.generation
                    );
                    let link = AliveLink::start(ch, "ckpt-alive");
                    return run_secondary(ctx, &spec, link, None, console, on_start);
                }
                Accepted::Join(paired) => {
                    let (ch, hello) = *paired;
                    let mut s = spec.clone();
                    s.pair.hello.generation = hello.generation;
                    s.pair.peer = hello.primary_host.clone();
                    match receive(ctx, &s, ch) {
                        Ok((r, link)) => {
                            println!(
                                "ftvmm: vm {}: joined primary {} as its secondary by a full checkpoint (holds epoch {}); generation {}",
                                ctx.vm.name, s.pair.peer, r.last(), hello.generation
                            );
                            return run_secondary(ctx, &s, link, Some(r), console, on_start);
                        }
                        Err(e) => println!(
                            "ftvmm: vm {}: join from {} failed: {e}; copy discarded",
                            ctx.vm.name, s.pair.peer
                        ),
                    }
                }
                Accepted::PowerOnHere => {
                    handle.set_role("checkpoint primary alone (winning its generation)");
                    spec.pair.hello.generation = win_generation(&spec.pair, handle, stop)?;
                    println!(
                        "ftvmm: vm {}: the hosts before {} are down; powered on here alone in generation {}",
                        ctx.vm.name, spec.pair.host, spec.pair.hello.generation
                    );
                    return run_alone(ctx, &spec, console, on_start);
                }
            }
            if stop.load(Ordering::SeqCst) {
                return Err(PairError::Stopped);
            }
        },
        Role::Unprotected => {
            handle.set_role("checkpoint primary alone (winning its generation)");
            spec.pair.hello.generation = win_generation(&spec.pair, handle, stop)?;
            println!(
                "ftvmm: vm {}: runs unprotected on {} in generation {} (its affinity allows no other host)",
                ctx.vm.name, spec.pair.host, spec.pair.hello.generation
            );
            run_alone(ctx, &spec, console, on_start)
        }
        Role::None => Err(PairError::NotStarting(format!(
            "vm {}: the config does not allow this host",
            ctx.vm.name
        ))),
    }
}

/// The Primary's side of the pair start; `None`: the Secondary's host is
/// down past the power-on grace (run alone).
fn pair_with_secondary(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    secondary: &str,
) -> Result<Option<Channel>, PairError> {
    let rc = ctx.rc;
    let peer = (rc.config.hosts.iter())
        .find(|h| h.name == secondary)
        .ok_or_else(|| PairError::Protocol(format!("no host {secondary}")))?;
    let peer_key = key(&peer.public_key)
        .ok_or_else(|| PairError::Protocol(format!("bad public key of {secondary}")))?;
    let ip = ft_ip(rc, secondary)
        .ok_or_else(|| PairError::Protocol(format!("bad ft.addr of {secondary}")))?;
    let addr = std::net::SocketAddr::new(ip, channel_port(vm_index(ctx)));
    let fencing = spec.pair.fencing_socket.clone();
    let watch = Watch::primary(rc, &ctx.vm.name, secondary, fencing, ctx.stop);
    let paired = primary_handshake(&spec.pair, addr, &peer_key, secondary, &watch.flag);
    match (paired, watch.end()) {
        (Err(PairError::Stopped), Some(WaitEnd::PartnerDown)) => Ok(None),
        (r, _) => r.map(Some),
    }
}

/// The VM's fencing slot: its channel port (`channel_port`).
fn vm_index(ctx: &MemberCtx<'_>) -> usize {
    (ctx.rc.config.slot_of(&ctx.vm.name)).expect("vm is from this config") as usize
}

#[path = "daemon_listen.rs"]
mod listen;

#[cfg(test)]
pub(crate) use listen::check_join;
use listen::{accept_primary, receive, Accepted};

/// How long the epoch loop may take to take a join and its switch epoch to
/// be acknowledged, and how long a joining Secondary waits for a silent
/// Primary: five failure timeouts, never less than 10 s. The Primary gives
/// a silent joining Secondary up after the failure timeout itself; nothing
/// bounds how long a full epoch takes to stream (`respawn.rs`, liveness).
fn join_timeout(spec: &CheckpointSpec) -> Duration {
    (spec.pair.failure_timeout * 5).max(Duration::from_secs(10))
}

/// A Primary VM behind the epoch gate, booted; the gate starts held (the
/// member's first action sets it) in `gate_generation`.
fn boot_primary(
    spec: &CheckpointSpec,
    gate_generation: u64,
    console: ConsoleSink,
) -> Result<(Arc<Running>, Arc<GatedOutputs>), PairError> {
    let vm_err = |e: LinuxVmError| PairError::NotStarting(e.to_string());
    let (disk, tap, virtio) = open_devices(&spec.linux).map_err(vm_err)?;
    let tap = tap.map(Arc::new);
    if let (Some(t), Some(br)) = (&tap, &spec.bridge) {
        live::tap::bridge_add(br, t.name())
            .map_err(|e| PairError::NotStarting(format!("TAP {}: {e}", t.name())))?;
    }
    let outputs = GatedOutputs::with_grant(
        EpochGate::new(GATE, gate_generation),
        super::local::frame_out(tap.clone()),
        Arc::clone(&spec.pair.grant),
        true,
    );
    let name = spec.pair.hello.vm.clone();
    let backend = GatedBackend::new(
        Arc::clone(&outputs),
        disk,
        tap,
        0,
        Box::new(move |why| println!("ftvmm: vm {name}: {why}; the VM stops")),
    );
    let vm = LinuxVm::create(
        spec.linux.vcpus,
        spec.linux.mem_mib << 20,
        virtio,
        console,
        Box::new(backend),
    )
    .map_err(vm_err)?;
    (spec.boot)(&vm, &spec.linux).map_err(vm_err)?;
    let running = vm.start().map_err(vm_err)?;
    Ok((Arc::new(running), outputs))
}

/// The Primary, paired over `ch` or alone (`None`).
fn run_primary(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    ch: Option<Channel>,
    console: ConsoleSink,
    on_start: impl FnOnce(),
) -> Result<CheckpointEnd, PairError> {
    let g = spec.pair.hello.generation;
    let paired = ch.is_some();
    // Alone, the gate starts in the generation before and the member opens
    // it in `g` (`set_member_gate`).
    let (running, outputs) = boot_primary(spec, if paired { g } else { g - 1 }, console)?;
    ctx.figures
        .set_primary(Arc::clone(&outputs), running.memory());
    let events = MemberDriver::channel();
    let cfg = LoopConfig {
        epoch: spec.epoch,
        first_full: true,
        dirty: Default::default(),
        delta_bytes: spec.delta_bytes,
    };
    let thread = |e: std::io::Error| PairError::NotStarting(format!("cannot start: {e}"));
    let label = format!("ftvmm: vm {}: ", ctx.vm.name);
    let effects = match ch {
        Some(ch) => PrimaryEffects::start(
            &label,
            Arc::clone(&running),
            outputs,
            ch,
            cfg,
            events.0.clone(),
        ),
        None => PrimaryEffects::start_alone(
            &label,
            Arc::clone(&running),
            outputs,
            cfg,
            events.0.clone(),
        ),
    }
    .map_err(thread)?;
    let port = Arc::new(Mutex::new(Some(effects.join_port())));
    let member = Member::primary(&ctx.vm.name, &spec.pair.peer, g, paired, timeout_ms(spec))
        .acknowledging(Acks::Epochs);
    let driver = start_driver(ctx, spec, member, Box::new(effects), events);
    let _keeper = start_keeper(ctx, spec, port);
    on_start();
    Ok(wait_for_end(ctx, driver, || running.ended()))
}

/// The respawn keeper beside a member (`respawn.rs`, lockstep's
/// `keeper.rs`): whenever the member runs alone with an epoch loop behind
/// `port`, it brings a new Secondary in. It stops when the run ends.
fn start_keeper(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    port: Arc<Mutex<Option<JoinPort>>>,
) -> StopOnDrop {
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = Keeper {
        rc: ctx.rc.clone(),
        vm: ctx.vm.clone(),
        index: vm_index(ctx),
        spec: spec.pair.clone(),
        handle: Arc::clone(ctx.handle),
        stop: Arc::clone(&stop),
        join: Arc::new(CheckpointJoin {
            handle: Arc::clone(ctx.handle),
            port,
            timeout: join_timeout(spec),
            silence: spec.pair.failure_timeout,
        }),
    };
    let thread = keeper
        .spawn()
        .map_err(|e| tracing::error!("cannot start the respawn keeper: {e}"))
        .ok();
    StopOnDrop::new(stop, thread)
}

fn run_alone(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    console: ConsoleSink,
    on_start: impl FnOnce(),
) -> Result<CheckpointEnd, PairError> {
    let mut spec = spec.clone();
    spec.pair.peer = String::new();
    run_primary(ctx, &spec, None, console, on_start)
}

/// The Secondary over `link`, with its take-over plan; `joined`: the
/// receiver a join filled (respawn), else a power-on pair's empty one.
fn run_secondary(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    link: AliveLink,
    joined: Option<Receiver<Staging>>,
    console: ConsoleSink,
    on_start: impl FnOnce(),
) -> Result<CheckpointEnd, PairError> {
    let g = spec.pair.hello.generation;
    let events = MemberDriver::channel();
    let fencing = Arc::clone(&ctx.fencing);
    let mem = spec.linux.mem_mib << 20;
    let plan = take_over_plan(spec, console, Arc::new(move |g| fencing.storage_cut(g)));
    let r = match joined {
        Some(r) => r,
        None => Receiver::new(
            g,
            Staging::new(mem).map_err(|e| PairError::NotStarting(e.to_string()))?,
            0,
        ),
    };
    let effects = SecondaryEffects::start_on(&ctx.vm.name, link, r, plan, events.0.clone())
        .map_err(|e| PairError::NotStarting(e.to_string()))?;
    let live = effects.live();
    ctx.figures
        .set_secondary(effects.applied(), Arc::clone(&live));
    let port = effects.join_port();
    // Epochs too: once it took over, a respawned Secondary acknowledges
    // its epochs.
    let member = Member::secondary(&ctx.vm.name, &spec.pair.peer, g, timeout_ms(spec))
        .acknowledging(Acks::Epochs);
    let driver = start_driver(ctx, spec, member, Box::new(effects), events);
    // Once it took over, the resumed VM gets a new Secondary like any lone
    // Primary (the keeper waits while the member follows).
    let _keeper = start_keeper(ctx, spec, port);
    on_start();
    let ended = || live_ended(&live);
    Ok(wait_for_end(ctx, driver, ended))
}

/// The booted failure timeout both members compare silence with.
fn timeout_ms(spec: &CheckpointSpec) -> u64 {
    spec.pair.failure_timeout.as_millis() as u64
}

/// The member driver of either role, with the daemon's fencing and handle.
fn start_driver(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    member: Member,
    effects: Box<dyn Effects>,
    events: (
        std::sync::mpsc::Sender<Event>,
        std::sync::mpsc::Receiver<Event>,
    ),
) -> MemberDriver {
    MemberDriver::start_timed(
        (&ctx.vm.name, &spec.pair.host),
        member,
        effects,
        ctx.fencing.clone(),
        Arc::clone(ctx.handle),
        events,
        Some(LiveFailureTimeout {
            timing: Arc::clone(&spec.pair.live_timing),
            booted: spec.pair.failure_timeout,
        }),
    )
}

fn live_ended(live: &Mutex<Option<Live>>) -> Option<End> {
    let l = live.lock().unwrap_or_else(|p| p.into_inner());
    l.as_ref().and_then(|l| l.running.ended())
}

/// How the Secondary resumes: the same devices as the Primary's (the VM's
/// disk region, its TAP on this host), and three gratuitous ARPs.
fn take_over_plan(
    spec: &CheckpointSpec,
    console: ConsoleSink,
    storage_cut: super::driver::StorageCut,
) -> TakeOverPlan {
    let tap: Arc<OnceLock<Arc<Tap>>> = Arc::default();
    let t2 = Arc::clone(&tap);
    let frame_out: FrameOut = Box::new(move |f: &[u8]| {
        if let Some(t) = t2.get() {
            if let Err(e) = t.send(f) {
                tracing::debug!("checkpoint TAP send: {e}");
            }
        }
    });
    let (linux, bridge) = (spec.linux.clone(), spec.bridge.clone());
    TakeOverPlan {
        grant: Arc::clone(&spec.pair.grant),
        gate: GATE,
        epoch: spec.epoch,
        delta_bytes: spec.delta_bytes,
        frame_out: Some(frame_out),
        rebuild: Box::new(move |outputs| rebuild(&linux, bridge, console, outputs, &tap)),
        announce: announce(&spec.linux),
        storage_cut,
    }
}

fn rebuild(
    linux: &LinuxSpec,
    bridge: Option<String>,
    console: ConsoleSink,
    outputs: Arc<GatedOutputs>,
    tap_slot: &OnceLock<Arc<Tap>>,
) -> Result<Rebuild, String> {
    let (disk, tap, _) = open_devices(linux).map_err(|e| e.to_string())?;
    let tap = tap.map(Arc::new);
    if let Some(t) = &tap {
        if let Some(br) = &bridge {
            live::tap::bridge_add(br, t.name()).map_err(|e| format!("TAP {}: {e}", t.name()))?;
        }
        let _ = tap_slot.set(Arc::clone(t));
    }
    let sectors = disk.as_ref().map(crate::live::DiskBackend::sectors);
    let backend = GatedBackend::new(
        outputs,
        disk,
        tap,
        0,
        Box::new(|why| println!("ftvmm: {why}")),
    );
    Ok(Rebuild {
        vcpus: linux.vcpus,
        virtio: transports(linux, sectors),
        console,
        backend: Box::new(backend),
        advance_ns: 0,
    })
}

/// Three gratuitous ARPs for the guest's address, if it has one.
fn announce(linux: &LinuxSpec) -> Vec<Vec<u8>> {
    use crate::lockstep::golive::{cmdline_ip, gratuitous_arp};
    match (linux.tap.is_some(), cmdline_ip(&linux.cmdline)) {
        (true, Some(ip)) => vec![gratuitous_arp(linux.mac, ip); 3],
        _ => Vec::new(),
    }
}

/// Waits until the member halted; a VM that ended here on its own (a
/// resumed guest, or a lone Primary's) stops the member, and says why on
/// the console (a run under load once stopped with no reason shown).
/// A guest that ended itself first gets its last epoch made durable by the
/// epoch loop (`primary::last_epoch`), which then stops the member: the
/// stop is posted here only if the member has not halted once that may
/// have taken its longest.
fn wait_for_end(
    ctx: &MemberCtx<'_>,
    driver: MemberDriver,
    vm_ended: impl Fn() -> Option<End>,
) -> CheckpointEnd {
    let mut told = false;
    let mut seen: Option<Instant> = None;
    loop {
        if matches!(driver.state(), State::Halted(_)) {
            break;
        }
        if !told {
            if let Some(end) = vm_ended() {
                let since = *seen.get_or_insert_with(|| {
                    println!(
                        "ftvmm: vm {}: the guest ended: {end}; the member stops",
                        ctx.vm.name
                    );
                    Instant::now()
                });
                let grace = if end.is_guest_end() {
                    primary::LAST_EPOCH_LIMIT + LAST_EPOCH_SLACK
                } else {
                    Duration::ZERO
                };
                if since.elapsed() >= grace {
                    driver.post(Event::Stop);
                    told = true;
                }
            } else if ctx.stop.load(Ordering::SeqCst) {
                println!("ftvmm: vm {}: stopping (asked by this host)", ctx.vm.name);
                driver.post(Event::Stop);
                told = true;
            }
        }
        std::thread::sleep(LOOK);
    }
    CheckpointEnd {
        member: driver.finish(),
    }
}
