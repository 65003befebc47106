//! Backoff tests: bounds, growth, cap, reset, determinism.

use super::backoff::*;

#[test]
fn delays_grow_within_bounds_up_to_the_cap_and_reset() {
    for seed in 0..200 {
        let mut b = Backoff::with_limits(100, 3_000, seed);
        for i in 0..80u32 {
            let d = (100u64 << i.min(20)).min(3_000);
            let got = b.on_failure();
            assert!(
                got >= d / 2 && got <= d,
                "seed {seed} failure {i}: {got} not in [{}, {d}]",
                d / 2
            );
        }
        assert_eq!(b.failures(), 80);
        b.on_success();
        assert_eq!(b.failures(), 0);
        assert!(
            b.on_failure() <= 100,
            "after a success it starts from the base"
        );
    }
}

#[test]
fn seeded_jitter_is_reproducible_and_spreads() {
    let run = |seed| {
        let mut b = Backoff::new(seed);
        (0..10).map(|_| b.on_failure()).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let firsts: std::collections::BTreeSet<u64> = (0..100).map(|s| run(s)[0]).collect();
    assert!(
        firsts.len() > 20,
        "jitter spreads first retries: {firsts:?}"
    );
    assert!(run(1).iter().all(|&d| d <= MAX_DELAY_MS));
}

#[test]
fn no_overflow_with_huge_limits() {
    let mut b = Backoff::with_limits(1 << 40, u64::MAX, 1);
    for _ in 0..200 {
        let d = b.on_failure();
        assert!(d >= 1 << 39);
    }
}
