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

use config_schema::watchdog::{self, WatchdogKind};

use crate::hardware::{self, AliasIndex};
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

/// The consoles besides /dev/console (`crate::console`), opened once.
static OTHER_CONSOLES: std::sync::Mutex<Vec<fs::File>> = std::sync::Mutex::new(Vec::new());

/// Opens every console of `/proc/consoles` but /dev/console, and every
/// serial port with a UART that is not a kernel console
/// ([`crate::console`]), for writing, so [`say`] and the log reach the
/// screen and every serial port. Returns the ones opened and those that
/// could not be.
///
/// Opened `O_NONBLOCK`: a serial port's open waits for carrier unless
/// `CLOCAL` is set, and a port the kernel does not drive as a console has
/// the default termios (no `CLOCAL`, 9600 baud). Init must never hang on a
/// console, so the port is opened without waiting, then set to 115200 8N1
/// with `CLOCAL` and no flow control (the command line's speed for ttyS0).
pub fn open_other_consoles() -> (Vec<String>, Vec<String>) {
    let text = fs::read_to_string("/proc/consoles").unwrap_or_default();
    let present: Vec<&str> = crate::console::SERIAL_PORTS
        .into_iter()
        .filter(|p| {
            let t = fs::read_to_string(format!("/sys/class/tty/{p}/type")).unwrap_or_default();
            crate::console::uart_present(&t)
        })
        .collect();
    let (mut opened, mut failed) = (Vec::new(), Vec::new());
    let mut files = OTHER_CONSOLES.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = crate::console::parse_proc_consoles(&text);
    for path in crate::console::others(&kernel, &present) {
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => {
                let name = path.trim_start_matches("/dev/");
                if name.starts_with("ttyS") && !kernel.iter().any(|c| c.name == name) {
                    if let Err(e) = raw_serial_115200(&f) {
                        failed.push(format!("{path} (termios: {e})"));
                        continue;
                    }
                }
                files.push(f);
                opened.push(path);
            }
            Err(e) => failed.push(format!("{path} ({e})")),
        }
    }
    (opened, failed)
}

/// 115200 baud, 8N1, `CLOCAL`, no flow control, output as is (`OPOST` with
/// `ONLCR` so `\n` is a new line on a terminal, as on the kernel's consoles).
fn raw_serial_115200(f: &fs::File) -> nix::Result<()> {
    use nix::sys::termios::{self, ControlFlags, OutputFlags, SetArg};
    let mut t = termios::tcgetattr(f)?;
    // The speed goes into c_cflag's CBAUD bits, which is what glibc's
    // cfset*speed do on Linux: the libc crate binds those by a versioned
    // symbol name (`@GLIBC_2.2.5`) that a static link cannot resolve.
    let b115200 = ControlFlags::from_bits_retain(nix::libc::B115200);
    t.control_flags &=
        !(ControlFlags::CBAUD | ControlFlags::CSIZE | ControlFlags::PARENB | ControlFlags::CRTSCTS);
    t.control_flags |= b115200;
    t.control_flags |= ControlFlags::CS8 | ControlFlags::CLOCAL | ControlFlags::CREAD;
    t.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
    termios::tcsetattr(f, SetArg::TCSANOW, &t)
}

/// How long one line may wait for room on a slow console before that
/// console skips it: a stuck port must not stall init.
const CONSOLE_WAIT_MS: u16 = 500;

/// Writes `bytes` to every other console (best effort; a console whose
/// buffer stays full for [`CONSOLE_WAIT_MS`] misses the rest of the line).
fn to_other_consoles(bytes: &[u8]) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut files = OTHER_CONSOLES.lock().unwrap_or_else(|e| e.into_inner());
    for f in files.iter_mut() {
        let mut rest = bytes;
        while !rest.is_empty() {
            match f.write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, PollTimeout::from(CONSOLE_WAIT_MS)) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// Prints one console line on every console (contract lines go through here,
/// unbuffered).
pub fn say(line: &str) {
    let text = format!("{line}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    drop(out);
    to_other_consoles(text.as_bytes());
}

/// init's log writer: stderr (/dev/console) and every other console.
pub struct AllConsoles;

impl Write for AllConsoles {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        to_other_consoles(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads what this machine needs: [`hardware::ALWAYS`], the KVM module for
/// this CPU's vendor, every module whose alias matches a device (repeated
/// while that finds more), then the watchdog ([`load_watchdog`]). Logs every step.
pub fn load_modules() {
    let dir = PathBuf::from("/lib/modules").join(kernel_release());
    let read = |name: &str| fs::read_to_string(dir.join(name));
    let index = match module_index(&dir) {
        Ok(i) => i,
        Err(IndexError::Missing(e)) => {
            tracing::warn!("{e}: loading no modules");
            return;
        }
        Err(IndexError::Malformed(e)) => {
            tracing::error!("{e}: loading no modules");
            return;
        }
    };
    let aliases = AliasIndex::parse(&read("modules.alias").unwrap_or_default());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm: Vec<&str> = match modules::kvm_module_for_vendor(&cpuinfo) {
        Some(m) => vec![m],
        None => {
            tracing::warn!("unknown CPU vendor: trying both KVM modules, one is expected to fail");
            modules::KVM_MODULES.to_vec()
        }
    };
    let mut loader = Loader {
        index: &index,
        dir: &dir,
        done: BTreeSet::new(),
        tried: BTreeSet::new(),
    };
    for name in hardware::ALWAYS.iter().chain(kvm.iter()) {
        loader.load(name);
    }
    discover(&mut loader, &aliases);
    load_watchdog(&mut loader);
    if Path::new("/dev/kvm").exists() {
        tracing::info!("/dev/kvm present");
    } else {
        tracing::warn!("/dev/kvm absent: ftvmm cannot run VMs on this host");
    }
}

/// Loads `names` and their dependencies by name: drivers no device
/// announces (the software iSCSI initiator's), outside discovery.
pub fn load_named(names: &[&str]) {
    let dir = PathBuf::from("/lib/modules").join(kernel_release());
    match module_index(&dir) {
        Ok(index) => {
            let mut done = BTreeSet::new();
            for name in names {
                load_one(&index, &dir, name, &mut done);
            }
        }
        Err(IndexError::Missing(e) | IndexError::Malformed(e)) => {
            tracing::error!("{e}: cannot load {names:?}")
        }
    }
}

/// Why `modules.dep` gave no index (the text says which file and why).
enum IndexError {
    Missing(String),
    Malformed(String),
}

/// `dir`'s `modules.dep` and `modules.builtin`, parsed.
fn module_index(dir: &Path) -> Result<ModuleIndex, IndexError> {
    let dep = fs::read_to_string(dir.join("modules.dep"))
        .map_err(|e| IndexError::Missing(format!("no {}/modules.dep ({e})", dir.display())))?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    ModuleIndex::parse(&dep, &builtin)
        .map_err(|e| IndexError::Malformed(format!("modules.dep: {e}")))
}

/// Loads the modules the machine's devices match, pass after pass.
fn discover(loader: &mut Loader<'_>, aliases: &AliasIndex) {
    if aliases.is_empty() {
        tracing::warn!("no modules.alias: no driver is loaded by device");
        return;
    }
    for pass in 1..=hardware::MAX_PASSES {
        let devices = hardware::read_modaliases(Path::new("/"));
        let new: Vec<String> = aliases
            .wanted(&devices)
            .into_iter()
            .filter(|m| !loader.tried.contains(m) && !loader.done.contains(m))
            .collect();
        if new.is_empty() {
            return;
        }
        tracing::info!(
            "hardware pass {pass}: {} devices, loading {}",
            devices.len(),
            new.join(" ")
        );
        for m in &new {
            loader.load(m);
        }
    }
    tracing::warn!(
        "hardware discovery still found new drivers after {} passes; stopped",
        hardware::MAX_PASSES
    );
}

/// The watchdog: a chipset one came with discovery if the machine has one.
/// Without it the BMC's (ipmi_watchdog, when ipmi_si found a BMC), and
/// without any that keeps real time, softdog. Says which one fencing gets.
fn load_watchdog(loader: &mut Loader<'_>) {
    let root = Path::new("/");
    let best_kind = |root: &Path| watchdog::choose(&watchdog::scan(root)).map(|c| c.kind);
    if best_kind(root).is_none_or(|k| k > WatchdogKind::Hardware) && loader.done.contains("ipmi_si")
    {
        loader.load(IPMI_WATCHDOG);
    }
    if !best_kind(root).is_some_and(WatchdogKind::real_time) {
        tracing::info!(
            "no hardware watchdog: loading {}",
            modules::WATCHDOG_FALLBACK
        );
        loader.load(modules::WATCHDOG_FALLBACK);
    }
    let all = watchdog::scan(root);
    match watchdog::choose(&all) {
        Some(c) if c.kind.real_time() => say(&format!("init: watchdog: {c}")),
        Some(c) => say(&format!(
            "init: watchdog: {c}; no hardware watchdog on this machine: fencing refuses go-live \
             unless the signed config accepts it ([cluster] accept_soft_watchdog = true)"
        )),
        None => say(
            "init: watchdog: none; fencing refuses go-live unless the signed config accepts it \
             ([cluster] accept_soft_watchdog = true)",
        ),
    }
    for c in all.iter().skip(1) {
        tracing::info!("also present: watchdog {c}");
    }
}

/// The BMC's watchdog: no alias (it needs an IPMI interface, not a device).
const IPMI_WATCHDOG: &str = "ipmi_watchdog";

/// Loads modules and their dependencies, each once.
struct Loader<'a> {
    index: &'a ModuleIndex,
    dir: &'a Path,
    /// Modules resolved (loaded, already loaded, built in, or failed).
    done: BTreeSet<String>,
    /// Names asked for, found or not.
    tried: BTreeSet<String>,
}

impl Loader<'_> {
    fn load(&mut self, name: &str) {
        self.tried.insert(modules::normalize(name));
        load_one(self.index, self.dir, name, &mut self.done);
    }
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
