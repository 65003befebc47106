//! Which of two configs is newer: a config's identity is its generation and
//! the SHA-256 of its canonical bytes ([`ConfigId`]), ordered generation
//! first, digest second.
//!
//! Rules:
//! - A config is newer than another when its generation is higher, or equal
//!   with a higher digest. Equal generation and digest is the same config.
//!   So two operators who sign two different configs with one generation
//!   and apply them at once leave every host on the same one: the one with
//!   the higher digest (`ftctl apply` passes it on, catch-up fetches it).
//! - The digest is over the canonical config ([`crate::canonical`]), not the
//!   signed-config file: a `make-disk` image holds the same canonical bytes
//!   under a signature that covers its host's key, and must name the same
//!   config as the signed config every host verifies. The canonical config
//!   contains the generation, so two configs with one digest are equal.
//! - A STATE record written before digests existed (version 1 of
//!   `crate::disk`'s record) names a generation only; it reads as
//!   [`UNKNOWN_DIGEST`] (all zero), below every real digest, so it bounds
//!   the generation as before and lets any config of that generation
//!   through.

use std::fmt;

use crate::model::ClusterConfig;

/// The digest a STATE record without one reads as (below every real one).
pub const UNKNOWN_DIGEST: [u8; 32] = [0; 32];

/// A config's place in the order configs replace each other (module rules).
/// Field order is the order: generation, then digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigId {
    pub generation: u64,
    pub digest: [u8; 32],
}

/// SHA-256 of canonical config bytes.
pub fn digest(canonical: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, canonical);
    d.as_ref().try_into().expect("32-byte digest")
}

impl ConfigId {
    /// The identity of canonical config bytes of `generation`.
    pub fn of_canonical(generation: u64, canonical: &[u8]) -> Self {
        ConfigId {
            generation,
            digest: digest(canonical),
        }
    }

    /// The identity of `config`: its canonical encoding's digest (the
    /// encoding is deterministic, so the same config gives the same id on
    /// every host, whether it came from a `make-disk` image or an applied
    /// slot; `crate::canonical` round-trips).
    pub fn of_config(config: &ClusterConfig) -> Self {
        Self::of_canonical(config.cluster.generation, &crate::canonical::encode(config))
    }

    /// A generation whose digest is not known (a version-1 STATE record).
    pub fn generation_only(generation: u64) -> Self {
        ConfigId {
            generation,
            digest: UNKNOWN_DIGEST,
        }
    }

    /// Whether the digest is known.
    pub fn has_digest(&self) -> bool {
        self.digest != UNKNOWN_DIGEST
    }

    /// The first 4 bytes of the digest in hex, then `…` (`1a2b3c4d…`);
    /// `unknown` without one.
    pub fn short_digest(&self) -> String {
        if self.has_digest() {
            format!("{}…", hex::encode(&self.digest[..4]))
        } else {
            "unknown".into()
        }
    }
}

/// `generation 8 (digest 1a2b3c4d…)`.
impl fmt::Display for ConfigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generation {} (digest {})",
            self.generation,
            self.short_digest()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(g: u64, d: u8) -> ConfigId {
        ConfigId {
            generation: g,
            digest: [d; 32],
        }
    }

    #[test]
    fn generation_first_then_digest() {
        assert!(id(2, 0x01) > id(1, 0xff));
        assert!(id(2, 0x02) > id(2, 0x01));
        assert_eq!(id(2, 0x02), id(2, 0x02));
        // A record without a digest is below every config of its generation
        // and above every config of a lower one.
        assert!(ConfigId::generation_only(2) < id(2, 0x01));
        assert!(ConfigId::generation_only(2) > id(1, 0xff));
    }

    #[test]
    fn the_digest_is_of_the_canonical_bytes() {
        let a = ConfigId::of_canonical(3, b"one");
        assert_eq!(a, ConfigId::of_canonical(3, b"one"));
        assert_ne!(a, ConfigId::of_canonical(3, b"two"));
        assert!(a.has_digest());
        assert_eq!(
            ConfigId::of_canonical(3, b"").to_string(),
            "generation 3 (digest e3b0c442…)"
        );
        let c = crate::parse(include_str!("../../examples/cluster.toml"))
            .unwrap()
            .config;
        let bytes = crate::canonical::encode(&c);
        assert_eq!(
            ConfigId::of_config(&crate::canonical::decode(&bytes).unwrap()),
            ConfigId::of_canonical(c.cluster.generation, &bytes)
        );
        assert_eq!(
            ConfigId::generation_only(3).to_string(),
            "generation 3 (digest unknown)"
        );
    }
}
