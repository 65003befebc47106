//! Key material: the Ed25519 config-signing key and the hosts' X25519
//! identity keys.
//!
//! * Signing key: a PKCS#8 DER document as made by ring
//!   (`Ed25519KeyPair::generate_pkcs8`, v2 with the public key) or by OpenSSL
//!   (`openssl genpkey -algorithm ed25519 -outform DER`, v1); both load with
//!   [`load_signing_key`]. Its public half, the trust root baked into the
//!   image, is stored as the **raw 32 bytes** of the Ed25519 public key (no
//!   hex, no PEM, no newline).
//! * Host identity key: a 32-byte X25519 static secret. Files hold it as 64
//!   lowercase hex digits plus a newline (`NAME.key`); the public half likewise
//!   (`NAME.pub`), which is what goes into `hosts[].public_key`.

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("system random number generator failed")]
    Rng,
    #[error("not an Ed25519 PKCS#8 (DER) private key: {0}")]
    BadPkcs8(String),
    #[error("not a 32-byte key in hex (64 hex digits)")]
    BadHex,
}

/// A fresh Ed25519 signing key: (PKCS#8 document, raw 32-byte public key).
pub fn generate_signing_key() -> Result<(Vec<u8>, [u8; 32]), KeyError> {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Rng)?;
    let pair = load_signing_key(doc.as_ref())?;
    Ok((doc.as_ref().to_vec(), signing_public_key(&pair)))
}

/// Loads a PKCS#8 v1 or v2 Ed25519 private key.
pub fn load_signing_key(pkcs8: &[u8]) -> Result<Ed25519KeyPair, KeyError> {
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| KeyError::BadPkcs8(e.to_string()))
}

/// The raw 32-byte public key of a signing key pair.
pub fn signing_public_key(pair: &Ed25519KeyPair) -> [u8; 32] {
    pair.public_key()
        .as_ref()
        .try_into()
        .expect("Ed25519 public keys are 32 bytes")
}

/// A fresh X25519 host identity key: (secret, public).
pub fn generate_host_key() -> Result<([u8; 32], [u8; 32]), KeyError> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| KeyError::Rng)?;
    Ok((secret, host_public_key(&secret)))
}

/// The X25519 public key of a host secret.
pub fn host_public_key(secret: &[u8; 32]) -> [u8; 32] {
    let s = x25519_dalek::StaticSecret::from(*secret);
    x25519_dalek::PublicKey::from(&s).to_bytes()
}

/// Parses a hex key file's text (surrounding whitespace allowed).
pub fn parse_hex_key(text: &str) -> Result<[u8; 32], KeyError> {
    crate::validate::parse_key_hex(text.trim()).ok_or(KeyError::BadHex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_round_trips() {
        let (doc, public) = generate_signing_key().unwrap();
        let pair = load_signing_key(&doc).unwrap();
        assert_eq!(signing_public_key(&pair), public);
        assert!(load_signing_key(b"not a key").is_err());
    }

    #[test]
    fn openssl_v1_pkcs8_loads() {
        // RFC 8410 section 10.3 example private key (PKCS#8 v1, as OpenSSL writes it).
        let der = hex::decode(
            "302e020100300506032b657004220420d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842",
        )
        .unwrap();
        let pair = load_signing_key(&der).unwrap();
        assert_eq!(
            hex::encode(signing_public_key(&pair)),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
    }

    #[test]
    fn example_host_keys_match() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dev-keys/hosts");
        for h in ["host-a", "host-b", "host-c"] {
            let s = std::fs::read_to_string(format!("{dir}/{h}.key")).unwrap();
            let p = std::fs::read_to_string(format!("{dir}/{h}.pub")).unwrap();
            let secret = parse_hex_key(&s).unwrap();
            assert_eq!(host_public_key(&secret), parse_hex_key(&p).unwrap(), "{h}");
        }
    }
}
