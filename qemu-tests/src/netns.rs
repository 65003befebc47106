//! A test client on a hub: a TAP device inside its own network namespace on
//! the test machine, joined to a hub port by two threads that shuttle frames
//! between the TAP file descriptor and the hub. Code that should talk over
//! the hub runs in the namespace with [`NetnsTap::run_in`] (a thread that
//! `setns`es into it); sockets made there stay in the namespace.
//!
//! Needs root (`ip netns add`, `/dev/net/tun`). Namespaces are named by the
//! caller; a leftover namespace of the same name is deleted first.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::hub::{ChannelPort, Hub};
use crate::paths::run_checked;
use crate::sys::poll_readable;

/// Name of the TAP device inside every namespace (namespaces keep them apart).
pub const TAP_NAME: &str = "ftclient0";

/// How often the shuttle threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A TAP device in a network namespace, attached to a hub port.
pub struct NetnsTap {
    netns: String,
    port: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NetnsTap {
    /// Creates namespace `netns`, a TAP device in it with address `cidr`
    /// (e.g. `198.51.100.200/24`) and optional `mac`, and joins it to `hub`
    /// as a new port named `port`.
    pub fn attach(
        hub: &Hub,
        port: &str,
        netns: &str,
        cidr: &str,
        mac: Option<&str>,
    ) -> Result<NetnsTap> {
        if !is_root() {
            return Err(HarnessError::NotRoot("attaching a TAP client to a hub"));
        }
        let _ = Command::new("ip").args(["netns", "del", netns]).output();
        run_checked(Command::new("ip").args(["netns", "add", netns]))?;
        // From here on, Drop deletes the namespace if a later step fails.
        let mut tap = NetnsTap {
            netns: netns.to_owned(),
            port: port.to_owned(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let fd = tap.run_in(open_tap)??;
        let ip = |args: &[&str]| run_checked(Command::new("ip").arg("-n").arg(netns).args(args));
        ip(&["link", "set", "lo", "up"])?;
        if let Some(mac) = mac {
            ip(&["link", "set", TAP_NAME, "address", mac])?;
        }
        ip(&["addr", "add", cidr, "dev", TAP_NAME])?;
        ip(&["link", "set", TAP_NAME, "up"])?;
        let channel = hub.add_channel_port(port)?;
        tap.start_shuttles(fd, channel)?;
        Ok(tap)
    }

    fn start_shuttles(&mut self, fd: OwnedFd, channel: ChannelPort) -> Result<()> {
        let file = Arc::new(File::from(fd));
        let (rfile, rstop, sender) = (Arc::clone(&file), Arc::clone(&self.stop), channel.sender());
        let reader = std::thread::Builder::new()
            .name(format!("tap-{}-in", self.port))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !rstop.load(Ordering::Relaxed) {
                    if !poll_readable(&*rfile, POLL_INTERVAL) {
                        continue;
                    }
                    match (&*rfile).read(&mut buf) {
                        Ok(n) if n > 0 => sender.send(buf[..n].to_vec()),
                        Ok(_) => return,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!("TAP read failed: {e}");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| HarnessError::io("spawn TAP reader", e))?;
        self.threads.push(reader);
        let wstop = Arc::clone(&self.stop);
        let writer = std::thread::Builder::new()
            .name(format!("tap-{}-out", self.port))
            .spawn(move || {
                while !wstop.load(Ordering::Relaxed) {
                    if let Some(frame) = channel.recv_timeout(POLL_INTERVAL) {
                        if let Err(e) = (&*file).write_all(&frame) {
                            tracing::warn!("TAP write failed: {e}");
                        }
                    }
                }
            })
            .map_err(|e| HarnessError::io("spawn TAP writer", e))?;
        self.threads.push(writer);
        Ok(())
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    /// Sockets created by `f` belong to the namespace and may be used anywhere.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = File::open(&path).map_err(|e| HarnessError::io(format!("open {path}"), e))?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                // SAFETY: `ns` is an open namespace file; setns only changes
                // the network namespace of this (scoped, short-lived) thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(HarnessError::io(
                        format!("setns into {path}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Opens a TCP connection from inside the namespace.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.run_in(|| TcpStream::connect_timeout(&addr, timeout))?
            .map_err(|e| HarnessError::io(format!("connect to {addr} from {}", self.netns), e))
    }

    /// Binds a TCP listener inside the namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.run_in(|| TcpListener::bind(addr))?
            .map_err(|e| HarnessError::io(format!("listen on {addr} in {}", self.netns), e))
    }

    /// Runs a program inside the namespace (`ip netns exec`); fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run_checked(
            Command::new("ip")
                .args(["netns", "exec", &self.netns, program])
                .args(args),
        )
    }
}

impl Drop for NetnsTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The TAP device vanished with its last file descriptor.
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", &self.netns])) {
            tracing::warn!("{e}");
        }
    }
}

/// Runs inside the namespace: creates the TAP device and returns its fd.
fn open_tap() -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| HarnessError::io("open /dev/net/tun", e))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(TAP_NAME.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may update) the ifreq we pass by pointer;
    // `req` lives across the call and `tun` is an open /dev/net/tun.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        return Err(HarnessError::io(
            format!("TUNSETIFF {TAP_NAME}"),
            std::io::Error::last_os_error(),
        ));
    }
    // No IPv6 chatter (router solicitations, DAD) from the test client.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{TAP_NAME}/disable_ipv6"),
        "1",
    );
    Ok(OwnedFd::from(tun))
}
