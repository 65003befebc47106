//! Measuring the CPUID a guest really reads: a tiny guest executes CPUID for
//! every leaf of the table plus leaves that must read zero, on a VM set up
//! exactly like a real one. Some KVMs do not present what `KVM_SET_CPUID2`
//! was given — the dev machine's PVM-based KVM shows the host CPU's feature
//! registers of leaves 1 and 7 — so the platform records what differs
//! ([`super::Platform::cpuid_overrides`]) instead of claiming the table.
//!
//! Rule: measured once per baseline per process (the host's KVM does not
//! change under a running process) and cached.

use std::sync::Mutex;

use config_schema::model::CpuBaseline;
use vm_memory::{Bytes, GuestAddress};

use super::{Platform, PlatformError};
use crate::cpuid::Leaf;
use crate::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource};
use crate::vcpu::RunOutcome;
use crate::vm::Vm;

/// Leaves outside every baseline table that a guest must read as zero.
pub const MUST_READ_ZERO: &[(u32, u32)] = &[
    (0x2, 0),
    (0x4, 0),
    (0x6, 0),
    (0x7, 1),
    (0xa, 0),
    (0xb, 0),
    (0x15, 0),
    (0x16, 0),
    (0x4000_0000, 0),
    (0x4000_0001, 0),
    (0x8000_0007, 0),
    (0x8000_001e, 0),
];

const CODE: u64 = 0x10_0000;
const QUERIES: u64 = 0x20_0000;
const ANSWERS: u64 = 0x21_0000;
const MEM_BYTES: u64 = 4 << 20;

// For each (leaf, subleaf) u32 pair at QUERIES until leaf 0xffffffff:
// CPUID, and its eax, ebx, ecx, edx stored at ANSWERS + 16 × i; then exit 0
// through the debug-exit port.
core::arch::global_asm!(
    ".pushsection .rodata.ftvmm_cpuid_probe,\"a\"",
    ".global ftvmm_cpuid_probe_start",
    "ftvmm_cpuid_probe_start:",
    "mov rsi, 0x200000",
    "mov rdi, 0x210000",
    "2:",
    "mov eax, dword ptr [rsi]",
    "cmp eax, 0xffffffff",
    "je 3f",
    "mov ecx, dword ptr [rsi + 4]",
    "cpuid",
    "mov dword ptr [rdi], eax",
    "mov dword ptr [rdi + 4], ebx",
    "mov dword ptr [rdi + 8], ecx",
    "mov dword ptr [rdi + 12], edx",
    "add rsi, 8",
    "add rdi, 16",
    "jmp 2b",
    "3:",
    "mov dx, 0x501",
    "mov al, 0",
    "out dx, al",
    "hlt",
    ".global ftvmm_cpuid_probe_end",
    "ftvmm_cpuid_probe_end:",
    ".popsection",
);

fn probe_code() -> &'static [u8] {
    extern "C" {
        static ftvmm_cpuid_probe_start: u8;
        static ftvmm_cpuid_probe_end: u8;
    }
    // SAFETY: both symbols delimit one contiguous read-only blob emitted by
    // the global_asm! above, start before end.
    unsafe {
        let s = &raw const ftvmm_cpuid_probe_start;
        let e = &raw const ftvmm_cpuid_probe_end;
        std::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

/// Inputs and outputs of a guest that only executes CPUID.
struct Nothing;

impl Inputs for Nothing {
    fn events_at(&mut self, _n: ExitIndex, _out: &mut Vec<InputEvent>) {}
    fn time_read(&mut self, _n: ExitIndex, _source: TimeSource) -> u64 {
        0
    }
}

impl Outputs for Nothing {
    fn emit(&mut self, _n: ExitIndex, _event: OutputEvent) {}
}

/// What a guest on `p` reads for every `(leaf, subleaf)` of `queries`.
pub fn guest_reads(p: &Platform, queries: &[(u32, u32)]) -> Result<Vec<Leaf>, PlatformError> {
    let failed = |why: String| PlatformError::Measure(why);
    let kvm = kvm_ioctls::Kvm::new().map_err(PlatformError::OpenKvm)?;
    let mut vm =
        Vm::with_platform(kvm, MEM_BYTES, vec![], p.clone()).map_err(|e| failed(e.to_string()))?;
    vm.boot_flat(probe_code(), CODE, "")
        .map_err(|e| failed(e.to_string()))?;
    let mut q = Vec::with_capacity(8 * (queries.len() + 1));
    for &(l, s) in queries.iter().chain(&[(!0, 0)]) {
        q.extend(l.to_le_bytes());
        q.extend(s.to_le_bytes());
    }
    vm.memory()
        .write_slice(&q, GuestAddress(QUERIES))
        .map_err(|e| failed(e.to_string()))?;
    match vm.run(&mut Nothing, &mut Nothing, Some(16)) {
        Ok(RunOutcome::DebugExit(0)) => {}
        Ok(other) => return Err(failed(format!("the probe guest ended with {other:?}"))),
        Err(e) => return Err(failed(e.to_string())),
    }
    let mut out = Vec::with_capacity(queries.len());
    for (i, &(function, index)) in queries.iter().enumerate() {
        let mut r = [0u32; 4];
        for (k, v) in r.iter_mut().enumerate() {
            *v = vm
                .memory()
                .read_obj(GuestAddress(ANSWERS + 16 * i as u64 + 4 * k as u64))
                .map_err(|e| failed(e.to_string()))?;
        }
        out.push(Leaf {
            function,
            index,
            flags: 0,
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
        });
    }
    Ok(out)
}

/// The entries a guest reads differently from `p.cpuid` (leaves outside the
/// table: differently from zero), with the table's flags.
pub fn overrides(p: &Platform) -> Result<Vec<Leaf>, PlatformError> {
    let queries: Vec<(u32, u32)> = p
        .cpuid
        .iter()
        .map(|l| (l.function, l.index))
        .chain(MUST_READ_ZERO.iter().copied())
        .collect();
    let read = guest_reads(p, &queries)?;
    let mut out: Vec<Leaf> = read
        .into_iter()
        .filter_map(|mut got| {
            let want = p
                .cpuid
                .iter()
                .find(|l| (l.function, l.index) == (got.function, got.index));
            got.flags = want.map_or(0, |w| w.flags);
            let expected = want.copied().unwrap_or(Leaf { ..got.zeroed() });
            (got != expected).then_some(got)
        })
        .collect();
    out.sort();
    Ok(out)
}

impl Leaf {
    fn zeroed(&self) -> Leaf {
        Leaf {
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
            ..*self
        }
    }
}

/// Platforms measured so far in this process, by baseline.
static MEASURED: Mutex<Vec<(CpuBaseline, Vec<Leaf>)>> = Mutex::new(Vec::new());

/// [`overrides`], measured once per baseline.
pub fn cached_overrides(b: &CpuBaseline, p: &Platform) -> Result<Vec<Leaf>, PlatformError> {
    let mut m = MEASURED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, o)) = m.iter().find(|(k, _)| k == b) {
        return Ok(o.clone());
    }
    let o = overrides(p)?;
    m.push((b.clone(), o.clone()));
    Ok(o)
}
