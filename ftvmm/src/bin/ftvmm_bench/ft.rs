//! FT on vs off in the same run (issue 4): the same guest, the same live backends, once with
//! the plain live doors (FT off) and once as a lockstep pair in this process (FT on): the
//! Primary records into a `PrimaryLog` shipped over the real Noise channel on 127.0.0.1 by
//! `link::start_primary`, its outputs pass the Output Rule, and a Secondary replays
//! concurrently on its own thread (`link::start_secondary`, `SecondaryInputs`). Measured:
//! the CPU-bound workload's time, KV PUT/GET throughput and PUT latency, log bytes while the
//! KV guest idles and under KV load (and per PUT), and the Secondary's lag sampled during
//! the requests. Both members share this machine's cores, so FT on pays for the Secondary's
//! vCPU here too; on two hosts it would not. Issue 17: the lag limit and the throttle's
//! controller are options ([`FtOptions`]), and every KV run keeps its per-request timeline
//! (`ft_timeline.rs`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ftvmm::live::{self, DiskBackend, LiveConfig, Tap};
use ftvmm::lockstep::channel::{self, Identity};
use ftvmm::lockstep::link;
use ftvmm::lockstep::log::Body;
use ftvmm::lockstep::primary::timeline::{SegmentReport, Timeline};
use ftvmm::lockstep::primary::{
    Batching, Lag, PrimaryInputs, PrimaryLog, PrimaryOutputs, ThrottleMode, ThrottleStats,
};
use ftvmm::lockstep::secondary::{ReplayEnd, ReplayQueue, SecondaryInputs, SecondaryOutputs};
use ftvmm::runner::devices_and_cmdline;
use ftvmm::{RunOutcome, Vm, VmHandle};

use crate::console::{wait_for, Line, LineSink};
use crate::ft_timeline::{TimedInputs, TimedOutputs};
use crate::kv::{timed_gets, timed_puts, Client};
use crate::net;

/// The Primary is slowed while the Secondary lags more than this (the config's default).
pub const LAG_LIMIT: Duration = Duration::from_millis(500);

/// How the FT-on side runs (issue 17).
#[derive(Debug, Clone, Copy)]
pub struct FtOptions {
    pub lag_limit: Duration,
    pub mode: ThrottleMode,
    /// How the Primary cuts batches and the Secondary acks them.
    pub batching: Batching,
    /// Trace one in this many requests of each kind (0: no timeline).
    pub timeline_every: u64,
}

/// A short name of a controller and a batching for tables.
pub fn mode_label(opts: &FtOptions) -> String {
    let mode = match opts.mode {
        ThrottleMode::UntilAck => "until-ack",
        ThrottleMode::FixedSleep => "fixed-1ms",
    };
    let batching = match opts.batching {
        Batching::Eager => "eager",
        Batching::Coalesced => "coalesced",
    };
    format!("{mode}, {batching}")
}
/// How long the idle KV guest's log traffic is measured.
pub const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// Lag sampling period during the KV requests.
pub const LAG_SAMPLE: Duration = Duration::from_millis(10);

/// One CPU-mode run: guest time from `guest: mem=` to `cpu: checksum=` as the console saw it.
pub struct CpuTimes {
    pub off: Duration,
    pub on: Duration,
    /// FT on: input calls and ms the throttle slowed the Primary.
    pub throttled: u64,
    pub throttled_ms: u64,
}

/// The KV request phase of one run.
pub struct KvPhase {
    pub put: Vec<Duration>,
    pub put_total: Duration,
    pub get_total: Duration,
    /// The per-request timeline of the run (empty without one).
    pub timeline: Vec<SegmentReport>,
}

/// What the log and the Secondary did in the FT-on KV run.
pub struct KvLog {
    /// Log bytes and seconds while the guest idled (listening, no requests).
    pub idle_bytes: u64,
    pub idle: Duration,
    /// Log bytes during the PUT phase and during PUT+GET.
    pub put_bytes: u64,
    /// Records, batches and acks during the PUT phase.
    pub put_msgs: [u64; 3],
    pub load_bytes: u64,
    pub load: Duration,
    /// Lag samples taken during PUT+GET.
    pub lag: Vec<Lag>,
    pub stalls: u64,
    pub throttled_ms: u64,
    /// Input calls that found the lag over the limit.
    pub throttled: u64,
    pub outputs_emitted: u64,
}

pub struct KvTimes {
    pub off: KvPhase,
    pub on: KvPhase,
    pub log: KvLog,
}

/// One FT-off/FT-on comparison; `kv` is `None` with `--no-kv`.
pub struct FtRun {
    pub cpu: CpuTimes,
    pub kv: Option<KvTimes>,
}

/// Run `run_no`: the CPU workload and (with `kv = Some((dir, ops))`) the KV benchmark, each
/// with FT off and FT on; even runs go off first, odd runs on first, so that a trend in the
/// shared machine's load does not favour one side.
pub fn run(
    kernel: &Path,
    cpu_iters: u64,
    run_no: usize,
    kv: Option<(&Path, usize)>,
    echo: bool,
    opts: &FtOptions,
) -> Result<FtRun> {
    let order = if run_no.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    };
    let mut cpu: [(Duration, Option<ThrottleStats>); 2] = Default::default();
    for ft in order {
        cpu[usize::from(ft)] = cpu_once(kernel, cpu_iters, ft, echo, opts)
            .with_context(|| format!("CPU, {}", label(ft)))?;
    }
    let throttle = cpu[1].1.take().unwrap_or_default();
    let cpu = CpuTimes {
        off: cpu[0].0,
        on: cpu[1].0,
        throttled: throttle.throttled,
        throttled_ms: throttle.throttled_us / 1000,
    };
    let kv = match kv {
        Some((dir, ops)) => {
            let mut phases = [None, None];
            let mut log = None;
            for ft in order {
                let (phase, l) = kv_once(kernel, dir, run_no, ops, ft, echo, opts)
                    .with_context(|| format!("KV, {}", label(ft)))?;
                phases[usize::from(ft)] = Some(phase);
                log = log.or(l);
            }
            let [off, on] = phases.map(|p| p.expect("both sides ran"));
            Some(KvTimes {
                off,
                on,
                log: log.ok_or_else(|| anyhow!("FT-on KV run measured no log"))?,
            })
        }
        None => None,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "ftvmm-bench: FT run {run_no} [{}] ({} first): CPU off {:.1} ms, on {:.1} ms{}",
        mode_label(opts),
        label(order[0]),
        ms(cpu.off),
        ms(cpu.on),
        kv.as_ref().map_or(String::new(), |k| format!(
            "; PUT phase off {:.0} ms, on {:.0} ms; GET phase off {:.0} ms, on {:.0} ms",
            ms(k.off.put_total),
            ms(k.on.put_total),
            ms(k.off.get_total),
            ms(k.on.get_total)
        ))
    );
    Ok(FtRun { cpu, kv })
}

fn label(ft: bool) -> &'static str {
    if ft {
        "FT on"
    } else {
        "FT off"
    }
}

/// One guest to run.
struct GuestSpec {
    kernel: PathBuf,
    mem_mib: u64,
    disk: Option<PathBuf>,
    tap: Option<&'static str>,
    cmdline: String,
}

/// A running guest: the Primary (or plain VM) on its own thread.
struct Guest {
    handle: VmHandle,
    log: Option<Arc<PrimaryLog>>,
    /// FT off: the timeline around the plain doors.
    off_timeline: Option<Arc<std::sync::Mutex<Timeline>>>,
    lines: Receiver<Line>,
    thread: JoinHandle<Result<RunOutcome>>,
}

/// Waits for a run's end (the guest's own, or after `stop`).
fn join_vcpu(thread: JoinHandle<Result<RunOutcome>>) -> Result<RunOutcome> {
    thread
        .join()
        .map_err(|_| anyhow!("the vCPU thread panicked"))?
}

/// Starts `spec` on a new thread; with `ft`, as a lockstep pair over loopback.
fn start(spec: GuestSpec, ft: bool, echo: bool, opts: &FtOptions) -> Result<Guest> {
    let (sink, lines) = LineSink::new(echo);
    let opts = *opts;
    let off_timeline = (!ft && opts.timeline_every > 0)
        .then(|| Arc::new(std::sync::Mutex::new(Timeline::new(opts.timeline_every))));
    let off_tl = off_timeline.clone();
    let (started_tx, started_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(
            if ft {
                "bench-ft-primary"
            } else {
                "bench-ft-off"
            }
            .into(),
        )
        .spawn(move || -> Result<RunOutcome> {
            let disk = match &spec.disk {
                Some(p) => {
                    let s = p.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp path"))?;
                    Some(DiskBackend::open(&s.parse()?, 0)?)
                }
                None => None,
            };
            let tap = spec.tap.map(Tap::open).transpose()?;
            if let Some(tap) = &tap {
                live::tap::set_up(tap.name())?;
            }
            let sectors = disk.as_ref().map(|d| d.sectors());
            let with_net = tap.is_some();
            let (devs, cmdline) = devices_and_cmdline(sectors, with_net, &spec.cmdline)?;
            let mut vm = Vm::new(spec.mem_mib << 20, devs)?;
            vm.boot_elf(&spec.kernel, &cmdline)?;
            let live::Live {
                mut inputs,
                mut outputs,
                backends,
            } = live::start(
                LiveConfig {
                    io_watch: None,
                    disk,
                    tap,
                    console: Box::new(sink),
                    stdin: false,
                },
                vm.handle().kicker(),
            )?;
            if let Some(tl) = off_tl {
                let _ = started_tx.send((vm.handle(), None));
                let mut inputs = TimedInputs {
                    inner: inputs,
                    tl: Arc::clone(&tl),
                };
                let mut outputs = TimedOutputs { inner: outputs, tl };
                let outcome = vm.run(&mut inputs, &mut outputs, None)?;
                drop((inputs, outputs, backends));
                return Ok(outcome);
            }
            if !ft {
                let _ = started_tx.send((vm.handle(), None));
                let outcome = vm.run(&mut inputs, &mut outputs, None)?;
                drop((inputs, outputs, backends));
                return Ok(outcome);
            }
            let pair = Pair::start(
                &spec.kernel,
                spec.mem_mib,
                sectors,
                with_net,
                &spec.cmdline,
                opts.batching,
            )?;
            let log = PrimaryLog::new(Box::new(outputs), opts.lag_limit);
            log.set_throttle_mode(opts.mode);
            log.set_batching(opts.batching);
            log.set_timeline_every(opts.timeline_every);
            let mut pin = PrimaryInputs::new(inputs, Arc::clone(&log)).with_vm(vm.handle());
            let (tx, rx) = pair.primary_channel.split();
            let link =
                link::start_primary(Arc::clone(&log), tx, rx, Arc::new(|| {}), Arc::new(|_| {}));
            let _ = started_tx.send((vm.handle(), Some(Arc::clone(&log))));
            let res = vm.run(&mut pin, &mut PrimaryOutputs(Arc::clone(&log)), None);
            log.append(vm.exit_index(), Body::End)?;
            // Let the Secondary acknowledge every record (the end included) so the last
            // outputs leave; then end the link and let it replay what it holds.
            let end_seq = log.next_seq();
            let deadline = Instant::now() + Duration::from_secs(10);
            while log.status()["acked"].as_u64().unwrap_or(0) < end_seq
                && log.gate() == ftvmm::lockstep::member::Gate::ByAcks
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            link.stop("bench run over");
            let end = pair.secondary.join(Duration::from_secs(60));
            log.detach_sink();
            drop((pin, backends));
            let outcome = res?;
            let end = end?;
            match &end.end {
                _ if end.divergences > 0 => bail!("the Secondary diverged: {end:?}"),
                Some(ReplayEnd::PrimaryEnded(_)) => Ok(outcome),
                // The guest ended by itself on both sides (debug exit).
                None if end.outcome == outcome => Ok(outcome),
                _ => bail!("the Secondary did not replay to the end: {end:?}"),
            }
        })?;
    match started_rx.recv() {
        Ok((handle, log)) => Ok(Guest {
            handle,
            log,
            off_timeline,
            lines,
            thread,
        }),
        Err(_) => Err(match thread.join() {
            Ok(Ok(o)) => anyhow!("the VM ended before it started: {o:?}"),
            Ok(Err(e)) => e.context("the VM did not start"),
            Err(_) => anyhow!("the vCPU thread panicked"),
        }),
    }
}

/// The Secondary half of an in-process pair and the Primary's end of the channel.
struct Pair {
    primary_channel: channel::Channel,
    secondary: SecondaryThread,
}

struct SecondaryThread {
    handle: VmHandle,
    queue: Arc<ReplayQueue>,
    thread: JoinHandle<Result<SecondaryEnd>>,
}

/// How the Secondary's replay ended.
#[derive(Debug)]
struct SecondaryEnd {
    outcome: RunOutcome,
    end: Option<ReplayEnd>,
    divergences: u64,
}

impl SecondaryThread {
    /// Waits for the Secondary to replay everything (up to `limit`; then stops it).
    fn join(self, limit: Duration) -> Result<SecondaryEnd> {
        let deadline = Instant::now() + limit;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.thread.is_finished() {
            self.queue.abort();
            self.handle.stop();
        }
        self.thread
            .join()
            .map_err(|_| anyhow!("the Secondary's vCPU thread panicked"))?
    }
}

impl Pair {
    /// Boots the Secondary on its own thread (same devices and command line as the Primary)
    /// and connects the two over a Noise channel on 127.0.0.1 with fresh host keys.
    fn start(
        kernel: &Path,
        mem_mib: u64,
        disk_sectors: Option<u64>,
        with_net: bool,
        cmdline: &str,
        batching: Batching,
    ) -> Result<Pair> {
        let (p_secret, p_public) = config_schema::keys::generate_host_key()?;
        let (s_secret, s_public) = config_schema::keys::generate_host_key()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr: SocketAddr = listener.local_addr()?;
        let (devs, cmdline) = devices_and_cmdline(disk_sectors, with_net, cmdline)?;
        let kernel = kernel.to_path_buf();
        let queue = ReplayQueue::new(0);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<VmHandle, String>>();
        let q = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("bench-ft-secondary".into())
            .spawn(move || -> Result<SecondaryEnd> {
                let accepted = (|| -> Result<(Vm, channel::Channel)> {
                    let mut vm = Vm::new(mem_mib << 20, devs)?;
                    vm.boot_elf(&kernel, &cmdline)?;
                    let (stream, _) = listener.accept()?;
                    let id = Identity {
                        private_key: s_secret,
                    };
                    let allowed = move |k: &[u8; 32]| (*k == p_public).then(|| "primary".into());
                    let ch = channel::accept(stream, &id, &allowed, Duration::from_secs(10))?;
                    ch.set_read_timeout(Some(Duration::from_millis(200)))?;
                    Ok((vm, ch))
                })();
                let (mut vm, ch) = match accepted {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(v.0.handle()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                let (tx, rx) = ch.split();
                let link = link::start_secondary_with(
                    Arc::clone(&q),
                    tx,
                    rx,
                    Arc::new(|| {}),
                    Arc::new(|_| {}),
                    batching,
                );
                let mut sin = SecondaryInputs::new(Arc::clone(&q), vm.handle());
                let res = vm.run(&mut sin, &mut SecondaryOutputs(Arc::clone(&q)), None);
                link.stop("secondary done");
                Ok(SecondaryEnd {
                    outcome: res?,
                    end: sin.end().cloned(),
                    divergences: q.divergences(),
                })
            })?;
        let id = Identity {
            private_key: p_secret,
        };
        let ch = channel::connect(addr, &id, &s_public, "secondary", Duration::from_secs(10))
            .context("cannot connect the Primary to the Secondary over loopback")?;
        ch.set_read_timeout(Some(Duration::from_millis(200)))?;
        let handle = ready_rx
            .recv()
            .map_err(|_| anyhow!("the Secondary thread ended during pair start"))?
            .map_err(|e| anyhow!("Secondary: {e}"))?;
        Ok(Pair {
            primary_channel: ch,
            secondary: SecondaryThread {
                handle,
                queue,
                thread,
            },
        })
    }
}

/// The CPU workload once; the guest's time from `guest: mem=` to `cpu: checksum=`.
fn cpu_once(
    kernel: &Path,
    iters: u64,
    ft: bool,
    echo: bool,
    opts: &FtOptions,
) -> Result<(Duration, Option<ThrottleStats>)> {
    let g = start(
        GuestSpec {
            kernel: kernel.to_path_buf(),
            mem_mib: 32,
            disk: None,
            tap: None,
            cmdline: format!("mode=cpu cpu_iters={iters}"),
        },
        ft,
        echo,
        opts,
    )?;
    let Guest {
        lines, thread, log, ..
    } = g;
    let outcome = join_vcpu(thread)?;
    let throttle = log.map(|l| l.stats().throttle);
    if outcome != RunOutcome::DebugExit(0) {
        bail!("CPU-mode guest ended with {outcome:?}");
    }
    let wait = Duration::from_secs(1);
    let before = wait_for(&lines, "guest: mem=", wait).map_err(anyhow::Error::msg)?;
    let done = wait_for(&lines, "cpu: checksum=", wait).map_err(anyhow::Error::msg)?;
    Ok((done.at - before.at, throttle))
}

/// One KV run on a fresh disk: idle log traffic (FT on), then `ops` PUTs and `ops` GETs.
fn kv_once(
    kernel: &Path,
    dir: &Path,
    run_no: usize,
    ops: usize,
    ft: bool,
    echo: bool,
    opts: &FtOptions,
) -> Result<(KvPhase, Option<KvLog>)> {
    let disk = dir.join(format!("ft{run_no}-{}.img", if ft { "on" } else { "off" }));
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .with_context(|| format!("cannot create {}", disk.display()))?;
    let g = start(
        GuestSpec {
            kernel: kernel.to_path_buf(),
            mem_mib: 64,
            disk: Some(disk),
            tap: Some(net::TAP),
            cmdline: format!("mode=kv ip={}", net::GUEST_CIDR),
        },
        ft,
        echo,
        opts,
    )?;
    let Guest {
        handle,
        log,
        off_timeline,
        lines,
        thread,
    } = g;
    let result = kv_requests(&lines, log.as_ref(), ops);
    handle.stop();
    let ended = join_vcpu(thread);
    let (mut phase, mut kv_log) = result?;
    ended.context("the KV VM")?;
    phase.timeline = match (&log, &off_timeline) {
        (Some(log), _) => log.timeline(),
        (None, Some(tl)) => tl.lock().unwrap_or_else(|p| p.into_inner()).report(),
        (None, None) => Vec::new(),
    };
    if let (Some(l), Some(log)) = (&mut kv_log, &log) {
        let s = log.stats();
        l.stalls = s.stalls;
        l.throttled_ms = s.throttle.throttled_us / 1000;
        l.throttled = s.throttle.throttled;
        l.outputs_emitted = s.outputs_emitted;
        if s.outputs_released != s.outputs_emitted {
            bail!(
                "FT on: {} outputs emitted, {} released after the end",
                s.outputs_emitted,
                s.outputs_released
            );
        }
    }
    Ok((phase, kv_log))
}

fn log_bytes(log: &PrimaryLog) -> u64 {
    log.stats().log_bytes
}

/// Idle measurement (with a log), then the timed requests with lag sampling.
fn kv_requests(
    lines: &Receiver<Line>,
    log: Option<&Arc<PrimaryLog>>,
    ops: usize,
) -> Result<(KvPhase, Option<KvLog>)> {
    wait_for(lines, "kv: listening", Duration::from_secs(120)).map_err(anyhow::Error::msg)?;
    // The guest now waits for a connection: only its timer and housekeeping run.
    let idle = log.map(|log| {
        std::thread::sleep(Duration::from_millis(500));
        let (b0, t0) = (log_bytes(log), Instant::now());
        std::thread::sleep(IDLE_WINDOW);
        (log_bytes(log) - b0, t0.elapsed())
    });
    let mut client = Client::connect()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = log.map(|log| {
        let (log, stop) = (Arc::clone(log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut lag = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                lag.push(log.lag());
                std::thread::sleep(LAG_SAMPLE);
            }
            lag
        })
    });
    let msgs = |l: &Arc<PrimaryLog>| {
        let s = l.stats();
        [s.records, s.batches, s.acks]
    };
    let b0 = log.map(|l| log_bytes(l)).unwrap_or(0);
    let m0 = log.map(msgs).unwrap_or_default();
    let t0 = Instant::now();
    let (put, put_total) = timed_puts(&mut client, ops)?;
    let put_bytes = log.map(|l| log_bytes(l)).unwrap_or(0) - b0;
    let m1 = log.map(msgs).unwrap_or_default();
    let put_msgs = [m1[0] - m0[0], m1[1] - m0[1], m1[2] - m0[2]];
    let (_, get_total) = timed_gets(&mut client, ops)?;
    let load = t0.elapsed();
    let load_bytes = log.map(|l| log_bytes(l)).unwrap_or(0) - b0;
    stop.store(true, Ordering::SeqCst);
    let lag = match sampler {
        Some(t) => t.join().map_err(|_| anyhow!("lag sampler panicked"))?,
        None => Vec::new(),
    };
    let phase = KvPhase {
        put,
        put_total,
        get_total,
        timeline: Vec::new(),
    };
    let kv_log = idle.map(|(idle_bytes, idle)| KvLog {
        idle_bytes,
        idle,
        put_bytes,
        put_msgs,
        load_bytes,
        load,
        lag,
        stalls: 0,
        throttled_ms: 0,
        throttled: 0,
        outputs_emitted: 0,
    });
    Ok((phase, kv_log))
}
