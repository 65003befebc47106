//! Fuzz what a Secondary does with the platform description in a Primary's
//! `Hello`: decode it and compare it with its own. The body lives in
//! `ftvmm::platform::fuzz` (see its doc for the oracles) so the crate's
//! proptest runs the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvmm::platform::fuzz(data);
});
