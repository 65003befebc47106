//! The platform on the host's /dev/kvm (issue 14, "the two hosts must
//! present the same CPU"): what a guest reads with CPUID is exactly the
//! baseline table, a guest touching a filtered MSR takes #GP, paravirtual
//! MSRs fault under `KVM_CAP_ENFORCE_PV_FEATURE_CPUID`, and a Secondary
//! refuses, over the real channel, a Primary whose platform differs in one
//! CPUID bit, naming the bit. These FAIL (never skip) without /dev/kvm.

#[macro_use]
mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::CODE_ADDR;
use config_schema::model::CpuBaseline;
use ftvmm::cpuid::{find_bit, Leaf, SIGNATURE};
use ftvmm::lockstep::channel::{connect, Hello, Identity, Message};
use ftvmm::lockstep::pair::secondary_handshake;
use ftvmm::platform::{MsrPolicy, Platform};
use ftvmm::{RunOutcome, Vm};
use vm_memory::{Bytes, GuestAddress};

/// Queries for `guest_cpuid`: `(leaf, subleaf)` pairs, ended by leaf `!0`.
const QUERIES: u64 = 0x20_0000;
/// Answers of `guest_cpuid`: eax, ebx, ecx, edx per query.
const ANSWERS: u64 = 0x21_0000;

// For each query at QUERIES, executes CPUID and stores the four registers at
// ANSWERS; exits with 0.
guest!(
    guest_cpuid,
    "ftvmm_g_cpuid_start",
    "ftvmm_g_cpuid_end",
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
);

// Installs a #GP handler (vector 13) that exits with 13; then reads (or, if
// the u32 at 0x200004 is 1, writes 0 to) the MSR whose index is the u32 at
// 0x200000 and exits with 1.
guest!(
    guest_msr,
    "ftvmm_g_msr_start",
    "ftvmm_g_msr_end",
    "lea rax, [rip + 8f]",
    "mov rdi, 0x10d0",
    "mov word ptr [rdi], ax",
    "mov word ptr [rdi + 2], 0x08",
    "mov word ptr [rdi + 4], 0x8e00",
    "shr rax, 16",
    "mov word ptr [rdi + 6], ax",
    "shr rax, 16",
    "mov dword ptr [rdi + 8], eax",
    "mov dword ptr [rdi + 12], 0",
    "lidt [rip + 9f]",
    "mov ecx, dword ptr [0x200000]",
    "cmp dword ptr [0x200004], 1",
    "je 4f",
    "rdmsr",
    "jmp 5f",
    "4:",
    "xor eax, eax",
    "xor edx, edx",
    "wrmsr",
    "5:",
    "mov dx, 0x501",
    "mov al, 1",
    "out dx, al",
    "hlt",
    "8:",
    "mov dx, 0x501",
    "mov al, 13",
    "out dx, al",
    "hlt",
    "9:",
    ".word 0xfff",
    ".quad 0x1000",
);

fn kvm() -> kvm_ioctls::Kvm {
    kvm_ioctls::Kvm::new().unwrap_or_else(|e| panic!("this test needs a working /dev/kvm: {e}"))
}

fn default_platform() -> Platform {
    Platform::probe(&kvm(), &CpuBaseline::default())
        .unwrap_or_else(|e| panic!("this host must provide the default baseline: {e}"))
}

fn run(vm: &mut Vm) -> RunOutcome {
    let mut inputs = common::ScriptedInputs {
        tick_on_halt: true,
        ..Default::default()
    };
    let mut out = common::Collected::default();
    vm.run(&mut inputs, &mut out, None).expect("guest runs")
}

fn vm_on(platform: Platform, code: &[u8]) -> Vm {
    let mut vm = Vm::with_platform(kvm(), 4 << 20, vec![], platform).expect("create the VM");
    vm.boot_flat(code, CODE_ADDR, "test").expect("boot");
    vm
}

/// What a guest on `platform` reads with CPUID for each `(leaf, subleaf)`.
fn guest_cpuid_of(platform: Platform, queries: &[(u32, u32)]) -> Vec<[u32; 4]> {
    let mut vm = vm_on(platform, guest_cpuid());
    let mut q: Vec<u8> = Vec::new();
    for (l, s) in queries.iter().chain([&(!0, 0)]) {
        q.extend(l.to_le_bytes());
        q.extend(s.to_le_bytes());
    }
    vm.memory().write_slice(&q, GuestAddress(QUERIES)).unwrap();
    assert_eq!(run(&mut vm), RunOutcome::DebugExit(0));
    (0..queries.len())
        .map(|i| {
            let mut r = [0u32; 4];
            for (k, v) in r.iter_mut().enumerate() {
                *v = vm
                    .memory()
                    .read_obj(GuestAddress(ANSWERS + 16 * i as u64 + 4 * k as u64))
                    .unwrap();
            }
            r
        })
        .collect()
}

#[test]
fn the_guest_reads_exactly_the_platforms_cpuid_and_none_of_the_hidden_features() {
    let p = default_platform();
    // What the platform claims the guest reads: the baseline table, except
    // where this host's KVM was measured not to present it.
    let claimed = p.guest_cpuid();
    let zero_leaves = ftvmm::platform::measure::MUST_READ_ZERO;
    let queries: Vec<(u32, u32)> = claimed
        .iter()
        .map(|l| (l.function, l.index))
        .chain(zero_leaves.iter().copied())
        .collect();
    let got = guest_cpuid_of(p.clone(), &queries);
    let read = |leaf: u32, sub: u32| {
        let i = queries.iter().position(|q| *q == (leaf, sub)).unwrap();
        let [eax, ebx, ecx, edx] = got[i];
        Leaf {
            function: leaf,
            index: sub,
            flags: 0,
            eax,
            ebx,
            ecx,
            edx,
        }
    };
    for l in &claimed {
        assert_eq!(
            got[queries
                .iter()
                .position(|q| *q == (l.function, l.index))
                .unwrap()],
            [l.eax, l.ebx, l.ecx, l.edx],
            "guest CPUID {:#x}.{} differs from what the platform claims",
            l.function,
            l.index
        );
    }
    for &(leaf, sub) in zero_leaves {
        if !claimed.iter().any(|l| (l.function, l.index) == (leaf, sub)) {
            assert_eq!(
                read(leaf, sub).eax
                    | read(leaf, sub).ebx
                    | read(leaf, sub).ecx
                    | read(leaf, sub).edx,
                0,
                "leaf {leaf:#x}.{sub} is visible"
            );
        }
    }
    let overridden = |b: &ftvmm::cpuid::BitRef| {
        p.cpuid_overrides
            .iter()
            .any(|o| (o.function, o.index) == (b.leaf, b.subleaf))
    };
    let note = p.override_note().unwrap_or_default();
    for name in [
        "rdpid",
        "rtm",
        "hle",
        "waitpkg",
        "tsc",
        "rdtscp",
        "rdrand",
        "rdseed",
        "tsc_adjust",
        "x2apic",
        "hypervisor",
    ] {
        let b = find_bit(name).unwrap();
        let seen = read(b.leaf, b.subleaf).reg(b.reg) & (1 << b.bit) != 0;
        if overridden(&b) {
            // This KVM shows the host's bits here: the platform must say so.
            assert_eq!(
                seen,
                note.contains(&format!(" {name}")) || note.contains(&format!(" {name},")),
                "{b}: guest sees it = {seen}, note: {note}"
            );
        } else {
            assert!(!seen, "the guest sees {b}");
        }
    }
    // No in-kernel irqchip, APIC_BASE disabled: no APIC bit, even where KVM
    // shows the host's other leaf-1 bits (KVM derives this one from the MSR).
    assert_eq!(read(1, 0).edx & (1 << 9), 0, "the guest sees an APIC");
    // Never overridden anywhere we know of: the synthetic model, the address
    // sizes, the vendor.
    assert_eq!(read(1, 0).eax, SIGNATURE);
    assert_eq!(read(0x8000_0008, 0).eax & 0xff, 39);
    if p.cpuid_overrides.is_empty() {
        let l7 = read(7, 0);
        assert_eq!(
            (l7.ebx, l7.ecx, l7.edx),
            (0, 0, 0),
            "x86-64-v1 has no leaf 7 features"
        );
    } else {
        assert!(p
            .summary()
            .contains("KVM does not present the baseline in CPUID"));
    }
}

/// Runs `guest_msr` on `platform` for one access; the guest's exit code.
fn msr_access(platform: Platform, msr: u32, write: bool) -> u8 {
    let mut vm = vm_on(platform, guest_msr());
    vm.memory().write_obj(msr, GuestAddress(0x20_0000)).unwrap();
    vm.memory()
        .write_obj(u32::from(write), GuestAddress(0x20_0004))
        .unwrap();
    match run(&mut vm) {
        RunOutcome::DebugExit(c) => c,
        other => panic!("MSR {msr:#x}: guest ended with {other:?}"),
    }
}

const OK: u8 = 1;
const GP: u8 = 13;

#[test]
fn a_guest_touching_a_filtered_msr_takes_a_general_protection_fault() {
    let p = default_platform();
    match &p.msrs {
        MsrPolicy::Filtered { .. } => {}
        MsrPolicy::Unfiltered => {
            // The description must be true: without the filter the TSC is readable.
            assert_eq!(msr_access(p, 0x10, false), OK);
            panic!("this host's KVM has no MSR filter; the filtered path was not tested");
        }
    }
    for (msr, write, want, what) in [
        (0xc000_0080, false, OK, "EFER read"),
        (0xc000_0102, true, OK, "KERNEL_GS_BASE write"),
        (0x277, false, OK, "PAT read"),
        (0x1d9, false, OK, "DEBUGCTL read"),
        (0x1d9, true, GP, "DEBUGCTL write"),
        (0x10, false, GP, "TSC read"),
        (0x10, true, GP, "TSC write"),
        (0x3b, false, GP, "TSC_ADJUST read"),
        (0xc000_0103, false, GP, "TSC_AUX read"),
        (0xe7, false, GP, "MPERF read"),
        (0xc001_0004, false, GP, "AMD PERFCTR0 read"),
        (0xc1, false, GP, "Intel PMC0 read"),
        (0x38f, false, GP, "Intel PERF_GLOBAL_CTRL read"),
        (0x4b56_4d01, false, GP, "kvmclock SYSTEM_TIME_NEW read"),
        (0x10a, false, GP, "ARCH_CAPABILITIES read"),
    ] {
        assert_eq!(
            msr_access(p.clone(), msr, write),
            want,
            "{what} (MSR {msr:#x})"
        );
    }
}

#[test]
fn paravirtual_msrs_fault_when_kvm_enforces_the_pv_cpuid() {
    // Without the filter, so that only the enforcement stands between the
    // guest and kvmclock.
    let mut p = default_platform();
    assert!(
        p.pv_features_enforced,
        "this host's KVM lacks KVM_CAP_ENFORCE_PV_FEATURE_CPUID"
    );
    p.msrs = MsrPolicy::Unfiltered;
    assert_eq!(
        msr_access(p.clone(), 0x4b56_4d01, false),
        GP,
        "kvmclock read"
    );
    assert_eq!(msr_access(p.clone(), 0x12, false), GP, "old kvmclock read");
    p.pv_features_enforced = false;
    assert_eq!(
        msr_access(p, 0x4b56_4d01, false),
        OK,
        "without enforcement KVM serves kvmclock (so the check above means something)"
    );
}

#[test]
fn the_reference_guest_boots_on_every_level_this_host_provides() {
    use config_schema::model::CpuLevel;
    let mut booted = 0;
    for level in [CpuLevel::V1, CpuLevel::V2, CpuLevel::V3, CpuLevel::V4] {
        let b = CpuBaseline {
            level,
            ..CpuBaseline::default()
        };
        let mut vm = match Vm::with_baseline(32 << 20, vec![], &b) {
            Ok(vm) => vm,
            Err(e) => {
                let line = e.to_string();
                assert!(line.contains("KVM lacks"), "{line}");
                assert!(level > CpuLevel::V1, "x86-64-v1 must be provided: {line}");
                continue;
            }
        };
        vm.boot_elf(&common::guest_elf(), "mode=cpu cpu_iters=200")
            .unwrap();
        assert_eq!(run(&mut vm), RunOutcome::DebugExit(0), "{}", b);
        booted += 1;
    }
    assert!(booted >= 1);
}

#[test]
fn a_secondary_refuses_a_primary_whose_cpuid_differs_in_one_bit_and_names_it() {
    let (a, _) = config_schema::keys::generate_host_key().unwrap();
    let (b, _) = config_schema::keys::generate_host_key().unwrap();
    let (primary, secondary) = (Identity { private_key: a }, Identity { private_key: b });
    let ours = Hello {
        vm: "kv".into(),
        generation: 1,
        config_generation: 1,
        config_digest: [0x2b; 32],
        image_sha256: [7; 32],
        mem_mib: 32,
        start_exit: 0,
        primary_host: "host-a".into(),
        replication: ftvmm::lockstep::channel::PairMode::Lockstep,
        platform: Box::new(default_platform()),
    };
    // The primary's platform differs in one bit of leaf 0x80000001 ecx
    // (lahf_lm), toggled in the table and, where this host's KVM overrides
    // that leaf, in what its guest reads.
    let mut theirs = ours.clone();
    let bit = find_bit("lahf_lm").unwrap();
    let toggle = |l: &mut Leaf| {
        if (l.function, l.index) == (bit.leaf, bit.subleaf) {
            l.ecx ^= 1 << bit.bit;
        }
    };
    theirs.platform.cpuid.iter_mut().for_each(toggle);
    theirs.platform.cpuid_overrides.iter_mut().for_each(toggle);
    let before = ours
        .platform
        .guest_cpuid()
        .iter()
        .find(|l| (l.function, l.index) == (bit.leaf, bit.subleaf))
        .map(|l| (l.ecx >> bit.bit) & 1)
        .unwrap();
    let want = format!(
        "platform differs: CPUID leaf 0x80000001 ecx bit 0 (lahf_lm) is {} on the primary, \
         {before} on the secondary",
        before ^ 1
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let primary_key = primary.public_key();
    let sec = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let allowed: ftvmm::lockstep::pair::Allowed =
                Arc::new(move |k: &[u8; 32]| (*k == primary_key).then(|| "host-a".to_string()));
            let verify = |_: &Hello| Ok(());
            secondary_handshake(&listener, &secondary, allowed, &ours, &verify, &stop)
        })
    };
    let secondary_key = config_schema::keys::host_public_key(&b);
    let t = Duration::from_secs(10);
    let mut ch = connect(addr, &primary, &secondary_key, "host-b", t).unwrap();
    ch.send(&Message::Hello(theirs)).unwrap();
    ch.set_read_timeout(Some(t)).unwrap();
    let reply = ch.recv().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(sec.join().unwrap().is_err(), "the secondary never paired");
    assert_eq!(
        reply,
        Message::HelloReply {
            accepted: false,
            reason: want
        }
    );
}
