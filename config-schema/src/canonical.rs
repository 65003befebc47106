//! The canonical byte encoding of a cluster config: what gets signed.
//!
//! TOML is for people; the same config can be written in many ways (key
//! order, whitespace, comments, inline vs. standard tables). The signature
//! must cover the *meaning*, so the config disk carries these bytes and the
//! signature covers them; a host decodes them back to the typed config.
//!
//! # Encoding (byte for byte)
//!
//! The bytes are the [postcard 1.x wire format] of [`ClusterConfig`]:
//!
//! * `u32` / `u64`: unsigned LEB128 varint (7 bits per byte, least
//!   significant group first, high bit set on every byte but the last).
//! * string: varint byte length, then the UTF-8 bytes.
//! * list: varint element count, then each element.
//! * struct: its fields in declaration order, no names, no tags.
//! * enum: varint variant index (declaration order, from 0), then its data.
//!
//! Field order, which is the order of the structs in `model.rs`:
//!
//! ```text
//! cluster.name, cluster.generation,
//! cluster.cpu.level (0 = x86-64-v1 .. 3 = x86-64-v4), cluster.cpu.features [ feature index ],
//! cluster.cpu.phys_addr_bits (one byte),
//! timing.heartbeat_interval_ms, timing.failure_timeout_ms, timing.lag_limit_ms,
//! storage.device (0 = serial, 1 = path; then the string), storage.size_mib,
//! storage.fencing.offset_mib, storage.fencing.size_mib,
//! storage.regions [ name, offset_mib, size_mib ],
//! host_groups [ name, hosts [ string ] ],
//! hosts [ id, name, ft.mac, ft.addr, vm.mac, vm.addr, public_key ],
//! vms [ name, memory_mib, image, mode (0 = kv, 1 = cpu), disk_region, mac, ip,
//!       affinity.hosts [ string ], affinity.groups [ string ] ]  (no affinity: 0, 0),
//! test (0 = no [test] section; 1, then hooks [ string ])
//! ```
//!
//! Then, only when some VM has `power = "off"`, the power trailer:
//!
//! ```text
//! 1, vms.power [ power (0 = on, 1 = off) ]  (one entry per VM, in order)
//! ```
//!
//! `vms[].power` came after format version 2 was signed on real disks. It is
//! not a field of the `vms` entries above (postcard has no field names, so an
//! added field would change every config's bytes): a config whose VMs are all
//! on has no trailer and keeps its bytes and signatures, and a build from
//! before the field refuses a config with a VM off ("trailing bytes") instead
//! of running a VM the operator powered off.
//!
//! Strings are kept exactly as written (no case folding of MACs, for
//! instance), so any change of any field changes the bytes. Reordering the
//! fields of a model struct changes the format: the golden test below fails
//! and the config-disk format version must be bumped.
//!
//! [postcard 1.x wire format]: https://postcard.jamesmunns.com/wire-format

use crate::model::{ClusterConfig, Power};

/// First byte of the power trailer (see the module doc).
const POWER_TRAILER: u8 = 1;

/// Why canonical bytes did not decode.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("not a canonical config encoding: {0}")]
    Decode(#[from] postcard::Error),
    #[error("{0} trailing bytes after the config")]
    Trailing(usize),
    #[error("the power trailer has {entries} entries for {vms} VMs")]
    PowerCount { entries: usize, vms: usize },
    #[error("config encoding is not canonical")]
    NotCanonical,
}

/// Encodes a config canonically. Callers sign only validated configs.
pub fn encode(config: &ClusterConfig) -> Vec<u8> {
    let mut bytes =
        postcard::to_stdvec(config).expect("postcard encodes every ClusterConfig to a Vec");
    if config.vms.iter().any(|vm| !vm.power.is_on()) {
        let power: Vec<Power> = config.vms.iter().map(|vm| vm.power).collect();
        bytes.push(POWER_TRAILER);
        bytes.extend(postcard::to_stdvec(&power).expect("postcard encodes a list of Power"));
    }
    bytes
}

/// Decodes canonical bytes, refusing trailing data and any non-canonical
/// spelling (e.g. an over-long varint, or a power trailer with every VM
/// on), so one config has exactly one encoding.
pub fn decode(bytes: &[u8]) -> Result<ClusterConfig, CanonicalError> {
    let (mut config, mut rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(bytes)?;
    if let [POWER_TRAILER, list @ ..] = rest {
        let (power, after): (Vec<Power>, &[u8]) = postcard::take_from_bytes(list)?;
        if power.len() != config.vms.len() {
            return Err(CanonicalError::PowerCount {
                entries: power.len(),
                vms: config.vms.len(),
            });
        }
        for (vm, p) in config.vms.iter_mut().zip(power) {
            vm.power = p;
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(CanonicalError::Trailing(rest.len()));
    }
    if encode(&config) != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let other = [&on[..], &[2]].concat();
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
}
