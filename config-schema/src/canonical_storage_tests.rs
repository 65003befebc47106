//! `storage.device = { iscsi = {...} }` (variant 2 of the locator) and the
//! storage trailer (`hosts[].storage`, first byte 6).

use super::*;
use crate::model::{Chap, DeviceLocator, Interface, IscsiLun};

const LUN: &str = "iqn.2026-01.test.ftappliance:shared";
const PREFIX: &str = "iqn.2026-01.test.ftappliance";

fn iscsi(chap: bool) -> DeviceLocator {
    DeviceLocator::Iscsi(IscsiLun {
        portal: "10.0.2.100:3260".into(),
        target: LUN.into(),
        lun: 1,
        tpgt: 1,
        initiator_prefix: PREFIX.into(),
        chap: chap.then(|| Chap {
            user: "ft".into(),
            secret: "twelve+bytes".into(),
        }),
    })
}

fn storage_of(i: usize) -> Interface {
    Interface {
        mac: format!("52:54:00:fa:00:{:02x}", i + 1),
        addr: format!("10.0.2.{}/24", 11 + i),
    }
}

/// `examples/cluster.toml` on an iSCSI LUN, every host with its storage NIC.
fn example_iscsi(chap: bool) -> ClusterConfig {
    let mut c = example_power(None);
    c.storage.device = iscsi(chap);
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.storage = Some(storage_of(i));
    }
    crate::validate::validate(&c).unwrap();
    c
}

/// A postcard string: length, then the bytes.
fn string(s: &str) -> Vec<u8> {
    [&[s.len() as u8][..], s.as_bytes()].concat()
}

/// The bytes of `storage.device` in the example: where they start and end.
fn device_span(bytes: &[u8]) -> std::ops::Range<usize> {
    // The example's serial locator: 0, then "FTSHARED".
    let serial = [&[0][..], &string("FTSHARED")].concat();
    let plain = encode(&example_power(None));
    let start = plain
        .windows(serial.len())
        .position(|w| w == serial)
        .unwrap();
    assert_eq!(bytes[..start], plain[..start]);
    start..start + serial.len()
}

#[test]
fn no_storage_keeps_the_pinned_bytes() {
    let c = example_power(None);
    assert!(c.hosts.iter().all(|h| h.storage.is_none()));
    assert_eq!(sha256_hex(&encode(&c)), EXAMPLE_SHA256);
}

#[test]
fn the_iscsi_locator_is_variant_2_and_signed_field_by_field() {
    let plain = encode(&example_power(None));
    let span = device_span(&plain);
    let c = example_iscsi(false);
    let bytes = encode(&c);
    // 2, portal, target, lun (varint), tpgt (varint), initiator_prefix, chap none.
    let device = [
        &[2][..],
        &string("10.0.2.100:3260"),
        &string(LUN),
        &[1],
        &[1],
        &string(PREFIX),
        &[0],
    ]
    .concat();
    assert_eq!(bytes[span.start..span.start + device.len()], device[..]);
    // The rest of the config as before, then the storage trailer.
    let body_end = plain.len() - span.len() + device.len();
    assert_eq!(
        bytes[span.start + device.len()..body_end],
        plain[span.end..]
    );
    assert_eq!(bytes[body_end], 6);
    assert_eq!(decode(&bytes).unwrap(), c);
    // CHAP: 1, user, secret.
    let with = encode(&example_iscsi(true));
    let chap = [&[1][..], &string("ft"), &string("twelve+bytes")].concat();
    let at = span.start + device.len() - 1;
    assert_eq!(with[at..at + chap.len()], chap[..]);
    assert_eq!(decode(&with).unwrap(), example_iscsi(true));
    // Every field is signed.
    fn lun(c: &mut ClusterConfig) -> &mut IscsiLun {
        match &mut c.storage.device {
            DeviceLocator::Iscsi(l) => l,
            _ => unreachable!(),
        }
    }
    let edits: Vec<fn(&mut ClusterConfig)> = vec![
        |c| lun(c).portal = "10.0.2.100:3261".into(),
        |c| lun(c).target = "iqn.2026-01.test.ftappliance:other".into(),
        |c| lun(c).lun = 200,
        |c| lun(c).initiator_prefix = "iqn.2026-01.test.other".into(),
        |c| lun(c).chap.as_mut().unwrap().user = "fu".into(),
        |c| lun(c).chap.as_mut().unwrap().secret = "twelve+bytez".into(),
        |c| lun(c).chap = None,
    ];
    let with_chap = example_iscsi(true);
    for (i, edit) in edits.iter().enumerate() {
        let mut e = with_chap.clone();
        edit(&mut e);
        let b = encode(&e);
        assert_ne!(b, with, "edit {i} did not change the encoding");
        assert_eq!(decode(&b).unwrap(), e, "edit {i} does not round-trip");
    }
}

#[test]
fn storage_is_a_signed_trailer_old_builds_refuse() {
    let c = example_iscsi(false);
    let bytes = encode(&c);
    let mut no_nics = c.clone();
    for h in &mut no_nics.hosts {
        h.storage = None;
    }
    let head = encode(&no_nics);
    // 6, then 3 hosts, each (1, mac, addr).
    let mut trailer = vec![6, 3];
    for i in 0..3 {
        let s = storage_of(i);
        trailer.extend([&[1][..], &string(&s.mac), &string(&s.addr)].concat());
    }
    assert_eq!(bytes, [&head[..], &trailer[..]].concat());
    // A decoder from before the field sees trailing bytes, not hosts without it.
    let (old, rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
    assert_eq!(rest, &trailer[..]);
    assert!(old.hosts.iter().all(|h| h.storage.is_none()));
    // Every field is signed (validation aside: the encoding takes any config).
    let edits: Vec<fn(&mut ClusterConfig)> = vec![
        |c| c.hosts[1].storage.as_mut().unwrap().mac = "52:54:00:fa:00:0a".into(),
        |c| c.hosts[1].storage.as_mut().unwrap().addr = "10.0.2.19/24".into(),
        |c| c.hosts[1].storage = None,
        |c| c.hosts.swap(0, 1),
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
fn storage_trailer_must_be_needed_fit_and_be_well_formed() {
    let plain = encode(&example_power(None));
    let needless = [&plain[..], &[6, 3, 0, 0, 0]].concat();
    assert!(matches!(
        decode(&needless),
        Err(CanonicalError::NotCanonical)
    ));
    let nic = storage_of(1);
    let short = [
        &plain[..],
        &[6, 2, 0, 1],
        &string(&nic.mac),
        &string(&nic.addr),
    ]
    .concat();
    let e = decode(&short).unwrap_err();
    assert!(matches!(
        e,
        CanonicalError::StorageCount {
            entries: 2,
            hosts: 3
        }
    ));
    assert_eq!(
        e.to_string(),
        "the storage trailer has 2 entries for 3 hosts"
    );
    let bad_tag = [&plain[..], &[6, 3, 0, 2, 0]].concat();
    assert!(matches!(decode(&bad_tag), Err(CanonicalError::Decode(_))));
    let cut = [&plain[..], &[6]].concat();
    assert!(matches!(decode(&cut), Err(CanonicalError::Decode(_))));
    let with = encode(&example_iscsi(false));
    // Cut anywhere inside the trailer: an error, never a panic or a config.
    let start = with.iter().rposition(|&b| b == 6).unwrap();
    for end in start + 1..with.len() {
        assert!(decode(&with[..end]).is_err(), "cut at {end}");
    }
    // A string that is not UTF-8.
    let mut garbage = with.clone();
    let last = garbage.len() - 1;
    garbage[last] = 0xff;
    assert!(matches!(decode(&garbage), Err(CanonicalError::Decode(_))));
    let after = [&with[..], &[0]].concat();
    assert!(matches!(decode(&after), Err(CanonicalError::Trailing(1))));
    let twice = [&with[..], &with[start..]].concat();
    assert!(matches!(decode(&twice), Err(CanonicalError::Trailing(_))));
    // 7 is the witness trailer (canonical_witness_tests.rs), 8 the slot trailer
    // and 9 the delta cache trailer (canonical_slot_tests.rs), 10 is
    // nothing.
    let other = [&plain[..], &[10]].concat();
    assert!(matches!(decode(&other), Err(CanonicalError::Trailing(1))));
}

#[test]
fn storage_comes_after_every_other_trailer() {
    let mut c = example_operators(&["alice"]);
    c.vms[0].power = Power::Off;
    c.cluster.accept_soft_watchdog = true;
    c.hosts[0].mgmt = Some(Interface {
        mac: "52:54:00:f9:00:01".into(),
        addr: "203.0.113.1/24".into(),
    });
    c.storage.device = iscsi(true);
    let without = encode(&c);
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.storage = Some(storage_of(i));
    }
    crate::validate::validate(&c).unwrap();
    let bytes = encode(&c);
    assert_eq!(bytes[..without.len()], without[..]);
    assert_eq!(bytes[without.len()..without.len() + 3], [6, 3, 1]);
    assert_eq!(decode(&bytes).unwrap(), c);
    // Before the management trailer it is not canonical (trailing bytes).
    let mgmt_at = encode_without_mgmt(&c).len();
    let storage = &bytes[without.len()..];
    let swapped = [&without[..mgmt_at], storage, &without[mgmt_at..]].concat();
    assert!(matches!(decode(&swapped), Err(CanonicalError::Trailing(_))));
}

/// `c`'s encoding without its storage and management trailers.
fn encode_without_mgmt(c: &ClusterConfig) -> Vec<u8> {
    let mut c = c.clone();
    for h in &mut c.hosts {
        h.mgmt = None;
        h.storage = None;
    }
    encode(&c)
}

#[test]
fn human_readable_round_trips_keep_iscsi_and_storage() {
    let c = example_iscsi(true);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
    let text = toml::to_string_pretty(&c).unwrap();
    assert_eq!(parse(&text).unwrap().config, c);
    assert_eq!(text.matches("52:54:00:fa:00:").count(), 3, "{text}");
}
