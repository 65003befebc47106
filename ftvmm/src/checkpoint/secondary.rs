//! The checkpoint Secondary on a real VM: the staging copy of guest memory is
//! the very mapping the take-over VM will run on ([`Staging`]), so failover
//! copies no memory; [`take_over`] builds the VM around it, restores the
//! last complete epoch's machine and device state with guest time moved
//! forward, finishes that epoch's disk writes, and starts the vCPUs.
//!
//! Order at take-over (each step before the next): the writes the old
//! Primary may not have finished are handed to the caller's closure (the
//! member driver queues them first in the new gate, under the late-write
//! fence; the one-process pair writes them to the device at once); the VM
//! is built and its state restored; the vCPUs
//! start; the restored devices' in-flight block requests are submitted again
//! (their completions never reached the guest).

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::epoch::{DiskWrite, PAGE_SIZE};
use super::receiver::{StagingMemory, TakeOver};
use super::state::MachineState;
use crate::linux::backend::LinuxBackend;
use crate::linux::bus::Console;
use crate::linux::devstate::DevicesState;
use crate::linux::machine::{LinuxVm, Running};
use crate::linux::LinuxVmError;
use crate::virtio::{GuestMemoryMmap, MmioTransport};

/// Guest memory a [`super::receiver::Receiver`] writes into and the
/// take-over VM then runs on.
pub struct Staging {
    mem: GuestMemoryMmap,
    base: *mut u8,
    len: usize,
}

// SAFETY: `base` points into `mem`'s mapping, which `Staging` owns (no
// clone of `mem` is handed out before `into_memory`); moving the owner to
// another thread moves the only access path with it.
unsafe impl Send for Staging {}

impl Staging {
    /// Zeroed memory of `mem_size` bytes (anonymous: untouched pages cost
    /// nothing until written).
    pub fn new(mem_size: u64) -> Result<Self, LinuxVmError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(|e| LinuxVmError::Memory(e.to_string()))?;
        let base = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| LinuxVmError::Memory(e.to_string()))?;
        Ok(Staging {
            mem,
            base,
            len: mem_size as usize,
        })
    }

    /// The memory, for the take-over VM.
    pub fn into_memory(self) -> GuestMemoryMmap {
        self.mem
    }

    /// Read access (tests compare it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl StagingMemory for Staging {
    fn pages(&self) -> u64 {
        (self.len / PAGE_SIZE) as u64
    }

    fn page_mut(&mut self, gfn: u64) -> &mut [u8] {
        let at = gfn as usize * PAGE_SIZE;
        assert!(
            at + PAGE_SIZE <= self.len,
            "page {gfn} outside staging memory"
        );
        // SAFETY: `[base + at, base + at + PAGE_SIZE)` lies inside the one
        // mapping of `len` bytes (asserted above) that `mem` keeps alive for
        // as long as `self`; no vCPU runs on it (it becomes a VM's memory
        // only through `into_memory`, which consumes `self`), and `&mut self`
        // makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(at), PAGE_SIZE) }
    }
}

/// Why a take-over failed (the VM does not run).
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("no epoch was ever completed: nothing to resume")]
    NoEpoch,
    #[error("epoch {epoch}'s machine state: {source}")]
    Machine {
        epoch: u64,
        source: super::state::StateError,
    },
    #[error("epoch {epoch}'s device state: {source}")]
    Devices {
        epoch: u64,
        source: crate::linux::devstate::DevStateError,
    },
    #[error("finishing epoch {epoch}'s disk writes: {why}")]
    Writes { epoch: u64, why: String },
    #[error(transparent)]
    Vm(#[from] LinuxVmError),
}

/// What the take-over VM is made of besides the checkpoint.
pub struct Rebuild {
    pub vcpus: u8,
    /// Built as the Primary's were (same kinds, `dev`s, capacity, order).
    pub virtio: Vec<MmioTransport>,
    pub console: Console,
    pub backend: Box<dyn LinuxBackend>,
    /// Guest time moves forward by this much (how long the guest was away).
    pub advance_ns: u64,
}

/// Resumes the guest from `t` (module doc). `write_pending` writes the
/// epoch's unfinished disk writes, in order, durably, before anything runs.
pub fn take_over(
    t: TakeOver<Staging>,
    r: Rebuild,
    write_pending: impl FnOnce(&[DiskWrite]) -> Result<(), String>,
) -> Result<(Running, u64), TakeOverError> {
    let epoch = t.epoch;
    if epoch == 0 || t.machine.is_empty() {
        return Err(TakeOverError::NoEpoch);
    }
    let machine = MachineState::decode(&t.machine)
        .map_err(|source| TakeOverError::Machine { epoch, source })?;
    let devices = DevicesState::decode(&t.devices)
        .map_err(|source| TakeOverError::Devices { epoch, source })?;
    write_pending(&t.writes).map_err(|why| TakeOverError::Writes { epoch, why })?;
    let serial = devices.serial.clone().into();
    let vm = LinuxVm::create_restored(
        r.vcpus,
        t.memory.into_memory(),
        r.virtio,
        r.console,
        r.backend,
        serial,
    )?;
    vm.restore(&machine, devices, r.advance_ns)?;
    let running = vm.start()?;
    let resubmitted = running.resubmit_in_flight();
    tracing::info!(
        epoch,
        resubmitted,
        advance_ms = r.advance_ns / 1_000_000,
        "checkpoint: resumed from the last complete epoch"
    );
    Ok((running, epoch))
}
