//! Shared storage over NBD with a per-host storage path the test controls.
//!
//! [`NbdStorage`] runs one `qemu-nbd` exporting the cluster's shared image
//! (raw, `O_DIRECT` where the file system allows it) on a Unix socket. Each
//! host reaches it through its own [`StoragePath`]: a proxy in the harness
//! that forwards the host's NBD byte stream to `qemu-nbd` and can be cut
//! (a dead SAN fabric: the host's I/O hangs, nothing it sends lands) or made
//! to deliver the host's bytes late (writes land `d` after they were sent,
//! in order). The hosts attach with QEMU's `nbd` block driver, see
//! [`crate::host::HostSpec::shared_storage_nbd`].

mod forward;
pub mod iscsi;
pub mod nbd_watch;
mod path;
mod stream;
#[cfg(test)]
mod tests;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::host::supports_o_direct;
use crate::paths::find_in_path;

pub use iscsi::{IscsiStorage, ISCSI_LUN};
pub use path::{PathMode, PathStats, StoragePath};
pub use stream::Endpoint;

/// The NBD export name of the shared storage.
pub const NBD_EXPORT: &str = "shared";

/// How long `qemu-nbd` may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `qemu-nbd` program, or a clear error naming its package.
pub fn qemu_nbd_binary() -> Result<PathBuf> {
    find_in_path("qemu-nbd").ok_or(HarnessError::ToolMissing {
        program: "qemu-nbd",
        package: "qemu-utils",
    })
}

/// One `qemu-nbd` serving an image to any number of clients. Killed on drop.
pub struct NbdStorage {
    child: Child,
    socket: PathBuf,
    image: PathBuf,
}

impl NbdStorage {
    /// Exports `image` (raw) as [`NBD_EXPORT`] on the Unix socket `socket`
    /// and waits until it accepts connections. `qemu-nbd`'s stderr goes to
    /// `<socket>.log`.
    pub fn start(image: &Path, socket: &Path) -> Result<NbdStorage> {
        let program = qemu_nbd_binary()?;
        // cache=none: O_DIRECT, so a write is in the file when qemu-nbd
        // replies. Where O_DIRECT is refused, writethrough still writes it
        // through before replying.
        let cache = if supports_o_direct(image) {
            "none"
        } else {
            "writethrough"
        };
        let escaped = image.display().to_string().replace(',', ",,");
        let log_path = socket.with_extension("log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| HarnessError::io(format!("create {}", log_path.display()), e))?;
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(&program);
        cmd.arg("--persistent")
            .arg("--shared=0") // any number of clients
            .arg(format!("--cache={cache}"))
            .arg(format!("--export-name={NBD_EXPORT}"))
            .arg("--socket")
            .arg(socket)
            .arg("--image-opts")
            .arg(format!(
                "driver=raw,file.driver=file,file.filename={escaped},file.locking=off"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        tracing::info!("starting {cmd:?}");
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {}", program.display()), e))?;
        let mut storage = NbdStorage {
            child,
            socket: socket.to_owned(),
            image: image.to_owned(),
        };
        storage.wait_ready(&log_path)?;
        Ok(storage)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let status = match exited {
                    Some(s) => s.to_string(),
                    None => format!("no socket after {START_TIMEOUT:?}"),
                };
                return Err(HarnessError::Command {
                    command: format!("qemu-nbd for {}", self.image.display()),
                    status,
                    stderr: std::fs::read_to_string(log_path)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Unix socket `qemu-nbd` listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The exported image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// A new storage path (proxy) named `name` listening on `socket`.
    pub fn path(&self, name: &str, socket: &Path) -> Result<StoragePath> {
        StoragePath::start(name, socket, &self.socket)
    }
}

impl Drop for NbdStorage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
