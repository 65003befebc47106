//! Hand-written histories with known verdicts.

use std::collections::BTreeMap;

use super::*;

fn put(client: u32, value: &str, invoke: u64, complete: u64) -> Op {
    put_on(client, "k", value, invoke, complete)
}

fn put_on(client: u32, key: &str, value: &str, invoke: u64, complete: u64) -> Op {
    let kind = OpKind::Put {
        value: value.to_string(),
    };
    Op::new(client, key, kind, invoke, complete, Outcome::Written)
}

fn get(client: u32, read: Option<&str>, invoke: u64, complete: u64) -> Op {
    get_on(client, "k", read, invoke, complete)
}

fn get_on(client: u32, key: &str, read: Option<&str>, invoke: u64, complete: u64) -> Op {
    let outcome = Outcome::Read(read.map(str::to_string));
    Op::new(client, key, OpKind::Get, invoke, complete, outcome)
}

fn with(mut op: Op, outcome: Outcome) -> Op {
    op.outcome = outcome;
    op
}

/// A PUT whose reply never came: no completion time at all.
fn lost_put(client: u32, value: &str, invoke: u64) -> Op {
    let mut op = with(put(client, value, invoke, invoke), Outcome::Unknown);
    op.complete = None;
    op
}

fn verdict(ops: Vec<Op>) -> Verdict {
    check(&History::from_ops(ops), &CheckOptions::default()).expect("well-formed history")
}

fn explanation(ops: Vec<Op>) -> Explanation {
    match verdict(ops) {
        Verdict::NotLinearizable { explanation, .. } => *explanation,
        v => panic!("expected not linearizable, got {v:?}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let v = verdict(vec![
        get(1, None, 0, 5),
        put(1, "a", 10, 20),
        get(2, Some("a"), 30, 40),
        put(2, "b", 50, 60),
        get(1, Some("b"), 70, 80),
    ]);
    assert_eq!(v, Verdict::Linearizable);
    assert_eq!(verdict(vec![]), Verdict::Linearizable);
}

#[test]
fn stale_read_after_a_completed_put_is_rejected() {
    let e = explanation(vec![
        put(1, "a", 0, 10),
        put(2, "b", 20, 30),
        get(3, Some("a"), 40, 50),
    ]);
    assert_eq!(e.key, "k");
    assert_eq!(e.prefix.len(), 2, "{e}");
    assert_eq!(e.state.as_deref(), Some("b"));
    assert_eq!((e.stuck.client, e.stuck.invoke), (3, 40), "{e}");
    let text = e.to_string();
    assert!(text.contains("c3 GET \"k\" -> \"a\" [40, 50]"), "{text}");
    assert!(text.contains("c1 PUT \"k\"=\"a\" ok [0, 10]"), "{text}");
    assert!(text.contains("after which the key holds \"b\""), "{text}");
}

#[test]
fn read_absent_after_a_completed_put_is_rejected() {
    let e = explanation(vec![put(1, "a", 0, 10), get(2, None, 20, 30)]);
    assert_eq!(e.stuck.client, 2);
}

#[test]
fn concurrent_puts_both_orders_observable() {
    for (first, last) in [("a", "b"), ("b", "a")] {
        let v = verdict(vec![
            put(1, "a", 0, 100),
            put(2, "b", 0, 100),
            get(3, Some(first), 10, 20),
            get(3, Some(last), 110, 120),
        ]);
        assert_eq!(v, Verdict::Linearizable, "{first} then {last}");
    }
}

#[test]
fn concurrent_puts_settle_on_one_value() {
    // Both PUTs completed by 100: later reads agree on one value.
    let e = explanation(vec![
        put(1, "a", 0, 100),
        put(2, "b", 0, 100),
        get(3, Some("a"), 110, 120),
        get(4, Some("b"), 130, 140),
    ]);
    assert_eq!(e.stuck.client, 4, "{e}");
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let e = explanation(vec![put(1, "a", 0, 10), get(2, Some("z"), 0, 30)]);
    assert!(e.writers.is_empty());
    assert!(
        e.to_string().contains("No PUT on this key wrote \"z\""),
        "{e}"
    );
}

#[test]
fn read_of_a_value_written_only_later_is_rejected() {
    let e = explanation(vec![get(2, Some("a"), 0, 10), put(1, "a", 20, 30)]);
    assert_eq!(e.writers.len(), 1);
    assert!(
        e.to_string()
            .contains("PUTs of \"a\" on this key:\n  c1 PUT"),
        "{e}"
    );
}

#[test]
fn unknown_put_read_later_is_accepted() {
    let v = verdict(vec![
        put(1, "a", 0, 10),
        lost_put(2, "b", 20),
        get(3, Some("a"), 1000, 1010),
        get(3, Some("b"), 2000, 2010),
        get(4, Some("b"), 3000, 3010),
    ]);
    assert_eq!(v, Verdict::Linearizable);
    // A PUT still pending when the history was taken counts the same.
    let mut pending = lost_put(2, "b", 20);
    pending.outcome = Outcome::Pending;
    let v = verdict(vec![
        put(1, "a", 0, 10),
        pending,
        get(3, Some("b"), 2000, 2010),
    ]);
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn unknown_put_never_read_is_accepted() {
    let v = verdict(vec![
        put(1, "a", 0, 10),
        with(put(2, "b", 20, 30), Outcome::Unknown),
        get(3, Some("a"), 40, 50),
        with(put(2, "c", 60, 70), Outcome::Pending),
        get(3, Some("a"), 80, 90),
    ]);
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn unknown_put_takes_effect_only_after_its_invoke() {
    let e = explanation(vec![get(3, Some("b"), 0, 10), lost_put(2, "b", 20)]);
    assert_eq!(e.stuck.client, 3);
}

#[test]
fn unknown_put_read_then_older_value_is_rejected() {
    // b was seen by 40, so it took effect; nothing wrote a again after it.
    let e = explanation(vec![
        put(1, "a", 0, 10),
        lost_put(2, "b", 20),
        get(3, Some("b"), 30, 40),
        get(3, Some("a"), 50, 60),
    ]);
    assert_eq!(e.stuck.invoke, 50, "{e}");
}

#[test]
fn older_value_after_newer_one_was_read_is_rejected() {
    // The PUT of b overlaps both GETs, but the GET of a starts after the
    // GET of b ended: once b was read, a cannot come back.
    let e = explanation(vec![
        put(1, "a", 0, 10),
        put(2, "b", 20, 100),
        get(3, Some("b"), 30, 40),
        get(4, Some("a"), 50, 60),
    ]);
    assert_eq!(e.stuck.client, 4, "{e}");
    // Overlapping GETs may see a then b, or b then a.
    let v = verdict(vec![
        put(1, "a", 0, 10),
        put(2, "b", 20, 100),
        get(3, Some("b"), 30, 60),
        get(4, Some("a"), 50, 70),
    ]);
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn failed_ops_are_removed() {
    let ok = verdict(vec![
        put(1, "a", 0, 10),
        with(put(2, "b", 20, 30), Outcome::Fail),
        with(get(2, Some("zzz"), 20, 30), Outcome::Fail),
        get(3, Some("a"), 40, 50),
    ]);
    assert_eq!(ok, Verdict::Linearizable);
    let e = explanation(vec![
        put(1, "a", 0, 10),
        with(put(2, "b", 20, 30), Outcome::Fail),
        get(3, Some("b"), 40, 50),
    ]);
    assert_eq!(e.writers.len(), 1, "the failed writer is listed");
    assert!(e.to_string().contains("c2 PUT \"k\"=\"b\" failed"), "{e}");
}

#[test]
fn touching_intervals_are_concurrent() {
    let v = verdict(vec![put(1, "a", 0, 10), get(2, None, 10, 20)]);
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn initial_values_are_honoured() {
    let history = History::from_ops(vec![get(1, Some("init"), 0, 10)]);
    let mut options = CheckOptions::default();
    assert!(!check(&history, &options).unwrap().is_linearizable());
    options.initial = BTreeMap::from([("k".to_string(), "init".to_string())]);
    assert_eq!(check(&history, &options).unwrap(), Verdict::Linearizable);
    let v = check_key(&history, "k", Some("init"), DEFAULT_STEP_BUDGET).unwrap();
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn keys_are_checked_apart() {
    let ops = vec![
        put_on(1, "k1", "a", 0, 10),
        get_on(2, "k1", Some("a"), 20, 30),
        get_on(2, "k2", Some("a"), 20, 30),
    ];
    match verdict(ops) {
        Verdict::NotLinearizable { key, explanation } => {
            assert_eq!(key, "k2");
            assert!(explanation.prefix.is_empty());
        }
        v => panic!("expected k2 not linearizable, got {v:?}"),
    }
}

#[test]
fn malformed_ops_are_errors() {
    let history = History::from_ops(vec![with(put(1, "a", 0, 10), Outcome::Read(None))]);
    let err = check(&history, &CheckOptions::default()).unwrap_err();
    assert!(
        matches!(err, HistoryError::OutcomeMismatch { index: 0, .. }),
        "{err}"
    );
    let mut op = get(1, None, 0, 10);
    op.complete = None;
    let err = check(&History::from_ops(vec![op]), &CheckOptions::default()).unwrap_err();
    assert!(matches!(err, HistoryError::NoCompletion { .. }), "{err}");
    let err = verdict_err(vec![put(1, "a", 10, 5)]);
    assert!(
        matches!(err, HistoryError::CompletesBeforeInvoke { .. }),
        "{err}"
    );
}

fn verdict_err(ops: Vec<Op>) -> HistoryError {
    check(&History::from_ops(ops), &CheckOptions::default()).unwrap_err()
}

#[test]
fn a_spent_budget_is_a_timeout_not_a_verdict() {
    // 12 concurrent PUTs and a GET of a value nobody wrote: the search has
    // to try many orders before it can say no.
    let mut ops: Vec<Op> = (0..12).map(|i| put(i, &format!("v{i}"), 0, 100)).collect();
    ops.push(get(99, Some("v0"), 0, 100));
    ops.push(get(99, Some("nobody"), 200, 300));
    let history = History::from_ops(ops);
    let options = CheckOptions {
        step_budget: 50,
        ..CheckOptions::default()
    };
    let v = check(&history, &options).unwrap();
    assert_eq!(
        v,
        Verdict::TimedOut {
            key: "k".to_string(),
            steps: 50
        }
    );
    assert!(v.to_string().contains("budget"));
    assert!(!check(&history, &CheckOptions::default())
        .unwrap()
        .is_linearizable());
}
