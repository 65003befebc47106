//! Two different configs with one generation (two operators signed one
//! each and applied them at once): every host ends on the one with the
//! higher digest (`config_schema::config_id`), through `ftctl apply`'s
//! passing on and through catch-up, whatever each host held and in which
//! order the configs arrive; each host's line says what happened.

mod common;

use std::time::Duration;

use config_schema::config_id::ConfigId;
use config_schema::remote::apply::Outcome;

use common::*;

#[test]
fn the_higher_digest_replaces_the_lower_and_the_lower_is_refused_with_both() {
    let c = Cluster::new(30);
    (0..3).for_each(|i| c.start(i));
    let eight = same_generation(8, 2);
    let ((lo, lo_id), (hi, hi_id)) = (&eight[0], &eight[1]);
    let (_, hosts) = c.apply(0, &dev_key(), lo);
    assert!(
        hosts.iter().all(|h| h.outcome == Outcome::Applied),
        "{hosts:?}"
    );
    assert_eq!([0, 1, 2].map(|i| c.id_on_disk(i)), [*lo_id; 3]);
    // The other operator's config of generation 8: it wins everywhere.
    let (_, hosts) = c.apply(1, &dev_key(), hi);
    for (h, n) in hosts.iter().zip(NAMES) {
        assert_eq!(h.outcome, Outcome::Applied, "{h:?}");
        let want = format!(
            "{n}: persisted generation 8 (replaced another generation-8 config, digest {} < {}); live: timing.lag_limit_ms",
            lo_id.short_digest(),
            hi_id.short_digest()
        );
        assert!(h.line.starts_with(&want), "{}\nwant {want}", h.line);
    }
    assert_eq!([0, 1, 2].map(|i| c.id_on_disk(i)), [*hi_id; 3]);
    // The lower one again, to any host: refused with both digests, not
    // passed on (every host holds the higher one).
    let (_, hosts) = c.apply(2, &dev_key(), lo);
    assert_eq!(
        lines(&hosts),
        [format!(
            "host-c: refused: holds another generation-8 config with a higher digest ({} > {}); \
             the cluster converges on that one",
            hi_id.short_digest(),
            lo_id.short_digest()
        )]
    );
    assert_eq!(hosts[0].outcome, Outcome::Refused);
    // The higher one again: the same config, refused as before and passed on.
    let (_, hosts) = c.apply(0, &dev_key(), hi);
    assert_eq!(hosts.len(), 3);
    assert!(
        hosts.iter().all(|h| h.outcome == Outcome::Refused
            && h.line
                .contains("generation 8 is not newer than this host's generation 8")),
        "{hosts:?}"
    );
    // A lower generation is still refused everywhere it is offered.
    let (_, hosts) = c.apply(1, &dev_key(), &config(7));
    assert_eq!(hosts.len(), 1);
    assert!(hosts[0]
        .line
        .contains("generation 7 is not newer than this host's generation 8"));
    assert_eq!([0, 1, 2].map(|i| c.id_on_disk(i)), [*hi_id; 3]);
}

#[test]
fn two_operators_applying_at_once_converge_on_the_higher_digest() {
    let c = Cluster::new(31);
    (0..3).for_each(|i| c.start(i));
    // Each round a new generation; the higher digest goes to either end.
    for (round, g) in (8..14u64).enumerate() {
        let pair = same_generation(g, 2);
        let (x, y) = match round % 2 {
            0 => (&pair[0], &pair[1]),
            _ => (&pair[1], &pair[0]),
        };
        let (rx, ry) = std::thread::scope(|s| {
            let a = s.spawn(|| c.apply(0, &dev_key(), &x.0));
            let b = s.spawn(|| c.apply(2, &dev_key(), &y.0));
            (a.join().unwrap(), b.join().unwrap())
        });
        let win = pair[1].1;
        assert_eq!(
            [0, 1, 2].map(|i| c.id_on_disk(i)),
            [win; 3],
            "round {round}: {rx:?} {ry:?}"
        );
        // Every line of the apply that lost says persisted (then replaced)
        // or refused for the winner; no host is left out.
        for (_, hosts) in [&rx, &ry] {
            for h in hosts {
                assert!(
                    h.outcome != Outcome::Unreachable
                        && (h.line.contains("persisted")
                            || h.line.contains("holds another generation-")
                            || h.line.contains("is not newer")),
                    "round {round}: {h:?}"
                );
            }
        }
    }
}

/// Host disks seeded with `held` (`None`: the booted generation 7), then
/// catch-up alone (no apply): every host ends on the highest id held.
fn catch_up_from(net: u8, held: [Option<usize>; 3]) {
    let mut c = Cluster::new(net);
    c.catch_up_every = Some(Duration::from_millis(200));
    let eight = same_generation(8, 2);
    for (i, k) in held.iter().enumerate() {
        if let Some(k) = k {
            c.seed(i, &eight[*k].0);
        }
    }
    let want: ConfigId = held
        .iter()
        .flatten()
        .map(|k| eight[*k].1)
        .max()
        .expect("some host holds one");
    (0..3).for_each(|i| c.start(i));
    let t0 = std::time::Instant::now();
    while [0, 1, 2].map(|i| c.settled_id(i)) != [Some(want); 3] {
        assert!(t0.elapsed() < T, "{held:?}: not converged on {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn catch_up_alone_converges_on_the_higher_digest_from_any_start() {
    // X = 0 (lower digest), Y = 1; every place Y can be, with X or 7 elsewhere,
    // and a cluster where only X was applied (it stays X).
    let starts = [
        [Some(0), Some(1), None],
        [Some(1), None, Some(0)],
        [None, Some(0), Some(1)],
        [Some(0), Some(0), Some(1)],
        [Some(1), Some(0), Some(0)],
        [Some(0), None, Some(0)],
    ];
    for (k, held) in starts.into_iter().enumerate() {
        catch_up_from(32 + k as u8, held);
    }
}
