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
    /// Operator-supplied Linux images on the shared device (`[[images]]`),
    /// referenced by `vms[].image`. Not in the postcard encoding of the
    /// config: [`crate::canonical`] carries them in the replication trailer.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "outside_binary"
    )]
    pub images: Vec<LinuxImage>,
    /// Operators who may query the cluster over the network (`[[operators]]`):
    /// `ftctl status --cluster` signs its request with one of these keys.
    /// Not in the postcard encoding of the config: [`crate::canonical`]
    /// carries them in the operators trailer, only when there are some.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "outside_binary"
    )]
    pub operators: Vec<Operator>,
    /// Test hooks (`[test]`), for the test harness only; absent in production.
    /// Signed like every other field: nothing else can enable a hook.
    #[serde(default)]
    pub test: Option<TestSection>,
}

impl ClusterConfig {
    /// The fencing slot of the VM at `index` in `vms`: its `slot`, or its
    /// position when it has none.
    pub fn vm_slot(&self, index: usize) -> u32 {
        self.vms[index].slot.unwrap_or(index as u32)
    }

    /// The fencing slot of the VM named `name`, if the config has it.
    pub fn slot_of(&self, name: &str) -> Option<u32> {
        let i = self.vms.iter().position(|v| v.name == name)?;
        Some(self.vm_slot(i))
    }

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
    /// `accept_soft_watchdog = true`: hosts whose only watchdog is `softdog`
    /// (or none) may still go live. Without it (the default) such a host's
    /// fencing agent refuses every `Acquire`: a software timer does not reset
    /// a host whose kernel hangs, so its lease arithmetic would not hold. For
    /// test clusters on machines without a hardware watchdog; validation warns.
    /// Not in the postcard encoding of `Cluster`: [`crate::canonical`] appends
    /// it in the cluster trailer, only when `true`.
    #[serde(default, skip_serializing_if = "is_false", with = "outside_binary")]
    pub accept_soft_watchdog: bool,
    /// `vm_witness = "a.b.c.d"` (optional): an address on the VM network,
    /// outside the appliance (the clients' router, say), that every host's
    /// heartbeat pings (ICMP echo) from its VM-network address. A host that
    /// hears neither a peer nor the witness there has lost the VM network;
    /// one that hears the witness has not. With two hosts that is the only
    /// way to tell whose side of a cut VM network is cut
    /// (`heartbeat/README.md`, The VM witness). Evidence of reachability
    /// only: it never decides who goes live (fencing does). Not in the
    /// postcard encoding of `Cluster`: [`crate::canonical`] carries it in
    /// the witness trailer, only when set.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "outside_binary"
    )]
    pub vm_witness: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
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
    /// VM disk regions, referenced by `vms[].disk_region`, and image
    /// regions, referenced by `images[].region` (never both).
    #[serde(default)]
    pub regions: Vec<NamedRegion>,
}

/// How to find a block device on a host.
// NOTICE: signed bytes (`storage.device`, `canonical.rs`): postcard encodes
// the variant index. Append variants only; never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DeviceLocator {
    /// The device's serial number as the kernel reports it (`/sys/block/*/serial`).
    Serial(String),
    /// A fixed device path such as `/dev/vdb`.
    Path(String),
    /// A LUN on an iSCSI target that each host logs in to itself (init),
    /// through its `hosts[].storage` NIC.
    Iscsi(IscsiLun),
}

impl DeviceLocator {
    /// This locator with any secret (the CHAP secret) replaced by a note of
    /// its length: for status answers and logs, which must not carry it.
    pub fn redacted(&self) -> DeviceLocator {
        match self {
            DeviceLocator::Iscsi(lun) => DeviceLocator::Iscsi(IscsiLun {
                chap: lun.chap.as_ref().map(|c| Chap {
                    user: c.user.clone(),
                    secret: c.hidden(),
                }),
                ..lun.clone()
            }),
            other => other.clone(),
        }
    }
}

/// `device = { iscsi = { portal, target, lun, initiator_prefix, chap } }`:
/// the shared device as a LUN of an iSCSI target (RFC 3720).
// NOTICE: signed bytes (inside `storage.device`, `canonical.rs`). Any change
// to this struct or [`Chap`] changes the encoding of every iSCSI config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiLun {
    /// `a.b.c.d:port` of the target's portal (IPv4; port explicit, usually 3260).
    pub portal: String,
    /// The target's name (IQN `iqn.yyyy-mm.reversed.domain[:unique]`, or
    /// `eui.` + 16 hex digits), RFC 3720 §3.2.6.
    pub target: String,
    /// The LUN of the shared device on that target.
    pub lun: u32,
    /// The target portal group tag of `portal`: the node record iscsiadm
    /// writes is named by it. 1 on Linux's LIO and tgt and on most arrays; the
    /// target's own listing names it (`targetcli ls`, `tgtadm --mode target
    /// --op show`). open-iscsi 2.1.8 logged in to tgt with 7 as well
    /// (qemu-tests, stop 32), so a wrong value may go unnoticed there.
    #[serde(default = "default_tpgt")]
    pub tpgt: u16,
    /// Each host logs in as `<initiator_prefix>:<host name>` (its own I_T
    /// nexus: SCSI-3 persistent reservations are per initiator). An IQN
    /// without the `:unique` part.
    pub initiator_prefix: String,
    /// One-way CHAP, optional. Always in the postcard encoding (as an
    /// `Option`: 0 = none; 1, then user, secret).
    #[serde(default)]
    pub chap: Option<Chap>,
}

/// [`IscsiLun::tpgt`] when the config does not name it.
fn default_tpgt() -> u16 {
    1
}

/// Why [`IscsiLun::portal`] is not a portal address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortalError {
    #[error("{0:?} is not an IPv4 address and port (a.b.c.d:port)")]
    Syntax(String),
    #[error("{0:?} has port 0")]
    ZeroPort(String),
}

impl IscsiLun {
    /// The portal's address. Errors on anything but `a.b.c.d:port` with a
    /// non-zero port; validation refuses such a config, so after it this
    /// always succeeds (validation also refuses unusable addresses such as
    /// `0.0.0.0`, which this accepts).
    pub fn portal_addr(&self) -> Result<std::net::SocketAddrV4, PortalError> {
        let addr: std::net::SocketAddrV4 = self
            .portal
            .parse()
            .map_err(|_| PortalError::Syntax(self.portal.clone()))?;
        if addr.port() == 0 {
            return Err(PortalError::ZeroPort(self.portal.clone()));
        }
        Ok(addr)
    }

    /// The initiator name host `host` logs in with: `<initiator_prefix>:<host>`.
    pub fn initiator_name(&self, host: &str) -> String {
        format!("{}:{}", self.initiator_prefix, host)
    }
}

/// One-way CHAP credentials (the target authenticates the initiator).
/// `Debug` shows the secret's length only; nothing displays or logs the
/// secret (status answers carry [`DeviceLocator::redacted`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

impl Chap {
    /// What shows instead of the secret: `<hidden, 16 bytes>`.
    fn hidden(&self) -> String {
        format!("<hidden, {} bytes>", self.secret.len())
    }
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("secret", &self.hidden())
            .finish()
    }
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
    /// Interface on the management network (`mgmt = { mac, addr }`,
    /// optional): the status service (`ftctl status --cluster`, `apply`,
    /// `metrics`, `page`) listens on this address too, so operators need
    /// not reach the FT network. Not in the postcard encoding of `Host`:
    /// [`crate::canonical`] carries it in the management trailer, only when
    /// some host has one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "outside_binary"
    )]
    pub mgmt: Option<Interface>,
    /// NIC on the storage network (`storage = { mac, addr }`), the one that
    /// reaches the iSCSI portal. Required with an iSCSI device, refused
    /// without one. Not in the postcard encoding of `Host`:
    /// [`crate::canonical`] carries it in the storage trailer, only when
    /// some host has one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "outside_binary"
    )]
    pub storage: Option<Interface>,
    /// The host's identity public key: 32-byte X25519 static key, hex. Used by the
    /// Noise logging channel and to key heartbeats.
    pub public_key: String,
}

/// `[[operators]]`: a person (or tool) allowed to query the cluster's status
/// over the network. The key is checked on every query
/// (`config_schema::remote`); the signed config is the only list of them.
// NOTICE: signed bytes (the operators trailer, `canonical.rs`). Any change to
// this struct changes the encoding of every config that lists operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// Shown in the hosts' logs when the operator queries or is refused.
    pub name: String,
    /// The operator's Ed25519 public key, 64 hex digits (the raw 32 bytes, as
    /// `ftctl operator-keygen` prints them; the same key type and raw form as
    /// the config-signing key's `signing.pub`).
    pub public_key: String,
}

/// A NIC identified by its MAC (stable across kernels, unlike `eth0`).
// NOTICE: signed bytes (in `Host`, and as `hosts[].mgmt` and
// `hosts[].storage` in the management and storage trailers, `canonical.rs`). Any change to this struct changes the encoding of
// every config.
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
    /// Guest image name: one the appliance ships (as
    /// `/lib/ftvmm/guests/<image>.elf`), or an `[[images]]` entry's name.
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
    #[serde(default, skip_serializing_if = "Power::is_on", with = "outside_binary")]
    pub power: Power,
    /// How the VM is protected: `"lockstep"` (the default, also when absent)
    /// or `"checkpoint"`. Like `power`, not in the postcard encoding of
    /// `Vm`: [`crate::canonical`] appends `replication`, `vcpus` and
    /// `epoch_ms` in a trailer, only when some VM differs from the defaults.
    #[serde(
        default,
        skip_serializing_if = "Replication::is_lockstep",
        with = "outside_binary"
    )]
    pub replication: Replication,
    /// Virtual CPUs: 1 (the default) in lockstep, 1..=4 in checkpoint mode.
    /// Outside the postcard encoding, see `replication`.
    #[serde(
        default = "default_vcpus",
        skip_serializing_if = "is_default_vcpus",
        with = "outside_binary"
    )]
    pub vcpus: u32,
    /// Checkpoint interval (checkpoint mode only); absent = [`DEFAULT_EPOCH_MS`].
    /// Outside the postcard encoding, see `replication`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "outside_binary"
    )]
    pub epoch_ms: Option<u32>,
    /// The VM's fencing slot: where its Disk Paxos ring lives in the
    /// fencing region and which replication port its pair uses
    /// (`channel_port`). Absent = the VM's position in `vms` (what every
    /// config had before the field). A VM keeps its slot for life: a
    /// config that moves a VM to another slot is refused at apply
    /// ([`crate::changes::transition_errors`]), so a VM removed from the
    /// middle of the list leaves the ones after it to say their slot.
    /// Outside the postcard encoding (the slot trailer of `canonical`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "outside_binary"
    )]
    pub slot: Option<u32>,
    /// MiB of page copies a checkpoint Primary keeps to ship dirty pages as
    /// deltas against their last version (checkpoint mode only; absent =
    /// [`DEFAULT_DELTA_CACHE_MIB`], 0 = every dirty page whole). Memory on
    /// the Primary's host on top of the VM's own. Outside the postcard
    /// encoding (the delta cache trailer of `canonical`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "outside_binary"
    )]
    pub delta_cache_mib: Option<u32>,
}

/// The highest fencing slot a VM may have (`vms[].slot`): slots index the
/// fencing region's VM rings and the replication ports (7100 + slot).
pub const MAX_SLOT: u32 = 255;

/// Disk Paxos instances (generations) kept per VM slot in the fencing region.
pub const FENCING_RING: u32 = 16;

impl ClusterConfig {
    /// How many VM slots the fencing region (`storage.fencing`) holds with
    /// blocks of `block` bytes: after the header and one lease block per
    /// host, [`FENCING_RING`] blocks per host per slot, at most
    /// [`MAX_SLOT`] + 1 (`fencing/src/layout.rs`).
    pub fn fencing_slots(&self, block: u32) -> u32 {
        let n = self.hosts.len() as u64;
        let blocks = (self.storage.fencing.size_mib << 20) / u64::from(block.max(1));
        let fit = blocks.saturating_sub(1 + n) / (u64::from(FENCING_RING) * n.max(1));
        fit.min(u64::from(MAX_SLOT) + 1) as u32
    }
}

/// vCPUs of a VM that does not say.
pub const DEFAULT_VCPUS: u32 = 1;
/// Epoch of a checkpoint VM that does not say, in milliseconds.
pub const DEFAULT_EPOCH_MS: u32 = 20;
/// A checkpoint Primary's delta cache when `delta_cache_mib` is absent.
pub const DEFAULT_DELTA_CACHE_MIB: u32 = 64;

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}

fn is_default_vcpus(n: &u32) -> bool {
    *n == DEFAULT_VCPUS
}

impl Vm {
    /// The checkpoint interval this VM runs with (checkpoint mode).
    pub fn epoch_ms_or_default(&self) -> u32 {
        self.epoch_ms.unwrap_or(DEFAULT_EPOCH_MS)
    }

    /// The delta cache this VM's checkpoint Primary keeps, in MiB.
    pub fn delta_cache_mib_or_default(&self) -> u32 {
        self.delta_cache_mib.unwrap_or(DEFAULT_DELTA_CACHE_MIB)
    }
}

/// How a VM is protected (`vms[].replication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// The Secondary replays the Primary's inputs instruction for
    /// instruction: one vCPU, the reference guest only.
    #[default]
    Lockstep,
    /// The Primary runs; every `epoch_ms` its changes go to the Secondary,
    /// and its outputs leave once the Secondary holds them: any Linux guest,
    /// 1..=4 vCPUs.
    Checkpoint,
}

impl Replication {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Replication::Lockstep => "lockstep",
            Replication::Checkpoint => "checkpoint",
        }
    }

    /// The default, left out when a config is written back as TOML or JSON.
    pub fn is_lockstep(&self) -> bool {
        *self == Replication::Lockstep
    }
}

/// `[[images]]`: a Linux guest (kernel, optional initrd, command line) the
/// operator wrote to a region of the shared device with `ftctl image write`.
/// Each part is pinned by length and SHA-256: a host refuses to boot bytes
/// that differ from the signed config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinuxImage {
    /// The name `vms[].image` uses; must differ from the shipped images'.
    pub name: String,
    /// A `storage.regions` entry that no VM uses as its disk.
    pub region: String,
    /// The kernel (bzImage).
    pub kernel: ImagePart,
    /// The initial ramdisk, if the guest uses one.
    #[serde(default)]
    pub initrd: Option<ImagePart>,
    /// The kernel command line; ftvmm appends its device announcements.
    #[serde(default)]
    pub cmdline: String,
}

/// One file of a [`LinuxImage`] in its region. `size_bytes = 0` and an
/// empty `sha256` mean "not yet written" (only `ftctl image write` accepts
/// that; a config to sign must pin every part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePart {
    /// Where the file starts, in MiB from the start of the region.
    pub offset_mib: u64,
    /// The file's exact length.
    #[serde(default)]
    pub size_bytes: u64,
    /// SHA-256 of the file, 64 lowercase hex digits.
    #[serde(default)]
    pub sha256: String,
}

impl ImagePart {
    /// Whether the config pins this part's bytes (length and hash).
    pub fn is_pinned(&self) -> bool {
        self.size_bytes != 0 || !self.sha256.is_empty()
    }
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

/// A field outside the postcard encoding: itself in human-readable formats
/// (TOML, the JSON runtime config init hands over), nothing at all in binary
/// ones, where it decodes as its `Default`. postcard, the only binary format
/// of a config, has no field names and could not tell an absent field from
/// the next one; the canonical encoding carries these fields in trailers of
/// its own (`canonical::encode`), which also set them on decode.
mod outside_binary {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_unit()
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: Deserialize<'de> + Default,
        D: Deserializer<'de>,
    {
        if d.is_human_readable() {
            T::deserialize(d)
        } else {
            <()>::deserialize(d).map(|()| T::default())
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
