//! The platform a VM runs on: everything outside its image that decides what
//! its instructions do — the guest CPUID built from the cluster CPU baseline
//! ([`crate::cpuid`]), the MSRs the guest may touch, whether KVM enforces the
//! paravirtual feature CPUID, and the VMM build (which fixes how an
//! interrupt waits for IF=1: never through a requested window, `vcpu.rs`). A VM's Primary and Secondary must
//! present the same platform (docs/architecture.md §4): `Hello` carries the Primary's
//! [`Platform`] and the Secondary refuses the pair if it differs from its
//! own, with one line naming the first difference ([`mismatch`]).
//!
//! Rules:
//! - Both hosts compute the platform from the signed config (`cluster.cpu`)
//!   and their own KVM; a host whose KVM cannot provide the baseline refuses
//!   to run the VM ([`PlatformError::Baseline`] names the missing features).
//! - MSRs: where KVM has `KVM_X86_SET_MSR_FILTER`, every guest `rdmsr`/`wrmsr`
//!   outside [`GUEST_MSRS`] raises #GP in the guest (default deny; KVM
//!   handles it in the kernel, no exit): the TSC, TSC_ADJUST, TSC_AUX,
//!   TSC-deadline, APERF/MPERF, the PMU, the kvmclock and other paravirtual
//!   MSRs, machine-check banks and every host-capability MSR are out of reach.
//!   Host-initiated accesses (snapshots) are not filtered. A KVM without the
//!   filter leaves KVM's own MSR handling ([`MsrPolicy::Unfiltered`]); the
//!   description says so, the console says so, and such a host pairs only
//!   with another one like it.
//! - `KVM_CAP_ENFORCE_PV_FEATURE_CPUID` is enabled where KVM has it: with no
//!   hypervisor leaves in the CPUID, every paravirtual MSR and hypercall then
//!   faults ([`Platform::pv_features_enforced`]).
//! - The vPMU is switched off where KVM offers `KVM_CAP_PMU_CAPABILITY`
//!   (informational: CPUID leaf 0xa and the MSR filter already hide it).
//! - The TSC frequency is not part of the platform: the guest cannot see it
//!   (no TSC bit, no leaves 0x15/0x16, no kvmclock) and a guest that executes
//!   `rdtsc` anyway diverges whatever the frequency. [`HostReport`] shows it.
//!
//! Invariant: a [`Vm`](crate::vm::Vm) applies exactly the platform it
//! reports ([`crate::vm::Vm::platform`]); nothing else sets its CPUID or
//! MSR filter.

use std::sync::OnceLock;

use config_schema::model::CpuBaseline;
use kvm_bindings::{kvm_enable_cap, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::cpuid::{self, CpuidError, Leaf};

#[path = "platform_diff.rs"]
mod diff;
#[path = "platform_measure.rs"]
pub mod measure;
pub use diff::{fuzz, mismatch};

/// Everything both members of a pair must agree on besides the image.
///
/// NOTICE: part of `Hello`: any change here is a wire change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// The config's baseline, as the config says it (`x86-64-v2 +aes, 39-bit physical addresses`).
    pub baseline: String,
    /// The guest's CPUID as given to KVM (`KVM_SET_CPUID2`), sorted by leaf and subleaf.
    pub cpuid: Vec<Leaf>,
    /// Entries a guest on this host reads differently from `cpuid`, measured
    /// ([`measure`]); empty where KVM presents the table as given.
    pub cpuid_overrides: Vec<Leaf>,
    pub msrs: MsrPolicy,
    /// `KVM_CAP_ENFORCE_PV_FEATURE_CPUID` is on.
    pub pv_features_enforced: bool,
    /// The VMM build ([`vmm_build`]).
    pub vmm: String,
}

/// What the guest reaches with `rdmsr`/`wrmsr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MsrPolicy {
    /// Only these ranges; everything else raises #GP.
    Filtered { allowed: Vec<MsrRange> },
    /// This host's KVM has no MSR filter: whatever KVM itself emulates.
    Unfiltered,
}

/// `count` MSRs from `first` the guest may read (and write, if `write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrRange {
    pub first: u32,
    pub count: u32,
    pub write: bool,
}

/// The MSRs a guest may touch: `(first, count, writable, what)`. All are
/// architectural and KVM's values for them do not depend on the host.
#[rustfmt::skip]
pub const GUEST_MSRS: &[(u32, u32, bool, &str)] = &[
    (0x8b, 1, true, "BIOS_SIGN_ID (microcode revision; KVM's constant, guest writes ignored)"),
    (0x174, 3, true, "SYSENTER_CS/ESP/EIP"),
    (0x1a0, 1, true, "MISC_ENABLE"),
    (0x1d9, 1, false, "DEBUGCTL (read only: LBR/BTS would reach the host's)"),
    (0x277, 1, true, "PAT"),
    (0xc000_0080, 5, true, "EFER, STAR, LSTAR, CSTAR, SFMASK"),
    (0xc000_0100, 3, true, "FS_BASE, GS_BASE, KERNEL_GS_BASE"),
];
const _: () = assert!(GUEST_MSRS.len() <= kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize);

/// The allowed MSR ranges as they go into the platform.
fn guest_msr_ranges() -> Vec<MsrRange> {
    GUEST_MSRS
        .iter()
        .map(|&(first, count, write, _)| MsrRange {
            first,
            count,
            write,
        })
        .collect()
}

const MSR_IA32_APICBASE: u32 = 0x1b;

/// KVM capability numbers (kvm-bindings names them; kvm-ioctls' `Cap` lacks some).
const CAP_X86_MSR_FILTER: u32 = kvm_bindings::KVM_CAP_X86_MSR_FILTER;
const CAP_ENFORCE_PV_FEATURE_CPUID: u32 = kvm_bindings::KVM_CAP_ENFORCE_PV_FEATURE_CPUID;
const CAP_PMU_CAPABILITY: u32 = kvm_bindings::KVM_CAP_PMU_CAPABILITY;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM ioctl {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Baseline(#[from] CpuidError),
    #[error("cannot measure the CPUID a guest reads on this host: {0}")]
    Measure(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> PlatformError {
    move |source| PlatformError::Kvm { what, source }
}

fn has_cap(kvm: &Kvm, cap: u32) -> bool {
    kvm.check_extension_raw(u64::from(cap)) > 0
}

impl Platform {
    /// The platform this host presents for `baseline`.
    pub fn probe(kvm: &Kvm, baseline: &CpuBaseline) -> Result<Platform, PlatformError> {
        let host = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let cpuid = cpuid::baseline_table(host.as_slice(), baseline)?;
        let mut p = Platform {
            baseline: baseline.to_string(),
            cpuid,
            cpuid_overrides: Vec::new(),
            msrs: if has_cap(kvm, CAP_X86_MSR_FILTER) {
                MsrPolicy::Filtered {
                    allowed: guest_msr_ranges(),
                }
            } else {
                MsrPolicy::Unfiltered
            },
            pv_features_enforced: has_cap(kvm, CAP_ENFORCE_PV_FEATURE_CPUID),
            vmm: vmm_build().to_string(),
        };
        p.cpuid_overrides = measure::cached_overrides(baseline, &p)?;
        Ok(p)
    }

    /// [`Platform::probe`] on this host's `/dev/kvm`.
    pub fn for_host(baseline: &CpuBaseline) -> Result<Platform, PlatformError> {
        let kvm = Kvm::new().map_err(PlatformError::OpenKvm)?;
        Platform::probe(&kvm, baseline)
    }

    /// SHA-256 of the canonical (postcard) encoding: equal platforms, equal hashes.
    pub fn sha256(&self) -> [u8; 32] {
        let bytes = postcard::to_stdvec(self).expect("a platform always encodes");
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        d.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// MAXPHYADDR of the guest.
    pub fn phys_addr_bits(&self) -> u8 {
        self.leaf(0x8000_0008, 0).map_or(0, |l| l.eax as u8)
    }

    /// Bytes of the XSAVE area for every XCR0 bit the guest may set (0 without XSAVE).
    pub fn xsave_bytes(&self) -> u32 {
        self.leaf(0xd, 0).map_or(0, |l| l.ecx)
    }

    fn leaf(&self, function: u32, index: u32) -> Option<&Leaf> {
        self.cpuid
            .iter()
            .find(|l| l.function == function && l.index == index)
    }

    /// The CPUID a guest reads: the table with the measured overrides.
    pub fn guest_cpuid(&self) -> Vec<Leaf> {
        let mut t: std::collections::BTreeMap<(u32, u32), Leaf> = self
            .cpuid
            .iter()
            .map(|l| ((l.function, l.index), *l))
            .collect();
        for o in &self.cpuid_overrides {
            t.insert((o.function, o.index), *o);
        }
        t.into_values().collect()
    }

    /// Says where this host's KVM does not present the baseline, and which
    /// never-exposed features the guest therefore sees; `None` if it does.
    pub fn override_note(&self) -> Option<String> {
        if self.cpuid_overrides.is_empty() {
            return None;
        }
        let mut regs = Vec::new();
        for o in &self.cpuid_overrides {
            let want = self.cpuid.iter().find(|l| same_leaf(l, o));
            for r in cpuid::Reg::ALL {
                if want.map_or(0, |w| w.reg(r)) != o.reg(r) {
                    regs.push(format!(
                        "{} {}",
                        cpuid::leaf_id(o.function, o.index),
                        r.name()
                    ));
                }
            }
        }
        let visible: Vec<&str> = cpuid::NEVER_EXPOSED
            .iter()
            .copied()
            .filter(|n| {
                let b = cpuid::find_bit(n).expect("named bit");
                self.cpuid_overrides.iter().any(|o| {
                    (o.function, o.index) == (b.leaf, b.subleaf) && o.reg(b.reg) & (1 << b.bit) != 0
                })
            })
            .collect();
        Some(format!(
            "KVM does not present the baseline in CPUID {}: the guest reads this host's values there{}",
            regs.join(", "),
            if visible.is_empty() {
                String::new()
            } else {
                format!(" (visible although never exposed: {})", visible.join(", "))
            }
        ))
    }

    /// One line for the console and for status.
    pub fn summary(&self) -> String {
        let msrs = match &self.msrs {
            MsrPolicy::Filtered { allowed } => format!(
                "MSR filter on ({} MSRs allowed)",
                allowed.iter().map(|r| r.count).sum::<u32>()
            ),
            MsrPolicy::Unfiltered => {
                "NO MSR filter (KVM lacks KVM_CAP_X86_MSR_FILTER: TSC/PMU MSRs stay reachable)"
                    .into()
            }
        };
        let pv = if self.pv_features_enforced {
            "paravirtual features enforced"
        } else {
            "paravirtual features NOT enforced (KVM lacks KVM_CAP_ENFORCE_PV_FEATURE_CPUID)"
        };
        let xsave = match self.xsave_bytes() {
            0 => "no XSAVE".to_string(),
            n => format!("XSAVE {n} bytes"),
        };
        let cpuid = match self.override_note() {
            None => format!("{} CPUID leaves as given", self.cpuid.len()),
            Some(note) => format!("{} CPUID leaves, but {note}", self.cpuid.len()),
        };
        format!(
            "CPU baseline {}; {cpuid}, {xsave}; {msrs}; {pv}; {}; platform sha256 {}",
            self.baseline,
            self.vmm,
            hex::encode(&self.sha256()[..8]),
        )
    }

    /// Sets up a new VM before its vCPU exists: vPMU off (where KVM offers
    /// it) and the MSR filter.
    pub(crate) fn apply_to_vm(&self, kvm: &Kvm, vm: &VmFd) -> Result<(), PlatformError> {
        if has_cap(kvm, CAP_PMU_CAPABILITY) {
            let cap = kvm_enable_cap {
                cap: CAP_PMU_CAPABILITY,
                args: [u64::from(kvm_bindings::KVM_PMU_CAP_DISABLE), 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_PMU_CAPABILITY)"))?;
        }
        if let MsrPolicy::Filtered { allowed } = &self.msrs {
            let ones = [0xffu8; 8];
            let ranges: Vec<MsrFilterRange<'_>> = allowed
                .iter()
                .map(|r| {
                    assert!(r.count as usize <= ones.len() * 8, "MSR range too long");
                    MsrFilterRange {
                        flags: if r.write {
                            MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE
                        } else {
                            MsrFilterRangeFlags::READ
                        },
                        base: r.first,
                        msr_count: r.count,
                        bitmap: &ones,
                    }
                })
                .collect();
            vm.set_msr_filter(MsrFilterDefaultAction::DENY, &ranges)
                .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
        }
        Ok(())
    }

    /// Sets up the vCPU: paravirtual enforcement and the CPUID.
    pub(crate) fn apply_to_vcpu(&self, vcpu: &VcpuFd) -> Result<(), PlatformError> {
        if self.pv_features_enforced {
            let cap = kvm_enable_cap {
                cap: CAP_ENFORCE_PV_FEATURE_CPUID,
                args: [1, 0, 0, 0],
                ..Default::default()
            };
            vcpu.enable_cap(&cap)
                .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_ENFORCE_PV_FEATURE_CPUID)"))?;
        }
        vcpu.set_cpuid2(&cpuid::to_kvm(&self.cpuid))
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        // KVM sets CPUID.1:EDX.APIC from the APIC_BASE MSR's enable bit, and
        // resets that MSR to "enabled" even without an in-kernel irqchip:
        // disable it (host-initiated; the guest cannot touch it through the
        // filter). Seen by the measurement on nested KVM-AMD.
        let apic_base = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_APICBASE,
            data: 0,
            ..Default::default()
        }])
        .expect("one MSR fits");
        match vcpu.set_msrs(&apic_base) {
            Ok(1) => Ok(()),
            Ok(_) => Err(PlatformError::Kvm {
                what: "KVM_SET_MSRS(APIC_BASE = 0)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            }),
            Err(e) => Err(kvm_err("KVM_SET_MSRS(APIC_BASE = 0)")(e)),
        }
    }
}

fn same_leaf(a: &Leaf, b: &Leaf) -> bool {
    (a.function, a.index) == (b.function, b.index)
}

/// This VMM build: `ftvmm <version> build <first 16 hex digits of the
/// SHA-256 of the running executable>`. Two hosts pair only when they run the
/// same binary (the appliance image is reproducible, so same release, same
/// bytes).
pub fn vmm_build() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    BUILD.get_or_init(|| {
        let id = match std::fs::read("/proc/self/exe") {
            Ok(bytes) => {
                hex::encode(&ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()[..8])
            }
            Err(e) => format!("unknown ({e})"),
        };
        format!("ftvmm {} build {id}", env!("CARGO_PKG_VERSION"))
    })
}

/// What this host has that is not part of the platform (for the console).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// `KVM_GET_TSC_KHZ` of a fresh vCPU (hidden from guests).
    pub tsc_khz: Option<u32>,
    /// KVM can switch the vPMU off (`KVM_CAP_PMU_CAPABILITY`).
    pub pmu_capability: bool,
}

impl HostReport {
    pub fn probe(kvm: &Kvm) -> HostReport {
        let tsc_khz = kvm
            .create_vm()
            .and_then(|vm| vm.create_vcpu(0))
            .and_then(|v| v.get_tsc_khz())
            .ok();
        HostReport {
            tsc_khz,
            pmu_capability: has_cap(kvm, CAP_PMU_CAPABILITY),
        }
    }
}

/// The daemon's startup line about the platform of this host's VMs.
pub fn console_line(baseline: &CpuBaseline) -> String {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return format!("ftvmm: platform: {}", PlatformError::OpenKvm(e)),
    };
    let host = HostReport::probe(&kvm);
    let tsc = host
        .tsc_khz
        .map_or("unknown".to_string(), |k| format!("{k} kHz"));
    let pmu = if host.pmu_capability {
        "vPMU switched off"
    } else {
        "no KVM_CAP_PMU_CAPABILITY (vPMU hidden by CPUID and the MSR filter)"
    };
    match Platform::probe(&kvm, baseline) {
        Ok(p) => format!(
            "ftvmm: platform: {}; host TSC {tsc} (hidden from guests); {pmu}",
            p.summary()
        ),
        Err(e) => format!("ftvmm: platform: {e}; no VM can run on this host"),
    }
}
