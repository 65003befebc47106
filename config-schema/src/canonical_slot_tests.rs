//! The slot trailer (`vms[].slot`) and the delta cache trailer
//! (`vms[].delta_cache_mib`): signed, only when some VM says its value.

use super::*;
use crate::validate::parse;

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

#[test]
fn a_vms_slot_is_a_signed_trailer_only_when_some_vm_says_it() {
    let plain_config = parse(EXAMPLE).unwrap().config;
    assert_eq!(plain_config.vms[0].slot, None);
    assert_eq!(plain_config.vm_slot(0), 0, "no slot: the VM's position");
    let plain = encode(&plain_config);
    let text = EXAMPLE.replacen("name = \"kv\"\n", "name = \"kv\"\nslot = 3\n", 1);
    let c = parse(&text).unwrap().config;
    assert_eq!(
        (c.vms[0].slot, c.vm_slot(0), c.slot_of("kv")),
        (Some(3), 3, Some(3))
    );
    let bytes = encode(&c);
    // Tag 8, one entry, Some(3).
    assert_eq!(bytes, [&plain[..], &[8, 1, 1, 3]].concat());
    assert_eq!(decode(&bytes).unwrap(), c);
    // An explicit slot equal to the position is another config (other
    // bytes, another signature) with the same meaning.
    let mut zero = c.clone();
    zero.vms[0].slot = Some(0);
    assert_eq!(encode(&zero), [&plain[..], &[8, 1, 1, 0]].concat());
    // A trailer with every VM absent is not canonical; a wrong count,
    // a torn trailer and a second one do not decode.
    let none = [&plain[..], &[8, 1, 0]].concat();
    assert!(matches!(decode(&none), Err(CanonicalError::NotCanonical)));
    let two = [&plain[..], &[8, 2, 1, 3, 0]].concat();
    assert!(matches!(
        decode(&two),
        Err(CanonicalError::SlotCount { entries: 2, vms: 1 })
    ));
    assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    let twice = [&bytes[..], &[8, 1, 1, 3]].concat();
    assert!(matches!(decode(&twice), Err(CanonicalError::Trailing(4))));
    // Last, after the witness trailer.
    let mut all = c.clone();
    all.cluster.vm_witness = Some("198.51.100.254".into());
    let b = encode(&all);
    assert_eq!(b[b.len() - 4..], [8, 1, 1, 3]);
    assert_eq!(b[b.len() - 5], b'4', "the witness's last byte comes before");
    assert_eq!(decode(&b).unwrap(), all);
    // The runtime JSON keeps it; without it the JSON has no such key.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
    let json = serde_json::to_string(&plain_config).unwrap();
    assert!(!json.contains("\"slot\""), "{json}");
}

#[test]
fn a_vms_delta_cache_is_a_signed_trailer_after_the_slots_only_when_some_vm_says_it() {
    let plain_config = parse(EXAMPLE).unwrap().config;
    assert_eq!(plain_config.vms[0].delta_cache_mib, None);
    let plain = encode(&plain_config);
    let mut c = plain_config.clone();
    c.vms[0].delta_cache_mib = Some(128);
    let bytes = encode(&c);
    // Tag 9, one entry, Some(128) (a two-byte varint).
    assert_eq!(bytes, [&plain[..], &[9, 1, 1, 0x80, 0x01]].concat());
    assert_eq!(decode(&bytes).unwrap(), c);
    // After the slot trailer.
    c.vms[0].slot = Some(3);
    let both = encode(&c);
    assert_eq!(
        both,
        [&plain[..], &[8, 1, 1, 3], &[9, 1, 1, 0x80, 0x01]].concat()
    );
    assert_eq!(decode(&both).unwrap(), c);
    // Every VM absent is not canonical; a wrong count, a torn trailer and a
    // second one do not decode.
    let none = [&plain[..], &[9, 1, 0]].concat();
    assert!(matches!(decode(&none), Err(CanonicalError::NotCanonical)));
    let two = [&plain[..], &[9, 2, 1, 0, 0]].concat();
    assert!(matches!(
        decode(&two),
        Err(CanonicalError::DeltaCacheCount { entries: 2, vms: 1 })
    ));
    assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    let twice = [&bytes[..], &[9, 1, 1, 0]].concat();
    assert!(matches!(decode(&twice), Err(CanonicalError::Trailing(4))));
    // The runtime JSON keeps it; without it the JSON has no such key.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
    let json = serde_json::to_string(&plain_config).unwrap();
    assert!(!json.contains("delta_cache_mib"), "{json}");
}
