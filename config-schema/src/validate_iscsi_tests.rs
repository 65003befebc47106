//! `storage.device.iscsi` and `hosts[].storage`. One test per rule, each
//! breaking a valid iSCSI config in one way (and accepting its edges).

use super::*;
use crate::model::{Chap, IscsiLun};

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

/// The example on an iSCSI LUN: portal 10.0.2.100:3260, storage NICs
/// 10.0.2.1N/24 with MACs 52:54:00:fa:00:0N.
fn with_iscsi() -> ClusterConfig {
    let mut c = parse(EXAMPLE).unwrap().config;
    c.storage.device = DeviceLocator::Iscsi(IscsiLun {
        portal: "10.0.2.100:3260".into(),
        target: "iqn.2026-01.test.ftappliance:shared".into(),
        lun: 1,
        tpgt: 1,
        initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
        chap: None,
    });
    for (i, h) in c.hosts.iter_mut().enumerate() {
        h.storage = Some(Interface {
            mac: format!("52:54:00:fa:00:{:02x}", i + 1),
            addr: format!("10.0.2.{}/24", 11 + i),
        });
    }
    c
}

fn lun(c: &mut ClusterConfig) -> &mut IscsiLun {
    match &mut c.storage.device {
        DeviceLocator::Iscsi(l) => l,
        _ => unreachable!(),
    }
}

fn nic(c: &mut ClusterConfig, i: usize) -> &mut Interface {
    c.hosts[i].storage.as_mut().unwrap()
}

/// Renames host `i` and drops the groups and affinity that name hosts.
fn rename(c: &mut ClusterConfig, i: usize, name: &str) {
    c.hosts[i].name = name.into();
    c.host_groups.clear();
    c.vms[0].affinity = Default::default();
}

fn chap(user: &str, secret: &str) -> Option<Chap> {
    Some(Chap {
        user: user.into(),
        secret: secret.into(),
    })
}

fn assert_valid(edit: impl FnOnce(&mut ClusterConfig)) {
    let mut c = with_iscsi();
    edit(&mut c);
    assert_eq!(validate(&c).unwrap(), vec![]);
}

fn assert_refused(edit: impl FnOnce(&mut ClusterConfig), path: &str, words: &[&str]) {
    let mut c = with_iscsi();
    edit(&mut c);
    let (p, m) = match validate(&c) {
        Err(ConfigError::Invalid { path, problem }) => (path, problem),
        other => panic!("expected a rule violation, got {other:?}"),
    };
    assert_eq!(p, path, "message: {m}");
    for w in words {
        assert!(m.contains(w), "{p}: {m:?} lacks {w:?}");
    }
}

#[test]
fn an_iscsi_config_is_valid_without_warnings() {
    assert_valid(|_| {});
    assert_valid(|c| lun(c).chap = chap("ft", "twelve+bytes"));
    assert_valid(|c| lun(c).target = "eui.02004567A425678D".into());
}

#[test]
fn parsed_from_toml_as_operators_write_it() {
    let device = "device = { serial = \"FTSHARED\" }\n";
    assert!(EXAMPLE.contains(device));
    let iscsi = "device = { iscsi = { portal = \"10.0.2.100:3260\", target = \
                 \"iqn.2026-01.test.ftappliance:shared\", lun = 1, initiator_prefix = \
                 \"iqn.2026-01.test.ftappliance\" } }\n";
    let mut text = EXAMPLE.replacen(device, iscsi, 1);
    for i in 1..=3 {
        let line =
            format!("vm = {{ mac = \"52:54:00:f8:00:0{i}\", addr = \"198.51.100.{i}/24\" }}\n");
        assert!(text.contains(&line));
        let storage = format!(
            "storage = {{ mac = \"52:54:00:fa:00:0{i}\", addr = \"10.0.2.{}/24\" }}\n",
            10 + i
        );
        text = text.replacen(&line, &format!("{line}{storage}"), 1);
    }
    assert_eq!(parse(&text).unwrap().config, with_iscsi());
    let with_chap = text.replacen(
        "lun = 1,",
        "lun = 1, chap = { user = \"ft\", secret = \"twelve+bytes\" },",
        1,
    );
    let mut want = with_iscsi();
    lun(&mut want).chap = chap("ft", "twelve+bytes");
    assert_eq!(parse(&with_chap).unwrap().config, want);
    let typo = text.replacen("lun = 1", "lnu = 1", 1);
    assert!(parse(&typo)
        .unwrap_err()
        .to_string()
        .contains("unknown field `lnu`"));
}

#[test]
fn portal_is_ipv4_with_a_port() {
    assert_valid(|c| lun(c).portal = "10.0.2.100:13260".into());
    for bad in [
        "10.0.2.100",
        "iscsi.example:3260",
        "[::1]:3260",
        "10.0.2.100:65536",
    ] {
        assert_refused(
            |c| lun(c).portal = bad.into(),
            "storage.device.iscsi.portal",
            &["is not an IPv4 address and port (a.b.c.d:port)"],
        );
    }
    assert_refused(
        |c| lun(c).portal = "10.0.2.100:0".into(),
        "storage.device.iscsi.portal",
        &["port 0"],
    );
    assert_refused(
        |c| lun(c).portal = "127.0.0.1:3260".into(),
        "storage.device.iscsi.portal",
        &["127.0.0.1 cannot be a portal's address"],
    );
}

#[test]
fn target_is_an_iscsi_name() {
    assert_refused(
        |c| lun(c).target = "iqn.2026-01.test.FTappliance:shared".into(),
        "storage.device.iscsi.target",
        &["only a-z 0-9 - . :"],
    );
    assert_refused(
        |c| lun(c).target = "shared".into(),
        "storage.device.iscsi.target",
        &["neither an IQN", "nor an EUI name"],
    );
    assert_refused(
        |c| lun(c).target = String::new(),
        "storage.device.iscsi.target",
        &["neither an IQN"],
    );
}

#[test]
fn lun_is_at_most_16383() {
    assert_valid(|c| lun(c).lun = 0);
    assert_valid(|c| lun(c).lun = 16383);
    assert_refused(
        |c| lun(c).lun = 16384,
        "storage.device.iscsi.lun",
        &["16384 is above 16383", "peripheral/flat"],
    );
}

#[test]
fn initiator_prefix_is_an_iqn_without_unique_part() {
    assert_refused(
        |c| lun(c).initiator_prefix = "iqn.2026-01.test.ftappliance:hosts".into(),
        "storage.device.iscsi.initiator_prefix",
        &["has a ':'"],
    );
    assert_refused(
        |c| lun(c).initiator_prefix = "eui.02004567A425678D".into(),
        "storage.device.iscsi.initiator_prefix",
        &["not an IQN"],
    );
    assert_refused(
        |c| lun(c).initiator_prefix = "iqn.2026-1.test".into(),
        "storage.device.iscsi.initiator_prefix",
        &["date yyyy-mm"],
    );
}

#[test]
fn host_names_make_valid_initiator_names() {
    assert_valid(|c| rename(c, 1, "host-b.rack-1"));
    assert_refused(
        |c| rename(c, 1, "Host_B"),
        "hosts[1].name",
        &[
            "logs in to the iSCSI target as \"iqn.2026-01.test.ftappliance:Host_B\"",
            "host names may use only a-z 0-9 - .",
        ],
    );
    assert_refused(
        |c| {
            lun(c).initiator_prefix = format!("iqn.2026-01.{}", "x".repeat(200));
            rename(c, 2, &"h".repeat(11));
        },
        "hosts[2].name",
        &["224 bytes"],
    );
}

#[test]
fn chap_user_and_secret() {
    assert_valid(|c| lun(c).chap = chap(&"u".repeat(255), &"s".repeat(255)));
    assert_valid(|c| lun(c).chap = chap("u", "!#$%&'()*+,-./~"));
    assert_refused(
        |c| lun(c).chap = chap("", "twelve+bytes"),
        "storage.device.iscsi.chap.user",
        &["is 0 bytes, not 1..=255"],
    );
    assert_refused(
        |c| lun(c).chap = chap(&"u".repeat(256), "twelve+bytes"),
        "storage.device.iscsi.chap.user",
        &["is 256 bytes"],
    );
    assert_refused(
        |c| lun(c).chap = chap("f t", "twelve+bytes"),
        "storage.device.iscsi.chap.user",
        &["printable ASCII without spaces"],
    );
    assert_refused(
        |c| lun(c).chap = chap("ft", "eleven+byte"),
        "storage.device.iscsi.chap.secret",
        &["is 11 bytes, not 12..=255", "RFC 3720"],
    );
    assert_refused(
        |c| lun(c).chap = chap("ft", &"s".repeat(256)),
        "storage.device.iscsi.chap.secret",
        &["is 256 bytes"],
    );
    assert_refused(
        |c| lun(c).chap = chap("ft", "twelve bytes"),
        "storage.device.iscsi.chap.secret",
        &["printable ASCII without spaces"],
    );
    assert_refused(
        |c| lun(c).chap = chap("ft", "twelve-bytés"),
        "storage.device.iscsi.chap.secret",
        &["printable ASCII without spaces"],
    );
}

#[test]
fn no_message_shows_the_secret() {
    for secret in ["short-secr", "twelve bytes", "a\u{7f}b-twelve-bytes"] {
        let mut c = with_iscsi();
        lun(&mut c).chap = chap("ft", secret);
        let e = validate(&c).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
    }
    let mut c = with_iscsi();
    lun(&mut c).chap = chap("ft", "twelve+bytes");
    let shown = format!("{c:?} {:?} {:?}", c.storage, c.storage.device.redacted());
    assert!(!shown.contains("twelve+bytes"), "{shown}");
    assert!(shown.contains("secret: \"<hidden, 12 bytes>\""), "{shown}");
}

#[test]
fn every_host_needs_a_storage_nic_with_iscsi() {
    assert_refused(
        |c| c.hosts[2].storage = None,
        "hosts[2].storage",
        &["host host-c has no storage NIC", "storage = { mac, addr }"],
    );
}

#[test]
fn no_storage_nic_without_iscsi() {
    let mut c = parse(EXAMPLE).unwrap().config;
    c.hosts[1].storage = Some(Interface {
        // Not even a valid MAC: the first complaint is that it is there at all.
        mac: "52:54:00".into(),
        addr: "10.0.2.12/24".into(),
    });
    match validate(&c) {
        Err(ConfigError::Invalid { path, problem }) => {
            assert_eq!(path, "hosts[1].storage");
            assert_eq!(problem, "only used with an iSCSI shared device");
        }
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

#[test]
fn storage_nic_mac_and_address_are_checked_like_the_others() {
    assert_refused(
        |c| nic(c, 1).mac = "52:54:00:fa:00".into(),
        "hosts[1].storage.mac",
        &["not a MAC address"],
    );
    assert_refused(
        |c| nic(c, 2).addr = "10.0.2.13".into(),
        "hosts[2].storage.addr",
        &["not an IPv4 address with prefix"],
    );
    assert_refused(
        |c| nic(c, 2).addr = "255.255.255.255/24".into(),
        "hosts[2].storage.addr",
        &["cannot be a NIC's address"],
    );
}

#[test]
fn storage_nic_mac_and_address_are_unique_across_every_nic_and_vm() {
    assert_refused(
        |c| nic(c, 0).mac = "52:54:00:f7:00:01".into(),
        "hosts[0].storage.mac",
        &["already used by hosts[0].ft.mac"],
    );
    assert_refused(
        |c| nic(c, 2).mac = "52:54:00:fa:00:01".into(),
        "hosts[2].storage.mac",
        &["already used by hosts[0].storage.mac"],
    );
    assert_refused(
        |c| {
            c.hosts[1].mgmt = Some(Interface {
                mac: "52:54:00:f9:00:02".into(),
                addr: "203.0.113.2/24".into(),
            });
            nic(c, 2).mac = "52:54:00:f9:00:02".into();
        },
        "hosts[2].storage.mac",
        &["already used by hosts[1].mgmt.mac"],
    );
    assert_refused(
        |c| c.vms[0].mac = "52:54:00:fa:00:03".into(),
        "vms[0].mac",
        &["already used by hosts[2].storage.mac"],
    );
    assert_refused(
        |c| nic(c, 1).addr = "10.0.2.11/24".into(),
        "hosts[1].storage.addr",
        &["duplicate address 10.0.2.11: already used by hosts[0].storage.addr"],
    );
    assert_refused(
        |c| c.vms[0].ip = "10.0.2.13/24".into(),
        "vms[0].ip",
        &["already used by hosts[2].storage.addr"],
    );
}

#[test]
fn the_portal_lies_in_every_storage_subnet() {
    // A wider subnet that holds the portal is fine.
    assert_valid(|c| nic(c, 1).addr = "10.0.9.12/16".into());
    assert_refused(
        |c| nic(c, 1).addr = "10.0.3.12/24".into(),
        "hosts[1].storage.addr",
        &[
            "host host-b: the iSCSI portal 10.0.2.100 is not in its storage subnet 10.0.3.0/24 \
             (10.0.3.12/24), and init adds no route",
        ],
    );
    assert_refused(
        |c| nic(c, 2).addr = "10.0.2.13/32".into(),
        "hosts[2].storage.addr",
        &["not in its storage subnet 10.0.2.13/32"],
    );
}

#[test]
fn the_portal_is_no_address_of_the_cluster() {
    assert_refused(
        |c| lun(c).portal = "10.0.2.12:3260".into(),
        "storage.device.iscsi.portal",
        &["10.0.2.12 is the address of hosts[1].storage.addr"],
    );
    assert_refused(
        |c| {
            nic(c, 0).addr = "192.0.2.101/24".into();
            nic(c, 1).addr = "192.0.2.102/24".into();
            nic(c, 2).addr = "192.0.2.103/24".into();
            lun(c).portal = "192.0.2.3:3260".into();
        },
        "storage.device.iscsi.portal",
        &["192.0.2.3 is the address of hosts[2].ft.addr"],
    );
    assert_refused(
        |c| {
            c.vms[0].ip = "10.0.2.100/24".into();
        },
        "storage.device.iscsi.portal",
        &["10.0.2.100 is the address of vms[0].ip"],
    );
}

#[test]
fn a_storage_subnet_is_its_own() {
    // (The portal must stay inside the storage subnet, or that rule speaks
    // first: hence a subnet wide enough to hold both.)
    assert_refused(
        |c| nic(c, 1).addr = "10.0.2.12/0".into(),
        "hosts[1].storage.addr",
        &[
            "host host-b: storage subnet 0.0.0.0/0 (10.0.2.12/0) overlaps its own FT subnet \
           192.0.2.0/24 (192.0.2.2/24): the storage network needs a subnet of its own",
        ],
    );
    assert_refused(
        |c| {
            c.hosts[2].mgmt = Some(Interface {
                mac: "52:54:00:f9:00:03".into(),
                addr: "10.0.0.3/16".into(),
            })
        },
        "hosts[0].storage.addr",
        &["overlaps host-c's (hosts[2]) management subnet 10.0.0.0/16"],
    );
}

#[test]
fn the_portal_group_tag_defaults_to_1() {
    let lun = |text: &str| -> IscsiLun { toml::from_str(text).unwrap() };
    let text = r#"portal = "10.0.2.100:3260"
        target = "iqn.2026-01.test.ftappliance:shared"
        lun = 1
        initiator_prefix = "iqn.2026-01.test.ftappliance""#;
    assert_eq!(lun(text).tpgt, 1);
    assert_eq!(lun(&format!("{text}\ntpgt = 7")).tpgt, 7);
}
