//! Which `timing.*` fields a running host takes live (`ftctl apply`), and the
//! rules that keep a live change safe while hosts adopt it at different
//! moments (docs/architecture.md §7, "Timing changes while running").
//!
//! Hosts take an applied config one after the other (the asked host first,
//! the others in parallel, a host that was down at its next catch-up round),
//! so for a while some hosts run the old timing and some the new. Every rule
//! below holds for any mix of old and new, in any order of adoption:
//!
//! - `heartbeat_interval_ms`: how often heartbeat sends. Heartbeat suspicion
//!   is never a safety input. But fencing derives its lease renewal `R` from
//!   it ([`lease_renew_ms`]), and the lease arithmetic (`fencing/src/lease.rs`)
//!   needs a reader's lease timeout `T = 4R + W` to exceed the writer's
//!   `3R + P + W`: a host that renews more slowly than the others expect can
//!   be judged dead while it still releases output. So fencing never changes
//!   `R` live, and the interval is live only when `R` stays the same
//!   ([`interval_is_live`]); otherwise it needs a reboot, and when the two
//!   renewals are too far apart to mix ([`renewals_mix`]) every host must
//!   restart together.
//! - `failure_timeout_ms`: heartbeat's suspicion (not a safety input) and
//!   ftvmm's channel silence. A Primary's silence makes it hold and race
//!   through fencing (Disk Paxos decides), so any value is safe there. Two
//!   uses are on the safety path and are pinned to the *booted* value `F0`,
//!   which both members of a pair share (they pair only under the same booted
//!   config generation): a Primary releases output only on acks that echo a
//!   batch younger than `F0` ([`ack_freshness_ms`], never changed live), and a
//!   Secondary goes live only after a silence of at least
//!   `max(F0, live)` ([`secondary_silence_ms`]). So the freshness limit never
//!   exceeds the Secondary's wait, whichever host adopted what: a Primary that
//!   stalled (clock running) cannot release output on an old ack after its
//!   Secondary went live.
//! - `lag_limit_ms`: the Primary's throttle; local performance only.

use crate::model::Timing;

/// Fencing's lease renewal period `R` in ms for a heartbeat interval
/// (`R = max(5 hb, 500 ms)`; `fencing::lease::LeaseTiming` uses this).
pub fn lease_renew_ms(heartbeat_interval_ms: u64) -> u64 {
    heartbeat_interval_ms.saturating_mul(5).max(500)
}

/// Fencing's hold point `H = 2R` in ms for a heartbeat interval: a host
/// whose last successful lease renewal was issued `H` or more ago no longer
/// trusts its lease (it withdraws its output grant; `fencing/src/lease.rs`),
/// and a Primary that has not seen its Secondary's lease move for longer
/// calls that Secondary unable to take over (ftvmm's
/// `lockstep/respawn/secondary_lease.rs`). `fencing::lease::LeaseTiming` and
/// ftvmm both use this.
pub fn lease_hold_after_ms(heartbeat_interval_ms: u64) -> u64 {
    lease_renew_ms(heartbeat_interval_ms).saturating_mul(2)
}

/// Fencing's grant period `P = min(R / 5, 100 ms)`.
fn grant_period_ms(renew_ms: u64) -> u64 {
    (renew_ms / 5).min(100)
}

/// Whether hosts renewing every `a` ms and every `b` ms may run side by side:
/// for each as writer and the other as reader, the writer is held or reset
/// (`3R + P + W` after its last renewal) before the reader's lease timeout
/// (`4R + W`) runs out. `W` cancels out.
pub fn renewals_mix(a: u64, b: u64) -> bool {
    let ok = |w: u64, r: u64| 3 * w + grant_period_ms(w) < 4 * r;
    ok(a, b) && ok(b, a)
}

/// Whether a change of the heartbeat interval from `old` to `new` is taken
/// live: only when fencing's lease renewal stays the same.
pub fn interval_is_live(old: u64, new: u64) -> bool {
    lease_renew_ms(old) == lease_renew_ms(new)
}

/// Why a heartbeat interval change needs a reboot (one line), or `None`
/// when it is live.
pub fn interval_reboot_reason(old: u64, new: u64) -> Option<String> {
    let (a, b) = (lease_renew_ms(old), lease_renew_ms(new));
    if a == b {
        return None;
    }
    let mut why = format!(
        "fencing's lease renewal goes from {a} to {b} ms, and fencing takes it only at boot"
    );
    if !renewals_mix(a, b) {
        why.push_str(
            "; hosts renewing that differently misjudge each other's leases: restart every \
             host together, not one by one",
        );
    }
    Some(why)
}

/// How fresh an ack must be to release output: the booted failure timeout,
/// never a live one (module docs).
pub fn ack_freshness_ms(booted: &Timing) -> u64 {
    booted.failure_timeout_ms
}

/// The channel silence after which a Secondary stops following and races:
/// never below the booted failure timeout (module docs).
pub fn secondary_silence_ms(booted_ms: u64, live_ms: u64) -> u64 {
    booted_ms.max(live_ms)
}

/// What a host takes of `new` given the timing it runs now (`running`): the
/// new timing, except a heartbeat interval that would move fencing's lease
/// renewal (that one keeps `running`'s).
pub fn adoptable(running: &Timing, new: &Timing) -> Timing {
    let mut t = new.clone();
    if !interval_is_live(running.heartbeat_interval_ms, new.heartbeat_interval_ms) {
        t.heartbeat_interval_ms = running.heartbeat_interval_ms;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(hb: u64, ft: u64, lag: u64) -> Timing {
        Timing {
            heartbeat_interval_ms: hb,
            failure_timeout_ms: ft,
            lag_limit_ms: lag,
        }
    }

    #[test]
    fn the_interval_is_live_while_the_lease_renewal_stays_at_its_floor() {
        assert_eq!(lease_renew_ms(100), 500);
        assert_eq!(lease_renew_ms(20), 500);
        assert_eq!(lease_renew_ms(200), 1000);
        assert_eq!(lease_hold_after_ms(100), 1000);
        assert_eq!(lease_hold_after_ms(200), 2000);
        assert!(interval_is_live(100, 50));
        assert!(interval_is_live(20, 100));
        assert!(!interval_is_live(100, 101));
        assert!(!interval_is_live(200, 300));
        assert_eq!(interval_reboot_reason(100, 50), None);
    }

    #[test]
    fn renewals_far_apart_do_not_mix() {
        // The example's R = 500 ms against itself and close neighbours.
        assert!(renewals_mix(500, 500));
        assert!(renewals_mix(500, 600));
        // Doubling: the slow writer is reset only 3 * 1000 + 100 ms after
        // its last renewal, the fast reader gives up after 4 * 500 ms.
        assert!(!renewals_mix(500, 1000));
        assert!(!renewals_mix(1000, 500));
        let r = interval_reboot_reason(100, 120).unwrap();
        assert!(
            r.contains("500 to 600 ms") && !r.contains("together"),
            "{r}"
        );
        let r = interval_reboot_reason(100, 200).unwrap();
        assert!(
            r.contains("500 to 1000 ms") && r.contains("together"),
            "{r}"
        );
    }

    #[test]
    fn a_secondary_never_waits_less_than_the_booted_timeout_nor_a_primary_takes_staler_acks() {
        let booted = timing(100, 1000, 500);
        assert_eq!(ack_freshness_ms(&booted), 1000);
        // Raised live: the Secondary waits longer.
        assert_eq!(secondary_silence_ms(1000, 3000), 3000);
        // Lowered live: it keeps the booted floor.
        assert_eq!(secondary_silence_ms(1000, 300), 1000);
        // Whatever each side adopted, freshness <= the Secondary's wait.
        for live in [100, 500, 1000, 2000, 9000] {
            assert!(ack_freshness_ms(&booted) <= secondary_silence_ms(1000, live));
        }
    }

    #[test]
    fn adoptable_keeps_an_interval_that_would_move_the_renewal() {
        let running = timing(100, 1000, 500);
        assert_eq!(
            adoptable(&running, &timing(50, 2000, 800)),
            timing(50, 2000, 800)
        );
        assert_eq!(
            adoptable(&running, &timing(400, 2000, 800)),
            timing(100, 2000, 800)
        );
    }
}
