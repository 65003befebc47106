//! The witness trailer (`cluster.vm_witness`): signed, only when set.

use super::*;
use crate::validate::parse;

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

#[test]
fn the_witness_is_a_signed_trailer_only_when_set() {
    let plain_config = parse(EXAMPLE).unwrap().config;
    let plain = encode(&plain_config);
    let text = EXAMPLE.replacen(
        "[cluster]\n",
        "[cluster]\nvm_witness = \"198.51.100.254\"\n",
        1,
    );
    let c = parse(&text).unwrap().config;
    let bytes = encode(&c);
    let mut trailer = vec![7, 14];
    trailer.extend(b"198.51.100.254");
    assert_eq!(bytes, [&plain[..], &trailer[..]].concat());
    assert_eq!(decode(&bytes).unwrap(), c);
    // Another witness is other bytes (the signature covers it).
    let mut other = c.clone();
    other.cluster.vm_witness = Some("198.51.100.253".into());
    assert_ne!(encode(&other), bytes);
    // A second trailer is trailing bytes; a torn one does not decode.
    let twice = [&bytes[..], &trailer[..]].concat();
    assert!(matches!(decode(&twice), Err(CanonicalError::Trailing(16))));
    assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    // Last, after every other trailer.
    let mut all = c.clone();
    all.cluster.accept_soft_watchdog = true;
    let b = encode(&all);
    assert_eq!(b[b.len() - 18..b.len() - 16], [4, 1]);
    assert_eq!(b[b.len() - 16..], trailer[..]);
    assert_eq!(decode(&b).unwrap(), all);
    // The runtime JSON keeps it; without it the JSON has no such key.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
    let json = serde_json::to_string(&plain_config).unwrap();
    assert!(!json.contains("vm_witness"), "{json}");
}
