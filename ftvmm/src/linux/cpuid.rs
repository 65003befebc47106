//! The CPUID of a checkpoint-mode vCPU: everything KVM supports
//! (`KVM_GET_SUPPORTED_CPUID`, TSC and kvmclock included: this mode needs no
//! determinism), with the per-vCPU APIC ids and the topology fixed up the way
//! Firecracker's `cpuid` normalisation does minimally: one socket of `vcpus`
//! cores, one thread per core, APIC id = vCPU index.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Leaf 1 EDX: hyper-threading / multi-core package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0xb/0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// KVM's supported CPUID (the base every vCPU's is derived from).
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// Bits needed to number `n` items (ceil log2).
fn width(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// `base` with vCPU `index`'s APIC id and the topology of `vcpus` cores.
pub fn for_vcpu(base: &CpuId, index: u8, vcpus: u8) -> CpuId {
    let mut c = base.clone();
    let id = u32::from(index);
    let n = u32::from(vcpus.max(1));
    for e in c.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (n << 16);
                if n > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR;
            }
            0x4 => {
                // Cores per package - 1, in EAX[31:26]; one thread per cache.
                e.eax = (e.eax & 0x03ff_ffff) | ((n - 1) << 26);
                e.eax &= !(0xfff << 14);
            }
            0xb | 0x1f => {
                let (eax, ebx, ecx) = match e.index {
                    0 => (0, 1, (LEVEL_SMT << 8)),
                    1 => (width(n), n, (LEVEL_CORE << 8) | 1),
                    i => (0, 0, i),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = ecx;
                e.edx = id;
            }
            0x8000_0008 => {
                // NC (cores - 1) in ECX[7:0]; ApicIdCoreIdSize from NC.
                e.ecx = (e.ecx & !0xf0ff) | (n - 1);
            }
            0x8000_001e => {
                e.eax = id;
                e.ebx = (e.ebx & !0xffff) | id;
                e.ecx &= !0xff;
            }
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_ids_and_core_counts_per_vcpu() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xaabb_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let base = CpuId::from_entries(&entries).unwrap();
        let c = for_vcpu(&base, 2, 3);
        let e = c.as_slice();
        assert_eq!(
            e[0].ebx, 0x0203_0800,
            "APIC id 2, 3 logical CPUs, CLFLUSH kept"
        );
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 3, 2));
        assert_eq!(width(1), 0);
        assert_eq!(width(2), 1);
        assert_eq!(width(4), 2);
    }
}
