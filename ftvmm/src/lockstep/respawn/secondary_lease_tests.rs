//! The Secondary's lease as the Primary judges it, and the console lines
//! and protection it gives, with made-up lease tables.

use super::*;

/// The example config's timing: R = 500 ms, H = 1 s.
const H: u64 = 1000;

fn lease(host: &str, last_renewal_ms: Option<u64>) -> LeaseView {
    LeaseView {
        host: host.into(),
        live: last_renewal_ms.is_some_and(|ms| ms < 8000),
        last_renewal_ms,
        expired: false,
        running: Vec::new(),
    }
}

/// The agent's answer: `leases`, its last complete renewal `complete_ms`.
fn answer(leases: Vec<LeaseView>, complete_ms: Option<u64>) -> LeaseTable {
    LeaseTable {
        leases,
        renewal_complete_ms: complete_ms,
    }
}

/// host-a (this host, the Primary) renewed 100 ms ago, completely; host-b
/// as given.
fn table(b: Option<u64>) -> LeaseTable {
    answer(
        vec![lease("host-a", Some(100)), lease("host-b", b)],
        Some(100),
    )
}

fn judge_b(b: Option<u64>) -> SecondaryLease {
    judge(Ok(&table(b)), "host-a", "host-b", H)
}

#[test]
fn the_threshold_is_the_secondarys_own_hold_point() {
    let t = |hb| Timing {
        heartbeat_interval_ms: hb,
        failure_timeout_ms: 1000,
        lag_limit_ms: 500,
    };
    // R = max(5 hb, 500 ms); H = 2R, when the host withdraws its own grant.
    assert_eq!(stale_after_ms(&t(100)), 1000);
    assert_eq!(stale_after_ms(&t(300)), 3000);
}

#[test]
fn a_lease_not_seen_moving_past_the_threshold_is_stale() {
    assert_eq!(judge_b(Some(400)), SecondaryLease::Renewing);
    // A healthy lease read a renewal period late is still renewing.
    assert_eq!(judge_b(Some(H)), SecondaryLease::Renewing);
    assert_eq!(
        judge_b(Some(H + 1)),
        SecondaryLease::Stale { for_ms: H + 1 }
    );
    assert_eq!(
        judge_b(Some(30_000)),
        SecondaryLease::Stale { for_ms: 30_000 }
    );
}

#[test]
fn nothing_is_judged_without_evidence() {
    let unknown = |l: SecondaryLease| matches!(l, SecondaryLease::Unknown(_));
    // Never seen moving, or not in the table.
    assert!(unknown(judge_b(None)));
    assert!(unknown(judge(
        Ok(&table(Some(5000))),
        "host-a",
        "host-c",
        H
    )));
    // The agent does not answer.
    assert!(unknown(judge(Err("no socket"), "host-a", "host-b", H)));
    // This host's own reading is not current: every other counter stands
    // still in its view, whatever the Secondary does. Its own write may
    // still land (the own lease looks fresh) while its reads fail.
    let b_stale = || vec![lease("host-a", Some(100)), lease("host-b", Some(5000))];
    let reads_fail = answer(b_stale(), Some(H + 500));
    assert!(unknown(judge(Ok(&reads_fail), "host-a", "host-b", H)));
    let never = answer(b_stale(), None);
    assert_eq!(
        judge(Ok(&never), "host-a", "host-b", H),
        SecondaryLease::Stale { for_ms: 5000 },
        "an agent without the field: judged by the own lease's write"
    );
    let own_stale = answer(
        vec![lease("host-a", Some(H + 500)), lease("host-b", Some(5000))],
        None,
    );
    assert!(unknown(judge(Ok(&own_stale), "host-a", "host-b", H)));
    let own_never = answer(
        vec![lease("host-a", None), lease("host-b", Some(5000))],
        None,
    );
    assert!(unknown(judge(Ok(&own_never), "host-a", "host-b", H)));
}

#[test]
fn one_line_when_the_secondary_stops_renewing_and_one_when_it_renews_again() {
    let mut w = Watch::new("kv");
    assert_eq!(w.on_lease("host-b", judge_b(Some(300))), Look::default());
    let l = w.on_lease("host-b", judge_b(Some(1200)));
    assert_eq!(
        l.say.as_deref(),
        Some(
            "ftvmm: vm kv: not protected: secondary host-b cannot renew its storage lease \
             (for 1200 ms); it could not take over"
        )
    );
    assert_eq!(
        l.not_protected.as_deref(),
        Some(
            "secondary host-b cannot renew its storage lease (for 1200 ms); it could not take over"
        )
    );
    // Still stale: no new line, the figure grows in status.
    let l = w.on_lease("host-b", judge_b(Some(30_100)));
    assert_eq!(l.say, None);
    assert!(l.not_protected.unwrap().contains("(for 30100 ms)"));
    // The agent cannot tell for a moment: the verdict stays, silently.
    let l = w.on_lease("host-b", SecondaryLease::Unknown("no socket".into()));
    assert_eq!(l.say, None);
    assert!(l.not_protected.unwrap().contains("(for 30100 ms)"));
    // Renewed: one line back to protected, then quiet.
    let l = w.on_lease("host-b", judge_b(Some(200)));
    assert_eq!(l.not_protected, None);
    assert_eq!(
        l.say.as_deref(),
        Some(
            "ftvmm: vm kv: protected: secondary host-b renews its storage lease again \
             (it had not for at least 30100 ms)"
        )
    );
    assert_eq!(w.on_lease("host-b", judge_b(Some(300))), Look::default());
}

#[test]
fn a_verdict_belongs_to_one_secondary() {
    let mut w = Watch::new("kv");
    assert!(w.on_lease("host-b", judge_b(Some(5000))).say.is_some());
    // The pair broke and re-formed with host-c (renewing): protected, and
    // no "renews again" line about host-b.
    let c = answer(
        vec![lease("host-a", Some(100)), lease("host-c", Some(100))],
        Some(100),
    );
    let l = w.on_lease("host-c", judge(Ok(&c), "host-a", "host-c", H));
    assert_eq!(l, Look::default());
    // Unpaired in between: a later stale lease is a new line.
    assert!(w.on_lease("host-b", judge_b(Some(5000))).say.is_some());
    w.unpaired();
    assert!(w.on_lease("host-b", judge_b(Some(5000))).say.is_some());
    // Unknown with no verdict: protected.
    w.unpaired();
    assert_eq!(
        w.on_lease("host-b", SecondaryLease::Unknown("x".into())),
        Look::default()
    );
}

#[test]
fn status_says_not_protected_while_the_paired_secondary_cannot_take_over() {
    use crate::lockstep::member::State;
    use crate::lockstep::spec::PairHandle;
    let h = PairHandle::default();
    *h.member.lock().unwrap() = Some(State::Paired { g: 3 });
    *h.hosts.lock().unwrap() = ("host-a".into(), "host-b".into());
    assert_eq!(h.status()["protection"], "protected: secondary host-b");
    let mut w = Watch::new("kv");
    let look = w.on_lease("host-b", judge_b(Some(1200)));
    h.set_secondary_unfit("host-b", look.not_protected);
    assert_eq!(
        h.status()["protection"],
        "not protected: secondary host-b cannot renew its storage lease (for 1200 ms); \
         it could not take over"
    );
    // A verdict about another Secondary does not apply to this pair.
    h.set_secondary_unfit("host-c", Some("stale".into()));
    assert_eq!(h.status()["protection"], "protected: secondary host-b");
    // Renewed again.
    h.set_secondary_unfit(
        "host-b",
        w.on_lease("host-b", judge_b(Some(100))).not_protected,
    );
    assert_eq!(h.status()["protection"], "protected: secondary host-b");
}

/// The keeper's look (`keeper::look_at_pair`) against a fake fencing
/// agent whose lease table the test sets: status and the console follow
/// the Secondary's lease through a cut and back.
#[test]
fn the_keeper_follows_the_secondarys_lease_through_the_fencing_socket() {
    use std::sync::{Arc, Mutex};

    use config_schema::ctl::{Request, Response};

    use crate::lockstep::member::State;
    use crate::lockstep::respawn::keeper::{look_at_pair, Daemons, SecondaryWatch};
    use crate::lockstep::spec::PairHandle;

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cluster.toml"
    ))
    .unwrap();
    let config: config_schema::ClusterConfig = toml::from_str(&text).unwrap();
    let (here, peer) = (config.hosts[0].name.clone(), config.hosts[1].name.clone());
    let threshold = stale_after_ms(&config.timing);
    let rc = config_schema::runtime::RuntimeConfig {
        host_name: here.clone(),
        config,
        host_private_key: "00".repeat(32),
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fencing.sock");
    let listener = config_schema::ctl_server::bind(&socket).unwrap();
    let peer_ms = Arc::new(Mutex::new(Some(100u64)));
    let (served, h2, p2) = (Arc::clone(&peer_ms), here.clone(), peer.clone());
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(
            listener,
            config_schema::ctl_server::Policy::fencing_for_this_test(),
            move |req| match req {
                Request::Leases => Response::Leases {
                    leases: vec![lease(&h2, Some(50)), lease(&p2, *served.lock().unwrap())],
                    renewal_complete_ms: Some(50),
                },
                other => Response::Error {
                    message: format!("not served: {other:?}"),
                },
            },
        )
    });
    let h = PairHandle::default();
    *h.member.lock().unwrap() = Some(State::Paired { g: 2 });
    *h.hosts.lock().unwrap() = (here.clone(), peer.clone());
    let mut w = SecondaryWatch::new("kv", &here);
    // No heartbeat answers: the VM network is not judged.
    let heartbeat = dir.path().join("heartbeat.sock");
    let daemons = Daemons {
        fencing: &socket,
        heartbeat: &heartbeat,
    };
    let mut look = || look_at_pair(&h, &daemons, &rc, &mut w).lines.pop();
    assert_eq!(look(), None);
    assert_eq!(
        h.status()["protection"].as_str().unwrap(),
        format!("protected: secondary {peer}")
    );
    // The Secondary's host stops renewing.
    *peer_ms.lock().unwrap() = Some(threshold + 200);
    let line = look().expect("a line when the lease goes stale");
    assert!(
        line.starts_with(&format!(
            "ftvmm: vm kv: not protected: secondary {peer} cannot renew"
        )),
        "{line}"
    );
    let p = h.status()["protection"].as_str().unwrap().to_string();
    assert!(p.starts_with("not protected: "), "{p}");
    assert_eq!(look(), None, "one line per change");
    // Renewed again.
    *peer_ms.lock().unwrap() = Some(10);
    let line = look().expect("a line when the lease moves again");
    assert!(
        line.starts_with(&format!("ftvmm: vm kv: protected: secondary {peer} renews")),
        "{line}"
    );
    assert_eq!(
        h.status()["protection"].as_str().unwrap(),
        format!("protected: secondary {peer}")
    );
}
