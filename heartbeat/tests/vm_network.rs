//! Daemons in-process over loopback UDP with VM-network heartbeats: the FT
//! network on 127.77.`net`.x, the VM network on 127.78.`net`.x. host-b's
//! VM network is "cut" from the start: it listens on 127.79.`net`.2 while
//! the others send its VM-network heartbeats to 127.78.`net`.2, where
//! nothing listens, and drop what it sends from the wrong address. FT is
//! whole. Every wait polls against a generous deadline.

mod common;

use std::net::SocketAddr;

use heartbeat::node::VmNetConfig;
use heartbeat::{Daemon, NodeConfig};

use common::{vm_view, wait_for};

const PORT: u16 = 17420;
const INTERVAL_MS: u64 = 100;
const TIMEOUT_MS: u64 = 1500;

fn secret(i: usize) -> [u8; 32] {
    [0x40 + i as u8; 32]
}

fn at(a: u8, net: u8, i: usize) -> SocketAddr {
    SocketAddr::from(([127, a, net, i as u8 + 1], PORT))
}

/// Host `i` of the cluster; `b_cut`: host-b listens on the VM network where
/// nobody sends to it.
fn config(net: u8, i: usize, b_cut: bool) -> NodeConfig {
    let vm = |j: usize| at(78, net, j);
    let own_vm = if b_cut && i == 1 {
        at(79, net, i)
    } else {
        vm(i)
    };
    NodeConfig {
        vm: Some(VmNetConfig {
            bind: own_vm,
            peers: (0..3)
                .filter(|j| *j != i)
                .map(|j| (j as u32 + 1, vm(j)))
                .collect(),
            witness: None,
        }),
        ..common::hosts::config(i, 3, secret, |j| at(77, net, j), INTERVAL_MS, TIMEOUT_MS)
    }
}

#[test]
fn three_daemons_hear_each_other_on_the_vm_network_too() {
    let ds: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(config(1, i, false)).unwrap())
        .collect();
    wait_for("everyone hears both peers on the VM network", || {
        ds.iter().all(|d| vm_view(d).own.hears.len() == 2)
    });
    // ... and knows, by FT, that the others do.
    wait_for("every report says so", || {
        ds.iter().all(|d| {
            vm_view(d)
                .peers
                .iter()
                .all(|p| p.ft_alive && p.reach.as_ref().is_some_and(|r| r.hears.len() == 2))
        })
    });
    // Each report names the hosts by name, the asking host's own included.
    let a = vm_view(&ds[0]);
    let of = |h: &str| a.peers.iter().find(|p| p.host == h).unwrap();
    assert_eq!(
        of("host-b").reach.as_ref().unwrap().hears,
        ["host-a", "host-c"]
    );
    assert_eq!(
        of("host-c").reach.as_ref().unwrap().hears,
        ["host-a", "host-b"]
    );
    // The time since host-a last heard a peer there: about an interval.
    let since = a.own_since_heard_ms.expect("host-a heard peers");
    assert!(since < TIMEOUT_MS, "last heard a peer {since} ms ago");
    let s = ds[0].handle().status();
    assert_eq!(s["vm_network"]["listening"], true, "{s}");
    assert_eq!(
        s["vm_network"]["hears"],
        serde_json::json!(["host-b", "host-c"])
    );
}

#[test]
fn a_host_cut_from_the_vm_network_is_reported_and_not_suspected() {
    let ds: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(config(2, i, true)).unwrap())
        .collect();
    let (a, b) = (&ds[0], &ds[1]);
    wait_for("host-a hears host-c on the VM network", || {
        vm_view(a).own.hears == ["host-c"]
    });
    wait_for(
        "host-b reports, over FT, hearing nobody for a failure timeout",
        || {
            vm_view(a).peers.iter().any(|p| {
                p.host == "host-b"
                    && p.ft_alive
                    && p.reach
                        .as_ref()
                        .is_some_and(|r| r.hears.is_empty() && r.quiet_ms > TIMEOUT_MS)
            })
        },
    );
    // FT is whole: nobody is suspected, and b's own view agrees.
    for d in &ds {
        assert!(d.handle().peers().iter().all(|p| p.alive));
    }
    let view_b = vm_view(b);
    let own_b = &view_b.own;
    assert!(
        own_b.watch_ms.is_some() && own_b.hears.is_empty(),
        "{own_b:?}"
    );
    assert_eq!(view_b.own_since_heard_ms, None, "host-b never heard a peer");
    // host-b's packets from the wrong VM address are dropped, counted.
    let s = a.handle().status();
    let wrong = s["vm_network"]["dropped"]["wrong_source"]
        .as_u64()
        .unwrap_or(0);
    assert!(wrong > 0, "{}", s["vm_network"]);
    assert_eq!(s["dropped"]["wrong_source"], 0, "FT counters untouched");
}
