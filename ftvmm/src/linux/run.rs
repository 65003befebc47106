//! `ftvmm linux`: one checkpoint-mode VM in the foreground, without
//! replication. Console on a writer (stdout), disk on a file or a region of
//! a block device, NIC on a TAP; the VM's end reason is the result.

use std::path::PathBuf;

use super::backend::{DirectBackend, LinuxBackend};
use super::bus::{Console, UNANSWERED_AFTER};
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

/// What [`open_devices`] opens: the disk, the TAP, the virtio transports.
pub type Devices = (Option<DiskBackend>, Option<Tap>, Vec<MmioTransport>);

/// The VM's disk, TAP and virtio transports as `spec` asks (the disk is
/// virtio slot 0, the NIC the next one).
pub fn open_devices(spec: &LinuxSpec) -> Result<Devices, LinuxVmError> {
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
    let virtio = transports(spec, disk.as_ref().map(DiskBackend::sectors));
    Ok((disk, tap, virtio))
}

/// Fresh virtio transports for `spec` (a take-over VM builds the same).
pub fn transports(spec: &LinuxSpec, disk_sectors: Option<u64>) -> Vec<MmioTransport> {
    let mut virtio: Vec<MmioTransport> = Vec::new();
    if let Some(sectors) = disk_sectors {
        virtio.push(new_block(0, sectors));
    }
    if spec.tap.is_some() {
        virtio.push(new_net(0, spec.mac));
    }
    virtio
}

/// Builds and boots the VM with `backend` between its devices and the world.
pub fn boot_linux_vm(
    spec: &LinuxSpec,
    virtio: Vec<MmioTransport>,
    console: Console,
    backend: Box<dyn LinuxBackend>,
) -> Result<Running, LinuxVmError> {
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

/// Builds, boots and starts the VM, unreplicated.
pub fn start_linux(spec: &LinuxSpec, console: Console) -> Result<Running, LinuxVmError> {
    let (disk, tap, virtio) = open_devices(spec)?;
    let backend = Box::new(DirectBackend::new(disk, tap, 0));
    boot_linux_vm(spec, virtio, console, backend)
}

/// Runs the VM to its end. Meanwhile, once a second, a device line that
/// has been up for [`UNANSWERED_AFTER`] without the guest answering is said
/// on the console (once per episode), as a checkpoint VM's epoch summary
/// says it: a guest that stops on a lost device interrupt then says so.
pub fn run_linux(
    spec: &LinuxSpec,
    console: Console,
    on_start: impl FnOnce(&Running),
) -> Result<Report, LinuxVmError> {
    let running = start_linux(spec, console)?;
    on_start(&running);
    let report = std::thread::scope(|s| {
        s.spawn(|| watch_lines(&running));
        running.wait()
    });
    Ok(report)
}

/// [`run_linux`]'s watch: until the VM ends, every second.
fn watch_lines(running: &Running) {
    let mut said: Vec<usize> = Vec::new();
    while running.ended().is_none() {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = running.lines_unanswered(UNANSWERED_AFTER);
        for l in &now {
            if !said.contains(&l.slot) {
                println!("ftvmm linux: {l}");
            }
        }
        said = now.iter().map(|l| l.slot).collect();
    }
}
