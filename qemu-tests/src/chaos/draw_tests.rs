//! Tests of the weighted, stratified draw and of the pair-failure rules:
//! every class of either draw starts one of any `K` consecutive seeds, each
//! injection has a class of either draw's table, a seed replays its
//! campaign schedule, the pair-failure classes dominate and share alike
//! (any 10 consecutive seeds start with every pair-failure kind), one pair
//! failure per run
//! without `FT_CHAOS_SEQUENTIAL` and a gated second one with it, and the
//! predicted roles and gate renamings.

use super::draw::Scope;
use super::model::Model;
use super::rng::Rng;
use super::roles::Roles;
use super::*;
use std::collections::BTreeSet;

const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];
const PAIR: [&str; 2] = ["host-a", "host-b"];
const DURATION: u64 = 60_000;

/// Like the QEMU runner's (tests/chaos/plan.rs): a 60 s run, every kind,
/// slowdowns by 2 to 4.
fn campaign(sequential: bool) -> Params {
    Params {
        start_ms: 8_000,
        min_gap_ms: 6_000,
        max_gap_ms: 12_000,
        max_concurrent: 2,
        kinds: FaultKind::INJECTIONS.to_vec(),
        slow_factor: (2, 4),
        combine_percent: 25,
        heal_percent: 35,
        settle_ms: 12_000,
        pair_failures: if sequential { 2 } else { 1 },
        ..Params::default()
    }
}

fn gen(seed: u64, p: &Params) -> Schedule {
    Schedule::generate(seed, &HOSTS, DURATION, p)
}

fn hosts() -> Vec<String> {
    HOSTS.iter().map(|h| h.to_string()).collect()
}

/// The class of the schedule's first injected fault.
fn first_fault_class(s: &Schedule) -> Option<FaultClass> {
    let roles = Roles::new(&s.hosts);
    let step = s.steps.iter().find(|st| st.fault.kind().is_injection())?;
    FaultClass::under(&step.fault, &roles, s.params.draw)
}

fn pair_failures(s: &Schedule) -> Vec<&Step> {
    s.steps
        .iter()
        .filter(|st| costs_a_member(&st.fault, &PAIR))
        .collect()
}

#[test]
fn every_class_starts_one_of_the_first_k_seeds_of_a_campaign() {
    let mut rng = Rng::new(99);
    let both_draws = |p: Params| Draw::ALL.map(|draw| Params { draw, ..p.clone() });
    let all = [Params::default(), campaign(false), campaign(true)].map(both_draws);
    for p in all.into_iter().flatten() {
        let enabled = FaultClass::enabled(&p);
        let k = enabled.len() as u64;
        assert_eq!(k, p.draw.weights().len() as u64);
        assert_eq!(k, if p.draw == Draw::V1 { 11 } else { 15 });
        for first in [0, 1, 7, u64::MAX - 20, rng.next_u64(), rng.next_u64()] {
            let got: Vec<FaultClass> = seeds(first, k)
                .into_iter()
                .map(|seed| first_fault_class(&gen(seed, &p)).expect("a first fault"))
                .collect();
            let distinct: BTreeSet<_> = got.iter().copied().collect();
            assert_eq!(
                distinct,
                enabled.iter().copied().collect(),
                "seeds {first}..+{k}: {got:?}"
            );
        }
    }
}

#[test]
fn a_seed_replays_its_campaign_schedule() {
    let draw1 = Params {
        draw: Draw::V1,
        ..campaign(true)
    };
    for p in [campaign(false), campaign(true), draw1] {
        let first = 1_000;
        let campaign_runs: Vec<Schedule> = seeds(first, 20).iter().map(|s| gen(*s, &p)).collect();
        for (i, s) in campaign_runs.iter().enumerate() {
            let replay = gen(first + i as u64, &p);
            assert_eq!(replay.to_json(), s.to_json(), "run {i}");
            assert!(s.replays());
        }
    }
}

#[test]
fn the_weights_put_pair_host_faults_in_most_schedules() {
    let p = campaign(false);
    let mut rng = Rng::new(2024);
    let mut with_failure = 0;
    for _ in 0..1_000 {
        let s = gen(rng.next_u64(), &p);
        let roles = Roles::new(&s.hosts);
        if s.steps.iter().any(|st| {
            FaultClass::under(&st.fault, &roles, p.draw).is_some_and(FaultClass::is_pair_failure)
        }) {
            with_failure += 1;
        }
    }
    assert!(
        with_failure >= 900,
        "{with_failure} of 1000 with a pair-host fault"
    );

    // The weighted draw alone, on a healthy cluster: the pair-failure
    // classes have 83 of the 100 weight, and share it about alike by kind.
    let model = Model::new(&hosts());
    let roles = Roles::new(&hosts());
    let scope = Scope {
        model: &model,
        roles: &roles,
        params: &p,
        pair_failure_ok: true,
        not: None,
    };
    let n = 10_000;
    let drawn: Vec<Fault> = (0..n)
        .filter_map(|_| scope.draw(&mut rng, None))
        .filter(|f| FaultClass::under(f, &roles, p.draw).is_some_and(FaultClass::is_pair_failure))
        .collect();
    let share = drawn.len() as f64 / n as f64;
    assert!((0.80..0.90).contains(&share), "pair-failure share {share}");
    for kind in FaultKind::PAIR_FAILURES {
        let of_kind = drawn.iter().filter(|f| f.kind() == kind).count();
        let share = of_kind as f64 / drawn.len() as f64;
        assert!((0.12..0.21).contains(&share), "{kind}: share {share}");
    }
}

#[test]
fn any_ten_consecutive_seeds_start_with_every_pair_failure_kind() {
    let p = campaign(false);
    let kind = |seed: u64| {
        let s = gen(seed, &p);
        let first = s.steps.iter().find(|st| st.fault.kind().is_injection());
        first.expect("a first fault").fault.kind()
    };
    let firsts: Vec<FaultKind> = (0..40).map(kind).collect();
    for (i, w) in firsts.windows(10).enumerate() {
        for want in FaultKind::PAIR_FAILURES {
            assert!(w.contains(&want), "seeds {i}..{}: no {want}: {w:?}", i + 9);
        }
    }
}

#[test]
fn without_the_knob_no_schedule_has_two_pair_failures() {
    let mut drew = 0;
    for p in [Params::default(), campaign(false)] {
        for seed in 0..3_000 {
            let s = gen(seed, &p);
            let failures = pair_failures(&s);
            assert!(failures.len() <= 1, "seed {seed}: {failures:?}");
            assert!(s.steps.iter().all(|st| st.gate.is_none()), "seed {seed}");
            s.check_pair_failures()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            drew += failures.len();
        }
    }
    assert!(drew > 5_000, "only {drew} pair failures in 6000 runs");
}

#[test]
fn with_the_knob_a_second_pair_failure_waits_for_the_respawn() {
    let p = campaign(true);
    let mut two = 0;
    for seed in 0..3_000 {
        let s = gen(seed, &p);
        s.check().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        s.check_pair_failures()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let gated: Vec<&Step> = s.steps.iter().filter(|st| st.gate.is_some()).collect();
        assert!(gated.len() <= 1, "seed {seed}: {gated:?}");
        let Some(second) = gated.first() else {
            continue;
        };
        two += 1;
        let first = s
            .steps
            .iter()
            .find(|st| costs_a_member(&st.fault, &PAIR))
            .expect("a first pair failure");
        assert!(
            second.at_ms >= first.at_ms + p.respawn_ms,
            "seed {seed}: {first:?} then {second:?}"
        );
        // The predicted pair: the first failure's survivor and host-c.
        let gate = second.gate.as_ref().expect("gated");
        assert_eq!(gate.secondary, "host-c", "seed {seed}: {first:?}");
        let lost_primary = matches!(&first.fault,
            Fault::KillHost { host } | Fault::FreezeHost { host, .. }
            | Fault::CutStorage { host } | Fault::SeverStorage { host }
            | Fault::DelayStorage { host, .. } if host == "host-a");
        let survivor = if lost_primary { "host-b" } else { "host-a" };
        assert_eq!(gate.primary, survivor, "seed {seed}: {first:?}");
    }
    assert!(
        two > 600,
        "only {two} of 3000 runs have a second pair failure"
    );
}

#[test]
fn roles_move_as_predicted() {
    let mut r = Roles::new(&hosts());
    let kill_a = Fault::KillHost {
        host: "host-a".into(),
    };
    assert!(r.is_pair_failure(&kill_a));
    assert!(r.pair_failure_allowed(0, 2, 10));
    assert_eq!(r.gate(), None);
    r.fail(&kill_a, 100, true);
    assert_eq!(r.primary.as_deref(), Some("host-b"));
    assert_eq!(r.secondary.as_deref(), Some("host-c"));
    assert_eq!(r.spares, ["host-a"]);
    assert!(!r.pair_failure_allowed(109, 2, 10));
    assert!(r.pair_failure_allowed(110, 2, 10));
    assert!(!r.pair_failure_allowed(110, 1, 10));
    assert_eq!(
        r.gate(),
        Some(Gate {
            primary: "host-b".into(),
            secondary: "host-c".into()
        })
    );
    // host-c is a member now, and so is the loser.
    let freeze_c = Fault::FreezeHost {
        host: "host-c".into(),
        for_ms: 1,
    };
    assert!(r.is_pair_failure(&freeze_c));

    // A partition: the Secondary is predicted to lose.
    let mut r = Roles::new(&hosts());
    let cut = Fault::PartitionFt {
        a: "host-b".into(),
        b: "host-a".into(),
        one_way: true,
    };
    r.fail(&cut, 0, true);
    assert_eq!(r.primary.as_deref(), Some("host-a"));
    assert_eq!(r.secondary.as_deref(), Some("host-c"));

    // Without respawn the roles stay, and host-c's faults cost nothing.
    let mut r = Roles::new(&hosts());
    r.fail(&kill_a, 0, false);
    assert_eq!(r.primary.as_deref(), Some("host-a"));
    assert!(!r.is_pair_failure(&freeze_c));
    assert_eq!(
        FaultClass::under(&freeze_c, &r, Draw::V2),
        Some(FaultClass::Spare)
    );
}

#[test]
fn a_gate_renames_the_predicted_pair_to_the_seen_one() {
    let gate = Gate {
        primary: "host-a".into(),
        secondary: "host-c".into(),
    };
    let hs = hosts();
    // As predicted: nothing moves.
    let same = gate.renaming(&hs, "host-a", "host-c").unwrap();
    assert!(same.iter().all(|(k, v)| k == v), "{same:?}");
    // host-b won instead of host-a: the two swap, host-c stays.
    let swap = gate.renaming(&hs, "host-b", "host-c").unwrap();
    let f = Fault::PartitionFt {
        a: "host-a".into(),
        b: "host-c".into(),
        one_way: false,
    };
    let renamed = f.renamed(|h| swap.get(h).cloned().unwrap_or_else(|| h.to_string()));
    assert_eq!(renamed.to_string(), "partition host-b<->host-c");
    assert_eq!(swap.get("host-b").map(String::as_str), Some("host-a"));
    assert_eq!(gate.renaming(&hs, "host-a", "host-z"), None);
    assert_eq!(gate.renaming(&hs, "host-a", "host-a"), None);
}

#[test]
fn classes_partition_the_injections() {
    let roles = Roles::new(&hosts());
    let model = Model::new(&hosts());
    for draw in Draw::ALL {
        let table = draw.weights();
        let names: BTreeSet<&str> = table.iter().map(|(c, _)| c.name()).collect();
        assert_eq!(names.len(), table.len());
        let weight: u32 = (table.iter())
            .filter(|(c, _)| c.is_pair_failure())
            .map(|(_, w)| w)
            .sum();
        assert!(
            weight >= 50,
            "draw {draw}: pair failures weigh {weight} of 100"
        );
        // Every injection has a class of the draw's table, a pair-failure
        // class when it costs the pair a member.
        for kind in FaultKind::INJECTIONS {
            for f in model.targets(kind) {
                let class = FaultClass::under(&f, &roles, draw).expect("a class");
                assert!(class.weight(draw) > 0, "draw {draw}: {f} is {class}");
                assert_eq!(class.is_pair_failure(), roles.is_pair_failure(&f), "{f}");
            }
        }
    }
}

#[test]
#[ignore = "prints a campaign's schedules for people: cargo test -p qemu-tests --lib -- --ignored --nocapture print_campaign"]
fn print_campaign() {
    for sequential in [false, true] {
        println!("FT_CHAOS_SEQUENTIAL={}", u8::from(sequential));
        for seed in seeds(1, 10) {
            let s = gen(seed, &campaign(sequential));
            let steps: Vec<String> = s
                .steps
                .iter()
                .map(|st| {
                    let gate = st.gate.as_ref().map_or(String::new(), |g| {
                        format!(" (after protected: {} {})", g.primary, g.secondary)
                    });
                    format!("{} {}{gate}", st.at_ms, st.fault)
                })
                .collect();
            println!("  seed {seed}: {}", steps.join(", "));
        }
    }
}
