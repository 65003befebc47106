//! Delta leases (host liveness on disk, as in sanlock): each host bumps a
//! counter in its own lease block every `renew` interval; a reader judges a
//! host live while it saw that counter move within `timeout`, measured on the
//! reader's own `CLOCK_BOOTTIME` (no clocks are compared between hosts).
//!
//! # Timing arithmetic
//!
//! With the config's heartbeat interval `hb`:
//! - renew interval `R = max(5 * hb, 500 ms)`;
//! - the own lease is *fresh* while its last successful renewal was issued
//!   less than `H = 2R` ago (counted from the *issue* time `t0` of that write);
//! - the agent sends ftvmm an `OutputGrant` every `P = min(R / 5, 100 ms)`;
//!   `ok` only while fresh, valid for `V = R` from receipt but never past
//!   `t0 + H` (`valid_ms = min(V, t0 + H - now)`); ftvmm holds every Primary's
//!   output once its last grant expired or said `ok: false`;
//! - the watchdog (timeout `W`, [`WATCHDOG_TIMEOUT_S`]) is fed while fresh,
//!   or once ftvmm confirmed a hold, or for `C = R` after the lease went stale
//!   (time for that confirmation);
//! - lease timeout `T = max(4R, H + C + W + R)`.
//!
//! Why the host is held or reset before others can call it dead: another
//! host sees the counter move at the earliest when the write lands, which is
//! after it was issued at `t0`, so it cannot judge the lease expired before
//! `t0 + T`. On this host:
//! - the last `ok` grant is sent before `t0 + H` and is valid at most until
//!   `t0 + H + d`, `d` the local delivery delay of that message (microseconds;
//!   the bound below leaves `T - H = C + W + R` for it): ftvmm holds output
//!   by then *on its own*, whether the agent is alive, hung or gone;
//! - if ftvmm does not confirm holding, the watchdog is fed for the last time
//!   before `t0 + H + C + P`, and resets the host by `t0 + H + C + P + W`,
//!   which is at least `R - P` before `t0 + T`.
//!
//! All hosts derive `T` from the same config and the same planned `W`, so
//! readers and writers agree. The agent reads `hb` once at start: a live
//! config change (`ftctl apply`) never moves `R`, and a change that would is
//! "needs reboot" (`config_schema::timing_live`; hosts whose `R` differ by
//! more than about a third misjudge each other's leases, so such a change
//! means restarting every host together). With the example config (`hb` = 100 ms):
//! R = 500 ms, H = 1 s, V = 500 ms, P = 100 ms, C = 500 ms, W = 6 s, T = 8 s.
//! None of this holds for a host frozen with its clocks (a hypervisor pause):
//! that is [`crate::freeze`]'s and the deposition watch's business.
//!
//! (A reader that keeps reading sees the write at or after `t0`; the bound
//! above is about such a reader.) "Not live" means "not seen renewing within
//! `T`": the host is dead, or *this* host's own reads have been failing (then
//! its own renewal fails too and it holds its own output). Do not take a lease
//! that went stale while the reader could not read as proof of the other's
//! death without looking at the reader's own lease state in `Status`. Go-live
//! never relies on leases anyway: it is the Disk Paxos decision.
//!
//! `tests/sim.rs` checks this arithmetic by simulation ([`crate::sim_lease`]);
//! [`Liveness::expired`] is the reader's judgement it checks.

use std::time::Duration;

use config_schema::clock::BootInstant;

use config_schema::ctl::LeaseView;
use config_schema::Timing;
use serde::Serialize;

use crate::layout::{LeaseRecord, Running};

/// Planned watchdog timeout, seconds (the same on every host).
pub const WATCHDOG_TIMEOUT_S: u32 = config_schema::ctl::WATCHDOG_TIMEOUT_S;

/// The lease, grant and watchdog timing of a cluster (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseTiming {
    /// `R`.
    pub renew: Duration,
    /// `H`: the own lease is fresh while renewed less than this ago.
    pub hold_after: Duration,
    /// `C`.
    pub confirm: Duration,
    /// `W`.
    pub watchdog: Duration,
    /// `T`.
    pub timeout: Duration,
    /// `V`: an `ok` grant is valid this long (never past `t0 + H`).
    pub grant_valid: Duration,
    /// `P`: grants are sent (and the guard ticks) this often.
    pub grant_period: Duration,
}

impl LeaseTiming {
    pub fn from_config(t: &Timing) -> Self {
        // Taken once, at boot: `ftctl apply` never changes `R` live, and
        // says a heartbeat interval that moves it needs a reboot
        // (`config_schema::timing_live`: hosts with different `R` can
        // misjudge each other's leases).
        let renew = Duration::from_millis(config_schema::timing_live::lease_renew_ms(
            t.heartbeat_interval_ms,
        ));
        let hold_after = Duration::from_millis(config_schema::timing_live::lease_hold_after_ms(
            t.heartbeat_interval_ms,
        ));
        let confirm = renew;
        let watchdog = Duration::from_secs(u64::from(WATCHDOG_TIMEOUT_S));
        let timeout = (renew * 4).max(hold_after + confirm + watchdog + renew);
        let grant_period = (renew / 5).min(Duration::from_millis(100));
        let grant_valid = renew;
        let timing = LeaseTiming {
            renew,
            hold_after,
            confirm,
            watchdog,
            timeout,
            grant_valid,
            grant_period,
        };
        timing.check();
        timing
    }

    /// The relations the module docs rely on.
    fn check(&self) {
        assert!(
            self.hold_after + self.confirm + self.grant_period + self.watchdog < self.timeout,
            "a host that cannot confirm a hold must be reset before its lease expires: {self:?}"
        );
        assert!(
            self.hold_after + self.grant_valid < self.timeout,
            "a grant must expire before the lease does: {self:?}"
        );
        assert!(
            self.grant_valid >= self.grant_period * 2,
            "grants are sent at least twice per validity: {self:?}"
        );
    }
}

/// This host's own lease: counter and incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnLease {
    pub host: u32,
    pub counter: u64,
    pub incarnation: u64,
}

impl OwnLease {
    /// A new incarnation (random per start) of `host`'s lease.
    pub fn new(host: u32, incarnation: u64) -> Self {
        OwnLease {
            host,
            counter: 0,
            incarnation,
        }
    }

    /// The record of the next renewal (counter bumped).
    pub fn bump(&mut self) -> LeaseRecord {
        self.counter += 1;
        self.record(Vec::new())
    }

    /// The record to write: a renewal bumps the counter (`bump`), a write
    /// that only publishes does not (so peers can bound how fast the counter
    /// of a live host moves, see [`crate::freeze`]).
    pub fn next(&mut self, bump: bool, running: Vec<Running>) -> LeaseRecord {
        if bump {
            self.counter += 1;
        }
        self.record(running)
    }

    fn record(&self, running: Vec<Running>) -> LeaseRecord {
        LeaseRecord {
            host: self.host,
            counter: self.counter,
            incarnation: self.incarnation,
            running,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Seen {
    last: Option<(u64, u64)>,
    /// The running list of the last record read.
    running: Vec<Running>,
    moved_at: Option<BootInstant>,
    first_seen: Option<BootInstant>,
}

/// What this host has read of every host's lease.
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout: Duration,
    seen: Vec<Seen>,
}

impl Liveness {
    pub fn new(hosts: usize, timeout: Duration) -> Self {
        Liveness {
            timeout,
            seen: vec![Seen::default(); hosts],
        }
    }

    /// Records host `h`'s lease sector as read at `now` (`None`: blank or damaged).
    /// The first value seen is a baseline, not movement.
    pub fn observe(&mut self, h: usize, rec: Option<LeaseRecord>, now: BootInstant) {
        let s = &mut self.seen[h];
        let Some(rec) = rec else { return };
        let value = (rec.incarnation, rec.counter);
        if s.last.is_some_and(|old| old != value) {
            s.moved_at = Some(now);
        }
        s.first_seen.get_or_insert(now);
        s.last = Some(value);
        s.running = rec.running;
    }

    /// Records this host's own successful renewal (issued at `issued`).
    pub fn own_renewed(&mut self, h: usize, rec: &LeaseRecord, issued: BootInstant) {
        let s = &mut self.seen[h];
        s.last = Some((rec.incarnation, rec.counter));
        s.moved_at = Some(issued);
    }

    pub fn live(&self, h: usize, now: BootInstant) -> bool {
        self.seen[h]
            .moved_at
            .is_some_and(|t| now.saturating_duration_since(t) <= self.timeout)
    }

    /// Expired: seen (a record was read), and neither a movement nor the
    /// first reading is more recent than `timeout` (sanlock's rule: a lease
    /// that does not move for `timeout` after we started watching it is dead).
    /// Not the negation of [`Liveness::live`]: a host never seen at all is
    /// neither live nor expired.
    pub fn expired(&self, h: usize, now: BootInstant) -> bool {
        let s = &self.seen[h];
        match s.moved_at.max(s.first_seen) {
            Some(t) => now.saturating_duration_since(t) > self.timeout,
            None => false,
        }
    }

    /// The per-host view served on `Request::Leases` (`vms`: VM names by index).
    pub fn views(&self, names: &[String], vms: &[String], now: BootInstant) -> Vec<LeaseView> {
        names
            .iter()
            .enumerate()
            .map(|(h, name)| LeaseView {
                host: name.clone(),
                live: self.live(h, now),
                last_renewal_ms: self.seen[h]
                    .moved_at
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                expired: self.expired(h, now),
                running: self.seen[h]
                    .running
                    .iter()
                    .filter_map(|r| vms.get(r.vm as usize).cloned())
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(counter: u64, incarnation: u64) -> Option<LeaseRecord> {
        Some(LeaseRecord {
            host: 1,
            counter,
            incarnation,
            running: Vec::new(),
        })
    }

    #[test]
    fn example_config_timing() {
        let t = LeaseTiming::from_config(&Timing {
            heartbeat_interval_ms: 100,
            failure_timeout_ms: 1000,
            lag_limit_ms: 500,
        });
        assert_eq!(t.renew, Duration::from_millis(500));
        assert_eq!(t.hold_after, Duration::from_secs(1));
        assert_eq!(t.timeout, Duration::from_secs(8));
        assert_eq!(t.grant_valid, Duration::from_millis(500));
        assert_eq!(t.grant_period, Duration::from_millis(100));
        assert!(t.hold_after + t.confirm + t.grant_period + t.watchdog < t.timeout);
        let slow = LeaseTiming::from_config(&Timing {
            heartbeat_interval_ms: 1000,
            failure_timeout_ms: 5000,
            lag_limit_ms: 500,
        });
        assert_eq!(slow.renew, Duration::from_secs(5));
        assert_eq!(slow.timeout, Duration::from_secs(26)); // 10 + 5 + 6 + 5
        assert_eq!(slow.grant_period, Duration::from_millis(100));
    }

    /// `config_schema::timing_live::renewals_mix` (what `ftctl apply` says
    /// about a heartbeat interval change) agrees with this module's
    /// arithmetic for a writer and a reader derived from different
    /// intervals: the writer is held or reset before the reader's timeout.
    #[test]
    fn mixed_renewals_are_judged_as_apply_says() {
        let of = |hb: u64| {
            LeaseTiming::from_config(&Timing {
                heartbeat_interval_ms: hb,
                failure_timeout_ms: hb * 10,
                lag_limit_ms: 500,
            })
        };
        let hbs = [1, 50, 100, 110, 120, 130, 150, 200, 300, 1000];
        for a in hbs {
            for b in hbs {
                let (w, r) = (of(a), of(b));
                let safe = |w: &LeaseTiming, r: &LeaseTiming| {
                    w.hold_after + w.confirm + w.grant_period + w.watchdog < r.timeout
                };
                assert_eq!(
                    safe(&w, &r) && safe(&r, &w),
                    config_schema::timing_live::renewals_mix(
                        w.renew.as_millis() as u64,
                        r.renew.as_millis() as u64
                    ),
                    "hb {a} and {b}: {w:?} {r:?}"
                );
                assert_eq!(
                    w == r,
                    config_schema::timing_live::interval_is_live(a, b),
                    "hb {a} -> {b}"
                );
            }
        }
    }

    #[test]
    fn live_only_while_the_counter_moves() {
        let t0 = BootInstant::now();
        let s = Duration::from_secs(1);
        let mut l = Liveness::new(3, Duration::from_secs(4));
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert!(!l.expired(1, t0 + 9 * s), "never seen: not expired");
        l.observe(1, rec(10, 7), t0);
        assert!(!l.live(1, t0), "a first reading is no movement");
        assert!(!l.expired(1, t0 + 4 * s) && l.expired(1, t0 + 5 * s));
        l.observe(1, rec(10, 7), t0 + s);
        assert!(!l.live(1, t0 + s));
        l.observe(1, rec(11, 7), t0 + 2 * s);
        assert!(l.live(1, t0 + 2 * s));
        assert!(l.live(1, t0 + 6 * s));
        l.observe(1, rec(11, 7), t0 + 6 * s);
        assert!(!l.live(1, t0 + 7 * s), "stuck counter expires");
        assert!(l.expired(1, t0 + 7 * s));
        // A restart (new incarnation, counter from 1) is movement too.
        l.observe(1, rec(1, 8), t0 + 8 * s);
        assert!(l.live(1, t0 + 8 * s));
        // Damaged sectors change nothing.
        l.observe(1, None, t0 + 9 * s);
        let v = l.views(&names, &[], t0 + 9 * s);
        assert_eq!(v[1].last_renewal_ms, Some(1000));
        assert!(v[1].live && !v[0].live && v[0].last_renewal_ms.is_none());
    }

    #[test]
    fn own_lease_counts_up() {
        let mut o = OwnLease::new(2, 99);
        assert_eq!(o.bump().counter, 1);
        let r = o.bump();
        assert_eq!((r.host, r.counter, r.incarnation), (2, 2, 99));
    }
}
