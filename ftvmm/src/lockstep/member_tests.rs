//! Unit tests of the member state machine: one test per rule of the module
//! docs.

use super::*;

const T: u64 = 1_000;

fn primary() -> Member {
    Member::primary("kv", "host-b", 1, true, T)
}

fn secondary() -> Member {
    Member::secondary("kv", "host-a", 1, T)
}

fn has(actions: &[Action], f: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(f)
}

fn tick(now_ms: u64, silent_ms: u64) -> Event {
    Event::Tick {
        now_ms,
        silent_ms,
        unacked_ms: 0,
        unacked_grace_ms: 0,
    }
}

#[test]
fn a_primary_that_loses_its_secondary_holds_and_races_at_once() {
    let mut m = primary();
    assert_eq!(m.initial_gate(), Gate::ByAcks);
    let a = m.on_event(Event::ChannelLost {
        why: "send failed".into(),
    });
    assert_eq!(a[0], Action::Gate(Gate::Held), "holding comes first");
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    assert!(matches!(m.state(), State::Racing { g: 1, .. }));
    // Another loss while racing changes nothing.
    assert!(m.on_event(tick(5_000, 5_000)).is_empty());
    let a = m.on_event(Event::Decided {
        generation: 2,
        decision: Decision::Won,
    });
    assert!(has(&a, |x| *x == Action::Gate(Gate::Open)));
    assert_eq!(m.state(), &State::Solo { g: 2 });
    assert_eq!(m.acting_generation(), Some(2));
}

#[test]
fn silence_alone_is_a_loss_and_a_diverged_secondary_too() {
    let mut m = primary();
    assert!(m.on_event(tick(900, 999)).is_empty(), "below the timeout");
    let a = m.on_event(tick(1_000, 1_000));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    let mut m = primary();
    let a = m.on_event(Event::PeerDiverged {
        what: "at exit 5".into(),
    });
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
}

/// A Secondary heard but acknowledging nothing new (the Primary-to-Secondary
/// direction cut while it still reports replay progress, or its receiving
/// side wedged): its unacknowledged log ages past the failure timeout,
/// which is a loss like silence; a Secondary never acts on it.
#[test]
fn a_secondary_heard_but_not_acknowledging_is_a_loss() {
    let unacked = |now_ms, unacked_ms| Event::Tick {
        now_ms,
        silent_ms: 10,
        unacked_ms,
        unacked_grace_ms: 0,
    };
    let mut m = primary();
    assert!(
        m.on_event(unacked(900, 999)).is_empty(),
        "below the timeout"
    );
    let a = m.on_event(unacked(1_000, 1_000));
    assert_eq!(a[0], Action::Gate(Gate::Held), "holding comes first");
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    assert!(
        has(&a, |x| matches!(x, Action::Say(l) if l.contains(
            "secondary host-b heard but acknowledged none of the log sent 1000 ms ago"
        ))),
        "{a:?}"
    );
    let mut s = secondary();
    assert!(s.on_event(unacked(1_000, 5_000)).is_empty());
}

/// Checkpoint: a Secondary heard but acknowledging no epoch is lost once
/// the wait passes the failure timeout plus the grace its waiting epoch's
/// apply gets, and says so in its reason (console and status); within the
/// grace it is not.
#[test]
fn a_checkpoint_secondary_heard_but_acknowledging_no_epoch_is_lost_past_its_grace() {
    let unacked = |now_ms, unacked_ms, unacked_grace_ms| Event::Tick {
        now_ms,
        silent_ms: 10,
        unacked_ms,
        unacked_grace_ms,
    };
    let said =
        |a: &[Action], what: &str| has(a, |x| matches!(x, Action::Say(l) if l.contains(what)));
    let mut m = primary().acknowledging(Acks::Epochs);
    assert!(
        m.on_event(unacked(900, 999, 0)).is_empty(),
        "below the timeout"
    );
    assert!(
        m.on_event(unacked(4_900, 4_999, 4_000)).is_empty(),
        "the epoch's apply may take its grace"
    );
    let a = m.on_event(unacked(5_000, 5_000, 4_000));
    assert_eq!(a[0], Action::Gate(Gate::Held), "holding comes first");
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    let why = "secondary host-b heard but acknowledged no epoch for 5000 ms (4000 ms of it \
               allowed for applying the epoch that waits)";
    assert!(said(&a, why), "{a:?}");
    assert!(m.state().to_string().contains(why), "{}", m.state());
    // Without a grace, the failure timeout alone.
    let mut m = primary().acknowledging(Acks::Epochs);
    let a = m.on_event(unacked(1_000, 1_000, 0));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    assert!(
        said(
            &a,
            "secondary host-b heard but acknowledged no epoch for 1000 ms)"
        ),
        "{a:?}"
    );
    let mut s = secondary().acknowledging(Acks::Epochs);
    assert!(s.on_event(unacked(1_000, 5_000, 0)).is_empty());
}

#[test]
fn losing_or_being_superseded_halts_and_halted_is_final() {
    for d in [
        Decision::Lost {
            owner: "host-b".into(),
        },
        Decision::Superseded { by: 9 },
    ] {
        let mut m = primary();
        m.on_event(Event::ChannelLost { why: "x".into() });
        let a = m.on_event(Event::Decided {
            generation: 2,
            decision: d,
        });
        assert!(has(&a, |x| *x == Action::StopVcpu));
        assert!(m.is_halted());
        assert!(m
            .on_event(Event::Decided {
                generation: 2,
                decision: Decision::Won
            })
            .is_empty());
        assert!(m.on_event(Event::Grant(Grant::Ok)).is_empty());
    }
}

#[test]
fn a_decision_for_another_generation_is_ignored() {
    let mut m = primary();
    m.on_event(Event::ChannelLost { why: "x".into() });
    assert!(m
        .on_event(Event::Decided {
            generation: 7,
            decision: Decision::Won
        })
        .is_empty());
    assert!(matches!(m.state(), State::Racing { .. }));
}

#[test]
fn a_secondary_replays_then_races_and_goes_live() {
    let mut m = secondary();
    assert_eq!(m.initial_gate(), Gate::Held);
    assert_eq!(m.published_generation(), 0, "a follower publishes nothing");
    let a = m.on_event(Event::ChannelLost {
        why: "primary said bye".into(),
    });
    // Chaos seed 105: from the suspicion on, through a drain that may take
    // seconds, the host publishes the generation it will claim, so no
    // third host cold-starts the VM meanwhile.
    assert_eq!(
        m.published_generation(),
        2,
        "a draining Secondary publishes"
    );
    assert!(has(&a, |x| matches!(x, Action::CloseLink { .. })));
    assert!(
        !has(&a, |x| matches!(x, Action::Acquire { .. })),
        "replay first"
    );
    let a = m.on_event(Event::ReplayExhausted { at: 4_242 });
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    assert_eq!(m.published_generation(), 2);
    let a = m.on_event(Event::Decided {
        generation: 2,
        decision: Decision::Won,
    });
    assert_eq!(
        a,
        vec![
            Action::GoLive {
                generation: 2,
                at: 4_242
            },
            Action::Gate(Gate::Open)
        ]
    );
    assert_eq!(m.state(), &State::Solo { g: 2 });
}

/// Found by the model check (tests/member_model.rs): fencing's re-check after
/// a freeze reports that another host started a later generation; a member
/// still claiming `g + 1` ignored it and went live on its stale win.
#[test]
fn a_claimer_is_deposed_by_a_generation_after_the_one_it_claims() {
    let mut m = secondary();
    m.on_event(Event::ChannelLost {
        why: "link reset".into(),
    });
    m.on_event(Event::ReplayExhausted { at: 5 });
    // Its own race (generation 2) is not a deposition: its answer settles it.
    let a = m.on_event(Event::Deposed {
        generation: 2,
        by: "host-a".into(),
    });
    assert!(a.is_empty(), "{a:?}");
    let a = m.on_event(Event::Deposed {
        generation: 3,
        by: "host-c".into(),
    });
    assert!(has(&a, |x| *x == Action::StopVcpu));
    assert!(matches!(
        m.state(),
        State::Halted(Halt::Deposed { generation: 3, .. })
    ));
    let a = m.on_event(Event::Decided {
        generation: 2,
        decision: Decision::Won,
    });
    assert!(a.is_empty(), "a halted member stays halted: {a:?}");
}

/// Found by the model check (tests/member_model.rs): a Secondary whose grant
/// lapsed while its claim was decided went live with its gate open and, when
/// the grant came back, released output in `g` although another host might
/// have started `g + 1` meanwhile.
#[test]
fn a_secondary_winning_without_its_grant_goes_live_held_and_rewins_before_output() {
    let mut m = secondary();
    m.on_event(Event::ChannelLost {
        why: "link reset".into(),
    });
    let a = m.on_event(Event::ReplayExhausted { at: 77 });
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    m.on_event(Event::Grant(Grant::Lapsed));
    let a = m.on_event(Event::Decided {
        generation: 2,
        decision: Decision::Won,
    });
    assert!(has(&a, |x| *x
        == Action::GoLive {
            generation: 2,
            at: 77
        }));
    assert!(
        !has(&a, |x| matches!(x, Action::Gate(Gate::Open | Gate::ByAcks))),
        "output must stay held without the grant: {a:?}"
    );
    assert_eq!(m.state(), &State::Fenced { g: 2 });
    // The grant comes back: re-win generation 3 first.
    let a = m.on_event(Event::Grant(Grant::Ok));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 3 }));
    assert!(!has(&a, |x| matches!(x, Action::Gate(Gate::Open))));
    let a = m.on_event(Event::Decided {
        generation: 3,
        decision: Decision::Won,
    });
    assert!(has(&a, |x| *x == Action::Gate(Gate::Open)));
    assert_eq!(m.state(), &State::Solo { g: 3 });
}

#[test]
fn a_silent_primary_or_a_resignation_starts_the_secondary_draining() {
    let mut m = secondary();
    let a = m.on_event(tick(1_000, 1_000));
    assert!(has(&a, |x| matches!(x, Action::CloseLink { .. })));
    assert!(matches!(m.state(), State::Draining { .. }));
    let mut m = secondary();
    m.on_event(Event::PeerResigned {
        why: "storage lost".into(),
    });
    assert!(matches!(m.state(), State::Draining { .. }));
}

#[test]
fn a_live_failure_timeout_moves_a_primarys_silence_but_never_lowers_a_secondarys() {
    // Raised live: both wait longer.
    let mut p = primary();
    p.set_live_failure_timeout(3 * T);
    assert!(p.on_event(tick(2_000, 2_000)).is_empty());
    let a = p.on_event(tick(3_000, 3 * T));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    let mut s = secondary();
    s.set_live_failure_timeout(3 * T);
    assert!(s.on_event(tick(2_000, 2_000)).is_empty());
    s.on_event(tick(3_000, 3 * T));
    assert!(matches!(s.state(), State::Draining { .. }));
    // Lowered live: the Primary races sooner (Disk Paxos decides); the
    // Secondary still waits the booted timeout, which bounds the Primary's
    // ack freshness.
    let mut p = primary();
    p.set_live_failure_timeout(T / 4);
    let a = p.on_event(tick(250, T / 4));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    let mut s = secondary();
    s.set_live_failure_timeout(T / 4);
    assert!(s.on_event(tick(900, 900)).is_empty());
    assert!(matches!(s.state(), State::Following { .. }));
    s.on_event(tick(1_000, T));
    assert!(matches!(s.state(), State::Draining { .. }));
}

#[test]
fn a_diverged_secondary_says_so_and_never_races() {
    let mut m = secondary();
    let a = m.on_event(Event::Diverged {
        what: "at exit 526".into(),
    });
    assert!(has(&a, |x| matches!(x, Action::SendDiverged { .. })));
    assert!(m.is_halted());
    assert!(m.on_event(Event::ReplayExhausted { at: 526 }).is_empty());
    assert!(m
        .on_event(Event::ChannelLost { why: "x".into() })
        .is_empty());
}

#[test]
fn a_paired_primary_losing_its_grant_holds_then_hands_over_once_everything_is_acked() {
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    let a = m.on_event(Event::Grant(Grant::Withdrawn {
        reason: "lease renewal failing".into(),
    }));
    assert_eq!(a[0], Action::Gate(Gate::Held));
    assert!(
        !has(&a, |x| *x == Action::StopVcpu),
        "a storage hiccup holds output but keeps the pair"
    );
    assert!(m.on_event(tick(10_000 + T - 1, 0)).is_empty());
    let a = m.on_event(tick(10_000 + T, 0));
    assert_eq!(a[0], Action::Gate(Gate::Held));
    assert!(has(&a, |x| *x == Action::StopVcpu));
    assert!(matches!(m.state(), State::HandingOver { .. }));
    let a = m.on_event(Event::AllAcked);
    assert!(has(&a, |x| matches!(x, Action::Resign { .. })));
    assert_eq!(
        m.state(),
        &State::Halted(Halt::HandedOver { to_secondary: true })
    );
    // Not everything acked in time: no resignation, the channel is closed.
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    m.on_event(Event::Grant(Grant::Withdrawn { reason: "x".into() }));
    m.on_event(tick(10_000 + T, 0));
    assert!(m
        .on_event(tick(10_000 + T + HAND_OVER_MS - 1, 0))
        .is_empty());
    let a = m.on_event(tick(10_000 + T + HAND_OVER_MS, 0));
    assert!(has(&a, |x| matches!(x, Action::CloseLink { .. })));
    assert!(!has(&a, |x| matches!(x, Action::Resign { .. })));
}

#[test]
fn a_paired_primary_whose_host_cannot_serve_hands_over_at_once_and_says_why() {
    let why = "VM network lost on host-a (no peer heard on it for 1500 ms) while secondary \
               host-b hears host-c";
    let leave = || Event::LeaveHost { why: why.into() };
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    let a = m.on_event(leave());
    assert_eq!(a[0], Action::Gate(Gate::Held), "holding comes first");
    assert!(has(&a, |x| *x == Action::StopVcpu));
    assert!(has(&a, |x| *x
        == Action::Say(format!(
            "ftvmm: vm kv: {why}; handing the VM over to secondary host-b"
        ))));
    assert!(matches!(m.state(), State::HandingOver { g: 1, .. }));
    // Asked again while handing over: nothing new.
    assert!(m.on_event(leave()).is_empty());
    let a = m.on_event(Event::AllAcked);
    assert!(has(&a, |x| *x == Action::Resign { reason: why.into() }));
    assert!(has(&a, |x| *x
        == Action::Say(format!(
            "ftvmm: vm kv: {why}; handed the VM over to secondary host-b in generation 1; \
             halting here"
        ))));
    assert_eq!(
        m.state(),
        &State::Halted(Halt::HandedOver { to_secondary: true })
    );
    // Not acked in time: it halts without resigning, and says why.
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    m.on_event(leave());
    let a = m.on_event(tick(10_000 + HAND_OVER_MS, 0));
    assert!(has(
        &a,
        |x| matches!(x, Action::CloseLink { reason } if reason.starts_with(why))
    ));
    assert_eq!(
        m.state(),
        &State::Halted(Halt::HandedOver {
            to_secondary: false
        })
    );
    // A Primary already holding for fencing leaves too.
    let mut m = primary();
    m.on_event(Event::Grant(Grant::Withdrawn { reason: "x".into() }));
    m.on_event(leave());
    assert!(matches!(m.state(), State::HandingOver { .. }));
}

#[test]
fn only_a_paired_primary_leaves_its_host() {
    let leave = || Event::LeaveHost { why: "x".into() };
    // Alone: nobody to hand the VM to.
    let mut m = Member::primary("kv", "host-b", 1, false, T);
    assert!(m.on_event(leave()).is_empty());
    assert_eq!(m.state(), &State::Solo { g: 1 });
    // A Secondary never takes it.
    let mut m = secondary();
    assert!(m.on_event(leave()).is_empty());
    assert_eq!(m.state(), &State::Following { g: 1 });
    // Racing: the pair is already gone.
    let mut m = primary();
    m.on_event(Event::ChannelLost { why: "x".into() });
    assert!(m.on_event(leave()).is_empty());
    assert!(matches!(m.state(), State::Racing { .. }));
}

#[test]
fn a_grant_back_within_the_failure_timeout_resumes_the_pair_and_a_loss_meanwhile_races() {
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    m.on_event(Event::Grant(Grant::Withdrawn {
        reason: "lease renewal failing".into(),
    }));
    m.on_event(tick(10_000 + T - 100, 0));
    let a = m.on_event(Event::Grant(Grant::Ok));
    assert_eq!(a[0], Action::Gate(Gate::ByAcks));
    assert_eq!(m.state(), &State::Paired { g: 1 });
    // Later ticks hand nothing over.
    assert!(m.on_event(tick(10_000 + 3 * T, 0)).is_empty());
    // Held, and then the Secondary is lost: race as a paired Primary does.
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    m.on_event(Event::Grant(Grant::Withdrawn { reason: "x".into() }));
    let a = m.on_event(Event::ChannelLost { why: "bye".into() });
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
    assert!(matches!(m.state(), State::Racing { g: 1, .. }));
    // Held, and the channel goes silent: the same.
    let mut m = primary();
    m.on_event(tick(10_000, 0));
    m.on_event(Event::Grant(Grant::Withdrawn { reason: "x".into() }));
    let a = m.on_event(tick(10_000 + 10, T));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 2 }));
}

#[test]
fn a_lone_primary_holds_without_its_grant_and_rewins_before_output_flows() {
    let mut m = Member::primary("kv", "", 3, false, T);
    assert_eq!(m.initial_gate(), Gate::Open);
    let a = m.on_event(Event::Grant(Grant::Lapsed));
    assert_eq!(a, vec![Action::Gate(Gate::Held)]);
    let a = m.on_event(Event::Grant(Grant::Ok));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 4 }));
    assert!(
        !has(&a, |x| *x == Action::Gate(Gate::Open)),
        "not before the re-check"
    );
    let a = m.on_event(Event::Decided {
        generation: 4,
        decision: Decision::Won,
    });
    assert!(has(&a, |x| *x == Action::Gate(Gate::Open)));
    assert_eq!(m.state(), &State::Solo { g: 4 });
    // Fenced again while re-checking: a late win keeps it held.
    m.on_event(Event::Grant(Grant::Lapsed));
    m.on_event(Event::Grant(Grant::Ok));
    m.on_event(Event::Grant(Grant::Lapsed));
    let a = m.on_event(Event::Decided {
        generation: 5,
        decision: Decision::Won,
    });
    assert!(!has(&a, |x| *x == Action::Gate(Gate::Open)));
    assert_eq!(m.state(), &State::Fenced { g: 5 });
}

#[test]
fn deposition_by_a_later_generation_halts_a_primary_only() {
    let mut m = primary();
    assert!(m
        .on_event(Event::Deposed {
            generation: 1,
            by: "host-b".into()
        })
        .is_empty());
    let a = m.on_event(Event::Deposed {
        generation: 2,
        by: "host-c".into(),
    });
    assert_eq!(a[0], Action::Gate(Gate::Held));
    assert!(matches!(m.state(), State::Halted(Halt::Deposed { .. })));
    let mut s = secondary();
    assert!(s
        .on_event(Event::Deposed {
            generation: 5,
            by: "host-c".into()
        })
        .is_empty());
}

#[test]
fn stop_halts_whatever_the_state() {
    for mut m in [primary(), secondary()] {
        let a = m.on_event(Event::Stop);
        assert!(has(&a, |x| *x == Action::StopVcpu));
        assert_eq!(m.state(), &State::Halted(Halt::Stopped));
    }
}

#[test]
#[should_panic(expected = "invalid transition")]
fn a_transition_out_of_halted_is_a_bug() {
    let mut m = primary();
    m.on_event(Event::Stop);
    let from = m.state().clone();
    m.check_transition(&from, &State::Solo { g: 1 }, &[]);
}

#[test]
fn a_lone_primary_takes_a_joined_secondary_in_its_generation_and_loses_it_like_any() {
    let mut m = primary();
    m.on_event(Event::ChannelLost { why: "gone".into() });
    m.on_event(Event::Decided {
        generation: 2,
        decision: Decision::Won,
    });
    assert_eq!(m.state(), &State::Solo { g: 2 });
    let a = m.on_event(Event::SecondaryJoined {
        peer: "host-c".into(),
        generation: 2,
    });
    assert_eq!(a[0], Action::Gate(Gate::ByAcks), "the Output Rule first");
    assert_eq!(m.state(), &State::Paired { g: 2 }, "no new generation");
    assert_eq!(m.peer(), "host-c");
    // The new Secondary is lost like the first one: hold, race for 3.
    let a = m.on_event(tick(10_000, 1_000));
    assert!(has(&a, |x| *x == Action::Acquire { generation: 3 }));
    assert!(has(
        &a,
        |x| matches!(x, Action::Say(l) if l.contains("host-c"))
    ));
}

#[test]
fn only_a_lone_primary_holding_its_grant_takes_a_joined_secondary() {
    let joined = || Event::SecondaryJoined {
        peer: "host-c".into(),
        generation: 4,
    };
    // Paired already, a Secondary, a racing Primary: refused, nothing done.
    for mut m in [primary(), secondary()] {
        let before = m.state().clone();
        assert!(m.on_event(joined()).is_empty());
        assert_eq!(m.state(), &before);
    }
    let mut m = primary();
    m.on_event(Event::ChannelLost { why: "gone".into() });
    assert!(m.on_event(joined()).is_empty());
    assert!(matches!(m.state(), State::Racing { .. }));
    // Alone without a grant (Fenced): refused.
    let mut m = Member::primary("kv", "", 4, false, T);
    m.on_event(Event::Grant(Grant::Withdrawn {
        reason: "lease".into(),
    }));
    assert!(m.on_event(joined()).is_empty());
    assert!(!matches!(m.state(), State::Paired { .. }));
    let mut halted = Member::primary("kv", "", 4, false, T);
    halted.on_event(Event::Stop);
    assert!(halted.on_event(joined()).is_empty());
}

#[test]
fn a_join_for_an_older_generation_is_refused_by_a_primary_that_rewon() {
    // Alone in 4, fenced during a join in 4, re-won 5: the join is stale.
    let mut m = Member::primary("kv", "", 4, false, T);
    m.on_event(Event::Grant(Grant::Withdrawn {
        reason: "lease".into(),
    }));
    m.on_event(Event::Grant(Grant::Ok));
    m.on_event(Event::Decided {
        generation: 5,
        decision: Decision::Won,
    });
    assert_eq!(m.state(), &State::Solo { g: 5 });
    let stale = Event::SecondaryJoined {
        peer: "host-c".into(),
        generation: 4,
    };
    assert!(m.on_event(stale).is_empty());
    assert_eq!(
        m.state(),
        &State::Solo { g: 5 },
        "still alone: its keeper looks again"
    );
}
