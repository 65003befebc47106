//! Fuzz target: delta lease records with their running lists, as other
//! hosts' agents read them (layout 2), and what the agent does with them.
//!
//! The input becomes a lease block of 512 or 4096 bytes with a *valid*
//! checksum (so the field checks run: entry count, padding, sort order,
//! reserved bytes): its fields, entries and tail are the input's.
//! - `LeaseRecord::decode` never panics; what decodes re-encodes to the same
//!   bytes and has a sorted running list within the block's capacity.
//! - The slot claim, liveness and freeze detection take any such record
//!   (and the raw block) without panicking.
#![no_main]

use config_schema::clock::BootInstant;
use fencing::freeze::FreezeDetector;
use fencing::layout::LeaseRecord;
use fencing::lease::Liveness;
use fencing::slot::{describe, SlotClaim};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fn seal(b: &mut [u8]) {
    let at = b.len() - 4;
    let crc = crc32c::crc32c(&b[..at]);
    b[at..].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let size = if first & 1 == 0 { 512 } else { 4096 };
    let mut b = vec![0u8; size];
    b[..8].copy_from_slice(b"FTLEASE\0");
    let n = rest.len().min(size - 12);
    b[8..8 + n].copy_from_slice(&rest[..n]);
    // Half the time a plausible entry count, so entries get parsed.
    if first & 2 == 0 {
        let count = u32::from(first >> 2) % 40;
        b[12..16].copy_from_slice(&count.to_le_bytes());
    }
    seal(&mut b);

    let decoded = LeaseRecord::decode(&b);
    if let Ok(rec) = &decoded {
        assert!(rec.running.len() <= LeaseRecord::capacity(size));
        assert!(rec.running.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(&rec.encode(size)[..], &b[..]);
    }
    let _ = describe(&b);

    let t = |ms: u64| BootInstant::from_nanos(1_000_000_000 + ms * 1_000_000);
    let mut claim = SlotClaim::new(Duration::from_millis(7000), Duration::from_millis(1000));
    let _ = claim.on_read(&b, t(0));
    let _ = claim.on_read(&b, t(8000));
    let _ = claim.take_lines();

    let mut live = Liveness::new(2, Duration::from_secs(7));
    let mut freeze = FreezeDetector::new(2, Duration::from_millis(500));
    let rec = decoded.ok();
    live.observe(1, rec.clone(), t(0));
    let _ = freeze.on_read(1, rec.as_ref(), t(0), t(1));
    let _ = freeze.on_read(1, rec.as_ref(), t(500), t(501));
    let names = ["a".to_string(), "b".to_string()];
    let _ = live.views(&names, &names, t(10));
});
