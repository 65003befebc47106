//! The VM-network path through two nodes of the example cluster: its own
//! view, fed only by `FTHV` packets from the peers' VM-network addresses,
//! reported in the FT heartbeats, never touching failure suspicion.

use super::*;
use crate::test_hosts::example_runtime;

struct Host {
    node: Node,
    gate: Gate,
    vm_gate: Gate,
}

fn host(name: &str, boot: u64) -> Host {
    let cfg = NodeConfig::from_runtime(&example_runtime(name), PORT).unwrap();
    Host {
        gate: Gate::new(&cfg, 0),
        vm_gate: Gate::new_vm(&cfg, 0),
        node: Node::new(cfg, boot, 0),
    }
}

fn ft_addr(h: &Host) -> SocketAddr {
    h.node.config().bind
}

fn vm_addr(h: &Host) -> SocketAddr {
    h.node.config().vm.as_ref().unwrap().bind
}

/// `from`'s packet for `to` in a round (FT or VM).
fn pick(round: Vec<(SocketAddr, Result<Vec<u8>, PacketError>)>, to: SocketAddr) -> Vec<u8> {
    round
        .into_iter()
        .find(|(a, _)| *a == to)
        .unwrap()
        .1
        .unwrap()
}

/// One FT and, where listening, one VM-network round each way at `now`;
/// `vm_cut`: the VM network carries nothing.
fn exchange(a: &mut Host, b: &mut Host, now: u64, vm_cut: bool) {
    send(a, b, now, vm_cut);
    send(b, a, now, vm_cut);
}

fn send(x: &mut Host, y: &mut Host, now: u64, vm_cut: bool) {
    let ft = pick(x.node.heartbeats(now), ft_addr(y));
    let src = ft_addr(x);
    y.node.receive(&mut y.gate, now, src, &ft);
    let vm = x.node.vm_heartbeats(now);
    if vm_cut || vm.is_empty() {
        return;
    }
    let p = pick(vm, vm_addr(y));
    let src = vm_addr(x);
    y.node.receive_on(Net::Vm, &mut y.vm_gate, now, src, &p);
}

fn ids(h: &Host, names: &[&str]) -> Vec<u32> {
    let mut v: Vec<u32> = (h.node.config().peers.iter())
        .filter(|p| names.contains(&p.name.as_str()))
        .map(|p| p.id)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn the_config_gives_every_peer_its_vm_network_address() {
    let a = host("host-a", 1);
    let vm = a.node.config().vm.clone().unwrap();
    assert_eq!(vm.bind, "198.51.100.1:7400".parse().unwrap());
    let b_id = ids(&a, &["host-b"])[0];
    assert!(vm
        .peers
        .contains(&(b_id, "198.51.100.2:7400".parse().unwrap())));
}

#[test]
fn peers_heard_on_the_vm_network_are_reported_in_the_ft_heartbeats() {
    let (mut a, mut b) = (host("host-a", 1), host("host-b", 2));
    // Not listening yet: a zero watch, nothing heard.
    let r = a.node.vm_report(0).unwrap();
    assert_eq!((r.watch_ms, r.hears.len()), (0, 0));
    a.node.start_vm(0);
    b.node.start_vm(0);
    for t in (100..=1_000).step_by(100) {
        exchange(&mut a, &mut b, t, false);
    }
    let r = a.node.vm_report(1_000).unwrap();
    assert_eq!(r.hears, ids(&a, &["host-b"]));
    assert_eq!((r.watch_ms, r.quiet_ms), (1_000, 0));
    // host-b learned it from host-a's FT heartbeats.
    let theirs = b.node.view().their_vm(1_000);
    let t = theirs.iter().find(|t| t.name == "host-a").unwrap();
    assert!(t.alive);
    assert_eq!(t.report.as_ref().unwrap().0.hears, ids(&a, &["host-b"]));
}

#[test]
fn a_cut_vm_network_is_seen_there_and_never_suspected_on_ft() {
    let (mut a, mut b) = (host("host-a", 1), host("host-b", 2));
    a.node.start_vm(0);
    b.node.start_vm(0);
    for t in (100..=1_000).step_by(100) {
        exchange(&mut a, &mut b, t, false);
    }
    // The VM network is cut at 1 s; FT goes on. (host-c is not there at
    // all: its lines are left out.)
    let about_b = |t: &Transition| !t.to_string().contains("host-c");
    let mut vm_lines = Vec::new();
    for t in (1_100..=4_000).step_by(100) {
        exchange(&mut a, &mut b, t, true);
        let ft: Vec<_> = a
            .node
            .view_mut()
            .tick(t)
            .into_iter()
            .filter(about_b)
            .collect();
        assert!(ft.is_empty(), "FT suspicion at {t}: {ft:?}");
        vm_lines.extend(
            a.node
                .vm_view_mut()
                .unwrap()
                .tick(t)
                .into_iter()
                .filter(about_b),
        );
    }
    assert_eq!(
        vm_lines
            .iter()
            .filter_map(crate::daemon::vm_line)
            .collect::<Vec<_>>(),
        vec!["heartbeat: peer host-b not heard on the VM network (silent 1000 ms)".to_string()]
    );
    let r = a.node.vm_report(4_000).unwrap();
    assert!(r.hears.is_empty());
    assert_eq!(r.quiet_ms, 3_000, "last heard at 1 s");
    let ft = a.node.view().peer_views(4_000);
    assert!(ft.iter().any(|p| p.host == "host-b" && p.alive), "{ft:?}");
    // host-b, on FT, knows host-a hears nobody on the VM network.
    let theirs = b.node.view().their_vm(4_000);
    let t = theirs.iter().find(|t| t.name == "host-a").unwrap();
    let (r, age) = t.report.clone().unwrap();
    assert!(
        r.hears.is_empty() && r.quiet_ms >= 2_900 && age <= 100,
        "{r:?} {age}"
    );
    // Healed: heard again within a round or two (the echo confirms it).
    for t in (4_100..=4_500).step_by(100) {
        exchange(&mut a, &mut b, t, false);
    }
    assert_eq!(a.node.vm_report(4_500).unwrap().hears, ids(&a, &["host-b"]));
}

#[test]
fn ft_packets_on_the_vm_network_and_vm_packets_on_ft_are_dropped() {
    let (mut a, mut b) = (host("host-a", 1), host("host-b", 2));
    a.node.start_vm(0);
    b.node.start_vm(0);
    // host-b's FT packet replayed onto host-a's VM-network socket, from
    // host-b's VM address: wrong magic, before any X25519.
    let ft = pick(b.node.heartbeats(100), ft_addr(&a));
    let opens = a.vm_gate.opens();
    let r = a
        .node
        .receive_on(Net::Vm, &mut a.vm_gate, 100, vm_addr(&b), &ft);
    assert!(
        matches!(
            r,
            Received::Dropped {
                reason: DropReason::Malformed,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(a.vm_gate.opens(), opens);
    // Its VM packet delivered to the FT socket: the same.
    let vm = pick(b.node.vm_heartbeats(100), vm_addr(&a));
    let r = a.node.receive(&mut a.gate, 100, ft_addr(&b), &vm);
    assert!(
        matches!(
            r,
            Received::Dropped {
                reason: DropReason::Malformed,
                ..
            }
        ),
        "{r:?}"
    );
    // A VM packet from host-b's FT address (not its VM address): wrong source.
    let r = a
        .node
        .receive_on(Net::Vm, &mut a.vm_gate, 100, ft_addr(&b), &vm);
    assert!(
        matches!(
            r,
            Received::Dropped {
                reason: DropReason::WrongSource,
                ..
            }
        ),
        "{r:?}"
    );
    // Garbage: malformed. None of it made anybody heard anywhere.
    let r = a
        .node
        .receive_on(Net::Vm, &mut a.vm_gate, 100, vm_addr(&b), &[0u8; 90]);
    assert!(matches!(r, Received::Dropped { .. }));
    assert!(a.node.vm_report(100).unwrap().hears.is_empty());
    assert!(a.node.view().alive_ids(100).is_empty());
    // The genuine VM packet from the VM address: accepted once (its first
    // packet needs an echo; a replay of it never counts).
    let r = a
        .node
        .receive_on(Net::Vm, &mut a.vm_gate, 100, vm_addr(&b), &vm);
    assert!(
        matches!(
            r,
            Received::Dropped {
                reason: DropReason::UnconfirmedBoot,
                ..
            }
        ),
        "{r:?}"
    );
    let r = a
        .node
        .receive_on(Net::Vm, &mut a.vm_gate, 100, vm_addr(&b), &vm);
    assert!(
        matches!(
            r,
            Received::Dropped {
                reason: DropReason::Replayed,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        a.node.view().alive_ids(100).is_empty(),
        "the FT view is untouched"
    );
}

#[test]
fn before_the_vm_socket_is_bound_nothing_is_heard_there() {
    let (mut a, mut b) = (host("host-a", 1), host("host-b", 2));
    b.node.start_vm(0);
    let vm = pick(b.node.vm_heartbeats(100), vm_addr(&a));
    let r = a
        .node
        .receive_on(Net::Vm, &mut a.vm_gate, 100, vm_addr(&b), &vm);
    assert!(matches!(r, Received::Dropped { .. }));
    assert!(a.node.vm_heartbeats(100).is_empty());
    // No `[vm]` config: version 1 heartbeats, no report.
    let mut cfg = a.node.config().clone();
    cfg.vm = None;
    let mut n = Node::new(cfg, 3, 0);
    n.start_vm(0);
    assert!(n.vm_view().is_none());
    assert_eq!(n.next_ft_heartbeat(100).vm, None);
}
