//! The CPUID the guest sees: KVM's supported set with every feature removed
//! whose value or timing differs between hosts or runs (DESIGN.md §4).
//!
//! Hidden: TSC (leaf 1 EDX bit 4; also TSC-deadline, invariant TSC, RDTSCP,
//! TSC_ADJUST, and the TSC/crystal frequency leaves 0x15/0x16), RDRAND (leaf 1
//! ECX bit 30), RDSEED (leaf 7 EBX bit 18), the PMU (leaf 0xA zeroed), the
//! local APIC/x2APIC (there is no in-kernel irqchip), the hypervisor bit and the
//! KVM paravirtual leaves 0x4000_0000.. (kvmclock). Hiding a feature bit does
//! not make the instruction fault: `rdtsc` still executes (CR4.TSD only traps it
//! outside ring 0), so a guest that ignores CPUID can still read the TSC — the
//! reference guest does not, and lockstep requires guests not to.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};

/// Applies the filter to a CPUID table in place.
pub fn filter(cpuid: &mut CpuId) {
    let entries = cpuid.as_mut_slice();
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ecx &= !((1 << 30) | (1 << 31) | (1 << 24) | (1 << 21));
                e.edx &= !((1 << 4) | (1 << 9));
            }
            0x6 => e.eax &= !(1 << 2), // ARAT (APIC timer)
            0x7 if e.index == 0 => e.ebx &= !((1 << 18) | (1 << 1)),
            0xa | 0x15 | 0x16 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => e.edx &= !(1 << 27),
            0x8000_0007 => e.edx &= !(1 << 8),
            _ => {}
        }
    }
    // Drop the hypervisor leaves (KVM signature, kvmclock features).
    let kept: Vec<_> = cpuid
        .as_slice()
        .iter()
        .copied()
        .filter(|e| !(0x4000_0000..0x5000_0000).contains(&e.function))
        .collect();
    // Building from fewer entries than before cannot exceed the FAM capacity.
    *cpuid = CpuId::from_entries(&kept).expect("filtered CPUID fits");
}

/// KVM's supported CPUID, filtered.
pub fn guest_cpuid(kvm: &kvm_ioctls::Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    filter(&mut cpuid);
    Ok(cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
            ..Default::default()
        }
    }

    #[test]
    fn hides_time_randomness_pmu_and_paravirt() {
        let mut c = CpuId::from_entries(&[
            entry(0x1, 0),
            entry(0x7, 0),
            entry(0xa, 0),
            entry(0x4000_0000, 0),
            entry(0x4000_0001, 0),
            entry(0x8000_0001, 0),
        ])
        .unwrap();
        filter(&mut c);
        let s = c.as_slice();
        assert_eq!(s.len(), 4, "paravirt leaves removed");
        let l1 = s.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.edx & (1 << 4), 0, "TSC");
        assert_eq!(l1.ecx & (1 << 30), 0, "RDRAND");
        assert_eq!(l1.ecx & (1 << 31), 0, "hypervisor");
        assert_ne!(l1.edx & (1 << 25), 0, "SSE untouched");
        let l7 = s.iter().find(|e| e.function == 7).unwrap();
        assert_eq!(l7.ebx & (1 << 18), 0, "RDSEED");
        let la = s.iter().find(|e| e.function == 0xa).unwrap();
        assert_eq!((la.eax, la.ebx, la.ecx, la.edx), (0, 0, 0, 0));
        let ext = s.iter().find(|e| e.function == 0x8000_0001).unwrap();
        assert_eq!(ext.edx & (1 << 27), 0, "RDTSCP");
    }
}
