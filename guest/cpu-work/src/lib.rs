//! The fixed integer computation of the guest's CPU-bound mode (`mode=cpu cpu_iters=N`).
//!
//! The same function runs inside the guest under ftvmm and natively on the host (the ftvmm
//! benchmark depends on this crate by path), so their run times give the virtualisation overhead.
//! Integers only (no floating point, no TSC, no randomness): the checksum depends only on `iters`.
#![no_std]
#![forbid(unsafe_code)]

/// Number of 64-bit words in the working buffer (2 KiB: fits the guest stack and L1).
pub const BUFFER_WORDS: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Runs `iters` rounds of xorshift64 + FNV-1a mixing over a 256-word buffer and returns the
/// checksum. Each round touches one buffer word chosen by the generator.
pub fn run(iters: u64) -> u64 {
    let mut buf = [0u64; BUFFER_WORDS];
    for (i, w) in buf.iter_mut().enumerate() {
        *w = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut h = FNV_OFFSET;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let idx = (x >> 56) as usize % BUFFER_WORDS;
        let w = buf[idx].rotate_left(7) ^ x;
        buf[idx] = w.wrapping_mul(FNV_PRIME);
        h = (h ^ w).wrapping_mul(FNV_PRIME);
    }
    for w in buf {
        h = (h ^ w).wrapping_mul(FNV_PRIME);
    }
    h
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
    fn golden_values() {
        // Pinned so that a change of the computation (which would make old benchmark numbers
        // incomparable) is noticed.
        assert_eq!(run(0), GOLDEN_0);
        assert_eq!(run(1000), GOLDEN_1000);
    }

    const GOLDEN_0: u64 = 3402904616010254885;
    const GOLDEN_1000: u64 = 10769055892055646266;
}
