//! One test per validation rule: each breaks the example config in one way
//! and checks the field path and the problem named.

use super::*;
use crate::model::{Affinity, HostGroup, NamedRegion, Vm};

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

fn base() -> ClusterConfig {
    parse(EXAMPLE).unwrap().config
}

/// Applies `edit` to the example and returns the error (path, message).
fn refused(edit: impl FnOnce(&mut ClusterConfig)) -> (String, String) {
    let mut c = base();
    edit(&mut c);
    match validate(&c) {
        Err(ConfigError::Invalid { path, problem }) => (path, problem),
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

fn assert_refused(edit: impl FnOnce(&mut ClusterConfig), path: &str, words: &str) {
    let (p, m) = refused(edit);
    assert_eq!(p, path, "message: {m}");
    assert!(m.contains(words), "{p}: {m:?} lacks {words:?}");
}

fn second_vm(c: &ClusterConfig) -> Vm {
    let mut v = c.vms[0].clone();
    v.name = "kv2".into();
    v.mac = "52:54:00:12:34:57".into();
    v.ip = "198.51.100.11/24".into();
    v.disk_region = "kv2-disk".into();
    v
}

fn add_region(c: &mut ClusterConfig, name: &str, offset: u64, size: u64) {
    c.storage.regions.push(NamedRegion {
        name: name.into(),
        offset_mib: offset,
        size_mib: size,
    });
}

#[test]
fn example_is_valid_without_warnings() {
    let v = parse(EXAMPLE).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn unknown_field_keeps_line_and_column() {
    let text = EXAMPLE.replace("lag_limit_ms = 500", "lag_limit_ms = 500\nlag_limt = 3");
    let e = parse(&text).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, ConfigError::Toml(_)));
    assert!(s.contains("unknown field `lag_limt`"), "{s}");
    assert!(s.contains("line 13"), "{s}");
}

#[test]
fn wrong_type_keeps_line() {
    let text = EXAMPLE.replace("generation = 1", "generation = \"one\"");
    let s = parse(&text).unwrap_err().to_string();
    assert!(s.contains("line 7"), "{s}");
}

#[test]
fn duplicate_host_id() {
    assert_refused(|c| c.hosts[1].id = 1, "hosts[1].id", "duplicate host id 1");
}

#[test]
fn duplicate_host_name() {
    assert_refused(
        |c| c.hosts[2].name = "host-a".into(),
        "hosts[2].name",
        "already used by hosts[0].name",
    );
}

#[test]
fn duplicate_host_mac() {
    assert_refused(
        |c| c.hosts[1].vm.mac = c.hosts[0].ft.mac.clone(),
        "hosts[1].vm.mac",
        "duplicate MAC",
    );
}

#[test]
fn duplicate_host_address() {
    assert_refused(
        |c| c.hosts[1].ft.addr = "192.0.2.1/24".into(),
        "hosts[1].ft.addr",
        "duplicate address 192.0.2.1",
    );
}

#[test]
fn duplicate_public_key() {
    assert_refused(
        |c| c.hosts[2].public_key = c.hosts[0].public_key.clone(),
        "hosts[2].public_key",
        "duplicate public key",
    );
}

#[test]
fn bad_mac() {
    assert_refused(
        |c| c.hosts[1].ft.mac = "52:54:00:f7:00".into(),
        "hosts[1].ft.mac",
        "not a MAC address",
    );
    assert_refused(
        |c| c.hosts[1].ft.mac = "01:00:5e:00:00:01".into(),
        "hosts[1].ft.mac",
        "multicast",
    );
}

#[test]
fn bad_cidr() {
    for bad in [
        "192.0.2.9",
        "192.0.2.9/33",
        "192.0.2/24",
        "192.0.2.9/+4",
        "0.0.0.0/8",
    ] {
        let (p, _) = refused(|c| c.hosts[1].ft.addr = bad.into());
        assert_eq!(p, "hosts[1].ft.addr", "{bad}");
    }
}

#[test]
fn bad_hex_key() {
    for bad in ["abcd", "zz".repeat(32).as_str(), &"00".repeat(33)] {
        assert_refused(
            |c| c.hosts[0].public_key = bad.into(),
            "hosts[0].public_key",
            "32-byte",
        );
    }
}

#[test]
fn host_id_out_of_range() {
    assert_refused(|c| c.hosts[0].id = 0, "hosts[0].id", "out of range");
    assert_refused(|c| c.hosts[0].id = 256, "hosts[0].id", "out of range");
}

#[test]
fn vm_unknown_region() {
    assert_refused(
        |c| c.vms[0].disk_region = "nope".into(),
        "vms[0].disk_region",
        "unknown storage region",
    );
}

#[test]
fn vm_unknown_host() {
    assert_refused(
        |c| c.vms[0].affinity.hosts = vec!["host-x".into()],
        "vms[0].affinity.hosts[0]",
        "unknown host \"host-x\"",
    );
}

#[test]
fn vm_unknown_group() {
    assert_refused(
        |c| c.vms[0].affinity.groups = vec!["rack-9".into()],
        "vms[0].affinity.groups[0]",
        "unknown host group",
    );
}

#[test]
fn group_unknown_host() {
    assert_refused(
        |c| c.host_groups[0].hosts.push("host-q".into()),
        "host_groups[0].hosts[2]",
        "unknown host",
    );
}

#[test]
fn duplicate_group_name() {
    assert_refused(
        |c| c.host_groups.push(c.host_groups[0].clone()),
        "host_groups[1].name",
        "duplicate group name",
    );
}

#[test]
fn regions_overlap_each_other() {
    assert_refused(
        |c| add_region(c, "other", 70, 10),
        "storage.regions[1]",
        "overlaps storage.regions[0]",
    );
}

#[test]
fn region_overlaps_fencing() {
    assert_refused(
        |c| c.storage.regions[0].offset_mib = 8,
        "storage.regions[0]",
        "overlaps storage.fencing",
    );
}

#[test]
fn region_at_offset_zero() {
    // The fencing area elsewhere, so only the region's offset is wrong.
    assert_refused(
        |c| {
            c.storage.fencing.offset_mib = 200;
            c.storage.regions[0].offset_mib = 0;
        },
        "storage.regions[0].offset_mib",
        "must not start at offset 0 of the shared device",
    );
    let mut c = base();
    c.storage.fencing.offset_mib = 200;
    c.storage.regions[0].offset_mib = 1;
    validate(&c).unwrap();
}

#[test]
fn region_past_storage_end() {
    assert_refused(
        |c| add_region(c, "other", 200, 57),
        "storage.regions[1]",
        "runs past storage.size_mib",
    );
    assert_refused(
        |c| add_region(c, "other", u64::MAX, 2),
        "storage.regions[1]",
        "runs past",
    );
}

#[test]
fn zero_sizes() {
    assert_refused(
        |c| c.storage.size_mib = 0,
        "storage.size_mib",
        "greater than 0",
    );
    assert_refused(
        |c| c.storage.fencing.size_mib = 0,
        "storage.fencing.size_mib",
        "greater than 0",
    );
    assert_refused(
        |c| c.storage.regions[0].size_mib = 0,
        "storage.regions[0].size_mib",
        "greater than 0",
    );
}

#[test]
fn timeout_not_larger_than_interval() {
    assert_refused(
        |c| c.timing.failure_timeout_ms = 100,
        "timing.failure_timeout_ms",
        "must be larger than timing.heartbeat_interval_ms",
    );
}

#[test]
fn zero_interval() {
    assert_refused(
        |c| c.timing.heartbeat_interval_ms = 0,
        "timing.heartbeat_interval_ms",
        "greater than 0",
    );
}

#[test]
fn zero_lag_limit() {
    assert_refused(
        |c| c.timing.lag_limit_ms = 0,
        "timing.lag_limit_ms",
        "greater than 0",
    );
}

#[test]
fn vm_memory_zero_or_absurd() {
    assert_refused(
        |c| c.vms[0].memory_mib = 0,
        "vms[0].memory_mib",
        "out of range",
    );
    assert_refused(
        |c| c.vms[0].memory_mib = MAX_VM_MEMORY_MIB + 1,
        "vms[0].memory_mib",
        "out of range",
    );
}

#[test]
fn image_the_release_does_not_ship() {
    let (p, m) = refused(|c| c.vms[0].image = "ubuntu".into());
    assert_eq!(p, "vms[0].image");
    assert_eq!(
        m,
        "unknown guest image \"ubuntu\": this release ships \"kv-guest\""
    );
    // The second VM is named by its index.
    assert_refused(
        |c| {
            add_region(c, "kv2-disk", 80, 16);
            let mut v = second_vm(c);
            v.image = "kv-guest.elf".into();
            c.vms.push(v);
        },
        "vms[1].image",
        "this release ships \"kv-guest\"",
    );
}

#[test]
fn memory_below_the_image_minimum() {
    let (p, m) = refused(|c| c.vms[0].memory_mib = 4);
    assert_eq!(p, "vms[0].memory_mib");
    assert_eq!(
        m,
        "4 MiB is too little for image \"kv-guest\": it needs at least 8 MiB"
    );
    let mut c = base();
    c.vms[0].memory_mib = crate::images::KV_GUEST.min_memory_mib;
    assert!(validate(&c).unwrap().is_empty());
}

#[test]
fn duplicate_vm_name() {
    assert_refused(
        |c| {
            let mut v = second_vm(c);
            v.name = "kv".into();
            add_region(c, "kv2-disk", 80, 8);
            c.vms.push(v);
        },
        "vms[1].name",
        "duplicate VM name",
    );
}

#[test]
fn duplicate_vm_mac() {
    assert_refused(
        |c| {
            let mut v = second_vm(c);
            v.mac = c.vms[0].mac.clone();
            add_region(c, "kv2-disk", 80, 8);
            c.vms.push(v);
        },
        "vms[1].mac",
        "already used by vms[0].mac",
    );
}

#[test]
fn duplicate_vm_ip() {
    assert_refused(
        |c| {
            let mut v = second_vm(c);
            v.ip = c.vms[0].ip.clone();
            add_region(c, "kv2-disk", 80, 8);
            c.vms.push(v);
        },
        "vms[1].ip",
        "already used by vms[0].ip",
    );
}

#[test]
fn two_vms_on_one_region() {
    assert_refused(
        |c| {
            let mut v = second_vm(c);
            v.disk_region = "kv-disk".into();
            c.vms.push(v);
        },
        "vms[1].disk_region",
        "duplicate disk region",
    );
}

#[test]
fn vm_ip_collides_with_host() {
    assert_refused(
        |c| c.vms[0].ip = "198.51.100.2/24".into(),
        "vms[0].ip",
        "already used by hosts[1].vm.addr",
    );
}

#[test]
fn vm_mac_collides_with_host() {
    assert_refused(
        |c| c.vms[0].mac = c.hosts[2].vm.mac.clone(),
        "vms[0].mac",
        "already used by hosts[2].vm.mac",
    );
}

#[test]
fn empty_cluster_name() {
    assert_refused(
        |c| c.cluster.name.clear(),
        "cluster.name",
        "must not be empty",
    );
}

#[test]
fn bad_names_are_refused() {
    assert_refused(
        |c| c.vms[0].image = "../../etc/passwd".into(),
        "vms[0].image",
        "may use only",
    );
    assert_refused(
        |c| c.hosts[0].name = "a b".into(),
        "hosts[0].name",
        "may use only",
    );
}

#[test]
fn no_hosts() {
    assert_refused(
        |c| {
            c.hosts.clear();
            c.host_groups.clear();
            c.vms.clear();
        },
        "hosts",
        "at least 1 host",
    );
}

#[test]
fn bad_device_path() {
    assert_refused(
        |c| c.storage.device = DeviceLocator::Path("/etc/shadow".into()),
        "storage.device.path",
        "not under /dev/",
    );
    assert_refused(
        |c| c.storage.device = DeviceLocator::Serial(" ".into()),
        "storage.device.serial",
        "must not be empty",
    );
}

#[test]
fn affinity_of_one_host_is_a_warning() {
    let mut c = base();
    c.vms[0].affinity = Affinity {
        hosts: vec!["host-a".into()],
        groups: vec![],
    };
    let w = validate(&c).unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].path, "vms[0].affinity");
    assert_eq!(
        w[0].message,
        "VM kv will run unprotected: its affinity allows only host-a"
    );
}

#[test]
fn affinity_of_an_empty_group_is_an_error() {
    assert_refused(
        |c| {
            c.host_groups.push(HostGroup {
                name: "empty".into(),
                hosts: vec![],
            });
            c.vms[0].affinity = Affinity {
                hosts: vec![],
                groups: vec!["empty".into()],
            };
        },
        "vms[0].affinity",
        "allows no host",
    );
}

#[test]
fn empty_affinity_means_every_host() {
    let mut c = base();
    c.vms[0].affinity = Affinity::default();
    assert!(validate(&c).unwrap().is_empty());
    assert_eq!(allowed_hosts(&c, &c.vms[0]).len(), 3);
    // A single-host cluster: every VM is unprotected.
    c.hosts.truncate(1);
    c.host_groups.clear();
    let w = validate(&c).unwrap();
    assert!(w[0].message.contains("allows only host-a"), "{w:?}");
}

/// The example with its `affinity` line removed.
fn example_without_affinity() -> String {
    let line = "affinity = { groups = [\"rack-1\"], hosts = [\"host-c\"] }\n";
    assert!(
        EXAMPLE.contains(line),
        "examples/cluster.toml changed its affinity line"
    );
    EXAMPLE.replace(line, "")
}

#[test]
fn absent_affinity_is_accepted_and_allows_every_host() {
    let v = parse(&example_without_affinity()).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    assert_eq!(v.config.vms[0].affinity, Affinity::default());
    let all: Vec<&str> = allowed_hosts(&v.config, &v.config.vms[0])
        .into_iter()
        .collect();
    assert_eq!(all, ["host-a", "host-b", "host-c"]);
}

#[test]
fn absent_affinity_is_the_same_config_as_an_empty_rule() {
    let absent = parse(&example_without_affinity()).unwrap().config;
    let text = EXAMPLE.replace(
        "affinity = { groups = [\"rack-1\"], hosts = [\"host-c\"] }",
        "affinity = {}",
    );
    let empty = parse(&text).unwrap().config;
    assert_eq!(absent, empty);
    assert_eq!(
        crate::canonical::encode(&absent),
        crate::canonical::encode(&empty)
    );
}

#[test]
fn ft_addresses_in_different_subnets_are_a_warning() {
    let mut c = base();
    c.hosts[2].ft.addr = "203.0.113.3/24".into();
    let w = validate(&c).unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].path, "hosts[2].ft.addr");
    assert!(
        w[0].message.starts_with(
            "FT addresses of host-a (192.0.2.1/24, subnet 192.0.2.0/24) and host-c \
             (203.0.113.3/24, subnet 203.0.113.0/24) are not in one subnet"
        ),
        "{}",
        w[0].message
    );
    // The odd host first: every later host is named against it.
    let mut c = base();
    c.hosts[0].ft.addr = "203.0.113.1/24".into();
    let w = validate(&c).unwrap();
    let paths: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["hosts[1].ft.addr", "hosts[2].ft.addr"]);
    assert!(w
        .iter()
        .all(|w| w.message.contains("host-a (203.0.113.1/24")));
}

#[test]
fn ft_subnet_is_given_by_each_prefix() {
    // Different /24s inside one /8, each written as /8: one subnet, no warning.
    let mut c = base();
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.ft.addr = format!("10.{i}.0.1/8");
    }
    assert!(validate(&c).unwrap().is_empty());
    // host-a's and host-c's /16 hold 192.0.2.2, but host-b's /30 holds neither
    // of them: no way back, so host-b warns against host-a and host-c against host-b.
    let mut c = base();
    c.hosts[0].ft.addr = "192.0.3.1/16".into();
    c.hosts[1].ft.addr = "192.0.2.2/30".into();
    c.hosts[2].ft.addr = "192.0.3.3/16".into();
    let w = validate(&c).unwrap();
    let paths: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["hosts[1].ft.addr", "hosts[2].ft.addr"], "{w:?}");
    let ab =
        "host-a (192.0.3.1/16, subnet 192.0.0.0/16) and host-b (192.0.2.2/30, subnet 192.0.2.0/30)";
    assert!(w[0].message.contains(ab), "{}", w[0].message);
    assert!(
        w[1].message.contains("host-b (192.0.2.2/30"),
        "{}",
        w[1].message
    );
    // A /32 is a subnet of one: every pair warns, once per later host.
    let mut c = base();
    c.hosts[1].ft.addr = "192.0.2.2/32".into();
    assert_eq!(validate(&c).unwrap().len(), 2);
}

#[test]
fn cpu_baseline_defaults_to_x86_64_v1() {
    use crate::model::{CpuLevel, DEFAULT_PHYS_ADDR_BITS};
    let c = base();
    assert_eq!(c.cluster.cpu.level, CpuLevel::V1);
    assert!(c.cluster.cpu.features.is_empty());
    assert_eq!(c.cluster.cpu.phys_addr_bits, DEFAULT_PHYS_ADDR_BITS);
}

#[test]
fn cpu_baseline_parses_level_and_features() {
    use crate::model::{CpuFeature, CpuLevel};
    let text = EXAMPLE.replace(
        "generation = 1\n",
        "generation = 1\ncpu = { level = \"x86-64-v3\", features = [\"aes\", \"sha_ni\"], phys_addr_bits = 40 }\n",
    );
    let c = parse(&text).unwrap().config;
    assert_eq!(c.cluster.cpu.level, CpuLevel::V3);
    assert_eq!(c.cluster.cpu.features, [CpuFeature::Aes, CpuFeature::ShaNi]);
    assert_eq!(c.cluster.cpu.phys_addr_bits, 40);
    assert_eq!(
        c.cluster.cpu.to_string(),
        "x86-64-v3 +aes +sha_ni, 40-bit physical addresses"
    );
}

#[test]
fn cpu_feature_that_can_never_be_exposed_is_a_toml_error() {
    // RDRAND differs between runs: it is not a selectable feature at all.
    let text = EXAMPLE.replace(
        "generation = 1\n",
        "generation = 1\ncpu = { features = [\"rdrand\"] }\n",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("unknown variant `rdrand`"), "{e}");
    let text = EXAMPLE.replace(
        "generation = 1\n",
        "generation = 1\ncpu = { level = \"v5\" }\n",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("unknown variant `v5`"), "{e}");
}

#[test]
fn cpu_feature_listed_twice() {
    use crate::model::CpuFeature;
    assert_refused(
        |c| c.cluster.cpu.features = vec![CpuFeature::Aes, CpuFeature::Smep, CpuFeature::Aes],
        "cluster.cpu.features[2]",
        "\"aes\" is listed twice",
    );
}

#[test]
fn cpu_phys_addr_bits_out_of_range() {
    assert_refused(
        |c| c.cluster.cpu.phys_addr_bits = 53,
        "cluster.cpu.phys_addr_bits",
        "53 is outside 36..=52",
    );
    assert_refused(
        |c| c.cluster.cpu.phys_addr_bits = 20,
        "cluster.cpu.phys_addr_bits",
        "20 is outside",
    );
}

fn hooks(names: &[&str]) -> Option<crate::model::TestSection> {
    Some(crate::model::TestSection {
        hooks: names.iter().map(|s| s.to_string()).collect(),
    })
}

#[test]
fn test_hooks_are_allowed_with_a_loud_warning() {
    let text = format!("{EXAMPLE}\n[test]\nhooks = [\"vmctl\", \"crash:heartbeat\"]\n");
    let v = parse(&text).unwrap();
    assert_eq!(
        v.config.test_hooks(),
        [
            crate::hooks::TestHook::Vmctl,
            crate::hooks::TestHook::Crash("heartbeat".into())
        ]
    );
    assert_eq!(v.warnings.len(), 1);
    assert_eq!(v.warnings[0].path, "test.hooks");
    let m = &v.warnings[0].message;
    assert!(
        m.starts_with("TEST HOOKS ENABLED (vmctl, crash:heartbeat): this config is for tests only, NOT FOR PRODUCTION: anyone at a host's serial console"),
        "{m}"
    );
    // Without the section: no hook, no warning.
    assert!(base().test_hooks().is_empty());
}

#[test]
fn test_hooks_must_be_known_unique_and_present() {
    assert_refused(|c| c.test = hooks(&[]), "test.hooks", "is empty");
    assert_refused(
        |c| c.test = hooks(&["vmctl", "ft.fault=crash:heartbeat"]),
        "test.hooks[1]",
        "unknown test hook \"ft.fault=crash:heartbeat\"",
    );
    assert_refused(
        |c| c.test = hooks(&["crash:sshd"]),
        "test.hooks[0]",
        "names no daemon",
    );
    assert_refused(
        |c| c.test = hooks(&["vmctl", "vmctl"]),
        "test.hooks[1]",
        "duplicate test hook vmctl: already used by test.hooks[0]",
    );
    let e = parse(&format!("{EXAMPLE}\n[test]\nhook = [\"vmctl\"]\n")).unwrap_err();
    assert!(e.to_string().contains("unknown field `hook`"), "{e}");
}

/// The example with `line` added to its (only) VM.
fn example_vm_with(line: &str) -> String {
    assert!(EXAMPLE.ends_with("affinity = { groups = [\"rack-1\"], hosts = [\"host-c\"] }\n"));
    format!("{EXAMPLE}{line}\n")
}

#[test]
fn power_defaults_to_on_and_parses_on_and_off() {
    use crate::model::Power;
    assert_eq!(base().vms[0].power, Power::On);
    let on = parse(&example_vm_with("power = \"on\"")).unwrap();
    assert_eq!(on.config, base());
    let off = parse(&example_vm_with("power = \"off\"")).unwrap();
    assert!(off.warnings.is_empty(), "{:?}", off.warnings);
    assert_eq!(off.config.vms[0].power, Power::Off);
    assert_eq!(Power::Off.name(), "off");
}

#[test]
fn bad_power_names_the_vm_and_the_field() {
    for (value, shown) in [
        ("\"maybe\"", "\"maybe\""),
        ("\"Off\"", "\"Off\""),
        ("0", "0"),
    ] {
        let e = parse(&example_vm_with(&format!("power = {value}"))).unwrap_err();
        assert_eq!(e.path(), Some("vms[0].power"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("vms[0].power: VM \"kv\": {shown} is neither \"on\" nor \"off\"")
        );
    }
    // Another TOML error stays toml's own, with its line.
    let text = example_vm_with("power = \"off\"").replace("generation = 1", "generation = \"one\"");
    assert!(matches!(parse(&text), Err(ConfigError::Toml(_))));
}

#[test]
fn power_is_written_back_only_when_off() {
    let text = toml::to_string(&base()).unwrap();
    assert!(!text.contains("power"), "{text}");
    let off = parse(&example_vm_with("power = \"off\"")).unwrap().config;
    let text = toml::to_string(&off).unwrap();
    assert!(text.contains("power = \"off\""), "{text}");
    assert_eq!(parse(&text).unwrap().config, off);
    // The runtime config init hands the daemons is JSON: power survives it.
    let json = serde_json::to_string(&off).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), off);
}
