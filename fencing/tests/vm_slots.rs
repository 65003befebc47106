//! VMs added, removed and upgraded on one region file: the header does not
//! name the VMs (layout version 3), so a config with another VM list finds
//! the same region, and each VM's durable generations stay in its slot.

mod common;

use std::sync::Arc;

use common::{file_region, runtime, take_slot};
use config_schema::clock::BootInstant;
use config_schema::ctl::Response;
use config_schema::runtime::RuntimeConfig;
use fencing::agent::{Agent, AgentError, RegionState, ACQUIRE_BOUND};
use fencing::io::BlockIo;
use fencing::layout::{decode_header, Geometry, VERSION};

/// The example cluster (host-a..c, VM kv) with `edit` applied, on `host`.
fn runtime_with(host: &str, edit: impl FnOnce(&mut config_schema::ClusterConfig)) -> RuntimeConfig {
    let mut r = runtime(host);
    edit(&mut r.config);
    config_schema::validate(&r.config).expect("a valid config");
    r
}

/// kv, then `web` appended (its own disk region, MAC and address).
fn add_web(c: &mut config_schema::ClusterConfig) {
    let mut region = c.storage.regions[0].clone();
    region.name = "web-disk".into();
    region.offset_mib += region.size_mib;
    c.storage.regions.push(region);
    let mut web = c.vms[0].clone();
    web.name = "web".into();
    web.disk_region = "web-disk".into();
    web.mac = "52:54:00:12:34:57".into();
    web.ip = "198.51.100.11/24".into();
    c.vms.push(web);
}

/// The three hosts' agents on `io` (a new incarnation each: a reboot),
/// each holding its lease slot (after `n` > 1, once the previous
/// incarnation's lease timed out in the agent's clock).
fn boot(io: &Arc<dyn BlockIo>, rt: impl Fn(&str) -> RuntimeConfig, n: u64) -> Vec<Arc<Agent>> {
    ["host-a", "host-b", "host-c"]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let a = Arc::new(Agent::new(&rt(h), Arc::clone(io), n * 10 + i as u64).unwrap());
            if n == 1 {
                take_slot(&a);
            } else {
                let t = BootInstant::now();
                let mut r = a.renew_once(t);
                for k in 1..=4 {
                    r = a.renew_once(t + a.timing.timeout * k);
                }
                r.result
                    .unwrap_or_else(|e| panic!("{h}: {e} ({:?})", r.lines));
            }
            a
        })
        .collect()
}

fn decided(r: Response) -> (String, u64, String) {
    match r {
        Response::Decided {
            vm,
            generation,
            owner,
            ..
        } => (vm, generation, owner),
        other => panic!("not decided: {other:?}"),
    }
}

fn highest(a: &Arc<Agent>, vm: &str) -> (u64, Option<String>) {
    match a.highest(vm, ACQUIRE_BOUND) {
        Response::Highest {
            generation, owner, ..
        } => (generation, owner),
        other => panic!("no highest for {vm}: {other:?}"),
    }
}

#[test]
fn a_vm_added_then_one_removed_keeps_every_other_vms_generations() {
    let (_d, io) = file_region(512);
    let io: Arc<dyn BlockIo> = io;
    // One VM: kv reaches generation 3 (host-b, then host-c).
    let one = boot(&io, runtime, 1);
    assert_eq!(one[0].init_region().unwrap(), RegionState::Initialized);
    decided(one[1].acquire("kv", 2, 1, ACQUIRE_BOUND));
    let (_, _, owner) = decided(one[2].acquire("kv", 3, 1, ACQUIRE_BOUND));
    let header = io.read(0).unwrap();
    // Every host reboots on a config that adds web: the same header.
    let two = boot(&io, |h| runtime_with(h, add_web), 2);
    for a in &two {
        assert_eq!(a.init_region().unwrap(), RegionState::Found);
    }
    assert_eq!(io.read(0).unwrap(), header);
    assert_eq!(highest(&two[0], "kv"), (3, Some(owner.clone())));
    assert_eq!(highest(&two[0], "web"), (0, None), "web's slot is blank");
    decided(two[0].acquire("web", 1, 2, ACQUIRE_BOUND));
    // kv goes (after it was powered off: config-schema's rule), web says
    // its slot: its generation is where it was, and kv's is still on disk.
    let web_only = |h: &str| {
        runtime_with(h, |c| {
            add_web(c);
            c.vms.remove(0);
            c.storage.regions.remove(0);
            c.vms[0].slot = Some(1);
        })
    };
    let three = boot(&io, web_only, 3);
    assert_eq!(three[1].init_region().unwrap(), RegionState::Found);
    assert_eq!(highest(&three[1], "web"), (1, Some("host-a".into())));
    let (_, g, _) = decided(three[1].acquire("web", 2, 3, ACQUIRE_BOUND));
    assert_eq!(g, 2);
    assert!(matches!(
        three[1].acquire("kv", 4, 3, ACQUIRE_BOUND),
        Response::Error { message } if message.contains("no vm \"kv\"")
    ));
    // A later VM in kv's old slot continues its numbering: generation 4.
    let reuse = |h: &str| {
        runtime_with(h, |c| {
            add_web(c);
            c.vms[0].name = "db".into();
            c.vms[1].slot = Some(1);
        })
    };
    let four = boot(&io, reuse, 4);
    assert_eq!(highest(&four[0], "db"), (3, Some(owner)));
    assert_eq!(decided(four[0].acquire("db", 4, 4, ACQUIRE_BOUND)).1, 4);
}

#[test]
fn a_version_2_header_of_the_same_vms_is_upgraded_in_place_and_another_is_refused() {
    let (_d, io) = file_region(512);
    let io: Arc<dyn BlockIo> = io;
    let a = boot(&io, runtime, 1);
    decided(a[0].acquire("kv", 2, 1, ACQUIRE_BOUND));
    // What a version 2 build wrote for this config: version 2, one VM, the
    // digest of the host names, 0x01 and the VM names.
    let c = runtime("host-a").config;
    let v3 = Geometry::of_config(&c, 512);
    let mut names = Vec::new();
    for n in c
        .hosts
        .iter()
        .map(|h| &h.name)
        .chain([&"\u{1}".to_string()])
    {
        names.extend_from_slice(n.as_bytes());
        if n != "\u{1}" {
            names.push(0);
        }
    }
    names.extend_from_slice(b"kv\0");
    let v2 = Geometry {
        vms: 1,
        names_digest: crc32c::crc32c(&names),
        ..v3
    };
    let mut h = v2.encode_header();
    h[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&h[..508]);
    h[508..].copy_from_slice(&crc.to_le_bytes());
    io.write(0, &h).unwrap();
    // A config with another VM list refuses it, and writes nothing.
    let other = Agent::new(&runtime_with("host-b", add_web), Arc::clone(&io), 7).unwrap();
    assert!(matches!(
        other.init_region(),
        Err(AgentError::Mismatch {
            version: 2,
            vms: 1,
            ..
        })
    ));
    assert_eq!(io.read(0).unwrap(), h);
    // Its own config upgrades it (the first host to renew); kv's
    // generation stays.
    let b = boot(&io, runtime, 2);
    assert_eq!(b[0].init_region().unwrap(), RegionState::Upgraded);
    assert_eq!(b[1].init_region().unwrap(), RegionState::Found);
    let now = decode_header(&io.read(0).unwrap()).unwrap();
    assert_eq!((now.version, now.geometry), (VERSION, v3));
    assert_eq!(b[2].init_region().unwrap(), RegionState::Found);
    assert_eq!(highest(&b[2], "kv"), (2, Some("host-a".into())));
}

#[test]
fn a_vm_added_live_is_learned_in_its_slot_and_decided_as_after_a_reboot() {
    let (_d, io) = file_region(512);
    let io: Arc<dyn BlockIo> = io;
    // Booted on kv alone; web is added live in slot 5 (ftvmm names it).
    let live = boot(&io, runtime, 1);
    live[0].init_region().unwrap();
    let unknown = |a: &Arc<Agent>| match a.highest("web", ACQUIRE_BOUND) {
        Response::Error { message } => message,
        other => panic!("web known before it was learned: {other:?}"),
    };
    assert!(unknown(&live[1]).contains("no vm \"web\""));
    live[0].learn("web", 5).unwrap();
    live[0].learn("web", 5).unwrap(); // again: nothing changes
    assert_eq!(live[0].slot_of("web"), Ok(5));
    assert_eq!(
        decided(live[0].acquire("web", 1, 2, ACQUIRE_BOUND)).2,
        "host-a"
    );
    // host-b learns it from its running list (a fencing restarted since
    // the VM was added learns it there too).
    let running = [config_schema::ctl::RunningVm {
        vm: "web".into(),
        generation: 1,
        slot: Some(5),
    }];
    let epoch = live[1].grant_sent();
    assert_eq!(live[1].on_running(&running, epoch), None);
    assert_eq!(highest(&live[1], "web"), (1, Some("host-a".into())));
    // host-c has not learned it: it neither knows nor races for it.
    assert!(unknown(&live[2]).contains("no vm \"web\""));
    // Refused: kv's slot for web, web in another slot, a slot the region
    // does not hold (16 MiB in 512-byte blocks: 256).
    for (vm, slot, words) in [
        ("other", 0, "fencing slot 0 is vm kv's"),
        (
            "web",
            6,
            "has it in fencing slot 5, the request says slot 6",
        ),
        ("other", 5, "fencing slot 5 is vm web's"),
        ("far", 256, "fencing slot 256 is beyond the 256 slots"),
    ] {
        let e = live[0].learn(vm, slot).unwrap_err();
        assert!(e.contains(words), "{vm} at {slot}: {e}");
    }
    // Every host reboots on the config with web in slot 5: the same blocks.
    let booted = boot(
        &io,
        |h| {
            runtime_with(h, |c| {
                add_web(c);
                c.vms[1].slot = Some(5);
            })
        },
        2,
    );
    assert_eq!(highest(&booted[2], "web"), (1, Some("host-a".into())));
    assert_eq!(decided(booted[2].acquire("web", 2, 2, ACQUIRE_BOUND)).1, 2);
}

#[test]
fn a_slot_beyond_the_region_is_refused_for_that_vm_alone() {
    // 1 MiB in 4 KiB blocks: (256 - 4) / 48 = 5 slots.
    let small = |h: &str| {
        runtime_with(h, |c| {
            c.storage.fencing.size_mib = 1;
            add_web(c);
            c.vms[1].slot = Some(7);
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shared");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let geo = Geometry::of_config(&small("host-a").config, 4096);
    assert_eq!(geo.vms, 5);
    let dev = fencing::io::Device::open(&p).unwrap();
    let io: Arc<dyn BlockIo> =
        Arc::new(fencing::io::RegionIo::new(dev, 0, 4096, geo.blocks()).unwrap());
    let a = boot(&io, small, 1);
    match a[0].acquire("web", 1, 1, ACQUIRE_BOUND) {
        Response::Error { message } => assert!(
            message.contains("fencing slot 7 is beyond the 5 slots the fencing region holds (1 MiB in 4096-byte blocks for 3 hosts)"),
            "{message}"
        ),
        other => panic!("web decided beyond the region: {other:?}"),
    }
    decided(a[0].acquire("kv", 1, 1, ACQUIRE_BOUND));
}

#[test]
fn an_area_of_another_size_in_the_config_finds_the_same_region() {
    // Laid out with a 4 MiB area (170 slots of 512-byte blocks), then the
    // operator enlarges storage.fencing to 16 MiB (256), then shrinks it
    // to 1 MiB (42): the blocks do not move, so every host finds the
    // region, and kv's generation stays.
    let (_d, io) = file_region(512);
    let io: Arc<dyn BlockIo> = io;
    let sized = |mib: u64| move |h: &str| runtime_with(h, |c| c.storage.fencing.size_mib = mib);
    let small = boot(&io, sized(4), 1);
    assert_eq!(small[0].geo.vms, 170);
    decided(small[0].acquire("kv", 2, 1, ACQUIRE_BOUND));
    let header = io.read(0).unwrap();
    for (n, mib, slots) in [(2, 16, 256), (3, 1, 42)] {
        let a = boot(&io, sized(mib), n);
        assert_eq!(a[1].geo.vms, slots);
        assert_eq!(a[1].init_region().unwrap(), RegionState::Found);
        assert_eq!(highest(&a[1], "kv"), (2, Some("host-a".into())));
        assert_eq!(
            io.read(0).unwrap(),
            header,
            "the header keeps the first count"
        );
    }
}
