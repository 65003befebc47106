//! Names of CPUID bits and fields, for the baseline definitions and for the
//! lines that say how two platforms differ. Feature names are Linux's
//! `/proc/cpuinfo` flags (`abm` is LZCNT, `prefetchw` is `3dnowprefetch`).
//!
//! Rule: a register listed in [`NAMED`] holds independent feature bits and is
//! compared bit by bit; every other register is a value (see [`field_name`]).

use super::{BitRef, Reg};

/// `(leaf, subleaf, register, bit names from bit 0; "" = unnamed)`.
type Named = (u32, u32, Reg, [&'static str; 32]);

#[rustfmt::skip]
const NAMED: &[Named] = &[
    (0x1, 0, Reg::Ecx, [
        "sse3", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est",
        "tm2", "ssse3", "cnxt_id", "sdbg", "fma", "cx16", "xtpr", "pdcm",
        "", "pcid", "dca", "sse4_1", "sse4_2", "x2apic", "movbe", "popcnt",
        "tsc_deadline_timer", "aes", "xsave", "osxsave", "avx", "f16c", "rdrand", "hypervisor",
    ]),
    (0x1, 0, Reg::Edx, [
        "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce",
        "cx8", "apic", "", "sep", "mtrr", "pge", "mca", "cmov",
        "pat", "pse36", "pn", "clflush", "", "dts", "acpi", "mmx",
        "fxsr", "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe",
    ]),
    (0x6, 0, Reg::Eax, [
        "dtherm", "ida", "arat", "", "pln", "", "pts", "hwp",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
    ]),
    (0x7, 0, Reg::Ebx, [
        "fsgsbase", "tsc_adjust", "sgx", "bmi1", "hle", "avx2", "fdp_excptn_only", "smep",
        "bmi2", "erms", "invpcid", "rtm", "cqm", "zero_fcs_fds", "mpx", "rdt_a",
        "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma", "", "clflushopt",
        "clwb", "intel_pt", "avx512pf", "avx512er", "avx512cd", "sha_ni", "avx512bw", "avx512vl",
    ]),
    (0x7, 0, Reg::Ecx, [
        "prefetchwt1", "avx512vbmi", "umip", "pku", "ospke", "waitpkg", "avx512_vbmi2", "shstk",
        "gfni", "vaes", "vpclmulqdq", "avx512_vnni", "avx512_bitalg", "tme", "avx512_vpopcntdq", "",
        "la57", "", "", "", "", "", "rdpid", "keylocker",
        "bus_lock_detect", "cldemote", "", "movdiri", "movdir64b", "enqcmd", "sgx_lc", "pks",
    ]),
    (0x7, 0, Reg::Edx, [
        "", "", "avx512_4vnniw", "avx512_4fmaps", "fsrm", "", "", "",
        "avx512_vp2intersect", "", "md_clear", "", "", "", "serialize", "hybrid_cpu",
        "tsxldtrk", "", "pconfig", "arch_lbr", "ibt", "", "amx_bf16", "avx512_fp16",
        "amx_tile", "amx_int8", "spec_ctrl", "intel_stibp", "flush_l1d", "arch_capabilities",
        "core_capabilities", "spec_ctrl_ssbd",
    ]),
    (0xd, 0, Reg::Eax, [
        "x87", "sse_state", "avx_state", "bndregs", "bndcsr", "opmask", "zmm_hi256", "hi16_zmm",
        "pt_state", "pkru", "pasid", "cet_u", "cet_s", "hdc", "uintr", "lbr",
        "hwp_state", "xtilecfg", "xtiledata", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
    ]),
    (0xd, 1, Reg::Eax, [
        "xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
    ]),
    (0x8000_0001, 0, Reg::Ecx, [
        "lahf_lm", "cmp_legacy", "svm", "extapic", "cr8_legacy", "abm", "sse4a", "misalignsse",
        "prefetchw", "osvw", "ibs", "xop", "skinit", "wdt", "", "lwp",
        "fma4", "tce", "", "nodeid_msr", "", "tbm", "topoext", "perfctr_core",
        "perfctr_nb", "", "bpext", "ptsc", "perfctr_llc", "mwaitx", "", "",
    ]),
    (0x8000_0001, 0, Reg::Edx, [
        "", "", "", "", "", "", "", "",
        "", "", "", "syscall", "", "", "", "",
        "", "", "", "mp", "nx", "", "mmxext", "",
        "", "fxsr_opt", "pdpe1gb", "rdtscp", "", "lm", "3dnowext", "3dnow",
    ]),
    (0x8000_0007, 0, Reg::Edx, [
        "ts", "fid", "vid", "ttp", "tm", "stc", "100mhzsteps", "hwpstate",
        "constant_tsc", "cpb", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
        "", "", "", "", "", "", "", "",
    ]),
];

/// Bits no baseline may ever show the guest (asserted on every table built):
/// their value or timing differs between hosts or between runs.
pub const NEVER_EXPOSED: &[&str] = &[
    // The TSC and everything that reads it or a clock.
    "tsc",
    "rdtscp",
    "rdpid",
    "tsc_deadline_timer",
    "tsc_adjust",
    "constant_tsc",
    "arat",
    // Randomness.
    "rdrand",
    "rdseed",
    // Transactional memory aborts at host-dependent points; UMWAIT/TPAUSE time out.
    "hle",
    "rtm",
    "waitpkg",
    // The PMU.
    "pdcm",
    "perfctr_core",
    "perfctr_nb",
    "perfctr_llc",
    "ptsc",
    "arch_lbr",
    "intel_pt",
    // No in-kernel irqchip; no nested virtualization; no monitor/mwait.
    "apic",
    "x2apic",
    "vmx",
    "svm",
    "smx",
    "monitor",
    "mwaitx",
    // Host-specific machine checks, topology, capabilities.
    "mce",
    "mca",
    "ht",
    "arch_capabilities",
    "core_capabilities",
    "sgx",
    "hypervisor",
];

/// Whether `leaf.subleaf reg` holds named feature bits.
pub fn named_register(leaf: u32, subleaf: u32, reg: Reg) -> bool {
    NAMED
        .iter()
        .any(|(l, s, r, _)| (*l, *s, *r) == (leaf, subleaf, reg))
}

/// The name of one bit, if it has one.
pub fn bit_name(leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Option<&'static str> {
    NAMED
        .iter()
        .find(|(l, s, r, _)| (*l, *s, *r) == (leaf, subleaf, reg))
        .map(|(_, _, _, n)| n[usize::from(bit)])
        .filter(|n| !n.is_empty())
}

/// The bit called `name`.
pub fn find_bit(name: &str) -> Option<BitRef> {
    NAMED.iter().find_map(|&(leaf, subleaf, reg, names)| {
        let bit = names.iter().position(|n| *n == name)?;
        Some(BitRef {
            name: names[bit],
            leaf,
            subleaf,
            reg,
            bit: bit as u8,
        })
    })
}

/// What a value register of the guest table means, for difference lines.
pub fn field_name(leaf: u32, subleaf: u32, reg: Reg) -> String {
    let what = match (leaf, reg) {
        (0x0, Reg::Eax) => "maximum basic leaf",
        (0x8000_0000, Reg::Eax) => "maximum extended leaf",
        (0x0 | 0x8000_0000, _) => "vendor string",
        (0x1 | 0x8000_0001, Reg::Eax) => "family/model/stepping",
        (0x1, Reg::Ebx) => "CLFLUSH size, logical CPUs and APIC ID",
        (0x7, Reg::Eax) => "maximum subleaf of leaf 7",
        (0xd, Reg::Ebx) if subleaf == 0 => "XSAVE area size for the enabled XCR0",
        (0xd, Reg::Ecx) if subleaf == 0 => "XSAVE area size for every XCR0 bit",
        (0xd, Reg::Eax) if subleaf >= 2 => {
            return format!("size of XSAVE component {subleaf} ({})", component(subleaf))
        }
        (0xd, Reg::Ebx) if subleaf >= 2 => {
            return format!(
                "offset of XSAVE component {subleaf} ({}) in the XSAVE area",
                component(subleaf)
            )
        }
        (0x8000_0008, Reg::Eax) => "MAXPHYADDR (bits 7:0) and linear address bits (bits 15:8)",
        _ => "value",
    };
    what.to_string()
}

fn component(c: u32) -> &'static str {
    u8::try_from(c)
        .ok()
        .filter(|c| *c < 32)
        .and_then(|c| bit_name(0xd, 0, Reg::Eax, c))
        .unwrap_or("unknown")
}
