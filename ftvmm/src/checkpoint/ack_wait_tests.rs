//! Tests of `ack_wait.rs`: the clock itself, and seeded runs of it under
//! the member (`lockstep/member.rs`) as the checkpoint driver runs them: a
//! Secondary that acknowledges slowly but within the failure timeout (plus
//! its epoch's apply grace) is never counted lost; one that is still heard
//! but stops acknowledging is, within a bound.

use super::ack_wait::{apply_grace_ms, AckWait, APPLY_FLOOR_BYTES_PER_S};
use super::sim_world::Rng;
use crate::lockstep::member::{Acks, Action, Event, Member, State};

const MIB: usize = 1 << 20;

#[test]
fn nothing_waits_until_an_epoch_is_shipped_and_its_ack_ends_the_wait() {
    let mut w = AckWait::default();
    w.reset(1_000);
    assert_eq!(w.unacked(5_000), (0, 0), "nothing shipped");
    w.shipped(1, 1_000, 2_000);
    assert_eq!(w.unacked(2_000), (0, 0));
    assert_eq!(w.unacked(2_700), (700, 0), "counted from the shipping");
    w.shipped(2, 1_000, 2_100);
    w.acked(1, 2_800);
    assert_eq!(w.unacked(3_000), (200, 0), "epoch 2, counted from the ack");
    w.acked(2, 3_100);
    assert_eq!(w.unacked(9_000), (0, 0));
    assert_eq!(w.waiting().count(), 0);
}

#[test]
fn a_repeated_ack_restarts_the_clock_and_alive_is_not_an_ack() {
    let mut w = AckWait::default();
    w.reset(0);
    w.acked(3, 10);
    w.shipped(4, 100, 100);
    assert_eq!(w.unacked(900), (800, 0));
    // Pieces of a later epoch streaming in: the last ack again.
    w.acked(3, 900);
    assert_eq!(w.unacked(1_000), (100, 0));
    assert_eq!(w.waiting().collect::<Vec<_>>(), [4]);
}

#[test]
fn an_ack_that_overtakes_the_shipping_leaves_nothing_waiting() {
    let mut w = AckWait::default();
    w.reset(0);
    w.acked(7, 50);
    w.shipped(7, 100, 60);
    w.shipped(6, 100, 60);
    assert_eq!(w.unacked(10_000), (0, 0));
}

#[test]
fn the_oldest_waiting_epoch_gets_its_apply_grace_by_size() {
    assert_eq!(apply_grace_ms(0), 0);
    assert_eq!(apply_grace_ms(MIB), 125);
    assert_eq!(apply_grace_ms(32 * MIB), 4_000);
    assert_eq!(
        apply_grace_ms(APPLY_FLOOR_BYTES_PER_S as usize),
        1_000,
        "one second per floor's worth"
    );
    let mut w = AckWait::default();
    w.reset(0);
    w.shipped(1, 32 * MIB, 100);
    w.shipped(2, MIB, 200);
    assert_eq!(w.unacked(1_100), (1_000, 4_000));
    w.acked(1, 3_000);
    assert_eq!(w.unacked(3_500), (500, 125), "the next epoch's grace");
}

#[test]
fn a_new_connection_forgets_what_waited_on_the_old_one() {
    let mut w = AckWait::default();
    w.reset(0);
    w.shipped(5, 100, 10);
    w.acked(4, 20);
    w.reset(5_000);
    assert_eq!(w.unacked(9_000), (0, 0));
    // Numbers are per connection: the new Secondary's epochs wait again.
    w.shipped(3, 100, 9_000);
    assert_eq!(w.unacked(9_400), (400, 0));
}

/// The member's tick period in the checkpoint driver (`driver::TICK`).
const TICK_MS: u64 = 50;
const TIMEOUT_MS: u64 = 1_000;
/// One way, Primary to Secondary, after an epoch's last piece left.
const WIRE_MAX_MS: u64 = 200;
/// An ack's way back.
const BACK_MAX_MS: u64 = 100;
/// A slow Secondary's apply beyond its epoch's grace: with the wire and
/// the way back, still within the failure timeout by more than a tick.
const SLOW_MS: u64 = TIMEOUT_MS - WIRE_MAX_MS - BACK_MAX_MS - 2 * TICK_MS;

/// A run of a checkpoint Primary's epochs, its `AckWait` and member against
/// a Secondary that applies epochs in order, slowly, and stops taking any
/// in at `wedge_at` (still heard: its keep-alives go on). Returns when the
/// member counted the Secondary lost (and its reason), if it did.
fn run(seed: u64, wedge_at: Option<u64>, until_ms: u64) -> Option<(u64, String)> {
    let mut rng = Rng(seed);
    let epoch_ms = 10 + rng.below(90);
    let link_mib_s = 50 + rng.below(1_000);
    let mut m = Member::primary("kv", "host-b", 1, true, TIMEOUT_MS).acknowledging(Acks::Epochs);
    let mut w = AckWait::default();
    w.reset(0);
    let mut n = 0;
    // The epoch loop: closing at `next_close`, or shipping until its end.
    let mut next_close = epoch_ms;
    let mut shipping: Option<(u64, usize, u64)> = None;
    // At the Secondary: (epoch, bytes, arrives at); the one it applies
    // and when it is done; acks on their way back: (epoch, arrives at).
    let mut inbound = std::collections::VecDeque::new();
    let mut applying: Option<(u64, u64)> = None;
    let mut acks: Vec<(u64, u64)> = Vec::new();
    for t in 0..until_ms {
        if shipping.is_none() && t >= next_close {
            n += 1;
            let bytes = match rng.below(100) {
                0 => 32 * MIB,
                1..=5 => 8 * MIB,
                _ => rng.below(512 * 1024) as usize,
            };
            let ship_ms = bytes as u64 * 1_000 / (link_mib_s * MIB as u64);
            shipping = Some((n, bytes, t + ship_ms));
        }
        if let Some((e, bytes, end)) = shipping.filter(|s| s.2 <= t) {
            w.shipped(e, bytes, t);
            inbound.push_back((e, bytes, end + rng.below(WIRE_MAX_MS + 1)));
            shipping = None;
            next_close = t + epoch_ms;
        }
        let wedged = wedge_at.is_some_and(|at| t >= at);
        if let Some((e, done)) = applying.filter(|a| a.1 <= t && !wedged) {
            acks.push((e, done + rng.below(BACK_MAX_MS + 1)));
            applying = None;
        }
        if applying.is_none() && !wedged {
            if let Some(&(e, bytes, _)) = inbound.front().filter(|i| i.2 <= t) {
                inbound.pop_front();
                let apply = rng.below(apply_grace_ms(bytes) + SLOW_MS + 1);
                applying = Some((e, t + apply));
            }
        }
        // Acks are cumulative and arrive in order on one connection.
        acks.sort_by_key(|a| a.1);
        while acks.first().is_some_and(|a| a.1 <= t) {
            let (e, _) = acks.remove(0);
            w.acked(e, t);
        }
        if t % TICK_MS == 0 {
            let (unacked_ms, unacked_grace_ms) = w.unacked(t);
            let a = m.on_event(Event::Tick {
                now_ms: t,
                silent_ms: 10,
                unacked_ms,
                unacked_grace_ms,
            });
            if a.contains(&Action::Acquire { generation: 2 }) {
                let State::Racing { why, .. } = m.state() else {
                    panic!("seed {seed}: racing, not {:?}", m.state());
                };
                return Some((t, why.clone()));
            }
        }
    }
    None
}

/// A Secondary whose every ack comes within the failure timeout of the
/// later of its epoch's shipping and the previous ack, past the epoch's
/// apply grace (large epochs among small ones, a slow link, a slow
/// Secondary), is never counted lost.
#[test]
fn a_secondary_acknowledging_slowly_but_within_the_timeout_is_never_counted_lost() {
    for seed in 0..150 {
        if let Some((t, why)) = run(seed, None, 15_000) {
            panic!("seed {seed}: counted lost at {t} ms: {why}");
        }
    }
}

/// A Secondary that is still heard but stops acknowledging (its serve loop
/// wedged) is counted lost: not before it stopped, and at most the failure
/// timeout plus the largest grace after the first epoch it leaves waiting
/// was shipped.
#[test]
fn a_secondary_heard_but_acknowledging_no_epoch_is_counted_lost_within_a_bound() {
    // The next epoch ships by then: an epoch period and the slowest
    // shipping (32 MiB at 50 MiB/s).
    let ship_max = 100 + 32_000 / 50;
    let bound = ship_max + WIRE_MAX_MS + BACK_MAX_MS + TIMEOUT_MS + apply_grace_ms(32 * MIB);
    for seed in 0..150 {
        let wedge_at = 2_000 + Rng(seed ^ 0x5eed).below(8_000);
        let Some((t, why)) = run(seed, Some(wedge_at), wedge_at + bound + 2 * TICK_MS) else {
            panic!("seed {seed}: wedged at {wedge_at} ms and never counted lost");
        };
        assert!(
            t >= wedge_at,
            "seed {seed}: lost at {t} before the wedge at {wedge_at}"
        );
        assert!(
            why.starts_with("secondary host-b heard but acknowledged no epoch for "),
            "seed {seed}: {why}"
        );
    }
}
