//! The Primary's own VM network as its keeper judges it, with made-up
//! heartbeat views (host-a is the Primary, host-b its Secondary).

use config_schema::ctl::{PeerVmReach, VmNetView, VmReach};

use super::*;

/// The example config's failure timeout.
const T: u64 = 1000;

fn reach(quiet_ms: u64, hears: &[&str]) -> VmReach {
    VmReach {
        watch_ms: Some(60_000),
        quiet_ms,
        hears: hears.iter().map(|h| h.to_string()).collect(),
    }
}

fn peer(host: &str, r: VmReach) -> PeerVmReach {
    PeerVmReach {
        host: host.into(),
        ft_alive: true,
        reach: Some(r),
        age_ms: Some(100),
    }
}

/// host-a quiet for `a_quiet` ms (hearing nobody if > 0), with host-b's
/// and host-c's reports.
fn view(a_quiet: u64, b: VmReach, c: Option<VmReach>) -> VmNetView {
    let mut peers = vec![peer("host-b", b)];
    peers.extend(c.map(|c| peer("host-c", c)));
    VmNetView {
        failure_timeout_ms: T,
        own: reach(a_quiet, if a_quiet == 0 { &["host-b"] } else { &[] }),
        peers,
        own_since_heard_ms: Some(a_quiet),
    }
}

fn judge_a(v: &VmNetView) -> OwnVmNet {
    judge(Ok(v), "host-a", "host-b")
}

/// host-a is cut: b and c hear each other, nobody hears host-a.
fn a_cut(ms: u64) -> VmNetView {
    view(ms, reach(0, &["host-c"]), Some(reach(0, &["host-b"])))
}

#[test]
fn a_primary_that_hears_nobody_while_its_secondary_hears_a_third_host_leaves() {
    let leave = OwnVmNet::Leave {
        for_ms: T + 1,
        secondary_hears: vec!["host-c".into()],
    };
    assert_eq!(judge_a(&a_cut(T + 1)), leave);
    assert_eq!(
        leave_why("host-a", "host-b", &leave).unwrap(),
        "VM network lost on host-a (no peer heard on it for 1001 ms) while secondary host-b \
         hears host-c"
    );
    assert_eq!(
        reason("host-a", &leave).unwrap(),
        "primary host-a hears no peer on the VM network (for 1001 ms)"
    );
}

#[test]
fn a_primary_that_hears_a_peer_or_was_quiet_no_longer_than_the_timeout_serves() {
    assert_eq!(
        judge_a(&view(0, reach(0, &["host-a", "host-c"]), None)),
        OwnVmNet::Serves
    );
    assert_eq!(judge_a(&a_cut(T)), OwnVmNet::Serves);
    assert_eq!(reason("host-a", &OwnVmNet::Serves), None);
    assert_eq!(leave_why("host-a", "host-b", &OwnVmNet::Serves), None);
}

#[test]
fn it_stays_when_nothing_shows_the_secondary_could_serve_instead() {
    let stays = |v: OwnVmNet| matches!(v, OwnVmNet::Stay { for_ms: 5_000, .. });
    // Two hosts: both quiet, nobody can tell which side is cut.
    assert!(stays(judge_a(&view(5_000, reach(5_000, &[]), None))));
    // host-b hears only host-a (one way, until the echo stops it): not
    // judged (below).
    assert!(matches!(
        judge_a(&view(5_000, reach(0, &["host-a"]), None)),
        OwnVmNet::Unknown(_)
    ));
    // host-b hears host-c, but host-c (or host-b itself, its report made
    // just before the cut) still hears host-a: host-a's silence is
    // contradicted; nothing is judged until the reports agree.
    for (b, c) in [
        (&["host-c"][..], &["host-a", "host-b"][..]),
        (&["host-a", "host-c"][..], &["host-b"][..]),
    ] {
        let v = view(5_000, reach(0, b), Some(reach(0, c)));
        match judge_a(&v) {
            OwnVmNet::Unknown(why) => assert!(why.contains("still hears host-a"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // host-b is not heard on FT (the pair is about to fail anyway), or
    // its report is stale or too young.
    let mut v = a_cut(5_000);
    v.peers[0].ft_alive = false;
    assert!(stays(judge_a(&v)));
    let mut v = a_cut(5_000);
    v.peers[0].age_ms = Some(T + 1);
    assert!(stays(judge_a(&v)));
    let mut v = a_cut(5_000);
    v.peers[0].reach.as_mut().unwrap().watch_ms = Some(T);
    assert!(stays(judge_a(&v)));
    assert!(reason("host-a", &judge_a(&v)).is_some());
    assert_eq!(leave_why("host-a", "host-b", &judge_a(&v)), None);
}

#[test]
fn nothing_is_judged_without_evidence() {
    let unknown = |v: OwnVmNet| matches!(v, OwnVmNet::Unknown(_));
    assert!(unknown(judge(Err("no socket"), "host-a", "host-b")));
    for own in [None, Some(1), Some(T)] {
        let mut v = a_cut(30_000);
        v.own.watch_ms = own;
        assert!(unknown(judge_a(&v)), "own watch {own:?}");
    }
    assert!(unknown(judge(Ok(&a_cut(5_000)), "host-a", "host-z")));
    assert_eq!(reason("host-a", &OwnVmNet::Unknown("x".into())), None);
}

/// Two hosts and a VM witness (`cluster.vm_witness`, heartbeat names it
/// `witness:<ip>` among what a host hears): host-a hears nobody, host-b
/// hears the witness. That breaks the two-host tie: host-a's side is cut.
#[test]
fn of_two_hosts_a_primary_that_hears_nobody_leaves_when_its_secondary_hears_the_witness() {
    const W: &str = "witness:198.51.100.254";
    let v = view(5_000, reach(0, &[W]), None);
    let leave = OwnVmNet::Leave {
        for_ms: 5_000,
        secondary_hears: vec![W.into()],
    };
    assert_eq!(judge_a(&v), leave);
    assert_eq!(
        leave_why("host-a", "host-b", &leave).unwrap(),
        "VM network lost on host-a (no peer heard on it for 5000 ms) while secondary host-b \
         hears witness:198.51.100.254"
    );
    // host-b hears host-a's heartbeats too (the cut is one way, for a
    // moment): contradicted, not judged, witness or not.
    assert!(matches!(
        judge_a(&view(5_000, reach(0, &["host-a", W]), None)),
        OwnVmNet::Unknown(_)
    ));
    // host-a hears only the witness: it serves (its side works; host-b's
    // may be cut, which is the Secondary's judgement).
    let mut v = view(0, reach(5_000, &[]), None);
    v.own.hears = vec![W.into()];
    assert_eq!(judge_a(&v), OwnVmNet::Serves);
    // Nobody hears the witness either: still a tie, it stays.
    assert!(matches!(
        judge_a(&view(5_000, reach(5_000, &[]), None)),
        OwnVmNet::Stay { .. }
    ));
}

#[test]
fn a_primary_stays_while_its_secondarys_host_cannot_renew_its_storage_lease() {
    let leave = OwnVmNet::Leave {
        for_ms: 5_000,
        secondary_hears: vec!["host-c".into()],
    };
    let lost = crate::lockstep::respawn::secondary_lease::reason("host-b", 1_045);
    let stay = unless_lease_lost(leave.clone(), Some(&lost));
    assert_eq!(
        stay,
        OwnVmNet::Stay {
            for_ms: 5_000,
            why: "secondary host-b cannot renew its storage lease (for 1045 ms); it could not \
                  take over"
                .into(),
        }
    );
    assert_eq!(leave_why("host-a", "host-b", &stay), None);
    // Its lease moves: the hand-over goes ahead; other verdicts pass as
    // they are.
    assert_eq!(unless_lease_lost(leave.clone(), None), leave);
    for v in [OwnVmNet::Serves, OwnVmNet::Unknown("x".into())] {
        assert_eq!(unless_lease_lost(v.clone(), Some(&lost)), v);
    }
}
