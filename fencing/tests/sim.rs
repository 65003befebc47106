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

fn add(total: &mut sim::SimStats, s: &sim::SimStats) {
    total.steps += s.steps;
    total.decisions += s.decisions;
    total.distinct_decided += s.distinct_decided;
    total.superseded += s.superseded;
    total.crashes += s.crashes;
    total.aborts += s.aborts;
    total.io_failures += s.io_failures;
    total.corrupt_outcomes += s.corrupt_outcomes;
    total.corruptions += s.corruptions;
    total.garbage_reads += s.garbage_reads;
    total.tears += s.tears;
    total.neighbours_torn += s.neighbours_torn;
    total.stale_neighbours += s.stale_neighbours;
    total.impostors += s.impostors;
    total.slot_refusals += s.slot_refusals;
    total.slot_takeovers += s.slot_takeovers;
    total.duels += s.duels;
    total.duel_aborts += s.duel_aborts;
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
            Ok(s) => add(&mut total, &s),
            Err(e) => panic!(
                "{e}\nreplay: FENCING_SIM_SEED={seed} cargo test -p fencing --test sim -- --nocapture"
            ),
        }
    }
    println!("{count} seeds from {first}: {total:?}");
    // The schedules must actually exercise the algorithm and every fault.
    assert!(total.decisions > count, "too few decisions: {total:?}");
    assert!(
        total.aborts > 0
            && total.crashes > 0
            && total.superseded > 0
            && total.io_failures > 0
            && total.corruptions > 0
            && total.garbage_reads > 0
            && total.corrupt_outcomes > 0
            && total.tears > 0
            && total.impostors > 0
            && total.slot_refusals > 0
            && total.slot_takeovers > 0
            && total.duels > count / 2
            && total.duel_aborts > 0,
        "{total:?}"
    );
    // Layout 2: no write ever touched another block.
    assert_eq!(
        (total.neighbours_torn, total.stale_neighbours),
        (0, 0),
        "{total:?}"
    );
}

/// Layout 1's packing (512-byte blocks) on a 512e device, or layout 2.
fn on_512e(block: usize) -> sim::Options {
    sim::Options {
        block,
        physical: 4096,
        claim: true,
        impostor: false,
        corrupt: false,
        tear: true,
    }
}

#[test]
fn on_a_512e_device_512_byte_blocks_decide_two_owners_and_physical_blocks_do_not() {
    // Read-modify-writes put other hosts' records back to what they were
    // (their accepted values, their lease renewals): two different decisions
    // of one generation, or a slot that seems taken.
    let mut kinds = Vec::new();
    let agreement = (0..300).find(|&seed| match sim::run_with(seed, false, on_512e(512)) {
        Err(e) => {
            kinds.push(e.kind);
            e.kind == sim::FailureKind::Agreement
        }
        Ok(_) => false,
    });
    println!("layout 1 on 512e: failures before two owners: {kinds:?}");
    assert!(
        agreement.is_some(),
        "no seed of 300 broke agreement with layout 1 on 512e"
    );
    let mut total = sim::SimStats::default();
    for seed in 0..200 {
        match sim::run_with(seed, false, on_512e(4096)) {
            Ok(s) => add(&mut total, &s),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(total.decisions > 200 && total.tears > 0, "{total:?}");
    assert_eq!(
        (total.neighbours_torn, total.stale_neighbours),
        (0, 0),
        "{total:?}"
    );
}

#[test]
fn without_the_slot_claim_an_impostor_wins_alongside_the_real_host() {
    let opts = |claim| sim::Options {
        block: 512,
        physical: 512,
        claim,
        impostor: true,
        corrupt: false,
        tear: false,
    };
    let broken = (0..300)
        .filter_map(|seed| sim::run_with(seed, false, opts(false)).err())
        .find(|e| e.kind == sim::FailureKind::TwoWinners);
    assert!(broken.is_some(), "no seed of 300 let an impostor win");
    let mut total = sim::SimStats::default();
    for seed in 0..300 {
        match sim::run_with(seed, false, opts(true)) {
            Ok(s) => add(&mut total, &s),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(total.impostors > 0 && total.slot_refusals > 0, "{total:?}");
}

#[test]
fn seeded_lease_schedules_hold_or_reset_a_host_before_others_see_its_lease_expire() {
    let first = env_u64("FENCING_SIM_FIRST").unwrap_or(0);
    let count = env_u64("FENCING_SIM_SEEDS").unwrap_or(2000) / 4;
    let mut total = fencing::sim_lease::LeaseSimStats::default();
    for seed in first..first + count {
        match fencing::sim_lease::run(seed, false) {
            Ok(s) => {
                total.renewals += s.renewals;
                total.cuts += s.cuts;
                total.crashes += s.crashes;
                total.agent_deaths += s.agent_deaths;
                total.watchdog_resets += s.watchdog_resets;
                total.grants += s.grants;
                total.expiries_dead += s.expiries_dead;
                total.expiries_held += s.expiries_held;
            }
            Err(e) => panic!(
                "{e}\nreplay: FENCING_LEASE_SIM_SEED={seed} cargo test -p fencing --test sim -- --nocapture lease"
            ),
        }
    }
    println!("{count} lease seeds from {first}: {total:?}");
    // Both ways a host is stopped must actually happen.
    assert!(
        total.watchdog_resets > 0
            && total.expiries_dead > 0
            && total.expiries_held > 0
            && total.cuts > 0
            && total.agent_deaths > 0
            && total.grants > 0,
        "{total:?}"
    );
}

#[test]
fn the_lease_simulation_catches_a_grant_that_outlives_the_lease() {
    // A host that counted its lease fresh for twice the lease timeout would
    // keep granting output (and feeding the watchdog) after the others can
    // call it dead.
    let broken = (0..200).find_map(|seed| {
        fencing::sim_lease::run_with(seed, false, |t| t.hold_after = t.timeout * 2).err()
    });
    let e = broken.expect("no seed of 200 caught the broken arithmetic");
    assert!(e.what.contains("still releases output"), "{e}");
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
