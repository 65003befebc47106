//! The line that says how two platforms differ (pair start, `Hello`).
//!
//! Rule: the first difference, in this order — VMM build,
//! policy, baseline, paravirtual enforcement, MSR policy, the CPUID the guest
//! reads (by leaf, subleaf, register, lowest bit), the table given to KVM —
//! named as an operator can check it:
//! feature bits by their `/proc/cpuinfo` name, value registers by meaning
//! (vendor string, MAXPHYADDR, XSAVE offsets), both sides' values.

use std::collections::{BTreeMap, BTreeSet};

use super::{MsrPolicy, MsrRange, Platform, GUEST_MSRS};
use crate::cpuid::{bit_name, field_name, leaf_id, named_register, Leaf, Reg};

/// Most CPUID entries (table or overrides) a platform may have; ours have
/// about twenty. Bounds the work a peer's description can cause.
pub const MAX_CPUID_ENTRIES: usize = 64;
/// Most MSRs one allowed range may cover (the filter bitmap of `apply_to_vm`).
pub const MAX_RANGE_MSRS: u32 = 64;
/// Longest text of a peer's platform quoted in a line.
const MAX_QUOTED: usize = 120;

/// Why a platform (the peer's, decoded from the channel) cannot be one.
fn malformed(p: &Platform) -> Option<String> {
    let ranges = match &p.msrs {
        MsrPolicy::Filtered { allowed } => allowed.as_slice(),
        MsrPolicy::Unfiltered => &[],
    };
    if p.cpuid.len() > MAX_CPUID_ENTRIES || p.cpuid_overrides.len() > MAX_CPUID_ENTRIES {
        Some(format!(
            "{} CPUID entries and {} overrides (at most {MAX_CPUID_ENTRIES} each)",
            p.cpuid.len(),
            p.cpuid_overrides.len()
        ))
    } else if ranges.len() > kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize {
        Some(format!(
            "{} MSR ranges (KVM takes at most {})",
            ranges.len(),
            kvm_bindings::KVM_MSR_FILTER_MAX_RANGES
        ))
    } else {
        ranges.iter().find(|r| r.count > MAX_RANGE_MSRS).map(|r| {
            format!(
                "an MSR range of {} MSRs from {:#x} (at most {MAX_RANGE_MSRS})",
                r.count, r.first
            )
        })
    }
}

/// A peer's text, cut to a length a console line can carry.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// `None` if the Primary's platform equals the Secondary's; else one line.
pub fn mismatch(secondary: &Platform, primary: &Platform) -> Option<String> {
    let s = secondary;
    let p = primary;
    for (who, x) in [("primary", p), ("secondary", s)] {
        if let Some(why) = malformed(x) {
            return Some(format!(
                "platform differs: the {who}'s description is malformed: {why}"
            ));
        }
    }
    let line = if p.vmm != s.vmm {
        format!(
            "VMM differs: the primary runs {}, the secondary {}",
            quoted(&p.vmm),
            quoted(&s.vmm)
        )
    } else if p.baseline != s.baseline {
        format!(
            "CPU baseline differs: {} on the primary, {} on the secondary",
            quoted(&p.baseline),
            quoted(&s.baseline)
        )
    } else if p.pv_features_enforced != s.pv_features_enforced {
        let (on, off) = if p.pv_features_enforced {
            ("primary", "secondary")
        } else {
            ("secondary", "primary")
        };
        format!(
            "paravirtual feature enforcement differs: on on the {on}, off on the {off} \
             (its KVM lacks KVM_CAP_ENFORCE_PV_FEATURE_CPUID)"
        )
    } else if p.msrs != s.msrs {
        msr_difference(&s.msrs, &p.msrs)
    } else if let Some(d) = cpuid_difference(&s.guest_cpuid(), &p.guest_cpuid()) {
        d
    } else if let Some(d) = cpuid_difference(&s.cpuid, &p.cpuid) {
        format!("{d} (in the table given to KVM; the guests read the same)")
    } else if s.cpuid_overrides != p.cpuid_overrides {
        "CPUID overrides differ (the guests read the same)".into()
    } else {
        return None;
    };
    Some(format!("platform differs: {line}"))
}

fn msr_difference(s: &MsrPolicy, p: &MsrPolicy) -> String {
    match (s, p) {
        (MsrPolicy::Unfiltered, MsrPolicy::Filtered { .. }) => {
            "MSR filter: the primary filters the guest's MSR accesses, the secondary cannot \
             (its KVM lacks KVM_CAP_X86_MSR_FILTER)"
                .into()
        }
        (MsrPolicy::Filtered { .. }, MsrPolicy::Unfiltered) => {
            "MSR filter: the secondary filters the guest's MSR accesses, the primary cannot \
             (its KVM lacks KVM_CAP_X86_MSR_FILTER)"
                .into()
        }
        (MsrPolicy::Filtered { allowed: sa }, MsrPolicy::Filtered { allowed: pa }) => {
            let sm = expand(sa);
            let pm = expand(pa);
            match sm.symmetric_difference(&pm).next() {
                Some(&(msr, write)) => format!(
                    "guest MSR {msr:#x}{} ({}) is allowed on the {} only",
                    if write { " write" } else { " read" },
                    msr_name(msr),
                    if pm.contains(&(msr, write)) {
                        "primary"
                    } else {
                        "secondary"
                    }
                ),
                None => "MSR filter ranges differ".into(),
            }
        }
        _ => unreachable!("called only for different MSR policies"),
    }
}

/// Every (MSR, is-write) access a filter allows.
fn expand(ranges: &[MsrRange]) -> BTreeSet<(u32, bool)> {
    let mut out = BTreeSet::new();
    for r in ranges {
        for i in 0..r.count {
            let msr = r.first.wrapping_add(i);
            out.insert((msr, false));
            if r.write {
                out.insert((msr, true));
            }
        }
    }
    out
}

fn msr_name(msr: u32) -> &'static str {
    GUEST_MSRS
        .iter()
        .find(|(first, count, _, _)| (*first..first.saturating_add(*count)).contains(&msr))
        .map_or("not in this build's list", |m| m.3)
}

fn cpuid_difference(s: &[Leaf], p: &[Leaf]) -> Option<String> {
    let by_key = |t: &[Leaf]| -> BTreeMap<(u32, u32), Leaf> {
        t.iter().map(|l| ((l.function, l.index), *l)).collect()
    };
    let (sm, pm) = (by_key(s), by_key(p));
    let keys: BTreeSet<(u32, u32)> = sm.keys().chain(pm.keys()).copied().collect();
    for k in keys {
        let id = leaf_id(k.0, k.1);
        let (sl, pl) = match (sm.get(&k), pm.get(&k)) {
            (Some(sl), Some(pl)) => (*sl, *pl),
            (None, _) => return Some(format!("CPUID leaf {id} is on the primary only")),
            (_, None) => return Some(format!("CPUID leaf {id} is on the secondary only")),
        };
        for r in Reg::ALL {
            let (sv, pv) = (sl.reg(r), pl.reg(r));
            if sv != pv {
                if matches!(k.0, 0 | 0x8000_0000) && r != Reg::Eax {
                    return Some(format!(
                        "CPU vendor differs (CPUID leaf {id}): {:?} on the primary, {:?} on the secondary",
                        vendor(&pl),
                        vendor(&sl)
                    ));
                }
                return Some(register_difference(k, r, sv, pv));
            }
        }
        if sl.flags != pl.flags {
            return Some(format!(
                "CPUID leaf {id} flags are {:#x} on the primary, {:#x} on the secondary",
                pl.flags, sl.flags
            ));
        }
    }
    None
}

fn register_difference((leaf, sub): (u32, u32), r: Reg, s: u32, p: u32) -> String {
    let id = leaf_id(leaf, sub);
    if named_register(leaf, sub, r) {
        let bit = (s ^ p).trailing_zeros() as u8;
        let more = (s ^ p).count_ones() - 1;
        let name = bit_name(leaf, sub, r, bit).unwrap_or("unnamed");
        let on = |v: u32| (v >> bit) & 1;
        return format!(
            "CPUID leaf {id} {} bit {bit} ({name}) is {} on the primary, {} on the secondary{}",
            r.name(),
            on(p),
            on(s),
            if more > 0 {
                format!(" (and {more} more bits of that register)")
            } else {
                String::new()
            }
        );
    }
    match (leaf, r) {
        (0x8000_0008, Reg::Eax) if (s ^ p) & 0xff != 0 => format!(
            "MAXPHYADDR (CPUID leaf {id} eax bits 7:0) is {} on the primary, {} on the secondary",
            p & 0xff,
            s & 0xff
        ),
        _ => format!(
            "CPUID leaf {id} {} ({}) is {p:#x} on the primary, {s:#x} on the secondary",
            r.name(),
            field_name(leaf, sub, r)
        ),
    }
}

/// The vendor string of leaf 0 (or 0x8000_0000): EBX, EDX, ECX.
fn vendor(l: &Leaf) -> String {
    let bytes: Vec<u8> = [l.ebx, l.edx, l.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The body of the `platform_hello` fuzz target (ftvmm/fuzz), here so the
/// crate's tests run the same code: `data` is taken as the postcard encoding
/// of a peer's [`Platform`] (what `Hello` carries) and compared both ways with
/// a fixed one. Oracles: no panic, a bounded line, a platform equals itself
/// unless it is malformed.
pub fn fuzz(data: &[u8]) {
    let Ok(peer) = postcard::from_bytes::<Platform>(data) else {
        return;
    };
    let ours = reference();
    for line in [mismatch(&ours, &peer), mismatch(&peer, &ours)]
        .into_iter()
        .flatten()
    {
        assert!(line.len() < 2048, "unbounded line: {} bytes", line.len());
    }
    let itself = mismatch(&peer, &peer.clone());
    assert_eq!(itself.is_some(), malformed(&peer).is_some(), "{itself:?}");
    let _ = peer.sha256();
}

/// A platform on a made-up host with every feature (no KVM needed), at
/// baseline level x86-64-v3.
pub fn reference() -> Platform {
    reference_at(config_schema::model::CpuLevel::V3)
}

/// [`reference`] at baseline `level`.
pub fn reference_at(level: config_schema::model::CpuLevel) -> Platform {
    use config_schema::model::CpuBaseline;
    let e = |function, index, eax, ebx, ecx, edx| kvm_bindings::kvm_cpuid_entry2 {
        function,
        index,
        flags: u32::from(function == 7 || function == 0xd),
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    let (g, i, n) = (
        u32::from_le_bytes(*b"Genu"),
        u32::from_le_bytes(*b"ineI"),
        u32::from_le_bytes(*b"ntel"),
    );
    let host = [
        e(0, 0, 0xd, g, n, i),
        e(1, 0, 0, 0, !0, !0),
        e(7, 0, 0, !0, !0, !0),
        e(0xd, 0, 0x7, 0, 0, 0),
        e(0xd, 2, 256, 576, 0, 0),
        e(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
        e(0x8000_0001, 0, 0, 0, !0, !0),
        e(0x8000_0008, 0, 46 | (48 << 8), 0, 0, 0),
    ];
    let b = CpuBaseline {
        level,
        ..CpuBaseline::default()
    };
    Platform {
        baseline: b.to_string(),
        cpuid: crate::cpuid::baseline_table(&host, &b).expect("the made-up host has everything"),
        cpuid_overrides: Vec::new(),
        msrs: MsrPolicy::Filtered {
            allowed: super::guest_msr_ranges(),
        },
        pv_features_enforced: true,
        vmm: "ftvmm 0.1.0 build 0123".into(),
    }
}

#[cfg(test)]
#[path = "platform_diff_tests.rs"]
mod tests;
