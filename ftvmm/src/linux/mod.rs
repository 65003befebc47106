//! Checkpoint-mode VMs (issue 11, DESIGN §4b): a stock x86-64 Linux kernel
//! (bzImage, Linux boot protocol) with an initrd, 1–4 vCPUs, KVM's in-kernel
//! irqchip and PIT, COM1 and the virtio-mmio blk/net devices. None of
//! lockstep's determinism rules apply here (TSC and kvmclock are visible);
//! the lockstep VM ([`crate::vm`]) is untouched by this module.
//!
//! - [`boot`]: bzImage, initrd, command line, zero page and e820.
//! - [`mptable`], [`acpi`]: how the guest finds its CPUs, IOAPIC and
//!   virtio-mmio devices (MP table; ACPI MADT + DSDT, which the pinned
//!   Debian kernel needs for virtio-mmio), and how it powers off (FADT
//!   sleep registers, `\_S5_`).
//! - [`cpuid`], [`regs`]: per-vCPU CPUID and boot state.
//! - [`bus`]: COM1, i8042 reset, the ACPI sleep control port (power-off),
//!   virtio slots, unowned ports; IRQ lines.
//! - [`devstate`]: the userspace devices' state as one value (epochs).
//! - [`backend`]: the narrow door to disk and TAP ([`LinuxBackend`]).
//! - [`vcpus`]: the vCPU threads and the pause gate.
//! - [`machine`]: building the VM, running it, pausing it.
//! - [`run`]: `ftvmm linux` (CLI).
//!
//! A guest ends its VM by resetting (`reboot` with `reboot=k`:
//! [`End::Reset`]) or powering off (`poweroff`: [`End::PowerOff`]); a
//! triple fault, a KVM system event, the host or an error end it too
//! ([`End`]).

pub mod acpi;
pub mod backend;
pub mod boot;
pub mod bus;
pub mod cpuid;
pub mod devstate;
pub mod machine;
pub mod mptable;
pub mod regs;
pub mod run;
pub mod vcpus;

#[cfg(test)]
pub(crate) mod tests;

pub use backend::{DirectBackend, LinuxBackend};
pub use machine::{LinuxVm, Paused, Report, Running};
pub use run::{run_linux, LinuxSpec};

/// Why a checkpoint-mode VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The guest wrote 0xfe to port 0x64 (`reboot=k`): its normal end.
    Reset,
    /// The guest entered ACPI S5 (`poweroff`): it wrote
    /// [`acpi::S5_SLEEP_CONTROL`] to the sleep control register
    /// ([`acpi::SLEEP_PORT`]). A normal end too.
    PowerOff,
    /// A triple fault (`reboot=t`, or a crash).
    TripleFault,
    /// `KVM_EXIT_SYSTEM_EVENT` of this type.
    SystemEvent(u32),
    /// The host asked the VM to stop.
    Stopped,
    /// KVM or the VMM failed.
    Error(String),
}

impl End {
    /// The guest ended itself (reset, power-off, a crash), as opposed to
    /// the host stopping it or the VMM failing: what it wrote up to then is
    /// kept (`checkpoint::primary`'s last epoch).
    pub fn is_guest_end(&self) -> bool {
        !matches!(self, End::Stopped | End::Error(_))
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Reset => write!(f, "guest reset (i8042 0xfe)"),
            End::PowerOff => write!(f, "guest power-off (ACPI S5)"),
            End::TripleFault => write!(f, "guest triple fault (shutdown)"),
            End::SystemEvent(t) => write!(f, "system event {t}"),
            End::Stopped => write!(f, "stopped by the host"),
            End::Error(e) => write!(f, "error: {e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinuxVmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM ioctl {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory size {0:#x} invalid: a multiple of 4 KiB from 64 MiB to 3 GiB")]
    MemSize(u64),
    #[error("{0} vCPUs requested: 1 to {max} supported", max = mptable::MAX_VCPUS)]
    Vcpus(u8),
    #[error("cannot allocate guest memory: {0}")]
    Memory(String),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Boot(#[from] boot::LinuxBootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Disk(#[from] crate::live::DiskError),
    #[error(transparent)]
    Tap(#[from] crate::live::TapError),
    #[error("machine state: {0}")]
    State(#[from] crate::checkpoint::state::StateError),
    #[error(transparent)]
    Devices(#[from] devstate::DevStateError),
}
