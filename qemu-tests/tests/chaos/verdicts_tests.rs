//! No QEMU: the pauses of `chaos/verdicts.rs` on hand-made histories: a
//! kill's outage is the kill's, and a reboot counts only a gap that opens
//! after it (its rejoin's stop-and-copy).

use qemu_tests::chaos::{Draw, Fault, FaultKind, Schedule, Step};
use qemu_tests::history::{History, Op, OpKind, Outcome};

use crate::{plan, verdicts};

/// A reply every 100 ms from 0 to 60 s but in the `gaps` (ms, half-open).
fn replies(gaps: &[(u64, u64)]) -> History {
    let ops = (0..600u64)
        .map(|i| i * 100)
        .filter(|t| !gaps.iter().any(|(a, b)| (*a..*b).contains(t)))
        .map(|t| {
            let ns = t * 1_000_000;
            Op::new(0, "k", OpKind::Get, ns, ns + 1, Outcome::Read(None))
        })
        .collect();
    History::from_ops(ops)
}

fn schedule(steps: Vec<(u64, Fault)>) -> Schedule {
    Schedule {
        steps: steps.into_iter().map(|(t, f)| Step::new(t, f)).collect(),
        ..plan::generate(0, &["host-a", "host-b", "host-c"], false, Draw::V2)
    }
}

fn of(kind: FaultKind, v: &[(FaultKind, u64)]) -> Vec<u64> {
    v.iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, ms)| *ms)
        .collect()
}

#[test]
fn a_reboot_counts_only_gaps_that_open_after_it() {
    let s = schedule(vec![
        (
            8_000,
            Fault::KillHost {
                host: "host-a".into(),
            },
        ),
        (
            20_000,
            Fault::RebootHost {
                host: "host-a".into(),
            },
        ),
    ]);
    // The kill's outage runs past the reboot; the rejoin pauses at 35 s.
    let h = replies(&[(8_000, 21_000), (35_000, 36_500)]);
    let (pauses, recoveries) = verdicts::pauses(&h, &s);
    assert_eq!(of(FaultKind::KillHost, &pauses), [13_100]);
    assert_eq!(of(FaultKind::KillHost, &recoveries), [13_000]);
    assert_eq!(of(FaultKind::RebootHost, &pauses), [1_600]);
    assert_eq!(of(FaultKind::RebootHost, &recoveries), [16_500]);
    // No rejoin pause: the reboot's pause is the replies' own spacing.
    let h = replies(&[(8_000, 21_000)]);
    let (pauses, recoveries) = verdicts::pauses(&h, &s);
    assert_eq!(of(FaultKind::RebootHost, &pauses), [100]);
    assert_eq!(of(FaultKind::RebootHost, &recoveries), [0]);
}
