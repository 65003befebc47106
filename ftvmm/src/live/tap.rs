//! A TAP network device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`, no vnet
//! header): raw Ethernet frames in and out. Also adds an interface to a Linux
//! bridge and brings it up (ioctls `SIOCBRADDIF`, `SIOCSIFFLAGS`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    #[error("TUNSETIFF {name}: {source}")]
    SetIff {
        name: String,
        source: std::io::Error,
    },
    #[error("{what} {name}: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        source: std::io::Error,
    },
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// `struct ifreq` with the union as its two members we use.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    /// `ifr_flags` (short) or `ifr_ifindex` (int), padded to the union size.
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.into()));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }
    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }
    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// An open TAP interface.
pub struct Tap {
    file: File,
    name: String,
}

/// A socket for interface ioctls.
fn ctl_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before wrapping.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn ifreq_ioctl(
    what: &'static str,
    req: libc::c_ulong,
    r: &mut IfReq,
    name: &str,
) -> Result<(), TapError> {
    let err = |source| TapError::Ioctl {
        what,
        name: name.into(),
        source,
    };
    let s = ctl_socket().map_err(err)?;
    // SAFETY: `r` is a properly sized ifreq valid for the call; the kernel reads
    // and writes at most sizeof(struct ifreq) bytes.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), req as _, r as *mut IfReq) };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets IFF_UP on interface `name`.
pub fn set_up(name: &str) -> Result<(), TapError> {
    let mut r = IfReq::new(name)?;
    ifreq_ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut r, name)?;
    let flags = r.short() | libc::IFF_UP as i16;
    r.set_short(flags);
    ifreq_ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut r, name)
}

/// Adds interface `ifname` to bridge `bridge`.
pub fn bridge_add(bridge: &str, ifname: &str) -> Result<(), TapError> {
    let mut r = IfReq::new(ifname)?;
    ifreq_ioctl("SIOCGIFINDEX", libc::SIOCGIFINDEX, &mut r, ifname)?;
    let index = i32::from_ne_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
    let mut b = IfReq::new(bridge)?;
    b.set_int(index);
    ifreq_ioctl("SIOCBRADDIF", SIOCBRADDIF, &mut b, bridge)
}

impl Tap {
    /// Opens (creating if needed) TAP interface `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let mut r = IfReq::new(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        r.set_short((libc::IFF_TAP | libc::IFF_NO_PI) as i16);
        // SAFETY: TUNSETIFF reads/writes one ifreq at a valid pointer; the fd is
        // an open /dev/net/tun.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut r as *mut IfReq) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one frame.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let n = (&self.file).write(frame)?;
        if n != frame.len() {
            return Err(std::io::Error::other(format!(
                "short TAP write {n}/{}",
                frame.len()
            )));
        }
        Ok(())
    }

    /// Reads frames until `stop`, handing each to `deliver`.
    pub fn receive_loop(&self, stop: &AtomicBool, mut deliver: impl FnMut(Vec<u8>)) {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, bounded timeout.
            let rc = unsafe { libc::poll(&mut pfd, 1, 100) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(tap = %self.name, "poll failed: {e}");
                return;
            }
            if rc == 0 {
                continue;
            }
            match (&self.file).read(&mut buf) {
                Ok(0) => return,
                Ok(n) => deliver(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(tap = %self.name, "read failed: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(matches!(IfReq::new(""), Err(TapError::Name(_))));
        assert!(matches!(
            IfReq::new("a-very-long-name0"),
            Err(TapError::Name(_))
        ));
        let r = IfReq::new("ft-kv").unwrap();
        assert_eq!(&r.name[..6], b"ft-kv\0");
        assert_eq!(std::mem::size_of::<IfReq>(), 40, "sizeof(struct ifreq)");
    }
}
