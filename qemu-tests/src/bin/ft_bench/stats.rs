//! Medians and nearest-rank percentiles of the bench's samples.

use std::time::Duration;

/// Min, median, p99, max and mean of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub min_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: u64,
}

/// The nearest-rank percentile `p` (0 < p <= 100) of sorted `v`.
fn rank(v: &[Duration], p: f64) -> Duration {
    let r = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[r.clamp(1, v.len()) - 1]
}

/// The summary of `xs`; `None` when empty.
pub fn summary(xs: &[Duration]) -> Option<Summary> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort();
    let us = |d: Duration| d.as_micros() as u64;
    let total: Duration = v.iter().sum();
    Some(Summary {
        count: v.len(),
        min_us: us(v[0]),
        p50_us: us(rank(&v, 50.0)),
        p99_us: us(rank(&v, 99.0)),
        max_us: us(v[v.len() - 1]),
        mean_us: us(total / v.len() as u32),
    })
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_summary() {
        assert_eq!(summary(&[]), None);
        let xs: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = summary(&xs).unwrap();
        assert_eq!((s.count, s.min_us, s.max_us), (100, 1000, 100_000));
        assert_eq!((s.p50_us, s.p99_us), (50_000, 99_000));
        assert_eq!(s.mean_us, 50_500);
        let one = summary(&[Duration::from_micros(7)]).unwrap();
        assert_eq!((one.p50_us, one.p99_us), (7, 7));
        assert_eq!(ms(1234), "1.23");
    }
}
