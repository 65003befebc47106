//! Sender tests: scripted event sequences and the actions they produce.

use super::sender::*;

fn cfg(pages: u64) -> SenderConfig {
    SenderConfig {
        total_pages: pages,
        page_size: 4096,
        stop_copy_bytes: 2 * 4096,
        max_rounds: 5,
        ack_timeout_ms: 1000,
        pause_timeout_ms: 100,
    }
}

/// A sender through Start and Accept: round 0 sent, waiting for its dirty log.
fn started(c: SenderConfig) -> Sender {
    let pages = c.total_pages;
    let mut s = Sender::new(c);
    assert_eq!(
        s.on_event(Event::Start { now_ms: 0 }),
        vec![Action::SendOffer]
    );
    assert_eq!(
        s.on_event(Event::PeerAccepted),
        vec![
            Action::StartDirtyLog,
            Action::SendPages {
                round: 0,
                gfns: (0..pages).collect()
            },
            Action::ReadDirtyLog,
        ]
    );
    s
}

fn end_round(s: &mut Sender, round: u32, dirty: Vec<u64>, sent: u64) {
    let n = dirty.len() as u64;
    assert_eq!(
        s.on_event(Event::DirtyPages(dirty)),
        vec![Action::SendRoundEnd {
            round,
            pages_sent: sent,
            dirty_left: n
        }]
    );
}

#[test]
fn converges_then_switches_and_resumes() {
    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1, 2, 3, 4], 10);
    assert_eq!(
        s.on_event(Event::RoundAcked(0)),
        vec![
            Action::SendPages {
                round: 1,
                gfns: vec![1, 2, 3, 4]
            },
            Action::ReadDirtyLog
        ]
    );
    end_round(&mut s, 1, vec![2, 7], 4);
    assert_eq!(
        s.on_event(Event::RoundAcked(1)),
        vec![
            Action::PauseVcpus {
                reason: StopReason::SmallEnough
            },
            Action::ReadDirtyLog
        ]
    );
    assert!(s.vcpus_paused());
    // The final round: the carried set plus what the paused read found.
    assert_eq!(
        s.on_event(Event::DirtyPages(vec![9, 2])),
        vec![
            Action::SendPages {
                round: 2,
                gfns: vec![2, 7, 9]
            },
            Action::SendSwitch { round: 2 },
        ]
    );
    assert!(s
        .on_event(Event::SwitchSent {
            memory_sha256: [5; 32]
        })
        .is_empty());
    assert_eq!(
        s.on_event(Event::PeerRestored {
            memory_sha256: [5; 32]
        }),
        vec![Action::Done, Action::ResumeVcpus]
    );
    assert!(s.is_done());
    let st = s.stats();
    assert_eq!((st.rounds, st.pages_sent, st.final_round_pages), (3, 17, 3));
    // Done is final.
    assert!(s
        .on_event(Event::LinkLost { detail: "x".into() })
        .is_empty());
    assert!(s.is_done());
}

#[test]
fn stops_when_not_shrinking() {
    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1, 2, 3, 4, 5], 10);
    s.on_event(Event::RoundAcked(0));
    end_round(&mut s, 1, vec![1, 2, 3, 4, 5, 6], 5);
    assert_eq!(
        s.on_event(Event::RoundAcked(1))[0],
        Action::PauseVcpus {
            reason: StopReason::NotShrinking
        }
    );
}

#[test]
fn stops_at_max_rounds() {
    let mut s = started(cfg(100));
    let mut n = 50u64;
    for round in 0..5u32 {
        let sent = if round == 0 { 100 } else { n + 1 };
        end_round(&mut s, round, (0..n).collect(), sent);
        let a = s.on_event(Event::RoundAcked(round));
        if round < 4 {
            assert_eq!(
                a[0],
                Action::SendPages {
                    round: round + 1,
                    gfns: (0..n).collect()
                }
            );
        } else {
            assert_eq!(
                a[0],
                Action::PauseVcpus {
                    reason: StopReason::MaxRounds
                }
            );
        }
        n -= 1;
    }
    assert_eq!(s.stats().stop_reason, Some(StopReason::MaxRounds));
}

#[test]
fn peer_failures_and_cancel_fail_and_resume_a_paused_guest() {
    let mut s = started(cfg(10));
    let a = s.on_event(Event::PeerAborted {
        reason: "disk full".into(),
    });
    assert_eq!(
        a,
        vec![Action::Failed {
            reason: "receiver aborted: disk full".into()
        }]
    );
    assert!(s.failure().is_some());
    assert!(
        s.on_event(Event::RoundAcked(0)).is_empty(),
        "Failed is final"
    );

    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1], 10);
    s.on_event(Event::RoundAcked(0));
    assert!(s.vcpus_paused());
    let a = s.on_event(Event::Cancel {
        reason: "operator".into(),
    });
    assert_eq!(
        a,
        vec![
            Action::SendAbort {
                reason: "cancelled: operator".into()
            },
            Action::ResumeVcpus,
            Action::Failed {
                reason: "cancelled: operator".into()
            },
        ]
    );
    assert!(!s.vcpus_paused());
}

#[test]
fn wrong_round_ack_and_restored_digest_fail() {
    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1, 2, 3], 10);
    let a = s.on_event(Event::RoundAcked(1));
    assert!(
        matches!(&a[0], Action::SendAbort { reason } if reason.contains("RoundAck for round 1 in pre-copy round 0")),
        "{a:?}"
    );

    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1], 10);
    s.on_event(Event::RoundAcked(0));
    s.on_event(Event::DirtyPages(vec![]));
    s.on_event(Event::SwitchSent {
        memory_sha256: [1; 32],
    });
    let a = s.on_event(Event::PeerRestored {
        memory_sha256: [2; 32],
    });
    assert!(
        a.contains(&Action::ResumeVcpus) && s.failure().is_some(),
        "{a:?}"
    );
}

#[test]
fn timeouts() {
    let mut s = started(cfg(10));
    // The wait starts at the first tick after progress (round 0 was sent).
    assert!(s.on_event(Event::Tick { now_ms: 0 }).is_empty());
    assert!(s.on_event(Event::Tick { now_ms: 1000 }).is_empty());
    let a = s.on_event(Event::Tick { now_ms: 1001 });
    assert!(matches!(a.last(), Some(Action::Failed { reason }) if reason.contains("no progress")));

    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1], 10);
    s.on_event(Event::Tick { now_ms: 500 });
    s.on_event(Event::RoundAcked(0)); // paused
    assert!(s.on_event(Event::Tick { now_ms: 600 }).is_empty());
    assert!(s.on_event(Event::Tick { now_ms: 700 }).is_empty());
    let a = s.on_event(Event::Tick { now_ms: 701 });
    assert!(a.contains(&Action::ResumeVcpus), "{a:?}");
    assert!(s.failure().unwrap().contains("paused 101 ms"));
}

#[test]
#[should_panic(expected = "outside 10 pages")]
fn a_dirty_gfn_out_of_range_is_a_bug() {
    let mut s = started(cfg(10));
    s.on_event(Event::DirtyPages(vec![10]));
}

#[test]
#[should_panic(expected = "DirtyPages without ReadDirtyLog")]
fn dirty_pages_unasked_is_a_bug() {
    let mut s = started(cfg(10));
    end_round(&mut s, 0, vec![1], 10);
    s.on_event(Event::DirtyPages(vec![1]));
}

mod any_peer {
    use proptest::prelude::*;

    use super::*;

    fn peer_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::PeerAccepted),
            (0u32..4).prop_map(Event::RoundAcked),
            any::<u8>().prop_map(|b| Event::PeerRestored {
                memory_sha256: [b; 32]
            }),
            Just(Event::PeerRefused {
                reason: "no".into()
            }),
            Just(Event::PeerAborted {
                reason: "no".into()
            }),
            Just(Event::LinkLost {
                detail: "eof".into()
            }),
            (0u64..5000).prop_map(|now_ms| Event::Tick { now_ms }),
        ]
    }

    /// The driver performs `actions`, answering every ReadDirtyLog with
    /// `dirty` and every SendSwitch; tracks whether the guest is paused.
    fn drive(s: &mut Sender, mut actions: Vec<Action>, dirty: &[u64], paused: &mut bool) {
        while !actions.is_empty() {
            let mut next = Vec::new();
            for a in actions {
                match a {
                    Action::ReadDirtyLog => {
                        next.extend(s.on_event(Event::DirtyPages(dirty.to_vec())))
                    }
                    Action::SendSwitch { .. } => next.extend(s.on_event(Event::SwitchSent {
                        memory_sha256: [1; 32],
                    })),
                    Action::PauseVcpus { .. } => *paused = true,
                    Action::ResumeVcpus => *paused = false,
                    _ => {}
                }
            }
            actions = next;
        }
    }

    proptest! {
        /// Whatever the peer says, in any order: no panic, rounds bounded,
        /// Done and Failed final, the guest paused exactly while the sender
        /// says so, and never left paused once the transfer is over.
        #[test]
        fn any_peer_behaviour_keeps_the_sender_sound(
            evs in proptest::collection::vec((peer_event(), proptest::collection::vec(0u64..10, 0..5)), 0..20)
        ) {
            let mut s = Sender::new(cfg(10));
            let mut paused = false;
            let start = s.on_event(Event::Start { now_ms: 0 });
            drive(&mut s, start, &[], &mut paused);
            for (ev, dirty) in evs {
                let (done, failed) = (s.is_done(), s.failure().is_some());
                let actions = s.on_event(ev);
                if done || failed {
                    prop_assert!(actions.is_empty());
                }
                drive(&mut s, actions, &dirty, &mut paused);
                prop_assert_eq!(paused, s.vcpus_paused());
                prop_assert!(s.stats().rounds <= 5 + 1);
            }
            let end = s.on_event(Event::Cancel { reason: "end".into() });
            drive(&mut s, end, &[], &mut paused);
            prop_assert!(s.is_done() || s.failure().is_some());
            prop_assert!(!paused);
        }
    }
}
