//! The checkpoint Primary's backend: the [`EpochGate`] put between a Linux
//! VM's virtio devices and the world, and the threads that carry out what
//! the gate decides. The devices do not know (they see a [`LinuxBackend`]).
//!
//! - A frame the guest sends goes into the gate (held until its epoch is
//!   acknowledged and durable); released frames leave on the TAP in the
//!   order the gate releases them (released under the gate's lock, so two
//!   threads performing actions never reorder them).
//! - A disk write goes into the gate and completes to the guest at once; a
//!   flush completes at once too (nothing the guest wrote can be observed
//!   before it is durable: its frames wait for that). The gate hands each
//!   acknowledged epoch's writes back as one `Submit`, which the disk thread
//!   writes in order, syncs, and reports durable.
//! - A read is served from the device with the gate's pending writes laid
//!   over it. The pending sectors are copied *before* the device is read:
//!   a pending write that becomes durable meanwhile is then on the device,
//!   and one still pending is in the copy, so a read never misses a write
//!   the guest saw complete.
//! - If the device refuses an epoch's writes, nothing of that epoch or later
//!   is released, ever: the outputs are [`GatedOutputs::failed`] and the
//!   owner ends the VM (the Secondary, which holds the epoch, re-writes it).
//!
//! - Nothing leaves without the host's output grant (`lockstep/grant.rs`)
//!   or while the member holds ([`GatedOutputs::set_member_gate`]), as for
//!   lockstep's held outputs: the gate is held while either says so (looked
//!   at under the gate's lock before every step), and the disk thread looks
//!   again right before each write of an epoch it was handed, waiting for
//!   the grant (a stopping backend gives the writes up instead). A grant
//!   that comes back releases at the next epoch close or [`GatedOutputs::kick`].
//! - A write is never started more than `IO_AGE_LIMIT` (2 s,
//!   `live/late_write.rs` rule 1) after its epoch was released to the disk
//!   thread, on `CLOCK_BOOTTIME`: a host thawed, or held by its grant that
//!   long, gives the epoch up (the outputs fail, the VM ends; the Secondary
//!   holds the epoch and re-writes it). Unlike lockstep's disk thread this
//!   does not ask fencing to reset the host.
//!
//! Each step of the gate is watched for where the epochs' outputs wait
//! (closed, acknowledged, durable, released: `latency.rs`), stamped here,
//! under the gate's lock; the gate itself has no clock.
//!
//! Completions are delivered from the backend's own threads, never from
//! inside `submit_block`/`send_frame` (the bus is locked there).
//!
//! Lock order: the bus, then the gate. Nothing here takes the bus while
//! holding the gate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::epoch::{DiskWrite, SECTOR_SIZE};
use super::gate::{Action, Closed, EpochGate, GateError, Mode};
use super::late_fence::LateWriteFence;
use super::latency::{EpochLatency, EpochStamps, Reached};
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent};
use crate::linux::backend::{BackendError, Deliver, LinuxBackend};
use crate::live::late_write::too_old;
use crate::live::late_write::IO_AGE_LIMIT_MS;
use crate::live::{DiskBackend, Tap};
use crate::lockstep::grant::HostGrant;
use crate::lockstep::member::Gate;
use config_schema::clock::BootInstant;

/// How often a disk thread waiting for the grant looks again.
const GRANT_POLL: std::time::Duration = std::time::Duration::from_millis(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What `gate` reached, for the latency stamps.
fn reached(gate: &EpochGate) -> Reached {
    let (acked, _, durable) = gate.progress();
    Reached {
        closed: gate.current() - 1,
        acked,
        durable,
        paired: matches!(gate.mode(), Mode::Paired { .. }),
    }
}

/// Where released frames go (the TAP, or a test's capture).
pub type FrameOut = Box<dyn FnMut(&[u8]) + Send>;

/// Work for the disk thread, in order.
enum DiskJob {
    Read(BlockRequest),
    Submit {
        epoch: u64,
        writes: Vec<DiskWrite>,
        /// When the gate let the epoch's writes go.
        released: BootInstant,
    },
}

/// Counters for status and benches.
#[derive(Debug, Default)]
pub struct OutputStats {
    pub frames_released: AtomicU64,
    pub epochs_durable: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Epochs the Primary's loop took, the sum, last and largest of their
    /// pauses (µs) and the bytes of their pieces ([`OutputStats::on_epoch`]).
    pub epochs: AtomicU64,
    pub pause_us_total: AtomicU64,
    pub pause_us_last: AtomicU64,
    pub pause_us_max: AtomicU64,
    pub epoch_bytes_total: AtomicU64,
    /// Dirty pages the epochs carried, and of those the ones shipped as
    /// deltas (`delta_base.rs`).
    pub epoch_pages_total: AtomicU64,
    pub epoch_delta_pages_total: AtomicU64,
    /// Where closed epochs' outputs wait (`latency.rs`).
    pub latency: EpochLatency,
}

impl OutputStats {
    /// One epoch taken: its pause and its size (`primary::EpochStats`).
    pub fn on_epoch(&self, e: &super::primary::EpochStats) {
        let (pause, bytes) = (e.pause, e.bytes);
        (self.epoch_pages_total).fetch_add(e.pages as u64, Ordering::Relaxed);
        (self.epoch_delta_pages_total).fetch_add(e.deltas as u64, Ordering::Relaxed);
        let us = pause.as_micros() as u64;
        self.epochs.fetch_add(1, Ordering::Relaxed);
        self.pause_us_total.fetch_add(us, Ordering::Relaxed);
        self.pause_us_last.store(us, Ordering::Relaxed);
        self.pause_us_max.fetch_max(us, Ordering::Relaxed);
        (self.epoch_bytes_total).fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The gate and what performs its actions; shared by the backend, the
/// epoch thread and whoever receives acks.
pub struct GatedOutputs {
    gate: Mutex<EpochGate>,
    frame_out: Mutex<Option<FrameOut>>,
    disk_tx: Mutex<Option<Sender<DiskJob>>>,
    failed: AtomicBool,
    /// The host's output grant: nothing leaves without it.
    grant: Arc<HostGrant>,
    /// The member holds everything (racing, handing over, fenced).
    member_held: AtomicBool,
    /// The backend is stopping: a disk thread waiting for the grant gives up.
    stopping: AtomicBool,
    /// Set at a take-over: later epochs overlapping the re-written writes
    /// wait (`late_fence.rs`).
    fence: Mutex<Option<LateWriteFence>>,
    /// The epochs followed for [`OutputStats::latency`]; locked only under
    /// the gate's lock.
    stamps: Mutex<EpochStamps>,
    pub stats: OutputStats,
}

impl GatedOutputs {
    /// Outputs with a grant that never expires and no member hold (the
    /// one-process pair, the two-process drivers, tests).
    pub fn new(gate: EpochGate, frame_out: Option<FrameOut>) -> Arc<Self> {
        Self::with_grant(gate, frame_out, HostGrant::always(), false)
    }

    /// Outputs that also need `grant`, starting held by the member if
    /// `member_held` (a take-over VM before its member opens the gate).
    pub fn with_grant(
        gate: EpochGate,
        frame_out: Option<FrameOut>,
        grant: Arc<HostGrant>,
        member_held: bool,
    ) -> Arc<Self> {
        let stamps = EpochStamps::new(reached(&gate));
        Arc::new(GatedOutputs {
            gate: Mutex::new(gate),
            frame_out: Mutex::new(frame_out),
            disk_tx: Mutex::new(None),
            failed: AtomicBool::new(false),
            grant,
            member_held: AtomicBool::new(member_held),
            stopping: AtomicBool::new(false),
            fence: Mutex::new(None),
            stamps: Mutex::new(stamps),
            stats: OutputStats::default(),
        })
    }

    /// Whether outputs may leave now: the grant is valid and the member
    /// does not hold.
    pub fn may_release(&self) -> bool {
        !self.member_held.load(Ordering::SeqCst) && self.grant.valid()
    }

    /// The gate, locked, with its hold brought up to date.
    fn lock_gate(&self) -> MutexGuard<'_, EpochGate> {
        let mut g = lock(&self.gate);
        g.set_held(!self.may_release());
        g
    }

    /// Releases what waited for the grant or the member (either came back).
    pub fn kick(&self) {
        let mut g = self.lock_gate();
        let actions = g.release();
        self.perform(&mut g, actions);
    }

    /// The member's gate (`lockstep::member::Gate`), `generation` the one it
    /// acts in: `Held` holds everything; `ByAcks` lets the Output Rule
    /// release (paired); `Open` runs alone in `generation`: every closed
    /// epoch counts as acknowledged (`EpochGate::on_generation_won`).
    pub fn set_member_gate(&self, gate: Gate, generation: u64) -> Result<(), GateError> {
        if gate == Gate::Held {
            self.member_held.store(true, Ordering::SeqCst);
            return Ok(());
        }
        {
            let mut g = lock(&self.gate);
            match (gate, g.mode()) {
                (Gate::ByAcks, Mode::Paired { .. }) => g.end_join(),
                // A join is under way in the generation the member runs
                // alone in (`EpochGate::close_epoch_joining`): releasing by
                // the new Secondary's acks is the stricter of the two, so it
                // stays until the join completes or is given up.
                (Gate::Open, Mode::Paired { generation: g0 })
                    if g0 == generation && g.joining() => {}
                (Gate::Open, Mode::Solo { generation: g0 }) if generation > g0 => {
                    g.set_held(true);
                    g.on_generation_rewon(generation)?;
                }
                (Gate::Open, Mode::Solo { generation: g0 }) if g0 == generation => {}
                (Gate::Open, Mode::Paired { generation: g0 } | Mode::Lost { generation: g0 })
                    if generation > g0 =>
                {
                    if let Mode::Paired { .. } = g.mode() {
                        g.on_secondary_lost()?;
                    }
                    // Its actions follow from `kick` below, under the hold.
                    g.set_held(true);
                    g.on_generation_won(generation)?;
                }
                (_, mode) => {
                    return Err(GateError::Transition {
                        what: if gate == Gate::Open {
                            "run alone in this generation"
                        } else {
                            "release by acks"
                        },
                        mode,
                    })
                }
            }
        }
        self.member_held.store(false, Ordering::SeqCst);
        self.kick();
        Ok(())
    }

    /// Waits until the outputs may leave; false if they never will (halted,
    /// or the backend stops meanwhile).
    fn wait_for_release(&self) -> bool {
        loop {
            if self.failed() {
                return false;
            }
            if self.may_release() {
                return true;
            }
            if self.stopping.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(GRANT_POLL);
        }
    }

    /// Whether the device refused an epoch's writes (module doc).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// This member is done (its host is taken for dead, or it lost the
    /// race): nothing more leaves, whatever is acknowledged later.
    pub fn halt(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Performs `actions` with the gate locked (frames leave in order),
    /// stamping what the gate reached (`latency.rs`).
    fn perform(&self, gate: &mut EpochGate, actions: Vec<Action>) {
        let mut stamps = lock(&self.stamps);
        let latency = &self.stats.latency;
        stamps.observe(reached(gate), Instant::now(), latency);
        for a in actions {
            match a {
                Action::Release { epoch, frame } => {
                    if self.failed() {
                        continue;
                    }
                    stamps.released(epoch, Instant::now(), latency);
                    if let Some(out) = lock(&self.frame_out).as_mut() {
                        out(&frame);
                    }
                    self.stats.frames_released.fetch_add(1, Ordering::Relaxed);
                }
                Action::Submit { epoch, writes } => {
                    let sent = lock(&self.disk_tx).as_ref().is_some_and(|tx| {
                        let released = BootInstant::now();
                        let job = DiskJob::Submit {
                            epoch,
                            writes,
                            released,
                        };
                        tx.send(job).is_ok()
                    });
                    if !sent {
                        tracing::error!(
                            epoch,
                            "checkpoint: no disk thread for epoch {epoch}'s writes; outputs stop"
                        );
                        self.failed.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
        stamps.retire(gate.oldest_held_frame());
    }

    /// Ends the current epoch (call with the vCPUs paused).
    pub fn close_epoch(&self) -> Closed {
        let mut g = self.lock_gate();
        let (closed, actions) = g.close_epoch();
        self.perform(&mut g, actions);
        closed
    }

    /// Ends the current epoch as the full epoch of a Secondary joining in
    /// `generation` (call with the vCPUs paused; `EpochGate::close_epoch_joining`).
    pub fn close_epoch_joining(&self, generation: u64) -> Result<Closed, GateError> {
        let mut g = self.lock_gate();
        let (closed, actions) = g.close_epoch_joining(generation)?;
        self.perform(&mut g, actions);
        Ok(closed)
    }

    /// The join in `generation` failed before the member paired
    /// (`EpochGate::abandon_join`).
    pub fn abandon_join(&self, generation: u64) -> Result<(), GateError> {
        let mut g = self.lock_gate();
        let actions = g.abandon_join(generation)?;
        self.perform(&mut g, actions);
        Ok(())
    }

    /// Whom the gate answers to now.
    pub fn mode(&self) -> Mode {
        lock(&self.gate).mode()
    }

    /// A fresh acknowledgement from the Secondary: every epoch `<= epoch`.
    pub fn on_ack(&self, epoch: u64) -> Result<(), GateError> {
        let mut g = self.lock_gate();
        let actions = g.on_ack(epoch)?;
        self.perform(&mut g, actions);
        Ok(())
    }

    /// The Secondary is gone: hold everything (the member races).
    pub fn on_secondary_lost(&self) -> Result<(), GateError> {
        lock(&self.gate).on_secondary_lost()
    }

    /// This member won `generation` and runs alone.
    pub fn on_generation_won(&self, generation: u64) -> Result<(), GateError> {
        let mut g = self.lock_gate();
        let actions = g.on_generation_won(generation)?;
        self.perform(&mut g, actions);
        Ok(())
    }

    /// Why the epoch should end now, if it should.
    pub fn end_early(&self, dirty_pages: u64) -> Option<super::gate::EndEarly> {
        lock(&self.gate).end_early(dirty_pages)
    }

    /// (acked, submitted, durable) for status.
    pub fn progress(&self) -> (u64, u64, u64) {
        lock(&self.gate).progress()
    }

    /// The epoch the guest runs in.
    pub fn current(&self) -> u64 {
        lock(&self.gate).current()
    }

    /// Whether the Secondary acknowledged every epoch closed so far.
    pub fn all_closed_acked(&self) -> bool {
        let g = lock(&self.gate);
        g.progress().0 + 1 == g.current()
    }

    pub fn frames_held(&self) -> usize {
        lock(&self.gate).frames_held()
    }

    fn on_durable(&self, epoch: u64) {
        let mut g = self.lock_gate();
        match g.on_durable(epoch) {
            Ok(actions) => self.perform(&mut g, actions),
            Err(e) => tracing::error!("checkpoint: {e}"),
        }
    }

    /// A take-over's unfinished epoch writes (the old Primary may not have
    /// written them): queued as one epoch of their own, closed at once,
    /// before the resumed guest writes anything, so they reach the device
    /// first, through this gate like every output (held until the member
    /// opens it, and only under the grant), and reads see them meanwhile.
    /// Call before the VM runs. Returns that epoch's number.
    /// `frames` (gratuitous ARPs) leave with it, after its writes are
    /// durable, as every frame does.
    pub fn reissue(&self, writes: &[DiskWrite], frames: &[Vec<u8>]) -> u64 {
        let mut g = self.lock_gate();
        for w in writes {
            g.on_write(w.sector, w.data.clone());
        }
        for f in frames {
            g.on_frame(f.clone());
        }
        let (closed, actions) = g.close_epoch();
        self.perform(&mut g, actions);
        closed.number
    }

    /// Sets the take-over's late-write fence (`late_fence.rs`).
    pub fn set_fence(&self, fence: LateWriteFence) {
        *lock(&self.fence) = Some(fence);
    }

    /// How long epoch `epoch` with `writes` must still wait for the
    /// late-write fence (`None`: it may go).
    fn fenced_for(&self, epoch: u64, writes: &[DiskWrite]) -> Option<std::time::Duration> {
        let now = BootInstant::now();
        let f = lock(&self.fence);
        let f = f.as_ref()?;
        f.holds(epoch, writes, now).then(|| f.remaining(now))
    }

    /// Sectors of `[sector, sector + n)` pending in the gate: (sector, bytes).
    fn pending(&self, sector: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
        lock(&self.gate).pending_in(sector, n)
    }
}

/// The [`LinuxBackend`] of a checkpoint Primary.
pub struct GatedBackend {
    outputs: Arc<GatedOutputs>,
    disk: Option<DiskBackend>,
    rx_tap: Option<Arc<Tap>>,
    net_dev: u8,
    done_tx: Option<Sender<InputEvent>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Called once if the device refuses an epoch's writes.
    on_failure: Option<Box<dyn FnOnce(String) + Send>>,
}

impl GatedBackend {
    /// `disk`: the VM's disk on the shared device; `rx_tap`: where received
    /// frames come from (transmitted ones go through `outputs`' frame out).
    pub fn new(
        outputs: Arc<GatedOutputs>,
        disk: Option<DiskBackend>,
        rx_tap: Option<Arc<Tap>>,
        net_dev: u8,
        on_failure: Box<dyn FnOnce(String) + Send>,
    ) -> Self {
        GatedBackend {
            outputs,
            disk,
            rx_tap,
            net_dev,
            done_tx: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            on_failure: Some(on_failure),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, BackendError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| BackendError::Thread {
            what: "checkpoint backend",
            source,
        })
}

/// The disk thread: reads with pending writes laid over, and acknowledged
/// epochs' writes in order, each epoch synced before it counts as durable.
/// An epoch the late-write fence holds waits here while reads go on (the
/// gate hands over the next epoch only once this one is durable).
fn disk_loop(
    mut disk: DiskBackend,
    jobs: Receiver<DiskJob>,
    outputs: Arc<GatedOutputs>,
    deliver: Deliver,
    on_failure: Box<dyn FnOnce(String) + Send>,
) {
    let mut on_failure = Some(on_failure);
    let mut held: Option<(u64, Vec<DiskWrite>)> = None;
    loop {
        if let Some((epoch, writes)) = held.take() {
            match outputs.fenced_for(epoch, &writes) {
                Some(_) => held = Some((epoch, writes)),
                // Free to go now: its age counts from here (module doc of
                // `late_fence`).
                None => {
                    let released = BootInstant::now();
                    submit(
                        &mut disk,
                        epoch,
                        &writes,
                        &outputs,
                        released,
                        &mut on_failure,
                    );
                }
            }
        }
        let job = match &held {
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
            Some((epoch, writes)) => {
                let wait = outputs.fenced_for(*epoch, writes).unwrap_or_default();
                match jobs.recv_timeout(wait.clamp(
                    std::time::Duration::from_millis(1),
                    std::time::Duration::from_millis(100),
                )) {
                    Ok(j) => j,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        match job {
            DiskJob::Read(req) => read(&mut disk, req, &outputs, &deliver),
            DiskJob::Submit {
                epoch,
                writes,
                released,
            } => {
                assert!(held.is_none(), "the gate submits one epoch at a time");
                if outputs.fenced_for(epoch, &writes).is_some() {
                    tracing::info!(
                        epoch,
                        "checkpoint: epoch {epoch} overlaps writes the old Primary may still land; held by the late-write fence"
                    );
                    held = Some((epoch, writes));
                } else {
                    submit(
                        &mut disk,
                        epoch,
                        &writes,
                        &outputs,
                        released,
                        &mut on_failure,
                    );
                }
            }
        }
    }
    if let Some((epoch, _)) = held {
        tracing::warn!(
            epoch,
            "checkpoint: epoch {epoch} held by the late-write fence given up: the VM stopped"
        );
    }
}

/// A read, with the gate's pending writes laid over what the device holds.
fn read(disk: &mut DiskBackend, req: BlockRequest, outputs: &GatedOutputs, deliver: &Deliver) {
    let BlockOp::Read { sector, len } = req.op else {
        return;
    };
    let pending = outputs.pending(sector, u64::from(len) / SECTOR_SIZE as u64);
    let (status, mut data) = match disk.execute(&req) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                id = req.id,
                "checkpoint disk: storage refused a read: {e:?}"
            );
            (BlockStatus::IoError, Vec::new())
        }
    };
    if status == BlockStatus::Ok {
        for (s, bytes) in pending {
            let at = (s - sector) as usize * SECTOR_SIZE;
            data[at..at + SECTOR_SIZE].copy_from_slice(&bytes);
        }
    }
    deliver(InputEvent::BlockDone {
        dev: req.dev,
        id: req.id,
        status,
        data,
    });
}

/// An acknowledged epoch's writes to the device; durable, or the outputs
/// fail for good.
fn submit(
    disk: &mut DiskBackend,
    epoch: u64,
    writes: &[DiskWrite],
    outputs: &GatedOutputs,
    released: BootInstant,
    on_failure: &mut Option<Box<dyn FnOnce(String) + Send>>,
) {
    if outputs.failed() {
        return;
    }
    match write_epoch(disk, writes, outputs, released) {
        Ok(bytes) => {
            outputs
                .stats
                .bytes_written
                .fetch_add(bytes, Ordering::Relaxed);
            outputs.stats.epochs_durable.fetch_add(1, Ordering::Relaxed);
            outputs.on_durable(epoch);
        }
        Err(why) => {
            outputs.failed.store(true, Ordering::SeqCst);
            let line = format!("epoch {epoch}'s disk writes failed: {why}; outputs stop");
            tracing::error!("checkpoint: {line}");
            if let Some(f) = on_failure.take() {
                f(line);
            }
        }
    }
}

/// Writes `writes` in order and syncs, each write only while the outputs
/// may leave (module doc); the bytes written.
fn write_epoch(
    disk: &mut DiskBackend,
    writes: &[DiskWrite],
    outputs: &GatedOutputs,
    released: BootInstant,
) -> Result<u64, String> {
    let mut bytes = 0u64;
    for (i, w) in writes.iter().enumerate() {
        if !outputs.wait_for_release() {
            return Err(format!(
                "held at sector {} (no output grant, or halted) while the VM stops",
                w.sector
            ));
        }
        if let Some(age) = too_old(released, BootInstant::now()) {
            return Err(format!(
                "the write at sector {} was released {} ms ago (limit {IO_AGE_LIMIT_MS} ms); \
                 never started",
                w.sector,
                age.as_millis()
            ));
        }
        let req = BlockRequest {
            dev: 0,
            id: i as u64,
            op: BlockOp::Write {
                sector: w.sector,
                data: w.data.clone(),
            },
        };
        match disk.execute(&req) {
            Ok((BlockStatus::Ok, _)) => bytes += w.data.len() as u64,
            Ok((status, _)) => return Err(format!("write at sector {}: {status:?}", w.sector)),
            Err(e) => return Err(format!("write at sector {}: {e:?}", w.sector)),
        }
    }
    let flush = BlockRequest {
        dev: 0,
        id: u64::MAX,
        op: BlockOp::Flush,
    };
    match disk.execute(&flush) {
        Ok((BlockStatus::Ok, _)) => Ok(bytes),
        Ok((status, _)) => Err(format!("flush: {status:?}")),
        Err(e) => Err(format!("flush: {e:?}")),
    }
}

impl LinuxBackend for GatedBackend {
    fn start(&mut self, deliver: Deliver) -> Result<(), BackendError> {
        let (done_tx, done_rx) = mpsc::channel::<InputEvent>();
        let d = Arc::clone(&deliver);
        self.threads.push(spawn("ckpt-complete", move || {
            for ev in done_rx {
                d(ev);
            }
        })?);
        self.done_tx = Some(done_tx);
        if let Some(disk) = self.disk.take() {
            let (tx, rx) = mpsc::channel::<DiskJob>();
            *lock(&self.outputs.disk_tx) = Some(tx);
            let (o, d) = (Arc::clone(&self.outputs), Arc::clone(&deliver));
            let fail = self.on_failure.take().unwrap_or_else(|| Box::new(|_| {}));
            self.threads
                .push(spawn("ckpt-disk", move || disk_loop(disk, rx, o, d, fail))?);
        }
        if let Some(tap) = self.rx_tap.clone() {
            let (stop, dev) = (Arc::clone(&self.stop), self.net_dev);
            self.threads.push(spawn("ckpt-tap-rx", move || {
                tap.receive_loop(&stop, |data| deliver(InputEvent::Frame { dev, data }));
            })?);
        }
        Ok(())
    }

    fn submit_block(&mut self, req: BlockRequest) {
        let status = match &req.op {
            BlockOp::Read { .. } => {
                let sent = lock(&self.outputs.disk_tx)
                    .as_ref()
                    .map(|tx| tx.send(DiskJob::Read(req.clone())).is_ok());
                if sent == Some(true) {
                    return;
                }
                tracing::warn!(id = req.id, "checkpoint disk: read without a disk thread");
                BlockStatus::IoError
            }
            BlockOp::Write { sector, data } => {
                if data.is_empty() || !data.len().is_multiple_of(SECTOR_SIZE) {
                    BlockStatus::IoError
                } else {
                    lock(&self.outputs.gate).on_write(*sector, data.clone());
                    BlockStatus::Ok
                }
            }
            BlockOp::Flush => BlockStatus::Ok,
        };
        if let Some(tx) = &self.done_tx {
            let _ = tx.send(InputEvent::BlockDone {
                dev: req.dev,
                id: req.id,
                status,
                data: Vec::new(),
            });
        }
    }

    fn send_frame(&mut self, _dev: u8, frame: Vec<u8>) {
        lock(&self.outputs.gate).on_frame(frame);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.outputs.stopping.store(true, Ordering::SeqCst);
        self.done_tx = None;
        *lock(&self.outputs.disk_tx) = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::warn!("checkpoint backend: a thread panicked");
            }
        }
    }
}

#[cfg(test)]
#[path = "grant_tests.rs"]
mod grant_tests;

#[cfg(test)]
#[path = "fence_tests.rs"]
mod fence_tests;

#[cfg(test)]
#[path = "latency_tests.rs"]
mod latency_tests;
