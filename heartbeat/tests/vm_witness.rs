//! The VM witness with real daemons and a real raw ICMP socket over
//! loopback: two hosts, FT on 127.77.`net`.x, the VM network on
//! 127.78.`net`.x, the witness at 127.80.`net`.254 (the kernel's own echo
//! responder answers every 127/8 address). A host "cut" from the VM
//! network listens on 127.79.`net`.2 where nobody sends, and its witness
//! is 192.0.2.77, which a loopback source cannot reach (the send fails,
//! nothing leaves the machine): it hears neither a peer nor the witness.
//!
//! Needs root (`CAP_NET_RAW`) for the raw socket: the appliance runs
//! heartbeat as root, and so does `make test`. Without it the test FAILS,
//! saying so.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use heartbeat::node::VmNetConfig;
use heartbeat::{Daemon, NodeConfig};

use common::{vm_view, wait_for};

const PORT: u16 = 17430;
const INTERVAL_MS: u64 = 100;
const TIMEOUT_MS: u64 = 1500;

fn secret(i: usize) -> [u8; 32] {
    [0x50 + i as u8; 32]
}

fn at(a: u8, net: u8, i: usize) -> SocketAddr {
    SocketAddr::from(([127, a, net, i as u8 + 1], PORT))
}

fn witness(net: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 80, net, 254)
}

/// Host `i` of two; `cut`: this host is cut from the VM network (module doc).
fn config(net: u8, i: usize, cut: bool) -> NodeConfig {
    let vm = |j: usize| at(78, net, j);
    NodeConfig {
        vm: Some(VmNetConfig {
            bind: if cut { at(79, net, i) } else { vm(i) },
            peers: (0..2)
                .filter(|j| *j != i)
                .map(|j| (j as u32 + 1, vm(j)))
                .collect(),
            witness: Some(if cut {
                Ipv4Addr::new(192, 0, 2, 77)
            } else {
                witness(net)
            }),
        }),
        ..common::hosts::config(i, 2, secret, |j| at(77, net, j), INTERVAL_MS, TIMEOUT_MS)
    }
}

/// Fails clearly where a raw ICMP socket cannot be had.
fn need_raw_sockets() {
    if let Err(e) = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV4),
    ) {
        panic!("the VM witness needs a raw ICMP socket (root or CAP_NET_RAW): {e}");
    }
}

#[test]
fn both_hosts_hear_the_witness_and_each_report_says_so() {
    need_raw_sockets();
    let ds: Vec<Daemon> = (0..2)
        .map(|i| Daemon::start(config(1, i, false)).unwrap())
        .collect();
    let w = format!("witness:{}", witness(1));
    wait_for("each host hears the other and the witness", || {
        ds.iter()
            .all(|d| vm_view(d).own.hears.len() == 2 && vm_view(d).own.hears[1] == w)
    });
    wait_for("each report, over FT, names the witness too", || {
        ds.iter().all(|d| {
            vm_view(d)
                .peers
                .iter()
                .all(|p| p.reach.as_ref().is_some_and(|r| r.hears.len() == 2))
        })
    });
    let a = vm_view(&ds[0]);
    assert_eq!(a.own.hears, ["host-b".to_string(), w.clone()]);
    assert_eq!(
        a.peers[0].reach.as_ref().unwrap().hears,
        ["host-a".to_string(), w]
    );
    let s = ds[0].handle().status();
    let st = &s["vm_network"]["witness"];
    assert_eq!(st["addr"], "127.80.1.254", "{st}");
    assert_eq!(st["heard"], true, "{st}");
    assert!(st["replies"].as_u64().unwrap() > 0, "{st}");
    assert!(st["round_trip_ms"].as_u64().is_some(), "{st}");
    assert_eq!(st["error"], serde_json::Value::Null, "{st}");
}

#[test]
fn of_two_hosts_the_one_that_hears_the_witness_is_the_one_not_cut() {
    need_raw_sockets();
    let ds = [
        Daemon::start(config(2, 0, false)).unwrap(),
        Daemon::start(config(2, 1, true)).unwrap(),
    ];
    let (a, b) = (&ds[0], &ds[1]);
    let w = format!("witness:{}", witness(2));
    wait_for("host-a hears the witness alone", || {
        vm_view(a).own.hears == [w.clone()]
    });
    wait_for(
        "host-b reports, over FT, hearing nobody (no peer, no witness) for a failure timeout",
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
    // host-a hears no peer, yet it is not quiet: the witness answers it.
    let va = vm_view(a);
    assert_eq!(va.own.quiet_ms, 0, "{va:?}");
    let since = va.own_since_heard_ms.expect("host-a heard the witness");
    assert!(since < TIMEOUT_MS, "last heard anyone {since} ms ago");
    // host-b hears nobody, and its status says why the witness is silent.
    let vb = vm_view(b);
    assert!(vb.own.hears.is_empty(), "{vb:?}");
    assert_eq!(vb.own_since_heard_ms, None, "host-b never heard anyone");
    let s = b.handle().status();
    let st = &s["vm_network"]["witness"];
    assert_eq!(st["heard"], false, "{st}");
    assert_eq!(st["replies"], 0, "{st}");
    let err = st["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("sending to 192.0.2.77: "), "{st}");
    // FT is whole: the witness never feeds suspicion.
    for d in &ds {
        assert!(d.handle().peers().iter().all(|p| p.alive));
    }
}
