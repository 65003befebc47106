//! `with_added`: what a running host takes from a newer config, and the
//! cases it refuses (a reboot).

use super::*;
use crate::model::{HostGroup, Vm};

fn example() -> ClusterConfig {
    crate::parse(include_str!("../../examples/cluster.toml"))
        .unwrap()
        .config
}

/// The example with VM `web` (its own region, slot 5, affinity by group).
fn newer() -> ClusterConfig {
    let mut c = example();
    c.cluster.generation += 1;
    let mut web: Vm = c.vms[0].clone();
    web.name = "web".into();
    web.mac = "52:54:00:12:34:57".into();
    web.ip = "198.51.100.11/24".into();
    web.disk_region = "web-disk".into();
    web.slot = Some(5);
    web.affinity = Affinity {
        hosts: vec![],
        groups: vec!["pair".into()],
    };
    c.host_groups.push(HostGroup {
        name: "pair".into(),
        hosts: vec!["host-c".into(), "host-a".into()],
    });
    c.storage.regions.push(NamedRegion {
        name: "web-disk".into(),
        offset_mib: 96,
        size_mib: 64,
    });
    // Listed first: its position (0) is not its slot.
    c.vms.insert(0, web);
    validate::validate(&c).expect("the newer config is valid");
    c
}

#[test]
fn the_vm_comes_with_its_slot_region_and_resolved_affinity() {
    let (running, newer) = (example(), newer());
    let out = with_added(&running, &newer, "web").unwrap();
    assert_eq!(out.vms.len(), running.vms.len() + 1);
    let web = out.vms.last().unwrap();
    assert_eq!(web.slot, Some(5), "the newer config's slot, written out");
    assert_eq!(out.slot_of("web"), Some(5));
    assert_eq!(
        out.slot_of("kv"),
        running.slot_of("kv"),
        "kv keeps its slot"
    );
    assert_eq!(
        web.affinity,
        Affinity {
            hosts: vec!["host-a".into(), "host-c".into()],
            groups: vec![],
        },
        "the group resolved in the config's host order"
    );
    assert!(out.storage.regions.iter().any(|r| r.name == "web-disk"));
    assert_eq!(out.cluster.generation, running.cluster.generation);
    assert!(out.host_groups.is_empty() == running.host_groups.is_empty());
}

#[test]
fn a_vm_of_the_running_config_or_none_of_the_newer_is_refused() {
    let (running, newer) = (example(), newer());
    let e = with_added(&running, &newer, "kv").unwrap_err();
    assert!(e.contains("running config already"), "{e}");
    let e = with_added(&running, &newer, "nope").unwrap_err();
    assert!(e.contains("not in config generation"), "{e}");
}

#[test]
fn a_slot_the_running_config_gives_another_vm_is_refused() {
    let (running, mut newer) = (example(), newer());
    // kv was removed (while off) and web took its slot 0.
    newer.vms.retain(|v| v.name != "kv");
    newer.vms[0].slot = Some(0);
    newer.storage.regions.retain(|r| r.name != "kv-disk");
    validate::validate(&newer).unwrap();
    let e = with_added(&running, &newer, "web").unwrap_err();
    assert!(e.contains("fencing slot 0 is vms[kv]'s"), "{e}");
}

#[test]
fn a_region_that_differs_or_overlaps_is_refused() {
    let running = example();
    let mut newer = newer();
    let kv = (newer.storage.regions.iter_mut())
        .find(|r| r.name == "kv-disk")
        .unwrap();
    kv.size_mib += 1;
    newer.vms[0].disk_region = "kv-disk".into();
    newer.storage.regions.retain(|r| r.name != "web-disk");
    let e = with_added(&running, &newer, "web").unwrap_err();
    assert!(e.contains("storage.regions[kv-disk] differs"), "{e}");

    let mut newer = self::newer();
    let kv = running.storage.regions[0].clone();
    let web = (newer.storage.regions.iter_mut())
        .find(|r| r.name == "web-disk")
        .unwrap();
    web.offset_mib = kv.offset_mib;
    // The newer config alone is invalid too; the running host must refuse
    // it on its own, whatever was validated before.
    let e = with_added(&running, &newer, "web").unwrap_err();
    assert!(e.contains("running config is invalid"), "{e}");
}

#[test]
fn an_address_taken_in_the_running_config_is_refused() {
    let running = example();
    let mut newer = newer();
    // kv moved to another address in the newer config (needs a reboot
    // there), and web took kv's: on a host that runs kv, both would answer.
    let kv_ip = running.vms[0].ip.clone();
    newer.vms[1].ip = "198.51.100.12/24".into();
    newer.vms[0].ip = kv_ip;
    validate::validate(&newer).unwrap();
    let e = with_added(&running, &newer, "web").unwrap_err();
    assert!(e.contains("running config is invalid"), "{e}");
}
