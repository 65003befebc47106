//! Tests of the run and campaign reports: judging, aggregates of a
//! hand-made campaign (medians and maxima by kind), the table, JSON.

use super::*;

fn schedule(seed: u64, faults: Vec<Fault>) -> Schedule {
    Schedule {
        seed,
        hosts: vec!["host-a".into(), "host-b".into(), "host-c".into()],
        duration_ms: 60_000,
        params: Params::default(),
        steps: faults
            .into_iter()
            .enumerate()
            .map(|(i, fault)| Step::new(10_000 * (i as u64 + 1), fault))
            .collect(),
    }
}

fn kill(h: &str) -> Fault {
    Fault::KillHost { host: h.into() }
}

fn reboot(h: &str) -> Fault {
    Fault::RebootHost { host: h.into() }
}

fn campaign_runs() -> Vec<RunReport> {
    use FaultKind::{FreezeHost as Freeze, KillHost as Kill};
    let mut r1 = RunReport::new(schedule(10, vec![kill("host-a"), reboot("host-a")]));
    r1.ops = OpCounts {
        ok: 100,
        fail: 2,
        unknown: 1,
    };
    r1.linearizable = Verdict::Linearizable;
    r1.pauses_ms = vec![(Kill, 1_000), (Freeze, 300)];
    r1.recovery_ms = vec![(Kill, 5_000)];

    let freeze = Fault::FreezeHost {
        host: "host-b".into(),
        for_ms: 300,
    };
    let mut r2 = RunReport::new(schedule(
        11,
        vec![freeze, kill("host-c"), reboot("host-c"), Fault::Heal],
    ));
    r2.ops.ok = 50;
    r2.linearizable = Verdict::Linearizable;
    r2.pauses_ms = vec![(Kill, 3_000), (Kill, 2_000)];
    r2.recovery_ms = vec![(Kill, 7_000), (Freeze, 100)];
    // Counted, never failing: no member holding the VM's state was left.
    r2.double_faults = vec!["host-c [40.1] ftvmm: vm kv: won generation 3 to start: … (…)".into()];

    let mut r3 = RunReport::new(schedule(12, vec![]));
    r3.ops.ok = 10;
    r3.linearizable = Verdict::NotLinearizable {
        why: "get k1 saw v0 after put k1=v1 was acked".into(),
    };
    r3.lost_acked_writes = vec!["put k1=v1".into()];
    r3.dual_live = vec!["host-a and host-b live at 12.3 s".into()];
    r3.cold_restarts = vec!["host-c [58.234] ftvmm: vm kv: won generation 2 to start".into()];
    r3.pauses_ms = vec![(Kill, 4_000)];
    r3.recovery_ms = vec![(Kill, 6_000)];

    let mut runs = vec![r1, r2, r3];
    for r in &mut runs {
        r.judge();
    }
    runs
}

#[test]
fn median_and_spread() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[5]), Some(5));
    assert_eq!(median(&[2, 1]), Some(1));
    assert_eq!(median(&[3, 1, 2]), Some(2));
    assert_eq!(median(&[4, 1, 3, 2]), Some(2));
    assert_eq!(median(&[u64::MAX, u64::MAX]), Some(u64::MAX));
    assert_eq!(
        Spread::of(&[7, 1, 9]),
        Spread {
            n: 3,
            median_ms: Some(7),
            max_ms: Some(9)
        }
    );
}

#[test]
fn judging_runs() {
    let runs = campaign_runs();
    assert!(runs[0].passed && runs[1].passed && !runs[2].passed);
    let why = runs[2].failures();
    assert_eq!(why.len(), 4, "{why:?}");
    assert!(
        why.iter().any(|w| w.starts_with("cold restart: ")),
        "{why:?}"
    );
    // A run that checked nothing, or whose verdict is unknown, fails.
    let mut empty = RunReport::new(schedule(1, vec![]));
    empty.linearizable = Verdict::Linearizable;
    assert!(!empty.judge());
    let mut unknown = runs[0].clone();
    unknown.linearizable = Verdict::Unknown {
        why: "search budget".into(),
    };
    assert!(!unknown.judge());
}

#[test]
fn campaign_aggregates() {
    let c = CampaignReport::from_runs(&campaign_runs());
    assert_eq!((c.runs, c.passed), (3, 2));
    assert!(!c.all_passed());
    assert_eq!(c.seeds, vec![10, 11, 12]);
    assert_eq!(
        c.ops,
        OpCounts {
            ok: 160,
            fail: 2,
            unknown: 1
        }
    );
    assert_eq!(
        c.verdicts,
        VerdictCounts {
            linearizable: 2,
            not_linearizable: 1,
            unknown: 0
        }
    );
    assert_eq!(c.failed.len(), 1);
    assert_eq!(c.failed[0].seed, 12);
    assert_eq!(c.lost_acked_writes[0].seed, 12);
    assert_eq!(c.dual_live.len(), 1);
    assert_eq!(c.cold_restarts.len(), 1);
    assert_eq!(c.double_faults.len(), 1);
    assert_eq!(c.double_faults[0].seed, 11);
    assert!(
        c.failed[0].what.contains("cold restart: host-c"),
        "{}",
        c.failed[0].what
    );
    assert!(c.divergences.is_empty());
    let kill = c.by_kind[&FaultKind::KillHost];
    assert_eq!(kill.faults, 2);
    // Pauses 1000, 3000, 2000, 4000: median (2000 + 3000) / 2.
    assert_eq!(
        kill.pause,
        Spread {
            n: 4,
            median_ms: Some(2_500),
            max_ms: Some(4_000)
        }
    );
    assert_eq!(
        kill.recovery,
        Spread {
            n: 3,
            median_ms: Some(6_000),
            max_ms: Some(7_000)
        }
    );
    let freeze = c.by_kind[&FaultKind::FreezeHost];
    assert_eq!(freeze.faults, 1);
    assert_eq!(
        (freeze.pause.median_ms, freeze.recovery.max_ms),
        (Some(300), Some(100))
    );
    assert_eq!(c.by_kind[&FaultKind::RebootHost].faults, 2);
    assert_eq!(c.by_kind[&FaultKind::Heal].faults, 1);
    assert_eq!(c.by_kind[&FaultKind::Heal].pause.median_ms, None);
}

fn row<'a>(table: &'a str, kind: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{kind} ")))
        .unwrap_or_else(|| panic!("no {kind} row in\n{table}"));
    line.split_whitespace().filter(|t| *t != "|").collect()
}

#[test]
fn campaign_table() {
    let t = CampaignReport::from_runs(&campaign_runs()).table();
    assert!(
        t.starts_with("chaos campaign: 3 runs, 2 passed, 1 failed\n"),
        "{t}"
    );
    assert!(
        t.contains("ops checked: 163 (ok 160, fail 2, unknown 1)"),
        "{t}"
    );
    assert!(
        t.contains("verdicts: linearizable 2, not linearizable 1, unknown 0"),
        "{t}"
    );
    assert!(
        t.contains(
            "lost acked writes: 1, dual-live: 1, divergences: 0, cold restarts: 1 (and 1 after a \
             double fault)"
        ),
        "{t}"
    );
    assert!(
        t.contains("double fault, seed 11: cold restart host-c [40.1]"),
        "{t}"
    );
    assert_eq!(
        row(&t, "kill_host"),
        ["kill_host", "2", "4", "2500", "4000", "3", "6000", "7000"]
    );
    assert_eq!(
        row(&t, "freeze_host"),
        ["freeze_host", "1", "1", "300", "300", "1", "100", "100"]
    );
    assert_eq!(row(&t, "heal"), ["heal", "1", "0", "-", "-", "0", "-", "-"]);
    assert!(
        t.contains("FAILED seed 12: not linearizable: get k1 saw v0"),
        "{t}"
    );
    assert!(
        t.contains("  replay: FT_CHAOS_SEED=12 FT_CHAOS_RUNS=1 make chaos\n"),
        "{t}"
    );
    assert!(!t.contains("FT_CHAOS_SEED=10"), "{t}");
    // Fixed width: the kind rows line up with the header.
    let widths: Vec<usize> = t
        .lines()
        .filter(|l| l.contains(" | "))
        .map(str::len)
        .collect();
    assert!(
        widths.len() >= 5 && widths.iter().all(|w| *w == widths[0]),
        "{t}"
    );
}

#[test]
fn run_table() {
    let runs = campaign_runs();
    let t = runs[2].table();
    assert!(t.starts_with("chaos run seed 12: FAILED\n"), "{t}");
    assert!(
        t.contains("replay: FT_CHAOS_SEED=12 FT_CHAOS_RUNS=1 make chaos"),
        "{t}"
    );
    let ok = runs[0].table();
    assert!(ok.starts_with("chaos run seed 10: passed\n"), "{ok}");
    assert!(!ok.contains("replay"), "{ok}");
    // A run with FT_CHAOS_SEQUENTIAL=1 replays with it.
    let mut seq = runs[2].clone();
    seq.schedule.params.pair_failures = 2;
    let t = seq.table();
    assert!(
        t.contains("replay: FT_CHAOS_SEQUENTIAL=1 FT_CHAOS_SEED=12 FT_CHAOS_RUNS=1 make chaos"),
        "{t}"
    );
    // A run with FT_CHAOS_WITNESS set replays with it, in its own table and
    // in the campaign's; its JSON keeps it, and leaves it out when unset.
    let mut off = runs[2].clone();
    off.witness = Some(false);
    let line = "replay: FT_CHAOS_WITNESS=off FT_CHAOS_SEED=12 FT_CHAOS_RUNS=1 make chaos";
    assert!(off.table().contains(line), "{}", off.table());
    let c = CampaignReport::from_runs(&[runs[0].clone(), off.clone()]);
    assert!(c.table().contains(line), "{}", c.table());
    assert_eq!(RunReport::from_json(&off.to_json()).unwrap(), off);
    assert_eq!(CampaignReport::from_json(&c.to_json()).unwrap(), c);
    assert!(!runs[2].to_json().contains("witness"));
    // A run of draw 1 replays with it; the default draw needs no word.
    let mut draw1 = runs[2].clone();
    draw1.schedule.params.draw = Draw::V1;
    let line = "replay: FT_CHAOS_DRAW=1 FT_CHAOS_SEED=12 FT_CHAOS_RUNS=1 make chaos";
    assert!(draw1.table().contains(line), "{}", draw1.table());
    let c = CampaignReport::from_runs(&[runs[0].clone(), draw1.clone()]);
    assert!(c.table().contains(line), "{}", c.table());
    assert!(!runs[2].table().contains("FT_CHAOS_DRAW"));
}

/// Reports written before draws had versions name no draw: all their runs
/// were drawn by draw 1, so they parse as draw 1 and their replay lines say
/// `FT_CHAOS_DRAW=1`.
#[test]
fn old_reports_without_a_draw_are_draw_1() {
    let mut run = campaign_runs()[2].clone();
    run.schedule.params.draw = Draw::V1;
    let mut v: serde_json::Value = serde_json::from_str(&run.to_json()).unwrap();
    assert_eq!(v["schedule"]["params"]["draw"], 1);
    v["schedule"]["params"]
        .as_object_mut()
        .unwrap()
        .remove("draw");
    let back = RunReport::from_json(&v.to_string()).unwrap();
    assert_eq!(back, run);
    assert!(back
        .table()
        .contains("replay: FT_CHAOS_DRAW=1 FT_CHAOS_SEED=12"));
    let c = CampaignReport::from_runs(&[run]);
    let mut v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(v["draw"], 1);
    v.as_object_mut().unwrap().remove("draw");
    assert_eq!(CampaignReport::from_json(&v.to_string()).unwrap(), c);
    assert_eq!(CampaignReport::from_runs(&campaign_runs()).draw, Draw::V2);
}

#[test]
fn old_reports_without_gates_or_pair_failures_still_parse() {
    let r = &campaign_runs()[0];
    let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    let params = v["schedule"]["params"].as_object_mut().unwrap();
    params.remove("pair_failures");
    params.remove("respawn_ms");
    assert!(v["schedule"]["steps"][0].get("gate").is_none());
    let back = RunReport::from_json(&v.to_string()).unwrap();
    assert_eq!(back.schedule.params.pair_failures, 1);
    assert_eq!(&back, r);
}

#[test]
fn json_round_trips() {
    let runs = campaign_runs();
    for r in &runs {
        assert_eq!(&RunReport::from_json(&r.to_json()).unwrap(), r);
    }
    let c = CampaignReport::from_runs(&runs);
    let json = c.to_json();
    assert!(json.contains("\"kill_host\""), "{json}");
    assert_eq!(CampaignReport::from_json(&json).unwrap(), c);
    let v: serde_json::Value = serde_json::from_str(&runs[2].to_json()).unwrap();
    assert_eq!(v["linearizable"]["verdict"], "not_linearizable");
    assert_eq!(v["pauses_ms"][0], serde_json::json!(["kill_host", 4000]));
    assert!(RunReport::from_json("[]").is_err());
}

/// A summary over campaigns mixes settings: each failed run keeps the
/// replay line of its own draw and witness override, and the runs are
/// counted by the image they booted (none recorded: "unrecorded").
#[test]
fn a_summary_of_mixed_campaigns_replays_each_run_as_it_ran() {
    let mut runs = campaign_runs();
    runs[0].image = Some("sha256:00112233aabbccdd a.iso".into());
    runs[1].image = Some("sha256:00112233aabbccdd a.iso".into());
    // The failed run was drawn by draw 1 with the witness forced off.
    runs[2].schedule.params.draw = Draw::V1;
    runs[2].witness = Some(false);
    let c = CampaignReport::from_runs(&runs);
    assert_eq!(
        c.images,
        std::collections::BTreeMap::from([
            ("sha256:00112233aabbccdd a.iso".to_string(), 2),
            ("unrecorded".to_string(), 1)
        ])
    );
    let own = replay_line(12, false, Draw::V1, Some(false));
    assert_eq!(c.failed[0].replay.as_deref(), Some(own.as_str()));
    let table = c.table();
    assert!(
        table.contains("images: sha256:00112233aabbccdd a.iso (2 runs), unrecorded (1 run)"),
        "{table}"
    );
    assert!(table.contains(&format!("  replay: {own}")), "{table}");
    // The campaign-wide settings (the first non-default draw) would say
    // the same here; a failed run of draw 2 in the same summary would not.
    runs[2].schedule.params.draw = Draw::V2;
    runs[0].schedule.params.draw = Draw::V1;
    let c = CampaignReport::from_runs(&runs);
    assert_eq!(c.draw, Draw::V1);
    let own = replay_line(12, false, Draw::V2, Some(false));
    assert!(
        c.table().contains(&format!("  replay: {own}")),
        "{}",
        c.table()
    );
}

/// Reports and campaigns written before images were recorded still parse:
/// no image, no images, no replay per failed run (the campaign's is used).
#[test]
fn old_reports_without_images_still_parse() {
    let runs = campaign_runs();
    let v: serde_json::Value = serde_json::from_str(&runs[0].to_json()).unwrap();
    assert!(v.get("image").is_none());
    assert_eq!(RunReport::from_json(&v.to_string()).unwrap(), runs[0]);
    let c = CampaignReport::from_runs(&runs);
    let mut v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    v.as_object_mut().unwrap().remove("images");
    v["failed"][0].as_object_mut().unwrap().remove("replay");
    let back = CampaignReport::from_json(&v.to_string()).unwrap();
    assert!(back.images.is_empty() && back.failed[0].replay.is_none());
    assert!(
        back.table().contains("  replay: FT_CHAOS_SEED=12"),
        "{}",
        back.table()
    );
    assert!(!back.table().contains("images:"));
}
