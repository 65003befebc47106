//! `hosts[].mgmt`: the optional management NIC. One test per rule, each
//! breaking a valid config with management NICs in one way.

use super::*;

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

/// The example with a management NIC on every host: 203.0.113.N/24, MAC
/// 52:54:00:f9:00:0N.
fn with_mgmt() -> ClusterConfig {
    let mut c = parse(EXAMPLE).unwrap().config;
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.mgmt = Some(Interface {
            mac: format!("52:54:00:f9:00:{:02x}", i + 1),
            addr: format!("203.0.113.{}/24", i + 1),
        });
    }
    c
}

fn mgmt(c: &mut ClusterConfig, i: usize) -> &mut Interface {
    c.hosts[i].mgmt.as_mut().unwrap()
}

fn refused(edit: impl FnOnce(&mut ClusterConfig)) -> (String, String) {
    let mut c = with_mgmt();
    edit(&mut c);
    match validate(&c) {
        Err(ConfigError::Invalid { path, problem }) => (path, problem),
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

fn assert_refused(edit: impl FnOnce(&mut ClusterConfig), path: &str, words: &[&str]) {
    let (p, m) = refused(edit);
    assert_eq!(p, path, "message: {m}");
    for w in words {
        assert!(m.contains(w), "{p}: {m:?} lacks {w:?}");
    }
}

#[test]
fn management_nics_are_optional_and_valid_without_warnings() {
    assert!(validate(&with_mgmt()).unwrap().is_empty());
    let mut some = with_mgmt();
    some.hosts[1].mgmt = None;
    assert!(validate(&some).unwrap().is_empty());
}

#[test]
fn parsed_from_toml_like_ft_and_vm() {
    let line = "vm = { mac = \"52:54:00:f8:00:02\", addr = \"198.51.100.2/24\" }\n";
    assert!(EXAMPLE.contains(line));
    let text = EXAMPLE.replacen(
        line,
        &format!("{line}mgmt = {{ mac = \"52:54:00:f9:00:02\", addr = \"203.0.113.2/24\" }}\n"),
        1,
    );
    let c = parse(&text).unwrap().config;
    let m = c.hosts[1].mgmt.as_ref().unwrap();
    assert_eq!(
        (m.mac.as_str(), m.addr.as_str()),
        ("52:54:00:f9:00:02", "203.0.113.2/24")
    );
    assert!(c.hosts[0].mgmt.is_none() && c.hosts[2].mgmt.is_none());
    let typo = text.replacen("mgmt = { mac", "mgmt = { mca", 1);
    assert!(parse(&typo)
        .unwrap_err()
        .to_string()
        .contains("unknown field `mca`"));
}

#[test]
fn bad_mac_and_address_name_the_field() {
    assert_refused(
        |c| mgmt(c, 1).mac = "52:54:00:f9:00".into(),
        "hosts[1].mgmt.mac",
        &["not a MAC address"],
    );
    assert_refused(
        |c| mgmt(c, 1).mac = "01:54:00:f9:00:02".into(),
        "hosts[1].mgmt.mac",
        &["multicast"],
    );
    assert_refused(
        |c| mgmt(c, 2).addr = "203.0.113.3".into(),
        "hosts[2].mgmt.addr",
        &["not an IPv4 address with prefix"],
    );
}

#[test]
fn mac_is_unique_across_every_nic_and_vm() {
    assert_refused(
        |c| mgmt(c, 0).mac = "52:54:00:f7:00:01".into(),
        "hosts[0].mgmt.mac",
        &["already used by hosts[0].ft.mac"],
    );
    assert_refused(
        |c| mgmt(c, 2).mac = "52:54:00:f8:00:01".into(),
        "hosts[2].mgmt.mac",
        &["already used by hosts[0].vm.mac"],
    );
    assert_refused(
        |c| mgmt(c, 2).mac = "52:54:00:f9:00:01".into(),
        "hosts[2].mgmt.mac",
        &["already used by hosts[0].mgmt.mac"],
    );
    assert_refused(
        |c| c.vms[0].mac = "52:54:00:f9:00:02".into(),
        "vms[0].mac",
        &["already used by hosts[1].mgmt.mac"],
    );
}

#[test]
fn address_is_unique() {
    assert_refused(
        |c| mgmt(c, 1).addr = "203.0.113.1/24".into(),
        "hosts[1].mgmt.addr",
        &["duplicate address 203.0.113.1: already used by hosts[0].mgmt.addr"],
    );
    assert_refused(
        |c| c.vms[0].ip = "203.0.113.3/24".into(),
        "vms[0].ip",
        &["already used by hosts[2].mgmt.addr"],
    );
}

#[test]
fn subnet_must_not_be_the_ft_or_vm_subnet() {
    // Its own FT subnet.
    assert_refused(
        |c| mgmt(c, 1).addr = "192.0.2.102/24".into(),
        "hosts[1].mgmt.addr",
        &[
            "host host-b: management subnet 192.0.2.0/24 (192.0.2.102/24) overlaps its own FT \
           subnet 192.0.2.0/24 (192.0.2.2/24): the management network needs a subnet of its own",
        ],
    );
    // Its own VM subnet, by a wider prefix that contains it.
    assert_refused(
        |c| mgmt(c, 0).addr = "198.51.0.1/16".into(),
        "hosts[0].mgmt.addr",
        &["host host-a: management subnet 198.51.0.0/16 (198.51.0.1/16) overlaps its own VM subnet 198.51.100.0/24"],
    );
    // Another host's FT subnet (the hosts' own are elsewhere).
    assert_refused(
        |c| {
            c.hosts[2].ft.addr = "10.9.0.3/24".into();
            mgmt(c, 2).addr = "192.0.2.103/24".into();
        },
        "hosts[2].mgmt.addr",
        &[
            "host host-c:",
            "overlaps host-a's (hosts[0]) FT subnet 192.0.2.0/24",
        ],
    );
}

#[test]
fn ftctl_sees_the_subnet_error_at_parse_time() {
    let line = "vm = { mac = \"52:54:00:f8:00:01\", addr = \"198.51.100.1/24\" }\n";
    let text = EXAMPLE.replacen(
        line,
        &format!("{line}mgmt = {{ mac = \"52:54:00:f9:00:01\", addr = \"198.51.100.201/24\" }}\n"),
        1,
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.path(), Some("hosts[0].mgmt.addr"), "{e}");
    assert!(e.to_string().contains("overlaps its own VM subnet"), "{e}");
}
