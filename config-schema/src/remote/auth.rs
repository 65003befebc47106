//! The operator's signature on a status query: what is signed, signing with
//! an operator key (`ftctl`), and checking it against the config's
//! `[[operators]]` (the host).
//!
//! Signed bytes: the postcard encoding of
//! `(DOMAIN, cluster, host, nonce, request, noise)` — strings and bytes
//! length-prefixed, so no two tuples share an encoding; `noise` is message 1
//! of the exchange that seals the replies (`super::sealed`), so nobody can
//! swap in their own and read the answers. The nonce is the server's fresh challenge
//! for this connection: a signature is good for one connection to one host.

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use super::wire::{ClientMsg, OperatorRequest, ServerHello};
use crate::keys;
use crate::model::ClusterConfig;

/// Separates these signatures from every other use of an Ed25519 key.
pub const DOMAIN: &str = "ftappliance operator status query v2";

/// Why a query was not authenticated. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this cluster's config lists no [[operators]]: nobody may query it over the network")]
    NoOperators,
    #[error("public key {0:?} is not 64 hex digits")]
    BadKey(String),
    #[error(
        "key {0} is not an operator of this cluster's config (add it to [[operators]] and sign a new config)"
    )]
    NotAnOperator(String),
    #[error("signature is not 128 hex digits")]
    BadSignatureEncoding,
    #[error(
        "signature of operator {0} does not verify for this connection's challenge \
         (a replayed or altered query, or one signed for another host)"
    )]
    BadSignature(String),
    #[error("no randomness for a challenge")]
    Rng,
}

/// A fresh challenge.
pub fn fresh_nonce() -> Result<[u8; 32], AuthError> {
    let mut n = [0u8; 32];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| AuthError::Rng)?;
    Ok(n)
}

/// The bytes an operator signs.
pub fn signed_bytes(
    (cluster, host, nonce): (&str, &str, &[u8; 32]),
    req: OperatorRequest,
    noise: &[u8],
) -> Vec<u8> {
    postcard::to_stdvec(&(DOMAIN, cluster, host, nonce, req, noise))
        .expect("postcard encodes a tuple")
}

/// An operator's signing key (PKCS#8, as `ftctl operator-keygen` writes it).
pub struct OperatorKey {
    pair: Ed25519KeyPair,
}

impl OperatorKey {
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, keys::KeyError> {
        Ok(OperatorKey {
            pair: keys::load_signing_key(der)?,
        })
    }

    /// The public key as `[[operators]] public_key` spells it.
    pub fn public_hex(&self) -> String {
        hex::encode(keys::signing_public_key(&self.pair))
    }

    /// The signed query answering `hello`, carrying `noise` (message 1 of
    /// the sealing exchange).
    pub fn sign(
        &self,
        hello: &ServerHello,
        request: OperatorRequest,
        noise: &[u8],
    ) -> Result<ClientMsg, AuthError> {
        let nonce = parse32(&hello.nonce).ok_or(AuthError::BadSignatureEncoding)?;
        let sig = self.pair.sign(&signed_bytes(
            (&hello.cluster, &hello.host, &nonce),
            request,
            noise,
        ));
        Ok(ClientMsg::Operator {
            public_key: self.public_hex(),
            request,
            signature: hex::encode(sig.as_ref()),
            noise: hex::encode(noise),
        })
    }
}

fn parse32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// The operators a host accepts: the `[[operators]]` of the config it runs.
#[derive(Debug, Clone)]
pub struct Operators {
    keys: Vec<(String, [u8; 32])>,
}

impl Operators {
    /// From a validated config (its keys are 64 hex digits; others are skipped).
    pub fn of(config: &ClusterConfig) -> Self {
        Operators {
            keys: config
                .operators
                .iter()
                .filter_map(|o| Some((o.name.clone(), parse32(&o.public_key)?)))
                .collect(),
        }
    }

    /// The operator's name if `public_key` is listed and `signature` signs
    /// `request` for this connection (`cluster`, `host`, `nonce`).
    pub fn verify(
        &self,
        (cluster, host, nonce): (&str, &str, &[u8; 32]),
        public_key: &str,
        request: OperatorRequest,
        signature: &str,
        noise: &[u8],
    ) -> Result<&str, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoOperators);
        }
        let key = parse32(public_key).ok_or_else(|| AuthError::BadKey(abbrev(public_key)))?;
        let name = self
            .keys
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(n, _)| n.as_str())
            .ok_or_else(|| AuthError::NotAnOperator(abbrev(public_key)))?;
        let sig = hex::decode(signature)
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or(AuthError::BadSignatureEncoding)?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&signed_bytes((cluster, host, nonce), request, noise), &sig)
            .map_err(|_| AuthError::BadSignature(name.to_string()))?;
        Ok(name)
    }
}

/// The first 16 characters of a client-supplied string, for messages.
fn abbrev(s: &str) -> String {
    let short: String = s.chars().take(16).collect();
    if short.len() < s.len() {
        format!("{short}…")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Operator;

    fn key() -> OperatorKey {
        OperatorKey::from_pkcs8(&keys::generate_signing_key().unwrap().0).unwrap()
    }

    fn hello(nonce: [u8; 32]) -> ServerHello {
        ServerHello {
            version: 1,
            cluster: "demo".into(),
            host: "host-a".into(),
            nonce: hex::encode(nonce),
        }
    }

    fn ops(keys: &[(&str, &OperatorKey)]) -> Operators {
        let mut c = crate::parse(include_str!("../../../examples/cluster.toml"))
            .unwrap()
            .config;
        c.operators = keys
            .iter()
            .map(|(n, k)| Operator {
                name: n.to_string(),
                public_key: k.public_hex(),
            })
            .collect();
        Operators::of(&c)
    }

    fn check(ops: &Operators, h: &ServerHello, m: &ClientMsg) -> Result<String, AuthError> {
        let ClientMsg::Operator {
            public_key,
            request,
            signature,
            noise,
        } = m
        else {
            panic!("an operator message");
        };
        let nonce = parse32(&h.nonce).unwrap();
        ops.verify(
            (&h.cluster, &h.host, &nonce),
            public_key,
            *request,
            signature,
            &hex::decode(noise).unwrap(),
        )
        .map(str::to_string)
    }

    #[test]
    fn a_listed_key_signing_this_challenge_is_accepted() {
        let (alice, bob) = (key(), key());
        let ops = ops(&[("alice", &alice), ("bob", &bob)]);
        let h = hello([7; 32]);
        let m = bob.sign(&h, OperatorRequest::ClusterStatus, b"m1").unwrap();
        assert_eq!(check(&ops, &h, &m).unwrap(), "bob");
    }

    #[test]
    fn others_replays_and_alterations_are_refused() {
        let (alice, mallory) = (key(), key());
        let ops = ops(&[("alice", &alice)]);
        let h = hello([7; 32]);
        let m = mallory
            .sign(&h, OperatorRequest::ClusterStatus, b"m1")
            .unwrap();
        assert!(matches!(
            check(&ops, &h, &m),
            Err(AuthError::NotAnOperator(_))
        ));
        // Alice's query, replayed on a connection with another challenge.
        let m = alice
            .sign(&h, OperatorRequest::ClusterStatus, b"m1")
            .unwrap();
        let other = hello([8; 32]);
        assert_eq!(
            check(&ops, &other, &m),
            Err(AuthError::BadSignature("alice".into()))
        );
        // ... to another host with the same challenge, or with another request.
        let elsewhere = ServerHello {
            host: "host-b".into(),
            ..h.clone()
        };
        assert!(check(&ops, &elsewhere, &m).is_err());
        let ClientMsg::Operator {
            public_key,
            signature,
            noise,
            ..
        } = m
        else {
            unreachable!()
        };
        let altered = ClientMsg::Operator {
            public_key: public_key.clone(),
            request: OperatorRequest::HostStatus,
            signature: signature.clone(),
            noise: noise.clone(),
        };
        assert!(matches!(
            check(&ops, &h, &altered),
            Err(AuthError::BadSignature(_))
        ));
        // ... or with someone else's sealing message (they would read the reply).
        let swapped = ClientMsg::Operator {
            public_key,
            request: OperatorRequest::ClusterStatus,
            signature,
            noise: hex::encode(b"m1 of mallory"),
        };
        assert!(matches!(
            check(&ops, &h, &swapped),
            Err(AuthError::BadSignature(_))
        ));
        assert_eq!(
            check(&Operators { keys: vec![] }, &h, &altered),
            Err(AuthError::NoOperators)
        );
    }

    #[test]
    fn malformed_keys_and_signatures_are_refused_with_the_reason() {
        let alice = key();
        let ops = ops(&[("alice", &alice)]);
        let h = hello([1; 32]);
        let n = [1; 32];
        let at = ("demo", "host-a", &n);
        let req = OperatorRequest::ClusterStatus;
        assert!(matches!(
            ops.verify(at, "zz", req, "", b""),
            Err(AuthError::BadKey(_))
        ));
        let pk = alice.public_hex();
        assert_eq!(
            ops.verify(at, &pk, req, "00", b""),
            Err(AuthError::BadSignatureEncoding)
        );
        let good = alice.sign(&h, req, b"").unwrap();
        assert!(check(&ops, &h, &good).is_ok());
    }
}
