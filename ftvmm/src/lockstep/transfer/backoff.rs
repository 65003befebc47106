//! When to retry a failed or cut transfer: exponential backoff with a cap and
//! "equal jitter" (half the delay fixed, half random) from a seed, so retries
//! of several VMs spread out yet a run is reproducible. A success resets it.
//! Pure: it returns delays; sleeping and deciding to give up (e.g. after the
//! operator cancels) are the integration's.

/// First retry after about this.
pub const BASE_DELAY_MS: u64 = 200;
/// Delays grow up to about this.
pub const MAX_DELAY_MS: u64 = 30_000;

const _: () = assert!(BASE_DELAY_MS > 0 && BASE_DELAY_MS <= MAX_DELAY_MS);

/// Retry delays; see the module doc.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    /// Failures since the last success.
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// The defaults above.
    pub fn new(seed: u64) -> Self {
        Self::with_limits(BASE_DELAY_MS, MAX_DELAY_MS, seed)
    }

    pub fn with_limits(base_ms: u64, max_ms: u64, seed: u64) -> Self {
        assert!(
            base_ms > 0 && base_ms <= max_ms,
            "backoff {base_ms}..{max_ms} ms"
        );
        Backoff {
            base_ms,
            max_ms,
            failures: 0,
            rng: seed,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A transfer failed: how long to wait before the next attempt, in
    /// `[d/2, d]` where `d = min(max, base * 2^(failures-1))`.
    pub fn on_failure(&mut self) -> u64 {
        let exp = self.failures.min(63);
        self.failures = self.failures.saturating_add(1);
        let d = self
            .base_ms
            .checked_shl(exp)
            .filter(|d| d >> exp == self.base_ms)
            .unwrap_or(u64::MAX)
            .min(self.max_ms);
        let half = d / 2;
        let jitter = self.next() % (d - half + 1);
        let delay = half + jitter;
        assert!(
            delay >= d / 2 && delay <= d,
            "delay {delay} outside [{half}, {d}]"
        );
        delay
    }

    /// A transfer succeeded: the next failure starts from the base again.
    pub fn on_success(&mut self) {
        self.failures = 0;
    }

    /// SplitMix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
