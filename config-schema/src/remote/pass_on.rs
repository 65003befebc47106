//! What one host sends another when it passes an operator's apply on
//! (`ClientMsg::HostPassOn`, sealed in the hosts' Noise channel): the signed
//! config and what the sender knows of it in this apply. Parsed from network
//! bytes (once the sending host is authenticated): fuzzed,
//! `fuzz/fuzz_targets/pass_on.rs`.
//!
//! # Body format (version 1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FTPASSON` |
//! | 8 | 1 | version, 1 |
//! | 9 | 1 | flags: bit 0 [`PassOn::persisted_by_sender`]; every other bit 0 |
//! | 10 | … | the signed config ([`crate::signed`] file format), nothing after it |
//!
//! Rules:
//! - [`PassOn::decode`] also takes a bare signed config (magic `FTCFGSG1`),
//!   the body of `ClientMsg::HostApply` that hosts without this format send:
//!   it says nothing of the sender, so its flag reads false.
//! - Anything else is refused with a [`PassOnError`]: another magic, another
//!   version, an unknown flag bit (a later meaning must come with a new
//!   version, never be ignored), a signed config that does not decode.
//! - One body per value: whatever decodes in this format encodes back to the
//!   same bytes.
//!
//! A host that does not know `HostPassOn` refuses it before the handshake
//! (an unknown message); the sender then passes the bare signed config on as
//! `HostApply` (`heartbeat::status_service::apply`).
//!
//! NOTICE: this is a wire format between hosts of different builds; a
//! change of layout or meaning needs a new version.

use crate::signed::{self, SignedConfig, SignedError};

use super::apply::MAX_APPLY_FRAME;

/// First bytes of a pass-on body.
pub const MAGIC: [u8; 8] = *b"FTPASSON";
/// The body version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the signed config.
pub const HEADER_LEN: usize = 10;
/// Flag bit: [`PassOn::persisted_by_sender`].
const PERSISTED_BY_SENDER: u8 = 1;
/// Every flag bit version 1 defines.
const KNOWN_FLAGS: u8 = PERSISTED_BY_SENDER;

/// Largest pass-on body a host reads: the header and the largest signed
/// config (what `MAX_APPLY_FRAME` allows an operator to send).
pub const MAX_PASS_ON_FRAME: usize = HEADER_LEN + MAX_APPLY_FRAME;

// The two magics tell the two bodies apart by their first 8 bytes.
const _: () = assert!(u64::from_le_bytes(MAGIC) != u64::from_le_bytes(signed::MAGIC));

/// An operator's apply as one host passes it on to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassOn {
    pub config: SignedConfig,
    /// The sender persisted `config` in this apply, as the host the operator
    /// asked. A host persists only a config newer than the one it holds and
    /// what it holds only ever grows, so it never held this one before: a
    /// host that took it from the sender by other means (its catch-up) took
    /// it during this apply. False when the sender held it already, or could
    /// not persist it, and in a bare (older) body.
    pub persisted_by_sender: bool,
}

/// Why a pass-on body was refused. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum PassOnError {
    #[error("pass-on body: {have} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated { have: usize },
    #[error("pass-on body: neither a pass-on (magic FTPASSON) nor a signed config (FTCFGSG1)")]
    WrongMagic,
    #[error(
        "pass-on body version {0}: this build reads version {VERSION} (is the sending host newer?)"
    )]
    Version(u8),
    #[error("pass-on body: unknown flags {0:#04x} (version {VERSION} defines {KNOWN_FLAGS:#04x})")]
    Flags(u8),
    #[error("pass-on body: {0}")]
    Signed(#[from] SignedError),
}

impl PassOn {
    /// The body (version [`VERSION`]).
    pub fn encode(&self) -> Vec<u8> {
        let flags = if self.persisted_by_sender {
            PERSISTED_BY_SENDER
        } else {
            0
        };
        let mut v = Vec::with_capacity(HEADER_LEN + 12 + self.config.canonical.len() + 64);
        v.extend(MAGIC);
        v.push(VERSION);
        v.push(flags);
        v.extend(self.config.encode());
        v
    }

    /// Reads a body: this format, or a bare signed config (module rules).
    /// Nothing is verified here: the receiving host checks the signature
    /// when it persists.
    pub fn decode(bytes: &[u8]) -> Result<Self, PassOnError> {
        if bytes.starts_with(&signed::MAGIC) {
            return Ok(PassOn {
                config: SignedConfig::decode(bytes)?,
                persisted_by_sender: false,
            });
        }
        if bytes.len() < HEADER_LEN {
            // A short prefix of either magic is a cut body; other bytes are
            // not a body at all.
            let n = bytes.len().min(MAGIC.len());
            let cut = bytes[..n] == MAGIC[..n] || bytes[..n] == signed::MAGIC[..n];
            return Err(match cut {
                true => PassOnError::Truncated { have: bytes.len() },
                false => PassOnError::WrongMagic,
            });
        }
        if bytes[..8] != MAGIC {
            return Err(PassOnError::WrongMagic);
        }
        if bytes[8] != VERSION {
            return Err(PassOnError::Version(bytes[8]));
        }
        let flags = bytes[9];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(PassOnError::Flags(flags));
        }
        Ok(PassOn {
            config: SignedConfig::decode(&bytes[HEADER_LEN..])?,
            persisted_by_sender: flags & PERSISTED_BY_SENDER != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> SignedConfig {
        let key = crate::keys::generate_signing_key().unwrap().0;
        let c = crate::parse(include_str!("../../../examples/cluster.toml"))
            .unwrap()
            .config;
        SignedConfig::sign(&c, &crate::keys::load_signing_key(&key).unwrap()).unwrap()
    }

    #[test]
    fn a_body_round_trips_with_and_without_the_flag() {
        let config = signed();
        for persisted_by_sender in [true, false] {
            let p = PassOn {
                config: config.clone(),
                persisted_by_sender,
            };
            let body = p.encode();
            assert_eq!(body[..HEADER_LEN - 1], *b"FTPASSON\x01");
            assert_eq!(body[9], persisted_by_sender as u8);
            assert_eq!(body[HEADER_LEN..], config.encode());
            assert_eq!(PassOn::decode(&body).unwrap(), p);
        }
    }

    #[test]
    fn a_bare_signed_config_is_an_older_hosts_body_without_the_flag() {
        let config = signed();
        let p = PassOn::decode(&config.encode()).unwrap();
        assert_eq!(
            p,
            PassOn {
                config,
                persisted_by_sender: false
            }
        );
    }

    #[test]
    fn every_cut_and_garbage_is_refused_with_the_reason() {
        let body = PassOn {
            config: signed(),
            persisted_by_sender: true,
        }
        .encode();
        for cut in 0..body.len() {
            assert!(PassOn::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let msg = |b: &[u8]| PassOn::decode(b).unwrap_err().to_string();
        assert!(matches!(
            PassOn::decode(&body[..5]),
            Err(PassOnError::Truncated { have: 5 })
        ));
        assert!(matches!(
            PassOn::decode(b"FTCFG"),
            Err(PassOnError::Truncated { have: 5 })
        ));
        assert!(matches!(
            PassOn::decode(&body[..HEADER_LEN]),
            Err(PassOnError::Signed(SignedError::Truncated {
                need: 12,
                have: 0
            }))
        ));
        assert_eq!(
            msg(b"GET / HTTP/1.1\r\n"),
            "pass-on body: neither a pass-on (magic FTPASSON) nor a signed config (FTCFGSG1)"
        );
        assert!(matches!(
            PassOn::decode(&body[..9]),
            Err(PassOnError::Truncated { have: 9 })
        ));
        assert!(matches!(PassOn::decode(b"x"), Err(PassOnError::WrongMagic)));
        assert!(matches!(
            PassOn::decode(b""),
            Err(PassOnError::Truncated { have: 0 })
        ));

        let mut v2 = body.clone();
        v2[8] = 2;
        assert_eq!(
            msg(&v2),
            "pass-on body version 2: this build reads version 1 (is the sending host newer?)"
        );
        let mut flags = body.clone();
        flags[9] = 0x03;
        assert_eq!(
            msg(&flags),
            "pass-on body: unknown flags 0x03 (version 1 defines 0x01)"
        );
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            msg(&longer),
            "pass-on body: signed config: 1 bytes after the signature"
        );
        let mut inner = body.clone();
        inner[HEADER_LEN] = b'X';
        assert!(matches!(
            PassOn::decode(&inner),
            Err(PassOnError::Signed(SignedError::WrongMagic))
        ));
    }

    #[test]
    fn the_largest_signed_config_fits_the_frame() {
        assert_eq!(
            MAX_PASS_ON_FRAME,
            HEADER_LEN + 12 + signed::MAX_CONFIG_LEN + signed::SIGNATURE_LEN
        );
    }
}
