//! Fuzz the logging channel's receive path: framing, nonce and tag checks,
//! fragment reassembly and the message decoder. The body lives in
//! `ftvmm::lockstep::channel::fuzzing::run` (see its doc for the input layout
//! and oracles) so the crate's proptest runs the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvmm::lockstep::channel::fuzzing::run(data);
});
