//! Property tests: histories linearizable by construction are accepted;
//! one GET changed so that no linearization can exist is rejected; and a
//! large history checks at all (run time printed, not asserted).

use proptest::prelude::*;
use proptest::sample::Index;

use super::gen::{build, random_specs, Fault, OpSpec};
use super::*;

fn spec() -> impl Strategy<Value = OpSpec> {
    let fault = prop_oneof![
        16 => Just(Fault::None),
        1 => Just(Fault::Fail),
        1 => Just(Fault::UnknownApplied),
        1 => Just(Fault::UnknownLost),
    ];
    (
        0..4u32,
        0..2u32,
        any::<bool>(),
        0..50u64,
        0..200u64,
        0..=1000u64,
        fault,
    )
        .prop_map(|(client, key, put, gap, dur, at, fault)| OpSpec {
            client,
            key,
            put,
            gap,
            dur,
            at,
            fault,
        })
}

fn specs() -> impl Strategy<Value = Vec<OpSpec>> {
    prop::collection::vec(spec(), 1..60)
}

fn verdict(history: &History) -> Verdict {
    check(history, &CheckOptions::default()).expect("generated histories are well-formed")
}

fn is_read(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Read(_))
}

fn written(op: &Op) -> Option<&str> {
    match (&op.kind, &op.outcome) {
        (OpKind::Put { value }, Outcome::Written) => Some(value),
        _ => None,
    }
}

fn completes(op: &Op) -> u64 {
    op.complete.expect("generated ops complete")
}

/// Sets GET `g`'s result to `value` and expects a rejection on its key.
fn assert_rejected(
    mut history: History,
    g: usize,
    value: Option<&str>,
) -> Result<(), TestCaseError> {
    history.ops[g].outcome = Outcome::Read(value.map(str::to_string));
    match verdict(&history) {
        Verdict::NotLinearizable { key, explanation } => {
            prop_assert_eq!(&key, &history.ops[g].key, "{}", explanation);
            Ok(())
        }
        v => Err(TestCaseError::fail(format!(
            "accepted after mutating op {g} to {value:?}: {v:?}"
        ))),
    }
}

/// (GET, PUT) pairs on one key where the PUT was invoked after the GET
/// completed.
fn future_reads(ops: &[Op]) -> Vec<(usize, usize)> {
    (0..ops.len())
        .filter(|&g| is_read(&ops[g]))
        .flat_map(|g| (0..ops.len()).map(move |p| (g, p)))
        .filter(|&(g, p)| {
            matches!(ops[p].kind, OpKind::Put { .. })
                && ops[p].key == ops[g].key
                && ops[p].invoke > completes(&ops[g])
        })
        .collect()
}

/// (GET, old PUT, its value) on one key where another acknowledged PUT
/// began after the old one completed and completed before the GET began.
fn stale_reads(ops: &[Op]) -> Vec<(usize, usize, String)> {
    let mut triples = Vec::new();
    for (p, old) in ops.iter().enumerate() {
        let Some(stale) = written(old) else { continue };
        for new in ops
            .iter()
            .filter(|q| written(q).is_some() && q.key == old.key)
        {
            if new.invoke <= completes(old) {
                continue;
            }
            for (g, get) in ops.iter().enumerate() {
                if is_read(get) && get.key == old.key && get.invoke > completes(new) {
                    triples.push((g, p, stale.to_string()));
                }
            }
        }
    }
    triples
}

/// Most generated histories offer both mutations, so the rejection
/// properties are not vacuous.
#[test]
fn mutations_are_not_vacuous() {
    let (mut future, mut stale) = (0, 0);
    for seed in 0..100 {
        let history = build(&random_specs(seed, 30, 4, 2));
        future += usize::from(!future_reads(&history.ops).is_empty());
        stale += usize::from(!stale_reads(&history.ops).is_empty());
    }
    assert!(
        future > 50 && stale > 50,
        "future {future}, stale {stale} of 100"
    );
}

proptest! {
    #[test]
    fn linearizable_by_construction_is_accepted(specs in specs()) {
        let history = build(&specs);
        let v = verdict(&history);
        prop_assert_eq!(v, Verdict::Linearizable, "{}", history.to_json());
    }

    /// A GET reads a value whose only PUT was invoked after the GET completed.
    #[test]
    fn read_from_the_future_is_rejected(specs in specs(), pick in any::<Index>()) {
        let history = build(&specs);
        let ops = &history.ops;
        let pairs = future_reads(ops);
        if !pairs.is_empty() {
            let (g, p) = pairs[pick.index(pairs.len())];
            let OpKind::Put { value } = ops[p].kind.clone() else { unreachable!() };
            assert_rejected(history, g, Some(&value))?;
        }
    }

    /// A GET reads a value that a later completed PUT overwrote before the
    /// GET began (all values are unique, so nothing wrote it again).
    #[test]
    fn stale_read_is_rejected(specs in specs(), pick in any::<Index>()) {
        let history = build(&specs);
        let ops = &history.ops;
        let triples = stale_reads(ops);
        if !triples.is_empty() {
            let (g, _, stale) = &triples[pick.index(triples.len())];
            assert_rejected(history.clone(), *g, Some(stale))?;
        }
    }

    /// A GET reads a value nobody wrote.
    #[test]
    fn read_of_an_unwritten_value_is_rejected(specs in specs(), pick in any::<Index>()) {
        let history = build(&specs);
        let gets: Vec<usize> = (0..history.ops.len()).filter(|&g| is_read(&history.ops[g])).collect();
        if !gets.is_empty() {
            let g = gets[pick.index(gets.len())];
            assert_rejected(history, g, Some("never written"))?;
        }
    }

    /// Saving and loading a history keeps its verdict.
    #[test]
    fn json_round_trip_keeps_the_history(specs in specs()) {
        let history = build(&specs);
        prop_assert_eq!(History::from_json(&history.to_json()).unwrap(), history);
    }
}

fn timed(name: &str, history: &History) -> Verdict {
    let start = std::time::Instant::now();
    let v = verdict(history);
    eprintln!(
        "{name}: {} ops checked in {:?}",
        history.ops.len(),
        start.elapsed()
    );
    v
}

#[test]
fn many_clients_many_ops_check() {
    // 10 clients, 3000 ops over 20 keys.
    let history = build(&random_specs(12, 3000, 10, 20));
    assert_eq!(timed("20 keys", &history), Verdict::Linearizable);
    // The same clients on one key: ~10 ops concurrent at any time.
    let history = build(&random_specs(13, 2000, 10, 1));
    assert_eq!(timed("1 key", &history), Verdict::Linearizable);
    // And a stale read near the end of it is found.
    let mut history = history;
    let ops = &history.ops;
    let last_put = (0..ops.len())
        .rev()
        .find(|&i| written(&ops[i]).is_some())
        .expect("a PUT");
    let early = (0..ops.len())
        .find(|&i| written(&ops[i]).is_some() && completes(&ops[i]) < ops[last_put].invoke)
        .expect("an earlier PUT");
    let value = written(&ops[early]).map(str::to_string);
    let at = completes(&ops[last_put]) + 1;
    history.ops.push(Op::new(
        99,
        &ops[0].key.clone(),
        OpKind::Get,
        at,
        at + 10,
        Outcome::Read(value),
    ));
    assert!(matches!(
        timed("1 key, stale", &history),
        Verdict::NotLinearizable { .. }
    ));
}
