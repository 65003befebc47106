//! A deterministic seeded simulation of a live state transfer: a [`Sender`]
//! and a [`Receiver`] joined by an in-memory, lossless, ordered pipe carrying
//! the real encoded messages, and a toy guest that writes random pages
//! (mostly in a hot set) while it runs: while pages are being sent and
//! while messages are in flight, never while paused.
//!
//! Properties: every transfer converges with the receiver's memory equal to
//! the guest's at the Switch and the Switch's state handed over; a guest
//! writing faster than the link is stopped (not shrinking / max rounds) and
//! still ends consistent; a cut at a random message fails both sides
//! (neither Done unless the Switch got through) and resumes the guest, and a
//! retry after the backoff converges. Outcomes are counted so that a vacuous
//! run fails.

use super::backoff::Backoff;
use super::sender::StopReason;
use super::sim_world_tests::{attempt, config, converge, Guest, Outcome, Rng};
#[derive(Default, Debug)]
struct Totals {
    converged: u64,
    rounds: u64,
    max_rounds: u32,
    bytes: u64,
    final_pages: u64,
    max_final_pages: u64,
    reasons: [u64; 3],
}

impl Totals {
    fn add(&mut self, o: &Outcome) {
        self.converged += 1;
        self.rounds += u64::from(o.rounds);
        self.max_rounds = self.max_rounds.max(o.rounds);
        self.bytes += o.bytes;
        self.final_pages += o.final_round_pages;
        self.max_final_pages = self.max_final_pages.max(o.final_round_pages);
        let i = match o.stop {
            Some(StopReason::SmallEnough) => 0,
            Some(StopReason::NotShrinking) => 1,
            Some(StopReason::MaxRounds) => 2,
            None => unreachable!("a converged transfer stopped for a reason"),
        };
        self.reasons[i] += 1;
    }

    fn report(&self, name: &str) {
        let n = self.converged.max(1);
        println!(
            "{name}: {} converged; rounds avg {:.2} max {}; bytes avg {}; final round pages avg {:.1} max {}; \
             stop small/not-shrinking/max-rounds {:?}",
            self.converged,
            self.rounds as f64 / n as f64,
            self.max_rounds,
            self.bytes / n,
            self.final_pages as f64 / n as f64,
            self.max_final_pages,
            self.reasons
        );
    }
}

const SEEDS: u64 = 1000;

#[test]
fn transfers_converge_with_equal_memory() {
    let mut t = Totals::default();
    for seed in 0..SEEDS {
        let mut rng = Rng(seed);
        let pages = 64 + rng.below(448);
        let hot = 1 + rng.below(pages / 4);
        // Up to 100 writes/ms; the link moves ~215 pages/ms.
        let rate = rng.below(100_000);
        let mut g = Guest::new(&mut rng, pages, hot, rate, 100);
        let cfg = config(pages, 4 + rng.below(12), 10);
        let mut clock = 0;
        let o = converge(&mut g, &cfg, &mut clock);
        assert!(o.rounds <= cfg.max_rounds + 1, "seed {seed}: {o:?}");
        t.add(&o);
    }
    t.report("normal guest");
    assert_eq!(t.converged, SEEDS);
    assert!(
        t.reasons[0] > 0,
        "some transfers converge below the threshold"
    );
    assert!(
        t.max_rounds > 2,
        "some transfers need several pre-copy rounds"
    );
}

#[test]
fn a_guest_faster_than_the_link_is_stopped_and_ends_consistent() {
    let mut t = Totals::default();
    for seed in 0..SEEDS {
        let mut rng = Rng(seed ^ 0xfa57);
        let pages = 256 + rng.below(256);
        let hot = pages / 8 + rng.below(pages / 8);
        // 200-400 writes/ms (the link moves ~215 pages/ms), half of them
        // anywhere: the dirty set shrinks towards the hot set but stays over
        // the threshold.
        let rate = 200_000 + rng.below(200_000);
        let mut g = Guest::new(&mut rng, pages, hot, rate, 2);
        let cfg = config(pages, 8, 3);
        let mut clock = 0;
        let o = converge(&mut g, &cfg, &mut clock);
        assert_ne!(o.stop, Some(StopReason::SmallEnough), "seed {seed}");
        assert!(o.rounds <= cfg.max_rounds + 1, "seed {seed}: {o:?}");
        t.add(&o);
    }
    t.report("fast guest");
    assert_eq!(t.converged, SEEDS);
    assert!(
        t.reasons[1] > 0,
        "some fast guests stop when the dirty set does not shrink"
    );
    assert!(
        t.reasons[2] > 0,
        "some fast guests are stopped at the max rounds"
    );
}

#[test]
fn a_cut_fails_both_sides_and_a_retry_converges() {
    let (mut cut_clean, mut cut_after_switch, mut retried) = (0u64, 0u64, 0u64);
    for seed in 0..SEEDS {
        let mut rng = Rng(seed ^ 0xc07);
        let pages = 64 + rng.below(192);
        let hot = 1 + rng.below(pages / 8);
        let rate = rng.below(20_000);
        let guest_seed = rng.next();
        let cfg = config(pages, hot + 8, 8);
        // An uncut run of the same guest tells how many messages there are.
        let mut g = Guest::new(&mut Rng(guest_seed), pages, hot, rate, 100);
        let total = converge(&mut g, &cfg, &mut 0).messages as u64;
        let cut = rng.below(total) as usize;
        let mut g = Guest::new(&mut Rng(guest_seed), pages, hot, rate, 100);
        let mut clock = 0;
        let o = attempt(&mut g, &cfg, &mut clock, Some(cut));
        assert!(
            o.sender_failed && !o.sender_done,
            "seed {seed} cut {cut}: {o:?}"
        );
        if o.receiver_done {
            // Only the Restored answer was lost: the integration discards
            // that Secondary, as the Primary did not start logging to it.
            assert_eq!(cut, total as usize - 1, "seed {seed}");
            cut_after_switch += 1;
        } else {
            assert!(o.receiver_failed, "seed {seed} cut {cut}: {o:?}");
            cut_clean += 1;
        }
        let mut backoff = Backoff::with_limits(50, 5_000, seed);
        let mut delay_ms = 0;
        for _ in 0..=rng.below(3) {
            delay_ms = backoff.on_failure();
        }
        assert!((25..=5_000).contains(&delay_ms), "seed {seed}: {delay_ms}");
        clock += delay_ms * 1000;
        g.run(delay_ms * 1000);
        converge(&mut g, &cfg, &mut clock);
        backoff.on_success();
        assert_eq!(backoff.failures(), 0);
        retried += 1;
    }
    println!("cuts: {cut_clean} failed both sides, {cut_after_switch} lost only Restored; {retried} retries converged");
    assert!(cut_clean > SEEDS / 2, "most cuts come before the Switch");
    assert_eq!(retried, SEEDS);
}
