//! Helpers shared by the integration tests: the example cluster's runtime
//! config, a region on a temporary file, and loop block devices.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use config_schema::runtime::RuntimeConfig;
use fencing::io::{Device, RegionIo};
use fencing::layout::Geometry;

/// The example cluster's runtime config as seen by `host`.
pub fn runtime(host: &str) -> RuntimeConfig {
    RuntimeConfig {
        config: config_schema::parse(include_str!("../../../examples/cluster.toml"))
            .expect("example config is valid")
            .config,
        host_name: host.into(),
        host_private_key: "00".repeat(32),
    }
}

/// The example cluster's region, blocks of `block` bytes, on a 1 MiB file.
pub fn file_region(block: u32) -> (tempfile::TempDir, Arc<RegionIo>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shared");
    let geo = Geometry::of_config(&runtime("host-a").config, block);
    std::fs::write(&p, vec![0u8; geo.bytes() as usize]).unwrap();
    let io = region_on(&p, Some(block));
    (dir, io)
}

/// The example cluster's region on `path`, blocks of `block` bytes or the
/// device's own block size.
pub fn region_on(path: &Path, block: Option<u32>) -> Arc<RegionIo> {
    let dev = Device::open(path).unwrap();
    let block = block.unwrap_or(dev.sizes.layout_block());
    let geo = Geometry::of_config(&runtime("host-a").config, block);
    Arc::new(RegionIo::new(dev, 0, block, geo.blocks()).unwrap())
}

/// A loop block device over a file, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    /// A loop device of `bytes` with `sector_size`-byte logical blocks.
    /// Needs root and util-linux's `losetup`; fails (does not skip) without.
    pub fn new(bytes: u64, sector_size: u32) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backing");
        std::fs::write(&file, vec![0u8; bytes as usize]).unwrap();
        // `losetup -f` can race another process for the same free device:
        // try a few times.
        let mut last = String::new();
        for _ in 0..5 {
            let out = Command::new("losetup")
                .args(["--show", "-f", "--sector-size", &sector_size.to_string()])
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("this test needs util-linux losetup (and root): {e}"));
            if out.status.success() {
                let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
                return Loop {
                    dev: PathBuf::from(dev),
                    _dir: dir,
                };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "this test needs a loop block device (root, /dev/loop-control): losetup failed: {last}"
        );
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Takes `a`'s lease slot (blank in these tests) and renews once: the claim
/// writes at once and holds the slot after its settle time, here passed by
/// handing the agent a later time.
pub fn take_slot(a: &fencing::agent::Agent) {
    use config_schema::clock::BootInstant;
    let t = BootInstant::now();
    let first = a.renew_once(t);
    assert!(first.result.is_err(), "a claim first writes, then checks");
    let r = a.renew_once(t + a.timing.renew * 3);
    r.result
        .unwrap_or_else(|e| panic!("taking the slot: {e} ({:?})", r.lines));
}
