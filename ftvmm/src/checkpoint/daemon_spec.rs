//! What the daemon runs a checkpoint VM (`replication = "checkpoint"`)
//! from: the pair's agreement ([`PairSpec`], whose `Hello` carries the mode,
//! vCPUs, epoch and image digest), the Linux VM ([`LinuxSpec`]), the epoch
//! and how the guest is loaded into a fresh VM ([`Boot`]).
//!
//! Rules:
//! - The kernel and initrd come from the shared device's image region,
//!   checked against the config's pins before anything else happens
//!   (`boot_image.rs`); a mismatch is the one line of `ImageError`.
//! - The guest's command line is the image's, then the VM's own words
//!   (`mode=`, `ip=`, `mac=`: what the reference guest reads too, and the
//!   Linux KV guest's init), so one image serves several VMs.
//! - Everything a `Hello` compares is fixed here, on both sides alike:
//!   Primary and Secondary build the same [`CheckpointSpec`] from the same
//!   signed config.

use std::sync::Arc;
use std::time::Duration;

use config_schema::runtime::RuntimeConfig;
use config_schema::{GuestMode, Vm, DEFAULT_EPOCH_MS};

use super::boot_image::{BootImage, BootImageError};
use crate::linux::machine::LinuxVm;
use crate::linux::run::LinuxSpec;
use crate::linux::LinuxVmError;
use crate::live::DiskSpec;
use crate::lockstep::channel::PairMode;
use crate::lockstep::grant::HostGrant;
use crate::lockstep::placement;
use crate::lockstep::spec::{PairError, PairSpec};
use crate::runner::{parse_mac, VmSpec};

/// Loads the guest into a freshly created VM (the daemon: the Linux boot
/// protocol from the verified image; tests: a guest written into memory).
pub type Boot = Arc<dyn Fn(&LinuxVm, &LinuxSpec) -> Result<(), LinuxVmError> + Send + Sync>;

/// A checkpoint VM as this host runs its member.
#[derive(Clone)]
pub struct CheckpointSpec {
    /// The pair's agreement and this host's identity, grant and sockets.
    pub pair: PairSpec,
    pub linux: LinuxSpec,
    /// The bridge the VM's TAP joins (none in tests).
    pub bridge: Option<String>,
    pub epoch: Duration,
    /// The Primary's delta cache, bytes (`vms[].delta_cache_mib`).
    pub delta_bytes: usize,
    pub boot: Boot,
    /// The checked image `linux.kernel` and `linux.initrd` name (its
    /// sealed files are open as long as this spec or a clone lives).
    pub image: Arc<BootImage>,
    /// Tests: a join's new Secondary here cuts its link after the first
    /// piece of the full epoch, this many more times (`respawn.rs`).
    #[cfg(test)]
    pub join_cuts: Arc<std::sync::atomic::AtomicU32>,
}

/// Why a checkpoint VM's spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Image(#[from] BootImageError),
    #[error(transparent)]
    Pair(#[from] PairError),
    #[error("vm {vm}: {what}")]
    Invalid { vm: String, what: String },
}

/// Where the VM's disk and NIC are on this host.
pub struct HostDevices {
    /// The shared device as this host sees it.
    pub device: std::path::PathBuf,
    /// The VM's disk region on it.
    pub disk: DiskSpec,
    pub tap: String,
    pub bridge: Option<String>,
}

/// The spec of checkpoint VM `vm` of `rc` on this host: reads and checks
/// its image on the shared device first (module doc).
pub fn checkpoint_spec(
    rc: &RuntimeConfig,
    vm: &Vm,
    config: config_schema::config_id::ConfigId,
    dev: HostDevices,
    grant: Arc<HostGrant>,
    timing: Arc<crate::lockstep::live_timing::LiveTiming>,
) -> Result<CheckpointSpec, SpecError> {
    let image = Arc::new(BootImage::load(&rc.config, vm, &dev.device)?);
    let invalid = |what: String| SpecError::Invalid {
        vm: vm.name.clone(),
        what,
    };
    // Validation allows 1..=4 (config_schema::validate_vm).
    let vcpus = u8::try_from(vm.vcpus).map_err(|_| invalid(format!("{} vCPUs", vm.vcpus)))?;
    let epoch_ms = vm.epoch_ms.unwrap_or(DEFAULT_EPOCH_MS);
    let mac = parse_mac(&vm.mac).map_err(|e| invalid(format!("mac {:?}: {e}", vm.mac)))?;
    let mode = match vm.mode {
        GuestMode::Kv => "kv",
        GuestMode::Cpu => "cpu",
    };
    let cmdline = format!("{} mode={mode} ip={} mac={}", image.cmdline, vm.ip, vm.mac);
    let linux = LinuxSpec {
        kernel: image.kernel_path(),
        initrd: image.initrd_path(),
        cmdline: cmdline.trim().to_string(),
        vcpus,
        mem_mib: u64::from(vm.memory_mib),
        disk: Some(dev.disk.clone()),
        tap: Some(dev.tap.clone()),
        mac,
    };
    // The lockstep run spec only carries what the pair code reads (the
    // platform's CPU baseline, the memory size, the disk for respawn).
    let vs = VmSpec {
        kernel: image.kernel_path(),
        mem_mib: linux.mem_mib,
        disk: Some(dev.disk),
        tap: Some(dev.tap),
        cmdline: linux.cmdline.clone(),
        restore: None,
        snapshot_on_exit: None,
        stdin: false,
        bridge: dev.bridge.clone(),
        cpu: rc.config.cluster.cpu.clone(),
    };
    // The checkpoint member driver reads the booted failure timeout
    // (`pair.failure_timeout`); `timing` is carried for the lockstep pair
    // code the spec shares, not adopted live by this mode yet.
    let mut pair = placement::pair_spec(rc, vm, config, vs, grant, timing)?;
    pair.hello.image_sha256 = image.digest;
    pair.hello.replication = PairMode::Checkpoint { vcpus, epoch_ms };
    let boot: Boot = Arc::new(|v: &LinuxVm, spec: &LinuxSpec| {
        v.boot_linux(&spec.kernel, spec.initrd.as_deref(), &spec.cmdline)
            .map(|_| ())
    });
    Ok(CheckpointSpec {
        pair,
        linux,
        bridge: dev.bridge,
        epoch: Duration::from_millis(u64::from(epoch_ms)),
        delta_bytes: (vm.delta_cache_mib_or_default() as usize) << 20,
        boot,
        image,
        #[cfg(test)]
        join_cuts: Arc::default(),
    })
}
