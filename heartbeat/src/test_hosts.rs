//! Test clusters: up to three hosts named host-a, host-b, host-c (ids 1, 2,
//! 3) with the keys and addresses a test picks, a first heartbeat between
//! two of them, and the example cluster with its development keys. One file for the unit tests (`#[cfg(test)]` in
//! lib.rs), the integration tests (`tests/common`) and the bench, which
//! include it by path: it names this crate `heartbeat` in all of them.
#![allow(dead_code)]

use std::net::SocketAddr;

use config_schema::runtime::RuntimeConfig;
use heartbeat::node::{NodeConfig, PeerConf};
use heartbeat::packet::{self, Header, Payload};

pub const NAMES: [&str; 3] = ["host-a", "host-b", "host-c"];

/// Host `i` (0-based: id i+1, `NAMES[i]`) of the cluster of the first `n`
/// hosts: its private key `secret(i)`, its FT address `addr(i)`, each other
/// host a peer with the public key of `secret(j)` at `addr(j)`; no VM network.
pub fn config(
    i: usize,
    n: usize,
    secret: impl Fn(usize) -> [u8; 32],
    addr: impl Fn(usize) -> SocketAddr,
    interval_ms: u64,
    failure_timeout_ms: u64,
) -> NodeConfig {
    NodeConfig {
        id: i as u32 + 1,
        name: NAMES[i].into(),
        private_key: secret(i),
        bind: addr(i),
        peers: (0..n)
            .filter(|j| *j != i)
            .map(|j| PeerConf {
                id: j as u32 + 1,
                name: NAMES[j].into(),
                public_key: config_schema::keys::host_public_key(&secret(j)),
                addr: addr(j),
            })
            .collect(),
        interval_ms,
        failure_timeout_ms,
        vm: None,
    }
}

/// host-b's (id 2) first heartbeat (seq 1, empty view) of boot `boot_id` to
/// host-a (id 1), sealed with `b_secret` for `a_public`.
pub fn b_to_a(boot_id: u64, b_secret: &[u8; 32], a_public: &[u8; 32]) -> Vec<u8> {
    let payload = Payload {
        sender: 2,
        boot_id,
        seq: 1,
        view: vec![],
        vm: None,
    };
    let h = Header {
        sender: 2,
        receiver: 1,
    };
    packet::seal(h, &payload, b_secret, a_public).expect("seal")
}

/// `host` of the example cluster (`examples/cluster.toml`) with its
/// development key.
pub fn example_runtime(host: &str) -> RuntimeConfig {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let cfg =
        config_schema::parse(&std::fs::read_to_string(format!("{dir}/cluster.toml")).unwrap())
            .expect("example config is valid")
            .config;
    let key = std::fs::read_to_string(format!("{dir}/dev-keys/hosts/{host}.key")).unwrap();
    RuntimeConfig {
        config: cfg,
        host_name: host.into(),
        host_private_key: key.trim().into(),
    }
}
