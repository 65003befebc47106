//! The daemon's witness thread: pings the VM witness (`cluster.vm_witness`,
//! [`crate::witness`]) from this host's VM-network address, one echo
//! request every heartbeat interval, and takes the replies into the node.
//!
//! A raw ICMP socket (root, `CAP_NET_RAW`: the appliance runs heartbeat as
//! root) bound to the VM-network address: the kernel sends from that
//! address, through the VM bridge (validation keeps the witness inside
//! every host's VM subnet, and init adds no route), and delivers to the
//! socket every ICMP packet for that address; [`crate::witness::Witness`]
//! keeps the witness's echo replies to this daemon's probes and ignores
//! the rest. The bind is retried every second until init has put the
//! address up, as the VM-network heartbeat socket's is.

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::{say_membership, Shared, RECV_POLL};

/// Largest datagram read (an echo reply of ours is 20–60 + 24 bytes; a
/// bigger packet is someone else's and is read truncated, then ignored).
const BUF: usize = 1_500;

/// Opens the raw ICMP socket bound to `ip` (reads time out after `RECV_POLL`).
fn open(ip: Ipv4Addr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    s.set_read_timeout(Some(RECV_POLL))?;
    Ok(s)
}

/// Pings `witness` from `ip` until stop (module doc).
pub(super) fn witness_loop(s: &Shared, ip: Ipv4Addr, witness: Ipv4Addr) {
    let mut said = false;
    let socket = loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        match open(ip) {
            Ok(sock) => break sock,
            Err(e) => {
                let why = format!("cannot open a raw ICMP socket on {ip}: {e}");
                if !said {
                    println!("heartbeat: VM witness {witness}: {why}; retrying every second");
                    said = true;
                }
                if let Some(w) = s.node().witness_mut() {
                    w.send_failed(why);
                }
                for _ in 0..5 {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(RECV_POLL);
                }
            }
        }
    };
    println!("heartbeat: VM witness {witness}: pinged from {ip} every heartbeat interval");
    let to = SocketAddr::V4(SocketAddrV4::new(witness, 0)).into();
    let mut buf = [MaybeUninit::<u8>::uninit(); BUF];
    let mut next = Instant::now();
    while !s.stop.load(Ordering::SeqCst) {
        if Instant::now() >= next {
            // The live interval (`ftctl apply`), read every round.
            next = Instant::now() + Duration::from_millis(s.timing.interval_ms());
            let probe = {
                let mut node = s.node();
                let now = s.now_ms();
                node.witness_mut().map(|w| w.next_probe(now))
            };
            let Some(probe) = probe else { return };
            let sent = socket.send_to(&probe, &to);
            let mut node = s.node();
            let now = s.now_ms();
            let timeout = node.config().failure_timeout_ms;
            if let Some(w) = node.witness_mut() {
                match sent {
                    Ok(_) => w.sent_ok(),
                    // A cut or unplugged VM NIC: that is what the witness
                    // is there to show (not hearing it); status says why.
                    Err(e) => w.send_failed(format!("sending to {witness}: {e}")),
                }
                if let Some(line) = w.transition(now, timeout) {
                    drop(node);
                    say_membership(&line);
                }
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        if socket
            .set_read_timeout(Some(wait.clamp(Duration::from_millis(1), RECV_POLL)))
            .is_err()
        {
            std::thread::sleep(wait.min(RECV_POLL));
            continue;
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                // SAFETY: `recv` initialised the first `n` bytes of `buf`
                // (socket2's contract), and `MaybeUninit<u8>` has the
                // layout of `u8`.
                let got = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                let mut node = s.node();
                let now = s.now_ms();
                let timeout = node.config().failure_timeout_ms;
                if let Some(w) = node.witness_mut() {
                    let _ = w.on_datagram(got, now);
                    if let Some(line) = w.transition(now, timeout) {
                        drop(node);
                        say_membership(&line);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!("witness: receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
