//! Unit tests of the platform difference lines and of the fuzz body.

use super::*;
use config_schema::model::CpuLevel;

fn leaf_mut(p: &mut Platform, function: u32, index: u32) -> &mut Leaf {
    p.cpuid
        .iter_mut()
        .find(|l| (l.function, l.index) == (function, index))
        .unwrap()
}

/// The line when the primary's platform is `edit`ed (the secondary's is not).
fn line(level: CpuLevel, edit: impl FnOnce(&mut Platform)) -> String {
    let s = reference_at(level);
    let mut p = s.clone();
    edit(&mut p);
    assert_ne!(p.sha256(), s.sha256(), "the hash covers the change");
    mismatch(&s, &p).expect("a difference")
}

#[test]
fn fuzz_body_survives_random_and_mutated_descriptions() {
    use proptest::prelude::*;
    let good = postcard::to_stdvec(&reference()).unwrap();
    let mut malformed = reference();
    malformed.cpuid = vec![malformed.cpuid[0]; MAX_CPUID_ENTRIES + 1];
    fuzz(&good);
    fuzz(&postcard::to_stdvec(&malformed).unwrap());
    proptest!(ProptestConfig::with_cases(2000), |(flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..8), raw in proptest::collection::vec(any::<u8>(), 0..512))| {
        let mut m = good.clone();
        for (at, x) in flips {
            let i = at % m.len();
            m[i] ^= x;
        }
        fuzz(&m);
        fuzz(&raw);
    });
}

#[test]
fn a_malformed_peer_description_is_refused_cheaply() {
    let ours = reference();
    let mut theirs = ours.clone();
    theirs.msrs = MsrPolicy::Filtered {
        allowed: vec![MsrRange {
            first: 0,
            count: u32::MAX,
            write: true,
        }],
    };
    assert_eq!(
        mismatch(&ours, &theirs).unwrap(),
        "platform differs: the primary's description is malformed: an MSR range of 4294967295 \
         MSRs from 0x0 (at most 64)"
    );
    theirs = ours.clone();
    theirs.vmm = "x".repeat(1 << 20);
    assert!(mismatch(&ours, &theirs).unwrap().len() < 400);
}

#[test]
fn equal_platforms_pair() {
    let p = reference();
    assert_eq!(mismatch(&p, &p.clone()), None);
    assert_eq!(p.sha256(), p.clone().sha256());
}

#[test]
fn one_feature_bit_is_named() {
    assert_eq!(
        line(CpuLevel::V3, |p| leaf_mut(p, 7, 0).ebx &= !(1 << 5)),
        "platform differs: CPUID leaf 0x7.0 ebx bit 5 (avx2) is 0 on the primary, 1 on the secondary"
    );
    assert_eq!(
        line(CpuLevel::V1, |p| leaf_mut(p, 1, 0).ecx |= 0b11),
        "platform differs: CPUID leaf 0x1 ecx bit 0 (sse3) is 1 on the primary, 0 on the secondary \
         (and 1 more bits of that register)"
    );
}

#[test]
fn values_are_named_by_meaning() {
    assert_eq!(
        line(CpuLevel::V1, |p| leaf_mut(p, 0x8000_0008, 0).eax -= 1),
        "platform differs: MAXPHYADDR (CPUID leaf 0x80000008 eax bits 7:0) is 38 on the primary, \
         39 on the secondary"
    );
    assert_eq!(
        line(CpuLevel::V3, |p| leaf_mut(p, 0xd, 2).ebx = 640),
        "platform differs: CPUID leaf 0xd.2 ebx (offset of XSAVE component 2 (avx_state) in the \
         XSAVE area) is 0x280 on the primary, 0x240 on the secondary"
    );
    assert_eq!(
        line(CpuLevel::V1, |p| {
            let l = leaf_mut(p, 0, 0);
            (l.ebx, l.edx, l.ecx) = (
                u32::from_le_bytes(*b"Auth"),
                u32::from_le_bytes(*b"enti"),
                u32::from_le_bytes(*b"cAMD"),
            );
        }),
        "platform differs: CPU vendor differs (CPUID leaf 0x0): \"AuthenticAMD\" on the primary, \
         \"GenuineIntel\" on the secondary"
    );
    assert_eq!(
        line(CpuLevel::V3, |p| p
            .cpuid
            .retain(|l| (l.function, l.index) != (0xd, 2))),
        "platform differs: CPUID leaf 0xd.2 is on the secondary only"
    );
}

#[test]
fn what_a_guest_reads_counts_not_only_the_table() {
    let l = line(CpuLevel::V1, |p| {
        let mut o = *leaf_mut(p, 1, 0);
        o.ecx |= 1 << 30; // this host's KVM shows RDRAND
        p.cpuid_overrides.push(o);
    });
    assert_eq!(
        l,
        "platform differs: CPUID leaf 0x1 ecx bit 30 (rdrand) is 1 on the primary, 0 on the secondary"
    );
}

#[test]
fn vmm_pv_and_msrs_are_compared_first() {
    assert_eq!(
        line(CpuLevel::V1, |p| p.vmm = "ftvmm 0.1.0 build 4567".into()),
        "platform differs: VMM differs: the primary runs ftvmm 0.1.0 build 4567, the secondary \
         ftvmm 0.1.0 build 0123"
    );
    assert_eq!(
        line(CpuLevel::V1, |p| p.pv_features_enforced = false),
        "platform differs: paravirtual feature enforcement differs: on on the secondary, off on \
         the primary (its KVM lacks KVM_CAP_ENFORCE_PV_FEATURE_CPUID)"
    );
    assert_eq!(
        line(CpuLevel::V1, |p| p.msrs = MsrPolicy::Unfiltered),
        "platform differs: MSR filter: the secondary filters the guest's MSR accesses, the \
         primary cannot (its KVM lacks KVM_CAP_X86_MSR_FILTER)"
    );
    assert_eq!(
        line(CpuLevel::V1, |p| {
            if let MsrPolicy::Filtered { allowed } = &mut p.msrs {
                allowed.push(MsrRange {
                    first: 0x10,
                    count: 1,
                    write: false,
                });
            }
        }),
        "platform differs: guest MSR 0x10 read (not in this build's list) is allowed on the \
         primary only"
    );
    assert_eq!(
        line(CpuLevel::V1, |p| p.baseline = "x86-64-v2".into()),
        "platform differs: CPU baseline differs: x86-64-v2 on the primary, x86-64-v1, 39-bit \
         physical addresses on the secondary"
    );
}
