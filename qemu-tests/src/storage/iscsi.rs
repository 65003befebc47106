//! Shared storage over iSCSI: Debian's userspace target `tgt` serving the
//! cluster's shared image as a LUN with SCSI-3 persistent reservations.
//!
//! [`IscsiStorage`] runs one `tgtd` in the foreground, bound to a free
//! loopback port, with its management socket on a control port of its own
//! (`/var/run/tgtd/socket.<n>`, so it never meets a system tgtd), and
//! configures it with `tgtadm`: target [`TARGET_IQN`], LUN [`ISCSI_LUN`]
//! backed by the image (`O_DIRECT` where the file system allows it), unit
//! serial number (VPD page 0x80) set to the serial the config names, access
//! from loopback only. Each host reaches it through its own TCP
//! [`StoragePath`] and logs in with its own initiator name
//! ([`initiator_iqn`]), so each host is its own I_T nexus and its
//! registrations are its own. The hosts attach with QEMU's `iscsi` block
//! driver and a `scsi-block` device, which passes every SCSI command —
//! PERSISTENT RESERVE IN/OUT included — to the target; see
//! [`crate::host::IscsiAttach`].
//!
//! Needs root (tgtd's management socket lives in `/var/run/tgtd`), the `tgt`
//! package, and `qemu-block-extra` for QEMU's iSCSI driver.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::StoragePath;
use crate::error::{HarnessError, Result};
use crate::host::supports_o_direct;
use crate::paths::find_in_path;

/// The target's iSCSI qualified name.
pub const TARGET_IQN: &str = "iqn.2026-01.test.ftappliance:shared";
/// The LUN of the shared image (LUN 0 is tgt's controller).
pub const ISCSI_LUN: u32 = 1;
/// Target id inside tgtd.
const TID: &str = "1";
/// How long tgtd may take to listen on its portal.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried before giving up.
const START_ATTEMPTS: u32 = 5;

/// The initiator name host `host` logs in with (its own I_T nexus).
pub fn initiator_iqn(host: &str) -> String {
    format!("iqn.2026-01.test.ftappliance:{host}")
}

fn tool(program: &'static str) -> Result<PathBuf> {
    find_in_path(program)
        .or_else(|| {
            let p = Path::new("/usr/sbin").join(program);
            p.exists().then_some(p)
        })
        .ok_or(HarnessError::ToolMissing {
            program,
            package: "tgt",
        })
}

/// QEMU's iSCSI block driver, a module of Debian's `qemu-block-extra`.
pub fn check_qemu_iscsi_driver() -> Result<()> {
    let found = ["/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/qemu"]
        .iter()
        .any(|d| Path::new(d).join("block-iscsi.so").exists());
    if found {
        Ok(())
    } else {
        Err(HarnessError::ToolMissing {
            program: "QEMU iSCSI block driver (block-iscsi.so)",
            package: "qemu-block-extra",
        })
    }
}

/// One `tgtd` serving an image as an iSCSI LUN. Killed on drop.
pub struct IscsiStorage {
    child: Child,
    tgtadm: PathBuf,
    /// The portal's TCP port.
    port: u16,
    /// The management socket's number (`tgtd -C`, `tgtadm -C`).
    control: u16,
    image: PathBuf,
    log: PathBuf,
}

impl IscsiStorage {
    /// Serves `image` as LUN [`ISCSI_LUN`] of [`TARGET_IQN`] with unit
    /// serial number `serial`, on a free loopback port. tgtd's output goes
    /// to `<dir>/tgtd.log`.
    pub fn start(image: &Path, dir: &Path, serial: &str) -> Result<IscsiStorage> {
        let tgtd = tool("tgtd")?;
        let tgtadm = tool("tgtadm")?;
        check_qemu_iscsi_driver()?;
        let mut attempt = 1;
        loop {
            // A port taken between free_port() and tgtd's bind, or a control
            // socket of another tgtd, makes tgtd exit: try other ports.
            match IscsiStorage::spawn(&tgtd, &tgtadm, image, dir) {
                Ok(storage) => {
                    storage.configure(serial)?;
                    return Ok(storage);
                }
                Err(e) if attempt < START_ATTEMPTS => {
                    tracing::warn!("tgtd attempt {attempt}: {e}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(tgtd: &Path, tgtadm: &Path, image: &Path, dir: &Path) -> Result<IscsiStorage> {
        let port = free_port()?;
        // tgtd takes control ports 0..=32767 only.
        let control = port & 0x7fff;
        let log = dir.join("tgtd.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| HarnessError::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io("clone log file", e))?;
        let mut cmd = Command::new(tgtd);
        // -f: foreground; -C: our own management socket; one portal, on
        // loopback only.
        cmd.arg("-f")
            .arg("-C")
            .arg(control.to_string())
            .arg("--iscsi")
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        tracing::info!("starting {cmd:?}");
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {}", tgtd.display()), e))?;
        let mut storage = IscsiStorage {
            child,
            tgtadm: tgtadm.to_owned(),
            port,
            control,
            image: image.to_owned(),
            log,
        };
        storage.wait_ready()?;
        Ok(storage)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(self.portal()).is_ok() {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                return Err(HarnessError::Command {
                    command: format!("tgtd on {}", self.portal()),
                    status: exited.map_or(format!("no portal after {START_TIMEOUT:?}"), |s| {
                        s.to_string()
                    }),
                    stderr: self.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn configure(&self, serial: &str) -> Result<()> {
        let image = self.image.display().to_string();
        let mut lun = vec![
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            TID,
            "--lun",
            "1",
            "-b",
            &image,
        ];
        if supports_o_direct(&self.image) {
            lun.extend(["--bsoflags", "direct"]);
        }
        let sn = format!("scsi_sn={serial}");
        let steps: [&[&str]; 4] = [
            &[
                "--op", "new", "--mode", "target", "--tid", TID, "-T", TARGET_IQN,
            ],
            &lun,
            &[
                "--op",
                "update",
                "--mode",
                "logicalunit",
                "--tid",
                TID,
                "--lun",
                "1",
                "--params",
                &sn,
            ],
            &[
                "--op",
                "bind",
                "--mode",
                "target",
                "--tid",
                TID,
                "-I",
                "127.0.0.1",
            ],
        ];
        for args in steps {
            self.tgtadm(args)?;
        }
        Ok(())
    }

    /// Makes the target ask every initiator for one-way CHAP: an incoming
    /// account `user`/`secret` bound to the target (`tgtadm --mode account`),
    /// as an array's "CHAP required" setting. Call before a host logs in.
    pub fn require_chap(&self, user: &str, secret: &str) -> Result<()> {
        self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            secret,
        ])?;
        self.tgtadm(&[
            "--op", "bind", "--mode", "account", "--tid", TID, "--user", user,
        ])?;
        Ok(())
    }

    /// Runs `tgtadm -C <control> --lld iscsi <args>` and returns its stdout.
    pub fn tgtadm(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.tgtadm)
            .arg("-C")
            .arg(self.control.to_string())
            .args(["--lld", "iscsi"])
            .args(args)
            .output()
            .map_err(|e| HarnessError::io(format!("run {}", self.tgtadm.display()), e))?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                command: format!("tgtadm {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `tgtadm --op show --mode target`: the LUNs and the I_T nexuses (one
    /// per logged-in host).
    pub fn show(&self) -> Result<String> {
        self.tgtadm(&["--op", "show", "--mode", "target"])
    }

    /// The initiator names with a session (from [`IscsiStorage::show`]).
    pub fn initiators(&self) -> Result<Vec<String>> {
        Ok(self
            .show()?
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Initiator: "))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
            .collect())
    }

    /// The portal tgtd listens on.
    pub fn portal(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// A new storage path (TCP proxy) named `name` to the portal.
    pub fn path(&self, name: &str) -> Result<StoragePath> {
        StoragePath::start_tcp(name, self.portal())
    }
}

impl Drop for IscsiStorage {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM while it has targets; nothing of it must
        // survive the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
    }
}

/// A loopback TCP port nobody listens on right now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| HarnessError::io("bind a free loopback port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("read the bound port", e))
}
