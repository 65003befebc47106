//! Golden bytes and round trips of the canonical encoding.

use super::*;
use crate::model::Replication;
use crate::validate::parse;

const A: &str = r#"
[cluster]
name = "t"
generation = 300

[timing]
heartbeat_interval_ms = 100
failure_timeout_ms = 1000
lag_limit_ms = 500

[storage]
device = { serial = "S" }
size_mib = 64
fencing = { offset_mib = 0, size_mib = 16 }

[[hosts]]
id = 1
name = "h"
ft = { mac = "52:54:00:00:00:01", addr = "10.0.0.1/24" }
vm = { mac = "52:54:00:00:00:02", addr = "10.0.1.1/24" }
public_key = "0101010101010101010101010101010101010101010101010101010101010101"
"#;

// Same meaning: other key order, other table style, comments, whitespace.
const B: &str = r#"
# comment
hosts = [
  { public_key = "0101010101010101010101010101010101010101010101010101010101010101", vm = { addr = "10.0.1.1/24", mac = "52:54:00:00:00:02" }, ft = { addr = "10.0.0.1/24", mac = "52:54:00:00:00:01" }, name = "h", id = 1 },
]
[storage]
fencing.size_mib = 16
fencing.offset_mib = 0
size_mib = 64   # trailing comment
device.serial = "S"
[timing]
lag_limit_ms = 500
failure_timeout_ms = 1000
heartbeat_interval_ms = 100
[cluster]
generation = 300
name = "t"
"#;

#[test]
fn toml_spelling_does_not_change_the_bytes() {
    let a = encode(&parse(A).unwrap().config);
    let b = encode(&parse(B).unwrap().config);
    assert_eq!(a, b);
}

#[test]
fn golden_bytes() {
    let got = encode(&parse(A).unwrap().config);
    let mut want = vec![1, b't', 0xac, 0x02]; // name "t", generation 300
    want.extend([0, 0, 39]); // cpu: x86-64-v1, no features, 39 physical address bits
    want.extend([100, 0xe8, 0x07, 0xf4, 0x03]); // 100, 1000, 500
    want.extend([0, 1, b'S', 64, 0, 16, 0]); // serial "S", 64, fencing, no regions
    want.push(0); // no host groups
    want.extend([1, 1, 1, b'h']); // 1 host, id 1, name "h"
    for s in [
        "52:54:00:00:00:01",
        "10.0.0.1/24",
        "52:54:00:00:00:02",
        "10.0.1.1/24",
        &"01".repeat(32),
    ] {
        want.push(s.len() as u8);
        want.extend(s.as_bytes());
    }
    want.push(0); // no VMs
    want.push(0); // no [test] section
    assert_eq!(got, want);
}

/// sha256 of the canonical bytes of `examples/cluster.toml`, computed
/// before `affinity` became optional: configs that spell it out keep their
/// bytes, so disks signed before stay valid.
const EXAMPLE_SHA256: &str = "9d93a27f417b5a3d2e90d1ecabf1fbaeaa1110d18343d320a2e3d5d3d2605548";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[test]
fn example_canonical_bytes_are_pinned() {
    let text = include_str!("../../examples/cluster.toml");
    let bytes = encode(&parse(text).unwrap().config);
    assert_eq!(bytes.len(), 552);
    assert_eq!(sha256_hex(&bytes), EXAMPLE_SHA256);
}

#[test]
fn absent_affinity_encodes_as_two_empty_lists() {
    let text = include_str!("../../examples/cluster.toml");
    let line = "affinity = { groups = [\"rack-1\"], hosts = [\"host-c\"] }";
    assert!(text.contains(line));
    let with = encode(&parse(text).unwrap().config);
    let without = encode(&parse(&text.replace(line, "")).unwrap().config);
    // The VM is last and no [test] follows: with the rule its tail is
    // hosts ["host-c"], groups ["rack-1"], 0; without it 0, 0, 0.
    let rule: &[u8] = &[
        1, 6, b'h', b'o', b's', b't', b'-', b'c', 1, 6, b'r', b'a', b'c', b'k', b'-', b'1', 0,
    ];
    assert!(with.ends_with(rule));
    let head = &with[..with.len() - rule.len()];
    assert_eq!(without, [head, &[0, 0, 0]].concat());
    // Deterministic: parse and encode again, decode round-trips.
    let again = encode(&parse(&text.replace(line, "")).unwrap().config);
    assert_eq!(without, again);
    assert_eq!(encode(&decode(&without).unwrap()), without);
}

/// The example with `power = ...` added to its VM (`None`: as it is).
fn example_power(power: Option<&str>) -> ClusterConfig {
    let text = include_str!("../../examples/cluster.toml");
    let text = match power {
        Some(p) => format!("{text}power = \"{p}\"\n"),
        None => text.to_string(),
    };
    parse(&text).unwrap().config
}

#[test]
fn power_on_or_absent_keeps_the_pinned_bytes() {
    let absent = encode(&example_power(None));
    assert_eq!(sha256_hex(&absent), EXAMPLE_SHA256);
    assert_eq!(encode(&example_power(Some("on"))), absent);
}

#[test]
fn power_off_is_a_signed_trailer_old_builds_refuse() {
    let on = encode(&example_power(None));
    let off = encode(&example_power(Some("off")));
    // The trailer: 1, then 1 VM, off.
    assert_eq!(off, [&on[..], &[1, 1, 1]].concat());
    let back = decode(&off).unwrap();
    assert_eq!(back.vms[0].power, Power::Off);
    assert_eq!(back, example_power(Some("off")));
    // A decoder from before the field sees trailing bytes, not a VM that is on.
    let (_, rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&off).unwrap();
    assert_eq!(rest, [1, 1, 1]);
}

#[test]
fn power_trailer_must_be_needed_and_fit() {
    let on = encode(&example_power(None));
    // Every VM on: the trailer is left out, so writing it is not canonical.
    let all_on = [&on[..], &[1, 1, 0]].concat();
    assert!(matches!(decode(&all_on), Err(CanonicalError::NotCanonical)));
    let two = [&on[..], &[1, 2, 1, 1]].concat();
    assert!(matches!(
        decode(&two),
        Err(CanonicalError::PowerCount { entries: 2, vms: 1 })
    ));
    let bad_state = [&on[..], &[1, 1, 2]].concat();
    assert!(matches!(decode(&bad_state), Err(CanonicalError::Decode(_))));
    let after = [&on[..], &[1, 1, 1, 0]].concat();
    assert!(matches!(decode(&after), Err(CanonicalError::Trailing(1))));
    // 2 starts the replication trailer (a lone 2 is a cut one), 3 the
    // operators trailer; 4 is nothing.
    let cut = [&on[..], &[2]].concat();
    assert!(matches!(decode(&cut), Err(CanonicalError::Decode(_))));
    let cut = [&on[..], &[3]].concat();
    assert!(matches!(decode(&cut), Err(CanonicalError::Decode(_))));
    let other = [&on[..], &[4]].concat();
    assert!(matches!(decode(&other), Err(CanonicalError::Trailing(1))));
}

#[test]
fn test_hooks_are_signed_bytes() {
    let text = format!("{A}\n[test]\nhooks = [\"vmctl\"]\n");
    let with = encode(&parse(&text).unwrap().config);
    let without = encode(&parse(A).unwrap().config);
    // The last byte of a config without hooks (0 = no section) becomes
    // 1, then the list: 1 hook, "vmctl".
    assert_eq!(with[..without.len() - 1], without[..without.len() - 1]);
    assert_eq!(
        with[without.len() - 1..],
        [1, 1, 5, b'v', b'm', b'c', b't', b'l']
    );
    assert_eq!(
        decode(&with).unwrap().test_hooks(),
        [crate::hooks::TestHook::Vmctl]
    );
}

#[test]
fn any_field_change_changes_the_bytes() {
    let base = parse(A).unwrap().config;
    let e0 = encode(&base);
    let mut edits: Vec<ClusterConfig> = Vec::new();
    let mut c = base.clone();
    c.cluster.generation += 1;
    edits.push(c);
    let mut c = base.clone();
    c.cluster.name = "u".into();
    edits.push(c);
    let mut c = base.clone();
    c.cluster.cpu.level = crate::model::CpuLevel::V2;
    edits.push(c);
    let mut c = base.clone();
    c.cluster.cpu.phys_addr_bits = 40;
    edits.push(c);
    let mut c = base.clone();
    c.timing.lag_limit_ms += 1;
    edits.push(c);
    let mut c = base.clone();
    c.storage.fencing.size_mib = 8;
    edits.push(c);
    let mut c = base.clone();
    c.hosts[0].ft.mac = "52:54:00:00:00:0A".into();
    edits.push(c);
    let mut c = base.clone();
    c.hosts[0].id = 2;
    edits.push(c);
    for (i, e) in edits.iter().enumerate() {
        assert_ne!(encode(e), e0, "edit {i} did not change the encoding");
    }
}

#[test]
fn decode_round_trips_and_refuses_trailing_or_garbage() {
    let c = parse(A).unwrap().config;
    let mut bytes = encode(&c);
    assert_eq!(decode(&bytes).unwrap(), c);
    bytes.push(0);
    assert!(matches!(decode(&bytes), Err(CanonicalError::Trailing(1))));
    assert!(decode(&[0xff; 7]).is_err());
}

#[test]
fn overlong_varint_is_not_canonical() {
    let c = parse(A).unwrap().config;
    let bytes = encode(&c);
    // Re-spell generation 300 (0xac 0x02) as 0xac 0x82 0x00.
    let mut odd = bytes[..3].to_vec();
    odd.extend([0x82, 0x00]);
    odd.extend(&bytes[4..]);
    assert!(decode(&odd).is_err());
}

#[test]
fn lockstep_defaults_spelled_out_keep_the_pinned_bytes() {
    // Every existing config is a lockstep, one-vCPU VM: saying so changes nothing.
    let text = include_str!("../../examples/cluster.toml");
    let text = format!("{text}replication = \"lockstep\"\nvcpus = 1\n");
    let c = parse(&text).unwrap().config;
    assert_eq!(c, example_power(None));
    assert_eq!(sha256_hex(&encode(&c)), EXAMPLE_SHA256);
}

const LINUX: &str = include_str!("../../examples/linux-vm.toml");

/// The linux example without its `web` VM and `[[images]]`.
fn linux_without_web() -> ClusterConfig {
    let mut c = parse(LINUX).unwrap().config;
    c.vms.truncate(1);
    c.images.clear();
    c
}

#[test]
fn replication_is_a_signed_trailer_old_builds_refuse() {
    let c = parse(LINUX).unwrap().config;
    let bytes = encode(&c);
    assert_eq!(decode(&bytes).unwrap(), c);
    // A decoder from before the fields sees trailing bytes, starting with 2.
    let (old, rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
    assert_eq!(rest[0], REPLICATION_TRAILER);
    assert_eq!(old.vms[1].vcpus, 0, "a binary Vm carries no vcpus");
    // The trailer: 2 VMs (lockstep 1 none; checkpoint 2 Some(20)), then 1 image.
    assert_eq!(rest[1..9], [2, 0, 1, 0, 1, 2, 1, 20]);
    assert_eq!(rest[9], 1);
    // Without the checkpoint VM and the images, no trailer at all.
    let plain = encode(&linux_without_web());
    let (_, r): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&plain).unwrap();
    assert!(r.is_empty());
}

#[test]
fn every_new_field_is_signed() {
    let base = parse(LINUX).unwrap().config;
    let e0 = encode(&base);
    let edits: Vec<fn(&mut ClusterConfig)> = vec![
        |c| c.vms[1].vcpus = 3,
        |c| c.vms[1].epoch_ms = None,
        |c| c.vms[1].epoch_ms = Some(21),
        |c| c.vms[0].replication = Replication::Checkpoint,
        |c| c.images[0].cmdline.push(' '),
        |c| c.images[0].kernel.offset_mib = 1,
        |c| c.images[0].kernel.size_bytes += 1,
        |c| c.images[0].kernel.sha256 = "00".repeat(32),
        |c| c.images[0].initrd = None,
        |c| c.images[0].region = "x".into(),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut c = base.clone();
        edit(&mut c);
        let bytes = encode(&c);
        assert_ne!(bytes, e0, "edit {i} did not change the encoding");
        assert_eq!(decode(&bytes).unwrap(), c, "edit {i} does not round-trip");
    }
}

#[test]
fn replication_trailer_must_be_needed_and_fit() {
    let plain = encode(&linux_without_web());
    // One VM at the defaults, no images: the trailer is left out, so writing it is not canonical.
    let needless = [&plain[..], &[2, 1, 0, 1, 0, 0]].concat();
    assert!(matches!(
        decode(&needless),
        Err(CanonicalError::NotCanonical)
    ));
    let two = [&plain[..], &[2, 2, 1, 2, 0, 1, 2, 0, 0]].concat();
    assert!(matches!(
        decode(&two),
        Err(CanonicalError::ReplicationCount { entries: 2, vms: 1 })
    ));
    let bad_mode = [&plain[..], &[2, 1, 2, 1, 0, 0]].concat();
    assert!(matches!(decode(&bad_mode), Err(CanonicalError::Decode(_))));
    let ok = [&plain[..], &[2, 1, 1, 2, 0, 0]].concat();
    assert_eq!(decode(&ok).unwrap().vms[0].vcpus, 2);
    let after = [&ok[..], &[0]].concat();
    assert!(matches!(decode(&after), Err(CanonicalError::Trailing(1))));
}

#[test]
fn power_then_replication() {
    let mut c = parse(LINUX).unwrap().config;
    c.vms[1].power = Power::Off;
    let bytes = encode(&c);
    let on = {
        let mut on = c.clone();
        on.vms[1].power = Power::On;
        encode(&on)
    };
    let (_, rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
    assert_eq!(rest[..4], [1, 2, 0, 1], "the power trailer comes first");
    assert_eq!(bytes.len(), on.len() + 4);
    assert_eq!(decode(&bytes).unwrap(), c);
    // The other order is not canonical (it reads as trailing bytes).
    let (_, on_rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&on).unwrap();
    let head = &on[..on.len() - on_rest.len()];
    let swapped = [head, on_rest, &[1, 2, 0, 1]].concat();
    assert!(matches!(decode(&swapped), Err(CanonicalError::Trailing(4))));
}

#[test]
fn human_readable_round_trips_keep_the_new_fields() {
    let c = parse(LINUX).unwrap().config;
    // The JSON runtime config init hands over.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
    // `ftctl show`'s TOML: defaults left out, the rest kept.
    let toml_text = toml::to_string_pretty(&c).unwrap();
    assert_eq!(parse(&toml_text).unwrap().config, c);
    assert!(
        toml_text.contains("replication = \"checkpoint\""),
        "{toml_text}"
    );
    assert_eq!(toml_text.matches("replication").count(), 1, "{toml_text}");
    assert_eq!(toml_text.matches("vcpus").count(), 1, "{toml_text}");
}

/// `examples/cluster.toml` with operators `names`, keys 0202…, 0303…, …
fn example_operators(names: &[&str]) -> ClusterConfig {
    let mut text = include_str!("../../examples/cluster.toml").to_string();
    for (i, n) in names.iter().enumerate() {
        let key = format!("{:02x}", i + 2).repeat(32);
        text.push_str(&format!(
            "\n[[operators]]\nname = \"{n}\"\npublic_key = \"{key}\"\n"
        ));
    }
    parse(&text).unwrap().config
}

#[test]
fn no_operators_keeps_the_pinned_bytes() {
    assert_eq!(sha256_hex(&encode(&example_operators(&[]))), EXAMPLE_SHA256);
}

#[test]
fn operators_are_a_signed_trailer_old_builds_refuse() {
    let none = encode(&example_operators(&[]));
    let c = example_operators(&["alice", "bob"]);
    let with = encode(&c);
    // 3, then 2 operators, each name and key as postcard strings.
    let mut trailer = vec![3, 2];
    for (n, k) in [("alice", "02".repeat(32)), ("bob", "03".repeat(32))] {
        trailer.push(n.len() as u8);
        trailer.extend(n.as_bytes());
        trailer.push(64);
        trailer.extend(k.as_bytes());
    }
    assert_eq!(with, [&none[..], &trailer[..]].concat());
    assert_eq!(decode(&with).unwrap(), c);
    // A build from before operators sees trailing bytes, not a config without them.
    let (_, rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(&with).unwrap();
    assert_eq!(rest, &trailer[..]);
    // Every byte of the trailer is signed: another key, another encoding.
    let mut other = c.clone();
    other.operators[1].public_key = "04".repeat(32);
    assert_ne!(encode(&other), with);
}

#[test]
fn operators_trailer_must_be_needed_fit_and_come_last() {
    let none = encode(&example_operators(&[]));
    let empty = [&none[..], &[3, 0]].concat();
    assert!(matches!(decode(&empty), Err(CanonicalError::NoOperators)));
    let with = encode(&example_operators(&["alice"]));
    let after = [&with[..], &[0]].concat();
    assert!(matches!(decode(&after), Err(CanonicalError::Trailing(1))));
    // Power off and operators: both trailers, in the order of their first byte.
    let mut c = example_operators(&["alice"]);
    c.vms[0].power = Power::Off;
    let both = encode(&c);
    assert_eq!(both[none.len()..none.len() + 3], [1, 1, 1]);
    assert_eq!(both[none.len() + 3], 3);
    assert_eq!(decode(&both).unwrap(), c);
}

#[test]
fn accept_soft_watchdog_is_a_signed_trailer_only_when_true() {
    let plain = encode(&example_power(None));
    let text = include_str!("../../examples/cluster.toml");
    let spelled = text.replacen(
        "[cluster]\n",
        "[cluster]\naccept_soft_watchdog = false\n",
        1,
    );
    assert_ne!(spelled, text, "the example has a [cluster] table");
    assert_eq!(
        encode(&parse(&spelled).unwrap().config),
        plain,
        "false (the default) keeps the pinned bytes"
    );
    let accept = text.replacen("[cluster]\n", "[cluster]\naccept_soft_watchdog = true\n", 1);
    let c = parse(&accept).unwrap().config;
    assert!(c.cluster.accept_soft_watchdog);
    let bytes = encode(&c);
    assert_eq!(bytes, [&plain[..], &[4, 1]].concat());
    assert_eq!(decode(&bytes).unwrap(), c);
    // A trailer saying "false" is not canonical; nor is a second one.
    let zero = [&plain[..], &[4, 0]].concat();
    assert!(matches!(decode(&zero), Err(CanonicalError::NotCanonical)));
    let twice = [&bytes[..], &[4, 1]].concat();
    assert!(matches!(decode(&twice), Err(CanonicalError::Trailing(2))));
    // After the replication trailer, never before it.
    let mut both = parse(LINUX).unwrap().config;
    both.cluster.accept_soft_watchdog = true;
    let b = encode(&both);
    assert_eq!(b[b.len() - 2..], [4, 1]);
    assert_eq!(decode(&b).unwrap(), both);
    // The runtime JSON keeps it.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), c);
}

#[path = "canonical_mgmt_tests.rs"]
mod mgmt;

#[path = "canonical_storage_tests.rs"]
mod storage;

#[path = "canonical_witness_tests.rs"]
mod witness;

#[path = "canonical_slot_tests.rs"]
mod slot;
