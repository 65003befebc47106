//! Tests of durable generations at start (docs/design.md §1) against a
//! scripted fencing agent on a real control socket: what `Highest` names,
//! how each `Acquire` is answered and which hosts publish the VM.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use config_schema::ctl::{LeaseView, Request, Response};

use super::*;

/// The scripted agent's state; the tests change it while a start runs.
#[derive(Default)]
struct Script {
    /// (generation, owner, config generation) answered to `Highest`.
    highest: (u64, Option<String>, u64),
    /// Answers to the next `Acquire`s, in order; then every further one is
    /// won by `host-a`.
    acquire: Vec<Response>,
    /// Hosts that publish the VM.
    running_on: Vec<String>,
    /// Hosts whose lease expired (the others' are live).
    dead: Vec<String>,
    /// Every `Acquire` asked: (generation, config generation).
    asked: Vec<(u64, u64)>,
}

struct Fencing {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    script: Arc<Mutex<Script>>,
}

fn decided(generation: u64, owner: &str, won: bool) -> Response {
    Response::Decided {
        vm: "kv".into(),
        generation,
        owner: owner.into(),
        won,
        config_generation: 3,
        storage_cut: false,
    }
}

impl Fencing {
    fn serve(script: Script) -> Fencing {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fencing.sock");
        let listener = config_schema::ctl_server::bind(&socket).unwrap();
        let script = Arc::new(Mutex::new(script));
        let s = Arc::clone(&script);
        std::thread::spawn(move || {
            config_schema::ctl_server::serve(
                listener,
                config_schema::ctl_server::Policy::fencing_for_this_test(),
                move |req| {
                    let mut s = s.lock().unwrap();
                    match req {
                        Request::Highest { vm, .. } => Response::Highest {
                            vm,
                            generation: s.highest.0,
                            owner: s.highest.1.clone(),
                            config_generation: s.highest.2,
                        },
                        Request::Acquire {
                            generation,
                            config_generation,
                            ..
                        } => {
                            s.asked.push((generation, config_generation));
                            if s.acquire.is_empty() {
                                s.highest = (generation, Some("host-a".into()), config_generation);
                                decided(generation, "host-a", true)
                            } else {
                                let r = s.acquire.remove(0);
                                // A later generation on disk: Highest names it now.
                                if let Response::Superseded { by, .. } = r {
                                    s.highest = (by, Some("host-b".into()), s.highest.2);
                                }
                                r
                            }
                        }
                        Request::Leases => Response::Leases {
                            leases: ["host-a", "host-b", "host-c"]
                                .iter()
                                .map(|h| LeaseView {
                                    host: h.to_string(),
                                    live: !s.dead.iter().any(|d| d == h),
                                    last_renewal_ms: Some(100),
                                    expired: s.dead.iter().any(|d| d == h),
                                    running: if s.running_on.iter().any(|r| r == h) {
                                        vec!["kv".into()]
                                    } else {
                                        Vec::new()
                                    },
                                })
                                .collect(),
                            renewal_complete_ms: Some(100),
                        },
                        other => Response::Error {
                            message: format!("not served: {other:?}"),
                        },
                    }
                },
            )
        });
        Fencing {
            _dir: dir,
            socket,
            script,
        }
    }

    /// host-a starts `kv` under config generation `config`.
    fn start(&self, config: u64) -> (Result<u64, StartError>, Vec<u64>) {
        let cancel = AtomicBool::new(false);
        let published = Mutex::new(Vec::new());
        let acquiring = |g| published.lock().unwrap().push(g);
        let r = win_start_generation(&StartCtx {
            vm: "kv",
            host: "host-a",
            config_generation: config,
            fencing: &self.socket,
            cancel: &cancel,
            acquiring: &acquiring,
            publish_settle: Duration::from_millis(300),
        });
        (r, published.into_inner().unwrap())
    }

    fn asked(&self) -> Vec<(u64, u64)> {
        self.script.lock().unwrap().asked.clone()
    }
}

#[test]
fn a_start_wins_the_generation_after_the_highest_on_disk_and_publishes_it_first() {
    let f = Fencing::serve(Script {
        highest: (41, Some("host-b".into()), 2),
        ..Script::default()
    });
    let (r, published) = f.start(3);
    assert_eq!(r, Ok(42), "not generation 1 again: the disk remembers 41");
    assert_eq!(published, [42]);
    assert_eq!(
        f.asked(),
        [(42, 3)],
        "asked under this host's config generation"
    );
}

#[test]
fn a_superseded_answer_means_ask_again_higher() {
    let f = Fencing::serve(Script {
        highest: (5, None, 1),
        acquire: vec![Response::Superseded {
            vm: "kv".into(),
            generation: 6,
            by: 22,
        }],
        ..Script::default()
    });
    let (r, _) = f.start(1);
    assert_eq!(r, Ok(23));
    assert_eq!(f.asked(), [(6, 1), (23, 1)]);
}

#[test]
fn a_host_with_an_older_config_than_the_recorded_one_refuses_to_start() {
    let f = Fencing::serve(Script {
        highest: (7, Some("host-b".into()), 5),
        ..Script::default()
    });
    let (r, published) = f.start(4);
    assert_eq!(
        r,
        Err(StartError::OlderConfig {
            generation: 7,
            recorded: 5,
            ours: 4
        })
    );
    assert!(
        published.is_empty() && f.asked().is_empty(),
        "nothing acquired"
    );
}

#[test]
fn another_host_winning_the_start_generation_first_is_an_error_not_a_second_copy() {
    let f = Fencing::serve(Script {
        highest: (2, None, 1),
        acquire: vec![decided(3, "host-b", false)],
        ..Script::default()
    });
    assert_eq!(
        f.start(1).0,
        Err(StartError::StartedElsewhere {
            generation: 3,
            owner: "host-b".into()
        })
    );
}

#[test]
fn a_start_refuses_while_the_owner_is_live_and_publishes_the_vm_and_wins_after() {
    let f = Fencing::serve(Script {
        highest: (9, Some("host-b".into()), 1),
        running_on: vec!["host-b".into()],
        ..Script::default()
    });
    let (r, published) = f.start(1);
    assert_eq!(
        r,
        Err(StartError::RunningElsewhere {
            generation: 9,
            owner: "host-b".into()
        }),
        "the caller becomes a standby for a transfer instead"
    );
    assert!(
        published.is_empty() && f.asked().is_empty(),
        "nothing acquired"
    );
    f.script.lock().unwrap().running_on.clear();
    let (r, _) = f.start(1);
    assert_eq!(r, Ok(10), "once host-b no longer runs it");
}

/// Chaos seed 105, at the start itself: the owner died, its Secondary
/// (host-c) publishes the VM while it drains; host-a does not start it,
/// withdraws any publication of its own, and starts once host-c lost.
#[test]
fn a_start_waits_while_another_host_claims_the_vm_its_dead_owner_ran() {
    let f = Fencing::serve(Script {
        highest: (4, Some("host-b".into()), 1),
        dead: vec!["host-b".into()],
        running_on: vec!["host-c".into()],
        ..Script::default()
    });
    let (r, published) = std::thread::scope(|sc| {
        let start = sc.spawn(|| f.start(1));
        std::thread::sleep(Duration::from_millis(800));
        assert!(f.asked().is_empty(), "no Acquire while host-c claims");
        f.script.lock().unwrap().running_on.clear();
        start.join().unwrap()
    });
    assert_eq!(r, Ok(5));
    assert_eq!(published.last(), Some(&5));
    assert!(
        published[..published.len() - 1].iter().all(|g| *g == 0),
        "only withdrawals before the Acquire: {published:?}"
    );
}

#[test]
fn a_secondary_pairs_only_with_the_owner_of_the_highest_generation() {
    let f = Fencing::serve(Script {
        highest: (12, Some("host-a".into()), 1),
        ..Script::default()
    });
    assert_eq!(
        check_offered_generation(&f.socket, "kv", 12, "host-a"),
        Ok(())
    );
    let stale = check_offered_generation(&f.socket, "kv", 1, "host-a").unwrap_err();
    assert!(
        stale.contains(
            "generation 1 offered by host-a, but the highest on disk is 12 owned by host-a"
        ),
        "{stale}"
    );
    let other = check_offered_generation(&f.socket, "kv", 12, "host-c").unwrap_err();
    assert!(other.contains("owned by host-a"), "{other}");
}

#[test]
fn a_join_is_offered_by_the_owner_of_the_highest_generation_in_it_or_an_earlier_one() {
    let f = Fencing::serve(Script {
        highest: (12, Some("host-a".into()), 1),
        ..Script::default()
    });
    // host-a offered 10 and re-won 11 and 12 since (its grant flapped): the
    // join may go on; it pairs in 12, checked again at `Paired`.
    assert_eq!(check_join_offer(&f.socket, "kv", 10, "host-a"), Ok(()));
    assert_eq!(check_join_offer(&f.socket, "kv", 12, "host-a"), Ok(()));
    let ahead = check_join_offer(&f.socket, "kv", 13, "host-a").unwrap_err();
    assert!(ahead.contains("highest on disk is 12"), "{ahead}");
    let other = check_join_offer(&f.socket, "kv", 12, "host-c").unwrap_err();
    assert!(other.contains("owned by host-a"), "{other}");
}

fn lease(host: &str, live: bool, expired: bool, running: &[&str]) -> LeaseView {
    LeaseView {
        host: host.into(),
        live,
        last_renewal_ms: live.then_some(100),
        expired,
        running: running.iter().map(|r| r.to_string()).collect(),
    }
}

#[test]
fn a_host_that_cannot_judge_the_owners_lease_never_takes_the_vm_as_running_nowhere() {
    let h = Highest {
        generation: 3,
        owner: Some("host-c".into()),
        config_generation: 1,
    };
    let st = |l: &[LeaseView]| owner_state(&h, "host-a", "kv", Ok(l));
    // Chaos seed 22: host-a rebooted; its fencing had read host-c's lease
    // once (a baseline, not movement): neither live nor expired.
    assert!(matches!(
        st(&[lease("host-c", false, false, &[])]),
        Owner::Unjudged { .. }
    ));
    assert!(matches!(st(&[]), Owner::Unjudged { .. }));
    assert!(matches!(
        owner_state(&h, "host-a", "kv", Err("socket gone")),
        Owner::Unjudged { .. }
    ));
    assert_eq!(
        st(&[lease("host-c", true, false, &["kv"])]),
        Owner::Runs("host-c".into())
    );
    assert_eq!(
        st(&[lease("host-c", true, false, &[])]),
        Owner::Unpublished("host-c".into())
    );
    assert_eq!(st(&[lease("host-c", false, true, &["kv"])]), Owner::Nobody);
    // This host's own generation, or none: nobody else.
    assert_eq!(owner_state(&h, "host-c", "kv", Ok(&[])), Owner::Nobody);
}

#[test]
fn an_unpublished_owner_counts_as_nobody_only_after_the_settle_in_one_generation() {
    let settle = Duration::from_millis(50);
    let mut since = None;
    let o = Owner::Unpublished("host-c".into());
    assert!(!settled(&o, 3, &mut since, settle));
    std::thread::sleep(settle);
    // A new generation restarts the wait.
    assert!(!settled(&o, 4, &mut since, settle));
    assert!(!settled(&o, 4, &mut since, settle));
    std::thread::sleep(settle);
    assert!(settled(&o, 4, &mut since, settle));
    // Published in between: the wait starts again.
    assert!(!settled(
        &Owner::Runs("host-c".into()),
        4,
        &mut since,
        settle
    ));
    assert!(!settled(&o, 4, &mut since, settle));
    let unjudged = Owner::Unjudged {
        owner: "host-c".into(),
        why: "x".into(),
    };
    std::thread::sleep(settle);
    assert!(!settled(&unjudged, 4, &mut since, settle));
    assert!(settled(&Owner::Nobody, 4, &mut since, settle));
}

#[test]
fn an_owner_seen_renewing_then_expired_died_in_this_hosts_view() {
    let h = Highest {
        generation: 3,
        owner: Some("host-a".into()),
        config_generation: 1,
    };
    let view = |live, expired, moved: Option<u64>| LeaseView {
        host: "host-a".into(),
        live,
        last_renewal_ms: moved,
        expired,
        running: Vec::new(),
    };
    // Seen moving, then still for the lease timeout: it died while watched.
    assert!(owner_died_in_view(
        &h,
        "host-b",
        &[view(false, true, Some(9000))]
    ));
    // Expired but never seen moving (the cluster powers on; host-a may be
    // booting slowly): not known to have died.
    assert!(!owner_died_in_view(
        &h,
        "host-b",
        &[view(false, true, None)]
    ));
    // Live, or not judged yet: not dead.
    assert!(!owner_died_in_view(
        &h,
        "host-b",
        &[view(true, false, Some(100))]
    ));
    assert!(!owner_died_in_view(
        &h,
        "host-b",
        &[view(false, false, Some(7000))]
    ));
    // This host's own generation, no owner, or no lease row: nothing to say.
    assert!(!owner_died_in_view(
        &h,
        "host-a",
        &[view(false, true, Some(9000))]
    ));
    let nobody = Highest {
        owner: None,
        ..h.clone()
    };
    assert!(!owner_died_in_view(
        &nobody,
        "host-b",
        &[view(false, true, Some(9000))]
    ));
    assert!(!owner_died_in_view(&h, "host-b", &[]));
}

/// Chaos seed 105: host-a (the owner) died with its storage; host-b, its
/// Secondary, slowed, was still draining; host-c saw the owner's lease
/// expire and nobody publishing, and cold-started the VM. A host that
/// publishes the VM besides the owner holds it now.
#[test]
fn a_host_publishing_the_vm_besides_its_owner_blocks_a_start_until_its_lease_expires() {
    let h = Highest {
        generation: 1,
        owner: Some("host-a".into()),
        config_generation: 1,
    };
    let dead_owner = lease("host-a", false, true, &["kv"]);
    let st = |l: &[LeaseView]| owner_state(&h, "host-c", "kv", Ok(l));
    assert_eq!(st(std::slice::from_ref(&dead_owner)), Owner::Nobody);
    let claim = [dead_owner.clone(), lease("host-b", true, false, &["kv"])];
    assert_eq!(st(&claim), Owner::Claimed("host-b".into()));
    let mut since = None;
    assert!(!settled(&st(&claim), 1, &mut since, Duration::ZERO));
    // Not judged yet (this host just booted) is not expired: still held.
    let unjudged = [dead_owner.clone(), lease("host-b", false, false, &["kv"])];
    assert_eq!(st(&unjudged), Owner::Claimed("host-b".into()));
    // It died (lease expired), or stopped publishing (it lost): nobody.
    let died = [dead_owner.clone(), lease("host-b", false, true, &["kv"])];
    assert_eq!(st(&died), Owner::Nobody);
    let lost = [dead_owner.clone(), lease("host-b", true, false, &["other"])];
    assert_eq!(st(&lost), Owner::Nobody);
    // A live owner that publishes is where it runs, whoever else claims.
    let runs = [
        lease("host-a", true, false, &["kv"]),
        lease("host-b", true, false, &["kv"]),
    ];
    assert_eq!(st(&runs), Owner::Runs("host-a".into()));
    // This host's own publication is not someone else's claim.
    assert_eq!(owner_state(&h, "host-b", "kv", Ok(&claim)), Owner::Nobody);
    // Seed 105 again: host-b drained and claimed, but its renewals had
    // stalled for 7 s, so its record on disk did not show the claim yet.
    // Live but not renewed lately: it may claim; expired: it died; never
    // seen renewing: no evidence either way (the owner's rule covers a
    // reader that just booted).
    let mut stalled = lease("host-b", true, false, &[]);
    stalled.last_renewal_ms = Some(7_000);
    let stale = [dead_owner.clone(), stalled.clone()];
    assert!(matches!(st(&stale), Owner::Stale { ref host, .. } if host == "host-b"));
    assert!(!settled(&st(&stale), 1, &mut since, Duration::ZERO));
    stalled.last_renewal_ms = Some(300);
    assert_eq!(st(&[dead_owner.clone(), stalled.clone()]), Owner::Nobody);
    stalled.last_renewal_ms = Some(9_000);
    stalled.live = false;
    stalled.expired = true;
    assert_eq!(st(&[dead_owner.clone(), stalled.clone()]), Owner::Nobody);
    stalled.last_renewal_ms = None;
    stalled.expired = false;
    assert_eq!(st(&[dead_owner.clone(), stalled]), Owner::Nobody);
    // Before any generation nothing holds state: fencing decides the race.
    let none = Highest {
        generation: 0,
        owner: None,
        config_generation: 0,
    };
    assert_eq!(
        owner_state(&none, "host-c", "kv", Ok(&claim)),
        Owner::Nobody
    );
}

#[test]
fn a_start_says_what_became_of_the_owner_and_every_other_lease() {
    let h = Highest {
        generation: 2,
        owner: Some("host-a".into()),
        config_generation: 1,
    };
    let mut never = lease("host-d", false, false, &[]);
    never.last_renewal_ms = None;
    let leases = [
        lease("host-a", false, true, &["kv"]),
        lease("host-b", false, true, &[]),
        lease("host-c", true, false, &[]),
        never,
    ];
    let why = |owner: &Owner| start_reason(&h, "host-c", owner, Ok(&leases));
    assert_eq!(
        why(&Owner::Nobody),
        "after host-a (generation 2): lease expired; host-b: lease expired; \
         host-d: not seen renewing yet"
    );
    assert!(why(&Owner::Unpublished("host-a".into()))
        .starts_with("after host-a (generation 2): alive, not publishing the VM; "));
    let first = Highest {
        generation: 0,
        owner: None,
        config_generation: 0,
    };
    assert_eq!(
        start_reason(&first, "host-a", &Owner::Nobody, Ok(&leases[2..3])),
        "first start (no generation on disk); host-c: renewing, does not publish the VM"
    );
    let undecided = Highest {
        owner: None,
        ..h.clone()
    };
    assert!(
        start_reason(&undecided, "host-c", &Owner::Nobody, Ok(&leases))
            .starts_with("after generation 2 (no owner recorded); host-a: lease expired; ")
    );
    let own = Highest {
        owner: Some("host-c".into()),
        ..h.clone()
    };
    assert_eq!(
        start_reason(&own, "host-c", &Owner::Nobody, Err("device gone")),
        "after this host (generation 2); other leases unreadable (device gone)"
    );
}
