use super::*;
use config_schema::Timing;

fn timing() -> LeaseTiming {
    LeaseTiming::from_config(&Timing {
        heartbeat_interval_ms: 100,
        failure_timeout_ms: 1000,
        lag_limit_ms: 500,
    })
}

fn t(ms: u64) -> BootInstant {
    BootInstant::from_nanos(1_000_000_000 + ms * 1_000_000)
}

#[test]
fn nothing_is_granted_or_fed_before_the_first_renewal() {
    let mut g = Guard::new(timing());
    assert!(!g.grant(t(0)).ok);
    assert_eq!(g.tick(t(0)), Actions::default());
    assert_eq!(g.state(), GuardState::Starting);
    g.renewed(t(10));
    let grant = g.grant(t(20));
    assert!(grant.ok && grant.valid_ms == 500, "{grant:?}");
    assert!(g.tick(t(20)).feed);
}

#[test]
fn an_ok_grant_never_outlives_the_fresh_lease() {
    let mut g = Guard::new(timing());
    g.renewed(t(0));
    assert_eq!(g.grant(t(100)).valid_ms, 500);
    assert_eq!(g.grant(t(700)).valid_ms, 300, "t0 + H - now");
    assert_eq!(g.grant(t(999)).valid_ms, 1);
    let late = g.grant(t(1000));
    assert!(!late.ok && late.reason.contains("renewal failing for 1000 ms"));
}

#[test]
fn stale_lease_asks_to_hold_then_starves_without_confirmation() {
    let mut g = Guard::new(timing());
    g.renewed(t(0));
    assert!(g.tick(t(500)).feed);
    let a = g.tick(t(1000));
    assert!(
        a.feed && a.say[0].contains("renewal failing for 1000 ms; asking ftvmm to hold output")
    );
    assert_eq!(g.state(), GuardState::HoldAsked);
    // ftvmm does not answer the ok:false grants.
    let sent = g.grant(t(1100));
    assert!(!sent.ok);
    let said = g.on_answer(&sent, t(1100), Err("cannot reach /run/ftvmm.sock".into()));
    assert!(said[0].contains("did not answer the output grant"));
    assert!(g.tick(t(1400)).feed, "still within confirm");
    let a = g.tick(t(1500));
    assert!(
        !a.feed
            && a.say
                .iter()
                .any(|l| l.contains("no longer feeding the watchdog"))
    );
    assert_eq!(g.state(), GuardState::Starving);
    assert!(!g.tick(t(3000)).feed);
    // A late confirmation rescues it.
    let sent = g.grant(t(3000));
    g.on_answer(&sent, t(3000), Ok(()));
    let a = g.tick(t(3100));
    assert!(a.feed && a.say == ["fencing: ftvmm confirmed the output hold"]);
    // Confirmation is level-triggered: an ftvmm that stops answering stops
    // confirming, and the watchdog starves again.
    assert!(g.tick(t(3499)).feed);
    let a = g.tick(t(3500));
    assert!(!a.feed && a.say[0].contains("no longer feeding the watchdog"));
}

#[test]
fn confirmed_hold_keeps_feeding_and_a_renewal_grants_again() {
    let mut g = Guard::new(timing());
    g.renewed(t(0));
    let ok = g.grant(t(0));
    assert!(g.on_answer(&ok, t(0), Ok(()))[0].contains("ftvmm answers the output grant"));
    g.tick(t(1000));
    let hold = g.grant(t(1050));
    g.on_answer(&hold, t(1050), Ok(()));
    g.tick(t(1100));
    assert_eq!(g.state(), GuardState::Held);
    // ftvmm keeps answering the ok:false grants.
    for ms in (1100..9000).step_by(100) {
        let hold = g.grant(t(ms));
        g.on_answer(&hold, t(ms), Ok(()));
        assert!(g.tick(t(ms + 50)).feed, "{ms}");
    }
    g.renewed(t(9000));
    let a = g.tick(t(9100));
    assert!(a.feed && a.say == ["fencing: lease renewed again; asking ftvmm to release output"]);
    let ok = g.grant(t(9100));
    assert!(ok.ok);
    assert_eq!(
        g.on_answer(&ok, t(9100), Ok(())),
        ["fencing: ftvmm confirmed the output release"]
    );
    // The ok grant lifted the confirmed hold: the next staleness asks again.
    let a = g.tick(t(10100));
    assert_eq!(g.state(), GuardState::HoldAsked);
    assert!(a.feed);
    assert!(!g.tick(t(10600)).feed);
}

#[test]
fn a_withheld_grant_keeps_feeding_while_the_lease_renews() {
    let mut g = Guard::new(timing());
    g.renewed(t(0));
    g.withhold(Some("this host was frozen".into()));
    let w = g.grant(t(100));
    assert!(!w.ok && w.reason == "fencing: this host was frozen");
    assert!(g.tick(t(100)).feed);
    assert_eq!(g.state(), GuardState::Withheld);
    g.withhold(None);
    assert!(g.grant(t(200)).ok);
    assert_eq!(g.tick(t(200)).say, Vec::<String>::new());
}

/// ftvmm can confirm the hold (it saw an `ok: false` grant) before the
/// guard's tick looks at the stale lease: the guard goes from `Normal`
/// straight to `Held` and must still say why it asked (the storage QEMU tests
/// wait for that line; it went missing once in a few runs).
#[test]
fn a_hold_confirmed_before_the_tick_still_says_the_renewal_is_failing() {
    let mut g = Guard::new(timing());
    g.renewed(t(0));
    assert!(g.tick(t(500)).feed);
    assert_eq!(g.state(), GuardState::Normal);
    let hold = g.grant(t(1050));
    assert!(!hold.ok);
    g.on_answer(&hold, t(1050), Ok(()));
    let a = g.tick(t(1100));
    assert_eq!(g.state(), GuardState::Held);
    assert!(a.feed);
    assert_eq!(a.say.len(), 2, "{:?}", a.say);
    assert!(a.say[0].contains("lease renewal failing for 1100 ms; asking ftvmm to hold output"));
    assert_eq!(a.say[1], "fencing: ftvmm confirmed the output hold");
}
