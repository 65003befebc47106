//! Building and running a checkpoint-mode VM: KVM VM with the in-kernel
//! irqchip (LAPIC, IOAPIC, PIC) and PIT, guest memory in one dirty-logged
//! slot, 1–4 vCPUs with their CPUID and boot state, the MP table and ACPI
//! tables, the device bus, and then one thread per vCPU ([`Running`]).
//!
//! [`Running::with_paused`] is the hook for checkpoint epochs: all vCPUs out
//! of `KVM_RUN`, a closure gets the `VmFd`, every `VcpuFd`, guest memory and
//! the device bus, then the vCPUs resume.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};
use vm_superio::serial::SerialState;
use vmm_sys_util::eventfd::EventFd;

use super::acpi::{self, MmioDevice};
use super::backend::{Deliver, LinuxBackend};
use super::boot::{self, Loaded};
use super::bus::{Bus, Console, COM1_IRQ};
use super::devstate::DevicesState;
use super::vcpus::{run_vcpu, Control};
use super::{cpuid, mptable, regs, End, LinuxVmError};
use crate::checkpoint::state::{self, MachineState};
use crate::virtio::{GuestMemoryMmap, MmioTransport};

/// KVM needs three pages for the TSS on Intel; out of the way of RAM.
const TSS_ADDR: usize = 0xfffb_d000;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> LinuxVmError {
    move |source| LinuxVmError::Kvm { what, source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A built VM whose vCPUs do not run yet.
pub struct LinuxVm {
    vm: Arc<VmFd>,
    vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    bus: Arc<Mutex<Bus>>,
    nvirtio: usize,
    /// The MSRs a checkpoint saves (`state::readable_msrs`, once per VM).
    msrs: Vec<u32>,
}

impl LinuxVm {
    /// The VM, its memory (zeroed, dirty-logged), `vcpus` vCPUs, tables and
    /// devices.
    pub fn create(
        vcpus: u8,
        mem_size: u64,
        virtio: Vec<MmioTransport>,
        console: Console,
        backend: Box<dyn LinuxBackend>,
    ) -> Result<LinuxVm, LinuxVmError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(|e| LinuxVmError::Memory(e.to_string()))?;
        Self::build(vcpus, mem, virtio, console, backend, None)
    }

    /// A VM around `mem`, which already holds a running guest's memory (a
    /// checkpoint Secondary's staging copy): no tables are written; the
    /// caller restores machine and device state ([`LinuxVm::restore`])
    /// before [`LinuxVm::start`]. COM1 starts from `serial`.
    pub fn create_restored(
        vcpus: u8,
        mem: GuestMemoryMmap,
        virtio: Vec<MmioTransport>,
        console: Console,
        backend: Box<dyn LinuxBackend>,
        serial: SerialState,
    ) -> Result<LinuxVm, LinuxVmError> {
        Self::build(vcpus, mem, virtio, console, backend, Some(serial))
    }

    fn build(
        vcpus: u8,
        mem: GuestMemoryMmap,
        virtio: Vec<MmioTransport>,
        console: Console,
        backend: Box<dyn LinuxBackend>,
        restored: Option<SerialState>,
    ) -> Result<LinuxVm, LinuxVmError> {
        let mem_size = mem.last_addr().raw_value() + 1;
        if mem.num_regions() != 1
            || mem_size < (64 << 20)
            || !mem_size.is_multiple_of(4096)
            || mem_size > crate::vm::MAX_MEM_SIZE
        {
            return Err(LinuxVmError::MemSize(mem_size));
        }
        if vcpus == 0 || vcpus > mptable::MAX_VCPUS {
            return Err(LinuxVmError::Vcpus(vcpus));
        }
        let kvm = Kvm::new().map_err(LinuxVmError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        if let Err(e) = vm.set_tss_address(TSS_ADDR) {
            tracing::debug!("KVM_SET_TSS_ADDR: {e}");
        }
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        register_memory(&vm, &mem, mem_size)?;

        let base = cpuid::supported(&kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut fds = Vec::with_capacity(vcpus as usize);
        for i in 0..vcpus {
            let fd = vm
                .create_vcpu(u64::from(i))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&cpuid::for_vcpu(&base, i, vcpus))
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            regs::setup_common(&fd, i)?;
            fds.push(Arc::new(Mutex::new(fd)));
        }
        let msrs = state::readable_msrs(&kvm, &lock(&fds[0]))?;

        let slots = Bus::virtio_slots(virtio.len());
        if restored.is_none() {
            let level_pins: Vec<u8> = slots.iter().map(|&(_, irq)| irq as u8).collect();
            mptable::write(&mem, vcpus, &level_pins)?;
            let devices: Vec<MmioDevice> = slots
                .iter()
                .map(|&(base, irq)| MmioDevice {
                    base: base as u32,
                    size: crate::devices::VIRTIO_MMIO_SIZE as u32,
                    irq,
                })
                .collect();
            acpi::write(&mem, vcpus, mptable::ioapic_id(vcpus), &devices)?;
        }

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(LinuxVmError::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
        let nvirtio = virtio.len();
        let vm = Arc::new(vm);
        let bus = Bus::new(
            Arc::clone(&vm),
            mem.clone(),
            serial_irq,
            console,
            virtio,
            backend,
            restored.unwrap_or_default(),
        );
        Ok(LinuxVm {
            vm,
            vcpus: fds,
            mem,
            mem_size,
            bus: Arc::new(Mutex::new(bus)),
            nvirtio,
            msrs,
        })
    }

    /// Loads a bzImage, initrd and command line and points the boot vCPU at
    /// the kernel's 64-bit entry.
    pub fn boot_linux(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        user_cmdline: &str,
    ) -> Result<Loaded, LinuxVmError> {
        let cmdline = boot::cmdline(user_cmdline, &Bus::virtio_slots(self.nvirtio))?;
        let (loaded, _) = boot::load(
            &self.mem,
            self.mem_size,
            kernel,
            initrd,
            &cmdline,
            acpi::RSDP_ADDR,
        )?;
        regs::setup_boot_vcpu(&lock(&self.vcpus[0]), loaded.entry)?;
        Ok(loaded)
    }

    /// Tests: vCPU `index` starts runnable in real mode at `rip` (segment 0).
    pub fn enter_real_mode(&self, index: usize, rip: u16) -> Result<(), LinuxVmError> {
        let fd = lock(&self.vcpus[index]);
        let mut s = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        s.cs.base = 0;
        s.cs.selector = 0;
        fd.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
        let r = kvm_bindings::kvm_regs {
            rip: u64::from(rip),
            rflags: 0x2,
            ..Default::default()
        };
        fd.set_regs(&r).map_err(kvm_err("KVM_SET_REGS"))?;
        fd.set_mp_state(kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
        })
        .map_err(kvm_err("KVM_SET_MP_STATE"))
    }

    /// Tests and benchmarks: vCPU 0 starts runnable in 64-bit mode at `rip`
    /// (identity-mapped, the reference guest's tables: `crate::boot`), where
    /// code runs natively on a KVM that emulates real mode (PVM).
    #[cfg(test)]
    pub fn enter_long_mode(&self, rip: u64) -> Result<(), LinuxVmError> {
        crate::boot::write_tables(&self.mem).expect("the boot tables fit in guest memory");
        regs::setup_boot_vcpu(&lock(&self.vcpus[0]), rip)?;
        lock(&self.vcpus[0])
            .set_mp_state(kvm_bindings::kvm_mp_state {
                mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm_err("KVM_SET_MP_STATE"))
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Loads a checkpoint into a VM from [`LinuxVm::create_restored`]: the
    /// machine state (guest time moved forward by `advance_ns`) and the
    /// virtio devices. Nothing runs yet.
    pub fn restore(
        &self,
        machine: &MachineState,
        devices: DevicesState,
        advance_ns: u64,
    ) -> Result<(), LinuxVmError> {
        let fds: Vec<MutexGuard<'_, VcpuFd>> = self.vcpus.iter().map(|v| lock(v)).collect();
        let refs: Vec<&VcpuFd> = fds.iter().map(|g| &**g).collect();
        state::restore(&self.vm, &refs, machine, advance_ns)?;
        lock(&self.bus).restore_virtio(devices.virtio)?;
        Ok(())
    }

    /// Starts the backend and one thread per vCPU.
    pub fn start(self) -> Result<Running, LinuxVmError> {
        let bus_for_deliver = Arc::clone(&self.bus);
        let deliver: Deliver = Arc::new(move |ev| lock(&bus_for_deliver).deliver(ev));
        {
            let mut bus = lock(&self.bus);
            if let Some(mut b) = bus.take_backend() {
                let started = b.start(deliver);
                bus.put_backend(b);
                started?;
            }
        }
        let ctl = Control::new(self.vcpus.len(), self.msrs.clone());
        let mut threads = Vec::new();
        for (i, fd) in self.vcpus.iter().enumerate() {
            let (fd, c, bus) = (Arc::clone(fd), Arc::clone(&ctl), Arc::clone(&self.bus));
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || run_vcpu(i, fd, c, bus))
                .map_err(LinuxVmError::Thread);
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    ctl.end(End::Error(e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(Running {
            vm: self,
            ctl,
            threads: Mutex::new(threads),
            started: Instant::now(),
        })
    }
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, mem_size: u64) -> Result<(), LinuxVmError> {
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| LinuxVmError::Memory(e.to_string()))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0,
        memory_size: mem_size,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is the whole mmap of `mem`, which the LinuxVm keeps
    // (next to the VmFd) for as long as the VM exists.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))
}

/// What a paused VM offers (see [`Running::with_paused`]).
pub struct Paused<'a> {
    pub vm: &'a VmFd,
    pub vcpus: Vec<MutexGuard<'a, VcpuFd>>,
    pub mem: &'a GuestMemoryMmap,
    pub mem_size: u64,
    pub bus: MutexGuard<'a, Bus>,
    /// The MSRs to save (`state::capture`).
    pub msrs: &'a [u32],
    /// Each vCPU's state, captured on its own thread as it parked
    /// (`vcpus` module doc); [`Paused::capture`] takes them.
    states: Vec<Option<Result<state::VcpuState, state::StateError>>>,
}

impl Paused<'_> {
    /// The machine state of the paused VM: the vCPU states its threads
    /// captured at this pause, with the VM-wide state read now. A vCPU whose
    /// thread had left (the VM ended) is read from this thread: nothing
    /// runs it any more. Once per pause (the states are moved out; a second
    /// call reads every vCPU here).
    pub fn capture(&mut self) -> Result<MachineState, state::StateError> {
        let mut taken = std::mem::take(&mut self.states).into_iter();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for vcpu in 0..self.vcpus.len() {
            match taken.next().flatten() {
                Some(got) => vcpus.push(got?),
                None => vcpus.push(state::capture_vcpu(&self.vcpus[vcpu], self.msrs, vcpu)?),
            }
        }
        let clock = state::vm_clock(self.vm)?;
        state::capture_vm(self.vm, vcpus, clock)
    }

    /// How many vCPU states their own threads captured at this pause.
    #[cfg(test)]
    pub(crate) fn states_from_vcpu_threads(&self) -> usize {
        self.states
            .iter()
            .filter(|s| matches!(s, Some(Ok(_))))
            .count()
    }
}

/// How the run went.
#[derive(Debug, Clone)]
pub struct Report {
    pub end: End,
    /// Where and when it ended (`vcpus::EndNote`).
    pub note: Option<super::vcpus::EndNote>,
    pub secs: f64,
    pub unowned: super::bus::Unowned,
}

/// A VM whose vCPUs run.
pub struct Running {
    vm: LinuxVm,
    ctl: Arc<Control>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
}

impl Running {
    /// Pauses every vCPU, runs `f`, resumes.
    pub fn with_paused<R>(&self, f: impl FnOnce(&mut Paused<'_>) -> R) -> R {
        // The devices' interrupt lines stay as they are from before the
        // vCPUs stop until `f` is done (`Bus::hold_irqs`): what `f` reads of
        // the irqchips and the devices is then one instant.
        lock(&self.vm.bus).hold_irqs();
        let mut pause = self.ctl.pause();
        let mut p = Paused {
            states: std::mem::take(&mut pause.states),
            vm: &self.vm.vm,
            vcpus: self.vm.vcpus.iter().map(|v| lock(v)).collect(),
            mem: &self.vm.mem,
            mem_size: self.vm.mem_size,
            bus: lock(&self.vm.bus),
            msrs: &self.vm.msrs,
        };
        let r = f(&mut p);
        // Still paused: what the lines owe the guest is delivered as it
        // runs again.
        p.bus.release_irqs();
        r
    }

    /// Asks the VM to end ([`End::Stopped`]).
    pub fn stop(&self) {
        self.ctl.end(End::Stopped);
    }

    pub fn ended(&self) -> Option<End> {
        self.ctl.ended()
    }

    /// Where and when the VM ended, once it did (`vcpus::EndNote`).
    pub fn end_note(&self) -> Option<super::vcpus::EndNote> {
        self.ctl.end_note()
    }

    /// The device lines up for `min` or more without the guest answering
    /// (`Bus::lines_unanswered`).
    pub fn lines_unanswered(&self, min: std::time::Duration) -> Vec<super::bus::UnansweredLine> {
        lock(&self.vm.bus).lines_unanswered(min)
    }

    /// Waits for the end, joins the threads, stops the backend.
    pub fn wait(&self) -> Report {
        let end = self.ctl.wait_end();
        for t in lock(&self.threads).drain(..) {
            if t.join().is_err() {
                tracing::warn!("linux VM: a vCPU thread panicked");
            }
        }
        let backend = lock(&self.vm.bus).take_backend();
        if let Some(mut b) = backend {
            b.stop();
        }
        let mut bus = lock(&self.vm.bus);
        bus.console_flush();
        Report {
            end,
            note: self.ctl.end_note(),
            secs: self.started.elapsed().as_secs_f64(),
            unowned: bus.unowned.clone(),
        }
    }

    /// The guest's memory (shared with the running VM).
    pub fn memory(&self) -> GuestMemoryMmap {
        self.vm.mem.clone()
    }

    /// Resubmits the restored devices' in-flight block requests (after a
    /// take-over: the backend runs now).
    pub fn resubmit_in_flight(&self) -> usize {
        lock(&self.vm.bus).resubmit_in_flight()
    }

    /// A handle to stop the VM from elsewhere (signal handlers).
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.ctl)
    }
}
