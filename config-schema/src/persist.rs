//! Persisting an applied config on the config disk ([`crate::slots`] has the
//! layout): write the inactive slot, sync, write the STATE record that does
//! not hold the highest generation, sync.
//!
//! Rules:
//! - The offered config must verify against the trust root, keep this host
//!   with the same key, and be newer than both the active slot and STATE in
//!   the order of [`ConfigId`] (generation, then digest;
//!   [`crate::config_id`]): a higher generation, or the same generation with
//!   a higher digest (two operators signed two configs with one generation:
//!   every host ends on the one with the higher digest). The same config
//!   again is refused as not newer, as is anything lower.
//! - The active slot and the STATE record holding the highest id are never
//!   written; the writes are sector-aligned ([`CHUNK`]).
//! - Invariant: STATE never names an id above that of a valid slot (the
//!   slot is written and synced before the record), so every prefix of the
//!   writes leaves a disk that boots with the old or the new config. For a
//!   config of the same generation as the old one this holds as for a
//!   higher one: the new slot counts once whole, since its id is higher.

use std::io;

use crate::config_id::ConfigId;
use crate::disk::{self, DiskError, DISK_LEN, STATE_LEN, STATE_OFFSET};
use crate::signed::{SignedConfig, SignedError, VerifiedConfig};
use crate::slots::{self, SLOTS};

/// Size of each write (a multiple of any sector size up to 4 KiB).
pub const CHUNK: usize = 4096;
/// Bytes written for one STATE record (one 512-byte sector).
const RECORD_WRITE: usize = 512;

/// The config disk as the persist step sees it: a file or block device, or
/// a test stand-in that stops writing at a chosen point.
pub trait BlockDev {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
}

impl BlockDev for std::fs::File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

/// Why a config was not persisted. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("refused: {0}")]
    Signed(#[from] SignedError),
    #[error("refused: {}", not_newer_line(offered, current))]
    NotNewer {
        offered: ConfigId,
        current: ConfigId,
    },
    #[error("refused: the new config does not keep this host ({0}); a host's name or key changes with a new config disk")]
    HostChanged(DiskError),
    #[error(
        "the config disk's current contents do not verify ({0}); rewrite it with `ftctl make-disk`"
    )]
    Current(DiskError),
    #[error("the config disk's STATE sector: {0}")]
    State(DiskError),
    #[error("no room: slot {slot} holds {room} bytes, the new config needs {need}")]
    NoRoom {
        slot: usize,
        room: usize,
        need: usize,
    },
    #[error("slot 1 is taken by the make-disk image in slot 0 (a config over 512 KiB); make a smaller config disk")]
    Slot1Shadowed,
    #[error("refused: {}", .0.join("; "))]
    Transition(Vec<String>),
    #[error("config disk i/o: {0}")]
    Io(#[from] io::Error),
}

/// What was persisted.
#[derive(Debug, Clone)]
pub struct Persisted {
    pub config: VerifiedConfig,
    /// Its id.
    pub id: ConfigId,
    /// The id it replaced (the highest of the active slot and STATE).
    pub previous: ConfigId,
    pub slot: usize,
    pub host_name: String,
}

fn read_image(dev: &mut dyn BlockDev) -> io::Result<Vec<u8>> {
    let mut image = vec![0u8; DISK_LEN];
    dev.read_at(0, &mut image)?;
    Ok(image)
}

/// Verifies `offered` against `trust_root` and this disk's state, then
/// writes it atomically (module doc).
pub fn persist(
    dev: &mut dyn BlockDev,
    trust_root: &[u8],
    offered: &SignedConfig,
) -> Result<Persisted, PersistError> {
    let image = read_image(dev)?;
    let active = slots::read_active(&image, trust_root).map_err(PersistError::Current)?;
    let state_bytes = &image[STATE_OFFSET as usize..][..STATE_LEN];
    let [a, _] = disk::decode_state_records(state_bytes).map_err(PersistError::State)?;
    let accepted = disk::decode_state_id(state_bytes).map_err(PersistError::State)?;
    let new = offered.verify(trust_root)?;
    let id = ConfigId::of_canonical(new.generation(), &offered.canonical);
    let cur = &active.current;
    let current = accepted.map_or(cur.id, |s| s.max(cur.id));
    if id <= current {
        return Err(PersistError::NotNewer {
            offered: id,
            current,
        });
    }
    let (name, key) = (&cur.disk.host_name, &cur.disk.host_private_key);
    disk::check_host(&new.config, name, key).map_err(PersistError::HostChanged)?;
    let moved = crate::changes::transition_errors(&cur.disk.config, &new.config);
    if !moved.is_empty() {
        return Err(PersistError::Transition(moved));
    }
    let target = 1 - cur.slot;
    if target == 1 && cur.format == disk::FORMAT_VERSION && cur.len > slots::SLOT1_OFFSET {
        return Err(PersistError::Slot1Shadowed);
    }
    let bytes = slots::encode_applied(offered, name, key);
    let (start, end) = SLOTS[target];
    if bytes.len() > end - start {
        return Err(PersistError::NoRoom {
            slot: target,
            room: end - start,
            need: bytes.len(),
        });
    }
    write_slot(dev, start, &bytes)?;
    dev.sync()?;
    // Write the record that does not hold the highest id.
    let keep_a = matches!(a, Ok(Some(g)) if accepted == Some(g));
    let record = if keep_a { disk::STATE_RECORD_B } else { 0 };
    let mut sector = disk::encode_state_record(id);
    sector.resize(RECORD_WRITE, 0);
    dev.write_at(STATE_OFFSET + record as u64, &sector)?;
    dev.sync()?;
    tracing::info!("config disk: {id} persisted in slot {target} (was {current})");
    Ok(Persisted {
        config: new,
        id,
        previous: current,
        slot: target,
        host_name: name.clone(),
    })
}

/// [`PersistError::NotNewer`]'s line, after `refused: `.
fn not_newer_line(offered: &ConfigId, current: &ConfigId) -> String {
    if offered == current {
        format!(
            "generation {g} is not newer than this host's generation {g}: this host already \
             holds this very config (digest {})",
            current.short_digest(),
            g = current.generation,
        )
    } else if offered.generation == current.generation && offered.digest < current.digest {
        format!(
            "holds another generation-{g} config with a higher digest ({} > {}); the cluster \
             converges on that one",
            current.short_digest(),
            offered.short_digest(),
            g = current.generation,
        )
    } else {
        format!(
            "generation {} is not newer than this host's generation {} (sign a config with a \
             higher cluster.generation)",
            offered.generation, current.generation
        )
    }
}

/// Writes `bytes` at `start` in [`CHUNK`]s, the last padded with zeros.
fn write_slot(dev: &mut dyn BlockDev, start: usize, bytes: &[u8]) -> io::Result<()> {
    for (i, c) in bytes.chunks(CHUNK).enumerate() {
        let mut buf = c.to_vec();
        buf.resize(CHUNK, 0);
        dev.write_at((start + i * CHUNK) as u64, &buf)?;
    }
    Ok(())
}
