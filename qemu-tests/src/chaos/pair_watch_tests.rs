//! Tests of the gate's console reading (`pair_watch.rs`): seed 39's
//! severed Secondary storage (consoles as that run printed them) ends
//! `Intact` once the fault is healed, the quiet time passed and host-b's
//! fencing renews again; a lost member waits for the respawn's line.

use std::time::{Duration, Instant};

use super::pair_watch::{PairNow, PairWatch, Seen};

const QUIET: Duration = Duration::from_secs(2);

/// The pair at power-on, as host-a and host-b print it.
fn power_on(t0: Instant) -> Vec<(&'static str, Instant, &'static str)> {
    vec![
        ("host-a", t0, "ftvmm: vm kv: won generation 1 to start"),
        (
            "host-a",
            t0,
            "ftvmm: vm kv: paired with secondary host-b; generation 1",
        ),
        (
            "host-b",
            t0,
            "ftvmm: vm kv: paired with primary host-a; generation 1",
        ),
    ]
}

fn seen(lines: &[(&'static str, Instant, &'static str)]) -> Vec<Seen<'static>> {
    (lines.iter())
        .map(|&(host, at, text)| Seen { host, at, text })
        .collect()
}

fn ms(t: Instant, ms: u64) -> Instant {
    t + Duration::from_millis(ms)
}

/// Seed 39: host-b's storage severed at `since`, healed 20.3 s later; the
/// Secondary's fencing holds output after 1 s and renews again after the
/// heal; nobody loses a member, so no `protected:` line ever comes.
#[test]
fn a_severed_secondary_path_that_cost_no_member_is_intact_once_it_renews() {
    let w = PairWatch::new("kv");
    let t0 = Instant::now();
    let since = ms(t0, 10_000);
    let heal = ms(since, 20_300);
    let mut lines = power_on(t0);
    lines.push((
        "host-b",
        ms(since, 1_004),
        "fencing: lease renewal failing for 1004 ms; asking ftvmm to hold output",
    ));
    lines.push((
        "host-b",
        ms(since, 1_010),
        "fencing: ftvmm confirmed the output hold",
    ));
    // In force: waiting, however long.
    assert!(matches!(
        w.look(&seen(&lines), since, None, ms(since, 15_000), QUIET),
        PairNow::Waiting(why) if why.contains("in force")
    ));
    // Healed, but within the quiet time.
    assert!(matches!(
        w.look(&seen(&lines), since, Some(heal), ms(heal, 1_000), QUIET),
        PairNow::Waiting(why) if why.contains("less than")
    ));
    // Past the quiet time, but host-b's lease does not renew yet (the NBD
    // path reconnects): no protection by host-b.
    assert!(matches!(
        w.look(&seen(&lines), since, Some(heal), ms(heal, 3_000), QUIET),
        PairNow::Waiting(why) if why.contains("host-b's output grant is withdrawn")
    ));
    lines.push((
        "host-b",
        ms(heal, 4_000),
        "fencing: lease renewed again; asking ftvmm to release output",
    ));
    assert_eq!(
        w.look(&seen(&lines), since, Some(heal), ms(heal, 4_100), QUIET),
        PairNow::Intact {
            primary: "host-a".into(),
            secondary: "host-b".into()
        }
    );
}

/// A lost member: the gate waits for the respawn's line, whatever the heal,
/// and the last `protected:` line names the pair.
#[test]
fn a_lost_member_waits_for_the_respawn() {
    let w = PairWatch::new("kv");
    let t0 = Instant::now();
    let since = ms(t0, 10_000);
    let mut lines = power_on(t0);
    lines.push((
        "host-a",
        ms(since, 1_100),
        "ftvmm: vm kv: secondary suspected (silent for 1000 ms); holding output, asking for generation 2",
    ));
    let late = ms(since, 30_000);
    let waiting = w.look(&seen(&lines), since, Some(ms(since, 5_000)), late, QUIET);
    assert!(
        matches!(&waiting, PairNow::Waiting(why) if why.contains("the pair changed")),
        "{waiting:?}"
    );
    lines.push((
        "host-a",
        ms(since, 1_300),
        "ftvmm: vm kv: won generation 2; primary continues without secondary",
    ));
    lines.push((
        "host-a",
        ms(since, 9_000),
        "ftvmm: vm kv: protected: secondary host-c in lockstep (restored at exit 9000); unprotected for 7700 ms",
    ));
    assert_eq!(
        w.look(&seen(&lines), since, None, late, QUIET),
        PairNow::Respawned {
            primary: "host-a".into(),
            secondary: "host-c".into()
        }
    );
}

/// A `protected:` line from before the failure is no respawn: the pair it
/// names counts only through `Intact`'s checks.
#[test]
fn a_protected_line_before_the_failure_is_no_respawn() {
    let w = PairWatch::new("kv");
    let t0 = Instant::now();
    let mut lines = power_on(t0);
    lines.push((
        "host-a",
        ms(t0, 5_000),
        "ftvmm: vm kv: protected: secondary host-c in lockstep; unprotected for 4000 ms",
    ));
    let since = ms(t0, 10_000);
    assert!(matches!(
        w.look(&seen(&lines), since, None, ms(since, 1_000), QUIET),
        PairNow::Waiting(_)
    ));
    // Healed long ago, nothing changed: the pair of the last line, host-c.
    assert_eq!(
        w.look(&seen(&lines), since, Some(since), ms(since, 5_000), QUIET),
        PairNow::Intact {
            primary: "host-a".into(),
            secondary: "host-c".into()
        }
    );
}

/// A paired Primary whose grant came back within the failure timeout goes on
/// (`handing ... unless it is back` is no change); one that handed over is.
#[test]
fn a_primary_storage_hiccup_is_no_change_a_hand_over_is() {
    let w = PairWatch::new("kv");
    let t0 = Instant::now();
    let since = ms(t0, 10_000);
    let mut lines = power_on(t0);
    lines.extend([
        (
            "host-a",
            ms(since, 1_000),
            "fencing: lease renewal failing for 1000 ms; asking ftvmm to hold output",
        ),
        (
            "host-a",
            ms(since, 1_010),
            "ftvmm: vm kv: fencing withdrew the output grant (fencing: own lease renewal failing for 1000 ms); output held; handing the VM over to secondary host-b unless it is back within 1000 ms",
        ),
        (
            "host-a",
            ms(since, 1_400),
            "fencing: lease renewed again; asking ftvmm to release output",
        ),
        (
            "host-a",
            ms(since, 1_410),
            "ftvmm: vm kv: output grant back after 400 ms; the pair goes on",
        ),
    ]);
    let settled = Some(ms(since, 2_000));
    let now = ms(since, 6_000);
    assert_eq!(
        w.look(&seen(&lines), since, settled, now, QUIET),
        PairNow::Intact {
            primary: "host-a".into(),
            secondary: "host-b".into()
        }
    );
    lines.push((
        "host-a",
        ms(since, 2_500),
        "ftvmm: vm kv: storage lost (fencing holds output); handed the VM over to secondary host-b in generation 1; halting here",
    ));
    assert!(matches!(
        w.look(&seen(&lines), since, settled, now, QUIET),
        PairNow::Waiting(why) if why.contains("the pair changed")
    ));
}

/// A thawed host's fencing withdraws the grant until its clean renewal.
#[test]
fn a_frozen_hosts_grant_must_be_back() {
    let w = PairWatch::new("kv");
    let t0 = Instant::now();
    let since = ms(t0, 10_000);
    let mut lines = power_on(t0);
    lines.push((
        "host-b",
        ms(since, 900),
        "fencing: this host was frozen: host host-a's lease advanced 2 renewals while this host's clock advanced 1 ms (at most 1 possible); withdrawing the output grant and checking for deposition",
    ));
    let settled = Some(ms(since, 800));
    let now = ms(since, 5_000);
    assert!(matches!(
        w.look(&seen(&lines), since, settled, now, QUIET),
        PairNow::Waiting(why) if why.contains("host-b's output grant")
    ));
    lines.push((
        "host-b",
        ms(since, 1_500),
        "fencing: clean renewal and deposition check after the freeze; granting output again",
    ));
    assert!(matches!(
        w.look(&seen(&lines), since, settled, now, QUIET),
        PairNow::Intact { .. }
    ));
}
