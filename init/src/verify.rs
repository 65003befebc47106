//! From block devices to a verified runtime config: find the config disk,
//! check its signature against the image's trust root, enforce anti-rollback
//! with the STATE sector, and record the accepted generation.
//!
//! Rules (fail closed):
//! - A config found on the device that the config itself names as the shared
//!   device (`storage.device`) is refused: that device holds the fencing area
//!   and the VMs' disks, so its first bytes are not the operator's to vouch for
//!   (validation also keeps every VM region off its first MiB).
//! - A config below the one the STATE sector records (a lower generation,
//!   or the same generation with a lower digest, `config_schema::config_id`)
//!   is a rollback and refused.
//! - A newer config is accepted only once it is recorded in the STATE
//!   sector: if that write fails the config is refused, since a host that
//!   cannot record what it accepted cannot refuse a rollback later. A
//!   record of the running generation without a digest (written before
//!   digests existed) is left as it is: it is not wrong, and rewriting it
//!   would make the disk unreadable to the release before for no gain.
//!
//! Every refusal is one [`Refused`] whose `Display` is the one-line reason init
//! prints as `config refused: <reason>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_schema::config_id::ConfigId;
use config_schema::disk::{self, DiskError};
use config_schema::runtime::RuntimeConfig;
use config_schema::slots;
use config_schema::DeviceLocator;

use crate::discover::{self, DiscoverError, Found};

/// Where the image keeps the trust root (raw 32-byte Ed25519 public key).
pub const TRUST_ROOT_PATH: &str = "/etc/ft/trust-root.pub";

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("cannot read trust root {path}: {source}")]
    TrustRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("cannot read config disk {dev}: {source}")]
    Read { dev: String, source: std::io::Error },
    #[error("config disk {dev}: {source}")]
    Disk { dev: String, source: DiskError },
    #[error("config disk {dev} is the shared device its config names ({locator}): a config disk must be a device of its own")]
    OnSharedDevice { dev: String, locator: String },
    #[error("config disk {dev}: cannot record generation {generation} in its STATE sector ({source}); without that record a rollback could not be refused later (is the disk write-protected?)")]
    StateWrite {
        dev: String,
        generation: u64,
        source: std::io::Error,
    },
}

/// A config that passed every check.
#[derive(Debug)]
pub struct Accepted {
    pub disk: Found,
    pub generation: u64,
    pub host_name: String,
    pub runtime: RuntimeConfig,
    /// Config warnings (e.g. a VM that will run unprotected).
    pub warnings: Vec<String>,
    /// What happened to the STATE sector.
    pub state: StateUpdate,
}

#[derive(Debug)]
pub enum StateUpdate {
    /// Already recorded this generation.
    Unchanged,
    /// Recorded the new config's id.
    Written { previous: Option<ConfigId> },
}

/// Finds, reads and verifies the config disk under `root` (`/` on the
/// appliance), waiting up to `wait` for block devices to appear.
pub fn load(root: &Path, trust_root: &Path, wait: Duration) -> Result<Accepted, Refused> {
    let key = fs::read(trust_root).map_err(|source| Refused::TrustRoot {
        path: trust_root.to_path_buf(),
        source,
    })?;
    let found = discover::wait_for(
        root,
        &disk::looks_like_config_disk,
        wait,
        Duration::from_millis(250),
    )?;
    let dev = found.name.clone();
    let image =
        discover::read_prefix(&found.path, disk::DISK_LEN).map_err(|source| Refused::Read {
            dev: dev.clone(),
            source,
        })?;
    let refuse = |source| Refused::Disk {
        dev: dev.clone(),
        source,
    };
    // The active slot: the valid one with the highest id (a config applied
    // over the network lives in the other slot, config_schema::slots).
    let active = slots::read_active(&image, &key).map_err(refuse)?.current;
    let (id, verified) = (active.id, active.disk);
    if let Some(locator) = names_this_device(root, &found, &verified.config.storage.device) {
        return Err(Refused::OnSharedDevice { dev, locator });
    }
    let generation = verified.generation();
    let accepted = read_state(&found.path, &image).map_err(|source| Refused::Read {
        dev: dev.clone(),
        source,
    })?;
    let accepted = disk::decode_state_id(&accepted).map_err(refuse)?;
    disk::check_rollback(accepted, id).map_err(refuse)?;
    // check_rollback passed: the record is at most `id`.
    let recorded =
        accepted.is_some_and(|a| a == id || (a.generation == generation && !a.has_digest()));
    let state = if recorded {
        StateUpdate::Unchanged
    } else {
        write_state(&found.path, &disk::encode_state_id(id)).map_err(|source| {
            Refused::StateWrite {
                dev: dev.clone(),
                generation,
                source,
            }
        })?;
        StateUpdate::Written { previous: accepted }
    };
    let warnings = verified.warnings.iter().map(|w| w.to_string()).collect();
    let host_name = verified.host_name.clone();
    Ok(Accepted {
        disk: found,
        generation,
        host_name,
        runtime: verified.into_runtime(),
        warnings,
        state,
    })
}

/// `Some(how the config names it)` when `locator` names the found disk: its
/// `/sys/block/<name>/serial`, or its `/dev` node (also through a symlink such
/// as `/dev/disk/by-id/...`), or, for an iSCSI LUN, the block device of that
/// LUN when this host is logged in to its target (before the login no disk
/// is it).
pub fn names_this_device(root: &Path, found: &Found, locator: &DeviceLocator) -> Option<String> {
    match locator {
        DeviceLocator::Serial(serial) => {
            let sys = root.join("sys/block").join(&found.name).join("serial");
            let have = fs::read_to_string(sys).ok()?;
            (have.trim() == serial.as_str()).then(|| format!("storage.device serial {serial:?}"))
        }
        DeviceLocator::Path(p) => {
            let named = root.join(p.trim_start_matches('/'));
            let same = named == found.path
                || matches!(
                    (fs::canonicalize(&named), fs::canonicalize(&found.path)),
                    (Ok(a), Ok(b)) if a == b
                );
            same.then(|| format!("storage.device path {p:?}"))
        }
        DeviceLocator::Iscsi(lun) => {
            let name = config_schema::iscsi_block::find_block(&root.join("sys"), lun).ok()?;
            (name == found.name)
                .then(|| format!("storage.device iSCSI LUN {} of {}", lun.lun, lun.target))
        }
    }
}

/// The STATE sector: from the image already read when it lies inside, else
/// from the device.
fn read_state(dev: &Path, image: &[u8]) -> std::io::Result<Vec<u8>> {
    let start = disk::STATE_OFFSET as usize;
    if let Some(s) = image.get(start..start + disk::STATE_LEN) {
        return Ok(s.to_vec());
    }
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; disk::STATE_LEN];
    let f = fs::File::open(dev)?;
    let n = f.read_at(&mut buf, disk::STATE_OFFSET)?;
    buf.truncate(n);
    Ok(buf)
}

/// A sector-aligned buffer for `O_DIRECT`.
#[repr(C, align(4096))]
struct Aligned([u8; 4096]);

/// Writes the STATE sector durably: `O_DIRECT` + `fsync` on a block device;
/// files that refuse `O_DIRECT` (tmpfs in tests) get a plain write + `fsync`.
pub fn write_state(dev: &Path, sector: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    if sector.len() != disk::STATE_LEN || disk::STATE_LEN != 4096 {
        return Err(std::io::Error::other(format!(
            "state sector is {} bytes, expected 4096",
            sector.len()
        )));
    }
    let mut buf = Box::new(Aligned([0u8; 4096]));
    buf.0.copy_from_slice(sector);
    let direct = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev);
    let f = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
            fs::OpenOptions::new().write(true).open(dev)?
        }
        Err(e) => return Err(e),
    };
    f.write_all_at(&buf.0, disk::STATE_OFFSET)?;
    f.sync_all()
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
