//! The management trailer (`hosts[].mgmt`, first byte 5).

use super::*;
use crate::model::Interface;

/// `examples/cluster.toml` with a management NIC on the hosts `with`
/// (indices): 203.0.113.N/24, MAC 52:54:00:f9:00:0N.
fn example_mgmt(with: &[usize]) -> ClusterConfig {
    let mut c = example_power(None);
    for &i in with {
        c.hosts[i].mgmt = Some(mgmt_of(i));
    }
    crate::validate::validate(&c).unwrap();
    c
}

fn mgmt_of(i: usize) -> Interface {
    Interface {
        mac: format!("52:54:00:f9:00:{:02x}", i + 1),
        addr: format!("203.0.113.{}/24", i + 1),
    }
}

/// A postcard string: length, then the bytes.
fn string(s: &str) -> Vec<u8> {
    [&[s.len() as u8][..], s.as_bytes()].concat()
}

#[test]
fn no_mgmt_keeps_the_pinned_bytes() {
    assert_eq!(sha256_hex(&encode(&example_mgmt(&[]))), EXAMPLE_SHA256);
}

#[test]
fn mgmt_is_a_signed_trailer_old_builds_refuse() {
    let plain = encode(&example_mgmt(&[]));
    let c = example_mgmt(&[1]);
    let bytes = encode(&c);
    // 5, then 3 hosts: none, (1, mac, addr), none.
    let trailer = [
        &[5, 3, 0, 1][..],
        &string("52:54:00:f9:00:02"),
        &string("203.0.113.2/24"),
        &[0],
    ]
    .concat();
    assert_eq!(bytes, [&plain[..], &trailer[..]].concat());
    assert_eq!(decode(&bytes).unwrap(), c);
    // A decoder from before the field sees trailing bytes, not a host without it.
    let (old, rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
    assert_eq!(rest, &trailer[..]);
    assert!(old.hosts.iter().all(|h| h.mgmt.is_none()));
    // Every field is signed.
    let edits: Vec<fn(&mut ClusterConfig)> = vec![
        |c| c.hosts[1].mgmt.as_mut().unwrap().mac = "52:54:00:f9:00:0a".into(),
        |c| c.hosts[1].mgmt.as_mut().unwrap().addr = "203.0.113.9/24".into(),
        |c| c.hosts[1].mgmt = None,
        |c| c.hosts[0].mgmt = Some(mgmt_of(0)),
        |c| {
            c.hosts[2].mgmt = c.hosts[1].mgmt.take();
        },
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut e = c.clone();
        edit(&mut e);
        let b = encode(&e);
        assert_ne!(b, bytes, "edit {i} did not change the encoding");
        assert_eq!(decode(&b).unwrap(), e, "edit {i} does not round-trip");
    }
}

#[test]
fn mgmt_trailer_must_be_needed_fit_and_be_well_formed() {
    let plain = encode(&example_mgmt(&[]));
    // No host has one: the trailer is left out, so writing it is not canonical.
    let needless = [&plain[..], &[5, 3, 0, 0, 0]].concat();
    assert!(matches!(
        decode(&needless),
        Err(CanonicalError::NotCanonical)
    ));
    let short = [
        &plain[..],
        &[5, 2, 0, 1],
        &string("52:54:00:f9:00:02"),
        &string("203.0.113.2/24"),
    ]
    .concat();
    assert!(matches!(
        decode(&short),
        Err(CanonicalError::MgmtCount {
            entries: 2,
            hosts: 3
        })
    ));
    let bad_tag = [&plain[..], &[5, 3, 0, 2, 0]].concat();
    assert!(matches!(decode(&bad_tag), Err(CanonicalError::Decode(_))));
    let cut = [&plain[..], &[5]].concat();
    assert!(matches!(decode(&cut), Err(CanonicalError::Decode(_))));
    let with = encode(&example_mgmt(&[0, 2]));
    let after = [&with[..], &[0]].concat();
    assert!(matches!(decode(&after), Err(CanonicalError::Trailing(1))));
    let twice = [&with[..], &with[plain.len()..]].concat();
    assert!(matches!(decode(&twice), Err(CanonicalError::Trailing(_))));
    // 6 is the storage trailer (canonical_storage_tests.rs), 7 the witness
    // trailer (canonical_witness_tests.rs), 8 the slot trailer
    // and 9 the delta cache trailer (canonical_slot_tests.rs), 10 is
    // nothing.
    let other = [&plain[..], &[10]].concat();
    assert!(matches!(decode(&other), Err(CanonicalError::Trailing(1))));
}

#[test]
fn mgmt_comes_after_every_other_trailer() {
    let mut c = example_operators(&["alice"]);
    c.vms[0].power = Power::Off;
    c.cluster.accept_soft_watchdog = true;
    let without = encode(&c);
    c.hosts[0].mgmt = Some(mgmt_of(0));
    let bytes = encode(&c);
    assert_eq!(bytes[..without.len()], without[..]);
    assert_eq!(without[without.len() - 2..], [4, 1]);
    assert_eq!(bytes[without.len()..without.len() + 3], [5, 3, 1]);
    assert_eq!(decode(&bytes).unwrap(), c);
    // Before the cluster trailer it is not canonical (it reads as trailing bytes).
    let mgmt = &bytes[without.len()..];
    let swapped = [&without[..without.len() - 2], mgmt, &[4, 1]].concat();
    assert!(matches!(decode(&swapped), Err(CanonicalError::Trailing(2))));
}

#[test]
fn human_readable_round_trips_keep_mgmt() {
    let c = example_mgmt(&[0, 1]);
    // The JSON runtime config init hands over.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
    // `ftctl show`'s TOML: a host without one has no `mgmt`.
    let text = toml::to_string_pretty(&c).unwrap();
    assert_eq!(parse(&text).unwrap().config, c);
    assert_eq!(text.matches("mgmt").count(), 2, "{text}");
}
