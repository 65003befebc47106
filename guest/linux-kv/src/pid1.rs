//! PID 1 duties in the VM: mounts, modules, devices, network, then the chosen mode.
//!
//! Rules:
//! - The first console line is `guest: boot`, then `guest: mem=<MiB>MiB ... cmdline="..."` (the
//!   benchmarks time from it), as the reference guest prints them.
//! - The command line is the kernel's (`/proc/cmdline`), parsed with `BootArgs`; words that are
//!   not guest keys (`console=`, `virtio_mmio.device=`, `panic=`...) are listed once and ignored.
//! - Every failure ends in one `guest: fatal: <what>` line and a power-off; PID 1 never exits
//!   (the kernel would panic).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use ftguest_kvlog::{BootArgs, Mode};
use rustix::mount::{mount, MountFlags};

use crate::net::{pick_link, Netlink};

/// The log device.
pub const DISK: &str = "/dev/vda";
/// How long devices may take to appear after their modules are loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Runs the guest as PID 1; never returns.
pub fn run() -> ! {
    say!("guest: boot");
    if let Err(e) = boot() {
        say!("guest: fatal: {e}");
    }
    power_off()
}

fn boot() -> Result<(), String> {
    mount_basics()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let cmdline = cmdline.trim();
    let mem_mib = rustix::system::sysinfo().totalram >> 20;
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    say!("guest: mem={mem_mib}MiB kernel={release} cmdline=\"{cmdline}\"");
    let args = BootArgs::parse(cmdline).map_err(|e| format!("command line: {e}"))?;
    if !args.unknown.is_empty() {
        say!(
            "guest: not guest parameters (kernel's or unknown), ignored: {}",
            args.unknown.join(" ")
        );
    }
    match args.mode {
        Mode::Cpu => {
            crate::workload::cpu(args.cpu_iters);
            Ok(())
        }
        Mode::Dirty => crate::workload::dirty(args.dirty_mib, args.dirty_rate),
        Mode::Kv => kv(&args, &release, cmdline),
    }
}

fn kv(args: &BootArgs, release: &str, cmdline: &str) -> Result<(), String> {
    let moddir = Path::new("/lib/modules").join(release);
    let loaded = crate::modules::load_all(&moddir, cmdline).map_err(|e| e.to_string())?;
    say!("guest: loaded {} modules", loaded.len());
    if cmdline.contains("virtio_mmio.device=")
        && !Path::new("/sys/module/virtio_mmio/parameters/device").exists()
    {
        say!(
            "guest: note: this kernel ignores virtio_mmio.device= (built without \
             CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES); virtio-mmio devices must be described by ACPI"
        );
    }
    wait_for(&format!("virtio-blk disk {DISK}"), || {
        Path::new(DISK).exists()
    })?;
    check_block_size()?;
    configure_network(args)?;
    let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let shown = SocketAddr::from((Ipv4Addr::from(args.ip), args.port));
    crate::run_kv(Path::new(DISK), listen, Some(shown)).map_err(|e| e.to_string())
}

/// The log is made of 512-byte sectors written with `O_DIRECT`: the disk must take 512-byte
/// transfers.
fn check_block_size() -> Result<(), String> {
    let path = "/sys/block/vda/queue/logical_block_size";
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    match text.trim() {
        "512" => Ok(()),
        other => Err(format!(
            "{DISK} has {other}-byte logical blocks; the kvlog format needs 512-byte sectors \
             (the VMM must not announce a larger blk_size)"
        )),
    }
}

fn mount_basics() -> Result<(), String> {
    for (src, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        // The initramfs holds the directories; creating them again is harmless.
        let _ = std::fs::create_dir_all(target);
        mount(src, target, fstype, MountFlags::empty(), None)
            .map_err(|e| format!("mount {fstype} on {target}: {e}"))?;
    }
    Ok(())
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > DEVICE_WAIT {
            return Err(format!(
                "no {what} after {} s (announced to the kernel? this kernel has no \
                 virtio_mmio.device= support: CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is off, so \
                 virtio-mmio devices must come from ACPI (LNRO0005) or be virtio-pci)",
                DEVICE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn configure_network(args: &BootArgs) -> Result<(), String> {
    let err = |e: crate::net::NetError| e.to_string();
    let mut nl = Netlink::open().map_err(err)?;
    let mut links = Vec::new();
    wait_for("virtio-net interface", || {
        links = nl.links().unwrap_or_default();
        pick_link(&links, args.mac).is_some()
    })?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        nl.set_up(lo.index).map_err(err)?;
    }
    let Some(link) = pick_link(&links, args.mac).cloned() else {
        return Err("the virtio-net interface vanished".into());
    };
    if link.mac != Some(args.mac) {
        let [a, b, c, d, e, f] = link.mac.unwrap_or_default();
        say!("kv: note: device MAC {a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x} differs from mac=; using mac=");
        if let Err(e) = nl.set_mac(link.index, args.mac) {
            say!(
                "kv: note: cannot set mac= on {} ({e}); keeping the device's",
                link.name
            );
        }
    }
    let ip = Ipv4Addr::from(args.ip);
    nl.add_address(link.index, ip, args.prefix_len)
        .map_err(err)?;
    nl.set_up(link.index).map_err(err)?;
    if let Some(gw) = args.gateway {
        if let Err(e) = nl.add_default_route(Ipv4Addr::from(gw)) {
            say!("kv: could not add default route ({e})");
        }
    }
    say!("guest: {} is {ip}/{}", link.name, args.prefix_len);
    Ok(())
}

/// Syncs and powers the VM off; if the kernel refuses, waits forever.
pub fn power_off() -> ! {
    rustix::fs::sync();
    let e = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    say!("guest: power-off refused ({e:?}); halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
