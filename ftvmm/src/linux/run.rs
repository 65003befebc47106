//! `ftvmm linux`: one checkpoint-mode VM in the foreground, without
//! replication. Console on a writer (stdout), disk on a file or a region of
//! a block device, NIC on a TAP; the VM's end reason is the result.

use std::path::PathBuf;

use super::backend::DirectBackend;
use super::bus::Console;
use super::machine::{LinuxVm, Report, Running};
use super::LinuxVmError;
use crate::live::{self, DiskBackend, DiskSpec, Tap};
use crate::virtio::{new_block, new_net, MmioTransport};

/// MAC of the VM's NIC (locally administered).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4c, 0x56, 0x01];

/// One VM to run.
#[derive(Debug, Clone)]
pub struct LinuxSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub disk: Option<DiskSpec>,
    pub tap: Option<String>,
    pub mac: [u8; 6],
}

/// Builds, boots and starts the VM (the disk is virtio slot 0, the NIC the
/// next one). `on_start` gets the running VM (e.g. to stop it on SIGINT).
pub fn start_linux(spec: &LinuxSpec, console: Console) -> Result<Running, LinuxVmError> {
    let disk = spec
        .disk
        .as_ref()
        .map(|d| DiskBackend::open(d, 0))
        .transpose()?;
    let tap = match &spec.tap {
        Some(name) => {
            let t = Tap::open(name)?;
            live::tap::set_up(t.name())?;
            Some(t)
        }
        None => None,
    };
    let mut virtio: Vec<MmioTransport> = Vec::new();
    if let Some(d) = &disk {
        virtio.push(new_block(0, d.sectors()));
    }
    if tap.is_some() {
        virtio.push(new_net(0, spec.mac));
    }
    let backend = Box::new(DirectBackend::new(disk, tap, 0));
    let vm = LinuxVm::create(spec.vcpus, spec.mem_mib << 20, virtio, console, backend)?;
    let loaded = vm.boot_linux(&spec.kernel, spec.initrd.as_deref(), &spec.cmdline)?;
    tracing::info!(
        vcpus = spec.vcpus,
        mem_mib = spec.mem_mib,
        entry = loaded.entry,
        initrd_addr = loaded.initrd_addr,
        initrd_size = loaded.initrd_size,
        "linux VM booting"
    );
    vm.start()
}

/// Runs the VM to its end.
pub fn run_linux(
    spec: &LinuxSpec,
    console: Console,
    on_start: impl FnOnce(&Running),
) -> Result<Report, LinuxVmError> {
    let running = start_linux(spec, console)?;
    on_start(&running);
    Ok(running.wait())
}
