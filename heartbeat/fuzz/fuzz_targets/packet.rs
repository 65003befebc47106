//! Fuzz target: the heartbeat packet path must never panic on any datagram.
//! Every input goes through the header parser, the payload decoder (as if it
//! were a decrypted payload: a decoded payload must re-encode to the same
//! bytes, the encoding is canonical), `packet::open` with real keys, and a
//! whole `Node::receive`: a dropped datagram leaves the view untouched, and
//! no datagram is ever accepted twice.
#![no_main]

use std::cell::RefCell;

use heartbeat::node::{NodeConfig, PeerConf, Received};
use heartbeat::packet::{self, Header, Payload};
use heartbeat::Node;
use libfuzzer_sys::fuzz_target;

const A_SECRET: [u8; 32] = [0x11; 32];
const B_SECRET: [u8; 32] = [0x22; 32];

fn node() -> Node {
    let cfg = NodeConfig {
        id: 1,
        name: "host-a".into(),
        private_key: A_SECRET,
        bind: "127.0.0.1:7400".parse().unwrap(),
        peers: vec![PeerConf {
            id: 2,
            name: "host-b".into(),
            public_key: config_schema::keys::host_public_key(&B_SECRET),
            addr: "127.0.0.2:7400".parse().unwrap(),
        }],
        interval_ms: 100,
        failure_timeout_ms: 1000,
    };
    Node::new(cfg, 1, 0)
}

thread_local! {
    static NODE: RefCell<(Node, [u8; 32])> =
        RefCell::new((node(), config_schema::keys::host_public_key(&B_SECRET)));
}

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    if let Ok(p) = Payload::decode(data) {
        assert_eq!(p.encode(), data, "payload encoding is canonical");
    }
    NODE.with(|n| {
        let (node, b_pub) = &mut *n.borrow_mut();
        // Only the genuine seed (sealed with host-b's key) may open; it then
        // decodes as host-b's heartbeat.
        if let Ok((h, p)) = packet::open(data, &A_SECRET, b_pub) {
            assert_eq!((h.sender, h.receiver, p.sender), (2, 1, 2));
        }
        let before = node.view().peer_views(10);
        match node.receive(10, data) {
            Received::Dropped { .. } => assert_eq!(node.view().peer_views(10), before),
            Received::Accepted { .. } => assert!(
                matches!(node.receive(10, data), Received::Dropped { .. }),
                "the same datagram is never accepted twice"
            ),
        }
    });
});
