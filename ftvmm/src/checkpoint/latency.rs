//! Where a checkpoint Primary's outputs wait after their epoch closes, per
//! epoch: closed → acknowledged by the Secondary → its disk writes durable
//! → its frames released. A client's request waits for the last of these
//! (plus the part of its epoch still to run when its reply was sent), so
//! these figures say which step of the Output Rule adds the latency.
//!
//! Four intervals, each kept as count, sum, last and largest (µs), like the
//! epoch pauses in [`super::gated::OutputStats`]:
//!
//! - `ack_wait`: close → the Secondary's acknowledgement. Only epochs the
//!   Secondary acknowledged count: an epoch closed running alone counts as
//!   acknowledged at its close, and one acknowledged by a won generation
//!   (`EpochGate::on_generation_won`) was never waited on.
//! - `durable_wait`: acknowledged (by either) → the epoch's writes written
//!   and synced. An epoch without writes becomes durable when the gate
//!   passes it: at once, or once the earlier epoch's writes are durable
//!   (one epoch's writes are in flight at a time).
//! - `release_wait`: durable → the epoch's first frame handed to the TAP;
//!   ~0 unless the output grant or the member held the outputs. Only
//!   epochs that held a frame.
//! - `output_hold`: close → the epoch's first frame handed to the TAP, for
//!   the epochs that held a frame; also bucketed ([`HOLD_BUCKETS_MS`]) so
//!   quantiles can be read from it (a Prometheus histogram).
//!
//! The gate stays a pure state machine: [`EpochStamps`] watches what it
//! reached (its closed, acknowledged and durable epochs) each time
//! `GatedOutputs` performs the gate's actions, and stamps the moments with
//! [`Instant`] (`CLOCK_MONOTONIC`). All of an epoch's frames leave in one
//! step of the gate (they wait for the same condition), so "first frame" is
//! "its frames".
//!
//! Observation only: nothing here decides anything.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds (ms) of `output_hold`'s buckets; one more bucket holds the
/// rest (Prometheus' `+Inf`).
pub const HOLD_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/// At most this many epochs are followed at once: outputs held for a long
/// time (a member racing, a lapsed grant) stop being followed, oldest first,
/// rather than piling up (about 20 s of 20 ms epochs).
pub const MAX_FOLLOWED: usize = 1024;

/// One interval's count, sum, last and largest value (µs).
#[derive(Debug, Default)]
pub struct Interval {
    pub count: AtomicU64,
    pub us_total: AtomicU64,
    pub us_last: AtomicU64,
    pub us_max: AtomicU64,
}

impl Interval {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.us_total.fetch_add(us, Ordering::Relaxed);
        self.us_last.store(us, Ordering::Relaxed);
        self.us_max.fetch_max(us, Ordering::Relaxed);
    }

    /// `<name>_epochs`, `<name>_us_total`, `<name>_us_last`, `<name>_us_max`
    /// into `v` (the checkpoint status object).
    pub fn put_json(&self, name: &str, v: &mut serde_json::Value) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        v[format!("{name}_epochs")] = n(&self.count).into();
        v[format!("{name}_us_total")] = n(&self.us_total).into();
        v[format!("{name}_us_last")] = n(&self.us_last).into();
        v[format!("{name}_us_max")] = n(&self.us_max).into();
    }
}

/// Counts by fixed bucket: `counts[i]` holds the values above bucket
/// `i - 1`'s bound and at most bucket `i`'s ([`HOLD_BUCKETS_MS`]), the last
/// one those above every bound. Not cumulative.
#[derive(Debug, Default)]
pub struct Buckets {
    counts: [AtomicU64; HOLD_BUCKETS_MS.len() + 1],
}

impl Buckets {
    /// The bucket `d` falls in.
    pub fn index(d: Duration) -> usize {
        let us = d.as_micros();
        HOLD_BUCKETS_MS
            .iter()
            .position(|&ms| us <= u128::from(ms) * 1000)
            .unwrap_or(HOLD_BUCKETS_MS.len())
    }

    pub fn record(&self, d: Duration) {
        self.counts[Self::index(d)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Vec<u64> {
        (self.counts.iter())
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// `{"le_ms": [bounds], "epochs": [counts, one more than bounds]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "le_ms": HOLD_BUCKETS_MS, "epochs": self.counts() })
    }
}

/// The four intervals (module doc).
#[derive(Debug, Default)]
pub struct EpochLatency {
    pub ack_wait: Interval,
    pub durable_wait: Interval,
    pub release_wait: Interval,
    pub output_hold: Interval,
    pub output_hold_buckets: Buckets,
}

impl EpochLatency {
    /// Every figure into `v` (the checkpoint status object).
    pub fn put_json(&self, v: &mut serde_json::Value) {
        self.ack_wait.put_json("ack_wait", v);
        self.durable_wait.put_json("durable_wait", v);
        self.release_wait.put_json("release_wait", v);
        self.output_hold.put_json("output_hold", v);
        v["output_hold_buckets"] = self.output_hold_buckets.to_json();
    }
}

/// What the gate reached, read under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// The last closed epoch.
    pub closed: u64,
    pub acked: u64,
    pub durable: u64,
    /// Whether the gate answers to the Secondary's acks now (paired): an
    /// acknowledgement seen then is the Secondary's.
    pub paired: bool,
}

/// One followed epoch's moments.
#[derive(Debug)]
struct Stamps {
    epoch: u64,
    closed: Instant,
    acked: Option<Instant>,
    durable: Option<Instant>,
    released: bool,
}

/// The epochs closed and not yet done with (durable, and their frames gone),
/// in order; kept under the gate's lock.
#[derive(Debug)]
pub struct EpochStamps {
    epochs: VecDeque<Stamps>,
    seen: Reached,
}

impl EpochStamps {
    /// Following from the gate's state `now` (epochs already closed are not
    /// followed).
    pub fn new(now: Reached) -> Self {
        EpochStamps {
            epochs: VecDeque::new(),
            seen: now,
        }
    }

    fn at(&mut self, epoch: u64) -> Option<&mut Stamps> {
        let first = self.epochs.front()?.epoch;
        let i = usize::try_from(epoch.checked_sub(first)?).ok()?;
        self.epochs.get_mut(i)
    }

    /// The gate reached `r` at `now`: stamps the epochs closed, acknowledged
    /// and durable since the last look.
    pub fn observe(&mut self, r: Reached, now: Instant, stats: &EpochLatency) {
        for epoch in self.seen.closed + 1..=r.closed {
            self.epochs.push_back(Stamps {
                epoch,
                closed: now,
                acked: None,
                durable: None,
                released: false,
            });
        }
        for epoch in self.seen.acked + 1..=r.acked {
            if let Some(s) = self.at(epoch) {
                s.acked = Some(now);
                if r.paired {
                    stats.ack_wait.record(now.duration_since(s.closed));
                }
            }
        }
        for epoch in self.seen.durable + 1..=r.durable {
            if let Some(s) = self.at(epoch) {
                s.durable = Some(now);
                if let Some(acked) = s.acked {
                    stats.durable_wait.record(now.duration_since(acked));
                }
            }
        }
        self.seen = r;
    }

    /// `epoch`'s frames start leaving at `now` (the first counts).
    pub fn released(&mut self, epoch: u64, now: Instant, stats: &EpochLatency) {
        let Some(s) = self.at(epoch) else {
            return;
        };
        if std::mem::replace(&mut s.released, true) {
            return;
        }
        let held = now.duration_since(s.closed);
        stats.output_hold.record(held);
        stats.output_hold_buckets.record(held);
        if let Some(durable) = s.durable {
            stats.release_wait.record(now.duration_since(durable));
        }
    }

    /// Forgets the epochs done with: durable, and no frame of theirs held
    /// (`oldest_held_frame`: the epoch of the oldest frame the gate holds);
    /// then the oldest beyond [`MAX_FOLLOWED`].
    pub fn retire(&mut self, oldest_held_frame: Option<u64>) {
        while let Some(s) = self.epochs.front() {
            let frames_gone = oldest_held_frame.is_none_or(|f| f > s.epoch);
            if s.durable.is_none() || !frames_gone {
                break;
            }
            self.epochs.pop_front();
        }
        while self.epochs.len() > MAX_FOLLOWED {
            self.epochs.pop_front();
        }
    }

    /// Epochs followed now.
    pub fn followed(&self) -> usize {
        self.epochs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_holds_them() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        assert_eq!(Buckets::index(Duration::ZERO), 0);
        assert_eq!(Buckets::index(ms(1)), 0, "a bound is inclusive (le)");
        assert_eq!(Buckets::index(us(1001)), 1);
        assert_eq!(Buckets::index(ms(20)), 4);
        assert_eq!(Buckets::index(us(20_001)), 5);
        assert_eq!(Buckets::index(ms(75)), 6);
        assert_eq!(Buckets::index(ms(1000)), 9);
        assert_eq!(Buckets::index(us(1_000_001)), 10, "+Inf");
        assert_eq!(Buckets::index(Duration::from_secs(3600)), 10);
        let b = Buckets::default();
        for d in [ms(0), ms(3), ms(4), ms(30), ms(5000)] {
            b.record(d);
        }
        assert_eq!(b.counts(), vec![1, 0, 2, 0, 0, 1, 0, 0, 0, 0, 1]);
        let j = b.to_json();
        assert_eq!(j["le_ms"].as_array().unwrap().len(), 10);
        assert_eq!(j["epochs"].as_array().unwrap().len(), 11);
    }

    #[test]
    fn an_interval_keeps_count_sum_last_and_max() {
        let i = Interval::default();
        for ms in [5, 9, 2] {
            i.record(Duration::from_millis(ms));
        }
        let mut v = serde_json::json!({});
        i.put_json("x", &mut v);
        assert_eq!(
            v,
            serde_json::json!({"x_epochs": 3, "x_us_total": 16_000, "x_us_last": 2000,
                "x_us_max": 9000})
        );
    }

    #[test]
    fn followed_epochs_are_capped_oldest_first() {
        let stats = EpochLatency::default();
        let start = Reached {
            closed: 0,
            acked: 0,
            durable: 0,
            paired: true,
        };
        let mut s = EpochStamps::new(start);
        let n = MAX_FOLLOWED as u64 + 10;
        // Never acknowledged (the member holds): all followed, then capped.
        s.observe(Reached { closed: n, ..start }, Instant::now(), &stats);
        assert_eq!(s.followed(), n as usize);
        s.retire(Some(1));
        assert_eq!(s.followed(), MAX_FOLLOWED);
        // The dropped epochs' releases count nothing; the kept ones' do.
        s.observe(
            Reached {
                closed: n,
                acked: n,
                durable: n,
                paired: true,
            },
            Instant::now(),
            &stats,
        );
        s.released(1, Instant::now(), &stats);
        assert_eq!(stats.output_hold.count.load(Ordering::Relaxed), 0);
        s.released(n, Instant::now(), &stats);
        assert_eq!(stats.output_hold.count.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.ack_wait.count.load(Ordering::Relaxed),
            MAX_FOLLOWED as u64
        );
        s.retire(None);
        assert_eq!(s.followed(), 0);
    }
}
