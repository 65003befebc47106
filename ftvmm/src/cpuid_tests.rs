//! Unit tests of the baseline CPUID tables, on made-up host tables (the
//! `/dev/kvm` ones are in `tests/platform.rs`).

use super::*;
use config_schema::model::CpuFeature;

/// A host whose KVM offers every bit of every leaf a host may have, including
/// the ones no guest may see; `phys_bits` physical address bits.
fn generous_host(phys_bits: u32) -> Vec<kvm_cpuid_entry2> {
    let ones = |function, index| kvm_cpuid_entry2 {
        function,
        index,
        flags: if has_subleaves(function) {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax: !0,
        ebx: !0,
        ecx: !0,
        edx: !0,
        ..Default::default()
    };
    let mut h = vec![
        kvm_cpuid_entry2 {
            eax: 0x1f,
            ebx: u32::from_le_bytes(*b"Genu"),
            edx: u32::from_le_bytes(*b"ineI"),
            ecx: u32::from_le_bytes(*b"ntel"),
            ..ones(0, 0)
        },
        ones(0x8000_0000, 0),
        kvm_cpuid_entry2 {
            eax: phys_bits | (48 << 8),
            ..ones(0x8000_0008, 0)
        },
    ];
    for (f, i) in [
        (1, 0),
        (2, 0),
        (4, 0),
        (6, 0),
        (7, 0),
        (7, 1),
        (0xa, 0),
        (0xb, 0),
        (0x15, 0),
        (0x16, 0),
        (0x4000_0000, 0),
        (0x4000_0001, 0),
        (0x8000_0001, 0),
        (0x8000_0007, 0),
    ] {
        h.push(ones(f, i));
    }
    h.push(kvm_cpuid_entry2 {
        eax: 0xe7,
        ebx: 0x980,
        ecx: 0xa80,
        edx: 0,
        ..ones(0xd, 0)
    });
    h.push(ones(0xd, 1));
    // Intel's standard-format layout.
    for (c, size, offset) in [
        (2, 256, 576),
        (5, 64, 1088),
        (6, 512, 1152),
        (7, 1024, 1664),
    ] {
        h.push(kvm_cpuid_entry2 {
            eax: size,
            ebx: offset,
            ecx: 0,
            edx: 0,
            ..ones(0xd, c)
        });
    }
    h
}

fn everything() -> CpuBaseline {
    use CpuFeature::*;
    CpuBaseline {
        level: CpuLevel::V4,
        features: vec![
            Aes, Pclmulqdq, Pcid, Fsgsbase, Smep, Smap, Erms, Adx, ShaNi, Clflushopt, Clwb, Umip,
            Pdpe1gb, Prefetchw,
        ],
        phys_addr_bits: 39,
    }
}

fn get(t: &[Leaf], function: u32, index: u32) -> Option<Leaf> {
    t.iter()
        .copied()
        .find(|l| l.function == function && l.index == index)
}

fn bit_set(t: &[Leaf], name: &str) -> bool {
    let b = find_bit(name).unwrap();
    get(t, b.leaf, b.subleaf).is_some_and(|l| l.reg(b.reg) & (1 << b.bit) != 0)
}

#[test]
fn hides_what_differs_between_hosts_or_runs_even_from_the_highest_baseline() {
    let t = baseline_table(&generous_host(48), &everything()).unwrap();
    for hidden in [
        "rdpid",
        "rtm",
        "hle",
        "waitpkg",
        "tsc",
        "rdtscp",
        "tsc_deadline_timer",
        "tsc_adjust",
        "rdrand",
        "rdseed",
        "hypervisor",
        "x2apic",
        "apic",
        "pdcm",
        "perfctr_core",
        "arch_capabilities",
    ] {
        assert!(!bit_set(&t, hidden), "{hidden} is visible");
    }
    for absent in [
        0x6,
        0xa,
        0xb,
        0x15,
        0x16,
        0x4000_0000,
        0x4000_0001,
        0x8000_0007,
    ] {
        assert!(
            !t.iter().any(|l| l.function == absent),
            "leaf {absent:#x} is in the table"
        );
    }
    // What the baseline asked for is there.
    for shown in ["avx512vl", "sse4_2", "lm", "sha_ni", "prefetchw", "xsave"] {
        assert!(bit_set(&t, shown), "{shown} is hidden");
    }
    assert_eq!(get(&t, 0x7, 0).unwrap().eax, 0, "no leaf 7 subleaf 1");
    assert!(get(&t, 0x7, 1).is_none());
}

#[test]
fn a_bit_outside_the_baseline_is_hidden_whatever_the_host_has() {
    let t = baseline_table(&generous_host(48), &CpuBaseline::default()).unwrap();
    for hidden in ["sse3", "avx", "avx2", "aes", "pdpe1gb", "xsave", "lahf_lm"] {
        assert!(!bit_set(&t, hidden), "{hidden} is visible under x86-64-v1");
    }
    assert!(!t.iter().any(|l| l.function == 0xd), "no XSAVE leaves");
    let l1 = get(&t, 1, 0).unwrap();
    assert_eq!((l1.eax, l1.ebx), (SIGNATURE, 0x800));
    assert_eq!(get(&t, 0x8000_0008, 0).unwrap().eax, 39 | (48 << 8));
}

#[test]
fn hosts_of_different_models_give_the_same_table() {
    let a = generous_host(46);
    // Another model: fewer features beyond the baseline, another signature,
    // more address bits, other cache leaves.
    let mut b = generous_host(52);
    for e in b.iter_mut() {
        match (e.function, e.index) {
            (1, 0) => e.eax = 0x000a_0f11,
            (7, 0) => e.ebx &= !(1 << 16), // no avx512f
            (2 | 4, _) => e.eax = 0x1234,
            _ => {}
        }
    }
    let base = CpuBaseline {
        level: CpuLevel::V3,
        features: vec![CpuFeature::Aes],
        phys_addr_bits: 40,
    };
    assert_eq!(
        baseline_table(&a, &base).unwrap(),
        baseline_table(&b, &base).unwrap()
    );
}

#[test]
fn a_host_that_lacks_a_baseline_feature_says_which() {
    let mut h = generous_host(48);
    for e in h.iter_mut().filter(|e| e.function == 1) {
        e.ecx &= !(1 << 20); // sse4_2
    }
    let v2 = CpuBaseline {
        level: CpuLevel::V2,
        ..CpuBaseline::default()
    };
    let e = baseline_table(&h, &v2).unwrap_err().to_string();
    assert_eq!(
        e,
        "this host cannot provide the cluster CPU baseline x86-64-v2, 39-bit physical addresses: \
         KVM lacks sse4_2 (leaf 0x1 ecx bit 20)"
    );
    // The same host provides x86-64-v1.
    baseline_table(&h, &CpuBaseline::default()).unwrap();
}

#[test]
fn a_host_with_too_few_address_bits_refuses() {
    let e = baseline_table(
        &generous_host(36),
        &CpuBaseline {
            phys_addr_bits: 40,
            ..CpuBaseline::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("it has 36 physical address bits (choose cluster.cpu.phys_addr_bits <= 36)"),
        "{e}"
    );
}

#[test]
fn xsave_layout_is_the_hosts_so_intel_and_amd_avx512_tables_differ() {
    let v4 = CpuBaseline {
        level: CpuLevel::V4,
        ..CpuBaseline::default()
    };
    let intel = baseline_table(&generous_host(48), &v4).unwrap();
    let d0 = get(&intel, 0xd, 0).unwrap();
    assert_eq!((d0.eax, d0.edx, d0.ecx), (0xe7, 0, 2688));
    assert_eq!(
        get(&intel, 0xd, 1).unwrap(),
        Leaf::new(0xd, 1),
        "no xsaveopt/xsavec/xsaves"
    );
    let mut amd_host = generous_host(48);
    // AMD Zen 4: no MPX gap before the AVX-512 state.
    for e in amd_host.iter_mut().filter(|e| e.function == 0xd) {
        match e.index {
            5 => e.ebx = 832,
            6 => e.ebx = 896,
            7 => e.ebx = 1408,
            _ => {}
        }
    }
    let amd = baseline_table(&amd_host, &v4).unwrap();
    assert_eq!(get(&amd, 0xd, 5).unwrap().ebx, 832);
    assert_eq!(get(&amd, 0xd, 0).unwrap().ecx, 2432);
    assert_ne!(intel, amd);
}

#[test]
fn levels_nest_and_no_level_or_feature_names_a_hidden_bit() {
    let levels = [CpuLevel::V1, CpuLevel::V2, CpuLevel::V3, CpuLevel::V4];
    for w in levels.windows(2) {
        let lo = level_names(w[0]);
        let hi = level_names(w[1]);
        assert!(lo.iter().all(|n| hi.contains(n)), "{:?} ⊄ {:?}", w[0], w[1]);
    }
    let all = baseline_bits(&everything());
    for n in NEVER_EXPOSED {
        let b = find_bit(n).unwrap_or_else(|| panic!("{n} has no bit"));
        assert!(!all.contains(&b), "{n} is selectable");
    }
}

#[test]
#[should_panic(expected = "the guest CPUID must never expose rdpid (leaf 0x7.0 ecx bit 22)")]
fn a_table_with_a_hidden_bit_fails_the_assertion() {
    let mut t = baseline_table(&generous_host(48), &CpuBaseline::default()).unwrap();
    t.iter_mut().find(|l| l.function == 7).unwrap().ecx |= 1 << 22;
    assert_never_exposed(&t);
}

#[test]
fn names_and_fields() {
    assert_eq!(bit_name(7, 0, Reg::Ebx, 5), Some("avx2"));
    assert_eq!(bit_name(7, 0, Reg::Ebx, 22), None);
    assert!(named_register(0x8000_0001, 0, Reg::Edx));
    assert!(!named_register(0x8000_0008, 0, Reg::Eax));
    assert_eq!(
        field_name(0xd, 5, Reg::Ebx),
        "offset of XSAVE component 5 (opmask) in the XSAVE area"
    );
    assert_eq!(
        find_bit("abm").unwrap().to_string(),
        "abm (leaf 0x80000001 ecx bit 5)"
    );
}
