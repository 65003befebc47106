//! The Secondary's VM network as the Primary judges it, and the console
//! lines and protection it gives, with made-up heartbeat views.

use config_schema::ctl::{PeerVmReach, VmNetView, VmReach};

use super::*;

/// The example config's failure timeout.
const T: u64 = 1000;

fn reach(watch_ms: Option<u64>, quiet_ms: u64, hears: &[&str]) -> VmReach {
    VmReach {
        watch_ms,
        quiet_ms,
        hears: hears.iter().map(|h| h.to_string()).collect(),
    }
}

/// host-a's view (this host, the Primary, listening for a minute, hearing
/// `a_hears`), with host-b's report `b` (heard on FT, 100 ms old).
fn view(a_hears: &[&str], b: VmReach) -> VmNetView {
    VmNetView {
        failure_timeout_ms: T,
        own: reach(
            Some(60_000),
            if a_hears.is_empty() { 4_000 } else { 0 },
            a_hears,
        ),
        peers: vec![
            PeerVmReach {
                host: "host-b".into(),
                ft_alive: true,
                reach: Some(b),
                age_ms: Some(100),
            },
            PeerVmReach {
                host: "host-c".into(),
                ft_alive: true,
                reach: Some(reach(Some(60_000), 0, &["host-a"])),
                age_ms: Some(100),
            },
        ],
        own_since_heard_ms: Some(if a_hears.is_empty() { 4_000 } else { 0 }),
    }
}

fn judge_b(v: &VmNetView) -> SecondaryVmNet {
    judge(Ok(v), "host-a", "host-b")
}

/// host-b cut: it has heard nobody for `ms`.
fn b_cut(ms: u64) -> VmReach {
    reach(Some(60_000), ms, &[])
}

fn b_fine() -> VmReach {
    reach(Some(60_000), 0, &["host-a", "host-c"])
}

#[test]
fn a_secondary_host_that_hears_no_peer_past_the_timeout_has_no_vm_network() {
    assert_eq!(
        judge_b(&view(&["host-c"], b_fine())),
        SecondaryVmNet::Reaches
    );
    // One peer is enough.
    let one = reach(Some(60_000), 0, &["host-c"]);
    assert_eq!(judge_b(&view(&["host-c"], one)), SecondaryVmNet::Reaches);
    // Quiet, but not longer than the failure timeout yet.
    assert_eq!(
        judge_b(&view(&["host-c"], b_cut(T))),
        SecondaryVmNet::Reaches
    );
    // host-a hears host-c, so its own VM network works: host-b's is cut.
    assert_eq!(
        judge_b(&view(&["host-c"], b_cut(T + 1))),
        SecondaryVmNet::Cut { for_ms: T + 1 }
    );
    assert_eq!(
        judge_b(&view(&["host-b", "host-c"], b_cut(5_000))),
        SecondaryVmNet::Cut { for_ms: 5_000 }
    );
}

#[test]
fn when_neither_side_hears_anyone_the_cut_is_not_blamed_on_one() {
    // Two hosts up (or everyone else quiet too): either side may be cut.
    assert_eq!(
        judge_b(&view(&[], b_cut(6_000))),
        SecondaryVmNet::NoneBetween { for_ms: 6_000 }
    );
    // host-a still hears host-b (one way, for up to a timeout or two until
    // the echo stops it): host-a's transmit side or host-b's receive side,
    // nobody can tell which. Not blamed on host-b.
    assert_eq!(
        judge_b(&view(&["host-b"], b_cut(1_200))),
        SecondaryVmNet::NoneBetween { for_ms: 1_200 }
    );
    let v = view(&[], b_cut(2_500));
    assert_eq!(
        reason("host-a", "host-b", &judge_b(&v)).unwrap(),
        "the VM network between host-a and host-b carries no heartbeat \
         (for 2500 ms; either side may be cut)"
    );
}

/// Two hosts and a VM witness: host-a hears the witness (heartbeat names
/// it `witness:<ip>`), host-b hears nobody: host-b's side is cut, where
/// without the witness nobody could say which.
#[test]
fn of_two_hosts_the_witness_shows_whose_side_is_cut() {
    let w = "witness:198.51.100.254";
    let mut v = view(&[w], b_cut(3_000));
    v.peers.truncate(1);
    assert_eq!(judge_b(&v), SecondaryVmNet::Cut { for_ms: 3_000 });
    // host-b hears the witness: it reaches the VM network.
    let mut v = view(&[], reach(Some(60_000), 0, &[w]));
    v.peers.truncate(1);
    assert_eq!(judge_b(&v), SecondaryVmNet::Reaches);
    // host-a hears only host-b's heartbeats, not the witness: still a tie.
    let mut v = view(&["host-b"], b_cut(3_000));
    v.peers.truncate(1);
    assert_eq!(judge_b(&v), SecondaryVmNet::NoneBetween { for_ms: 3_000 });
}

#[test]
fn nothing_is_judged_without_evidence() {
    let unknown = |v: SecondaryVmNet| matches!(v, SecondaryVmNet::Unknown(_));
    // heartbeat does not answer.
    assert!(unknown(judge(Err("no socket"), "host-a", "host-b")));
    // This host just booted (or its VM address is not up yet): its own
    // view is too young, whatever host-b says.
    for own in [None, Some(1), Some(T)] {
        let mut v = view(&[], b_cut(30_000));
        v.own.watch_ms = own;
        v.own.quiet_ms = own.unwrap_or(0);
        assert!(unknown(judge_b(&v)), "own watch {own:?}");
    }
    // host-b's own view is too young (it just booted).
    assert!(unknown(judge_b(&view(&["host-c"], reach(Some(T), T, &[])))));
    assert!(unknown(judge_b(&view(&["host-c"], reach(None, 0, &[])))));
    // host-b not heard on FT (failure detection's matter), no report yet,
    // or an old one.
    let mut v = view(&["host-c"], b_cut(30_000));
    v.peers[0].ft_alive = false;
    assert!(unknown(judge_b(&v)));
    let mut v = view(&["host-c"], b_cut(30_000));
    v.peers[0].reach = None;
    v.peers[0].age_ms = None;
    assert!(unknown(judge_b(&v)));
    let mut v = view(&["host-c"], b_cut(30_000));
    v.peers[0].age_ms = Some(T + 1);
    assert!(unknown(judge_b(&v)));
    // Not a peer.
    assert!(unknown(judge(
        Ok(&view(&["host-c"], b_cut(30_000))),
        "host-a",
        "host-z"
    )));
}

#[test]
fn one_line_when_the_secondary_loses_the_vm_network_and_one_when_it_hears_again() {
    let mut w = Watch::new("kv", "host-a");
    let look = |w: &mut Watch, v: VmNetView| w.on_vmnet("host-b", judge_b(&v));
    assert_eq!(look(&mut w, view(&["host-c"], b_fine())), Look::default());
    let l = look(&mut w, view(&["host-c"], b_cut(1_100)));
    assert_eq!(
        l.say.as_deref(),
        Some(
            "ftvmm: vm kv: not protected: secondary host-b has no VM network (no peer heard \
             on it for 1100 ms); it could not serve after a take-over"
        )
    );
    assert_eq!(
        l.not_protected.as_deref(),
        Some(
            "secondary host-b has no VM network (no peer heard on it for 1100 ms); it could \
             not serve after a take-over"
        )
    );
    // Still cut: no new line; the figure grows in status.
    let l = look(&mut w, view(&["host-c"], b_cut(9_000)));
    assert_eq!(l.say, None);
    assert!(l.not_protected.unwrap().contains("for 9000 ms"));
    // heartbeat cannot tell for a moment: the verdict stays, silently.
    let l = w.on_vmnet("host-b", SecondaryVmNet::Unknown("no socket".into()));
    assert_eq!(l.say, None);
    assert!(l.not_protected.unwrap().contains("for 9000 ms"));
    // host-c goes away too: the attribution changes, and says so.
    let l = look(&mut w, view(&[], b_cut(9_500)));
    assert!(
        l.say.as_deref().unwrap().starts_with(
            "ftvmm: vm kv: not protected: the VM network between host-a and host-b carries \
             no heartbeat"
        ),
        "{l:?}"
    );
    // Heard again: one line back to protected, then quiet.
    let l = look(&mut w, view(&["host-b"], b_fine()));
    assert_eq!(l.not_protected, None);
    assert_eq!(
        l.say.as_deref(),
        Some(
            "ftvmm: vm kv: protected: secondary host-b hears its peers on the VM network \
             again (it had heard none for at least 9500 ms)"
        )
    );
    assert_eq!(look(&mut w, view(&["host-c"], b_fine())), Look::default());
}

#[test]
fn a_verdict_belongs_to_one_secondary() {
    let mut w = Watch::new("kv", "host-a");
    assert!(w
        .on_vmnet("host-b", judge_b(&view(&["host-c"], b_cut(5_000))))
        .say
        .is_some());
    // Re-paired with host-c, which reaches: protected, no line about host-b.
    assert_eq!(
        w.on_vmnet("host-c", SecondaryVmNet::Reaches),
        Look::default()
    );
    // Unpaired in between: a later cut is a new line.
    assert!(w
        .on_vmnet("host-b", SecondaryVmNet::Cut { for_ms: 5_000 })
        .say
        .is_some());
    w.unpaired();
    assert!(w
        .on_vmnet("host-b", SecondaryVmNet::Cut { for_ms: 5_000 })
        .say
        .is_some());
    w.unpaired();
    assert_eq!(
        w.on_vmnet("host-b", SecondaryVmNet::Unknown("x".into())),
        Look::default()
    );
}

/// The keeper's look (`keeper::look_at_pair`) against fake fencing
/// and heartbeat sockets: the Secondary's lease is fine, its host's VM
/// network is cut and heals; status and the console follow; with its
/// lease stale too, status gives both reasons. Then this host's own VM
/// network is cut while host-b hears host-c: the look says to leave.
#[test]
fn the_keeper_follows_the_secondarys_vm_network_through_the_heartbeat_socket() {
    use std::sync::{Arc, Mutex};

    use config_schema::ctl::{LeaseView, Request, Response};

    use crate::lockstep::member::State;
    use crate::lockstep::respawn::keeper::{look_at_pair, Daemons, SecondaryWatch};
    use crate::lockstep::spec::PairHandle;

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cluster.toml"
    ))
    .unwrap();
    let config: config_schema::ClusterConfig = toml::from_str(&text).unwrap();
    let rc = config_schema::runtime::RuntimeConfig {
        host_name: "host-a".into(),
        config,
        host_private_key: "00".repeat(32),
    };
    let dir = tempfile::tempdir().unwrap();
    let fencing = dir.path().join("fencing.sock");
    let heartbeat = dir.path().join("heartbeat.sock");
    let b_lease_ms = Arc::new(Mutex::new(100u64));
    let served_view = Arc::new(Mutex::new(view(&["host-c"], b_fine())));
    let lease = |host: &str, ms: u64| LeaseView {
        host: host.into(),
        live: true,
        last_renewal_ms: Some(ms),
        expired: false,
        running: Vec::new(),
    };
    let served = Arc::clone(&b_lease_ms);
    let listener = config_schema::ctl_server::bind(&fencing).unwrap();
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(
            listener,
            config_schema::ctl_server::Policy::fencing_for_this_test(),
            move |req| match req {
                Request::Leases => Response::Leases {
                    leases: vec![
                        lease("host-a", 50),
                        lease("host-b", *served.lock().unwrap()),
                    ],
                    renewal_complete_ms: Some(50),
                },
                other => Response::Error {
                    message: format!("not served: {other:?}"),
                },
            },
        )
    });
    let served = Arc::clone(&served_view);
    let listener = config_schema::ctl_server::bind(&heartbeat).unwrap();
    let me_exe = std::env::current_exe().unwrap();
    let policy = config_schema::ctl_server::Policy::heartbeat(
        config_schema::peer::Programs::appliance()
            .with(config_schema::peer::Program::Ftvmm, &me_exe),
    );
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(listener, policy, move |req| match req {
            Request::VmNetwork => Response::VmNetwork {
                view: served.lock().unwrap().clone(),
            },
            other => Response::Error {
                message: format!("not served: {other:?}"),
            },
        })
    });
    let h = PairHandle::default();
    *h.member.lock().unwrap() = Some(State::Paired { g: 2 });
    *h.hosts.lock().unwrap() = ("host-a".into(), "host-b".into());
    let mut w = SecondaryWatch::new("kv", "host-a");
    let daemons = Daemons {
        fencing: &fencing,
        heartbeat: &heartbeat,
    };
    let b_reach = |r: VmReach| *served_view.lock().unwrap() = view(&["host-c"], r);
    let mut look = || {
        let l = look_at_pair(&h, &daemons, &rc, &mut w);
        assert_eq!(l.leave, None, "host-a hears host-c: it stays");
        l.lines
    };
    let protection = |h: &PairHandle| h.status()["protection"].as_str().unwrap().to_string();
    assert!(look().is_empty());
    assert_eq!(protection(&h), "protected: secondary host-b");
    // host-b's VM network is cut.
    b_reach(b_cut(1_500));
    let lines = look();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ftvmm: vm kv: not protected: secondary host-b has no VM network"),
        "{lines:?}"
    );
    assert!(protection(&h).starts_with("not protected: secondary host-b has no VM network"));
    assert!(look().is_empty(), "one line per change");
    // Its lease goes stale as well: both reasons in status.
    *b_lease_ms.lock().unwrap() = 5_000;
    assert_eq!(look().len(), 1);
    let p = protection(&h);
    assert!(
        p.starts_with("not protected: secondary host-b cannot renew its storage lease")
            && p.contains("; secondary host-b has no VM network"),
        "{p}"
    );
    // Both come back.
    *b_lease_ms.lock().unwrap() = 100;
    b_reach(b_fine());
    let lines = look();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with(
        "ftvmm: vm kv: protected: secondary host-b hears its peers on the VM network again"
    ));
    assert_eq!(protection(&h), "protected: secondary host-b");
    // host-a's own VM network is cut: it hears nobody, nobody hears it,
    // host-b hears host-c. The look says to hand over, and why.
    let mut cut = view(&[], reach(Some(60_000), 0, &["host-c"]));
    cut.peers[1].reach = Some(reach(Some(60_000), 0, &["host-b"]));
    *served_view.lock().unwrap() = cut;
    let l = look_at_pair(&h, &daemons, &rc, &mut w);
    assert_eq!(
        l.leave.as_deref(),
        Some(
            "VM network lost on host-a (no peer heard on it for 4000 ms) while secondary \
             host-b hears host-c"
        )
    );
    assert!(l.lines.is_empty(), "the member says it: {:?}", l.lines);
    assert!(protection(&h).starts_with("not protected: primary host-a hears no peer"));
    // host-b hears nobody either: nobody could serve instead (nor is it
    // known whose side is cut). One line from each judgement.
    let mut alone = view(&[], reach(Some(60_000), 3_000, &[]));
    alone.peers[1].reach = Some(reach(Some(60_000), 3_000, &[]));
    *served_view.lock().unwrap() = alone;
    let l = look_at_pair(&h, &daemons, &rc, &mut w);
    assert_eq!(l.leave, None);
    assert_eq!(l.lines.len(), 2, "{:?}", l.lines);
    assert!(
        l.lines[0].contains("either side may be cut"),
        "{:?}",
        l.lines
    );
    assert_eq!(
        l.lines[1],
        "ftvmm: vm kv: not protected: primary host-a hears no peer on the VM network (for \
         4000 ms); it stays here: secondary host-b hears no other host there either"
    );
    assert!(look_at_pair(&h, &daemons, &rc, &mut w).lines.is_empty());
    // Healed: one line back from each.
    *served_view.lock().unwrap() = view(&["host-c"], b_fine());
    let l = look_at_pair(&h, &daemons, &rc, &mut w);
    assert_eq!(l.lines.len(), 2, "{:?}", l.lines);
    assert_eq!(
        l.lines[1],
        "ftvmm: vm kv: host-a hears its peers on the VM network again"
    );
    assert_eq!(protection(&h), "protected: secondary host-b");
}
