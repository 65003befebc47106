//! Fuzz target: the lockstep log decoder (`ftvmm::lockstep::log`). Any bytes,
//! any first sequence number: decoding never panics, and whatever decodes
//! re-encodes to exactly the same bytes (the format has one encoding, split
//! bodies included).
#![no_main]

use ftvmm::lockstep::log::{decode_batch, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let first = u64::from_le_bytes(data[..8].try_into().unwrap()) % 4;
    let bytes = &data[8..];
    if let Ok(recs) = decode_batch(bytes, first) {
        let mut again = Vec::new();
        for r in &recs {
            encode(r, &mut again).expect("a decoded record re-encodes");
        }
        assert_eq!(again, bytes, "decoded records re-encode differently");
    }
});
