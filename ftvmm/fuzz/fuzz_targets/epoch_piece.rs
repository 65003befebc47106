//! Fuzz the checkpoint epoch codec: arbitrary bytes as a piece (and through
//! the reassembler) and as an epoch body; what decodes must re-encode to the
//! same bytes. The body lives in `ftvmm::checkpoint::epoch::fuzz` so the
//! crate's proptest runs the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvmm::checkpoint::epoch::fuzz(data);
});
