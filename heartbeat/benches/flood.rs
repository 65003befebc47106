//! `cargo bench -p heartbeat --bench flood`: what one bogus datagram costs the
//! receive path, before (every plausible header went to the Noise open, under
//! the node lock) and after (source check and rate limit first, the open
//! outside the lock), side by side in one run. Two tables:
//!
//! 1. In process, no sockets: CPU per datagram of the old path (header parse,
//!    peer lookup, `packet::open` and the drop count under the lock, exactly
//!    what `Node::receive` did before the gate) and of the new one
//!    (`Gate::admit`, then `Node::on_admitted` under the lock), per kind.
//! 2. Over loopback UDP: a sender floods, unpaced, for `--secs` per kind; the
//!    receiver is either the real daemon's receive thread (new) or a thread
//!    running the old path on the same socket address (old). Columns: sent/s,
//!    processed/s, receiver CPU per processed datagram (its thread's
//!    `schedstat`, so other load on the machine does not count).
//!
//! CPU times are the measuring thread's own (`CLOCK_THREAD_CPUTIME_ID`) or,
//! for a receiver thread, its `/proc/self/task/<tid>/schedstat` run time.

#[path = "../src/test_hosts.rs"]
mod test_hosts;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heartbeat::gate::{Admitted, Gate, Rejected};
use heartbeat::packet::{self, Header, PacketError, MAX_PACKET};
use heartbeat::{Daemon, DropReason, Node, NodeConfig};

const INTERVAL_MS: u64 = 100;

fn secret(i: u8) -> [u8; 32] {
    [0x70 + i; 32]
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 77, 90, i + 1], 17490))
}

fn stranger() -> SocketAddr {
    SocketAddr::from(([127, 77, 90, 9], 17490))
}

/// host-a (id 1) with one peer, host-b (id 2), on 127.77.90.x.
fn config() -> NodeConfig {
    test_hosts::config(
        0,
        2,
        |i| secret(i as u8),
        |i| addr(i as u8),
        INTERVAL_MS,
        1000,
    )
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn cpu_of(path: &str) -> Duration {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ns = s.split_whitespace().next().and_then(|n| n.parse().ok());
    Duration::from_nanos(ns.unwrap_or_else(|| panic!("{path}: no run time in {s:?}")))
}

/// The schedstat path of this process's thread named `name` (a new thread
/// names itself once it runs: look for a while).
fn thread_named(name: &str) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        for e in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let dir = e.expect("task entry").path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() == name {
                return dir.join("schedstat").to_string_lossy().into_owned();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no thread named {name} after 10 s");
}

/// One kind of bogus datagram: its name, the source it comes from, the bytes.
struct Kind {
    name: &'static str,
    src: SocketAddr,
    bytes: Vec<u8>,
    reason: DropReason,
}

fn kinds() -> Vec<Kind> {
    let mut plausible = Header {
        sender: 2,
        receiver: 1,
    }
    .encode()
    .to_vec();
    plausible.extend((0..120u8).map(|i| i.wrapping_mul(37)));
    let a_pub = config_schema::keys::host_public_key(&secret(0));
    let authentic = test_hosts::b_to_a(1, &secret(1), &a_pub);
    vec![
        Kind {
            name: "plausible header, wrong source",
            src: stranger(),
            bytes: plausible.clone(),
            reason: DropReason::WrongSource,
        },
        Kind {
            name: "authentic replay, wrong source",
            src: stranger(),
            bytes: authentic,
            reason: DropReason::WrongSource,
        },
        Kind {
            name: "plausible header, over the rate limit",
            src: addr(1),
            bytes: plausible,
            reason: DropReason::RateLimited,
        },
        Kind {
            name: "no header (garbage)",
            src: stranger(),
            bytes: vec![0x55; 120],
            reason: DropReason::Malformed,
        },
    ]
}

/// The receive path before the gate: parse, look up, open, count (all under
/// the node lock, as `Node::receive` was called).
fn old_path(node: &Mutex<Node>, cfg: &NodeConfig, now_ms: u64, datagram: &[u8]) {
    let mut node = node.lock().expect("node lock");
    let drop = |reason, peer: Option<u32>, detail: String| {
        Admitted::Rejected(Rejected {
            reason,
            peer,
            detail,
        })
    };
    let admitted = match Header::parse(datagram) {
        Err(e) => drop(DropReason::Malformed, None, e.to_string()),
        Ok((h, _)) => match cfg.peers.iter().find(|p| p.id == h.sender) {
            None => drop(
                DropReason::UnknownSender,
                None,
                format!("header names host id {}", h.sender),
            ),
            Some(p) => match packet::open(datagram, &cfg.private_key, &p.public_key) {
                Ok((_, payload)) => Admitted::Opened {
                    sender: p.id,
                    payload,
                },
                Err(e @ PacketError::Auth) => drop(DropReason::Forged, Some(p.id), e.to_string()),
                Err(e) => drop(DropReason::Malformed, Some(p.id), e.to_string()),
            },
        },
    };
    node.on_admitted(now_ms, admitted);
}

fn new_path(node: &Mutex<Node>, gate: &mut Gate, now: u64, src: SocketAddr, d: &[u8]) {
    let admitted = gate.admit(now, src, d);
    node.lock().expect("node lock").on_admitted(now, admitted);
}

/// CPU per call of `f`, calling it in batches for at least 300 ms of CPU;
/// also returns the number of calls.
fn per_packet(mut f: impl FnMut()) -> (Duration, u64) {
    let t0 = thread_cpu();
    let mut n = 0u64;
    while thread_cpu() - t0 < Duration::from_millis(300) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    ((thread_cpu() - t0) / n as u32, n)
}

fn in_process() {
    let cfg = config();
    println!("\n1. CPU per bogus datagram, in process (no sockets)");
    println!(
        "{:<40} {:>14} {:>14} {:>9}",
        "kind", "old path", "new path", "old/new"
    );
    for k in kinds() {
        let node = Mutex::new(Node::new(cfg.clone(), 1, 0));
        let mut gate = Gate::new(&cfg, 0);
        // Empty the bucket first (a flood in progress), at a frozen clock.
        for _ in 0..64 {
            gate.admit(0, addr(1), &k.bytes);
        }
        let (old, _) = per_packet(|| old_path(&node, &cfg, 0, &k.bytes));
        let before = node
            .lock()
            .expect("node lock")
            .view()
            .dropped()
            .get(k.reason);
        let (new, n) = per_packet(|| new_path(&node, &mut gate, 0, k.src, &k.bytes));
        let got = node
            .lock()
            .expect("node lock")
            .view()
            .dropped()
            .get(k.reason)
            - before;
        assert_eq!(
            got, n,
            "{}: every datagram counted as {:?}",
            k.name, k.reason
        );
        println!(
            "{:<40} {:>11.2} µs {:>11.3} µs {:>8.1}×",
            k.name,
            old.as_secs_f64() * 1e6,
            new.as_secs_f64() * 1e6,
            old.as_secs_f64() / new.as_secs_f64()
        );
    }
}

/// Floods `to` with `k` unpaced for `secs`; returns datagrams sent.
fn flood(k: &Kind, to: SocketAddr, secs: f64) -> u64 {
    let sock = UdpSocket::bind(k.src).expect("bind the flood's source");
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut sent = 0;
    while Instant::now() < end {
        for _ in 0..256 {
            if sock.send_to(&k.bytes, to).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

/// The old path on a real socket; counts what it processed.
fn old_receiver(stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let sock = UdpSocket::bind(addr(0)).expect("bind host-a's address");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    std::thread::Builder::new()
        .name("old-recv".into())
        .spawn(move || {
            let cfg = config();
            let node = Mutex::new(Node::new(cfg.clone(), 1, 0));
            let mut buf = vec![0u8; MAX_PACKET + 1];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    old_path(&node, &cfg, 0, &buf[..n]);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .expect("spawn")
}

/// Waits until `count` stops moving (the receiver drained its socket).
fn settled(count: impl Fn() -> u64) -> u64 {
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

fn row(name: &str, path: &str, secs: f64, sent: u64, done: u64, cpu: Duration) {
    let per = cpu.as_secs_f64() * 1e6 / done.max(1) as f64;
    println!(
        "{name:<40} {path:<4} {:>10.0} {:>12.0} {:>10.2} µs",
        sent as f64 / secs,
        done as f64 / secs,
        per
    );
}

fn over_udp(secs: f64) {
    println!("\n2. Over loopback UDP, an unpaced flood of {secs} s per kind");
    println!(
        "{:<40} {:<4} {:>10} {:>12} {:>13}",
        "kind", "path", "sent/s", "processed/s", "CPU/datagram"
    );
    for k in kinds() {
        // Old: the previous receive path on host-a's address.
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let t = old_receiver(Arc::clone(&stop), Arc::clone(&done));
        let stat = thread_named("old-recv");
        let c0 = cpu_of(&stat);
        let sent = flood(&k, addr(0), secs);
        let n = settled(|| done.load(Ordering::Relaxed));
        row(k.name, "old", secs, sent, n, cpu_of(&stat) - c0);
        stop.store(true, Ordering::SeqCst);
        t.join().expect("old receiver");

        // New: the daemon itself.
        let d = Daemon::start(config()).expect("start the daemon on 127.77.90.1");
        let stat = thread_named("heartbeat-recv");
        let counted = || {
            d.handle().status()["dropped"][k.reason.as_str()]
                .as_u64()
                .unwrap_or(0)
        };
        let (c0, n0) = (cpu_of(&stat), counted());
        let sent = flood(&k, addr(0), secs);
        let n = settled(counted) - n0;
        row(k.name, "new", secs, sent, n, cpu_of(&stat) - c0);
        d.stop();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the only option of ours is `--secs N`.
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse().expect("--secs takes a number of seconds"))
        .unwrap_or(2.0);
    println!("heartbeat receive path: bogus datagrams before and after the gate");
    in_process();
    over_udp(secs);
}
