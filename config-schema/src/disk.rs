//! The per-host config disk: a signed, raw (filesystem-less) 1 MiB image.
//!
//! # Why raw and not a filesystem
//!
//! init reads this disk before anything is trusted. With a raw layout the code
//! that touches untrusted bytes is [`read_disk`]: a few hundred lines of
//! bounds-checked Rust that we fuzz (`config-schema/fuzz`). A filesystem would
//! put a kernel FS driver (FAT, ext4, ...) in front of the signature check, a
//! large body of C parsing attacker-controlled metadata in ring 0; it would also
//! need a mount and the matching module in the image. Nothing here needs
//! files: one payload, one signature, one small state record.
//!
//! # Layout (all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FTCFGDK1` |
//! | 8 | 4 | format version, `u32` = 2 (2 added `cluster.cpu` and the `[test]` section to the canonical config; `vms[].power` came later as a trailer that only a config with a VM off has, see [`crate::canonical`]) |
//! | 12 | 4 | `config_len`: length C of the canonical config, `u32` |
//! | 16 | 4 | `host_name_len`: length N of the host name, `u32`, 1..=255 |
//! | 20 | C | canonical config ([`crate::canonical`]) |
//! | 20+C | N | this host's name, UTF-8 (a `hosts[].name`) |
//! | 20+C+N | 32 | this host's X25519 identity private key, raw |
//! | 52+C+N | 64 | Ed25519 signature over bytes `[0, 52+C+N)` |
//! | 116+C+N | .. | zero up to `STATE_OFFSET` |
//! | `STATE_OFFSET` = 0xFF000 | 4096 | STATE sector (not signed, see below) |
//!
//! The image is exactly [`DISK_LEN`] = 1 MiB and [`read_disk`] wants at
//! least that many bytes (a shorter read is "truncated"); the signed part must
//! end at or before [`STATE_OFFSET`]. The signature covers the header too, so the
//! version and lengths cannot be altered without detection.
//!
//! # The STATE sector: anti-rollback
//!
//! Two records, A at 0 and B at [`STATE_RECORD_B`] = 2048, each blank (all
//! zero) or one of:
//!
//! | offset in record | size | version 1 (before digests) | version 2 |
//! |---|---|---|---|
//! | 0 | 8 | magic `FTCFGST1` | magic `FTCFGST1` |
//! | 8 | 4 | state version, `u32` = 1 | state version, `u32` = 2 |
//! | 12 | 4 | reserved, 0 | reserved, 0 |
//! | 16 | 8 | highest config generation this host ever accepted, `u64` | the same |
//! | 24 | 4 | CRC-32C of bytes `[0, 24)` | digest of that config (32 bytes, [`crate::config_id`]) |
//! | 28 | 32 | zero | (digest, continued) |
//! | 56 | 4 | zero | CRC-32C of bytes `[0, 56)` |
//! | 60 | 1988 | zero | zero |
//!
//! A record names the highest [`ConfigId`] (generation, then digest) this
//! host accepted. Version 2 adds the digest so that of two configs of one
//! generation the host can refuse the lower one ([`crate::config_id`]); a
//! version-1 record (every disk written before) still reads, as its
//! generation with the unknown (all-zero) digest, below every config of that
//! generation: it bounds the generation exactly as before. This release
//! writes version 2 only; an older release reads a version-2 record as
//! "unsupported state version 2" and refuses the disk (going back to it
//! needs the config disk made again).
//!
//! Record B is written by `ftctl apply` ([`crate::persist`]), which always
//! writes the record not holding the highest id, so a torn write leaves the
//! other; the sector's id is the higher valid record. init and `make-disk`
//! write record A only.
//!
//! # Slots
//!
//! The signed image above is slot 0. A config applied over the network goes
//! into the other of two slots, see [`crate::slots`]; a disk made before that
//! reads as before.
//!
//! An all-zero sector means "never written" (a freshly made disk). init reads
//! it, refuses a config whose generation is lower ([`check_rollback`]), and
//! after accepting a newer one rewrites the sector ([`encode_state`]). The
//! sector lives on the host's own config disk: it stops an old signed config
//! from being written over the signed region of a disk that has already seen a
//! newer one (the normal in-place update writes only `[0, STATE_OFFSET)`, see
//! `ftctl update-disk`). It does NOT stop someone who can write the whole
//! disk, who can swap in an entire old image or zero the sector; that needs
//! storage the attacker cannot write (a TPM NV counter, or the generation
//! recorded by the cluster on shared storage).

use std::fmt;

use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use crate::canonical;
use crate::config_id::ConfigId;
use crate::model::ClusterConfig;
use crate::runtime::RuntimeConfig;
use crate::validate::{self, ConfigError, Warning};

/// First bytes of every config disk.
pub const MAGIC: [u8; 8] = *b"FTCFGDK1";
/// Format version written and the only one read. Version 2 added
/// `cluster.cpu` and the `test` field (test hooks) to the canonical config.
pub const FORMAT_VERSION: u32 = 2;
/// Size of a config disk image.
pub const DISK_LEN: usize = 1 << 20;
/// Size of the STATE sector.
pub const STATE_LEN: usize = 4096;
/// Where the STATE sector starts (the last 4 KiB of the image).
pub const STATE_OFFSET: u64 = (DISK_LEN - STATE_LEN) as u64;
/// Magic of the STATE sector.
pub const STATE_MAGIC: [u8; 8] = *b"FTCFGST1";
/// Version of the STATE record written (2: with the digest; 1, read too,
/// has none).
pub const STATE_VERSION: u32 = 2;
/// Bytes before the canonical config.
pub const HEADER_LEN: usize = 20;
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
/// Host identity private key length.
pub const HOST_KEY_LEN: usize = 32;
/// Longest host name the format carries.
pub const MAX_HOST_NAME_LEN: usize = 255;
/// Length of one STATE record (version 2; version 1 used the first 28
/// bytes and left the rest zero).
pub const STATE_RECORD_LEN: usize = 60;
/// Length of a version-1 STATE record.
const STATE_RECORD_V1_LEN: usize = 28;

/// Why a config disk (or its STATE sector) was refused. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("wrong magic: not a config disk")]
    WrongMagic,
    #[error("unsupported format version {0} (this appliance reads version {FORMAT_VERSION}: make the disk again with its `ftctl make-disk`)")]
    UnsupportedVersion(u32),
    #[error("absurd length: {field} = {value}")]
    AbsurdLength { field: &'static str, value: u64 },
    #[error("trust-root public key must be 32 raw bytes, got {0}")]
    BadTrustRoot(usize),
    #[error("bad signature: not signed by the trusted key, or edited after signing")]
    BadSignature,
    #[error("malformed payload: {0}")]
    MalformedPayload(String),
    #[error("invalid config: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("unknown host: {0:?} is not in the config")]
    UnknownHost(String),
    #[error("host key mismatch: the private key does not match the public key of host {0:?}")]
    HostKeyMismatch(String),
    #[error("{}", rollback_line(offered, accepted))]
    Rollback {
        offered: ConfigId,
        accepted: ConfigId,
    },
    #[error("state sector corrupt: {0}")]
    StateCorrupt(String),
    #[error("CRC-32C mismatch over slot {slot}'s unsigned part (a torn write?)")]
    SlotCrc { slot: usize },
    #[error("no valid config in either slot: slot 0: {slot0}; slot 1: {slot1}")]
    NoValidSlot {
        slot0: Box<DiskError>,
        slot1: Box<DiskError>,
    },
}

/// A config disk whose signature, config and host key checked out.
#[derive(Clone)]
pub struct VerifiedDisk {
    pub config: ClusterConfig,
    pub host_name: String,
    pub host_private_key: [u8; 32],
    pub warnings: Vec<Warning>,
}

impl fmt::Debug for VerifiedDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedDisk")
            .field("config", &self.config)
            .field("host_name", &self.host_name)
            .field("host_private_key", &"<redacted>")
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl VerifiedDisk {
    /// The config generation (`cluster.generation`).
    pub fn generation(&self) -> u64 {
        self.config.cluster.generation
    }

    /// What init hands to the daemons.
    pub fn into_runtime(self) -> RuntimeConfig {
        RuntimeConfig {
            config: self.config,
            host_name: self.host_name,
            host_private_key: hex::encode(self.host_private_key),
        }
    }
}

/// True when `first_bytes` starts with [`MAGIC`].
pub fn looks_like_config_disk(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= MAGIC.len() && first_bytes[..MAGIC.len()] == MAGIC
}

/// Checks the host is in the (validated) config and its key matches.
pub(crate) fn check_host(
    config: &ClusterConfig,
    host_name: &str,
    host_private_key: &[u8; 32],
) -> Result<(), DiskError> {
    let host = config
        .hosts
        .iter()
        .find(|h| h.name == host_name)
        .ok_or_else(|| DiskError::UnknownHost(host_name.to_string()))?;
    let want = validate::parse_key_hex(&host.public_key)
        .ok_or_else(|| DiskError::HostKeyMismatch(host_name.to_string()))?;
    if crate::keys::host_public_key(host_private_key) != want {
        return Err(DiskError::HostKeyMismatch(host_name.to_string()));
    }
    Ok(())
}

/// Validates `config`, then builds a signed [`DISK_LEN`] image for one host
/// with a blank STATE sector.
pub fn write_disk(
    config: &ClusterConfig,
    host_name: &str,
    host_private_key: &[u8; 32],
    signer: &Ed25519KeyPair,
) -> Result<Vec<u8>, DiskError> {
    validate::validate(config)?;
    check_host(config, host_name, host_private_key)?;
    let body = canonical::encode(config);
    let signed_len = HEADER_LEN + body.len() + host_name.len() + HOST_KEY_LEN;
    if signed_len + SIGNATURE_LEN > STATE_OFFSET as usize {
        return Err(DiskError::AbsurdLength {
            field: "config_len",
            value: body.len() as u64,
        });
    }
    let mut img = Vec::with_capacity(DISK_LEN);
    img.extend(MAGIC);
    img.extend(FORMAT_VERSION.to_le_bytes());
    img.extend((body.len() as u32).to_le_bytes());
    img.extend((host_name.len() as u32).to_le_bytes());
    img.extend(&body);
    img.extend(host_name.as_bytes());
    img.extend(host_private_key);
    let sig = signer.sign(&img);
    img.extend(sig.as_ref());
    img.resize(DISK_LEN, 0);
    Ok(img)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

/// The parts of a config disk image, located but not verified.
struct Layout<'a> {
    /// Header + config + host name + host key: what the signature covers.
    signed: &'a [u8],
    signature: &'a [u8],
    config: &'a [u8],
    host_name: &'a [u8],
    host_key: [u8; 32],
}

/// Checks length, magic, version and lengths, and splits the image.
fn layout(image: &[u8]) -> Result<Layout<'_>, DiskError> {
    if image.len() < HEADER_LEN {
        return Err(DiskError::Truncated {
            need: HEADER_LEN,
            have: image.len(),
        });
    }
    if !looks_like_config_disk(image) {
        return Err(DiskError::WrongMagic);
    }
    let version = u32_at(image, 8);
    if version != FORMAT_VERSION {
        return Err(DiskError::UnsupportedVersion(version));
    }
    let config_len = u32_at(image, 12) as usize;
    let name_len = u32_at(image, 16) as usize;
    let room = STATE_OFFSET as usize - HEADER_LEN - HOST_KEY_LEN - SIGNATURE_LEN;
    if name_len == 0 || name_len > MAX_HOST_NAME_LEN {
        return Err(DiskError::AbsurdLength {
            field: "host_name_len",
            value: name_len as u64,
        });
    }
    if config_len == 0 || config_len + name_len > room {
        return Err(DiskError::AbsurdLength {
            field: "config_len",
            value: config_len as u64,
        });
    }
    // The whole image must be there, not just the signed part: a short
    // read of the device is a broken disk, not a smaller one.
    if image.len() < DISK_LEN {
        return Err(DiskError::Truncated {
            need: DISK_LEN,
            have: image.len(),
        });
    }
    let signed_len = HEADER_LEN + config_len + name_len + HOST_KEY_LEN;
    let need = signed_len + SIGNATURE_LEN;
    let signed = &image[..signed_len];
    let name_at = HEADER_LEN + config_len;
    Ok(Layout {
        signed,
        signature: &image[signed_len..need],
        config: &signed[HEADER_LEN..name_at],
        host_name: &signed[name_at..name_at + name_len],
        host_key: signed[signed_len - HOST_KEY_LEN..]
            .try_into()
            .expect("32-byte slice"),
    })
}

fn decode_payload(l: &Layout<'_>) -> Result<(ClusterConfig, String), DiskError> {
    let config =
        canonical::decode(l.config).map_err(|e| DiskError::MalformedPayload(e.to_string()))?;
    let host_name = std::str::from_utf8(l.host_name)
        .map_err(|_| DiskError::MalformedPayload("host name is not UTF-8".into()))?
        .to_string();
    Ok((config, host_name))
}

/// Parses and verifies a config disk image: at least [`DISK_LEN`] bytes (more
/// is ignored, e.g. a whole device); the STATE sector is not looked at. Checks, in order: length, magic, version,
/// lengths, signature, payload, config validity, host key.
pub fn read_disk(image: &[u8], trust_root_public_key: &[u8]) -> Result<VerifiedDisk, DiskError> {
    let l = layout(image)?;
    if trust_root_public_key.len() != 32 {
        return Err(DiskError::BadTrustRoot(trust_root_public_key.len()));
    }
    UnparsedPublicKey::new(&ED25519, trust_root_public_key)
        .verify(l.signed, l.signature)
        .map_err(|_| DiskError::BadSignature)?;
    let (config, host_name) = decode_payload(&l)?;
    let warnings = validate::validate(&config)?;
    check_host(&config, &host_name, &l.host_key)?;
    Ok(VerifiedDisk {
        config,
        host_name,
        host_private_key: l.host_key,
        warnings,
    })
}

/// What a config disk claims to hold, WITHOUT checking the signature or
/// validating the config (for `ftctl show`). Never trust its result.
pub fn read_disk_unverified(image: &[u8]) -> Result<(ClusterConfig, String), DiskError> {
    decode_payload(&layout(image)?)
}

/// A STATE sector in the layout before digests (a version-1 record A with
/// `accepted_generation`; [`STATE_LEN`] bytes): what init wrote until this
/// release, kept to make such disks in tests.
pub fn encode_state(accepted_generation: u64) -> Vec<u8> {
    let mut s = Vec::with_capacity(STATE_LEN);
    s.extend(STATE_MAGIC);
    s.extend(1u32.to_le_bytes());
    s.extend(0u32.to_le_bytes());
    s.extend(accepted_generation.to_le_bytes());
    let crc = crc32c::crc32c(&s);
    s.extend(crc.to_le_bytes());
    s.resize(STATE_LEN, 0);
    s
}

/// The STATE sector recording `accepted` in record A ([`STATE_LEN`] bytes).
pub fn encode_state_id(accepted: ConfigId) -> Vec<u8> {
    let mut s = encode_state_record(accepted);
    s.resize(STATE_LEN, 0);
    s
}

/// One version-2 STATE record for `id`, [`STATE_RECORD_LEN`] bytes.
pub fn encode_state_record(id: ConfigId) -> Vec<u8> {
    let mut s = Vec::with_capacity(STATE_RECORD_LEN);
    s.extend(STATE_MAGIC);
    s.extend(STATE_VERSION.to_le_bytes());
    s.extend(0u32.to_le_bytes());
    s.extend(id.generation.to_le_bytes());
    s.extend(id.digest);
    let crc = crc32c::crc32c(&s);
    s.extend(crc.to_le_bytes());
    debug_assert_eq!(s.len(), STATE_RECORD_LEN);
    s
}

/// Where the second STATE record starts in the sector (its own 512-byte
/// sector, so a torn write of one record leaves the other whole).
pub const STATE_RECORD_B: usize = 2048;

const _: () = assert!(STATE_RECORD_LEN <= 512 && STATE_RECORD_B + STATE_RECORD_LEN <= STATE_LEN);

/// One STATE record ([`STATE_RECORD_LEN`] bytes): blank, an id, or why not.
fn decode_record(r: &[u8]) -> Result<Option<ConfigId>, DiskError> {
    if r.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if r[..8] != STATE_MAGIC {
        return Err(DiskError::StateCorrupt("wrong magic".into()));
    }
    let version = u32_at(r, 8);
    let crc_at = match version {
        1 => STATE_RECORD_V1_LEN - 4,
        STATE_VERSION => STATE_RECORD_LEN - 4,
        _ => {
            return Err(DiskError::StateCorrupt(format!(
                "unsupported state version {version}"
            )))
        }
    };
    if crc32c::crc32c(&r[..crc_at]) != u32_at(r, crc_at) {
        return Err(DiskError::StateCorrupt("CRC-32C mismatch".into()));
    }
    if u32_at(r, 12) != 0 || r[crc_at + 4..].iter().any(|&b| b != 0) {
        return Err(DiskError::StateCorrupt("non-zero reserved bytes".into()));
    }
    let generation = u64::from_le_bytes(r[16..24].try_into().expect("8-byte slice"));
    Ok(Some(match version {
        1 => ConfigId::generation_only(generation),
        _ => ConfigId {
            generation,
            digest: r[24..56].try_into().expect("32-byte slice"),
        },
    }))
}

/// The two records of a STATE sector (A at 0, B at [`STATE_RECORD_B`]),
/// each blank, valid or damaged. `ftctl apply` writes the record that does
/// not hold the highest id (`crate::slots`); init and `make-disk` write A
/// and leave B zero.
pub fn decode_state_records(
    bytes: &[u8],
) -> Result<[Result<Option<ConfigId>, DiskError>; 2], DiskError> {
    if bytes.len() < STATE_LEN {
        return Err(DiskError::Truncated {
            need: STATE_LEN,
            have: bytes.len(),
        });
    }
    let s = &bytes[..STATE_LEN];
    let (a, b) = (
        &s[..STATE_RECORD_LEN],
        &s[STATE_RECORD_B..STATE_RECORD_B + STATE_RECORD_LEN],
    );
    let rest_zero = s[STATE_RECORD_LEN..STATE_RECORD_B]
        .iter()
        .chain(&s[STATE_RECORD_B + STATE_RECORD_LEN..])
        .all(|&x| x == 0);
    if !rest_zero {
        return Err(DiskError::StateCorrupt("non-zero reserved bytes".into()));
    }
    Ok([decode_record(a), decode_record(b)])
}

/// Reads a STATE sector: `None` when blank (all zero), the accepted id
/// when valid (the higher of its two records), an error when present but
/// damaged (a damaged record beside a valid one is a torn write: the valid
/// one counts).
pub fn decode_state_id(bytes: &[u8]) -> Result<Option<ConfigId>, DiskError> {
    let [a, b] = decode_state_records(bytes)?;
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(a.max(b)),
        (Ok(Some(g)), Err(_)) | (Err(_), Ok(Some(g))) => Ok(Some(g)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// [`decode_state_id`]'s generation.
pub fn decode_state(bytes: &[u8]) -> Result<Option<u64>, DiskError> {
    Ok(decode_state_id(bytes)?.map(|id| id.generation))
}

/// Refuses an offered config below the accepted one: a lower generation,
/// or the same generation with a lower digest ([`crate::config_id`]; a
/// record without a digest bounds the generation only). Equal is fine (the
/// same config after a reboot).
pub fn check_rollback(accepted: Option<ConfigId>, offered: ConfigId) -> Result<(), DiskError> {
    match accepted {
        Some(accepted) if offered < accepted => Err(DiskError::Rollback { offered, accepted }),
        _ => Ok(()),
    }
}

/// [`DiskError::Rollback`]'s line.
fn rollback_line(offered: &ConfigId, accepted: &ConfigId) -> String {
    if offered.generation < accepted.generation {
        format!(
            "rollback: offered generation {} < accepted generation {}",
            offered.generation, accepted.generation
        )
    } else {
        format!(
            "rollback: offered generation {g} has digest {} below the accepted generation-{g} \
             config's {} (two configs of one generation: the higher digest wins; sign a higher \
             cluster.generation)",
            offered.short_digest(),
            accepted.short_digest(),
            g = offered.generation,
        )
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
