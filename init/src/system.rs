//! The PID-1-only plumbing: early mounts, the console, loading the wanted
//! kernel modules, writing the runtime config, powering off. Not unit-tested
//! (it needs to be PID 1); the QEMU tests cover it.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::modules::{self, LoadOutcome, ModuleIndex, Step};

/// Mounts /proc, /sys, /dev (devtmpfs) and /run (tmpfs). Already mounted is fine.
pub fn mount_early() -> Vec<String> {
    let mut errors = Vec::new();
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let table: [(&str, &str, MsFlags, Option<&str>); 4] = [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (fstype, target, flags, data) in table {
        let _ = fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(target);
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => errors.push(format!("mount {fstype} on {target}: {e}")),
        }
    }
    errors
}

/// Points fds 0, 1, 2 at /dev/console (the kernel gives init none when the
/// initramfs has no /dev/console node).
pub fn attach_console() -> std::io::Result<()> {
    let con = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open("/dev/console")?;
    for fd in 0..=2 {
        // SAFETY: dup2 on a valid open fd onto a standard fd number; no Rust
        // object owns fds 0-2 other than std's stdio, which expects them there.
        if unsafe { nix::libc::dup2(con.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Prints one console line (contract lines go through here, unbuffered).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads [`modules::WANTED`] plus the KVM module for this CPU's vendor, and
/// `softdog` when no hardware watchdog appeared. Logs every step.
pub fn load_modules() {
    let dir = PathBuf::from("/lib/modules").join(kernel_release());
    let read = |name: &str| fs::read_to_string(dir.join(name));
    let dep = match read("modules.dep") {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("no {}/modules.dep ({e}): loading no modules", dir.display());
            return;
        }
    };
    let builtin = read("modules.builtin").unwrap_or_default();
    let index = match ModuleIndex::parse(&dep, &builtin) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("modules.dep: {e}: loading no modules");
            return;
        }
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm: Vec<&str> = match modules::kvm_module_for_vendor(&cpuinfo) {
        Some(m) => vec![m],
        None => {
            tracing::warn!("unknown CPU vendor: trying both KVM modules, one is expected to fail");
            modules::KVM_MODULES.to_vec()
        }
    };
    let mut done = BTreeSet::new();
    for name in modules::WANTED.iter().chain(kvm.iter()) {
        load_one(&index, &dir, name, &mut done);
    }
    if !has_watchdog() {
        tracing::info!(
            "no hardware watchdog: loading {}",
            modules::WATCHDOG_FALLBACK
        );
        load_one(&index, &dir, modules::WATCHDOG_FALLBACK, &mut done);
    }
    if Path::new("/dev/kvm").exists() {
        tracing::info!("/dev/kvm present");
    } else {
        tracing::warn!("/dev/kvm absent: ftvmm cannot run VMs on this host");
    }
}

fn has_watchdog() -> bool {
    fs::read_dir("/sys/class/watchdog")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn load_one(index: &ModuleIndex, dir: &Path, name: &str, done: &mut BTreeSet<String>) {
    if !index.contains(name) {
        tracing::info!("module {name}: not in modules.dep, skipped");
        return;
    }
    let steps = match index.resolve(name, done) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("module {name}: {e}");
            return;
        }
    };
    for step in steps {
        match step {
            Step::Builtin { name } => tracing::debug!("module {name}: built in"),
            Step::Load { name, path } => match modules::load_file(&dir.join(&path)) {
                Ok(LoadOutcome::Loaded) => tracing::info!("module {name}: loaded"),
                Ok(LoadOutcome::AlreadyLoaded) => tracing::info!("module {name}: already loaded"),
                Err(e) => tracing::warn!("module {name}: {e}"),
            },
        }
    }
}

/// Writes the runtime config to `path` with mode 0600 (directory 0700).
pub fn write_runtime(path: &Path, json: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(parent)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(json)?;
    f.sync_all()
}

/// Syncs and powers the machine off. Only returns if the kernel refused.
pub fn power_off() -> nix::Error {
    nix::unistd::sync();
    say("init: power off");
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
