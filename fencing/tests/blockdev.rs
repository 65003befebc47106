//! The fencing region on real block devices (loop devices; needs root): a
//! 4Kn device refuses 512-byte `O_DIRECT` I/O, so the region is laid out in
//! 4 KiB blocks there, and the agents decide and renew on it.

mod common;

use config_schema::clock::BootInstant;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

use common::{runtime, Loop};
use config_schema::ctl::Response;
use fencing::agent::{Agent, RegionState, ACQUIRE_BOUND};
use fencing::io::{BlockIo, Device, RegionIo};
use fencing::layout::{decode_header, Geometry};

/// An aligned 512-byte write with `O_DIRECT` at byte 512 of `dev`: what
/// layout version 1 did for every record.
fn direct_512_byte_write(dev: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_SYNC)
        .open(dev)?;
    let raw = vec![0xa5u8; 8192];
    let start = (4096 - raw.as_ptr() as usize % 4096) % 4096;
    f.write_all_at(&raw[start..start + 512], 512)
}

#[test]
fn a_4kn_device_gets_4096_byte_blocks_and_the_agents_decide_on_it() {
    let lo = Loop::new(16 << 20, 4096);
    let dev = Device::open(&lo.dev).unwrap();
    assert!(dev.direct, "a block device is opened O_DIRECT");
    assert_eq!((dev.sizes.logical, dev.sizes.physical), (4096, 4096));
    assert_eq!(dev.sizes.layout_block(), 4096);
    let e = direct_512_byte_write(&lo.dev).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    // The region refuses blocks below the logical block size.
    let geo = Geometry::of_config(&runtime("host-a").config, 512);
    let e = RegionIo::new(dev, 0, 512, geo.blocks()).unwrap_err();
    assert!(e.to_string().contains("logical block size 4096"), "{e}");

    let io: Arc<dyn BlockIo> = common::region_on(&lo.dev, None);
    assert_eq!(io.block_size(), 4096);
    let agents: Vec<Arc<Agent>> = ["host-a", "host-b", "host-c"]
        .iter()
        .enumerate()
        .map(|(i, h)| Arc::new(Agent::new(&runtime(h), Arc::clone(&io), i as u64 + 1).unwrap()))
        .collect();
    assert_eq!(agents[0].init_region().unwrap(), RegionState::Initialized);
    assert_eq!(agents[2].init_region().unwrap(), RegionState::Found);
    let header = decode_header(&io.read(0).unwrap()).unwrap();
    assert_eq!(header.geometry.block, 4096);
    for a in &agents {
        common::take_slot(a);
    }
    for round in 0..2 {
        for a in &agents {
            a.renew_once(BootInstant::now())
                .result
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    assert!(agents[0].leases(BootInstant::now()).iter().all(|l| l.live));
    let answers: Vec<Response> = agents
        .iter()
        .map(|a| a.acquire("kv", 2, 1, ACQUIRE_BOUND))
        .collect();
    for r in &answers {
        match r {
            Response::Decided { owner, .. } => assert_eq!(owner, "host-a"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_512_byte_device_gets_512_byte_blocks() {
    let lo = Loop::new(16 << 20, 512);
    let dev = Device::open(&lo.dev).unwrap();
    assert_eq!((dev.sizes.logical, dev.sizes.layout_block()), (512, 512));
    direct_512_byte_write(&lo.dev).unwrap();
    let io = common::region_on(&lo.dev, None);
    let a = Arc::new(Agent::new(&runtime("host-b"), io, 1).unwrap());
    common::take_slot(&a);
    assert!(matches!(
        a.acquire("kv", 1, 1, ACQUIRE_BOUND),
        Response::Decided { won: true, .. }
    ));
}
