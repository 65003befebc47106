//! The duel of two proposers for one (VM, generation), one possibly slow
//! (see `fencing::sim`, its duel phase).
//!
//! `cargo test -p fencing --test duel` checks every variant over a few
//! hundred seeds per pace. The measurement is ignored (it prints, it does not
//! test): `cargo test --release -p fencing --test duel -- --ignored --nocapture`
//! (`FENCING_DUEL_SEEDS=N`, default 5000, seeds per row).

use fencing::sim::{self, DuelSetup, Finish, Pace, Rival, TICKS_PER_MS};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// The rows: the fast machine alone, against a fast rival, and against a
/// rival at a quarter of the speed starting together, first, or later:
/// "slow" with its backoff four times longer too, "slowio" with the same
/// (wall-clock) backoff as the fast one.
fn variants(pace: Pace) -> Vec<(&'static str, Option<Rival>)> {
    let slow_ballot = 10 * pace.io * 4;
    let rival = |slowdown, slow_backoff, start| {
        Some(Rival {
            slowdown,
            slow_backoff,
            start,
        })
    };
    let half = (slow_ballot / 2) as i64;
    vec![
        ("alone", None),
        ("both fast", rival(1, false, 0)),
        ("slow together", rival(4, true, 0)),
        ("slow first", rival(4, true, -half)),
        ("slow later", rival(4, true, half)),
        ("slowio together", rival(4, false, 0)),
        ("slowio first", rival(4, false, -half)),
        ("slowio later", rival(4, false, half)),
    ]
}

const PACES: [(&str, Pace); 3] = [
    ("lan", Pace::LAN),
    ("loaded", Pace::LOADED),
    ("crawl", Pace::CRAWL),
];

#[test]
fn the_fast_proposer_decides_within_its_bound_and_the_slow_one_agrees() {
    let seeds = env_u64("FENCING_DUEL_SEEDS").unwrap_or(200);
    for (pname, pace) in PACES {
        for (vname, rival) in variants(pace) {
            for seed in 0..seeds {
                let setup = DuelSetup { pace, rival };
                let d = sim::duel(seed, false, setup)
                    .unwrap_or_else(|e| panic!("{pname} {vname}: {e}"));
                if let Err(e) = d.check_fast() {
                    panic!("{pname} {vname} seed {seed}: {e}");
                }
            }
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
#[ignore = "a measurement (prints distributions), not a test; run with --ignored --nocapture"]
fn duel_time_to_decide_distribution() {
    let seeds = env_u64("FENCING_DUEL_SEEDS").unwrap_or(5000);
    println!(
        "fast proposer's time to decide over {seeds} seeds (ms; ballots); the rival's; \
         seeds where a machine had not decided after {} ms",
        sim::SLOW_BOUND_TICKS / TICKS_PER_MS
    );
    println!(
        "{:<7} {:<16} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>4} {:>4} {:>4} | {:>6} {:>7} | {:>6} {:>6} | {:>5}",
        "pace", "variant", "p50", "p90", "p99", "p99.9", "max", "b50", "b99", "bmax", "aborts", "fastwon", "r.p99", "r.max", "stuck"
    );
    for (pname, pace) in PACES {
        for (vname, rival) in variants(pace) {
            let setup = DuelSetup { pace, rival };
            let mut stuck = 0;
            let runs: Vec<(Finish, Option<Finish>)> = (0..seeds)
                .filter_map(|seed| match sim::duel(seed, false, setup) {
                    Ok(d) => Some((d.fast, d.rival)),
                    Err(e) if e.kind == sim::FailureKind::Liveness => {
                        stuck += 1;
                        None
                    }
                    Err(e) => panic!("{e}"),
                })
                .collect();
            let mut ticks: Vec<u64> = runs.iter().map(|r| r.0.ticks).collect();
            let mut ballots: Vec<u64> = runs.iter().map(|r| u64::from(r.0.ballots)).collect();
            let mut rival_ticks: Vec<u64> =
                runs.iter().filter_map(|r| r.1.map(|f| f.ticks)).collect();
            ticks.sort_unstable();
            ballots.sort_unstable();
            rival_ticks.sort_unstable();
            if runs.is_empty() {
                println!("{pname:<7} {vname:<14} every seed stuck");
                continue;
            }
            let aborts: u64 = runs.iter().map(|r| u64::from(r.0.aborts)).sum();
            let won = runs.iter().filter(|r| r.0.won).count();
            let ms = |t: u64| format!("{:.1}", t as f64 / TICKS_PER_MS as f64);
            let rival_col = |q: f64| {
                if rival_ticks.is_empty() {
                    "-".to_string()
                } else {
                    ms(percentile(&rival_ticks, q))
                }
            };
            println!(
                "{:<7} {:<16} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>4} {:>4} {:>4} | {:>6} {:>7} | {:>6} {:>6} | {:>5}",
                pname,
                vname,
                ms(percentile(&ticks, 0.5)),
                ms(percentile(&ticks, 0.9)),
                ms(percentile(&ticks, 0.99)),
                ms(percentile(&ticks, 0.999)),
                ms(*ticks.last().expect("seeds")),
                percentile(&ballots, 0.5),
                percentile(&ballots, 0.99),
                ballots.last().expect("seeds"),
                aborts,
                won,
                rival_col(0.99),
                rival_col(1.0),
                stuck,
            );
        }
    }
}

/// `FENCING_DUEL_SEED=S FENCING_DUEL_PACE=lan|loaded|crawl
/// FENCING_DUEL_VARIANT=0..=7` (the row of `variants`) replays one duel
/// with a trace.
#[test]
fn duel_seed_replay() {
    let Some(seed) = env_u64("FENCING_DUEL_SEED") else {
        return;
    };
    let pname = std::env::var("FENCING_DUEL_PACE").unwrap_or_else(|_| "lan".into());
    let (_, pace) = PACES
        .into_iter()
        .find(|p| p.0 == pname)
        .unwrap_or_else(|| panic!("no pace {pname:?}"));
    let v = env_u64("FENCING_DUEL_VARIANT").unwrap_or(2) as usize;
    let (vname, rival) = variants(pace)[v];
    println!("{pname} {vname} seed {seed}");
    match sim::duel(seed, true, DuelSetup { pace, rival }) {
        Ok(d) => println!("{d:?}"),
        Err(e) => panic!("{e}"),
    }
}
