//! The fixed integer computation of the guest's CPU-bound mode (`mode=cpu cpu_iters=N`).
//!
//! The same function runs inside the guest under ftvmm and natively on the host (the ftvmm
//! benchmark depends on this crate by path), so their run times give the virtualisation overhead.
//! Integers only (no floating point, no TSC, no randomness): the checksum depends only on `iters`,
//! also when the work is done in several [`CpuWork::step`]s.
#![no_std]
#![forbid(unsafe_code)]

/// Number of 64-bit words in the working buffer (2 KiB: fits the guest stack and L1).
pub const BUFFER_WORDS: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Resumable state of the computation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuWork {
    buf: [u64; BUFFER_WORDS],
    x: u64,
    h: u64,
}

impl Default for CpuWork {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuWork {
    /// The initial state.
    pub fn new() -> Self {
        let mut buf = [0u64; BUFFER_WORDS];
        for (i, w) in buf.iter_mut().enumerate() {
            *w = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        Self {
            buf,
            x: 0x2545_f491_4f6c_dd1d,
            h: FNV_OFFSET,
        }
    }

    /// Runs `iters` rounds of xorshift64 + FNV-1a mixing; each round touches one buffer word
    /// chosen by the generator.
    pub fn step(&mut self, iters: u64) {
        let (mut x, mut h) = (self.x, self.h);
        for _ in 0..iters {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let idx = (x >> 56) as usize % BUFFER_WORDS;
            let w = self.buf[idx].rotate_left(7) ^ x;
            self.buf[idx] = w.wrapping_mul(FNV_PRIME);
            h = (h ^ w).wrapping_mul(FNV_PRIME);
        }
        self.x = x;
        self.h = h;
    }

    /// Folds the buffer into the running hash and returns the checksum.
    pub fn finish(&self) -> u64 {
        self.buf
            .iter()
            .fold(self.h, |h, &w| (h ^ w).wrapping_mul(FNV_PRIME))
    }
}

/// Runs the whole computation of `iters` rounds and returns the checksum.
pub fn run(iters: u64) -> u64 {
    let mut work = CpuWork::new();
    work.step(iters);
    work.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_depends_on_iters() {
        assert_eq!(run(1000), run(1000));
        assert_ne!(run(1000), run(1001));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn chunking_does_not_change_the_checksum() {
        let mut w = CpuWork::new();
        for chunk in [1, 0, 7, 256, 736] {
            w.step(chunk);
        }
        assert_eq!(w.finish(), run(1000));
    }

    #[test]
    fn golden_values() {
        // Pinned so that a change of the computation (which would make old benchmark numbers
        // incomparable) is noticed.
        assert_eq!(run(0), GOLDEN_0);
        assert_eq!(run(1000), GOLDEN_1000);
    }

    const GOLDEN_0: u64 = 3402904616010254885;
    const GOLDEN_1000: u64 = 10769055892055646266;
}
