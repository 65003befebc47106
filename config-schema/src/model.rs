//! The typed cluster configuration as an operator writes it (TOML).
//!
//! This is the one schema every daemon reads. Field names here are the field
//! names in the TOML file and in validation errors. Unknown fields are refused
//! (`deny_unknown_fields`) so a typo is an error, not a silently ignored key.

use serde::{Deserialize, Serialize};

/// The whole cluster config, identical on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: Cluster,
    pub timing: Timing,
    pub storage: Storage,
    #[serde(default)]
    pub host_groups: Vec<HostGroup>,
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub vms: Vec<Vm>,
    /// Test hooks (`[test]`), for the test harness only; absent in production.
    /// Signed like every other field: nothing else can enable a hook.
    #[serde(default)]
    pub test: Option<TestSection>,
}

impl ClusterConfig {
    /// The test hooks this config enables (none without a `[test]` section).
    pub fn test_hooks(&self) -> Vec<crate::hooks::TestHook> {
        self.test
            .as_ref()
            .map(|t| crate::hooks::parse_all(&t.hooks))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name, shown on the console and in status.
    pub name: String,
    /// Monotonic config generation: a host refuses a config older than one it accepted.
    pub generation: u64,
    /// The CPU every VM of the cluster sees, on every host (`[cluster.cpu]`;
    /// default: x86-64-v1 with 39 physical address bits).
    #[serde(default)]
    pub cpu: CpuBaseline,
}

/// The cluster's CPU baseline, as VMware's EVC modes: every host presents
/// exactly this CPU to every VM, whatever more its own CPU has, so a VM's
/// Primary and Secondary see the same CPU on different CPU models. A host
/// whose KVM cannot provide all of it refuses to run VMs (ftvmm says which
/// features it lacks). Never selectable: the TSC and everything that reads it
/// or a clock (RDTSCP, RDPID, TSC-deadline, kvmclock), RDRAND/RDSEED, TSX
/// (RTM/HLE), WAITPKG, the PMU, the APIC: they differ between hosts or runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuBaseline {
    /// The x86-64 micro-architecture level (x86-64 psABI).
    #[serde(default)]
    pub level: CpuLevel,
    /// Features on top of the level, each at most once.
    #[serde(default)]
    pub features: Vec<CpuFeature>,
    /// MAXPHYADDR the guest sees (CPUID 0x8000_0008); every host needs at least this many.
    #[serde(default = "default_phys_addr_bits")]
    pub phys_addr_bits: u8,
}

/// Physical address bits of the default baseline: what every x86-64 server of the
/// last decade has (desktop parts since 2008 too).
pub const DEFAULT_PHYS_ADDR_BITS: u8 = 39;

fn default_phys_addr_bits() -> u8 {
    DEFAULT_PHYS_ADDR_BITS
}

impl Default for CpuBaseline {
    fn default() -> Self {
        CpuBaseline {
            level: CpuLevel::default(),
            features: Vec::new(),
            phys_addr_bits: DEFAULT_PHYS_ADDR_BITS,
        }
    }
}

/// x86-64 micro-architecture levels (psABI); each includes the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum CpuLevel {
    /// Long mode, CMOV, CX8, FPU, FXSR, MMX, SSE, SSE2, SYSCALL, NX (+ PAE, PSE, PGE, PAT, MSR, DE,
    /// SYSENTER, CLFLUSH).
    #[default]
    #[serde(rename = "x86-64-v1")]
    V1,
    /// + CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2.
    #[serde(rename = "x86-64-v2")]
    V2,
    /// + AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, XSAVE.
    #[serde(rename = "x86-64-v3")]
    V3,
    /// + AVX-512 F, BW, CD, DQ, VL.
    #[serde(rename = "x86-64-v4")]
    V4,
}

impl CpuLevel {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::V1 => "x86-64-v1",
            CpuLevel::V2 => "x86-64-v2",
            CpuLevel::V3 => "x86-64-v3",
            CpuLevel::V4 => "x86-64-v4",
        }
    }
}

/// A feature a baseline may add to its level; the names are Linux's
/// `/proc/cpuinfo` flags. None of them depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuFeature {
    Aes,
    Pclmulqdq,
    Pcid,
    Fsgsbase,
    Smep,
    Smap,
    Erms,
    Adx,
    ShaNi,
    Clflushopt,
    Clwb,
    Umip,
    Pdpe1gb,
    Prefetchw,
}

impl CpuFeature {
    /// The name in the config file (and in `/proc/cpuinfo`).
    pub fn name(self) -> &'static str {
        match self {
            CpuFeature::Aes => "aes",
            CpuFeature::Pclmulqdq => "pclmulqdq",
            CpuFeature::Pcid => "pcid",
            CpuFeature::Fsgsbase => "fsgsbase",
            CpuFeature::Smep => "smep",
            CpuFeature::Smap => "smap",
            CpuFeature::Erms => "erms",
            CpuFeature::Adx => "adx",
            CpuFeature::ShaNi => "sha_ni",
            CpuFeature::Clflushopt => "clflushopt",
            CpuFeature::Clwb => "clwb",
            CpuFeature::Umip => "umip",
            CpuFeature::Pdpe1gb => "pdpe1gb",
            CpuFeature::Prefetchw => "prefetchw",
        }
    }
}

impl std::fmt::Display for CpuBaseline {
    /// `x86-64-v2 +aes +pclmulqdq, 39-bit physical addresses`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.level.name())?;
        for x in &self.features {
            write!(f, " +{}", x.name())?;
        }
        write!(f, ", {}-bit physical addresses", self.phys_addr_bits)
    }
}

/// Failure-detection and lockstep timing, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    /// A peer silent for this long (heartbeats and logging channel) is suspected.
    pub failure_timeout_ms: u64,
    /// Secondary lag past which the Primary is slowed.
    pub lag_limit_ms: u64,
}

/// The shared block device and its region layout. Offsets and sizes are in MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// How a host finds the shared device.
    pub device: DeviceLocator,
    /// Size of the device the layout assumes.
    pub size_mib: u64,
    /// The fencing area (Disk Paxos blocks, liveness leases).
    pub fencing: Region,
    /// VM disk regions, referenced by `vms[].disk_region`.
    #[serde(default)]
    pub regions: Vec<NamedRegion>,
}

/// How to find a block device on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DeviceLocator {
    /// The device's serial number as the kernel reports it (`/sys/block/*/serial`).
    Serial(String),
    /// A fixed device path such as `/dev/vdb`.
    Path(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub offset_mib: u64,
    pub size_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedRegion {
    pub name: String,
    pub offset_mib: u64,
    pub size_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostGroup {
    pub name: String,
    pub hosts: Vec<String>,
}

/// One appliance host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Small unique number; also the host's slot in the fencing area (1-based).
    pub id: u32,
    pub name: String,
    /// Interface on the FT network (heartbeats, logging channel).
    pub ft: Interface,
    /// Interface on the VM network (bridged with the guests' TAPs).
    pub vm: Interface,
    /// The host's identity public key: 32-byte X25519 static key, hex. Used by the
    /// Noise logging channel and to key heartbeats.
    pub public_key: String,
}

/// A NIC identified by its MAC (stable across kernels, unlike `eth0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    /// `a.b.c.d/prefix`
    pub addr: String,
}

/// What the reference guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GuestMode {
    #[default]
    Kv,
    Cpu,
}

/// A protected VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub name: String,
    pub memory_mib: u32,
    /// Guest image name; the image ships it as `/lib/ftvmm/guests/<image>.elf`.
    pub image: String,
    #[serde(default)]
    pub mode: GuestMode,
    /// Name of a `storage.regions` entry.
    pub disk_region: String,
    /// Guest NIC MAC.
    pub mac: String,
    /// Guest address `a.b.c.d/prefix`.
    pub ip: String,
    /// Where the VM (Primary and Secondary) may run; absent = no rule = any
    /// host of the cluster. Absent and `affinity = {}` are the same value, so
    /// they have the same canonical bytes (the field is always encoded: never
    /// skip it when serializing, postcard has no field names).
    #[serde(default)]
    pub affinity: Affinity,
    /// Desired power state: `power = "on"` (the default, also when absent)
    /// or `"off"`, a VM the cluster keeps but does not run. Not in the
    /// postcard encoding of `Vm`: [`crate::canonical`] appends it after the
    /// whole config, only when some VM is off, so a config without it keeps
    /// the bytes (and signatures) it had before the field existed.
    #[serde(
        default,
        skip_serializing_if = "Power::is_on",
        with = "power_outside_binary"
    )]
    pub power: Power,
}

/// A VM's desired power state (`vms[].power`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// The daemons run the VM (Primary and Secondary).
    #[default]
    On,
    /// No host starts the VM; its status says `powered off (config)`.
    Off,
}

impl Power {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Power::On => "on",
            Power::Off => "off",
        }
    }

    /// The default, left out when a config is written back as TOML or JSON.
    pub fn is_on(&self) -> bool {
        *self == Power::On
    }
}

/// `vms[].power` as a field: itself in human-readable formats (TOML, the
/// JSON runtime config init hands over), nothing at all in binary ones.
/// postcard, the only binary format of a config, has no field names and
/// could not tell an absent field from the next VM; the canonical encoding
/// carries power in a trailer of its own (`canonical::encode`).
mod power_outside_binary {
    use super::Power;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(p: &Power, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            p.serialize(s)
        } else {
            s.serialize_unit()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Power, D::Error> {
        if d.is_human_readable() {
            Power::deserialize(d)
        } else {
            <()>::deserialize(d).map(|()| Power::On)
        }
    }
}

/// VM-Host affinity: the union of the listed hosts and the hosts of the listed groups.
/// Both lists empty (the default, also when `affinity` is absent) means any host
/// (see `validate::allowed_hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[test]`: switches for the test harness. A config with this section is not
/// for production (validation warns, init says so at boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSection {
    /// Hook names, see [`crate::hooks::TestHook`]: `vmctl`, `crash:<daemon>`.
    pub hooks: Vec<String>,
}
