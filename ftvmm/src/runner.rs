//! Running one VM with live backends: what `ftvmm run` and the daemon share.
//!
//! Builds the virtio devices (blk at slot 0 when there is a disk, then net when
//! there is a TAP), completes the guest command line with `virtio_mmio=` and
//! `mac=`, boots the ELF (or restores a snapshot), runs the vCPU loop on the
//! calling thread and optionally writes a snapshot when the run ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::devices::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::io::{Inputs, OutputEvent, Outputs};
use crate::live::{self, ConsoleSink, DiskBackend, DiskSpec, LiveConfig, Tap};
use crate::snapshot::SnapshotError;
use crate::stats::ExitStats;
use crate::vcpu::RunOutcome;
use crate::virtio::{self, MmioTransport};
use crate::vm::{Progress, Vm, VmError, VmHandle};

/// Default guest MAC when neither `--cmdline mac=` nor the config gives one.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Disk(#[from] live::DiskError),
    #[error(transparent)]
    Tap(#[from] live::TapError),
    #[error("snapshot {path}: {source}")]
    Snapshot { path: String, source: SnapshotError },
    #[error("cannot open snapshot {path}: {source}")]
    SnapshotFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start backend threads: {0}")]
    Threads(std::io::Error),
    #[error("invalid MAC address {0:?}")]
    Mac(String),
}

/// One VM to run.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub mem_mib: u64,
    pub disk: Option<DiskSpec>,
    pub tap: Option<String>,
    /// Extra command line (the VMM adds `virtio_mmio=` and, with a NIC, `mac=`).
    pub cmdline: String,
    pub restore: Option<PathBuf>,
    pub snapshot_on_exit: Option<PathBuf>,
    pub stdin: bool,
    /// Add the TAP to this Linux bridge and bring it up.
    pub bridge: Option<String>,
    /// The cluster CPU baseline (`cluster.cpu`) the VM's platform is built from.
    pub cpu: config_schema::model::CpuBaseline,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: RunOutcome,
    pub exit_index: u64,
    pub stats: ExitStats,
    pub secs: f64,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], RunError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(RunError::Mac(s.into()));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(RunError::Mac(s.into()));
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| RunError::Mac(s.into()))?;
    }
    Ok(mac)
}

fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The value of `key=` in a command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The guest NIC's MAC: `mac=` of the command line, else [`DEFAULT_MAC`].
pub fn guest_mac(cmdline: &str) -> Result<[u8; 6], RunError> {
    match cmdline_value(cmdline, "mac") {
        Some(m) => parse_mac(m),
        None => Ok(DEFAULT_MAC),
    }
}

/// Opens the spec's disk (region) and TAP, joins the TAP to the spec's
/// bridge and brings it up: the real backends of a VM that runs live.
pub fn open_backends(spec: &VmSpec) -> Result<(Option<DiskBackend>, Option<Tap>), RunError> {
    let disk = spec
        .disk
        .as_ref()
        .map(|d| DiskBackend::open(d, 0))
        .transpose()?;
    let tap = spec.tap.as_deref().map(Tap::open).transpose()?;
    if let Some(tap) = &tap {
        if let Some(br) = &spec.bridge {
            live::tap::bridge_add(br, tap.name())?;
        }
        live::tap::set_up(tap.name())?;
    }
    Ok((disk, tap))
}

/// The devices and command line of a spec (deterministic from the spec).
pub fn devices_and_cmdline(
    disk_sectors: Option<u64>,
    with_net: bool,
    user_cmdline: &str,
) -> Result<(Vec<MmioTransport>, String), RunError> {
    let mac = guest_mac(user_cmdline)?;
    let mut devs = Vec::new();
    if let Some(sectors) = disk_sectors {
        devs.push(virtio::new_block(0, sectors));
    }
    if with_net {
        devs.push(virtio::new_net(0, mac));
    }
    let mut cmdline = String::new();
    if !devs.is_empty() && cmdline_value(user_cmdline, "virtio_mmio").is_none() {
        let list: Vec<String> = (0..devs.len())
            .map(|i| {
                format!(
                    "{:#x}@{}",
                    VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE,
                    VIRTIO_IRQ_BASE as usize + i
                )
            })
            .collect();
        cmdline.push_str(&format!("virtio_mmio={} ", list.join(",")));
    }
    if with_net && cmdline_value(user_cmdline, "mac").is_none() {
        cmdline.push_str(&format!("mac={} ", format_mac(&mac)));
    }
    cmdline.push_str(user_cmdline.trim());
    Ok((devs, cmdline.trim().to_string()))
}

/// The VM of `spec`: restored from `spec.restore`, or booted from its image.
pub fn build_vm(spec: &VmSpec, disk_sectors: Option<u64>, with_net: bool) -> Result<Vm, RunError> {
    let (devs, cmdline) = devices_and_cmdline(disk_sectors, with_net, &spec.cmdline)?;
    match &spec.restore {
        Some(path) => {
            let p = path.display().to_string();
            let f = std::fs::File::open(path).map_err(|source| RunError::SnapshotFile {
                path: p.clone(),
                source,
            })?;
            Vm::restore_snapshot(std::io::BufReader::new(f), devs)
                .map_err(|source| RunError::Snapshot { path: p, source })
        }
        None => {
            let mut vm = Vm::with_baseline(spec.mem_mib << 20, devs, &spec.cpu)?;
            vm.boot_elf(&spec.kernel, &cmdline)?;
            tracing::info!(kernel = %spec.kernel.display(), cmdline, "booting");
            Ok(vm)
        }
    }
}

/// Writes `spec.snapshot_on_exit`, if set, from the stopped `vm`.
pub fn save_snapshot(spec: &VmSpec, vm: &mut Vm) -> Result<(), RunError> {
    let Some(path) = &spec.snapshot_on_exit else {
        return Ok(());
    };
    let p = path.display().to_string();
    let f = std::fs::File::create(path).map_err(|source| RunError::SnapshotFile {
        path: p.clone(),
        source,
    })?;
    vm.save_snapshot(std::io::BufWriter::new(f))
        .map_err(|source| RunError::Snapshot {
            path: p.clone(),
            source,
        })?;
    tracing::info!(path = p, exit_index = vm.exit_index(), "snapshot written");
    Ok(())
}

/// Runs a VM to its end on the calling thread, with no lockstep, no
/// generation and no fencing (`ftvmm run`, a development tool). `on_start`
/// receives a handle (to stop it) before the vCPU first runs.
pub fn run_vm(
    spec: &VmSpec,
    console: ConsoleSink,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
) -> Result<RunReport, RunError> {
    let (disk, tap) = open_backends(spec)?;
    let mut vm = build_vm(spec, disk.as_ref().map(|d| d.sectors()), tap.is_some())?;
    let handle = vm.handle();
    let mut live = live::start(
        LiveConfig {
            disk,
            tap,
            console,
            // An unprotected VM has no other copy whose writes its late
            // ones could undo.
            io_watch: None,
            stdin: spec.stdin,
        },
        handle.kicker(),
    )
    .map_err(RunError::Threads)?;
    let n0 = vm.exit_index();
    if spec.restore.is_some() {
        // Re-arm the live timer as the restored PIT is programmed, and issue
        // again the disk I/O whose completions the old process never delivered.
        live.inputs.program_timer(n0, vm.devices().timer_program());
        let reissue = vm.devices().in_flight_block_requests(vm.memory());
        if !reissue.is_empty() {
            tracing::info!(count = reissue.len(), "re-issuing in-flight block requests");
        }
        for req in reissue {
            live.outputs.emit(n0, OutputEvent::Block(req));
        }
    }
    on_start(handle, vm.progress());
    let started = Instant::now();
    let outcome = vm.run(&mut live.inputs, &mut live.outputs, None);
    let secs = started.elapsed().as_secs_f64();
    let outcome = outcome?;
    save_snapshot(spec, &mut vm)?;
    drop(live);
    Ok(RunReport {
        outcome,
        exit_index: vm.exit_index(),
        stats: vm.stats().clone(),
        secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_virtio_and_mac_from_the_devices() {
        let (devs, c) =
            devices_and_cmdline(Some(2048), true, "mode=kv ip=198.51.100.10/24").unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(
            c,
            "virtio_mmio=0xd0000000@5,0xd0001000@6 mac=52:54:00:12:34:56 mode=kv ip=198.51.100.10/24"
        );
    }

    #[test]
    fn user_mac_is_the_device_mac_and_not_repeated() {
        let (devs, c) = devices_and_cmdline(None, true, "mac=02:00:00:00:00:01 mode=kv").unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(c, "virtio_mmio=0xd0000000@5 mac=02:00:00:00:00:01 mode=kv");
        assert!(devices_and_cmdline(None, true, "mac=zz").is_err());
    }

    #[test]
    fn no_devices_no_virtio_parameter() {
        let (devs, c) = devices_and_cmdline(None, false, "mode=cpu cpu_iters=10").unwrap();
        assert!(devs.is_empty());
        assert_eq!(c, "mode=cpu cpu_iters=10");
    }
}
