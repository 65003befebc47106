//! Deterministic tests of the membership rules (no sockets, no crypto).

use super::*;

const TIMEOUT: u64 = 1000;

fn node(me: u32, boot: u64) -> Membership {
    let names = [(1, "host-a"), (2, "host-b"), (3, "host-c")];
    let peers = names
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, n)| (*id, n.to_string()))
        .collect();
    Membership::new(me, peers, boot, TIMEOUT, 0)
}

fn alive(m: &Membership, now: u64, host: &str) -> bool {
    m.peer_views(now)
        .iter()
        .find(|v| v.host == host)
        .unwrap()
        .alive
}

fn up(host: &str) -> Transition {
    Transition::Up { host: host.into() }
}

/// A and B exchange one round each way: both end up seeing the other.
fn handshake(a: &mut Membership, b: &mut Membership, now: u64) {
    let pa = a.next_heartbeat(now);
    assert_eq!(
        b.on_heartbeat(now, 1, &pa),
        Err(DropReason::UnconfirmedBoot),
        "first packet of an unknown boot carries no echo"
    );
    let pb = b.next_heartbeat(now);
    assert_eq!(a.on_heartbeat(now, 2, &pb), Ok(vec![up("host-b")]));
    let pa = a.next_heartbeat(now);
    assert_eq!(b.on_heartbeat(now, 1, &pa), Ok(vec![up("host-a")]));
}

#[test]
fn two_hosts_confirm_each_other_by_echo() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    assert!(!alive(&a, 0, "host-b"));
    handshake(&mut a, &mut b, 10);
    assert!(alive(&a, 10, "host-b") && alive(&b, 10, "host-a"));
    assert!(!alive(&a, 10, "host-c"));
    assert_eq!(a.peer_views(110)[0].last_seen_ms, Some(100));
    assert_eq!(b.dropped().get(DropReason::UnconfirmedBoot), 1);
}

#[test]
fn replayed_packet_is_dropped_and_changes_nothing() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let pb = b.next_heartbeat(20);
    assert!(a.on_heartbeat(20, 2, &pb).is_ok());
    assert_eq!(a.on_heartbeat(500, 2, &pb), Err(DropReason::Replayed));
    assert_eq!(a.peer_views(500)[0].last_seen_ms, Some(480));
    assert_eq!(a.dropped().get(DropReason::Replayed), 1);
    // An older seq of the same boot, delivered late, is a replay too.
    let newer = b.next_heartbeat(30);
    let older = pb.clone();
    assert!(a.on_heartbeat(30, 2, &newer).is_ok());
    assert_eq!(a.on_heartbeat(40, 2, &older), Err(DropReason::Replayed));
}

#[test]
fn silent_peer_is_suspected_after_the_timeout_and_comes_back() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let about_b = |ts: Vec<Transition>| -> Vec<Transition> {
        ts.into_iter()
            .filter(|t| t.to_string().contains("host-b"))
            .collect()
    };
    assert_eq!(about_b(a.tick(10 + TIMEOUT - 1)), vec![]);
    assert!(alive(&a, 10 + TIMEOUT - 1, "host-b"));
    let t = a.tick(10 + TIMEOUT + 5);
    assert!(t.contains(&Transition::Suspected {
        host: "host-b".into(),
        silent_ms: TIMEOUT + 5
    }));
    assert_eq!(
        t.iter()
            .find(|x| matches!(x, Transition::Suspected { .. }))
            .unwrap()
            .to_string(),
        "heartbeat: peer host-b suspected (silent 1005 ms)"
    );
    assert!(!alive(&a, 10 + TIMEOUT + 5, "host-b"));
    assert_eq!(
        about_b(a.tick(3000)),
        vec![],
        "suspected once, not every tick"
    );
    // B is back (same boot). A's first packet echoes B's seq of 3 s ago:
    // stale at B (it proves nothing about A now), but B records it and
    // echoes it, so B's next packet is fresh at A, and A's next one at B.
    let pa = a.next_heartbeat(3000);
    assert_eq!(b.on_heartbeat(3000, 1, &pa), Err(DropReason::Stale));
    let pb = b.next_heartbeat(3001);
    assert_eq!(a.on_heartbeat(3001, 2, &pb), Ok(vec![up("host-b")]));
    let pa = a.next_heartbeat(3002);
    assert_eq!(b.on_heartbeat(3002, 1, &pa), Ok(vec![]), "b never ticked");
    assert!(alive(&b, 3002, "host-a"));
}

#[test]
fn never_heard_peer_is_reported_once_after_the_timeout() {
    let mut a = node(1, 1);
    assert_eq!(a.tick(999), vec![]);
    let t = a.tick(1000);
    assert_eq!(t.len(), 2);
    assert_eq!(
        t[0].to_string(),
        "heartbeat: peer host-b suspected (never heard in 1000 ms)"
    );
    assert_eq!(a.tick(2000), vec![]);
}

#[test]
fn old_recorded_packet_cannot_resurrect_a_dead_host() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let recorded = b.next_heartbeat(20);
    // A restarts (new boot, forgets B); the recording echoes A's old boot.
    let mut a2 = node(1, 0xa2);
    a2.next_heartbeat(5000);
    assert_eq!(
        a2.on_heartbeat(5000, 2, &recorded),
        Err(DropReason::UnconfirmedBoot)
    );
    assert!(!alive(&a2, 5000, "host-b"));
    // Same boot of A, but the echoed seq is older than the timeout.
    let mut a = node(1, 0xa1);
    let mut b = node(2, 0xb1);
    let pa = a.next_heartbeat(0);
    let _ = b.on_heartbeat(0, 1, &pa);
    let late = b.next_heartbeat(10);
    a.next_heartbeat(2000);
    assert_eq!(
        a.on_heartbeat(2000, 2, &late),
        Err(DropReason::UnconfirmedBoot)
    );
    assert!(!alive(&a, 2000, "host-b"));
}

#[test]
fn restarted_peer_is_relearned_and_its_old_boot_refused() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let old = b.next_heartbeat(20);
    let old2 = b.next_heartbeat(30);
    assert!(a.on_heartbeat(20, 2, &old).is_ok());
    // B restarts: its first packet is unconfirmed at A, A echoes it, B
    // confirms A, B's next packet echoes A: A learns the new boot.
    let mut b2 = node(2, 0xb2);
    let first = b2.next_heartbeat(100);
    assert_eq!(
        a.on_heartbeat(100, 2, &first),
        Err(DropReason::UnconfirmedBoot)
    );
    let pa = a.next_heartbeat(110);
    assert_eq!(b2.on_heartbeat(110, 1, &pa), Ok(vec![up("host-a")]));
    let second = b2.next_heartbeat(120);
    assert_eq!(
        a.on_heartbeat(120, 2, &second),
        Ok(vec![Transition::Restarted {
            host: "host-b".into()
        }])
    );
    // A never-delivered packet of the old boot is now refused.
    assert_eq!(a.on_heartbeat(130, 2, &old2), Err(DropReason::Replayed));
}

#[test]
fn sender_mismatch_and_unknown_sender_are_dropped() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let pb = b.next_heartbeat(20);
    assert_eq!(a.on_heartbeat(20, 3, &pb), Err(DropReason::SenderMismatch));
    let mut stranger = pb.clone();
    stranger.sender = 9;
    assert_eq!(
        a.on_heartbeat(20, 9, &stranger),
        Err(DropReason::UnknownSender)
    );
    assert_eq!(a.peer_views(20)[0].last_seen_ms, Some(10));
    let s = a.status(20);
    assert_eq!(s["peers"][1]["dropped"]["sender_mismatch"], 1);
    assert_eq!(s["dropped"]["unknown_sender"], 1);
}

#[test]
fn peer_alive_keeps_a_peer_alive_without_heartbeats() {
    let mut a = node(1, 1);
    assert_eq!(a.on_peer_alive(100, "host-c"), Ok(vec![up("host-c")]));
    for t in (200..5000).step_by(300) {
        assert_eq!(a.on_peer_alive(t, "host-c"), Ok(vec![]));
        assert!(a.tick(t).iter().all(|x| !x.to_string().contains("host-c")));
        assert!(alive(&a, t, "host-c"));
    }
    assert!(a.on_peer_alive(10, "nobody").is_err());
    assert!(
        a.on_peer_alive(10, "host-a").is_err(),
        "not a peer of itself"
    );
    let s = a.status(4800);
    assert_eq!(s["peers"][1]["peer_alive_reports"], 17);
    assert_eq!(s["peers"][1]["state"], "up");
}

#[test]
fn heartbeat_carries_the_view_and_echo() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let pa = a.next_heartbeat(20);
    assert_eq!(pa.seq, 3);
    let eb = pa.view.iter().find(|e| e.host == 2).unwrap();
    assert!(eb.alive);
    assert_eq!(eb.heard, Some((0xb1, 1)));
    let ec = pa.view.iter().find(|e| e.host == 3).unwrap();
    assert_eq!((ec.alive, ec.heard), (false, None));
}

/// The echo A sends to host `id` in its next heartbeat.
fn echo_to(m: &mut Membership, now: u64, id: u32) -> Option<(u64, u64)> {
    m.next_heartbeat(now)
        .view
        .iter()
        .find(|e| e.host == id)
        .unwrap()
        .heard
}

#[test]
fn a_withheld_authentic_packet_delivered_later_does_not_keep_a_dead_host_alive() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    // B's last heartbeats are recorded on the wire but never reach A (an
    // attacker withholds them, or the network lost them there); then B dies.
    let withheld: Vec<Payload> = (0..6).map(|i| b.next_heartbeat(20 + 10 * i)).collect();
    for t in (100..1500).step_by(100) {
        a.next_heartbeat(t);
        a.tick(t);
    }
    assert!(!alive(&a, 1500, "host-b"), "suspected after the timeout");
    let received = a.status(1500)["peers"][0]["received"].clone();
    // Delivered one by one long after: each is authentic and in sequence,
    // but none echoes a heartbeat A sent within the failure timeout.
    for (i, p) in withheld.iter().enumerate() {
        let t = 1500 + 700 * i as u64;
        a.next_heartbeat(t);
        assert_eq!(
            a.on_heartbeat(t, 2, p),
            Err(DropReason::Stale),
            "packet {i}"
        );
        assert!(a.tick(t).is_empty());
        assert!(!alive(&a, t, "host-b"), "packet {i} kept the dead b alive");
        // Delivered again: a replay, not even stale.
        assert_eq!(a.on_heartbeat(t, 2, p), Err(DropReason::Replayed));
    }
    let s = a.status(6000);
    assert_eq!(s["peers"][0]["state"], "suspected");
    assert_eq!(s["peers"][0]["received"], received);
    assert_eq!(s["peers"][0]["dropped"]["stale"], 6);
    assert_eq!(s["peers"][0]["suspicions"], 1);
}

#[test]
fn a_replay_never_changes_the_echo() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let old = b.next_heartbeat(20);
    assert!(a.on_heartbeat(20, 2, &old).is_ok());
    // B restarts: its first packet is a candidate at A, and A echoes it.
    let mut b2 = node(2, 0xb2);
    let first = b2.next_heartbeat(100);
    assert_eq!(
        a.on_heartbeat(100, 2, &first),
        Err(DropReason::UnconfirmedBoot)
    );
    // A replay of the old boot's packet, and of the candidate's, change nothing.
    assert_eq!(a.on_heartbeat(105, 2, &old), Err(DropReason::Replayed));
    assert_eq!(a.on_heartbeat(106, 2, &first), Err(DropReason::Replayed));
    let pa = a.next_heartbeat(110);
    assert_eq!(
        pa.view.iter().find(|e| e.host == 2).unwrap().heard,
        Some((0xb2, 1)),
        "A echoes the restarted B, not the replayed old boot"
    );
    // So B2 can confirm A at once.
    assert_eq!(b2.on_heartbeat(110, 1, &pa), Ok(vec![up("host-a")]));
    assert_eq!(echo_to(&mut a, 120, 2), Some((0xb2, 1)));
    assert_eq!(a.dropped().get(DropReason::Replayed), 2);
}

#[test]
fn packets_that_fail_the_replay_checks_never_touch_liveness_or_echo() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    let p1 = b.next_heartbeat(20);
    let p2 = b.next_heartbeat(30);
    assert!(a.on_heartbeat(30, 2, &p2).is_ok());
    let echo = echo_to(&mut a, 40, 2);
    // p1, older than p2 and delivered late, is a replay: no echo, no liveness.
    assert_eq!(a.on_heartbeat(900, 2, &p1), Err(DropReason::Replayed));
    assert_eq!(echo_to(&mut a, 900, 2), echo);
    assert_eq!(a.peer_views(900)[0].last_seen_ms, Some(870));
}

#[test]
fn a_failure_timeout_taken_live_judges_from_the_next_tick() {
    let (mut a, mut b) = (node(1, 0xa1), node(2, 0xb1));
    handshake(&mut a, &mut b, 10);
    // Raised live (`ftctl apply`): still alive past the booted timeout.
    a.set_timeout(3 * TIMEOUT);
    assert_eq!(a.timeout_ms(), 3 * TIMEOUT);
    a.tick(10 + 2 * TIMEOUT);
    assert!(alive(&a, 10 + 2 * TIMEOUT, "host-b"));
    // Lowered again: suspected at the next tick.
    a.set_timeout(TIMEOUT / 2);
    let ts = a.tick(10 + 2 * TIMEOUT);
    assert!(
        ts.iter().any(|t| t.to_string().contains("host-b")),
        "{ts:?}"
    );
    assert!(!alive(&a, 10 + 2 * TIMEOUT, "host-b"));
}
