//! A claiming Secondary's look at its own VM network, with made-up
//! heartbeat views: host-c is the Secondary, host-b its lost Primary,
//! host-a a third host (seed 94's cluster).

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

fn peer(host: &str, ft_alive: bool, r: VmReach) -> PeerVmReach {
    PeerVmReach {
        host: host.into(),
        ft_alive,
        reach: Some(r),
        age_ms: Some(100),
    }
}

/// host-c last heard a peer `c_quiet` ms ago (as heartbeat reports it:
/// `quiet_ms` 0 and the peer still heard until `T` passed), host-a heard
/// on FT hearing `a_hears`, host-b not heard on FT (the one-way cut).
fn view(c_quiet: u64, a_hears: &[&str]) -> VmNetView {
    let (c_hears, quiet): (&[&str], u64) = if c_quiet > T {
        (&[], c_quiet)
    } else {
        (&["host-a"], 0)
    };
    VmNetView {
        failure_timeout_ms: T,
        own: reach(quiet, c_hears),
        peers: vec![
            peer("host-a", true, reach(0, a_hears)),
            peer("host-b", false, reach(0, &["host-a", "host-c"])),
        ],
        own_since_heard_ms: Some(c_quiet),
    }
}

fn judge_c(v: &VmNetView) -> Claim {
    judge(Ok(v), "host-c")
}

#[test]
fn seed_94_a_secondary_cut_from_the_vm_network_defers_while_a_third_host_hears_another() {
    assert_eq!(
        judge_c(&view(T + 200, &["host-b"])),
        Claim::Defer {
            for_ms: T + 200,
            witness: "host-a".into(),
            hears: vec!["host-b".into()],
        }
    );
}

#[test]
fn a_secondary_that_hears_a_peer_races_at_once() {
    assert_eq!(judge_c(&view(0, &["host-b", "host-c"])), Claim::Now);
    assert_eq!(judge_c(&view(T / 4, &["host-b"])), Claim::Now);
}

#[test]
fn a_quiet_shorter_than_the_timeout_is_looked_at_again() {
    // Heartbeat still counts host-c as hearing a peer (`quiet_ms` 0): the
    // time since it last heard one is what shows the cut beginning.
    let v = view(T / 2, &["host-b", "host-c"]);
    assert_eq!(v.own.quiet_ms, 0);
    assert_eq!(judge_c(&v), Claim::Unsure { quiet_ms: T / 2 });
    // At exactly `T`, still counted as hearing: unsure, not yet a verdict.
    assert_eq!(
        judge_c(&view(T, &["host-b"])),
        Claim::Unsure { quiet_ms: T }
    );
    // An older daemon's answer (no `own_since_heard_ms`) reads as heard.
    let mut old = view(T / 2, &["host-b"]);
    old.own_since_heard_ms = None;
    assert_eq!(judge_c(&old), Claim::Now);
}

#[test]
fn without_a_witness_it_races_at_once() {
    // Two hosts: the dead Primary's silence and this host's cut look alike.
    let two = VmNetView {
        failure_timeout_ms: T,
        own: reach(T + 500, &[]),
        peers: vec![peer("host-b", false, reach(0, &["host-c"]))],
        own_since_heard_ms: Some(T + 500),
    };
    assert_eq!(judge_c(&two), Claim::Now);
    // A third host that hears only this host proves nothing else works.
    assert_eq!(judge_c(&view(T + 500, &["host-c"])), Claim::Now);
    // A third host that is not heard on FT, or whose report is stale.
    let mut v = view(T + 500, &["host-b"]);
    v.peers[0].ft_alive = false;
    assert_eq!(judge_c(&v), Claim::Now);
    let mut v = view(T + 500, &["host-b"]);
    v.peers[0].age_ms = Some(T + 1);
    assert_eq!(judge_c(&v), Claim::Now);
}

#[test]
fn no_view_or_a_young_one_races_at_once() {
    assert_eq!(judge(Err("connection refused"), "host-c"), Claim::Now);
    let mut v = view(T + 500, &["host-b"]);
    v.own.watch_ms = Some(T);
    assert_eq!(judge_c(&v), Claim::Now);
}

fn defer() -> Claim {
    judge_c(&view(T + 200, &["host-b"]))
}

#[test]
fn a_deferred_claim_says_so_once_and_races_after_two_timeouts() {
    let mut w = Wait::new("kv", 3);
    let Next::Wait(Some(line)) = w.next(&defer(), 10, T) else {
        panic!("the first defer must wait and say so");
    };
    assert_eq!(
        line,
        "ftvmm: vm kv: this host hears no peer on the VM network (for 1200 ms) while host-a \
         hears host-b; deferring the race for generation 3 by up to 2000 ms so a member that \
         can serve wins it"
    );
    assert_eq!(w.next(&defer(), 1_000, T), Next::Wait(None));
    assert_eq!(w.next(&defer(), 1_999, T), Next::Wait(None));
    assert_eq!(
        w.next(&defer(), 2_000, T),
        Next::Race(Some(
            "ftvmm: vm kv: nobody took generation 3 within 2000 ms; racing for it without a VM \
             network"
                .into()
        ))
    );
}

#[test]
fn the_vm_network_coming_back_ends_the_wait_at_once() {
    let mut w = Wait::new("kv", 3);
    assert!(matches!(w.next(&defer(), 0, T), Next::Wait(Some(_))));
    assert_eq!(
        w.next(&Claim::Now, 700, T),
        Next::Race(Some(
            "ftvmm: vm kv: VM network heard again after 700 ms; racing for generation 3 now".into()
        ))
    );
}

#[test]
fn an_unsure_claim_looks_again_for_one_timeout_then_races() {
    let mut w = Wait::new("kv", 3);
    let unsure = Claim::Unsure { quiet_ms: 600 };
    assert_eq!(w.next(&unsure, 0, T), Next::Wait(None));
    assert_eq!(w.next(&unsure, T - 1, T), Next::Wait(None));
    assert!(matches!(w.next(&unsure, T, T), Next::Race(Some(_))));
    // Unsure turning into a verdict defers from the claim, not from then.
    let mut w = Wait::new("kv", 3);
    assert_eq!(w.next(&unsure, 0, T), Next::Wait(None));
    assert!(matches!(w.next(&defer(), 400, T), Next::Wait(Some(_))));
    assert!(matches!(w.next(&defer(), 2 * T, T), Next::Race(Some(_))));
}

#[test]
fn a_plain_claim_races_silently() {
    assert_eq!(Wait::new("kv", 3).next(&Claim::Now, 0, T), Next::Race(None));
}
