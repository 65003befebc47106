//! Machine state of an in-kernel-irqchip SMP VM: capture and restore of
//! everything KVM holds for the guest besides memory, given only the
//! `VmFd` and its `VcpuFd`s (so it plugs into any VMM that owns them).
//!
//! Per vCPU: MP state, regs, sregs, XSAVE, XCRs, debug regs, LAPIC, MSRs,
//! vCPU events and the TSC frequency. Per VM: the three irqchips (PIC
//! master, PIC slave, IOAPIC), PIT2 and the KVM clock.
//!
//! Rules:
//! - Capture only with every vCPU stopped (outside `KVM_RUN`); the caller
//!   pauses them. Nothing here runs a vCPU.
//! - The MSRs are the ones KVM reports (`KVM_GET_MSR_INDEX_LIST`) plus the
//!   paravirtual and timer MSRs Linux uses ([`EXTRA_MSRS`]), filtered by
//!   [`readable_msrs`] to those this vCPU can read back; the list is part
//!   of the state, so restore sets exactly what was read.
//! - Restore order (as Firecracker's): VM first (PIT, clock, irqchips), then
//!   per vCPU: MP state, regs, sregs (carries APIC_BASE, so before the
//!   LAPIC), XSAVE, XCRs, debug regs, LAPIC, MSRs (ascending: TSC 0x10
//!   before TSC_DEADLINE 0x6e0, whose value is relative to it), events last
//!   (they may inject an exception or NMI on top of everything else).
//! - Clocks: [`restore`] moves the kvmclock and every TSC forward by the
//!   same `advance_ns` (0 restores exactly what was captured), so guest
//!   time never runs backwards and kvmclock and TSC stay consistent with
//!   each other; the caller picks how long the guest was away.
//!
//! NOTICE: [`MachineState`] travels in every epoch; any change to it (or to
//! kvm-bindings' serde layout) requires a bump of [`STATE_VERSION`].

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use std::borrow::Borrow;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Version of the [`MachineState`] encoding.
pub const STATE_VERSION: u32 = 1;

/// MSR indices, named for the lists and tests below.
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1b;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const KVM_WALL_CLOCK: u32 = 0x11;
    pub const KVM_SYSTEM_TIME: u32 = 0x12;
    pub const KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
    pub const KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    pub const KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
    pub const KVM_STEAL_TIME: u32 = 0x4b56_4d03;
    pub const KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
}

/// MSRs asked for besides KVM's index list: KVM lists most of them as
/// "emulated", but not every kernel does, and a Linux guest depends on each
/// (kvmclock, steal time, PV EOI, the LAPIC's TSC-deadline timer, its base).
pub const EXTRA_MSRS: &[u32] = &[
    msr::TSC,
    msr::APIC_BASE,
    msr::TSC_DEADLINE,
    msr::EFER,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
    msr::KVM_WALL_CLOCK,
    msr::KVM_SYSTEM_TIME,
    msr::KVM_WALL_CLOCK_NEW,
    msr::KVM_SYSTEM_TIME_NEW,
    msr::KVM_ASYNC_PF_EN,
    msr::KVM_STEAL_TIME,
    msr::KVM_PV_EOI_EN,
];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} on vCPU {vcpu}: {source}")]
    Vcpu {
        what: &'static str,
        vcpu: usize,
        source: kvm_ioctls::Error,
    },
    #[error("{what} on the VM: {source}")]
    Vm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_MSRS on vCPU {vcpu} set {set} of {total} MSRs (first refused: {refused:#x})")]
    Msrs {
        vcpu: usize,
        set: usize,
        total: usize,
        refused: u32,
    },
    #[error("state has {saved} vCPUs, the VM has {have} (create the same number first)")]
    VcpuCount { saved: usize, have: usize },
    #[error("machine state version {found} is not supported (this build reads {STATE_VERSION})")]
    Version { found: u32 },
    #[error("machine state cannot be encoded or decoded: {0}")]
    Codec(#[from] postcard::Error),
}

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value), ascending by index.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency (to move TSCs forward with the clock); 0 if
    /// KVM could not say.
    pub tsc_khz: u32,
}

/// The whole machine state but memory and userspace devices.
/// Not `Clone` (`kvm_xsave` is not): copy it through [`MachineState::encode`].
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    pub version: u32,
    pub vcpus: Vec<VcpuState>,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl MachineState {
    /// The postcard encoding (what an epoch carries as its machine blob).
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_allocvec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let s: MachineState = postcard::from_bytes(bytes)?;
        if s.version != STATE_VERSION {
            return Err(StateError::Version { found: s.version });
        }
        Ok(s)
    }
}

fn vcpu_err(what: &'static str, vcpu: usize) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Vcpu { what, vcpu, source }
}

fn vm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Vm { what, source }
}

/// The MSRs to save for `vcpu`: KVM's index list plus [`EXTRA_MSRS`],
/// ascending, keeping only those `KVM_GET_MSRS` reads back. Compute once per
/// VM (the set does not change while it runs) and pass it to [`capture`].
///
/// `KVM_GET_MSRS` stops at the first MSR it cannot read and returns how many
/// it read, so the list is probed in one call per refused MSR.
pub fn readable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, StateError> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(vm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut want: Vec<u32> = listed.as_slice().to_vec();
    want.extend_from_slice(EXTRA_MSRS);
    want.sort_unstable();
    want.dedup();
    let mut ok = Vec::with_capacity(want.len());
    let mut rest = &want[..];
    while !rest.is_empty() {
        let got = read_msrs(vcpu, rest, 0)?.len();
        ok.extend_from_slice(&rest[..got]);
        // rest[got] was refused: skip it and go on after it.
        rest = rest.get(got + 1..).unwrap_or(&[]);
    }
    Ok(ok)
}

fn read_msrs(vcpu: &VcpuFd, indices: &[u32], id: usize) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    // Msrs holds at most KVM_MAX_MSR_ENTRIES (256): read in chunks.
    for chunk in indices.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("a chunk fits KVM_MAX_MSR_ENTRIES");
        let got = vcpu
            .get_msrs(&mut msrs)
            .map_err(vcpu_err("KVM_GET_MSRS", id))?;
        out.extend(msrs.as_slice()[..got].iter().map(|e| (e.index, e.data)));
        if got < chunk.len() {
            break;
        }
    }
    Ok(out)
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(vm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Captures the machine state; every vCPU must be stopped. `msrs` from
/// [`readable_msrs`]. Reads each vCPU from the calling thread; a running VM
/// captures each vCPU on its own thread instead ([`capture_vcpu`],
/// [`capture_vm`], `linux::vcpus`).
pub fn capture<V: Borrow<VcpuFd>>(
    vm: &VmFd,
    vcpus: &[V],
    msrs: &[u32],
) -> Result<MachineState, StateError> {
    // The clock first: it is the VM's notion of "now" at the pause.
    let clock = vm.get_clock().map_err(vm_err("KVM_GET_CLOCK"))?;
    let mut out = Vec::with_capacity(vcpus.len());
    for (id, v) in vcpus.iter().enumerate() {
        out.push(capture_vcpu(v.borrow(), msrs, id)?);
    }
    capture_vm(vm, out, clock)
}

/// One stopped vCPU's state (vCPU `id`, for errors).
pub fn capture_vcpu(v: &VcpuFd, msrs: &[u32], id: usize) -> Result<VcpuState, StateError> {
    let got = read_msrs(v, msrs, id)?;
    if got.len() != msrs.len() {
        let refused = msrs[got.len()];
        return Err(StateError::Msrs {
            vcpu: id,
            set: got.len(),
            total: msrs.len(),
            refused,
        });
    }
    Ok(VcpuState {
        mp_state: v.get_mp_state().map_err(vcpu_err("KVM_GET_MP_STATE", id))?,
        regs: v.get_regs().map_err(vcpu_err("KVM_GET_REGS", id))?,
        sregs: v.get_sregs().map_err(vcpu_err("KVM_GET_SREGS", id))?,
        xsave: v.get_xsave().map_err(vcpu_err("KVM_GET_XSAVE", id))?,
        xcrs: v.get_xcrs().map_err(vcpu_err("KVM_GET_XCRS", id))?,
        debugregs: v
            .get_debug_regs()
            .map_err(vcpu_err("KVM_GET_DEBUGREGS", id))?,
        lapic: v.get_lapic().map_err(vcpu_err("KVM_GET_LAPIC", id))?,
        msrs: got,
        events: v
            .get_vcpu_events()
            .map_err(vcpu_err("KVM_GET_VCPU_EVENTS", id))?,
        tsc_khz: v.get_tsc_khz().unwrap_or(0),
    })
}

/// The whole machine state from already captured vCPU states (in vCPU
/// order), the VM's `clock` and its interrupt controllers and PIT.
pub fn capture_vm(
    vm: &VmFd,
    vcpus: Vec<VcpuState>,
    clock: kvm_clock_data,
) -> Result<MachineState, StateError> {
    Ok(MachineState {
        version: STATE_VERSION,
        vcpus,
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(vm_err("KVM_GET_PIT2"))?,
        clock,
    })
}

/// The VM's clock (`KVM_GET_CLOCK`), for [`capture_vm`].
pub fn vm_clock(vm: &VmFd) -> Result<kvm_clock_data, StateError> {
    vm.get_clock().map_err(vm_err("KVM_GET_CLOCK"))
}

/// TSC ticks in `ns` at `khz` (saturating; 0 when the frequency is unknown).
pub fn tsc_ticks(ns: u64, khz: u32) -> u64 {
    let t = u128::from(ns) * u128::from(khz) / 1_000_000;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// Restores `s` into a VM with the in-kernel irqchip and PIT2 already
/// created and exactly `s.vcpus.len()` vCPUs (none running), moving guest
/// time forward by `advance_ns` (module doc).
pub fn restore<V: Borrow<VcpuFd>>(
    vm: &VmFd,
    vcpus: &[V],
    s: &MachineState,
    advance_ns: u64,
) -> Result<(), StateError> {
    if vcpus.len() != s.vcpus.len() {
        return Err(StateError::VcpuCount {
            saved: s.vcpus.len(),
            have: vcpus.len(),
        });
    }
    vm.set_pit2(&s.pit).map_err(vm_err("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data {
        clock: s.clock.clock.saturating_add(advance_ns),
        // KVM_SET_CLOCK accepts only KVM_CLOCK_REALTIME here (which would
        // add wall time elapsed since the capture: `advance_ns` says that
        // explicitly instead); the other flags are reports of GET.
        flags: 0,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(vm_err("KVM_SET_CLOCK"))?;
    for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(chip).map_err(vm_err("KVM_SET_IRQCHIP"))?;
    }
    for (id, (v, c)) in vcpus.iter().zip(&s.vcpus).enumerate() {
        restore_vcpu(v.borrow(), c, id, advance_ns)?;
    }
    Ok(())
}

fn restore_vcpu(v: &VcpuFd, c: &VcpuState, id: usize, advance_ns: u64) -> Result<(), StateError> {
    v.set_mp_state(c.mp_state)
        .map_err(vcpu_err("KVM_SET_MP_STATE", id))?;
    v.set_regs(&c.regs).map_err(vcpu_err("KVM_SET_REGS", id))?;
    v.set_sregs(&c.sregs)
        .map_err(vcpu_err("KVM_SET_SREGS", id))?;
    // SAFETY: `c.xsave` is a whole kvm_xsave (the 4 KiB legacy layout) as
    // KVM_GET_XSAVE returned it; KVM_SET_XSAVE reads no FAM data past it.
    unsafe { v.set_xsave(&c.xsave) }.map_err(vcpu_err("KVM_SET_XSAVE", id))?;
    v.set_xcrs(&c.xcrs).map_err(vcpu_err("KVM_SET_XCRS", id))?;
    v.set_debug_regs(&c.debugregs)
        .map_err(vcpu_err("KVM_SET_DEBUGREGS", id))?;
    v.set_lapic(&c.lapic)
        .map_err(vcpu_err("KVM_SET_LAPIC", id))?;
    let ticks = tsc_ticks(advance_ns, c.tsc_khz);
    let entries: Vec<kvm_msr_entry> = c
        .msrs
        .iter()
        .map(|&(index, data)| {
            // TSC and an armed TSC deadline move together, so the timer
            // fires as far in the guest's future as it was at the capture.
            let data = match index {
                msr::TSC => data.wrapping_add(ticks),
                msr::TSC_DEADLINE if data != 0 => data.wrapping_add(ticks),
                _ => data,
            };
            kvm_msr_entry {
                index,
                data,
                ..Default::default()
            }
        })
        .collect();
    let mut set_total = 0;
    for chunk in entries.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).expect("a chunk fits KVM_MAX_MSR_ENTRIES");
        let set = v.set_msrs(&msrs).map_err(vcpu_err("KVM_SET_MSRS", id))?;
        set_total += set;
        if set != chunk.len() {
            return Err(StateError::Msrs {
                vcpu: id,
                set: set_total,
                total: entries.len(),
                refused: chunk[set].index,
            });
        }
    }
    v.set_vcpu_events(&c.events)
        .map_err(vcpu_err("KVM_SET_VCPU_EVENTS", id))?;
    Ok(())
}

/// Whether the host's kvmclock is stable (the same on every vCPU), as
/// `KVM_GET_CLOCK` reported at the capture.
pub fn clock_is_stable(s: &MachineState) -> bool {
    s.clock.flags & KVM_CLOCK_TSC_STABLE != 0
}
