//! Fuzz the live state transfer codec: decode arbitrary bytes; what decodes
//! must re-encode to the same bytes and decode to itself. The body lives in
//! `ftvmm::lockstep::transfer::message::fuzz` so the crate's proptest runs
//! the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvmm::lockstep::transfer::message::fuzz(data);
});
