//! One appliance host as a QEMU process (TCG, `-cpu max` so KVM works inside):
//! its boot media, config disk, shared storage, two NICs wired to hubs, a
//! watchdog, and its captured serial console.
//!
//! Two machine profiles ([`Machine`]): `pc` (i440FX, SeaBIOS, virtio disks
//! and NICs, an i6300esb), the default of every test; and an emulated server
//! (q35, OVMF, e1000e NICs, the config disk on the chipset's AHCI, the ICH9
//! TCO watchdog).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::console::{Console, ConsoleLine, LineHook, Mark, Pattern};
use crate::error::{HarnessError, Result};
use crate::paths::{qemu_binary, QemuBuild};
use crate::qmp;
use crate::throttle::{Throttle, ThrottleStats};

/// Serial number of the shared storage device (the config names it).
pub const SHARED_SERIAL: &str = "FTSHARED";

/// How the host boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// The appliance ISO, BIOS boot from CD-ROM (the shipped path): ISOLINUX.
    Iso(PathBuf),
    /// The appliance ISO, UEFI boot from CD-ROM with `firmware` (OVMF): GRUB.
    IsoUefi { iso: PathBuf, firmware: PathBuf },
    /// The ISO written with `dd` to `image` (see [`crate::written_iso`]),
    /// booted from `disk`: by SeaBIOS, or by UEFI with `firmware` (OVMF; on
    /// [`Machine::ServerQ35`] the pflash OVMF is used instead).
    Written {
        image: PathBuf,
        disk: crate::written_iso::BootDisk,
        firmware: Option<PathBuf>,
    },
    /// A kernel and initramfs given directly, with our own command line.
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

/// The shared storage as an iSCSI LUN, reached with QEMU's own initiator
/// (`-blockdev driver=iscsi`, package qemu-block-extra) and attached as a
/// `scsi-block` device on a `virtio-scsi-pci` controller. `scsi-block` hands
/// the guest's SCSI commands to the target as they are (only READ/WRITE go
/// through QEMU's block layer, still as SCSI commands), so PERSISTENT RESERVE
/// IN/OUT reach the target and its answers — RESERVATION CONFLICT included —
/// reach the guest. Each host logs in with its own initiator name, so each is
/// its own I_T nexus.
#[derive(Debug, Clone)]
pub struct IscsiAttach {
    /// Where the host connects: its [`crate::storage::StoragePath`] (or the
    /// target's portal directly).
    pub portal: std::net::SocketAddr,
    pub target: String,
    pub lun: u32,
    pub initiator: String,
}

/// The emulated machine a host is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Machine {
    /// QEMU's default `pc` (i440FX): SeaBIOS (or `-bios` OVMF with
    /// [`Boot::IsoUefi`]), virtio-blk config disk, virtio-net NICs, an
    /// i6300esb watchdog.
    #[default]
    Pc,
    /// An emulated server: `-M q35` with UEFI (OVMF `code` as read-only
    /// pflash, a per-host copy of the variable store `vars` in the work
    /// directory), e1000e NICs, the config disk on the ICH9 chipset's AHCI
    /// (port 1; the boot CD is on port 0), the shared storage as on `Pc`, and
    /// the chipset's TCO watchdog (iTCO_wdt in Linux) instead of an i6300esb.
    /// With `watchdog` the TCO may reset the machine
    /// (`ICH9-LPC.noreboot=off`). Without it QEMU's default no-reboot strap
    /// stays on: the TCO cannot reset the machine, yet iTCO_wdt still
    /// registers it (the strap does not show in the NO_REBOOT bit the driver
    /// checks), so fencing arms a watchdog that never fires. The firmware is the pflash, so
    /// [`Boot::IsoUefi`]'s `firmware` is not used. An AHCI disk cannot be
    /// write-protected: QEMU refuses `config_disk_readonly` here.
    ServerQ35 { code: PathBuf, vars: PathBuf },
}

impl Machine {
    /// The server profile with Debian's OVMF ([`crate::paths::ovmf_pflash`]).
    pub fn server_q35() -> Result<Machine> {
        let (code, vars) = crate::paths::ovmf_pflash()?;
        Ok(Machine::ServerQ35 { code, vars })
    }
}

/// Where a host's copy of the OVMF variable store lives.
fn ovmf_vars_copy(work_dir: &Path) -> PathBuf {
    work_dir.join("ovmf-vars.fd")
}

/// A NIC (virtio-net, or e1000e on [`Machine::ServerQ35`]) connected with `-netdev stream` to a hub's Unix socket.
#[derive(Debug, Clone)]
pub struct Nic {
    pub mac: String,
    pub socket: PathBuf,
}

/// A NIC on a storage network of its own that reaches only an iSCSI portal:
/// QEMU's user-mode network (`-netdev user`, `restrict=on`: nothing leaves
/// it) whose one forward takes TCP to `portal` (inside the host's network)
/// to `forward_to` on this machine — the host's [`crate::StoragePath`] to
/// the target, so the harness can cut, sever or delay it. The appliance's
/// own initiator logs in over it (`storage.device = { iscsi = … }`).
///
/// The forward runs `socat` for each connection the host opens (`cmd:`): a
/// `tcp:` forward would be ONE connection to `forward_to`, made when QEMU
/// starts, carrying every guest connection — lost for good once the path
/// severs it, and garbled by a second login.
#[derive(Debug, Clone)]
pub struct StorageNic {
    pub mac: String,
    /// `10.0.2.0/24` is the user network's; the portal must be inside it.
    pub portal: std::net::SocketAddrV4,
    pub forward_to: std::net::SocketAddr,
}

impl StorageNic {
    /// The `-netdev` value.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "user,id={id},net=10.0.2.0/24,restrict=on,guestfwd=tcp:{}-cmd:socat - TCP:{}",
            self.portal, self.forward_to
        )
    }
}

/// The file a host's second serial port writes to ([`HostSpec::add_com2`]),
/// in its work directory.
pub const COM2_LOG: &str = "ttyS1.log";

/// Everything needed to start one host.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub machine: Machine,
    pub boot: Boot,
    /// Directory for the console log and the QMP socket.
    pub work_dir: PathBuf,
    pub config_disk: Option<PathBuf>,
    /// Attach the config disk write-protected (the guest sees a read-only disk).
    pub config_disk_readonly: bool,
    pub shared_storage: Option<PathBuf>,
    /// Attach the shared storage through this NBD Unix socket (a
    /// [`crate::storage::StoragePath`]) instead of the file; takes
    /// precedence over `shared_storage`.
    pub shared_storage_nbd: Option<PathBuf>,
    /// Attach the shared storage as an iSCSI LUN; takes precedence over
    /// both of the above.
    pub shared_storage_iscsi: Option<IscsiAttach>,
    /// In order: the FT network NIC, then the VM network NIC.
    pub nics: Vec<Nic>,
    /// A NIC to the iSCSI portal, after `nics`.
    pub storage_nic: Option<StorageNic>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub watchdog: bool,
    /// Copy every console line to stderr, prefixed with the host name
    /// (also switched on by `QEMU_TESTS_ECHO=1`).
    pub echo: bool,
    pub extra_args: Vec<OsString>,
    /// The emulated CPU (`-cpu`): [`DEFAULT_CPU`], or `FT_QEMU_CPU`.
    pub cpu: String,
    /// The accelerator (`-accel`): [`DEFAULT_ACCEL`], or `FT_QEMU_ACCEL`.
    pub accel: String,
    /// A QEMU other than the system's (`None`: `qemu-system-x86_64` from
    /// `PATH`), e.g. [`crate::paths::nested_qemu`].
    pub qemu: Option<QemuBuild>,
}

/// The accelerator every host runs on: TCG (this machine's /dev/kvm runs
/// no nested KVM, NESTED-KVM.md).
pub const DEFAULT_ACCEL: &str = "tcg";

/// The CPU every host emulates: TCG's `max` (it emulates AMD SVM, so a
/// host gets a working /dev/kvm: NESTED-KVM.md).
pub const DEFAULT_CPU: &str = "max";

impl HostSpec {
    pub fn new(name: &str, boot: Boot, work_dir: &Path) -> Self {
        HostSpec {
            name: name.to_owned(),
            machine: Machine::Pc,
            boot,
            work_dir: work_dir.to_owned(),
            config_disk: None,
            config_disk_readonly: false,
            shared_storage: None,
            shared_storage_nbd: None,
            shared_storage_iscsi: None,
            nics: Vec::new(),
            storage_nic: None,
            memory_mib: 1024,
            cpus: 1,
            watchdog: true,
            echo: std::env::var_os("QEMU_TESTS_ECHO").is_some_and(|v| v == "1"),
            extra_args: Vec::new(),
            cpu: std::env::var("FT_QEMU_CPU").unwrap_or_else(|_| DEFAULT_CPU.to_string()),
            accel: std::env::var("FT_QEMU_ACCEL").unwrap_or_else(|_| DEFAULT_ACCEL.to_string()),
            qemu: None,
        }
    }

    fn qmp_socket(&self) -> PathBuf {
        self.work_dir.join("qmp.sock")
    }

    /// A second QMP monitor, held open by [`qmp::record_events`] for the
    /// host's life (a QMP socket serves one client at a time, and
    /// [`Host::qmp`] connects per command).
    fn qmp_events_socket(&self) -> PathBuf {
        self.work_dir.join("qmp-events.sock")
    }

    /// Gives the host a second serial port (COM2, ttyS1 to its kernel)
    /// written to [`COM2_LOG`] in its work directory: serial-over-LAN on
    /// many servers (Dell iDRAC, HPE iLO) is COM2, and init writes its
    /// contract lines to every console it finds.
    pub fn add_com2(&mut self) {
        let com2 = self.work_dir.join(COM2_LOG);
        self.extra_args.extend([
            "-chardev".into(),
            format!("file,id=com2,path={}", com2.display()).into(),
            "-serial".into(),
            "chardev:com2".into(),
        ]);
    }

    /// The QEMU command line (without the binary) this spec stands for.
    pub fn qemu_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        for dir in self.qemu.iter().flat_map(|q| &q.data_dirs) {
            a.push("-L");
            a.push(dir.as_os_str());
        }
        a.push_all(["-name", &self.name]);
        if let Machine::ServerQ35 { code, .. } = &self.machine {
            a.push_all(["-machine", "q35"]);
            a.push("-drive");
            a.push(drive_opts(code, "if=pflash,unit=0,format=raw,readonly=on"));
            a.push("-drive");
            a.push(drive_opts(
                &ovmf_vars_copy(&self.work_dir),
                "if=pflash,unit=1,format=raw",
            ));
        }
        a.push_all(["-accel", &self.accel, "-cpu", &self.cpu]);
        a.push_all([
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        a.push_all([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ]);
        a.push_all([
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
        ]);
        a.push("-qmp");
        a.push(format!(
            "unix:{},server=on,wait=off",
            self.qmp_socket().display()
        ));
        a.push("-qmp");
        a.push(format!(
            "unix:{},server=on,wait=off",
            self.qmp_events_socket().display()
        ));
        // QEMU logs "Triple fault" here when the host's CPU triple-faults:
        // with `-no-reboot` that ends QEMU with status 0 exactly as a
        // watchdog reset does, and the console says neither.
        a.push_all(["-d", "cpu_reset", "-D"]);
        a.push(self.work_dir.join(RESET_LOG).display().to_string());
        self.boot_args(&mut a);
        self.config_disk_args(&mut a);
        self.shared_storage_args(&mut a);
        self.nic_args(&mut a);
        self.watchdog_args(&mut a);
        a.0.extend(self.extra_args.iter().cloned());
        a.0
    }

    fn boot_args(&self, a: &mut Args) {
        let server = matches!(self.machine, Machine::ServerQ35 { .. });
        match &self.boot {
            Boot::Iso(iso) => {
                a.push("-drive");
                a.push(drive_opts(
                    iso,
                    "if=ide,index=0,media=cdrom,readonly=on,format=raw",
                ));
                a.push_all(["-boot", "order=d"]);
            }
            Boot::IsoUefi { iso, firmware } => {
                if !server {
                    a.push("-bios");
                    a.push(firmware);
                }
                a.push("-drive");
                a.push(drive_opts(
                    iso,
                    "if=ide,index=0,media=cdrom,readonly=on,format=raw",
                ));
                a.push_all(["-boot", "order=d"]);
            }
            Boot::Written {
                image,
                disk,
                firmware,
            } => {
                if let (Some(f), false) = (firmware, server) {
                    a.push("-bios");
                    a.push(f);
                }
                a.0.extend(disk.qemu_args(image));
            }
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                a.push("-kernel");
                a.push(kernel);
                a.push("-initrd");
                a.push(initrd);
                a.push("-append");
                a.push(append);
            }
        }
    }

    fn config_disk_args(&self, a: &mut Args) {
        let Some(disk) = &self.config_disk else {
            return;
        };
        a.push("-drive");
        let ro = if self.config_disk_readonly {
            ",readonly=on"
        } else {
            ""
        };
        a.push(drive_opts(
            disk,
            &format!("if=none,format=raw,id=config{ro}"),
        ));
        match self.machine {
            Machine::Pc => a.push_all(["-device", "virtio-blk-pci,drive=config"]),
            // q35's built-in ICH9 AHCI: ide.0 holds the CD-ROM (if=ide index=0).
            Machine::ServerQ35 { .. } => a.push_all(["-device", "ide-hd,drive=config,bus=ide.1"]),
        }
    }

    fn shared_storage_args(&self, a: &mut Args) {
        if let Some(iscsi) = &self.shared_storage_iscsi {
            a.push("-blockdev");
            a.push(iscsi_blockdev(iscsi));
            a.push_all(["-device", "virtio-scsi-pci,id=scsi0"]);
            a.push_all(["-device", "scsi-block,drive=shared,bus=scsi0.0"]);
        } else if let Some(socket) = &self.shared_storage_nbd {
            a.push("-blockdev");
            a.push(nbd_blockdev(socket));
            a.push("-device");
            a.push(format!(
                "virtio-blk-pci,drive=shared,serial={SHARED_SERIAL},share-rw=on"
            ));
        } else if let Some(shared) = &self.shared_storage {
            // cache=none (O_DIRECT): every host sees the others' writes at
            // once. Where the file system refuses O_DIRECT (tmpfs), fall back
            // to writethrough, which QEMU also serves from the host page cache
            // shared by all hosts.
            let cache = if supports_o_direct(shared) {
                "none"
            } else {
                "writethrough"
            };
            a.push("-drive");
            a.push(drive_opts(
                shared,
                &format!("if=none,format=raw,cache={cache},file.locking=off,id=shared"),
            ));
            a.push("-device");
            a.push(format!(
                "virtio-blk-pci,drive=shared,serial={SHARED_SERIAL},share-rw=on"
            ));
        }
    }

    fn nic_args(&self, a: &mut Args) {
        let model = match self.machine {
            Machine::Pc => "virtio-net-pci",
            Machine::ServerQ35 { .. } => "e1000e",
        };
        for (i, nic) in self.nics.iter().enumerate() {
            a.push("-netdev");
            a.push(format!(
                "stream,id=net{i},server=off,addr.type=unix,addr.path={}",
                nic.socket.display()
            ));
            // romfile= : no iPXE option ROM (we never netboot; Debian's QEMU
            // refuses to start if the ROM package is not installed).
            a.push("-device");
            a.push(format!("{model},netdev=net{i},mac={},romfile=", nic.mac));
        }
        if let Some(s) = &self.storage_nic {
            a.push("-netdev");
            a.push(s.netdev("storage"));
            a.push("-device");
            a.push(format!("{model},netdev=storage,mac={},romfile=", s.mac));
        }
    }

    fn watchdog_args(&self, a: &mut Args) {
        if !self.watchdog {
            return;
        }
        match self.machine {
            Machine::Pc => a.push_all(["-device", "i6300esb"]),
            // The TCO is part of the ICH9 chipset: always there; this only
            // lets its second timeout reset the machine.
            Machine::ServerQ35 { .. } => a.push_all(["-global", "ICH9-LPC.noreboot=off"]),
        }
        a.push_all(["-watchdog-action", "reset"]);
    }
}

/// True if `path` can be opened with O_DIRECT (false for tmpfs, or if the
/// file does not exist yet).
pub fn supports_o_direct(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// Seconds QEMU's NBD client keeps requests pending after losing its
/// connection and retries them once it has reconnected (they fail with EIO
/// only after this). A cut path never closes the connection, so a cut
/// alone never starts this clock: the host's I/O just hangs. A severed path
/// closes it: the requests fail this long after, like a multipath device's
/// `fast_io_fail_tmo` (5 s). QEMU waits for in-flight requests before it
/// resets a machine, so a watchdog reset of a host whose path hangs happens
/// only once they failed.
pub const NBD_RECONNECT_DELAY_SECS: u32 = 5;

/// The `-blockdev` of the shared storage reached over NBD at `socket`.
///
/// QEMU's `nbd` driver keeps no data cache: a guest write completes only
/// when the NBD server replied to it, and the harness's `qemu-nbd` replies
/// after the write is in the file (`O_DIRECT`, or writethrough). The guest
/// sees a write cache (as with the file's `cache=none`); its flushes go to
/// the server as NBD flushes.
pub fn nbd_blockdev(socket: &Path) -> OsString {
    let escaped = socket.display().to_string().replace(',', ",,");
    OsString::from(format!(
        "driver=nbd,node-name=shared,server.type=unix,server.path={escaped},\
         export={},reconnect-delay={NBD_RECONNECT_DELAY_SECS}",
        crate::storage::NBD_EXPORT
    ))
}

/// The `-blockdev` of the shared storage as an iSCSI LUN.
pub fn iscsi_blockdev(i: &IscsiAttach) -> OsString {
    OsString::from(format!(
        "driver=iscsi,node-name=shared,transport=tcp,portal={},target={},lun={},initiator-name={}",
        i.portal, i.target, i.lun, i.initiator
    ))
}

/// `file=<path>,<rest>` with commas in the path doubled, as QEMU wants.
fn drive_opts(path: &Path, rest: &str) -> OsString {
    let escaped = path.display().to_string().replace(',', ",,");
    OsString::from(format!("file={escaped},{rest}"))
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: impl Into<OsString>) {
        self.0.push(s.into());
    }
    fn push_all<const N: usize>(&mut self, items: [&str; N]) {
        self.0.extend(items.iter().map(OsString::from));
    }
}

/// A running QEMU host. Dropping it kills QEMU.
pub struct Host {
    name: String,
    /// Shared with a [`Throttle`] while one runs.
    child: Arc<Mutex<Child>>,
    throttle: Mutex<Option<Throttle>>,
    stdin: Mutex<Option<ChildStdin>>,
    console: Console,
    spawned_at: Instant,
    qmp_socket: PathBuf,
    work_dir: PathBuf,
}

impl Host {
    /// Starts QEMU for `spec`. The hubs the NICs point at must already listen.
    pub fn spawn(spec: HostSpec) -> Result<Host> {
        let qemu = match &spec.qemu {
            Some(q) => q.binary.clone(),
            None => qemu_binary()?,
        };
        std::fs::create_dir_all(&spec.work_dir)
            .map_err(|e| HarnessError::io(format!("create {}", spec.work_dir.display()), e))?;
        if let Machine::ServerQ35 { vars, .. } = &spec.machine {
            let copy = ovmf_vars_copy(&spec.work_dir);
            std::fs::copy(vars, &copy).map_err(|e| {
                HarnessError::io(format!("copy {} to {}", vars.display(), copy.display()), e)
            })?;
        }
        let args = spec.qemu_args();
        tracing::info!(host = %spec.name, "spawning {} {:?}", qemu.display(), args);
        let stderr_path = spec.work_dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| HarnessError::io(format!("create {}", stderr_path.display()), e))?;
        let spawned_at = Instant::now();
        let mut child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {}", qemu.display()), e))?;
        {
            let (socket, log) = (
                spec.qmp_events_socket(),
                spec.work_dir.join(qmp::EVENTS_LOG),
            );
            std::thread::spawn(move || qmp::record_events(socket, log, spawned_at));
        }
        let stdout = child.stdout.take().expect("stdout was piped");
        let stdin = child.stdin.take();
        let hook: Option<LineHook> = spec.echo.then(|| {
            let name = spec.name.clone();
            Box::new(move |l: &ConsoleLine| {
                eprintln!(
                    "[{name} {:7.3}] {}",
                    l.at.as_secs_f64(),
                    crate::console::printable(&l.text)
                )
            }) as LineHook
        });
        let console = match Console::start(
            &spec.name,
            stdout,
            &spec.work_dir.join("console.log"),
            spawned_at,
            hook,
        ) {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Host {
            name: spec.name.clone(),
            child: {
                let child = Arc::new(Mutex::new(child));
                register(&child);
                child
            },
            throttle: Mutex::new(None),
            stdin: Mutex::new(stdin),
            console,
            spawned_at,
            qmp_socket: spec.qmp_socket(),
            work_dir: spec.work_dir,
        })
    }

    /// The QEMU process's id (its CPU time in `/proc/<pid>/stat` is the
    /// host's).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    /// When QEMU was spawned; console line times are relative to this.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a console line matching `pattern` (anywhere in the console
    /// so far or arriving within `timeout`) and returns its text.
    pub fn wait_for(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<String> {
        self.wait_for_line(pattern, timeout).map(|l| l.text)
    }

    /// Like [`Host::wait_for`], returning the line with its arrival time.
    pub fn wait_for_line(
        &self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<ConsoleLine> {
        let r = self.console.wait_for(pattern, timeout);
        self.with_exit_status(r)
    }

    /// Waits until the host's second serial port ([`HostSpec::add_com2`])
    /// has written a line containing `want`, and returns that line. COM2 is
    /// a plain file, not the parsed console: this polls it.
    pub fn wait_for_com2(&self, want: &str, timeout: Duration) -> Result<String> {
        let path = self.work_dir.join(COM2_LOG);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(want)) {
                return Ok(line.trim().to_string());
            }
            if std::time::Instant::now() >= deadline {
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(HarnessError::Timeout {
                    host: format!("{} (ttyS1, {})", self.name, path.display()),
                    pattern: format!("{want:?}"),
                    timeout,
                    tail: tail.join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a matching line after the last matched one (ordering checks).
    pub fn wait_for_next(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<String> {
        let r = self.console.wait_for_next(pattern, timeout);
        self.with_exit_status(r).map(|l| l.text)
    }

    /// Waits for a matching line that arrived after `mark` (taken with
    /// `console().mark()`), whatever matched before; moves the cursor past it.
    pub fn wait_after(
        &self,
        mark: Mark,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<String> {
        let r = self.console.wait_after(mark, pattern, timeout);
        self.with_exit_status(r).map(|l| l.text)
    }

    /// Time from spawning QEMU until a line matching `pattern` appeared.
    pub fn time_to(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<Duration> {
        self.wait_for_line(pattern, timeout).map(|l| l.at)
    }

    /// Fails if a matching line appeared at any time so far or appears within `duration`.
    pub fn assert_absent(&self, pattern: impl Into<Pattern>, duration: Duration) -> Result<()> {
        self.console.assert_absent(pattern, duration)
    }

    /// Fails if a matching line appears after the last matched one within `duration`.
    pub fn assert_no_more(&self, pattern: impl Into<Pattern>, duration: Duration) -> Result<()> {
        self.console.assert_no_more(pattern, duration)
    }

    fn with_exit_status<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(HarnessError::Exited {
                host,
                pattern,
                tail,
                ..
            }) => {
                let status = match self.child().wait() {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown: {e}"),
                };
                let stderr =
                    std::fs::read_to_string(self.work_dir.join("qemu.stderr")).unwrap_or_default();
                let stderr = stderr.trim();
                let status = if stderr.is_empty() {
                    status
                } else {
                    format!("{status}; QEMU stderr: {stderr}")
                };
                let read = |f: &str| std::fs::read_to_string(self.work_dir.join(f));
                let reset_log = read(RESET_LOG).unwrap_or_default();
                let events = read(qmp::EVENTS_LOG).unwrap_or_default();
                let last_line = self.console.lines().last().map(|l| l.at.as_secs_f64());
                let status = format!("{status}; {}", why_reset(&reset_log, &events, last_line));
                Err(HarnessError::Exited {
                    host,
                    pattern,
                    status,
                    tail,
                })
            }
            other => other,
        }
    }

    /// True while the QEMU process runs.
    pub fn is_running(&self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// Waits up to `within` for the QEMU process to end (a watchdog reset
    /// ends it: hosts run with `-no-reboot`); false if it still runs then.
    pub fn wait_stopped(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// SIGKILLs QEMU (a host dying at once) and reaps it, ending a throttle
    /// first. Idempotent.
    pub fn kill(&self) -> Result<()> {
        self.unthrottle();
        let mut child = self.child();
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        child
            .kill()
            .map_err(|e| HarnessError::io(format!("kill QEMU of {}", self.name), e))?;
        child
            .wait()
            .map_err(|e| HarnessError::io(format!("reap QEMU of {}", self.name), e))?;
        Ok(())
    }

    /// Types `text` on the serial console.
    pub fn send_console(&self, text: &str) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let w = stdin.as_mut().ok_or_else(|| {
            HarnessError::io("console input", std::io::ErrorKind::BrokenPipe.into())
        })?;
        w.write_all(text.as_bytes())
            .and_then(|_| w.flush())
            .map_err(|e| HarnessError::io(format!("write console of {}", self.name), e))
    }

    /// Runs one QMP command (e.g. `"stop"`, `"cont"`, `"query-status"`) and
    /// returns its `return` value.
    pub fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        qmp::execute(&self.qmp_socket, command, arguments).map_err(|reason| HarnessError::Qmp {
            host: self.name.clone(),
            reason,
        })
    }

    /// Freezes the whole host (all vCPUs stop; its NICs go silent).
    pub fn pause(&self) -> Result<()> {
        self.qmp("stop", None).map(drop)
    }

    /// Resumes a host frozen with [`Host::pause`].
    pub fn resume(&self) -> Result<()> {
        self.qmp("cont", None).map(drop)
    }

    /// Slows the whole host down: its QEMU process is stopped (`SIGSTOP`)
    /// for `stopped` of every `period` until [`Host::unthrottle`] or
    /// [`Host::kill`] ([`crate::throttle`] says why this is a slow host).
    /// Ends a throttle already running first.
    pub fn throttle(&self, stopped: Duration, period: Duration) -> Result<()> {
        self.unthrottle();
        let t = Throttle::start(&self.name, Arc::clone(&self.child), stopped, period)
            .map_err(|e| HarnessError::io(format!("throttle thread of {}", self.name), e))?;
        *self.throttle_slot() = Some(t);
        Ok(())
    }

    /// Ends a throttle (QEMU runs normally again when this returns): what it
    /// did, or `None` if none ran.
    pub fn unthrottle(&self) -> Option<ThrottleStats> {
        let t = self.throttle_slot().take();
        t.map(Throttle::end)
    }

    fn throttle_slot(&self) -> MutexGuard<'_, Option<Throttle>> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!("{e}");
        }
        self.console.join();
    }
}

/// The QEMU processes this process started (dropped ones are gone).
static SPAWNED: Mutex<Vec<Weak<Mutex<Child>>>> = Mutex::new(Vec::new());

fn register(child: &Arc<Mutex<Child>>) {
    let mut v = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(child));
}

/// SIGKILLs every QEMU this process started and has not dropped: for a
/// panic hook of the bench binaries, which are built with `panic = "abort"`
/// (the release profile) and so run no `Drop` on a panic. Without it a
/// panicked bench left its hosts running at full CPU, unseen, under every
/// later test and measurement (a 500 ms failover bench, 23 minutes).
/// `Child::kill` signals nothing for a child already reaped, so a reused
/// pid is never hit.
pub fn kill_all_spawned() {
    let children: Vec<_> = SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for c in children {
        // A thread that panicked holding this lock leaves it poisoned or
        // held: take it anyway if poisoned, skip it if held.
        let mut guard = match c.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => continue,
        };
        let _ = guard.kill();
    }
}

/// What every bench and demo binary does first: [`kill_hosts_on_panic`],
/// and `tracing` to stderr (`RUST_LOG`, default `warn`).
pub fn bin_init() {
    kill_hosts_on_panic();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Installs a panic hook that prints the panic as usual, then
/// [`kill_all_spawned`] (bench and demo binaries).
pub fn kill_hosts_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        kill_all_spawned();
    }));
}

/// QEMU's `-d cpu_reset` log in a host's directory.
const RESET_LOG: &str = "qemu-reset.log";

/// Why a host's QEMU ended, from its `-d cpu_reset` log (a triple fault:
/// its kernel crashed without a word) and its QMP events (a `WATCHDOG`
/// event: the watchdog fired, so the host stopped feeding it — its kernel
/// froze, or fencing chose to; a `SHUTDOWN` without one: the host's own
/// reboot, power-off or ACPI), with the time since its last console line
/// (`last_line`, seconds since spawn) when the log has one.
fn why_reset(reset_log: &str, events: &str, last_line: Option<f64>) -> String {
    let after = |at: f64| match last_line {
        Some(l) => format!(" at {at:.3} s, {:.3} s after its last console line", at - l),
        None => format!(" at {at:.3} s"),
    };
    if reset_log.contains("Triple fault") {
        return "QEMU logged a triple fault of the host's CPU".into();
    }
    if let Some((at, _)) = qmp::find_event(events, "WATCHDOG") {
        return format!("the watchdog fired{}", after(at));
    }
    if let Some((at, e)) = qmp::find_event(events, "SHUTDOWN") {
        let reason = e["data"]["reason"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        return format!(
            "no triple fault or watchdog: the host asked QEMU to end it ({reason}: a reboot, \
             a power-off or ACPI){}",
            after(at)
        );
    }
    if events.starts_with("# not connected") {
        return format!(
            "no triple fault logged; QMP events not recorded ({})",
            events.lines().next().unwrap_or_default()
        );
    }
    "no triple fault logged and no QMP event (QEMU itself ended: a signal or an error)".into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_triple_fault_is_told_from_a_reset_request() {
        let log = "CPU Reset (CPU 0)\nEAX=00000000\nTriple fault\n";
        assert!(super::why_reset(log, "", None).contains("triple fault of the host's CPU"));
        let reset = "CPU Reset (CPU 0)\n";
        let watchdog = "12.500 {\"event\": \"WATCHDOG\", \"data\": {\"action\": \"reset\"}}\n\
                        12.501 {\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-reset\"}}\n";
        assert_eq!(
            super::why_reset(reset, watchdog, Some(6.0)),
            "the watchdog fired at 12.500 s, 6.500 s after its last console line"
        );
        let reboot = "3.000 {\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-reset\"}}\n";
        let why = super::why_reset(reset, reboot, None);
        assert!(why.contains("asked QEMU to end it (guest-reset") && why.contains("at 3.000 s"));
        assert!(super::why_reset(reset, "", None).contains("no QMP event"));
    }

    use super::*;

    #[test]
    fn a_panic_hook_kills_what_was_spawned_and_not_dropped() {
        use std::os::unix::process::ExitStatusExt;
        let sleeper = || {
            Arc::new(Mutex::new(
                Command::new("sleep").arg("60").spawn().expect("sleep runs"),
            ))
        };
        let (alive, reaped) = (sleeper(), sleeper());
        register(&alive);
        register(&reaped);
        {
            let mut r = reaped.lock().unwrap();
            r.kill().unwrap();
            r.wait().unwrap();
        }
        kill_all_spawned();
        let status = alive.lock().unwrap().wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    fn joined(spec: &HostSpec) -> String {
        spec.qemu_args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_write_protected_config_disk_is_read_only() {
        let mut spec = HostSpec::new("h", Boot::Iso("/x/ft.iso".into()), Path::new("/w"));
        spec.config_disk = Some("/w/c.img".into());
        spec.config_disk_readonly = true;
        let a = joined(&spec);
        assert!(
            a.contains("file=/w/c.img,if=none,format=raw,id=config,readonly=on"),
            "{a}"
        );
    }

    #[test]
    fn uefi_boot_loads_the_firmware_and_the_iso() {
        let spec = HostSpec::new(
            "h",
            Boot::IsoUefi {
                iso: "/x/ft.iso".into(),
                firmware: "/fw/OVMF.fd".into(),
            },
            Path::new("/w"),
        );
        let a = joined(&spec);
        assert!(
            a.contains("-bios /fw/OVMF.fd -drive file=/x/ft.iso,if=ide,index=0,media=cdrom"),
            "{a}"
        );
        assert!(a.contains("-boot order=d"), "{a}");
    }

    #[test]
    fn args_attach_disks_nics_and_watchdog() {
        let mut spec = HostSpec::new("host-a", Boot::Iso("/x/ft.iso".into()), Path::new("/w"));
        spec.config_disk = Some("/w/config,1.img".into());
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared.img");
        std::fs::File::create(&shared)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let cache = if supports_o_direct(&shared) {
            "none"
        } else {
            "writethrough"
        };
        spec.shared_storage = Some(shared);
        spec.nics.push(Nic {
            mac: "52:54:00:f7:00:01".into(),
            socket: "/w/ft.sock".into(),
        });
        let a = joined(&spec);
        assert!(a.contains("-accel tcg -cpu max -m 1024 -smp 1"), "{a}");
        assert!(a.contains(" -d cpu_reset -D "), "{a}");
        assert!(
            a.contains("file=/x/ft.iso,if=ide,index=0,media=cdrom"),
            "{a}"
        );
        assert!(
            a.contains("file=/w/config,,1.img,if=none,format=raw,id=config"),
            "{a}"
        );
        assert!(
            a.contains(&format!("cache={cache},file.locking=off,id=shared")),
            "{a}"
        );
        assert!(a.contains("serial=FTSHARED,share-rw=on"), "{a}");
        assert!(
            a.contains("stream,id=net0,server=off,addr.type=unix,addr.path=/w/ft.sock"),
            "{a}"
        );
        assert!(
            a.contains("virtio-net-pci,netdev=net0,mac=52:54:00:f7:00:01"),
            "{a}"
        );
        assert!(a.contains("-device i6300esb"), "{a}");
        assert!(!a.contains("-kernel"), "{a}");
    }

    #[test]
    fn the_server_profile_is_q35_with_pflash_e1000e_ahci_and_the_tco() {
        let mut spec = HostSpec::new("h", Boot::Iso("/x/ft.iso".into()), Path::new("/w"));
        spec.machine = Machine::ServerQ35 {
            code: "/fw/CODE.fd".into(),
            vars: "/fw/VARS.fd".into(),
        };
        spec.config_disk = Some("/w/c.img".into());
        spec.nics.push(Nic {
            mac: "52:54:00:f7:00:01".into(),
            socket: "/w/ft.sock".into(),
        });
        let a = joined(&spec);
        assert!(a.contains("-machine q35"), "{a}");
        assert!(
            a.contains("-drive file=/fw/CODE.fd,if=pflash,unit=0,format=raw,readonly=on"),
            "{a}"
        );
        // The host's own copy of the variable store, never the template.
        assert!(
            a.contains("-drive file=/w/ovmf-vars.fd,if=pflash,unit=1,format=raw"),
            "{a}"
        );
        assert!(!a.contains("VARS.fd") && !a.contains("-bios"), "{a}");
        assert!(a.contains("-device ide-hd,drive=config,bus=ide.1"), "{a}");
        assert!(
            a.contains("-device e1000e,netdev=net0,mac=52:54:00:f7:00:01,romfile="),
            "{a}"
        );
        assert!(!a.contains("virtio-net") && !a.contains("i6300esb"), "{a}");
        assert!(
            a.contains("-global ICH9-LPC.noreboot=off -watchdog-action reset"),
            "{a}"
        );
        spec.watchdog = false;
        assert!(!joined(&spec).contains("noreboot"));
    }

    #[test]
    fn the_pc_profile_names_no_machine() {
        let spec = HostSpec::new("h", Boot::Iso("/x/ft.iso".into()), Path::new("/w"));
        let a = joined(&spec);
        assert!(!a.contains("-machine") && !a.contains("pflash"), "{a}");
        assert!(a.contains("-device i6300esb -watchdog-action reset"), "{a}");
    }

    #[test]
    fn another_qemu_searches_its_firmware_directories_first() {
        let mut spec = HostSpec::new("l1", Boot::Iso("/w/a.iso".into()), Path::new("/w"));
        spec.qemu = Some(QemuBuild {
            binary: PathBuf::from("/q/bin/qemu-system-x86_64"),
            data_dirs: vec![
                PathBuf::from("/q/share/qemu"),
                PathBuf::from("/usr/share/seabios"),
            ],
        });
        let a = joined(&spec);
        assert!(
            a.starts_with("-L /q/share/qemu -L /usr/share/seabios -name l1 "),
            "{a}"
        );
    }

    #[test]
    fn nbd_storage_replaces_the_file() {
        let mut spec = HostSpec::new("h", Boot::Iso("/x/ft.iso".into()), Path::new("/w"));
        spec.shared_storage = Some("/w/shared.img".into());
        spec.shared_storage_nbd = Some("/w/storage/h,1.sock".into());
        let a = joined(&spec);
        assert!(
            a.contains(
                "-blockdev driver=nbd,node-name=shared,server.type=unix,\
                 server.path=/w/storage/h,,1.sock,export=shared,reconnect-delay=5"
            ),
            "{a}"
        );
        assert!(
            a.contains("-device virtio-blk-pci,drive=shared,serial=FTSHARED,share-rw=on"),
            "{a}"
        );
        assert!(!a.contains("shared.img"), "{a}");
    }

    #[test]
    fn iscsi_storage_is_a_passed_through_scsi_lun() {
        let mut spec = HostSpec::new("h", Boot::Iso("/x/ft.iso".into()), Path::new("/w"));
        spec.shared_storage = Some("/w/shared.img".into());
        spec.shared_storage_nbd = Some("/w/storage/h.sock".into());
        spec.shared_storage_iscsi = Some(IscsiAttach {
            portal: "127.0.0.1:40001".parse().unwrap(),
            target: "iqn.2026-01.test.ftappliance:shared".into(),
            lun: 1,
            initiator: "iqn.2026-01.test.ftappliance:h".into(),
        });
        let a = joined(&spec);
        assert!(
            a.contains(
                "-blockdev driver=iscsi,node-name=shared,transport=tcp,portal=127.0.0.1:40001,\
                 target=iqn.2026-01.test.ftappliance:shared,lun=1,\
                 initiator-name=iqn.2026-01.test.ftappliance:h"
            ),
            "{a}"
        );
        assert!(
            a.contains(
                "-device virtio-scsi-pci,id=scsi0 -device scsi-block,drive=shared,bus=scsi0.0"
            ),
            "{a}"
        );
        assert!(
            !a.contains("driver=nbd") && !a.contains("shared.img"),
            "{a}"
        );
    }

    #[test]
    fn o_direct_probe_refuses_missing_files() {
        // (tmpfs gained O_DIRECT in Linux 6.6, so no file system is assumed
        // to refuse it here.)
        assert!(!supports_o_direct(Path::new("/no/such/file")));
    }

    #[test]
    fn kernel_boot_passes_append_as_one_argument() {
        let spec = HostSpec::new(
            "h",
            Boot::Kernel {
                kernel: "/k".into(),
                initrd: "/i".into(),
                append: "console=ttyS0 ft.fault=crash:heartbeat".into(),
            },
            Path::new("/w"),
        );
        let args = spec.qemu_args();
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "console=ttyS0 ft.fault=crash:heartbeat");
        assert!(!joined(&spec).contains("media=cdrom"));
    }
}
