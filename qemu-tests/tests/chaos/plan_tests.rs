//! No QEMU: what a run applies keeps to the rules of `chaos/plan.rs`, on
//! hand-made schedules and over thousands of generated ones: at most one
//! pair failure (or with `FT_CHAOS_SEQUENTIAL` a second, gated), every host a
//! member after the first; reboots only of hosts whose kill was kept, and
//! every kept kill rebooted unless its path was down; slowdowns kept; every
//! dropped step a note; the kept schedule still a valid one.

use std::collections::BTreeSet;

use qemu_tests::chaos::{self, Draw, Fault, FaultKind, Schedule, Step};

use crate::plan;

const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];

fn h(name: &str) -> String {
    name.to_string()
}

fn hand(sequential: bool, steps: Vec<(u64, Fault)>) -> Schedule {
    Schedule {
        steps: steps.into_iter().map(|(t, f)| Step::new(t, f)).collect(),
        ..plan::generate(0, &HOSTS, sequential, Draw::V2)
    }
}

fn kept(s: &Schedule) -> Vec<String> {
    s.steps.iter().map(|st| st.fault.to_string()).collect()
}

#[test]
fn reboots_of_kept_kills_are_kept_and_cost_no_member() {
    let (s, notes) = plan::restrict(&hand(
        false,
        vec![
            (8_000, Fault::KillHost { host: h("host-c") }),
            (14_000, Fault::RebootHost { host: h("host-c") }),
            (20_000, Fault::KillHost { host: h("host-a") }),
            (28_000, Fault::RebootHost { host: h("host-a") }),
            (
                34_000,
                Fault::SlowHost {
                    host: h("host-b"),
                    factor: 3,
                },
            ),
            (40_000, Fault::Heal),
        ],
    ));
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(s.steps.len(), 6, "{:?}", kept(&s));
    s.check().unwrap();
}

#[test]
fn after_a_pair_failure_every_host_is_a_member() {
    let (s, notes) = plan::restrict(&hand(
        false,
        vec![
            (8_000, Fault::KillHost { host: h("host-a") }),
            (
                14_000,
                Fault::FreezeHost {
                    host: h("host-c"),
                    for_ms: 1_000,
                },
            ),
            (20_000, Fault::RebootHost { host: h("host-a") }),
            (26_000, Fault::KillHost { host: h("host-c") }),
            (
                32_000,
                Fault::SlowHost {
                    host: h("host-c"),
                    factor: 2,
                },
            ),
            (40_000, Fault::Heal),
        ],
    ));
    assert_eq!(
        kept(&s),
        [
            "kill_host host-a",
            "reboot_host host-a",
            "slow host-c x2",
            "heal"
        ]
    );
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().all(|n| n.contains("at most 1 pair failure")));
}

#[test]
fn no_reboot_through_a_cut_path_and_the_host_stays_down() {
    let (s, notes) = plan::restrict(&hand(
        false,
        vec![
            (8_000, Fault::CutStorage { host: h("host-c") }),
            (8_000, Fault::KillHost { host: h("host-c") }),
            (14_000, Fault::RebootHost { host: h("host-c") }),
            (20_000, Fault::Heal),
            (
                26_000,
                Fault::SlowHost {
                    host: h("host-c"),
                    factor: 2,
                },
            ),
            (30_000, Fault::Heal),
            (34_000, Fault::RebootHost { host: h("host-a") }),
        ],
    ));
    assert_eq!(
        kept(&s),
        ["cut_storage host-c", "kill_host host-c", "heal", "heal"]
    );
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].contains("cut or severed"), "{notes:?}");
    assert!(notes[1].contains("stays down"), "{notes:?}");
    assert!(notes[2].contains("its kill was dropped"), "{notes:?}");
    // A delayed path boots.
    let (s, notes) = plan::restrict(&hand(
        false,
        vec![
            (
                8_000,
                Fault::DelayStorage {
                    host: h("host-c"),
                    ms: 200,
                },
            ),
            (8_000, Fault::KillHost { host: h("host-c") }),
            (14_000, Fault::RebootHost { host: h("host-c") }),
            (20_000, Fault::Heal),
        ],
    ));
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(s.steps.len(), 4);
}

/// Whether `f` costs a member: of the pair before the first kept pair
/// failure, of any host after it (plan.rs's rule, rewritten here).
fn is_member(f: &Fault, after_first: bool) -> bool {
    match after_first {
        false => chaos::costs_a_member(f, &["host-a", "host-b"]),
        true => chaos::costs_a_member(f, &HOSTS),
    }
}

#[test]
fn restricted_schedules_cause_at_most_one_failover_or_a_gated_second() {
    for sequential in [false, true] {
        let (mut first_failures, mut gated, mut failure_first) = (0, 0, 0);
        let (mut reboots, mut reboots_after_failure, mut slows, mut spare_kills) = (0, 0, 0, 0);
        for seed in 0..2_000 {
            let generated = plan::generate(seed, &HOSTS, sequential, Draw::V2);
            let (schedule, notes) = plan::restrict(&generated);
            assert_eq!(
                schedule.steps.len() + notes.len(),
                generated.steps.len(),
                "seed {seed}: a dropped step without a note"
            );
            let mut member = Vec::new();
            let mut killed = BTreeSet::new();
            for s in &schedule.steps {
                if is_member(&s.fault, !member.is_empty()) || s.gate.is_some() {
                    member.push(s);
                }
                match &s.fault {
                    Fault::KillHost { host } => {
                        assert!(
                            killed.insert(host.clone()),
                            "seed {seed}: {host} killed twice"
                        );
                        if host == "host-c" && s.gate.is_none() {
                            spare_kills += 1;
                        }
                    }
                    Fault::RebootHost { host } => {
                        assert!(killed.remove(host), "seed {seed}: reboot of live {host}");
                        reboots += 1;
                        reboots_after_failure += usize::from(!member.is_empty());
                    }
                    Fault::SlowHost { .. } => slows += 1,
                    _ => {}
                }
            }
            let cap = if sequential { 2 } else { 1 };
            assert!(member.len() <= cap, "seed {seed}: {member:?} kept");
            assert!(
                member.iter().skip(1).all(|s| s.gate.is_some()),
                "seed {seed}"
            );
            first_failures += member.len().min(1);
            gated += member.len().saturating_sub(1);
            // Every kill is rebooted, unless its reboot was dropped (a note
            // says why) and the schedule ends with it in force.
            for host in &killed {
                assert!(
                    notes
                        .iter()
                        .any(|n| n.contains(&format!("reboot_host {host}"))
                            && n.contains("cut or severed")),
                    "seed {seed}: {host} never rebooted: {notes:?}"
                );
            }
            // The model's rules hold at every kept step (no fault on a
            // killed host, ...): `check` only reports the end then. What a
            // dropped reboot or kill leaves in force the nemesis's last heal
            // ends (a kill stays).
            if let Err(e) = schedule.check() {
                assert!(
                    e.to_string().contains("still in force at the end"),
                    "seed {seed}: {e}"
                );
            }
            let first = schedule
                .steps
                .iter()
                .find(|s| s.fault.kind().is_injection());
            let pair_failure = |f: &Fault| {
                chaos::FaultClass::of(f, &generated.hosts, generated.params.draw)
                    .is_some_and(chaos::FaultClass::is_pair_failure)
            };
            if first.is_some_and(|s| pair_failure(&s.fault)) {
                failure_first += 1;
            }
        }
        let tally = format!(
            "sequential {sequential}: {first_failures} first and {gated} gated pair failures, \
             {reboots} reboots ({reboots_after_failure} after a pair failure), {slows} slowdowns, \
             {spare_kills} ungated kills of host-c, {failure_first} pair failures first"
        );
        eprintln!("{tally}");
        assert!(first_failures > 1_500, "the runs hardly fail over: {tally}");
        // Stratified: 12 of the 15 classes are pair failures.
        assert!(failure_first >= 1_500, "{tally}");
        assert!(reboots > 250, "{tally}");
        assert!(reboots_after_failure > 200, "{tally}");
        assert!(slows > 100, "{tally}");
        assert!(spare_kills > 20, "{tally}");
        if sequential {
            assert!(gated > 400, "{tally}");
        } else {
            assert_eq!(gated, 0);
        }
    }
}

/// Seeds whose kept schedule reboots a host and slows one, for a QEMU check:
/// `cargo test -p qemu-tests --test chaos -- --ignored --nocapture seeds_with`.
#[test]
#[ignore = "prints seeds for people"]
fn seeds_with_reboots_and_slowdowns() {
    for sequential in [false, true] {
        let mut found = Vec::new();
        for seed in 1..200 {
            let (s, _) = plan::restrict(&plan::generate(seed, &HOSTS, sequential, Draw::V2));
            let has = |k: FaultKind| s.steps.iter().any(|st| st.fault.kind() == k);
            let mid_run_reboot = s
                .steps
                .iter()
                .any(|st| st.fault.kind() == FaultKind::RebootHost && st.at_ms < 40_000);
            if has(FaultKind::SlowHost) && mid_run_reboot {
                found.push(seed);
            }
        }
        println!("sequential {sequential}: {found:?}");
        for seed in found {
            let (s, _) = plan::restrict(&plan::generate(seed, &HOSTS, sequential, Draw::V2));
            let steps: Vec<String> = (s.steps.iter())
                .map(|st| format!("{} {}", st.at_ms / 1000, st.fault))
                .collect();
            println!("  {seed}: {}", steps.join(", "));
        }
    }
}

/// Steps per kind over `seeds` as this runner plays them: generated with its
/// `params` and `draw`, on host-a, host-b and host-c, cut down by `restrict`.
/// Per kind: (steps, steps on host-a or host-b only, seeds with one).
fn kinds_kept(
    seeds: std::ops::RangeInclusive<u64>,
    sequential: bool,
    draw: Draw,
) -> std::collections::BTreeMap<FaultKind, (usize, usize, usize)> {
    let mut by_kind = std::collections::BTreeMap::new();
    for seed in seeds {
        let (s, _) = plan::restrict(&plan::generate(seed, &HOSTS, sequential, draw));
        let mut seen = BTreeSet::new();
        for st in &s.steps {
            let k = st.fault.kind();
            let e = by_kind.entry(k).or_insert((0, 0, 0));
            e.0 += 1;
            let hosts = st.fault.hosts();
            e.1 += usize::from(!hosts.is_empty() && hosts.iter().all(|h| plan::PAIR.contains(h)));
            if seen.insert(k) {
                e.2 += 1;
            }
        }
    }
    by_kind
}

/// The kinds a campaign of draw 2 (the default) applies over 400 seeds
/// (print the table with `--nocapture`): every storage kind about as often
/// as a kill, none of the pair failures crowding out the others, no kind
/// most of the run. Storage faults are pair failures, so they share the
/// run's one pair failure with kills, freezes and partitions; the steps
/// after it can only be VM-network cuts and slowdowns (`plan::restrict`),
/// which is why those two are over half of all steps. Draw 1, the table
/// before the storage classes were split (`chaos::draw`, kept so old seeds
/// replay), starves them: kill_host 128, cut_storage 23, sever_storage 30,
/// delay_storage 46 here. That is why draw 2 exists; checked last.
#[test]
fn storage_kinds_are_drawn_about_as_often_as_kills() {
    let by_kind = kinds_kept(1..=400, false, Draw::V2);
    let injections: usize = (by_kind.iter())
        .filter(|(k, _)| k.is_injection())
        .map(|(_, c)| c.0)
        .sum();
    let mut table = format!(
        "seeds 1..=400, params(false, draw 2), restricted: {injections} injected steps\n\
         {:<14} {:>6} {:>7} {:>6} {:>6}\n",
        "kind", "steps", "on pair", "seeds", "share"
    );
    for (k, (n, pair, seeds)) in &by_kind {
        let share = match k.is_injection() {
            true => format!("{:.1}%", 100.0 * *n as f64 / injections as f64),
            false => "-".into(),
        };
        table.push_str(&format!(
            "{:<14} {n:>6} {pair:>7} {seeds:>6} {share:>6}\n",
            k.name()
        ));
    }
    println!("{table}");
    let steps = |k: FaultKind| by_kind.get(&k).map_or(0, |c| c.0);
    let pair_failures = FaultKind::PAIR_FAILURES;
    let kills = steps(FaultKind::KillHost);
    for k in [
        FaultKind::CutStorage,
        FaultKind::SeverStorage,
        FaultKind::DelayStorage,
    ] {
        assert!(
            steps(k) * 10 >= kills * 9,
            "{k} less often than kills:\n{table}"
        );
    }
    let failures: usize = pair_failures.iter().map(|k| steps(*k)).sum();
    for k in pair_failures {
        assert!(steps(k) >= 40, "{k} hardly drawn:\n{table}");
        assert!(
            steps(k) * 100 <= failures * 25,
            "{k} crowds out the other pair failures:\n{table}"
        );
    }
    for k in FaultKind::INJECTIONS {
        assert!(steps(k) >= 40, "{k} hardly drawn:\n{table}");
        assert!(
            steps(k) * 100 <= injections * 35,
            "{k} crowds out the rest:\n{table}"
        );
    }
    // Draw 1 starves storage: each kind under half as often as kills.
    let old = kinds_kept(1..=400, false, Draw::V1);
    let old_steps = |k: FaultKind| old.get(&k).map_or(0, |c| c.0);
    for k in [
        FaultKind::CutStorage,
        FaultKind::SeverStorage,
        FaultKind::DelayStorage,
    ] {
        assert!(
            old_steps(k) * 2 < old_steps(FaultKind::KillHost),
            "draw 1 no longer starves {k}: {old:?}"
        );
    }
}
