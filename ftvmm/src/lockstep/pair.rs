//! Running one VM as half of a pair: pair start, the run, and its end.
//!
//! Pair start (DESIGN §4): both sides boot the same image with the same
//! command line and devices, so they start from identical state at exit
//! index 0. The Primary connects to the Secondary's listener, proves its
//! identity (Noise IK with the host keys from the config) and proposes a
//! [`Hello`]: VM name, generation, config generation, image SHA-256, memory
//! size and start exit 0. The Secondary accepts only an identical proposal
//! from the host the config makes this VM's Primary. Only then do both boot.
//!
//! The Secondary never touches the VM's disk: block reads come back through
//! the log, and only the Primary writes the shared region.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::channel::{self, Channel, ChannelError, Hello, Identity, Message};
use super::digest::memory_sha256;
use super::golive::{self, race, Monitor, Raced};
use super::link::{self, OnTraffic};
use super::log::Body;
use super::primary::{PrimaryInputs, PrimaryLog, PrimaryOutputs};
use super::primary_watch::{hand_over, primary_monitor, FenceWatch};
use super::secondary::{ReplayEnd, ReplayQueue, SecondaryInputs, SecondaryOutputs};
use crate::io::{Inputs, Outputs};
use crate::live::late_write::{WriteFence, LATE_WRITE_BOUND_MS};
use crate::live::{self, ConsoleSink, DiskBackend, IoWatch, LiveConfig, Tap};
use crate::runner::{devices_and_cmdline, guest_mac, open_backends, RunError, VmSpec};
use crate::vcpu::RunOutcome;
use crate::vm::{Progress, Vm, VmHandle};

/// TCP port of the logging channel for the VM at `index` in the config.
pub fn channel_port(index: usize) -> u16 {
    7100 + index as u16
}

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("logging channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("cannot read guest image {path}: {source}")]
    Image {
        path: String,
        source: std::io::Error,
    },
    #[error("secondary refused the pair: {0}")]
    Refused(String),
    #[error("pair start: {0}")]
    Protocol(String),
    #[error("stopped before the pair started")]
    Stopped,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What both sides must agree on, plus this host's identity.
#[derive(Clone)]
pub struct PairSpec {
    pub vm: VmSpec,
    pub hello: Hello,
    pub identity: Identity,
    pub lag_limit: Duration,
    /// The other member's host name.
    pub peer: String,
    /// Silence on the channel and the heartbeat link after which the peer is
    /// suspected (`timing.failure_timeout_ms`).
    pub failure_timeout: Duration,
    pub heartbeat_socket: std::path::PathBuf,
    pub fencing_socket: std::path::PathBuf,
}

/// SHA-256 of the guest image file.
pub fn image_sha256(path: &Path) -> Result<[u8; 32], PairError> {
    let bytes = std::fs::read(path).map_err(|source| PairError::Image {
        path: path.display().to_string(),
        source,
    })?;
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(d.as_ref().try_into().expect("SHA-256 is 32 bytes"))
}

/// Live state a running pair member exposes to status and test hooks.
#[derive(Default)]
pub struct PairHandle {
    pub role: Mutex<String>,
    pub primary: Mutex<Option<Arc<PrimaryLog>>>,
    pub secondary: Mutex<Option<Arc<ReplayQueue>>>,
    /// `> 0`: ask both sides for a memory digest that many exits ahead.
    pub digest_request: Arc<AtomicU64>,
    pub generation: Arc<AtomicU64>,
    pub started: Mutex<Option<Instant>>,
    /// Fencing holds every Primary's output on this host (see
    /// [`PairHandle::hold_output`]); kept so a Primary that starts later
    /// begins held.
    fencing_hold: AtomicBool,
}

impl PairHandle {
    /// Makes `log` this VM's Primary output gate, held at once if fencing
    /// holds output on this host.
    pub fn register_primary(&self, log: Arc<PrimaryLog>) {
        let mut p = self.primary.lock().unwrap_or_else(|p| p.into_inner());
        if self.fencing_hold.load(Ordering::SeqCst) {
            log.set_hold(true);
        }
        *p = Some(log);
    }

    /// Fencing's `HoldOutput` for this VM; true if it has a Primary here.
    pub fn hold_output(&self, hold: bool) -> bool {
        let p = self.primary.lock().unwrap_or_else(|p| p.into_inner());
        self.fencing_hold.store(hold, Ordering::SeqCst);
        match &*p {
            Some(log) => {
                log.set_hold(hold);
                true
            }
            None => false,
        }
    }

    /// Sets the role shown in status.
    pub fn set_role(&self, role: &str) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = role.to_string();
    }

    pub fn status(&self) -> serde_json::Value {
        let role = self.role.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let p = self
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let s = self
            .secondary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let secs = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let mut v = serde_json::json!({
            "role": role,
            "generation": self.generation.load(Ordering::Relaxed),
        });
        if let Some(p) = p {
            let st = p.status();
            let bytes = st["stats"]["log_bytes"].as_u64().unwrap_or(0);
            v["log"] = st;
            v["log_bytes_per_s"] = serde_json::json!(if secs > 0.0 {
                (bytes as f64 / secs) as u64
            } else {
                0
            });
        }
        if let Some(s) = s {
            v["replay"] = s.status();
        }
        v
    }
}

/// Connects to the Secondary (retrying until `stop`) and agrees on the pair.
pub fn primary_handshake(
    spec: &PairSpec,
    addr: SocketAddr,
    peer_public: &[u8; 32],
    peer_name: &str,
    stop: &AtomicBool,
) -> Result<Channel, PairError> {
    let mut announced = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(PairError::Stopped);
        }
        match channel::connect(
            addr,
            &spec.identity,
            peer_public,
            peer_name,
            Duration::from_secs(5),
        ) {
            Ok(mut ch) => {
                ch.send(&Message::Hello(spec.hello.clone()))?;
                ch.set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(ChannelError::Io)?;
                return match ch.recv()? {
                    Message::HelloReply { accepted: true, .. } => {
                        ch.set_read_timeout(Some(Duration::from_millis(200)))
                            .map_err(ChannelError::Io)?;
                        Ok(ch)
                    }
                    Message::HelloReply { reason, .. } => Err(PairError::Refused(reason)),
                    other => Err(PairError::Protocol(format!(
                        "expected a hello reply, got {other:?}"
                    ))),
                };
            }
            Err(e) => {
                if !announced {
                    println!(
                        "ftvmm: vm {}: waiting for secondary {peer_name} at {addr} ({e})",
                        spec.hello.vm
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Accepts the Primary's connection on `listener` and checks its proposal
/// against ours (`expected`: everything but nothing the Primary may choose).
pub fn secondary_handshake(
    listener: &TcpListener,
    identity: &Identity,
    allowed: &dyn Fn(&[u8; 32]) -> Option<String>,
    expected: &Hello,
    stop: &AtomicBool,
) -> Result<(Channel, Hello), PairError> {
    listener.set_nonblocking(true).map_err(ChannelError::Io)?;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(PairError::Stopped);
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(ChannelError::Io(e).into()),
        };
        stream.set_nonblocking(false).map_err(ChannelError::Io)?;
        let mut ch = match channel::accept(stream, identity, allowed, Duration::from_secs(5)) {
            Ok(ch) => ch,
            Err(_) => continue, // logged by the channel; keep listening
        };
        ch.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(ChannelError::Io)?;
        let hello = match ch.recv() {
            Ok(Message::Hello(h)) => h,
            Ok(other) => {
                tracing::warn!(
                    "channel: refused message from {}: expected hello, got {other:?}",
                    ch.peer()
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("channel: no hello from {}: {e}", ch.peer());
                continue;
            }
        };
        let mismatch = hello_mismatch(expected, &hello, ch.peer());
        let reply = Message::HelloReply {
            accepted: mismatch.is_none(),
            reason: mismatch.clone().unwrap_or_default(),
        };
        ch.send(&reply)?;
        match mismatch {
            None => {
                ch.set_read_timeout(Some(Duration::from_millis(200)))
                    .map_err(ChannelError::Io)?;
                return Ok((ch, hello));
            }
            Some(why) => println!(
                "ftvmm: vm {}: refused pair from {}: {why}",
                expected.vm,
                ch.peer()
            ),
        }
    }
}

fn hello_mismatch(ours: &Hello, theirs: &Hello, peer: &str) -> Option<String> {
    if theirs.vm != ours.vm {
        return Some(format!("vm {:?}, expected {:?}", theirs.vm, ours.vm));
    }
    if theirs.primary_host != peer || peer != ours.primary_host {
        return Some(format!(
            "primary {:?} authenticated as {peer:?}; the config makes {:?} the primary",
            theirs.primary_host, ours.primary_host
        ));
    }
    if theirs.config_generation != ours.config_generation {
        return Some(format!(
            "config generation {}, ours is {}",
            theirs.config_generation, ours.config_generation
        ));
    }
    if theirs.image_sha256 != ours.image_sha256 {
        return Some("guest image differs".into());
    }
    if theirs.mem_mib != ours.mem_mib {
        return Some(format!(
            "memory {} MiB, ours {} MiB",
            theirs.mem_mib, ours.mem_mib
        ));
    }
    if theirs.start_exit != 0 {
        return Some(format!(
            "start exit {} (only 0 is supported)",
            theirs.start_exit
        ));
    }
    if theirs.generation == 0 {
        return Some("generation 0".into());
    }
    None
}

/// How a pair member's run ended.
#[derive(Debug)]
pub struct PairReport {
    pub outcome: RunOutcome,
    pub exit_index: u64,
    pub replay_end: Option<ReplayEnd>,
}

fn boot(spec: &VmSpec, disk_sectors: Option<u64>, with_net: bool) -> Result<Vm, RunError> {
    let (devs, cmdline) = devices_and_cmdline(disk_sectors, with_net, &spec.cmdline)?;
    let mut vm = Vm::new(spec.mem_mib << 20, devs)?;
    vm.boot_elf(&spec.kernel, &cmdline)?;
    tracing::info!(kernel = %spec.kernel.display(), cmdline, "booting");
    Ok(vm)
}

/// Runs until the run ends for a reason other than a memory-digest pause,
/// printing the digests.
fn run_with_digests<I: Inputs>(
    vm: &mut Vm,
    vm_name: &str,
    role: &str,
    inputs: &mut I,
    outputs: &mut dyn Outputs,
    take_pause: impl Fn(&mut I) -> Option<u64>,
) -> Result<RunOutcome, RunError> {
    loop {
        let outcome = vm.run(inputs, outputs, None)?;
        if outcome == RunOutcome::ExitLimit {
            if let Some(at) = take_pause(inputs) {
                let sha = memory_sha256(vm.memory());
                println!("ftvmm: vm {vm_name}: memory digest n={at} sha256={sha} role={role}");
                continue;
            }
        }
        return Ok(outcome);
    }
}

/// Runs the Primary: live backends, recorded; the Output Rule on every output.
pub fn run_primary(
    spec: &PairSpec,
    ch: Channel,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    cancel: &Arc<AtomicBool>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    let vs = &spec.vm;
    let (disk, tap) = open_backends(vs)?;
    let mut vm = boot(vs, disk.as_ref().map(|d| d.sectors()), tap.is_some())?;
    let live = start_live(spec, disk, tap, console, &vm)?;
    let live::Live {
        inputs,
        outputs,
        backends,
    } = live;
    let log = PrimaryLog::new(Box::new(outputs), spec.lag_limit);
    let mut pin = PrimaryInputs::new(inputs, Arc::clone(&log));
    let digest = pin.digest_request();
    handle.register_primary(Arc::clone(&log));
    handle.set_role("primary");
    *handle.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    handle
        .generation
        .store(spec.hello.generation, Ordering::Relaxed);
    let (tx, rx) = ch.split();
    let link = link::start_primary(Arc::clone(&log), tx, rx, on_traffic);
    let monitor = primary_monitor(spec, &link, &log, handle, cancel, vm.handle());
    let fence = FenceWatch::start(spec, &log, handle, cancel, vm.handle());
    // Forward digest requests from the handle to the recorder.
    let fwd_stop = Arc::new(AtomicBool::new(false));
    let fwd = {
        let (src, dst, stop) = (
            Arc::clone(&handle.digest_request),
            digest,
            Arc::clone(&fwd_stop),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let d = src.swap(0, Ordering::SeqCst);
                if d > 0 {
                    dst.store(d, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    on_start(vm.handle(), vm.progress());
    let res = run_with_digests(
        &mut vm,
        &spec.hello.vm,
        "primary",
        &mut pin,
        &mut PrimaryOutputs(Arc::clone(&log)),
        |p| p.take_pause(),
    );
    fwd_stop.store(true, Ordering::SeqCst);
    let _ = fwd.join();
    cancel.store(true, Ordering::SeqCst);
    let resign = fence.finish();
    drop(monitor);
    let n = vm.exit_index();
    match resign {
        Some(reason) => hand_over(spec, link, &log, handle, n, &reason),
        None => {
            log.append(n, Body::End);
            // Give the Secondary a moment to receive the end and release what may go.
            let deadline = Instant::now() + Duration::from_secs(1);
            while log.held() > 0 && !log.is_solo() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            link.stop("vm stopped");
        }
    }
    log.detach_sink();
    drop(pin);
    drop(backends);
    Ok(PairReport {
        outcome: res?,
        exit_index: n,
        replay_end: None,
    })
}

/// Runs the Secondary: replay only; outputs are digested and dropped.
/// `disk_sectors` is the size of the VM's disk region (the device model must
/// match the Primary's; the Secondary does not open the disk).
#[allow(clippy::too_many_arguments)]
pub fn run_secondary(
    spec: &PairSpec,
    ch: Channel,
    disk_sectors: Option<u64>,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    cancel: &Arc<AtomicBool>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    let vs = &spec.vm;
    let mut vm = boot(vs, disk_sectors, vs.tap.is_some())?;
    let q = ReplayQueue::new(0);
    *handle.secondary.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&q));
    handle.set_role("secondary");
    *handle.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    handle
        .generation
        .store(spec.hello.generation, Ordering::Relaxed);
    let (tx, rx) = ch.split();
    let link = link::start_secondary(Arc::clone(&q), tx, rx, on_traffic);
    let monitor = {
        let q = Arc::clone(&q);
        Monitor::start(
            spec.peer.clone(),
            spec.failure_timeout,
            spec.heartbeat_socket.clone(),
            link.silence_probe(),
            move |why| q.close(&format!("primary suspected: {why}")),
        )
    };
    let mut sin = SecondaryInputs::new(Arc::clone(&q), vm.handle());
    on_start(vm.handle(), vm.progress());
    let res = run_with_digests(
        &mut vm,
        &spec.hello.vm,
        "secondary",
        &mut sin,
        &mut SecondaryOutputs(Arc::clone(&q)),
        |s| s.take_pause(),
    );
    let end = sin.end().cloned();
    if let Some(end) = &end {
        println!("ftvmm: vm {}: replay ended: {end:?}", spec.hello.vm);
    }
    drop(monitor);
    tracing::info!("lockstep: stopping the link");
    link.stop("secondary stopped");
    tracing::info!("lockstep: link stopped");
    let outcome = res?;
    if let Some(ReplayEnd::Exhausted { at, why }) = &end {
        let from = Replayed {
            at: *at,
            why,
            last_time: sin.last_time(),
        };
        if let Some(outcome) = go_live(spec, &mut vm, &from, console, handle, cancel)? {
            return Ok(PairReport {
                outcome,
                exit_index: vm.exit_index(),
                replay_end: end,
            });
        }
    }
    Ok(PairReport {
        outcome,
        exit_index: vm.exit_index(),
        replay_end: end,
    })
}

/// Inputs of a VM that went live on another host than the one that recorded
/// its past: the live clock, shifted to continue the recorded one.
struct ShiftedClock<I: Inputs> {
    inner: I,
    /// Added to the live clock (wrapping: the value may be "negative").
    shift: u64,
}

impl<I: Inputs> Inputs for ShiftedClock<I> {
    fn events_at(&mut self, n: u64, out: &mut Vec<crate::io::InputEvent>) {
        self.inner.events_at(n, out)
    }
    fn events_at_halt(&mut self, n: u64, out: &mut Vec<crate::io::InputEvent>) {
        self.inner.events_at_halt(n, out)
    }
    fn time_read(&mut self, n: u64, source: crate::io::TimeSource) -> u64 {
        self.inner.time_read(n, source).wrapping_add(self.shift)
    }
    fn program_timer(&mut self, n: u64, program: crate::io::TimerProgram) {
        self.inner.program_timer(n, program)
    }
}

/// Where replay left the Secondary's VM.
struct Replayed<'a> {
    /// The exit at which the log was exhausted.
    at: u64,
    /// Why no more records come.
    why: &'a str,
    /// The last time value the Primary recorded.
    last_time: Option<u64>,
}

/// The Secondary's log is exhausted at exit `from.at`: race for g+1 and, if
/// won, continue the same VM on the real backends. `None` if not won (halted).
fn go_live(
    spec: &PairSpec,
    vm: &mut Vm,
    from: &Replayed<'_>,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    cancel: &Arc<AtomicBool>,
) -> Result<Option<RunOutcome>, PairError> {
    let name = &spec.hello.vm;
    let next = spec.hello.generation + 1;
    let t = Instant::now();
    println!(
        "ftvmm: vm {name}: primary {} lost ({}); replayed every record up to exit {}; asking for generation {next}",
        spec.hello.primary_host, from.why, from.at
    );
    let paused = "waiting, the VM stays paused";
    if race(handle, &spec.fencing_socket, name, next, cancel, paused) != Raced::Won {
        return Ok(None);
    }
    // Won: the real backends take over from exit `at`.
    let vs = &spec.vm;
    let (mut disk, tap) = open_backends(vs)?;
    let with_tap = tap.is_some();
    // Requests the guest issued and the log shows no completion for: the
    // deposed Primary may still have the writes among them in flight, so
    // later writes to their sectors wait (live::late_write).
    let reissue = vm.devices().in_flight_block_requests(vm.memory());
    let reissued = reissue.len();
    if let (Some(d), Some(f)) = (disk.as_mut(), WriteFence::for_reissued(&reissue)) {
        println!(
            "ftvmm: vm {name}: {} re-issued write(s); later writes to their sectors wait {LATE_WRITE_BOUND_MS} ms",
            f.ranges().len()
        );
        d.fence_writes(f);
    }
    let mut live = start_live(spec, disk, tap, console, vm)?;
    let n = vm.exit_index();
    live.inputs.program_timer(n, vm.devices().timer_program());
    for req in reissue {
        live.outputs.emit(n, crate::io::OutputEvent::Block(req));
    }
    if with_tap {
        // Checked when the VM was built from the same command line.
        let mac = guest_mac(&vs.cmdline)?;
        if let Some(ip) = golive::cmdline_ip(&vs.cmdline) {
            for _ in 0..3 {
                live.outputs.emit(
                    n,
                    crate::io::OutputEvent::Frame {
                        dev: 0,
                        data: golive::gratuitous_arp(mac, ip),
                    },
                );
            }
        }
    }
    handle.set_role("primary (unprotected)");
    println!(
        "ftvmm: vm {name}: won generation {next}; live as primary at exit {n} ({} ms after suspicion; {reissued} disk requests re-issued)",
        t.elapsed().as_millis()
    );
    let shift = from
        .last_time
        .map(|v| v.wrapping_sub(live::monotonic_ns()))
        .unwrap_or(0);
    let live::Live {
        inputs,
        outputs,
        backends,
    } = live;
    let mut inputs = ShiftedClock {
        inner: inputs,
        shift,
    };
    // Running alone, its outputs pass at once, but fencing can still hold
    // them (this host losing storage) and a release re-wins the generation.
    let gate = PrimaryLog::new(Box::new(outputs), spec.lag_limit);
    gate.go_solo();
    handle.register_primary(Arc::clone(&gate));
    let fence = FenceWatch::start(spec, &gate, handle, cancel, vm.handle());
    let outcome = vm.run(&mut inputs, &mut PrimaryOutputs(Arc::clone(&gate)), None);
    fence.finish();
    gate.detach_sink();
    drop(inputs);
    drop(backends);
    Ok(Some(outcome.map_err(RunError::from)?))
}

/// Starts the live backends of a member that drives the real devices (the
/// Primary, or a Secondary gone live), with its disk requests' age bounded
/// (DESIGN §5).
fn start_live(
    spec: &PairSpec,
    disk: Option<DiskBackend>,
    tap: Option<Tap>,
    console: ConsoleSink,
    vm: &Vm,
) -> Result<live::Live, PairError> {
    let cfg = LiveConfig {
        disk,
        tap,
        console,
        stdin: false,
        io_watch: Some(IoWatch {
            vm: spec.hello.vm.clone(),
            fencing_socket: spec.fencing_socket.clone(),
        }),
    };
    Ok(live::start(cfg, vm.handle().kicker()).map_err(RunError::Threads)?)
}

/// Binds the Secondary's listener for the VM at `index` on `ip`.
pub fn listen(ip: std::net::IpAddr, index: usize) -> Result<TcpListener, PairError> {
    let addr = SocketAddr::new(ip, channel_port(index));
    TcpListener::bind(addr).map_err(|source| PairError::Listen { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;
    impl crate::io::Outputs for Nowhere {
        fn emit(&mut self, _n: u64, _e: crate::io::OutputEvent) {}
    }

    #[test]
    fn a_primary_registered_after_a_fencing_hold_starts_held() {
        let h = PairHandle::default();
        assert!(!h.hold_output(true), "no primary yet");
        let log = PrimaryLog::new(Box::new(Nowhere), Duration::from_secs(1));
        h.register_primary(Arc::clone(&log));
        assert!(log.fence_state().fenced);
        assert!(h.hold_output(false));
        assert!(!log.fence_state().fenced);
    }
}
