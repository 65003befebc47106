//! The packet path through a node: the example cluster with its dev keys,
//! every kind of bad packet dropped, counted, and harmless to the view.

use super::*;
use crate::test_hosts::example_runtime;

/// A node with its gate, receiving from the example cluster's addresses.
struct Host {
    node: Node,
    gate: Gate,
}

impl Host {
    fn config(&self) -> &NodeConfig {
        self.node.config()
    }
    fn view(&self) -> &Membership {
        self.node.view()
    }
    fn heartbeats(&mut self, now: u64) -> Vec<(SocketAddr, Result<Vec<u8>, PacketError>)> {
        self.node.heartbeats(now)
    }
    /// A datagram from host `from`'s FT address.
    fn receive_from(&mut self, from: &str, now: u64, datagram: &[u8]) -> Received {
        let src = self
            .config()
            .peers
            .iter()
            .find(|p| p.name == from)
            .map(|p| p.addr)
            .unwrap_or_else(|| "192.0.2.99:7400".parse().unwrap());
        self.node.receive(&mut self.gate, now, src, datagram)
    }
    /// A datagram from host-b's address (the sender of most test packets).
    fn receive(&mut self, now: u64, datagram: &[u8]) -> Received {
        self.receive_from("host-b", now, datagram)
    }
}

fn node(host: &str, boot: u64) -> Host {
    let cfg = NodeConfig::from_runtime(&example_runtime(host), PORT).unwrap();
    Host {
        gate: Gate::new(&cfg, 0),
        node: Node::new(cfg, boot, 0),
    }
}

/// The sealed packet `from` sends to `to_id` in its next round.
fn packet_to(from: &mut Host, to_id: u32, now: u64) -> Vec<u8> {
    let addr = from
        .config()
        .peers
        .iter()
        .find(|p| p.id == to_id)
        .unwrap()
        .addr;
    let round = from.heartbeats(now);
    round
        .into_iter()
        .find(|(a, _)| *a == addr)
        .unwrap()
        .1
        .unwrap()
}

fn accepted(r: &Received) -> bool {
    matches!(r, Received::Accepted { .. })
}

fn reason(r: Received) -> DropReason {
    match r {
        Received::Dropped { reason, .. } => reason,
        other => panic!("expected a drop, got {other:?}"),
    }
}

/// a and b see each other; returns them.
fn pair() -> (Host, Host) {
    let (mut a, mut b) = (node("host-a", 0xa), node("host-b", 0xb));
    let p = packet_to(&mut a, 2, 10);
    assert_eq!(
        reason(b.receive_from("host-a", 10, &p)),
        DropReason::UnconfirmedBoot
    );
    let p = packet_to(&mut b, 1, 20);
    assert!(accepted(&a.receive(20, &p)));
    let p = packet_to(&mut a, 2, 30);
    assert!(accepted(&b.receive_from("host-a", 30, &p)));
    (a, b)
}

#[test]
fn config_gives_ft_addresses_port_and_keys() {
    let c = NodeConfig::from_runtime(&example_runtime("host-b"), PORT).unwrap();
    assert_eq!((c.id, c.bind), (2, "192.0.2.2:7400".parse().unwrap()));
    let peers: Vec<_> = c.peers.iter().map(|p| (p.name.as_str(), p.addr)).collect();
    assert_eq!(
        peers,
        [
            ("host-a", "192.0.2.1:7400".parse().unwrap()),
            ("host-c", "192.0.2.3:7400".parse().unwrap())
        ]
    );
    assert_eq!((c.interval_ms, c.failure_timeout_ms), (100, 1000));
    let mut wrong = example_runtime("host-b");
    wrong.host_private_key = "11".repeat(32);
    assert!(matches!(
        NodeConfig::from_runtime(&wrong, PORT),
        Err(ConfigError::KeyMismatch { .. })
    ));
    wrong.host_name = "nobody".into();
    assert!(matches!(
        NodeConfig::from_runtime(&wrong, PORT),
        Err(ConfigError::UnknownHost(_))
    ));
}

#[test]
fn nodes_see_each_other_through_sealed_packets() {
    let (a, b) = pair();
    assert!(a
        .view()
        .peer_views(30)
        .iter()
        .any(|v| v.host == "host-b" && v.alive));
    assert!(b
        .view()
        .peer_views(30)
        .iter()
        .any(|v| v.host == "host-a" && v.alive));
}

#[test]
fn bad_packets_are_dropped_by_reason_and_change_nothing() {
    let (mut a, mut b) = pair();
    let good = packet_to(&mut b, 1, 40);
    let before = a.view().peer_views(50);

    // Garbage and short.
    assert_eq!(reason(a.receive(50, &[0x55; 200])), DropReason::Malformed);
    assert_eq!(reason(a.receive(50, b"FTHB")), DropReason::Malformed);
    // Wrong wire version.
    let mut v = good.clone();
    v[4] = 2;
    assert_eq!(reason(a.receive(50, &v)), DropReason::BadVersion);
    // Sealed with a key that is not in the config, claiming to be host-b.
    let mut rogue_cfg = b.config().clone();
    rogue_cfg.private_key = [0x42; 32];
    let mut rogue = Host {
        gate: Gate::new(&rogue_cfg, 0),
        node: Node::new(rogue_cfg, 0xbad, 0),
    };
    let forged = packet_to(&mut rogue, 1, 40);
    assert_eq!(reason(a.receive(50, &forged)), DropReason::Forged);
    // A valid packet with one byte tampered, in the header or the body.
    for i in [6, 20, good.len() - 3] {
        let mut t = good.clone();
        t[i] ^= 0x10;
        let r = reason(a.receive(50, &t));
        assert!(
            matches!(r, DropReason::Forged | DropReason::UnknownSender),
            "byte {i}: {r:?}"
        );
    }
    // A packet for host-c delivered to host-a.
    let for_c = packet_to(&mut b, 3, 45);
    assert_eq!(reason(a.receive(50, &for_c)), DropReason::NotForUs);
    // A host that is not in the config at all.
    let mut unknown = good.clone();
    unknown[5..9].copy_from_slice(&77u32.to_le_bytes());
    assert_eq!(reason(a.receive(50, &unknown)), DropReason::UnknownSender);

    assert_eq!(a.view().peer_views(50), before, "no drop touched the view");
    let d = a.view().dropped();
    assert_eq!(d.get(DropReason::Malformed), 2);
    assert_eq!(d.get(DropReason::BadVersion), 1);
    assert_eq!(d.get(DropReason::NotForUs), 1);
    assert!(d.get(DropReason::Forged) >= 2);

    // The good one is still accepted once, then is a replay.
    assert!(accepted(&a.receive(60, &good)));
    assert_eq!(reason(a.receive(70, &good)), DropReason::Replayed);
    let s = a.view().status(70);
    assert_eq!(s["peers"][0]["name"], "host-b");
    assert_eq!(s["peers"][0]["dropped"]["replayed"], 1);
    assert_eq!(s["peers"][0]["received"], 2);
}
