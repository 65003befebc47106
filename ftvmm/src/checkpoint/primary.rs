//! The checkpoint Primary's epoch loop on a running Linux VM: every
//! `epoch_ms` (or earlier when the gate says the epoch grew too large) it
//! pauses all vCPUs, harvests the epoch, closes it in the gate, resumes, and
//! only then encodes and sends it, so the guest waits only for the copy.
//!
//! What one pause takes ([`harvest`]): KVM's dirty log (which also resets
//! it) plus the pages the VMM's devices wrote, copied out; the machine state
//! (`state::capture`); the userspace devices (`Bus::save_devices`); and the
//! gate's epoch boundary, all at the same instant, so the epoch's pages,
//! state, disk writes and frames describe one point of the guest's run.
//! The first epoch carries every page (the staging copy starts empty),
//! copied while the guest runs and completed in the pause ([`pre_copy`]);
//! so does a joining Secondary's first (respawn, [`EpochSink::join`]): a
//! join starts with a first epoch, to a new link, and pairs at a later,
//! small one ([`JoinStep`]).
//!
//! Sending: pieces go to an [`EpochSink`] (the channel to the Secondary, or
//! a test's in-process link) in order; the Secondary's acknowledgements come
//! back through [`GatedOutputs::on_ack`] from whoever reads them. A sink
//! that fails ends the loop: the caller treats it as the loss of the
//! Secondary (gate `on_secondary_lost`, the member races).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::brief::{self, VcpuBrief};
use super::delta_base::DeltaBase;
use super::dirty_log::{enable_manual_protect, harvest_bitmap, DirtyLog};
use super::epoch::{self, Epoch, Page, PageData, PAGE_SIZE};
use super::gated::GatedOutputs;
use crate::dirty::bitmap_to_gfns;
use crate::linux::bus::UnansweredLine;
use crate::linux::machine::{Paused, Running};
use crate::linux::End;

/// Where an epoch's pieces go.
pub trait EpochSink: Send {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String>;

    /// The loop moved (called at every step: each wait tick, after the
    /// pre-copy, the pause, the encode, before each piece), for a
    /// keep-alive that stops once the loop is wedged (`keepalive.rs`).
    fn progress(&mut self) {}

    /// What the next epoch is for a joining Secondary (respawn); asked
    /// before every epoch.
    fn join(&mut self) -> JoinStep {
        JoinStep::None
    }

    /// Epoch `number`'s pieces, `bytes` in all, went to
    /// [`EpochSink::send`].
    fn shipped(&mut self, _number: u64, _bytes: usize) {}

    /// The switch epoch closed as `Ok(number)` (its pieces follow through
    /// [`EpochSink::send`], to the joining Secondary), or the gate refused
    /// the join (`Err`; the epoch closed as an ordinary one).
    fn join_closed(&mut self, _closed: Result<u64, String>) {}
}

/// What an epoch is for a join (respawn, `respawn.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinStep {
    /// Nothing special: an ordinary epoch (to the joining Secondary too, if
    /// one is being streamed up to date).
    None,
    /// The join's first epoch: full, closed alone like any other.
    Full,
    /// The joining Secondary caught up: this epoch closes paired in this
    /// generation (`GatedOutputs::close_epoch_joining`).
    Switch { generation: u64 },
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum EpochLoopError {
    #[error("epoch {epoch}: cannot take the VM's state: {why}")]
    Harvest { epoch: u64, why: String },
    #[error("epoch {epoch}: cannot encode: {0}", epoch = .1)]
    Encode(epoch::EpochError, u64),
    #[error("epoch {epoch}: the link to the Secondary failed: {why}")]
    Link { epoch: u64, why: String },
    #[error("the VM ended")]
    VmEnded,
    #[error("the outputs failed (the device refused an epoch's writes)")]
    OutputsFailed,
}

/// One pause's take.
pub struct Harvest {
    /// Page frame numbers, ascending, and their contents in the same order.
    pub gfns: Vec<u64>,
    pub contents: Vec<u8>,
    pub machine: Vec<u8>,
    pub devices: Vec<u8>,
    /// Where each vCPU was (`brief.rs`: printed if the guest triple-faults).
    pub vcpus: Vec<VcpuBrief>,
}

/// Every page of guest memory anything ever wrote, copied while the guest
/// runs, and the dirty log reset just before the copy started: the first
/// epoch's pause then only re-copies what the guest wrote since (as live
/// migration's first round), instead of all of memory with the guest
/// stopped. Pages never touched are zero here and in the staging copy, and
/// are not read ([`super::resident`]).
pub struct PreCopy {
    gfns: Vec<u64>,
    contents: Vec<u8>,
}

/// Resets the dirty log (a short pause), then copies every touched page
/// while the guest runs.
pub fn pre_copy(running: &Running, dirty: DirtyLog) -> Result<PreCopy, String> {
    running.with_paused(|p| -> Result<(), String> {
        harvest_bitmap(p.vm, 0, p.mem_size, dirty).map_err(|e| e.to_string())?;
        p.bus.take_dirty_pages();
        Ok(())
    })?;
    let mem = running.memory();
    let size = mem.last_addr().raw_value() + 1;
    let base = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| format!("guest memory: {e}"))?;
    let gfns = super::resident::touched_pages(base, size as usize)
        .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let mut contents = vec![0u8; gfns.len() * PAGE_SIZE];
    for (i, &gfn) in gfns.iter().enumerate() {
        mem.read_slice(
            &mut contents[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
            GuestAddress(gfn * PAGE_SIZE as u64),
        )
        .map_err(|e| format!("pre-copy of page {gfn}: {e}"))?;
    }
    Ok(PreCopy { gfns, contents })
}

/// Takes the epoch from the paused VM (module doc). With `full`, every page:
/// the pre-copy with the pages dirtied since it started copied again.
pub fn harvest(
    p: &mut Paused<'_>,
    full: Option<PreCopy>,
    dirty: DirtyLog,
) -> Result<Harvest, String> {
    let pages = p.mem_size / PAGE_SIZE as u64;
    let bitmap = harvest_bitmap(p.vm, 0, p.mem_size, dirty).map_err(|e| e.to_string())?;
    let mut dirty = bitmap_to_gfns(&bitmap);
    dirty.extend(p.bus.take_dirty_pages());
    dirty.retain(|&g| g < pages);
    dirty.sort_unstable();
    dirty.dedup();
    let copy = |gfn: u64, into: &mut [u8]| {
        p.mem
            .read_slice(into, GuestAddress(gfn * PAGE_SIZE as u64))
            .map_err(|e| format!("page {gfn}: {e}"))
    };
    let (gfns, contents) = match full {
        Some(PreCopy {
            gfns: pre,
            contents: pre_contents,
        }) => {
            // The pre-copied pages, then those dirtied since, copied again
            // now: the union, ascending, each page's newest contents.
            let mut all: Vec<u64> = pre.iter().chain(&dirty).copied().collect();
            all.sort_unstable();
            all.dedup();
            let mut contents = vec![0u8; all.len() * PAGE_SIZE];
            let mut from_pre = pre
                .iter()
                .zip(pre_contents.chunks_exact(PAGE_SIZE))
                .peekable();
            for (i, &gfn) in all.iter().enumerate() {
                let into = &mut contents[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                while from_pre.peek().is_some_and(|(g, _)| **g < gfn) {
                    from_pre.next();
                }
                match from_pre.peek() {
                    Some((g, c)) if **g == gfn && dirty.binary_search(&gfn).is_err() => {
                        into.copy_from_slice(c)
                    }
                    _ => copy(gfn, into)?,
                }
            }
            (all, contents)
        }
        None => {
            let mut contents = vec![0u8; dirty.len() * PAGE_SIZE];
            for (i, &gfn) in dirty.iter().enumerate() {
                copy(gfn, &mut contents[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])?;
            }
            (dirty, contents)
        }
    };
    let state = p.capture().map_err(|e| e.to_string())?;
    let vcpus = state.vcpus.iter().map(VcpuBrief::of).collect();
    let machine = state.encode().map_err(|e| e.to_string())?;
    let devices = p.bus.save_devices().encode().map_err(|e| e.to_string())?;
    Ok(Harvest {
        gfns,
        contents,
        machine,
        devices,
        vcpus,
    })
}

/// The epoch a harvest and its gate boundary make. Pages ship as deltas
/// against `base` where it holds their last version (`delta_base.rs`); a
/// `full` epoch is for a receiver that holds nothing yet: `base` is reset
/// and every page goes raw (or zero).
pub fn to_epoch(
    h: Harvest,
    closed: super::gate::Closed,
    base: &mut DeltaBase,
    full: bool,
) -> Epoch {
    if full {
        base.reset();
    }
    let pages = h
        .gfns
        .iter()
        .zip(h.contents.chunks_exact(PAGE_SIZE))
        .map(|(&gfn, c)| Page {
            gfn,
            data: if full {
                if c.iter().all(|&b| b == 0) {
                    PageData::Zero
                } else {
                    PageData::Raw(c.to_vec())
                }
            } else {
                base.ship(gfn, c)
            },
        })
        .collect();
    Epoch {
        number: closed.number,
        generation: closed.generation,
        durable_through: closed.durable_through,
        pages,
        machine: h.machine,
        devices: h.devices,
        writes: closed.writes,
    }
}

/// Figures of one epoch (for status, benches and the console).
#[derive(Debug, Clone, Default)]
pub struct EpochStats {
    pub number: u64,
    /// When the vCPUs ran again: the next epoch is timed from here.
    pub resumed: Option<Instant>,
    pub pause: Duration,
    pub pages: usize,
    /// Of those, shipped as deltas (`delta_base.rs`).
    pub deltas: usize,
    pub bytes: usize,
    pub writes: usize,
    /// Device lines up for [`UNANSWERED_AFTER`] or more at this epoch's
    /// pause without the guest acknowledging them (`Bus::lines_unanswered`).
    pub unanswered: Vec<UnansweredLine>,
    /// Where each vCPU was at the pause (`brief.rs`).
    pub vcpus: Vec<VcpuBrief>,
}

pub use crate::linux::bus::UNANSWERED_AFTER;

/// Settings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    pub epoch: Duration,
    /// The first epoch carries every page.
    pub first_full: bool,
    /// How the dirty log is harvested (`dirty_log.rs`); `GetClear`
    /// switches the VM to manual protection when the loop starts.
    pub dirty: DirtyLog,
    /// Bytes of page copies the Primary keeps to ship deltas
    /// (`delta_base.rs`; 0: every page raw).
    pub delta_bytes: usize,
}

/// Closes the epoch, as a join's switch (`join`: its generation) or an
/// ordinary one; the join's outcome beside it.
fn close(
    outputs: &GatedOutputs,
    join: Option<u64>,
) -> (super::gate::Closed, Option<Result<(), String>>) {
    match join {
        None => (outputs.close_epoch(), None),
        Some(g) => match outputs.close_epoch_joining(g) {
            Ok(c) => (c, Some(Ok(()))),
            Err(e) => (outputs.close_epoch(), Some(Err(e.to_string()))),
        },
    }
}

/// Pauses, harvests, closes and ships one epoch; returns its figures.
/// The sink says whether it is a join's full epoch or its switch.
pub fn one_epoch(
    running: &Running,
    outputs: &GatedOutputs,
    sink: &mut dyn EpochSink,
    full: bool,
    dirty: DirtyLog,
    base: &mut DeltaBase,
) -> Result<EpochStats, EpochLoopError> {
    let step = sink.join();
    let full = full || step == JoinStep::Full;
    let join = match step {
        JoinStep::Switch { generation } => Some(generation),
        JoinStep::None | JoinStep::Full => None,
    };
    sink.progress();
    let pre = if full {
        Some(
            pre_copy(running, dirty).map_err(|why| EpochLoopError::Harvest {
                epoch: outputs.current(),
                why,
            })?,
        )
    } else {
        None
    };
    sink.progress();
    let t = Instant::now();
    let (taken, (closed, joined), unanswered) = running.with_paused(|p| {
        let unanswered = p.bus.lines_unanswered(UNANSWERED_AFTER);
        let h = harvest(p, pre, dirty);
        // The boundary is drawn even if the harvest failed, so the gate's
        // epochs stay in step with what was (not) shipped; a failed
        // harvest ends the loop and nothing of that epoch is ever released.
        (h, close(outputs, join), unanswered)
    });
    let resumed = Instant::now();
    let pause = resumed - t;
    sink.progress();
    let number = closed.number;
    if let Some(j) = joined {
        sink.join_closed(j.map(|()| number));
    }
    let mut h = taken.map_err(|why| EpochLoopError::Harvest { epoch: number, why })?;
    let vcpus = std::mem::take(&mut h.vcpus);
    let e = to_epoch(h, closed, base, full);
    let stats = EpochStats {
        number,
        resumed: Some(resumed),
        pause,
        pages: e.pages.len(),
        deltas: e
            .pages
            .iter()
            .filter(|p| matches!(p.data, PageData::Delta(_)))
            .count(),
        bytes: 0,
        writes: e.writes.len(),
        unanswered,
        vcpus,
    };
    let pieces = epoch::encode_pieces(&e).map_err(|err| EpochLoopError::Encode(err, number))?;
    sink.progress();
    let mut bytes = 0;
    for p in pieces {
        bytes += p.len();
        sink.send(p)
            .map_err(|why| EpochLoopError::Link { epoch: number, why })?;
    }
    sink.shipped(number, bytes);
    Ok(EpochStats { bytes, ..stats })
}

/// Runs epochs until `stop`, the VM's end, or an error. `on_epoch` sees each
/// epoch's figures.
pub fn run_epochs(
    running: &Running,
    outputs: &GatedOutputs,
    sink: &mut dyn EpochSink,
    cfg: LoopConfig,
    stop: &AtomicBool,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<(), EpochLoopError> {
    let mut full = cfg.first_full;
    let mut base = DeltaBase::new(cfg.delta_bytes);
    if cfg.dirty == DirtyLog::GetClear {
        running
            .with_paused(|p| enable_manual_protect(p.vm))
            .map_err(|e| EpochLoopError::Harvest {
                epoch: outputs.current(),
                why: e.to_string(),
            })?;
    }
    let tick = Duration::from_millis(1).min(cfg.epoch);
    // The last pause's vCPUs, for a triple fault's report (`brief.rs`).
    let mut last: Option<(u64, Instant, Vec<VcpuBrief>)> = None;
    let began = Instant::now();
    // Each epoch is timed from the previous one's resume, not from the end
    // of its send: the guest ran during the send, so an epoch that waited
    // `epoch` after the send would be `epoch` + send long, and its held
    // replies that much later (issue 11's bench: 13 ms of send on the test
    // bed's FT network made 20 ms epochs 33 ms long).
    let mut start = began;
    loop {
        while start.elapsed() < cfg.epoch {
            sink.progress();
            // A triple fault is reported whichever of the two comes first
            // (a local pair's driver sets `stop` when it sees the VM end).
            let ended = running.ended();
            if ended == Some(End::TripleFault) {
                let mut lines = match &last {
                    Some((n, at, vcpus)) => {
                        brief::fault_report(*n, at.elapsed().as_millis(), vcpus)
                    }
                    None => vec![format!(
                        "checkpoint: the guest triple-faulted before this loop's first \
                         epoch ({} ms after it started; a resumed guest: right after \
                         its resume)",
                        began.elapsed().as_millis()
                    )],
                };
                if let Some(note) = running.end_note() {
                    lines.push(format!("checkpoint:   the fault: {note}"));
                }
                for line in lines {
                    println!("{line}");
                }
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if let Some(end) = ended {
                if end.is_guest_end() {
                    // A failure here still ends the guest's way (`Bye`, no
                    // race): the guest asked to end, a Secondary resuming
                    // it would only end it again.
                    if let Err(e) =
                        last_epoch(running, outputs, sink, full, cfg.dirty, &mut base, stop)
                    {
                        tracing::warn!("checkpoint: the ended guest's last epoch: {e}");
                    }
                }
                return Err(EpochLoopError::VmEnded);
            }
            if let Some(why) = outputs.end_early(0) {
                tracing::debug!(?why, "checkpoint: epoch ends early");
                break;
            }
            std::thread::sleep(tick);
        }
        if outputs.failed() {
            return Err(EpochLoopError::OutputsFailed);
        }
        let mut s = one_epoch(running, outputs, sink, full, cfg.dirty, &mut base)?;
        start = s.resumed.unwrap_or_else(Instant::now);
        full = false;
        last = Some((s.number, Instant::now(), std::mem::take(&mut s.vcpus)));
        on_epoch(&s);
    }
}

/// How long the last epoch of a guest that ended on its own may take to be
/// acknowledged and made durable ([`last_epoch`]).
pub const LAST_EPOCH_LIMIT: Duration = Duration::from_secs(5);

/// The guest ended on its own (power-off, reset, a crash): what it did in
/// its last moments is an epoch like any other. Its disk writes completed to
/// the guest (a `sync` before `poweroff` returned), so they must reach the
/// shared device, which only happens once the Secondary holds them (the
/// Output Rule), before the Primary says `Bye` and both members halt; the
/// loop used to return at once, and the writes of the open epoch and of
/// every epoch not yet durable were dropped with the member.
///
/// The harvest works on the ended VM: its vCPU threads have left, and
/// `Paused::capture` reads their state from this thread. A vCPU that ended
/// the VM with a port write (0xfe to 0x64, the ACPI sleep register) has not
/// completed it (KVM advances RIP on the next `KVM_RUN`): a Secondary that
/// resumed from this epoch (the Primary died before its `Bye`) executes the
/// write again and ends too, instead of running past it.
///
/// `full`: no epoch was taken yet, this one carries every page.
/// Waits until the epoch is durable (its frames are then released too),
/// the loop is told to stop, the outputs fail, or [`LAST_EPOCH_LIMIT`]; a
/// lapse or a failure is logged and the member ends as before (`Bye`),
/// without those writes.
fn last_epoch(
    running: &Running,
    outputs: &GatedOutputs,
    sink: &mut dyn EpochSink,
    full: bool,
    dirty: DirtyLog,
    base: &mut DeltaBase,
    stop: &AtomicBool,
) -> Result<(), EpochLoopError> {
    let s = one_epoch(running, outputs, sink, full, dirty, base)?;
    let t = Instant::now();
    loop {
        sink.progress();
        let durable = outputs.progress().2;
        if durable >= s.number {
            tracing::info!(
                epoch = s.number,
                writes = s.writes,
                ms = t.elapsed().as_millis() as u64,
                "checkpoint: the ended guest's last epoch is durable"
            );
            return Ok(());
        }
        if stop.load(Ordering::SeqCst) || outputs.failed() {
            return Ok(());
        }
        if t.elapsed() >= LAST_EPOCH_LIMIT {
            tracing::warn!(
                epoch = s.number,
                durable,
                writes = s.writes,
                "checkpoint: the ended guest's last epoch was not durable within {} s; \
                 its writes are given up",
                LAST_EPOCH_LIMIT.as_secs()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
