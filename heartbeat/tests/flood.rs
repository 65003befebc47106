//! Two real daemons over loopback (127.77.5.x) keep seeing each other while a
//! third party floods both with plausible-header garbage and replays of
//! authentic packets at a high rate: from host-c's own configured address
//! (the third host of the config, never started: its socket is the test's)
//! and from a stranger's address. Nobody is falsely suspected, every kind of
//! drop is counted, and the X25519 work stays within the rate limit.
//! Nothing asserts speed; the flood is paced, and its rate is printed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heartbeat::gate;
use heartbeat::packet::Header;
use heartbeat::{Daemon, Node, NodeConfig};

use common::wait_for;

const PORT: u16 = 17400;
const INTERVAL_MS: u64 = 100;
const TIMEOUT_MS: u64 = 1500;
/// How long the flood lasts: several failure timeouts.
const FLOOD: Duration = Duration::from_millis(4 * TIMEOUT_MS);
/// Datagrams per millisecond to each daemon (20,000 per second).
const PER_MS: usize = 20;

fn secret(i: usize) -> [u8; 32] {
    [0x50 + i as u8; 32]
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 77, 5, i as u8 + 1], PORT))
}

fn config(i: usize) -> NodeConfig {
    common::hosts::config(i, 3, secret, addr, INTERVAL_MS, TIMEOUT_MS)
}

/// Authentic packets host `from` seals for host `to` (a boot of its own:
/// what a recording of that host's traffic holds).
fn authentic(from: usize, to: usize, n: usize) -> Vec<Vec<u8>> {
    let mut node = Node::new(config(from), 0x5eed + from as u64, 0);
    (0..n as u64)
        .map(|t| {
            node.heartbeats(t * INTERVAL_MS)
                .into_iter()
                .find(|(a, _)| *a == addr(to))
                .unwrap()
                .1
                .unwrap()
        })
        .collect()
}

/// A plausible header (magic, version, `sender`, `receiver`) and garbage.
fn plausible(sender: u32, receiver: u32, salt: u8) -> Vec<u8> {
    let mut p = Header { sender, receiver }.encode().to_vec();
    p.extend((0..140u8).map(|i| i.wrapping_mul(37) ^ salt));
    p
}

/// Every datagram the flood sends to host `to` (0 or 1), with its socket:
/// true for host-c's address, false for the stranger's.
fn flood_for(to: usize) -> Vec<(bool, Vec<u8>)> {
    let other = 1 - to;
    let (to_id, other_id) = (to as u32 + 1, other as u32 + 1);
    let mut out = Vec::new();
    for salt in 0..4u8 {
        // Claims host-c, from host-c's address: reaches the rate limit.
        out.push((true, plausible(3, to_id, salt)));
        // Claims the real peer, from host-c's or a stranger's address.
        out.push((true, plausible(other_id, to_id, salt)));
        out.push((false, plausible(other_id, to_id, salt)));
        // Not even a header.
        out.push((false, vec![salt; 90]));
    }
    // Replays: the real peer's packets from the wrong addresses, and host-c's
    // own authentic packets from host-c's address, over and over.
    for p in authentic(other, to, 4) {
        out.push((true, p.clone()));
        out.push((false, p));
    }
    for p in authentic(2, to, 4) {
        out.push((true, p));
    }
    out
}

fn sees(d: &Daemon, host: &str) -> bool {
    d.handle().peers().iter().any(|p| p.host == host && p.alive)
}

fn peer<'a>(s: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == host)
        .unwrap()
}

/// Paces the flood to `PER_MS` datagrams per ms to each daemon until `stop`.
fn flood(stop: &AtomicBool, sent: &AtomicU64) {
    let c_sock = UdpSocket::bind(addr(2)).unwrap();
    let stranger = UdpSocket::bind(SocketAddr::from(([127, 77, 5, 9], PORT))).unwrap();
    let lists = [flood_for(0), flood_for(1)];
    let start = Instant::now();
    let mut i = 0usize;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let due = (start.elapsed().as_millis() as u64 + 1) * PER_MS as u64;
        while n < due {
            for (to, list) in lists.iter().enumerate() {
                let (from_c, p) = &list[i % list.len()];
                let sock = if *from_c { &c_sock } else { &stranger };
                // A full socket buffer is what a flood is; keep going.
                let _ = sock.send_to(p, addr(to));
            }
            i += 1;
            n += 1;
        }
        sent.store(2 * n, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn two_daemons_keep_seeing_each_other_through_a_flood_of_garbage_and_replays() {
    let ds = [
        Daemon::start(config(0)).unwrap(),
        Daemon::start(config(1)).unwrap(),
    ];
    wait_for("a and b see each other", || {
        sees(&ds[0], "host-b") && sees(&ds[1], "host-a")
    });

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || flood(&stop, &sent))
    };
    let start = Instant::now();
    let mut lapses = Vec::new();
    while start.elapsed() < FLOOD {
        for (d, other) in [(&ds[0], "host-b"), (&ds[1], "host-a")] {
            if !sees(d, other) {
                lapses.push(format!("at {:?} {other} not alive", start.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    flooder.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood: {sent} datagrams in {secs:.1} s ({:.0}/s to the two daemons)",
        sent as f64 / secs
    );

    for (d, me, other) in [(&ds[0], "host-a", "host-b"), (&ds[1], "host-b", "host-a")] {
        let s = d.handle().status();
        eprintln!(
            "{me}: noise_opens {} dropped {}",
            s["noise_opens"], s["dropped"]
        );
        assert_eq!(
            peer(&s, other)["suspicions"],
            0,
            "{me}: {}",
            peer(&s, other)
        );
        assert_eq!(peer(&s, other)["state"], "up", "{me}");
        assert_ne!(
            peer(&s, "host-c")["state"],
            "up",
            "{me}: the flood kept c alive"
        );
        for reason in ["wrong_source", "rate_limited", "malformed"] {
            assert!(s["dropped"][reason].as_u64().unwrap() > 0, "{me}: {reason}");
        }
        assert!(
            peer(&s, "host-c")["dropped"]["rate_limited"]
                .as_u64()
                .unwrap()
                > 0
        );
        // Each open took a token of its source: bounded whatever arrived.
        let bound = 2 * gate::max_opens(INTERVAL_MS, s["uptime_ms"].as_u64().unwrap());
        let opens = s["noise_opens"].as_u64().unwrap();
        assert!(opens <= bound, "{me}: {opens} opens > {bound}");
    }
    assert!(lapses.is_empty(), "false suspicions: {lapses:?}");
}
