//! The boot state of a checkpoint-mode vCPU, as Firecracker's
//! `arch/x86_64/{regs,msr,interrupts}.rs`: the boot vCPU enters the kernel's
//! 64-bit entry with `rsi` = zero page, in long mode on identity page tables;
//! every vCPU gets the boot MSRs, a reset FPU, and LAPIC LINT0 = ExtINT
//! (the PIC's output) and LINT1 = NMI. Application processors stay in
//! `KVM_MP_STATE_UNINITIALIZED`: KVM's LAPIC handles the guest's INIT/SIPI.

use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, Msrs, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::VcpuFd;

use super::boot::{BOOT_STACK_POINTER, ZERO_PAGE_ADDR};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM_SET_MSRS set {set} of {want} boot MSRs")]
    Msrs { index: u8, set: usize, want: usize },
}

fn kvm(index: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm {
        index,
        what,
        source,
    }
}

/// The boot MSRs (all vCPUs).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], off: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
}

/// MSRs, FPU, LINT0/LINT1 and MP state of vCPU `index` (0 is the BSP).
pub fn setup_common(vcpu: &VcpuFd, index: u8) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        index,
        set: 0,
        want: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm(index, "KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            index,
            set,
            want: entries.len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm(index, "KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm(index, "KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(kvm(index, "KVM_SET_LAPIC"))?;
    let mp_state = if index == 0 {
        KVM_MP_STATE_RUNNABLE
    } else {
        KVM_MP_STATE_UNINITIALIZED
    };
    vcpu.set_mp_state(kvm_mp_state { mp_state })
        .map_err(kvm(index, "KVM_SET_MP_STATE"))?;
    Ok(())
}

/// The boot vCPU at `entry` in long mode, `rsi` = the zero page.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm(0, "KVM_GET_SREGS"))?;
    vcpu.set_sregs(&crate::boot::long_mode_sregs(sregs))
        .map_err(kvm(0, "KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm(0, "KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_delivery_mode_replaces_bits_8_to_10_only() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x3f; // vector
        regs[APIC_LVT0 + 2] = 0x01; // mask bit 16
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x3f);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
        assert_eq!(boot_msrs().len(), 11);
    }
}
