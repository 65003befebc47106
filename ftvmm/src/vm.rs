//! One VM: a KVM VM with one vCPU, its guest memory and its devices.
//!
//! Guest memory is a single `vm-memory` region from GPA 0 registered as KVM
//! memory slot 0 (dirty logging can be switched on later, see [`crate::dirty`]).
//! There is no in-kernel irqchip or PIT: every interrupt comes from the
//! userspace [`PicPair`](crate::devices::pic::PicPair) via `KVM_INTERRUPT`.
//! The CPUID, the MSR filter, paravirtual enforcement and the interrupt-window
//! policy come from one [`Platform`] (the cluster CPU baseline applied to this
//! host's KVM), which the VM keeps and reports.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use config_schema::model::CpuBaseline;

use crate::boot::{self, BootError};
use crate::devices::Devices;
use crate::io::ExitIndex;
use crate::kick::Kicker;
use crate::platform::{Platform, PlatformError};
use crate::stats::ExitStats;
use crate::virtio::{GuestMemoryMmap, MmioTransport};

/// Guest memory may not reach the virtio-mmio window at 0xd000_0000.
pub const MAX_MEM_SIZE: u64 = 3 << 30;
// Config validation refuses what this VMM cannot map.
const _: () = assert!(
    MAX_MEM_SIZE == (config_schema::validate::MAX_VM_MEMORY_MIB as u64) << 20,
    "config-schema's MAX_VM_MEMORY_MIB must equal ftvmm's MAX_MEM_SIZE"
);
/// KVM needs three pages for the TSS on Intel; put them out of the way.
const TSS_ADDR: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM ioctl {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(
        "guest memory size {0:#x} invalid: must be a non-zero multiple of 4 KiB and at most 3 GiB"
    )]
    MemSize(u64),
    #[error("cannot allocate guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("cannot set up vCPU kicks: {0}")]
    Kick(vmm_sys_util::errno::Error),
    #[error("KVM_RUN: entry failed (hardware reason {reason:#x}) at exit index {n}")]
    FailEntry { reason: u64, n: ExitIndex },
    #[error("KVM_RUN: internal error (suberror {suberror}) at exit index {n}")]
    Internal { suberror: u32, n: ExitIndex },
    #[error("KVM_RUN: unexpected exit {kind} at exit index {n}")]
    UnexpectedExit { kind: String, n: ExitIndex },
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A handle another thread may keep to stop a running VM.
#[derive(Clone)]
pub struct VmHandle {
    stop: Arc<AtomicBool>,
    kicker: Arc<Kicker>,
}

impl VmHandle {
    /// A handle tied to no VM (simulations drive the doors without KVM).
    pub fn standalone() -> VmHandle {
        VmHandle {
            stop: Arc::new(AtomicBool::new(false)),
            kicker: Arc::new(Kicker::new()),
        }
    }

    /// Asks the run loop to return [`crate::vcpu::RunOutcome::Stopped`] soon.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kicker.kick();
    }

    /// A stop was requested and the run loop has not returned for it yet
    /// (lets a blocking input source give up its wait).
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Makes a blocked `KVM_RUN` return so the loop looks at its inputs.
    pub fn kick(&self) {
        self.kicker.kick();
    }

    pub fn kicker(&self) -> Arc<Kicker> {
        Arc::clone(&self.kicker)
    }
}

/// Live counters another thread may read while the VM runs (status pages).
#[derive(Debug, Default)]
pub struct Progress {
    pub exit_index: AtomicU64,
    pub injected: AtomicU64,
    pub hlt: AtomicU64,
    pub host_exits: AtomicU64,
}

impl Progress {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "exit_index": self.exit_index.load(Ordering::Relaxed),
            "injected": self.injected.load(Ordering::Relaxed),
            "hlt": self.hlt.load(Ordering::Relaxed),
            "host_exits": self.host_exits.load(Ordering::Relaxed),
        })
    }
}

/// The VM.
pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) vm_fd: VmFd,
    pub(crate) vcpu: VcpuFd,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) mem_size: u64,
    pub(crate) devices: Devices,
    /// Deterministic exit index: guest-caused `KVM_RUN` returns so far.
    pub(crate) n: ExitIndex,
    pub(crate) stats: ExitStats,
    /// The vCPU executed HLT and waits for an interrupt.
    pub(crate) halted: bool,
    /// The last `KVM_RUN` return was guest-caused (or none happened yet):
    /// only then may an interrupt be injected (see `vcpu.rs`).
    pub(crate) at_deterministic_point: bool,
    pub(crate) dirty_log: bool,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) kicker: Arc<Kicker>,
    pub(crate) trace: Option<Vec<crate::vcpu::TraceEntry>>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) platform: Platform,
}

impl Vm {
    /// Creates the VM, its memory (zeroed) and its vCPU on the default CPU
    /// baseline (x86-64-v1; tests, `ftvmm run`, snapshots).
    pub fn new(mem_size: u64, virtio: Vec<MmioTransport>) -> Result<Vm, VmError> {
        Vm::with_baseline(mem_size, virtio, &CpuBaseline::default())
    }

    /// Creates the VM on the platform this host presents for `baseline`
    /// (fails, naming the missing features, if its KVM cannot provide it).
    pub fn with_baseline(
        mem_size: u64,
        virtio: Vec<MmioTransport>,
        baseline: &CpuBaseline,
    ) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let platform = Platform::probe(&kvm, baseline)?;
        Vm::with_platform(kvm, mem_size, virtio, platform)
    }

    /// Creates the VM on `platform`, which must come from [`Platform::probe`]
    /// on this `kvm`.
    pub fn with_platform(
        kvm: Kvm,
        mem_size: u64,
        virtio: Vec<MmioTransport>,
        platform: Platform,
    ) -> Result<Vm, VmError> {
        if mem_size == 0 || !mem_size.is_multiple_of(4096) || mem_size > MAX_MEM_SIZE {
            return Err(VmError::MemSize(mem_size));
        }
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        if let Err(e) = vm_fd.set_tss_address(TSS_ADDR) {
            // Only needed by VMX; other backends may refuse it harmlessly.
            tracing::debug!("KVM_SET_TSS_ADDR: {e}");
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(|e| VmError::Memory(e.to_string()))?;
        platform.apply_to_vm(&kvm, &vm_fd)?;
        let vcpu = vm_fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        platform.apply_to_vcpu(&vcpu)?;
        let vm = Vm {
            kvm,
            vm_fd,
            vcpu,
            mem,
            mem_size,
            devices: Devices::new(virtio),
            n: 0,
            stats: ExitStats::default(),
            halted: false,
            at_deterministic_point: true,
            dirty_log: false,
            stop: Arc::new(AtomicBool::new(false)),
            kicker: Arc::new(Kicker::new()),
            trace: None,
            progress: Arc::new(Progress::default()),
            platform,
        };
        vm.register_memory(false)?;
        Ok(vm)
    }

    /// (Re)registers memory slot 0, with or without dirty logging.
    pub(crate) fn register_memory(&self, log_dirty: bool) -> Result<(), VmError> {
        let host = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| VmError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: 0,
            memory_size: self.mem_size,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is the whole mmap of `self.mem`, which lives as long
        // as `self.vm_fd` (both are fields of this Vm and dropped together).
        unsafe { self.vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Loads an ELF kernel and sets the 64-bit entry state of BOOT-PROTOCOL.md.
    pub fn boot_elf(&mut self, kernel: &Path, cmdline: &str) -> Result<(), VmError> {
        let entry = boot::load_elf(&self.mem, kernel)?;
        self.boot_at(entry, cmdline)
    }

    /// Writes flat code at `addr` and enters it (tests, tiny guests).
    pub fn boot_flat(&mut self, code: &[u8], addr: u64, cmdline: &str) -> Result<(), VmError> {
        use vm_memory::Bytes;
        self.mem
            .write_slice(code, GuestAddress(addr))
            .map_err(|e| VmError::Boot(BootError::Memory(e)))?;
        self.boot_at(addr, cmdline)
    }

    fn boot_at(&mut self, entry: u64, cmdline: &str) -> Result<(), VmError> {
        boot::write_tables(&self.mem)?;
        boot::write_cmdline(&self.mem, cmdline)?;
        let sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        self.vcpu
            .set_sregs(&boot::long_mode_sregs(sregs))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&boot::entry_regs(entry, self.mem_size))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        tracing::debug!(entry, mem_size = self.mem_size, "vCPU at entry");
        Ok(())
    }

    /// Counters published while running.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    pub fn handle(&self) -> VmHandle {
        VmHandle {
            stop: Arc::clone(&self.stop),
            kicker: Arc::clone(&self.kicker),
        }
    }

    /// Deterministic exits so far.
    pub fn exit_index(&self) -> ExitIndex {
        self.n
    }

    pub fn stats(&self) -> &ExitStats {
        &self.stats
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    pub fn devices_mut(&mut self) -> &mut Devices {
        &mut self.devices
    }

    pub fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    /// The platform this VM was created on (its CPUID, MSR filter and VMM
    /// build).
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Whether the vCPU waits in HLT.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Records `(n, kind, rip)` of every deterministic exit from now on (slow:
    /// one `KVM_GET_REGS` per exit; for tests and divergence hunting).
    pub fn enable_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    pub fn take_trace(&mut self) -> Vec<crate::vcpu::TraceEntry> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// KVM API version of the host (for status).
    pub fn kvm_api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }
}
