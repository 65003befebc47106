//! The CPUID the guest sees: built from the cluster's CPU baseline
//! (`cluster.cpu` of the config, like VMware's EVC modes), never copied from
//! the host, so every host presents a VM with the same table
//! (docs/architecture.md §4, "The same machine on both hosts").
//!
//! Rules:
//! - The table holds exactly these leaves: 0 (maximum basic leaf 0xd and the
//!   host's vendor string), 1, 7.0, 0xd.* (only when the baseline has XSAVE),
//!   0x8000_0000, 0x8000_0001, 0x8000_0008. Every other leaf reads as zero in
//!   the guest (KVM answers a missing in-range leaf with zeros): no cache or
//!   topology leaves, no PMU (leaf 0xa), no TSC/crystal frequency (0x15,
//!   0x16), no power management (6: ARAT), no brand string, and no
//!   hypervisor leaves 0x4000_0000.. (KVM signature, kvmclock).
//! - Feature bits are the baseline's (the x86-64 level plus the listed
//!   features); the host must offer every one of them ([`CpuidError::Missing`]
//!   names what it lacks) and nothing else is shown, whatever the host has.
//! - Family/model/stepping are QEMU `qemu64`'s (family 15, model 107,
//!   stepping 1) on every host; leaf 1 EBX says one logical CPU, APIC ID 0,
//!   64-byte CLFLUSH lines.
//! - Host-given values that the guest can see and that the baseline cannot
//!   fix are copied and so compared at pair start (`crate::platform`): the
//!   vendor string (instruction semantics differ between vendors) and, with
//!   XSAVE, the size and standard-format offset of each state component (AMD
//!   and Intel place the AVX-512 components differently).
//! - MAXPHYADDR is the baseline's `phys_addr_bits` (the host needs at least
//!   that many); linear addresses are 48 bits.
//!
//! Invariant (asserted on every table built, in release too): no bit of
//! [`NEVER_EXPOSED`] is set — the TSC and what reads it or a clock (RDTSCP,
//! RDPID, TSC-deadline, TSC_ADJUST), RDRAND/RDSEED, TSX (RTM/HLE), WAITPKG,
//! the PMU, the APIC/x2APIC (there is no in-kernel irqchip), MONITOR/MWAIT,
//! VMX/SVM, the hypervisor bit. Hiding a bit does not make the instruction
//! fault: `rdtsc` still executes (KVM cannot trap it), so a guest that ignores
//! CPUID can still read the TSC — lockstep requires guests not to.

use config_schema::model::{CpuBaseline, CpuLevel};
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use serde::{Deserialize, Serialize};

#[path = "cpuid_names.rs"]
mod names;
pub use names::{bit_name, field_name, find_bit, named_register, NEVER_EXPOSED};

#[cfg(test)]
#[path = "cpuid_tests.rs"]
mod tests;

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    pub const ALL: [Reg; 4] = [Reg::Eax, Reg::Ebx, Reg::Ecx, Reg::Edx];

    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "eax",
            Reg::Ebx => "ebx",
            Reg::Ecx => "ecx",
            Reg::Edx => "edx",
        }
    }
}

/// One named feature bit: `leaf.subleaf reg[bit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitRef {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

impl std::fmt::Display for BitRef {
    /// `sse4_2 (leaf 0x1 ecx bit 20)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (leaf {} {} bit {})",
            self.name,
            leaf_id(self.leaf, self.subleaf),
            self.reg.name(),
            self.bit
        )
    }
}

/// `0x7.0` for leaves with subleaves, `0x1` for the others.
pub fn leaf_id(leaf: u32, subleaf: u32) -> String {
    if has_subleaves(leaf) {
        format!("{leaf:#x}.{subleaf}")
    } else {
        format!("{leaf:#x}")
    }
}

fn has_subleaves(leaf: u32) -> bool {
    matches!(leaf, 0x7 | 0xd)
}

/// One CPUID entry as the guest sees it (`kvm_cpuid_entry2` without its padding).
///
/// NOTICE: part of `Hello` through `Platform`: changes are wire changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Leaf {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl Leaf {
    fn new(function: u32, index: u32) -> Leaf {
        let flags = if has_subleaves(function) {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        };
        Leaf {
            function,
            index,
            flags,
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
        }
    }

    pub fn reg(&self, r: Reg) -> u32 {
        match r {
            Reg::Eax => self.eax,
            Reg::Ebx => self.ebx,
            Reg::Ecx => self.ecx,
            Reg::Edx => self.edx,
        }
    }

    fn reg_mut(&mut self, r: Reg) -> &mut u32 {
        match r {
            Reg::Eax => &mut self.eax,
            Reg::Ebx => &mut self.ebx,
            Reg::Ecx => &mut self.ecx,
            Reg::Edx => &mut self.edx,
        }
    }
}

/// Why this host cannot present the baseline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    #[error("this host cannot provide the cluster CPU baseline {baseline}: KVM lacks {}", .missing.join(", "))]
    Missing {
        baseline: String,
        missing: Vec<String>,
    },
    #[error("this host cannot provide the cluster CPU baseline {baseline}: it has {host} physical address bits (choose cluster.cpu.phys_addr_bits <= {host})")]
    PhysAddrBits { baseline: String, host: u8 },
    #[error("KVM reports no CPUID leaf {0} (cannot read the host's vendor or address sizes)")]
    NoHostLeaf(String),
}

/// Family 15, model 107, stepping 1: QEMU's `qemu64` signature.
pub const SIGNATURE: u32 = 0x0006_0fb1;
/// Leaf 1 EBX: brand index 0, CLFLUSH line 8 × 8 = 64 bytes, one logical CPU, APIC ID 0.
const LEAF1_EBX: u32 = 0x0000_0800;
const MAX_BASIC_LEAF: u32 = 0xd;
const MAX_EXT_LEAF: u32 = 0x8000_0008;
const LINEAR_ADDR_BITS: u32 = 48;
/// XSAVE legacy area + header: the area size with only x87/SSE enabled.
const XSAVE_LEGACY_BYTES: u32 = 576;

/// Feature names of each level beyond the previous one (names of `cpuid_names.rs`).
fn level_names(level: CpuLevel) -> Vec<&'static str> {
    const V1: &[&str] = &[
        "fpu", "de", "pse", "msr", "pae", "cx8", "sep", "pge", "cmov", "pat", "clflush", "mmx",
        "fxsr", "sse", "sse2", "syscall", "nx", "lm",
    ];
    const V2: &[&str] = &[
        "cx16", "lahf_lm", "popcnt", "sse3", "ssse3", "sse4_1", "sse4_2",
    ];
    const V3: &[&str] = &[
        "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
    ];
    const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];
    let upto: &[&[&str]] = match level {
        CpuLevel::V1 => &[V1],
        CpuLevel::V2 => &[V1, V2],
        CpuLevel::V3 => &[V1, V2, V3],
        CpuLevel::V4 => &[V1, V2, V3, V4],
    };
    upto.iter().flat_map(|l| l.iter().copied()).collect()
}

/// The XSAVE state components (XCR0 bits) beyond x87/SSE a level enables.
fn xsave_components(level: CpuLevel) -> &'static [u8] {
    match level {
        CpuLevel::V1 | CpuLevel::V2 => &[],
        CpuLevel::V3 => &[2],
        CpuLevel::V4 => &[2, 5, 6, 7],
    }
}

/// Every feature bit of the baseline.
pub fn baseline_bits(b: &CpuBaseline) -> Vec<BitRef> {
    level_names(b.level)
        .into_iter()
        .chain(b.features.iter().map(|f| f.name()))
        .map(|n| find_bit(n).unwrap_or_else(|| unreachable!("baseline feature {n} has no bit")))
        .collect()
}

fn host_leaf(host: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    host.iter().find(|e| {
        e.function == leaf && (e.index == subleaf || e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

fn host_reg(host: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32, reg: Reg) -> Option<u32> {
    let e = host_leaf(host, leaf, subleaf)?;
    Some(match reg {
        Reg::Eax => e.eax,
        Reg::Ebx => e.ebx,
        Reg::Ecx => e.ecx,
        Reg::Edx => e.edx,
    })
}

fn host_has(host: &[kvm_cpuid_entry2], b: &BitRef) -> bool {
    host_reg(host, b.leaf, b.subleaf, b.reg).is_some_and(|v| v & (1 << b.bit) != 0)
}

/// Builds the guest's CPUID table for baseline `b` on a host whose KVM
/// supports `host` (`KVM_GET_SUPPORTED_CPUID`). Sorted by leaf and subleaf.
pub fn baseline_table(host: &[kvm_cpuid_entry2], b: &CpuBaseline) -> Result<Vec<Leaf>, CpuidError> {
    let bits = baseline_bits(b);
    let mut missing: Vec<String> = bits
        .iter()
        .filter(|x| !host_has(host, x))
        .map(|x| x.to_string())
        .collect();
    let xcr0 = host_reg(host, 0xd, 0, Reg::Eax).unwrap_or(0);
    for &c in xsave_components(b.level) {
        if xcr0 & (1 << c) == 0 {
            missing.push(format!(
                "XSAVE component {c} ({}) (leaf 0xd.0 eax bit {c})",
                bit_name(0xd, 0, Reg::Eax, c).unwrap_or("?")
            ));
        }
    }
    if !missing.is_empty() {
        return Err(CpuidError::Missing {
            baseline: b.to_string(),
            missing,
        });
    }
    let no_leaf = |l: u32| CpuidError::NoHostLeaf(format!("{l:#x}"));
    let vendor = host_leaf(host, 0, 0).ok_or_else(|| no_leaf(0))?;
    let ext_vendor = host_leaf(host, 0x8000_0000, 0).ok_or_else(|| no_leaf(0x8000_0000))?;
    let host_phys =
        host_reg(host, 0x8000_0008, 0, Reg::Eax).ok_or_else(|| no_leaf(0x8000_0008))? as u8;
    if host_phys < b.phys_addr_bits {
        return Err(CpuidError::PhysAddrBits {
            baseline: b.to_string(),
            host: host_phys,
        });
    }

    let mut t = vec![
        Leaf {
            eax: MAX_BASIC_LEAF,
            ebx: vendor.ebx,
            ecx: vendor.ecx,
            edx: vendor.edx,
            ..Leaf::new(0, 0)
        },
        Leaf {
            eax: SIGNATURE,
            ebx: LEAF1_EBX,
            ..Leaf::new(1, 0)
        },
        Leaf::new(7, 0),
        Leaf {
            eax: MAX_EXT_LEAF,
            ebx: ext_vendor.ebx,
            ecx: ext_vendor.ecx,
            edx: ext_vendor.edx,
            ..Leaf::new(0x8000_0000, 0)
        },
        Leaf {
            eax: SIGNATURE,
            ..Leaf::new(0x8000_0001, 0)
        },
        Leaf {
            eax: u32::from(b.phys_addr_bits) | (LINEAR_ADDR_BITS << 8),
            ..Leaf::new(0x8000_0008, 0)
        },
    ];
    for x in &bits {
        let leaf = t
            .iter_mut()
            .find(|l| l.function == x.leaf && l.index == x.subleaf)
            .unwrap_or_else(|| unreachable!("baseline bit {x} outside the table's leaves"));
        *leaf.reg_mut(x.reg) |= 1 << x.bit;
    }
    if bits.iter().any(|x| x.name == "xsave") {
        t.extend(xsave_leaves(host, xsave_components(b.level)));
    }
    t.sort();
    assert_never_exposed(&t);
    Ok(t)
}

/// Leaves 0xd.*: XCR0 may hold x87, SSE and `components`; no XSAVEOPT,
/// XSAVEC, XGETBV1 or XSAVES (0xd.1 is zero); each component's size and
/// standard-format offset as the host's CPU has them.
fn xsave_leaves(host: &[kvm_cpuid_entry2], components: &[u8]) -> Vec<Leaf> {
    let mut max_bytes = XSAVE_LEGACY_BYTES;
    let mut out = Vec::new();
    let mut xcr0 = 0b11;
    for &c in components {
        let size = host_reg(host, 0xd, u32::from(c), Reg::Eax).unwrap_or(0);
        let offset = host_reg(host, 0xd, u32::from(c), Reg::Ebx).unwrap_or(0);
        max_bytes = max_bytes.max(offset + size);
        xcr0 |= 1 << c;
        out.push(Leaf {
            eax: size,
            ebx: offset,
            ..Leaf::new(0xd, u32::from(c))
        });
    }
    out.push(Leaf {
        eax: xcr0,
        ebx: XSAVE_LEGACY_BYTES,
        ecx: max_bytes,
        ..Leaf::new(0xd, 0)
    });
    out.push(Leaf::new(0xd, 1));
    out
}

/// Panics if a table exposes a bit of [`NEVER_EXPOSED`] (a bug in the
/// baseline definitions: nothing read from the host can cause it).
pub fn assert_never_exposed(t: &[Leaf]) {
    for b in NEVER_EXPOSED
        .iter()
        .map(|n| find_bit(n).expect("named bit"))
    {
        let set = t.iter().any(|l| {
            l.function == b.leaf && l.index == b.subleaf && l.reg(b.reg) & (1 << b.bit) != 0
        });
        assert!(!set, "the guest CPUID must never expose {b}");
    }
    assert!(
        !t.iter()
            .any(|l| (0x4000_0000..0x5000_0000).contains(&l.function)),
        "the guest CPUID must never have hypervisor leaves (kvmclock)"
    );
    assert!(
        !t.iter()
            .any(|l| l.function == 0xa && (l.eax | l.ebx | l.ecx | l.edx) != 0),
        "the guest CPUID must never describe a PMU (leaf 0xa)"
    );
}

/// The table as KVM takes it (`KVM_SET_CPUID2`).
pub fn to_kvm(t: &[Leaf]) -> CpuId {
    let entries: Vec<kvm_cpuid_entry2> = t
        .iter()
        .map(|l| kvm_cpuid_entry2 {
            function: l.function,
            index: l.index,
            flags: l.flags,
            eax: l.eax,
            ebx: l.ebx,
            ecx: l.ecx,
            edx: l.edx,
            ..Default::default()
        })
        .collect();
    CpuId::from_entries(&entries).expect("a baseline table is far below KVM_MAX_CPUID_ENTRIES")
}
