//! Seeded Disk Paxos simulations (see `fencing::sim`).
//!
//! `cargo test -p fencing --test sim` runs 2000 seeds; `FENCING_SIM_SEEDS=N`
//! runs N (from `FENCING_SIM_FIRST`, default 0); `FENCING_SIM_SEED=S` replays
//! one seed with a trace of every event.

use fencing::sim;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[test]
fn seeded_schedules_never_decide_two_owners_and_a_lone_host_decides() {
    if let Some(seed) = env_u64("FENCING_SIM_SEED") {
        match sim::run(seed, true) {
            Ok(stats) => println!("seed {seed}: {stats:?}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let first = env_u64("FENCING_SIM_FIRST").unwrap_or(0);
    let count = env_u64("FENCING_SIM_SEEDS").unwrap_or(2000);
    let mut total = sim::SimStats::default();
    for seed in first..first + count {
        match sim::run(seed, false) {
            Ok(s) => {
                total.steps += s.steps;
                total.decisions += s.decisions;
                total.distinct_decided += s.distinct_decided;
                total.superseded += s.superseded;
                total.crashes += s.crashes;
                total.aborts += s.aborts;
                total.io_failures += s.io_failures;
            }
            Err(e) => panic!(
                "{e}\nreplay: FENCING_SIM_SEED={seed} cargo test -p fencing --test sim -- --nocapture"
            ),
        }
    }
    println!("{count} seeds from {first}: {total:?}");
    // The schedules must actually exercise the algorithm.
    assert!(total.decisions > count, "too few decisions: {total:?}");
    assert!(total.aborts > 0 && total.crashes > 0 && total.superseded > 0 && total.io_failures > 0);
}

#[test]
fn a_seed_replays_identically() {
    for seed in [1, 77, 4242] {
        assert_eq!(sim::run(seed, false), sim::run(seed, false));
    }
    assert_ne!(sim::run(1, false), sim::run(2, false));
}

#[test]
fn seeded_lease_schedules_reset_a_host_before_others_see_its_lease_expire() {
    let first = env_u64("FENCING_SIM_FIRST").unwrap_or(0);
    let count = env_u64("FENCING_SIM_SEEDS").unwrap_or(2000) / 4;
    let mut total = fencing::sim_lease::LeaseSimStats::default();
    for seed in first..first + count {
        match fencing::sim_lease::run(seed, false) {
            Ok(s) => {
                total.renewals += s.renewals;
                total.cuts += s.cuts;
                total.crashes += s.crashes;
                total.watchdog_resets += s.watchdog_resets;
                total.expiries += s.expiries;
            }
            Err(e) => panic!(
                "{e}\nreplay: FENCING_LEASE_SIM_SEED={seed} cargo test -p fencing --test sim -- --nocapture lease"
            ),
        }
    }
    println!("{count} lease seeds from {first}: {total:?}");
    assert!(
        total.watchdog_resets > 0 && total.expiries > 0 && total.cuts > 0,
        "{total:?}"
    );
}

#[test]
fn lease_seed_replay() {
    if let Some(seed) = env_u64("FENCING_LEASE_SIM_SEED") {
        match fencing::sim_lease::run(seed, true) {
            Ok(stats) => println!("lease seed {seed}: {stats:?}"),
            Err(e) => panic!("{e}"),
        }
    }
}
