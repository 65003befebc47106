//! ftvmm: the VMM of the fault-tolerant appliance. One vCPU on KVM, userspace
//! interrupt controllers and devices, and one door each for inputs and outputs
//! (see [`io`]) so that lockstep can record and replay them.
//!
//! Layout: [`vm`] (KVM VM, memory, vCPU creation), [`boot`] (64-bit entry
//! state), [`cpuid`] (the guest CPUID from the cluster CPU baseline),
//! [`platform`] (CPUID, MSR filter and VMM build, compared at
//! pair start), [`vcpu`] (the run loop), [`devices`] (PIC, PIT, serial, bus),
//! [`virtio`] (virtio-mmio blk/net), [`live`] (real backends behind
//! `Inputs`/`Outputs`), [`snapshot`] (save/restore),
//! [`dirty`] (dirty-page tracking), [`daemon`]/[`manager`] (the appliance service),
//! [`checkpoint`] (checkpoint replication: epochs, their Output Rule).
//! [`linux`] (checkpoint-mode VMs: stock Linux, several vCPUs, in-kernel irqchip).

pub mod boot;
pub mod checkpoint;
pub mod cpuid;
pub mod daemon;
pub mod devices;
pub mod dirty;
pub mod io;
pub mod kick;
pub mod linux;
pub mod live;
pub mod lockstep;
pub mod manager;
pub mod members;
pub mod platform;
pub mod power;
pub mod priority;
pub mod runner;
pub mod signals;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use vcpu::{ExitKind, RunOutcome, TraceEntry};
pub use vm::{Vm, VmError, VmHandle};

/// The reference guest's ELF for in-process tests that boot it: `FTGUEST_ELF`,
/// or the guest's release build in the repository. Panics, saying how to get
/// it, when it is missing (a test that needs it fails, never skips).
#[cfg(test)]
pub(crate) fn test_guest_elf() -> std::path::PathBuf {
    let elf = std::env::var_os("FTGUEST_ELF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../guest/target/x86_64-unknown-none/release/ftguest")
        });
    assert!(
        elf.exists(),
        "reference guest {} missing: `cd guest && cargo build --release` or set FTGUEST_ELF",
        elf.display()
    );
    elf
}
