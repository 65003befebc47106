//! Fuzz target: the PERSISTENT RESERVE IN and sense-data parsers
//! (`fencing::pr::prin`), fed the bytes a target (or a broken one) could
//! answer with.
//!
//! - No parser panics on any input.
//! - What parses re-encodes to bytes that parse to the same value (READ
//!   KEYS, READ RESERVATION), and a key list is never longer than the bytes
//!   could hold.
#![no_main]

use fencing::pr::prin::{
    encode_read_keys, encode_read_reservation, parse_read_keys, parse_read_reservation,
    parse_report_capabilities,
};
use fencing::pr::{PrType, Sense};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = parse_read_keys(data) {
        assert!(keys.keys.len() <= data.len().saturating_sub(8) / 8);
        if !keys.truncated {
            let again = parse_read_keys(&encode_read_keys(keys.generation, &keys.keys, usize::MAX))
                .expect("re-encoded READ KEYS parses");
            assert_eq!(again, keys);
        }
    }
    if let Ok(r) = parse_read_reservation(data) {
        let again = parse_read_reservation(&encode_read_reservation(&r))
            .expect("re-encoded READ RESERVATION parses");
        assert_eq!(again, r);
    }
    if let Ok(m) = parse_report_capabilities(data) {
        for t in PrType::ALL {
            assert_eq!(m.supports(t).is_some(), m.valid);
        }
    }
    if let Some(s) = Sense::parse(data) {
        assert!(s.key <= 0x0f);
        let _ = s.to_string();
    }
});
