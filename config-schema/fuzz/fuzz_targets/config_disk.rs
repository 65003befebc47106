//! Fuzz target: the config-disk parser (`read_disk`), the two-slot reader
//! (`slots::read_active`, init's), the signed-config decoder (`ftctl apply`),
//! the unverified reader behind `ftctl show` (plus validation of what it
//! decodes: the path read_disk takes after a good signature), and the STATE
//! sector decoder must never panic on any input. Inputs shorter than a disk
//! are also tried zero-padded to `DISK_LEN`, so the parser gets past the
//! length check, and placed at slot 1's offset.
#![no_main]

use std::cell::RefCell;

use config_schema::disk::{self, DISK_LEN, STATE_LEN};
use config_schema::{signed::SignedConfig, slots};
use libfuzzer_sys::fuzz_target;

/// A fixed, valid Ed25519 public key (RFC 8032 test 1), so inputs reach
/// signature verification with a real key.
const TRUST_ROOT: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

thread_local! {
    /// A zeroed disk-sized buffer reused across runs (allocating 1 MiB per
    /// input under ASan costs most of the time).
    static PADDED: RefCell<Vec<u8>> = RefCell::new(vec![0; DISK_LEN]);
}

fn parse_all(image: &[u8]) {
    // Nobody but the holder of the private key can make a disk that verifies.
    assert!(disk::read_disk(image, &TRUST_ROOT).is_err());
    assert!(slots::read_active(image, &TRUST_ROOT).is_err());
    if let Ok((config, _host)) = disk::read_disk_unverified(image) {
        let _ = config_schema::validate(&config);
    }
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    let _ = disk::decode_state(data);
    if let Ok(sc) = SignedConfig::decode(data) {
        assert!(sc.verify(&TRUST_ROOT).is_err());
    }
    if data.len() <= DISK_LEN - slots::SLOT1_OFFSET {
        PADDED.with(|p| {
            let mut p = p.borrow_mut();
            let at = slots::SLOT1_OFFSET;
            p[at..at + data.len()].copy_from_slice(data);
            let _ = slots::read_slot(&p, 1, &TRUST_ROOT);
            p[at..at + data.len()].fill(0);
        });
    }
    if data.len() < DISK_LEN {
        PADDED.with(|p| {
            let mut p = p.borrow_mut();
            p[..data.len()].copy_from_slice(data);
            parse_all(&p);
            p[..data.len()].fill(0);
        });
    }
    if data.len() < STATE_LEN {
        let mut padded = data.to_vec();
        padded.resize(STATE_LEN, 0);
        let _ = disk::decode_state(&padded);
    }
});
