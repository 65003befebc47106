//! A signed cluster config without any host's secrets: what `ftctl sign`
//! writes, `ftctl apply` sends and a host persists in a config-disk slot.
//!
//! A config disk made by `make-disk` is signed over its header, config, host
//! name AND host private key: it is for one host and must not travel (it holds
//! that host's key). A signed config is signed over the canonical config only,
//! so every host of the cluster can verify the same bytes; each host adds its
//! own name and key when it persists it ([`crate::slots`]).
//!
//! # File format (all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FTCFGSG1` |
//! | 8 | 4 | `config_len`: length C of the canonical config, `u32` |
//! | 12 | C | canonical config ([`crate::canonical`]) |
//! | 12+C | 64 | Ed25519 signature over `DOMAIN ‖ canonical config` |
//!
//! The signature's message starts with [`DOMAIN`], never with the disk magic
//! `FTCFGDK1` that starts every `make-disk` signature: one key signs both
//! kinds and neither can pass for the other.

use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use crate::canonical;
use crate::model::ClusterConfig;
use crate::validate::{self, ConfigError, Warning};

/// First bytes of a signed-config file.
pub const MAGIC: [u8; 8] = *b"FTCFGSG1";
/// Prefix of the signed message (separates it from disk signatures).
pub const DOMAIN: &[u8] = b"ftappliance signed cluster config v1\0";
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
/// Largest canonical config a signed config carries (it must fit a disk slot).
pub const MAX_CONFIG_LEN: usize = 256 << 10;

/// Why a signed config was refused. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    #[error("not a signed config (wrong magic; make one with `ftctl sign`)")]
    WrongMagic,
    #[error("truncated signed config: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("signed config: config length {0} exceeds {MAX_CONFIG_LEN}")]
    TooLong(usize),
    #[error("signed config: {0} bytes after the signature")]
    Trailing(usize),
    #[error("trust-root public key must be 32 raw bytes, got {0}")]
    BadTrustRoot(usize),
    #[error("bad signature: not signed by this appliance's trust root, or edited after signing")]
    BadSignature,
    #[error("malformed config: {0}")]
    Malformed(String),
    #[error("invalid config: {0}")]
    Invalid(#[from] ConfigError),
}

/// A canonical config and its signature, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedConfig {
    pub canonical: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
}

/// A signed config whose signature and content checked out.
#[derive(Debug, Clone)]
pub struct VerifiedConfig {
    pub signed: SignedConfig,
    pub config: ClusterConfig,
    pub warnings: Vec<Warning>,
}

impl VerifiedConfig {
    pub fn generation(&self) -> u64 {
        self.config.cluster.generation
    }
}

fn message(canonical: &[u8]) -> Vec<u8> {
    [DOMAIN, canonical].concat()
}

impl SignedConfig {
    /// Validates and signs `config`.
    pub fn sign(config: &ClusterConfig, signer: &Ed25519KeyPair) -> Result<Self, SignedError> {
        validate::validate(config)?;
        let canonical = canonical::encode(config);
        if canonical.len() > MAX_CONFIG_LEN {
            return Err(SignedError::TooLong(canonical.len()));
        }
        let sig = signer.sign(&message(&canonical));
        Ok(SignedConfig {
            canonical,
            signature: sig.as_ref().try_into().expect("64-byte signature"),
        })
    }

    /// The file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.canonical.len() + SIGNATURE_LEN);
        v.extend(MAGIC);
        v.extend((self.canonical.len() as u32).to_le_bytes());
        v.extend(&self.canonical);
        v.extend(self.signature);
        v
    }

    /// Splits file bytes (nothing verified yet).
    pub fn decode(bytes: &[u8]) -> Result<Self, SignedError> {
        if bytes.len() < 12 {
            return Err(SignedError::Truncated {
                need: 12,
                have: bytes.len(),
            });
        }
        if bytes[..8] != MAGIC {
            return Err(SignedError::WrongMagic);
        }
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        if len > MAX_CONFIG_LEN {
            return Err(SignedError::TooLong(len));
        }
        let need = 12 + len + SIGNATURE_LEN;
        if bytes.len() < need {
            return Err(SignedError::Truncated {
                need,
                have: bytes.len(),
            });
        }
        if bytes.len() > need {
            return Err(SignedError::Trailing(bytes.len() - need));
        }
        Ok(SignedConfig {
            canonical: bytes[12..12 + len].to_vec(),
            signature: bytes[12 + len..need].try_into().expect("64 bytes"),
        })
    }

    /// Checks the signature against the trust root, then decodes and
    /// validates the config.
    pub fn verify(&self, trust_root: &[u8]) -> Result<VerifiedConfig, SignedError> {
        if trust_root.len() != 32 {
            return Err(SignedError::BadTrustRoot(trust_root.len()));
        }
        UnparsedPublicKey::new(&ED25519, trust_root)
            .verify(&message(&self.canonical), &self.signature)
            .map_err(|_| SignedError::BadSignature)?;
        let config = canonical::decode(&self.canonical)
            .map_err(|e| SignedError::Malformed(e.to_string()))?;
        let warnings = validate::validate(&config)?;
        Ok(VerifiedConfig {
            signed: self.clone(),
            config,
            warnings,
        })
    }

    /// SHA-256 of the file bytes: what an operator's apply request names.
    pub fn sha256(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.encode());
        d.as_ref().try_into().expect("32-byte digest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use ring::signature::KeyPair;

    fn signer() -> Ed25519KeyPair {
        keys::load_signing_key(&keys::generate_signing_key().unwrap().0).unwrap()
    }

    fn example() -> ClusterConfig {
        crate::parse(include_str!("../../examples/cluster.toml"))
            .unwrap()
            .config
    }

    #[test]
    fn round_trips_and_verifies() {
        let s = signer();
        let sc = SignedConfig::sign(&example(), &s).unwrap();
        let back = SignedConfig::decode(&sc.encode()).unwrap();
        assert_eq!(back, sc);
        let v = back.verify(s.public_key().as_ref()).unwrap();
        assert_eq!(v.config, example());
    }

    #[test]
    fn another_key_an_edit_or_a_cut_is_refused() {
        let s = signer();
        let sc = SignedConfig::sign(&example(), &s).unwrap();
        let other = signer();
        assert!(matches!(
            sc.verify(other.public_key().as_ref()),
            Err(SignedError::BadSignature)
        ));
        let mut edited = sc.clone();
        edited.canonical[20] ^= 1;
        assert!(matches!(
            edited.verify(s.public_key().as_ref()),
            Err(SignedError::BadSignature)
        ));
        let bytes = sc.encode();
        for cut in 0..bytes.len() {
            assert!(SignedConfig::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            SignedConfig::decode(&longer),
            Err(SignedError::Trailing(1))
        ));
        assert!(matches!(
            SignedConfig::decode(b"FTCFGDK1\0\0\0\0"),
            Err(SignedError::WrongMagic)
        ));
    }

    #[test]
    fn a_disk_signature_is_not_a_config_signature() {
        // The same key signs disks: a disk's signed bytes never verify here.
        let s = signer();
        let key =
            keys::parse_hex_key(include_str!("../../examples/dev-keys/hosts/host-a.key")).unwrap();
        let img = crate::disk::write_disk(&example(), "host-a", &key, &s).unwrap();
        let c = u32::from_le_bytes(img[12..16].try_into().unwrap()) as usize;
        let n = u32::from_le_bytes(img[16..20].try_into().unwrap()) as usize;
        let at = 20 + c + n + 32;
        let forged = SignedConfig {
            canonical: img[20..20 + c].to_vec(),
            signature: img[at..at + 64].try_into().unwrap(),
        };
        assert!(matches!(
            forged.verify(s.public_key().as_ref()),
            Err(SignedError::BadSignature)
        ));
    }
}
