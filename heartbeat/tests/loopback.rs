//! Daemons in-process over loopback UDP (127.77.x.y, so no FT network and no
//! root): they see each other, a stopped one is suspected, bad packets are
//! dropped and counted and keep nobody alive, PeerAlive keeps a peer alive.
//! Every wait polls against a generous deadline; nothing asserts speed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, PeerView, Request, Response};
use heartbeat::packet;
use heartbeat::{Daemon, Gate, Node, NodeConfig};

use common::wait_for;

const PORT: u16 = 17400;
const INTERVAL_MS: u64 = 100;
const TIMEOUT_MS: u64 = 1500;

fn secret(i: usize) -> [u8; 32] {
    [0x10 + i as u8; 32]
}

fn addr(net: u8, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 77, net, i as u8 + 1], PORT))
}

/// Host `i` (0-based, id i+1) of a 3-host cluster on 127.77.`net`.x.
fn config(net: u8, i: usize) -> NodeConfig {
    common::hosts::config(i, 3, secret, |j| addr(net, j), INTERVAL_MS, TIMEOUT_MS)
}

fn view_of(peers: &[PeerView], host: &str) -> PeerView {
    peers.iter().find(|p| p.host == host).unwrap().clone()
}

#[test]
fn three_daemons_see_each_other_and_a_stopped_one_is_suspected() {
    let ds: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(config(1, i)).unwrap())
        .collect();
    wait_for("all three see each other", || {
        ds.iter()
            .all(|d| d.handle().peers().iter().all(|p| p.alive))
    });
    let mut ds = ds;
    let c = ds.pop().unwrap();
    c.stop();
    wait_for("a and b suspect c", || {
        ds.iter()
            .all(|d| !view_of(&d.handle().peers(), "host-c").alive)
    });
    for d in &ds {
        let peers = d.handle().peers();
        let c = view_of(&peers, "host-c");
        assert!(c.last_seen_ms.unwrap() >= TIMEOUT_MS, "{c:?}");
        assert!(
            view_of(
                &peers,
                if d.handle().status()["host"] == "host-a" {
                    "host-b"
                } else {
                    "host-a"
                }
            )
            .alive,
            "a and b still see each other"
        );
        let s = d.handle().status();
        let pc = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "host-c")
            .unwrap()
            .clone();
        assert_eq!(pc["state"], "suspected");
        assert!(pc["received"].as_u64().unwrap() >= 1);
    }
}

/// host-b driven by hand over its own socket, so the test holds its packets.
struct ManualB {
    node: Node,
    gate: Gate,
    sock: UdpSocket,
    last_to_a: Vec<u8>,
}

impl ManualB {
    fn new(net: u8) -> Self {
        let cfg = config(net, 1);
        let sock = UdpSocket::bind(cfg.bind).unwrap();
        // Non-blocking: `step` drains what has arrived and then sends. With
        // a read timeout as long as a's interval the drain could go on
        // receiving for seconds and b never sent, so a suspected it (a flaky
        // 'a sees the hand-driven b' in one make test run).
        sock.set_nonblocking(true).unwrap();
        ManualB {
            gate: Gate::new(&cfg, 0),
            node: Node::new(cfg, 0xb0b, 0),
            sock,
            last_to_a: Vec::new(),
        }
    }

    /// One exchange: read what has arrived (without waiting), send a round.
    fn step(&mut self, now: u64, a: SocketAddr) {
        let mut buf = [0u8; 2048];
        while let Ok((n, src)) = self.sock.recv_from(&mut buf) {
            let _ = self.node.receive(&mut self.gate, now, src, &buf[..n]);
        }
        for (to, p) in self.node.heartbeats(now) {
            let p = p.unwrap();
            if to == a {
                self.sock.send_to(&p, to).unwrap();
                self.last_to_a = p;
            }
        }
    }
}

fn dropped(d: &Daemon, reason: &str) -> u64 {
    d.handle().status()["dropped"][reason].as_u64().unwrap()
}

#[test]
fn forged_replayed_and_malformed_packets_are_dropped_counted_and_keep_nobody_alive() {
    let a = Daemon::start(config(2, 0)).unwrap();
    let a_addr = addr(2, 0);
    let mut b = ManualB::new(2);
    let t0 = Instant::now();
    let now = || t0.elapsed().as_millis() as u64;
    wait_for("a sees the hand-driven b", || {
        b.step(now(), a_addr);
        view_of(&a.handle().peers(), "host-b").alive
    });
    let good = b.last_to_a.clone();
    wait_for("a accepted b's last packet", || {
        a.handle().status()["peers"][0]["last_seq"].as_u64()
            == Some(b.node.view().status(0)["seq"].as_u64().unwrap())
    });

    // From here on b sends only bad packets, from its own and a stranger's address.
    let stranger = UdpSocket::bind(SocketAddr::from(([127, 77, 2, 9], PORT))).unwrap();
    let mut rogue_cfg = config(2, 1);
    rogue_cfg.private_key = [0x66; 32];
    rogue_cfg.bind = SocketAddr::from(([127, 77, 2, 10], PORT));
    let mut rogue = Node::new(rogue_cfg, 0xbad, 0);
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mut wrong_version = good.clone();
    wrong_version[4] = 9;
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    let start = Instant::now();
    let mut rounds = 0;
    // Keep it up for well past the failure timeout: b must end up suspected.
    while start.elapsed() < Duration::from_millis(3 * TIMEOUT_MS) || rounds < 5 {
        let forged = rogue
            .heartbeats(now())
            .into_iter()
            .find(|(to, _)| *to == a_addr)
            .unwrap()
            .1
            .unwrap();
        for p in [&good, &tampered, &wrong_version, &forged] {
            b.sock.send_to(p, a_addr).unwrap();
        }
        stranger.send_to(&garbage, a_addr).unwrap();
        stranger.send_to(b"FTHB\x01", a_addr).unwrap();
        rounds += 1;
        std::thread::sleep(Duration::from_millis(INTERVAL_MS));
    }
    wait_for("bad packets do not keep b alive", || {
        !view_of(&a.handle().peers(), "host-b").alive
    });
    wait_for("every bad packet counted", || {
        dropped(&a, "replayed") >= rounds
            && dropped(&a, "forged") >= 2 * rounds
            && dropped(&a, "bad_version") >= rounds
            && dropped(&a, "malformed") >= 2 * rounds
    });
    let s = a.handle().status();
    let pb = &s["peers"][0];
    assert_eq!(pb["name"], "host-b");
    assert_eq!(pb["state"], "suspected");
    assert!(pb["dropped"]["replayed"].as_u64().unwrap() >= rounds);
    assert!(pb["dropped"]["forged"].as_u64().unwrap() >= 2 * rounds);
}

#[test]
fn a_packet_sealed_for_another_key_pair_never_opens() {
    // The same check the daemon relies on, end to end through packet::open.
    let a = config(3, 0);
    let b = config(3, 1);
    let a_pub = config_schema::keys::host_public_key(&a.private_key);
    let b_pub = config_schema::keys::host_public_key(&b.private_key);
    let good = common::hosts::b_to_a(1, &b.private_key, &a_pub);
    assert!(packet::open(&good, &a.private_key, &b_pub).is_ok());
    let not_a = common::hosts::b_to_a(1, &b.private_key, &b_pub);
    assert!(packet::open(&not_a, &a.private_key, &b_pub).is_err());
}

#[test]
fn peer_alive_over_the_control_socket_keeps_a_silent_peer_alive() {
    // host-a alone: host-b and host-c never send a heartbeat.
    let a = Daemon::start(config(4, 0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("heartbeat.sock");
    let listener = config_schema::ctl_server::bind(&sock).unwrap();
    let h = a.handle();
    // This test process plays ftvmm, the one sender of PeerAlive and Peers.
    let programs = config_schema::peer::Programs::appliance().with(
        config_schema::peer::Program::Ftvmm,
        &std::env::current_exe().unwrap(),
    );
    let policy = config_schema::ctl_server::Policy::heartbeat(programs);
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(listener, policy, move |r| h.handle(r))
    });

    let start = Instant::now();
    let mut reports = 0;
    while start.elapsed() < Duration::from_millis(3 * TIMEOUT_MS) || reports < 10 {
        assert_eq!(
            ctl::query(
                &sock,
                &Request::PeerAlive {
                    host: "host-b".into()
                }
            )
            .unwrap(),
            Response::Ok
        );
        reports += 1;
        match ctl::query(&sock, &Request::Peers).unwrap() {
            Response::Peers { peers } => {
                assert!(view_of(&peers, "host-b").alive, "just reported: {peers:?}");
                assert_eq!(view_of(&peers, "host-c").last_seen_ms, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match ctl::query(&sock, &Request::Status).unwrap() {
        Response::Status { status } => {
            assert_eq!(status["daemon"], "heartbeat");
            let pb = status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "host-b")
                .unwrap()
                .clone();
            assert_eq!(pb["peer_alive_reports"], reports);
            assert_eq!(pb["received"], 0);
            assert_eq!(pb["state"], "up");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        ctl::query(
            &sock,
            &Request::PeerAlive {
                host: "nobody".into()
            }
        )
        .unwrap(),
        Response::Error { .. }
    ));
    assert!(matches!(
        ctl::query(&sock, &Request::Leases).unwrap(),
        Response::Error { .. }
    ));
    // Reports stop: suspected after the timeout.
    wait_for("b suspected once reports stop", || {
        !view_of(&a.handle().peers(), "host-b").alive
    });
}
