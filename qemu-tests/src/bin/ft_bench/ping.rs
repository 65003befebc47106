//! ICMP echo from a test client's network namespace (a raw socket: the
//! machine has no `ping`, and the harness runs as root anyway).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use qemu_tests::NetnsTap;

use super::stats::{summary, Summary};

/// Bytes of payload after the 8-byte ICMP header.
const PAYLOAD: usize = 56;

/// What `count` echoes to one address gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ping {
    pub target: String,
    pub sent: usize,
    pub lost: usize,
    pub rtt: Option<Summary>,
}

/// Sends `count` echo requests to `dst` from `tap`'s namespace, `gap` apart,
/// waiting up to `wait` for each reply.
pub fn ping(
    tap: &NetnsTap,
    dst: Ipv4Addr,
    count: usize,
    gap: Duration,
    wait: Duration,
) -> Result<Ping> {
    let sock = tap
        .run_in(raw_icmp_socket)
        .context("enter the client's namespace")??;
    set_timeout(&sock, Duration::from_millis(50))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut rtts = Vec::new();
    for seq in 0..count as u16 {
        let packet = echo_request(id, seq);
        let sent = Instant::now();
        send_to(&sock, &packet, dst)?;
        while sent.elapsed() < wait {
            let mut buf = [0u8; 1500];
            let Some(n) = recv(&sock, &mut buf)? else {
                continue;
            };
            if is_reply(&buf[..n], id, seq) {
                rtts.push(sent.elapsed());
                break;
            }
        }
        std::thread::sleep(gap);
    }
    Ok(Ping {
        target: dst.to_string(),
        sent: count,
        lost: count - rtts.len(),
        rtt: summary(&rtts),
    })
}

fn raw_icmp_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_timeout(sock: &OwnedFd, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval that outlives the call; the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn send_to(sock: &OwnedFd, packet: &[u8], dst: Ipv4Addr) -> Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` and `addr` are valid for the lengths passed and outlive the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(anyhow!(
            "ICMP echo to {dst}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One datagram (IP header included), or `None` on the receive timeout.
fn recv(sock: &OwnedFd, buf: &mut [u8]) -> Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock
        | std::io::ErrorKind::TimedOut
        | std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(anyhow!("ICMP receive: {e}")),
    }
}

/// An ICMP echo request with its checksum.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..PAYLOAD).map(|i| i as u8));
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether an IP datagram is the echo reply to (`id`, `seq`).
pub fn is_reply(ip: &[u8], id: u16, seq: u16) -> bool {
    let Some(&vihl) = ip.first() else {
        return false;
    };
    let Some(icmp) = ip.get(usize::from(vihl & 0x0f) * 4..) else {
        return false;
    };
    icmp.len() >= 8
        && icmp[0] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero_and_replies_match() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p.len(), 8 + PAYLOAD);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to 0");
        // The RFC 1071 example: 0001 f203 f4f5 f6f7 sums to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let mut reply = vec![0x45u8; 1];
        reply.extend([0u8; 19]);
        let mut icmp = p.clone();
        icmp[0] = 0;
        reply.extend(&icmp);
        assert!(is_reply(&reply, 0x1234, 7));
        assert!(!is_reply(&reply, 0x1234, 8));
        assert!(!is_reply(&reply, 0x1235, 7));
        let mut request = reply.clone();
        request[20] = 8;
        assert!(
            !is_reply(&request, 0x1234, 7),
            "our own request is not a reply"
        );
    }
}
