//! Fuzz target: the heartbeat packet path must never panic on any datagram.
//! Every input goes through the header parser, the payload decoder (as if it
//! were a decrypted payload: a decoded payload must re-encode to the same
//! bytes, the encoding is canonical), `packet::open` with real keys, and the
//! whole receive path (`Gate::admit` then `Node::on_admitted`) twice:
//! - from a stranger's address: dropped before any X25519 (the gate's open
//!   count does not move), with a reason decided from the header alone;
//! - from host-b's FT address, one heartbeat interval later each time (so
//!   the rate limit never starves the fuzzer of the open path): a dropped
//!   datagram leaves the view untouched, no datagram is accepted twice, and
//!   the opens stay within the rate limit's bound;
//! - the same on the VM-network path (`Gate::new_vm`, `Node::receive_on(Net::Vm, …)`):
//!   from a stranger, no X25519; from host-b's VM-network address, a drop
//!   leaves both views untouched, nothing is accepted twice, and nothing
//!   that arrives there ever changes the FT view (suspicion).
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;

use heartbeat::gate::{self, Admitted};
use heartbeat::node::{NodeConfig, PeerConf, Received, VmNetConfig};
use heartbeat::packet::{self, Header, Net, Payload};
use heartbeat::{DropReason, Gate, Node};
use libfuzzer_sys::fuzz_target;

const A_SECRET: [u8; 32] = [0x11; 32];
const B_SECRET: [u8; 32] = [0x22; 32];
const INTERVAL_MS: u64 = 100;
const B_ADDR: &str = "127.0.0.2:7400";
const STRANGER: &str = "127.0.0.9:7400";
const B_VM_ADDR: &str = "127.0.1.2:7400";
const WITNESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 1, 254);

fn config() -> NodeConfig {
    NodeConfig {
        id: 1,
        name: "host-a".into(),
        private_key: A_SECRET,
        bind: "127.0.0.1:7400".parse().unwrap(),
        peers: vec![PeerConf {
            id: 2,
            name: "host-b".into(),
            public_key: config_schema::keys::host_public_key(&B_SECRET),
            addr: B_ADDR.parse().unwrap(),
        }],
        interval_ms: INTERVAL_MS,
        failure_timeout_ms: 1000,
        vm: Some(VmNetConfig {
            bind: "127.0.1.1:7400".parse().unwrap(),
            peers: vec![(2, B_VM_ADDR.parse().unwrap())],
            witness: Some(WITNESS),
        }),
    }
}

struct State {
    node: Node,
    gate: Gate,
    vm_gate: Gate,
    b_pub: [u8; 32],
    now: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        node: {
            let mut n = Node::new(config(), 1, 0);
            n.start_vm(0);
            n
        },
        gate: Gate::new(&config(), 0),
        vm_gate: Gate::new_vm(&config(), 0),
        b_pub: config_schema::keys::host_public_key(&B_SECRET),
        now: 0,
    });
}

/// Reasons the gate decides before any X25519.
fn before_x25519(r: DropReason) -> bool {
    matches!(
        r,
        DropReason::Malformed
            | DropReason::BadVersion
            | DropReason::UnknownSender
            | DropReason::WrongSource
            | DropReason::NotForUs
            | DropReason::RateLimited
    )
}

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let _ = Header::parse_on(data, Net::Vm);
    if let Ok(p) = Payload::decode(data) {
        assert_eq!(p.encode(), data, "payload encoding is canonical");
    }
    STATE.with(|st| {
        let st = &mut *st.borrow_mut();
        // Only the genuine seed (sealed with host-b's key) may open; it then
        // decodes as host-b's heartbeat.
        if let Ok((h, p)) = packet::open(data, &A_SECRET, &st.b_pub) {
            assert_eq!((h.sender, h.receiver, p.sender), (2, 1, 2));
        }
        st.now += INTERVAL_MS;
        let now = st.now;

        let stranger: SocketAddr = STRANGER.parse().unwrap();
        let opens = st.gate.opens();
        match st.gate.admit(now, stranger, data) {
            Admitted::Rejected(r) => assert!(before_x25519(r.reason), "{r:?}"),
            other => panic!("a stranger's datagram got through: {other:?}"),
        }
        assert_eq!(st.gate.opens(), opens, "X25519 for a stranger's datagram");

        let before = st.node.view().peer_views(now);
        let b: SocketAddr = B_ADDR.parse().unwrap();
        match st.node.receive(&mut st.gate, now, b, data) {
            Received::Dropped { .. } => assert_eq!(st.node.view().peer_views(now), before),
            Received::Accepted { .. } => assert!(
                matches!(
                    st.node.receive(&mut st.gate, now, b, data),
                    Received::Dropped { .. }
                ),
                "the same datagram is never accepted twice"
            ),
        }
        assert!(st.gate.opens() <= gate::max_opens(INTERVAL_MS, now));

        // The VM network: its own gate and view.
        let opens = st.vm_gate.opens();
        match st.vm_gate.admit(now, stranger, data) {
            Admitted::Rejected(r) => assert!(before_x25519(r.reason), "{r:?}"),
            other => panic!("a stranger's datagram got through on the VM network: {other:?}"),
        }
        assert_eq!(st.vm_gate.opens(), opens, "X25519 for a stranger's datagram");
        let ft_before = st.node.view().peer_views(now);
        let vm_before = st.node.vm_view().unwrap().peer_views(now);
        let bv: SocketAddr = B_VM_ADDR.parse().unwrap();
        match st.node.receive_on(Net::Vm, &mut st.vm_gate, now, bv, data) {
            Received::Dropped { .. } => {
                assert_eq!(st.node.vm_view().unwrap().peer_views(now), vm_before)
            }
            Received::Accepted { .. } => assert!(
                matches!(
                    st.node.receive_on(Net::Vm, &mut st.vm_gate, now, bv, data),
                    Received::Dropped { .. }
                ),
                "the same datagram is never accepted twice on the VM network"
            ),
        }
        assert_eq!(
            st.node.view().peer_views(now),
            ft_before,
            "a VM-network datagram changed the FT view"
        );
        assert!(st.vm_gate.opens() <= gate::max_opens(INTERVAL_MS, now));
    });
});
