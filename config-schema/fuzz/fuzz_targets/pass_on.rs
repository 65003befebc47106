//! Fuzz target: the pass-on body a host reads from another host once that
//! host is authenticated (`remote::pass_on::PassOn::decode`) must never
//! panic; whatever decodes in the pass-on format encodes back to exactly the
//! input (one body per value), and a bare signed config (an older host's
//! body) decodes without the flag and back to itself.
#![no_main]

use config_schema::remote::pass_on::{PassOn, MAX_PASS_ON_FRAME};
use config_schema::signed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = PassOn::decode(data) else {
        return;
    };
    assert!(data.len() <= MAX_PASS_ON_FRAME, "a body over the frame cap decoded");
    if data.starts_with(&signed::MAGIC) {
        assert!(!p.persisted_by_sender, "a bare signed config carries no flag");
        assert_eq!(p.config.encode(), data);
    } else {
        assert_eq!(p.encode(), data);
    }
});
