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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name, shown on the console and in status.
    pub name: String,
    /// Monotonic config generation: a host refuses a config older than one it accepted.
    pub generation: u64,
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
    /// Where the VM (Primary and Secondary) may run.
    pub affinity: Affinity,
}

/// VM-Host affinity: the union of the listed hosts and the hosts of the listed groups.
/// Both lists empty means any host (see `validate::allowed_hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}
