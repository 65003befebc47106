//! `ftvmm linux --local-secondary`: a checkpoint pair inside one process,
//! for testing epochs and take-over on a real Linux guest where only one
//! host runs (the QEMU host with nested KVM): the Primary VM with the gated
//! backend and the epoch loop; the Secondary a receiver thread that applies
//! every epoch to staging memory and acknowledges it. When the trigger file
//! appears, the Primary is abandoned as a dead host's would be (no last
//! epoch, nothing more released) and the Secondary resumes the guest from
//! its last complete epoch, on the same disk and TAP, unreplicated.
//!
//! What this does not have (the two-host pair does): the authenticated
//! channel between hosts, failure detection, fencing and generations. The
//! epoch path, the Output Rule and the take-over are the real ones.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::gate::{EpochGate, GateConfig};
use super::gated::{FrameOut, GatedBackend, GatedOutputs};
use super::primary::{self, EpochSink, EpochStats, LoopConfig};
use super::receiver::Receiver;
use super::secondary::{self, Rebuild, Staging};
use crate::io::{BlockOp, BlockRequest, BlockStatus};
use crate::linux::backend::DirectBackend;
use crate::linux::bus::Console;
use crate::linux::machine::{Report, Running};
use crate::linux::run::{boot_linux_vm, open_devices, transports, LinuxSpec};
use crate::linux::{End, LinuxVmError};
use crate::live::{DiskBackend, Tap};
use crate::virtio::MmioTransport;

/// The pair's settings.
#[derive(Debug, Clone)]
pub struct LocalPair {
    pub epoch: Duration,
    /// How the epoch loop harvests the dirty log.
    pub dirty: super::dirty_log::DirtyLog,
    /// The Primary's delta cache (`delta_base.rs`; 0: raw pages only).
    pub delta_bytes: usize,
    /// Take over when this file exists.
    pub take_over_on: Option<PathBuf>,
}

/// End an epoch early past 16 MiB dirty or 8 MiB of pending writes.
pub(super) const GATE: GateConfig = GateConfig {
    max_dirty_pages: 4096,
    max_write_bytes: 8 << 20,
};

/// How often a console line sums up the epochs.
const REPORT_EVERY: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum LocalPairError {
    #[error(transparent)]
    Vm(#[from] LinuxVmError),
    #[error(transparent)]
    TakeOver(#[from] secondary::TakeOverError),
    #[error("the Secondary refused an epoch: {0}")]
    Refused(#[from] super::receiver::ReceiveError),
}

struct ChanSink(mpsc::Sender<Vec<u8>>);

impl EpochSink for ChanSink {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String> {
        self.0
            .send(piece)
            .map_err(|_| "the Secondary is gone".into())
    }
}

/// Figures of the epochs, summed up on the console: at epoch 1, then every
/// [`REPORT_EVERY`] epochs, or (when [`Summary::every`] is set, as in the
/// daemon, where an epoch may last seconds while a Linux guest boots over a
/// slow link) once that much time has passed, whichever comes first.
#[derive(Default)]
pub(super) struct Summary {
    /// Put before each line, e.g. `ftvmm: vm web: `.
    prefix: String,
    every: Option<Duration>,
    since: Option<Instant>,
    pauses_us: Vec<u64>,
    pages: u64,
    deltas: u64,
    bytes: u64,
    /// Whose output waits (`latency.rs`) each line shows, and their
    /// (count, µs) at the previous line: the line shows this window's.
    waits: Option<(Arc<GatedOutputs>, Waits)>,
}

/// (count, µs total) of the Secondary's acks and of the outputs' holds.
#[derive(Default, Clone, Copy)]
struct Waits {
    ack: (u64, u64),
    hold: (u64, u64),
}

impl Waits {
    fn of(o: &GatedOutputs) -> Waits {
        let l = &o.stats.latency;
        let n = |i: &super::latency::Interval| {
            (
                i.count.load(Ordering::Relaxed),
                i.us_total.load(Ordering::Relaxed),
            )
        };
        Waits {
            ack: n(&l.ack_wait),
            hold: n(&l.output_hold),
        }
    }

    /// `, ack wait avg A ms, output hold avg H ms (N epochs with frames)`
    /// since `before`.
    fn since(self, before: Waits) -> String {
        let avg = |(n1, us1): (u64, u64), (n0, us0): (u64, u64)| {
            let n = n1.saturating_sub(n0);
            let ms = us1.saturating_sub(us0) as f64 / 1000.0 / n.max(1) as f64;
            (n, ms)
        };
        let (_, ack) = avg(self.ack, before.ack);
        let (held, hold) = avg(self.hold, before.hold);
        format!(
            ", ack wait avg {ack:.2} ms, output hold avg {hold:.2} ms ({held} epochs with frames)"
        )
    }
}

impl Summary {
    /// A summary whose lines start with `prefix` and come at least every `every`.
    pub(super) fn every(prefix: String, every: Duration) -> Summary {
        Summary {
            prefix,
            every: Some(every),
            ..Summary::default()
        }
    }

    /// Lines also show `outputs`' waits after an epoch closed (`latency.rs`).
    pub(super) fn with_waits(mut self, outputs: Arc<GatedOutputs>) -> Summary {
        let now = Waits::of(&outputs);
        self.waits = Some((outputs, now));
        self
    }

    pub(super) fn add(&mut self, e: &EpochStats) {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.pauses_us.push(e.pause.as_micros() as u64);
        self.pages += e.pages as u64;
        self.deltas += e.deltas as u64;
        self.bytes += e.bytes as u64;
        let due = self.every.is_some_and(|d| since.elapsed() >= d);
        if e.number == 1 || e.number.is_multiple_of(REPORT_EVERY) || due {
            let mut p = self.pauses_us.clone();
            p.sort_unstable();
            let n = p.len().max(1) as u64;
            let rate = p.len() as f64 / since.elapsed().as_secs_f64().max(1e-3);
            let waits = match &mut self.waits {
                Some((o, before)) => {
                    let now = Waits::of(o);
                    let said = now.since(*before);
                    *before = now;
                    said
                }
                None => String::new(),
            };
            println!(
                "{}checkpoint: epoch {}: pause median {:.2} ms max {:.2} ms, {:.0} pages ({:.0} % as deltas) and {:.0} KiB per epoch, {rate:.1} epochs/s (last {} epochs){waits}",
                self.prefix,
                e.number,
                p.get(p.len() / 2).copied().unwrap_or(0) as f64 / 1000.0,
                p.last().copied().unwrap_or(0) as f64 / 1000.0,
                self.pages as f64 / n as f64,
                100.0 * self.deltas as f64 / self.pages.max(1) as f64,
                self.bytes as f64 / n as f64 / 1024.0,
                p.len()
            );
            for l in &e.unanswered {
                println!("{}{l}", self.prefix);
            }
            *self = Summary {
                prefix: std::mem::take(&mut self.prefix),
                every: self.every,
                since: Some(Instant::now()),
                waits: self.waits.take(),
                ..Summary::default()
            };
        }
    }
}

/// What delta encoding would have saved on the raw pages the Secondary
/// received up to epoch `e` since the last line (`receiver::DeltaProbe`);
/// `None` when no raw page came.
fn delta_line(e: u64, p: &super::receiver::DeltaProbe) -> Option<String> {
    (p.pages > 0).then(|| {
        format!(
            "checkpoint: delta probe at epoch {e}: {} raw pages, {:.0} KiB raw, {:.0} KiB as deltas ({:.1} %)",
            p.pages,
            p.raw_bytes as f64 / 1024.0,
            p.delta_bytes as f64 / 1024.0,
            100.0 * p.delta_bytes as f64 / p.raw_bytes as f64
        )
    })
}

/// A Primary's devices with the epoch gate between them and the world (the
/// one-process pair and the two-host Primary build the same).
pub(super) struct GatedDevices {
    pub outputs: Arc<GatedOutputs>,
    pub backend: GatedBackend,
    pub virtio: Vec<MmioTransport>,
    /// Where the backend reports an epoch's writes the device refused.
    pub failed: Arc<Mutex<Option<String>>>,
}

/// Opens `spec`'s disk and TAP and puts the gate in front of them.
pub(super) fn gated_devices(spec: &LinuxSpec) -> Result<GatedDevices, LinuxVmError> {
    let (disk, tap, virtio) = open_devices(spec)?;
    let tap = tap.map(Arc::new);
    let outputs = GatedOutputs::new(EpochGate::new(GATE, 1), frame_out(tap.clone()));
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let f2 = Arc::clone(&failed);
    let backend = GatedBackend::new(
        Arc::clone(&outputs),
        disk,
        tap,
        0,
        Box::new(move |why| *f2.lock().unwrap_or_else(|p| p.into_inner()) = Some(why)),
    );
    Ok(GatedDevices {
        outputs,
        backend,
        virtio,
        failed,
    })
}

pub(super) fn frame_out(tap: Option<Arc<Tap>>) -> Option<FrameOut> {
    let tap = tap?;
    Some(Box::new(move |f: &[u8]| {
        if let Err(e) = tap.send(f) {
            tracing::debug!("checkpoint TAP send: {e}");
        }
    }))
}

/// Writes `writes` in order, then flushes (the take-over's unfinished epoch
/// writes).
fn write_all(disk: &mut DiskBackend, writes: &[super::epoch::DiskWrite]) -> Result<(), String> {
    let reqs = writes
        .iter()
        .map(|w| BlockOp::Write {
            sector: w.sector,
            data: w.data.clone(),
        })
        .chain(std::iter::once(BlockOp::Flush));
    for (i, op) in reqs.enumerate() {
        let req = BlockRequest {
            dev: 0,
            id: i as u64,
            op,
        };
        match disk.execute(&req) {
            Ok((BlockStatus::Ok, _)) => {}
            Ok((s, _)) => return Err(format!("request {i}: {s:?}")),
            Err(e) => return Err(format!("request {i}: {e:?}")),
        }
    }
    Ok(())
}

/// Runs the pair to the guest's end (module doc).
pub fn run_local_pair(
    spec: &LinuxSpec,
    pair: &LocalPair,
    console: Console,
    on_start: impl Fn(&Running),
) -> Result<Report, LocalPairError> {
    let GatedDevices {
        outputs,
        backend,
        virtio,
        failed,
    } = gated_devices(spec)?;
    let console = SharedConsole::new(console);
    let running = boot_linux_vm(spec, virtio, Box::new(console.clone()), Box::new(backend))?;
    on_start(&running);

    // The Secondary.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let acks = Arc::clone(&outputs);
    let applied_at: Arc<Mutex<Instant>> = Arc::new(Mutex::new(Instant::now()));
    let a2 = Arc::clone(&applied_at);
    let mem_size = spec.mem_mib << 20;
    let secondary = std::thread::Builder::new()
        .name("ckpt-secondary".into())
        .spawn(move || -> Result<Receiver<Staging>, LocalPairError> {
            let mut r = Receiver::new(1, Staging::new(mem_size)?, 0);
            for piece in rx {
                // Acknowledged once whole and checked, then applied.
                let took = r.on_piece_acking(&piece, |e| {
                    if let Err(err) = acks.on_ack(e) {
                        tracing::warn!("checkpoint: {err}");
                    }
                });
                match took {
                    Ok(Some(e)) => {
                        *a2.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                        if e.is_multiple_of(REPORT_EVERY) {
                            if let Some(line) = delta_line(e, &r.probe) {
                                println!("{line}");
                            }
                            r.probe = Default::default();
                        }
                    }
                    Ok(None) => {}
                    Err(err) => tracing::warn!("checkpoint: epoch refused: {err}"),
                }
            }
            Ok(r)
        })
        .map_err(LinuxVmError::Thread)?;

    // The epochs, until the guest ends or the trigger.
    let stop = AtomicBool::new(false);
    let mut link = ChanSink(tx);
    let cfg = LoopConfig {
        epoch: pair.epoch,
        first_full: true,
        dirty: pair.dirty,
        delta_bytes: pair.delta_bytes,
    };
    let triggered = std::thread::scope(|s| {
        let epochs = s.spawn(|| {
            let mut sum = Summary::default().with_waits(Arc::clone(&outputs));
            primary::run_epochs(&running, &outputs, &mut link, cfg, &stop, |e| sum.add(e))
        });
        let triggered = loop {
            if running.ended().is_some() {
                break false;
            }
            if pair.take_over_on.as_ref().is_some_and(|p| p.exists()) {
                break true;
            }
            if let Some(why) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                eprintln!("checkpoint: {why}");
                running.stop();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // A guest that ended on its own: the loop ships its last epoch and
        // waits for it to be durable (`primary::last_epoch`), then ends by
        // itself; stopping it here would drop those writes.
        if triggered || running.ended().is_some_and(|e| !e.is_guest_end()) {
            stop.store(true, Ordering::SeqCst);
        }
        if let Ok(Err(e)) = epochs.join() {
            if !matches!(e, primary::EpochLoopError::VmEnded) {
                eprintln!("checkpoint: epoch loop ended: {e}");
            }
        }
        triggered
    });
    let (current, (acked, _, durable)) = (outputs.current(), outputs.progress());
    if !triggered {
        drop(link);
        let _ = secondary.join();
        return Ok(running.wait());
    }

    // The Primary dies: nothing more leaves it, its VM stops where it is.
    let t = Instant::now();
    outputs.halt();
    running.stop();
    let old = running.wait();
    // The old VM's devices hold the TAP and the disk: closed before the
    // take-over opens them again.
    drop(running);
    drop(link);
    drop(outputs);
    eprintln!(
        "checkpoint: primary abandoned in epoch {current} (acknowledged {acked}, durable {durable}; its VM: {})",
        old.end
    );
    let r = secondary
        .join()
        .map_err(|_| LinuxVmError::Memory("the Secondary thread panicked".into()))??;
    let advance = applied_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .elapsed();
    let report = take_over_and_run(spec, r, console, advance, t, &on_start)?;
    Ok(report)
}

/// The Secondary's take-over: opens the disk and TAP, re-writes the
/// unfinished epochs' writes, resumes the guest from `r`'s last complete
/// epoch with its clock moved by `advance`, and runs it to its end.
/// `since` is when the take-over began (for the console line).
pub(super) fn take_over_and_run(
    spec: &LinuxSpec,
    r: Receiver<Staging>,
    console: SharedConsole,
    advance: Duration,
    since: Instant,
    on_start: &impl Fn(&Running),
) -> Result<Report, LocalPairError> {
    let (disk, tap, _) = open_devices(spec)?;
    let disk_sectors = disk.as_ref().map(DiskBackend::sectors);
    let mut pending_disk = spec
        .disk
        .as_ref()
        .map(|d| DiskBackend::open(d, 0))
        .transpose()
        .map_err(LinuxVmError::from)?;
    let rebuild = Rebuild {
        vcpus: spec.vcpus,
        virtio: transports(spec, disk_sectors),
        console: Box::new(console),
        backend: Box::new(DirectBackend::new(disk, tap, 0)),
        advance_ns: advance.as_nanos() as u64,
    };
    let pending = r.take_over();
    let n_writes = pending.writes.len();
    let (running2, epoch) = secondary::take_over(pending, rebuild, |w| match &mut pending_disk {
        Some(d) => write_all(d, w),
        None if w.is_empty() => Ok(()),
        None => Err("writes to finish but no disk".into()),
    })?;
    eprintln!(
        "checkpoint: took over at epoch {epoch} in {} ms ({n_writes} unfinished writes rewritten; guest clock moved {} ms)",
        since.elapsed().as_millis(),
        advance.as_millis()
    );
    on_start(&running2);
    let report = running2.wait();
    if let End::Error(e) = &report.end {
        tracing::warn!("take-over VM: {e}");
    }
    Ok(report)
}

/// One console for both VMs (the take-over VM writes where the Primary did).
#[derive(Clone)]
pub(super) struct SharedConsole(Arc<Mutex<Console>>);

impl SharedConsole {
    pub(super) fn new(c: Console) -> Self {
        SharedConsole(Arc::new(Mutex::new(c)))
    }
}

impl std::io::Write for SharedConsole {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::{delta_line, Waits};
    use crate::checkpoint::receiver::DeltaProbe;

    #[test]
    fn the_delta_probe_line_says_the_share_of_raw_bytes() {
        let p = DeltaProbe {
            pages: 2,
            raw_bytes: 2 * 4097,
            delta_bytes: 4097 + 40,
        };
        assert_eq!(
            delta_line(300, &p).unwrap(),
            "checkpoint: delta probe at epoch 300: 2 raw pages, 8 KiB raw, 4 KiB as deltas (50.5 %)"
        );
        assert_eq!(delta_line(300, &DeltaProbe::default()), None);
    }

    #[test]
    fn a_summary_shows_the_waits_of_its_own_window() {
        let before = Waits {
            ack: (10, 50_000),
            hold: (4, 100_000),
        };
        let now = Waits {
            ack: (20, 80_000),
            hold: (6, 160_000),
        };
        assert_eq!(
            now.since(before),
            ", ack wait avg 3.00 ms, output hold avg 30.00 ms (2 epochs with frames)"
        );
        // No epoch with frames in the window: no division by zero.
        assert_eq!(
            before.since(before),
            ", ack wait avg 0.00 ms, output hold avg 0.00 ms (0 epochs with frames)"
        );
    }
}
