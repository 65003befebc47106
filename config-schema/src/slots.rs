//! Two config slots on one config disk, so a config applied over the
//! network replaces the old one atomically: a power cut at any point leaves
//! the old or the new config, never neither and never a mix.
//!
//! # Layout
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 512 KiB | slot 0: a `make-disk` image (format 2, [`crate::disk`]) or an applied slot (format 3) |
//! | [`SLOT1_OFFSET`] = 0x80000 | 508 KiB | slot 1: blank (zero) or an applied slot (format 3) |
//! | `STATE_OFFSET` = 0xFF000 | 4 KiB | STATE: record A at 0, record B at 2048 ([`crate::disk::decode_state`]) |
//!
//! A disk made before slots existed is a format-2 image in slot 0 and zeros
//! elsewhere: it reads as before. A format-2 image whose signed part reaches
//! past [`SLOT1_OFFSET`] (a config of half a MiB) keeps slot 1 unusable.
//!
//! # An applied slot (format 3; integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FTCFGDK1` (so slot 0 is still found by its magic) |
//! | 8 | 4 | format version, `u32` = 3 |
//! | 12 | 4 | `config_len` C |
//! | 16 | 4 | `host_name_len` N, 1..=255 |
//! | 20 | C | canonical config |
//! | 20+C | 64 | Ed25519 signature over the config ([`crate::signed`]) |
//! | 84+C | N | this host's name |
//! | 84+C+N | 32 | this host's X25519 private key |
//! | 116+C+N | 4 | CRC-32C of bytes `[0, 116+C+N)` |
//!
//! The host name and key are not signed (the host that persists a config has
//! no signing key) but are checked as for format 2: the name must be a host
//! of the signed config and the key must match its signed public key. The
//! CRC catches a torn write before any of that.
//!
//! # Which slot counts; how a new config is persisted
//!
//! The reader takes the valid slot with the highest [`ConfigId`]
//! (generation, then the digest of its canonical config,
//! [`crate::config_id`]; [`read_active`]). [`persist`] writes the new config
//! into the other slot, syncs, then writes the STATE record that does not
//! hold the highest id, and syncs. Invariant: the STATE's id is never above
//! the id of a valid slot, so a cut at any write leaves a disk that boots
//! (tested in `slots_tests.rs` by cutting at every write, also for a config
//! replacing another of the same generation: the slot write is the point
//! where the new one counts, as for a higher generation).

use crate::config_id::ConfigId;
use crate::disk::{self, DiskError, VerifiedDisk, DISK_LEN, MAGIC, STATE_OFFSET};
use crate::signed::{self, SignedConfig};

/// Where slot 1 starts.
pub const SLOT1_OFFSET: usize = 0x80000;
/// Format version of an applied slot.
pub const APPLIED_VERSION: u32 = 3;
/// Bytes of an applied slot before the canonical config.
const HEADER_LEN: usize = 20;

/// Start and end (exclusive) of each slot.
pub const SLOTS: [(usize, usize); 2] = [(0, SLOT1_OFFSET), (SLOT1_OFFSET, STATE_OFFSET as usize)];

const _: () = assert!(SLOT1_OFFSET.is_multiple_of(4096) && SLOT1_OFFSET < STATE_OFFSET as usize);
// A signed config of the largest size fits either slot.
const _: () = assert!(
    HEADER_LEN + signed::MAX_CONFIG_LEN + 64 + disk::MAX_HOST_NAME_LEN + 32 + 4
        <= STATE_OFFSET as usize - SLOT1_OFFSET
);

/// The config a slot holds, verified.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub slot: usize,
    /// 2: made by `make-disk`; 3: applied.
    pub format: u32,
    pub disk: VerifiedDisk,
    /// The host-independent signed config (format 3 only: a format-2
    /// signature covers the host key and cannot be separated from it).
    pub signed: Option<SignedConfig>,
    /// End of the slot's bytes, from its start.
    pub len: usize,
    /// Its generation and the digest of its canonical config.
    pub id: ConfigId,
}

impl SlotConfig {
    pub fn generation(&self) -> u64 {
        self.disk.generation()
    }
}

/// What [`read_active`] found.
#[derive(Debug, Clone)]
pub struct Active {
    pub current: SlotConfig,
    /// Why the other slot does not count, when it holds something that is
    /// not a valid config (a torn write, garbage); `None` when blank or valid.
    pub other_problem: Option<String>,
}

/// Encodes an applied slot for `host_name` with key `host_key`.
pub fn encode_applied(sc: &SignedConfig, host_name: &str, host_key: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + sc.canonical.len() + 100 + host_name.len());
    v.extend(MAGIC);
    v.extend(APPLIED_VERSION.to_le_bytes());
    v.extend((sc.canonical.len() as u32).to_le_bytes());
    v.extend((host_name.len() as u32).to_le_bytes());
    v.extend(&sc.canonical);
    v.extend(sc.signature);
    v.extend(host_name.as_bytes());
    v.extend(host_key);
    let crc = crc32c::crc32c(&v);
    v.extend(crc.to_le_bytes());
    v
}

/// Parses and verifies an applied slot (`bytes` is the slot's region).
fn read_applied(bytes: &[u8], slot: usize, trust_root: &[u8]) -> Result<SlotConfig, DiskError> {
    let c = disk::u32_at(bytes, 12) as usize;
    let n = disk::u32_at(bytes, 16) as usize;
    if n == 0 || n > disk::MAX_HOST_NAME_LEN {
        return Err(DiskError::AbsurdLength {
            field: "host_name_len",
            value: n as u64,
        });
    }
    let end = HEADER_LEN + c + 64 + n + 32;
    if c == 0 || c > signed::MAX_CONFIG_LEN || end + 4 > bytes.len() {
        return Err(DiskError::AbsurdLength {
            field: "config_len",
            value: c as u64,
        });
    }
    if crc32c::crc32c(&bytes[..end]) != disk::u32_at(bytes, end) {
        return Err(DiskError::SlotCrc { slot });
    }
    let sig_at = HEADER_LEN + c;
    let sc = SignedConfig {
        canonical: bytes[HEADER_LEN..sig_at].to_vec(),
        signature: bytes[sig_at..sig_at + 64].try_into().expect("64 bytes"),
    };
    let v = sc.verify(trust_root).map_err(|e| match e {
        signed::SignedError::BadSignature => DiskError::BadSignature,
        signed::SignedError::BadTrustRoot(n) => DiskError::BadTrustRoot(n),
        signed::SignedError::Invalid(e) => DiskError::InvalidConfig(e),
        other => DiskError::MalformedPayload(other.to_string()),
    })?;
    let name_at = sig_at + 64;
    let host_name = std::str::from_utf8(&bytes[name_at..name_at + n])
        .map_err(|_| DiskError::MalformedPayload("host name is not UTF-8".into()))?
        .to_string();
    let key: [u8; 32] = bytes[name_at + n..end].try_into().expect("32 bytes");
    disk::check_host(&v.config, &host_name, &key)?;
    let id = ConfigId::of_canonical(v.config.cluster.generation, &sc.canonical);
    Ok(SlotConfig {
        slot,
        format: APPLIED_VERSION,
        disk: VerifiedDisk {
            config: v.config,
            host_name,
            host_private_key: key,
            warnings: v.warnings,
        },
        len: end + 4,
        id,
        signed: Some(sc),
    })
}

/// End of a format-2 image's signed part plus signature (from its header).
fn format2_len(image: &[u8]) -> usize {
    let c = disk::u32_at(image, 12) as usize;
    let n = disk::u32_at(image, 16) as usize;
    disk::HEADER_LEN
        .saturating_add(c)
        .saturating_add(n)
        .saturating_add(disk::HOST_KEY_LEN + disk::SIGNATURE_LEN)
}

/// Reads slot `slot` of `image` (at least [`DISK_LEN`] bytes). `Ok(None)`
/// when the slot is blank (slot 1 without the magic).
pub fn read_slot(
    image: &[u8],
    slot: usize,
    trust_root: &[u8],
) -> Result<Option<SlotConfig>, DiskError> {
    if image.len() < DISK_LEN {
        return Err(DiskError::Truncated {
            need: DISK_LEN,
            have: image.len(),
        });
    }
    let (start, end) = SLOTS[slot];
    let bytes = &image[start..end];
    if !disk::looks_like_config_disk(bytes) {
        return match slot {
            0 => Err(DiskError::WrongMagic),
            _ => Ok(None),
        };
    }
    match disk::u32_at(bytes, 8) {
        disk::FORMAT_VERSION if slot == 0 => {
            let d = disk::read_disk(image, trust_root)?;
            // read_disk checked the lengths: the canonical config follows the header.
            let c = disk::u32_at(image, 12) as usize;
            let canonical = &image[disk::HEADER_LEN..disk::HEADER_LEN + c];
            Ok(Some(SlotConfig {
                slot,
                format: disk::FORMAT_VERSION,
                id: ConfigId::of_canonical(d.generation(), canonical),
                disk: d,
                signed: None,
                len: format2_len(image),
            }))
        }
        APPLIED_VERSION => read_applied(bytes, slot, trust_root).map(Some),
        v => Err(DiskError::UnsupportedVersion(v)),
    }
}

/// True when slot 0 holds a format-2 image reaching into slot 1.
fn slot1_shadowed(image: &[u8]) -> bool {
    disk::looks_like_config_disk(image)
        && disk::u32_at(image, 8) == disk::FORMAT_VERSION
        && format2_len(image) > SLOT1_OFFSET
}

/// The config that counts: the valid slot with the highest [`ConfigId`].
/// With one slot bad and the other valid, the valid one counts and the bad
/// one's reason is in [`Active::other_problem`]; with both bad, the error
/// names both (with slot 1 blank, slot 0's error as it is).
pub fn read_active(image: &[u8], trust_root: &[u8]) -> Result<Active, DiskError> {
    if image.len() < DISK_LEN {
        // Not a slot's problem: say it once, as a disk without slots would.
        return Err(disk::read_disk(image, trust_root)
            .err()
            .unwrap_or(DiskError::Truncated {
                need: DISK_LEN,
                have: image.len(),
            }));
    }
    let s0 = read_slot(image, 0, trust_root).map(|s| s.expect("slot 0 is never blank"));
    let s1 = if slot1_shadowed(image) {
        Ok(None)
    } else {
        read_slot(image, 1, trust_root)
    };
    match (s0, s1) {
        (Ok(a), Ok(Some(b))) if b.id > a.id => Ok(Active {
            current: b,
            other_problem: None,
        }),
        (Ok(a), Ok(_)) => Ok(Active {
            current: a,
            other_problem: None,
        }),
        (Ok(a), Err(e)) => Ok(Active {
            current: a,
            other_problem: Some(format!("slot 1: {e}")),
        }),
        (Err(e), Ok(Some(b))) => Ok(Active {
            current: b,
            other_problem: Some(format!("slot 0: {e}")),
        }),
        (Err(e), Ok(None)) => Err(e),
        (Err(a), Err(b)) => Err(DiskError::NoValidSlot {
            slot0: Box::new(a),
            slot1: Box::new(b),
        }),
    }
}

/// What `ftctl apply` (or `ftctl state`) reads from a whole image: the
/// active slot's config as a [`VerifiedDisk`], for callers that want no
/// slot details (init).
pub fn read_disk_active(image: &[u8], trust_root: &[u8]) -> Result<VerifiedDisk, DiskError> {
    read_active(image, trust_root).map(|a| a.current.disk)
}

/// A signed config extracted from a config-disk image, for `ftctl apply
/// DISK`: only an applied (format 3) active slot has one.
pub fn signed_of_image(image: &[u8], trust_root: &[u8]) -> Result<SignedConfig, DiskError> {
    let a = read_active(image, trust_root)?;
    a.current.signed.ok_or_else(|| {
        DiskError::MalformedPayload(
            "this image was made by `make-disk`: its signature covers the host's private key, \
             so it cannot be sent over the network; make a signed config with `ftctl sign`"
                .into(),
        )
    })
}

pub use crate::persist::{persist, BlockDev, PersistError, Persisted};

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
