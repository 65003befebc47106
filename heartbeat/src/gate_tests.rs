//! The gate on its own: what is refused before any X25519 (counted by
//! [`Gate::opens`]), and the per-source rate limit on an explicit clock.

use super::*;
use crate::node::Node;
use crate::packet::Entry;
use crate::test_hosts;

const INTERVAL_MS: u64 = 100;

fn secret(i: usize) -> [u8; 32] {
    [0x10 + i as u8; 32]
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i as u8 + 1], 7400))
}

/// Host `i` (id i+1) of a 3-host cluster on 192.0.2.x.
fn config(i: usize) -> NodeConfig {
    test_hosts::config(i, 3, secret, addr, INTERVAL_MS, 1000)
}

/// An authentic packet host `from` (0-based) seals for host `to`.
fn sealed(from: usize, to: usize, seq: u64) -> Vec<u8> {
    let payload = Payload {
        sender: from as u32 + 1,
        boot_id: 0xb007,
        seq,
        view: vec![Entry {
            host: to as u32 + 1,
            alive: true,
            heard: None,
        }],
        vm: None,
    };
    let h = Header {
        sender: from as u32 + 1,
        receiver: to as u32 + 1,
    };
    let to_pub = config_schema::keys::host_public_key(&secret(to));
    packet::seal(h, &payload, &secret(from), &to_pub).unwrap()
}

/// A packet with a plausible header (magic, version, a peer as sender, us as
/// receiver) and a garbage body: only X25519 can tell it is not genuine.
fn plausible(sender: u32, receiver: u32, salt: u8) -> Vec<u8> {
    let mut p = Header { sender, receiver }.encode().to_vec();
    p.extend((0..120u8).map(|i| i.wrapping_mul(31) ^ salt));
    p
}

fn reason(a: Admitted) -> DropReason {
    match a {
        Admitted::Rejected(r) => r.reason,
        other => panic!("expected a drop, got {other:?}"),
    }
}

#[test]
fn the_source_is_checked_before_any_x25519() {
    let mut gate = Gate::new(&config(0), 0);
    let from_b = sealed(1, 0, 1);
    let stranger: SocketAddr = "192.0.2.99:7400".parse().unwrap();
    let b_other_port = SocketAddr::new(addr(1).ip(), 7401);
    // An authentic packet of host-b, from anywhere but host-b's FT address
    // and port: host-c's address, a stranger, b's address on another port.
    for src in [addr(2), stranger, b_other_port] {
        assert_eq!(
            reason(gate.admit(10, src, &from_b)),
            DropReason::WrongSource
        );
    }
    // Plausible garbage naming host-c, from host-b's address.
    let c_garbage = plausible(3, 1, 0);
    assert_eq!(
        reason(gate.admit(10, addr(1), &c_garbage)),
        DropReason::WrongSource
    );
    // A sender that is not configured, a receiver that is not us.
    assert_eq!(
        reason(gate.admit(10, stranger, &plausible(9, 1, 0))),
        DropReason::UnknownSender
    );
    assert_eq!(
        reason(gate.admit(10, addr(1), &plausible(2, 3, 0))),
        DropReason::NotForUs
    );
    assert_eq!(gate.opens(), 0, "nothing above reached X25519");
    // The same authentic packet from host-b's address opens.
    assert!(matches!(
        gate.admit(10, addr(1), &from_b),
        Admitted::Opened { sender: 2, .. }
    ));
    assert_eq!(gate.opens(), 1);
}

#[test]
fn wrong_source_drops_are_counted_per_peer_and_change_nothing() {
    let cfg = config(0);
    let mut gate = Gate::new(&cfg, 0);
    let mut node = Node::new(cfg, 0xa, 0);
    let before = node.view().peer_views(10);
    for seq in 1..=5 {
        let r = node.receive(&mut gate, 10, addr(2), &sealed(1, 0, seq));
        assert!(matches!(
            r,
            crate::node::Received::Dropped {
                reason: DropReason::WrongSource,
                ..
            }
        ));
    }
    assert_eq!(node.view().peer_views(10), before);
    let s = node.view().status(10);
    assert_eq!(s["dropped"]["wrong_source"], 5);
    assert_eq!(s["peers"][0]["name"], "host-b");
    assert_eq!(s["peers"][0]["dropped"]["wrong_source"], 5);
    assert_eq!(gate.opens(), 0);
}

#[test]
fn a_flood_from_one_source_costs_at_most_its_rate_limit_in_x25519() {
    let mut gate = Gate::new(&config(0), 0);
    // 10,000 plausible packets from host-c's own address in the same ms.
    let mut limited = 0;
    for i in 0..10_000u32 {
        match gate.admit(5, addr(2), &plausible(3, 1, i as u8)) {
            Admitted::Rejected(r) if r.reason == DropReason::RateLimited => limited += 1,
            Admitted::Rejected(r) => assert_eq!(r.reason, DropReason::Forged),
            other => panic!("garbage opened: {other:?}"),
        }
    }
    assert_eq!(gate.opens(), BURST, "the burst, then nothing");
    assert_eq!(limited, 10_000 - BURST);
    // Host-b's genuine heartbeats have their own bucket.
    assert!(matches!(
        gate.admit(5, addr(1), &sealed(1, 0, 1)),
        Admitted::Opened { .. }
    ));
    // Ten more seconds of one plausible packet per ms from host-c.
    let opens_before = gate.opens();
    for t in 6..10_006u64 {
        let _ = gate.admit(t, addr(2), &plausible(3, 1, t as u8));
    }
    let c_opens = gate.opens() - opens_before;
    assert!(
        c_opens <= max_opens(INTERVAL_MS, 10_000),
        "{c_opens} opens in 10 s"
    );
    assert!(c_opens >= HEADROOM * 10_000 / INTERVAL_MS - 1, "{c_opens}");
}

#[test]
fn a_genuine_peer_is_never_rate_limited_even_when_its_packets_bunch() {
    let mut gate = Gate::new(&config(0), 0);
    let mut seq = 0;
    // Steady: one per interval for a minute.
    for t in (0..60_000).step_by(INTERVAL_MS as usize) {
        seq += 1;
        let a = gate.admit(t, addr(1), &sealed(1, 0, seq));
        assert!(matches!(a, Admitted::Opened { .. }), "at {t}: {a:?}");
    }
    // A stall of 2 s, then its queued packets and the next one arrive at once,
    // and a round twice per interval (the sender catching up) for a while.
    for k in 0..(BURST + 20) {
        seq += 1;
        let t = 62_000
            + if k < BURST {
                0
            } else {
                (k + 1 - BURST) * INTERVAL_MS / 2
            };
        let a = gate.admit(t, addr(1), &sealed(1, 0, seq));
        assert!(matches!(a, Admitted::Opened { .. }), "packet {k}: {a:?}");
    }
}

#[test]
fn bucket_arithmetic_is_exact() {
    let mut b = Bucket::full(INTERVAL_MS, 1000);
    for _ in 0..BURST {
        assert!(b.take(INTERVAL_MS, 1000));
    }
    assert!(!b.take(INTERVAL_MS, 1000));
    // HEADROOM tokens per interval: one every INTERVAL_MS / HEADROOM ms.
    let step = INTERVAL_MS / HEADROOM;
    assert!(!b.take(INTERVAL_MS, 1000 + step - 1));
    assert!(b.take(INTERVAL_MS, 1000 + step));
    // The clock going backwards gains nothing.
    assert!(!b.take(INTERVAL_MS, 10));
    // Long idle: full again, not more.
    for _ in 0..BURST {
        assert!(b.take(INTERVAL_MS, 1_000_000));
    }
    assert!(!b.take(INTERVAL_MS, 1_000_000));
}
