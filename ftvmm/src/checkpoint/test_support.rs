//! What the checkpoint tests share: the two hosts' channel identities, a
//! Primary's and a Secondary's channel over TCP loopback (directly, or
//! through a proxy that slows the Primary-to-Secondary direction, or one
//! that a test freezes as a partition would), and the take-over plan of a
//! Secondary running the counter guest.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::driver::TakeOverPlan;
use super::gate::GateConfig;
use super::gated::GatedBackend;
use super::secondary::Rebuild;
use crate::linux::tests::Sink;
use crate::lockstep::channel::{self, Channel, Identity};
use crate::lockstep::grant::HostGrant;

/// Handshake (connect and accept) timeout of the channels made here.
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);
/// Read timeout of both sides' receivers of [`channel_pair`] (how soon
/// they see `stop`).
pub(super) const POLL: Duration = Duration::from_millis(50);
/// How long the slow proxy waits after passing each chunk.
const PACE: Duration = Duration::from_millis(62);

/// The Primary's (host-a) and the Secondary's (host-b) channel keys.
pub(super) fn identities() -> (Identity, Identity) {
    (
        Identity {
            private_key: [0x31; 32],
        },
        Identity {
            private_key: [0x32; 32],
        },
    )
}

/// A Primary's and a Secondary's channel over TCP loopback, after the
/// Noise handshake with each other's keys; both receivers time out after
/// [`POLL`].
pub(super) fn channel_pair() -> (Channel, Channel) {
    let (p, s) = channel_pair_via(|to| to);
    p.set_read_timeout(Some(POLL)).unwrap();
    s.set_read_timeout(Some(POLL)).unwrap();
    (p, s)
}

/// [`channel_pair`] through a proxy that passes `chunk` bytes every 62 ms
/// from the Primary to the Secondary and the other way as it comes; no
/// read timeouts set.
pub(super) fn slow_channel_pair(chunk: usize) -> (Channel, Channel) {
    channel_pair_via(|to| slow_proxy(to, chunk))
}

/// The Secondary listens; the Primary connects to `via(its address)`.
fn channel_pair_via(via: impl FnOnce(SocketAddr) -> SocketAddr) -> (Channel, Channel) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = via(listener.local_addr().unwrap());
    let (p_id, s_id) = identities();
    let (p_pub, s_pub) = (p_id.public_key(), s_id.public_key());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let allowed = move |k: &[u8; 32]| (*k == p_pub).then(|| "host-a".to_string());
        channel::accept(stream, &s_id, &allowed, TIMEOUT).unwrap()
    });
    let p = channel::connect(addr, &p_id, &s_pub, "host-b", TIMEOUT).unwrap();
    (p, server.join().unwrap())
}

/// [`channel_pair`] through a proxy that forwards both ways until the
/// returned flag is set, then reads nothing more from either side and
/// keeps both connections open: a partition as TCP sees it. Its sockets'
/// receive buffers are small (4 KiB), so a sender behind it blocks within
/// a few epochs instead of filling megabytes of loopback buffers first.
pub(super) fn frozen_channel_pair() -> (Channel, Channel, Arc<AtomicBool>) {
    let frozen = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&frozen);
    let (p, s) = channel_pair_via(move |to| freezable_proxy(to, f));
    p.set_read_timeout(Some(POLL)).unwrap();
    s.set_read_timeout(Some(POLL)).unwrap();
    (p, s, frozen)
}

/// Sets the receive buffer of `socket` (a listener's is inherited by the
/// connections it accepts, and sets the window they advertise) to `bytes`.
fn small_receive_buffer(socket: &impl AsRawFd, bytes: libc::c_int) {
    // SAFETY: the fd is `socket`'s, open for the call; the option value is
    // a c_int that lives across the call, and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

/// Copies `from` to `to` in small reads until `frozen` (then reads
/// nothing more, holding both open) or either side ends.
fn forward_until_frozen(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    from.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// A proxy for one connection to `to` that stops forwarding once
/// `frozen` is set ([`frozen_channel_pair`]). Returns its address.
fn freezable_proxy(to: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let proxy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    small_receive_buffer(&proxy, 4096);
    let via = proxy.local_addr().unwrap();
    std::thread::spawn(move || {
        let (from_p, _) = proxy.accept().unwrap();
        let to_s = TcpStream::connect(to).unwrap();
        let (back_s, back_p) = (to_s.try_clone().unwrap(), from_p.try_clone().unwrap());
        let f2 = Arc::clone(&frozen);
        std::thread::spawn(move || forward_until_frozen(back_s, back_p, f2));
        forward_until_frozen(from_p, to_s, frozen);
    });
    via
}

/// A proxy for one connection to `to`: `chunk` bytes every [`PACE`]
/// towards `to`, the other way as it comes. Returns its address.
fn slow_proxy(to: SocketAddr, chunk: usize) -> SocketAddr {
    let proxy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let via = proxy.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut from_p, _) = proxy.accept().unwrap();
        let mut to_s = TcpStream::connect(to).unwrap();
        let (mut back_s, mut back_p) = (to_s.try_clone().unwrap(), from_p.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut back_s, &mut back_p));
        let mut buf = vec![0u8; chunk];
        while let Ok(n @ 1..) = from_p.read(&mut buf) {
            if to_s.write_all(&buf[..n]).is_err() {
                break;
            }
            std::thread::sleep(PACE);
        }
        let _ = to_s.shutdown(std::net::Shutdown::Both);
    });
    via
}

/// A Secondary's take-over plan under `grant`: no gate limits, 5 ms
/// epochs, and a rebuild to the two-vCPU counter guest with no devices.
pub(super) fn plan(grant: Arc<HostGrant>) -> TakeOverPlan {
    TakeOverPlan {
        grant,
        gate: GateConfig {
            max_dirty_pages: u64::MAX,
            max_write_bytes: u64::MAX,
        },
        epoch: Duration::from_millis(5),
        delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
        frame_out: None,
        rebuild: Box::new(|outputs| {
            Ok(Rebuild {
                vcpus: 2,
                virtio: vec![],
                console: Box::new(Sink::default()),
                backend: Box::new(GatedBackend::new(outputs, None, None, 0, Box::new(|_| {}))),
                advance_ns: 0,
            })
        }),
        announce: Vec::new(),
        storage_cut: Arc::new(|_| false),
    }
}
