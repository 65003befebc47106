//! The benchmark's network: a private network namespace (so the host's interfaces stay
//! untouched and everything disappears with the process) holding the TAP `ftbench0` with the
//! host-side address 198.51.100.254/24; the guest is 198.51.100.10/24.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub const TAP: &str = "ftbench0";
pub const HOST_CIDR: &str = "198.51.100.254/24";
pub const GUEST_IP: &str = "198.51.100.10";
pub const GUEST_CIDR: &str = "198.51.100.10/24";
pub const KV_PORT: u16 = 7000;

/// Moves the calling process into a new network namespace. Must run before any thread is
/// spawned, so that every later thread (vCPU, TAP reader, KV client) lives in it.
pub fn enter_private_netns() -> Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours; called while the
    // process is still single-threaded.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "unshare(CLONE_NEWNET) failed (the KV benchmark needs root): {}",
            std::io::Error::last_os_error()
        );
    }
    ip(&["link", "set", "lo", "up"])
}

/// A persistent TAP with the host address, deleted on drop.
pub struct TapGuard;

impl TapGuard {
    pub fn create() -> Result<TapGuard> {
        ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        let guard = TapGuard;
        ip(&["addr", "add", HOST_CIDR, "dev", TAP])?;
        ip(&["link", "set", TAP, "up"])?;
        Ok(guard)
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", TAP]) {
            tracing::warn!("cannot remove {TAP}: {e:#}");
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
