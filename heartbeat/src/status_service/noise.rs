//! Host to host over the status service: one Noise `IK_25519_ChaChaPoly_BLAKE2s`
//! exchange (snow) keyed by the hosts' X25519 keys from the signed config.
//!
//! ```text
//! A -> B   ClientMsg::Host { from: A, noise: IK message 1 }   payload: B's challenge (nonce)
//! B -> A   raw frame: IK message 2 (empty payload)
//! B -> A   raw frames: transport messages: [total length u32 BE], then the
//!          report's JSON in chunks (`config_schema::remote::sealed::Sealed`)
//! ```
//!
//! An applied config passes between hosts the same way with
//! `ClientMsg::HostPassOn` and its own prologue ([`Kind::PassOn`]): after the
//! handshake A sends the pass-on body (`config_schema::remote::pass_on`: the
//! signed config and whether A persisted it in this apply) like a report
//! (length, chunks), and B answers its one-line result like a report.
//! [`Kind::Apply`] (`ClientMsg::HostApply`) is the same with the bare signed
//! config as body: what hosts without `HostPassOn` send and take (they
//! refuse `HostPassOn` before the handshake, [`PeerError::Refused`]).
//! [`Kind::Fetch`] (`ClientMsg::HostFetch`) asks for B's applied config
//! instead of its report.
//!
//! Rules: B accepts message 1 only from the static key the config gives the
//! host named `from`, and only if its payload is this connection's nonce (a
//! recorded message 1 replayed on another connection fails). The report is
//! encrypted to A's ephemeral key: only A reads it. Total size ≤
//! [`MAX_REPLY_FRAME`].

use std::io::{Read, Write};

use config_schema::remote::apply::MAX_APPLY_FRAME;
use config_schema::remote::pass_on::MAX_PASS_ON_FRAME;
use config_schema::remote::sealed::{SealError, Sealed, MAX_NOISE};
use config_schema::remote::wire::{self, read_raw, write_raw};
use config_schema::remote::{ClientMsg, ServerHello, MAX_REPLY_FRAME};
use snow::Builder;

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// What a host-to-host exchange is for (each has its own prologue, so a
/// handshake for one is refused as the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A asks for B's report.
    Status,
    /// A passes on a bare signed config; B answers its result (hosts
    /// without [`Kind::PassOn`]).
    Apply,
    /// A passes on a signed config with what it knows of it
    /// (`config_schema::remote::pass_on::PassOn`); B answers its result.
    PassOn,
    /// A asks for B's applied signed config (catching up).
    Fetch,
}

impl Kind {
    fn message(self, from: String, noise: String) -> ClientMsg {
        match self {
            Kind::Status => ClientMsg::Host { from, noise },
            Kind::Apply => ClientMsg::HostApply { from, noise },
            Kind::PassOn => ClientMsg::HostPassOn { from, noise },
            Kind::Fetch => ClientMsg::HostFetch { from, noise },
        }
    }
}

fn prologue(kind: Kind, cluster: &str, responder: &str) -> Vec<u8> {
    let what = match kind {
        Kind::Status => "status",
        Kind::Apply => "apply",
        Kind::PassOn => "pass-on",
        Kind::Fetch => "fetch",
    };
    format!("ftappliance host {what} v1\0{cluster}\0{responder}").into_bytes()
}

/// Why a host-to-host exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("static key is not host {0}'s key in the config")]
    WrongKey(String),
    #[error("the challenge in the noise message is not this connection's (replayed?)")]
    WrongNonce,
    #[error("{0}")]
    Protocol(String),
    /// B refused before the handshake (`Reply::Refused`, as it came): an
    /// unknown host or key, or a message kind B does not know; B did
    /// nothing with the exchange.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Sealed(#[from] SealError),
}

/// A's side: answers `hello` (from `peer`, whose key is `peer_key`) and
/// returns the report's JSON bytes.
pub fn ask<S: Read + Write>(
    stream: &mut S,
    hello: &ServerHello,
    me: &str,
    my_key: &[u8; 32],
    peer_key: &[u8; 32],
) -> Result<Vec<u8>, PeerError> {
    ask_with(stream, hello, (me, my_key), peer_key, Kind::Status, &[])
}

/// A's side of any [`Kind`]: handshake, then `body` (for [`Kind::Apply`] and
/// [`Kind::PassOn`]), then B's answer's bytes.
pub fn ask_with<S: Read + Write>(
    stream: &mut S,
    hello: &ServerHello,
    (me, my_key): (&str, &[u8; 32]),
    peer_key: &[u8; 32],
    kind: Kind,
    body: &[u8],
) -> Result<Vec<u8>, PeerError> {
    let nonce =
        hex::decode(&hello.nonce).map_err(|_| PeerError::Protocol("nonce not hex".into()))?;
    let mut hs = Builder::new(PATTERN.parse()?)
        .prologue(&prologue(kind, &hello.cluster, &hello.host))
        .local_private_key(my_key)
        .remote_public_key(peer_key)
        .build_initiator()?;
    let mut buf = vec![0u8; MAX_NOISE];
    let n = hs.write_message(&nonce, &mut buf)?;
    let msg = kind.message(me.to_string(), hex::encode(&buf[..n]));
    wire::write_frame(stream, &msg)?;
    let m2 = read_raw(stream, MAX_NOISE)?;
    if let Ok(text) = std::str::from_utf8(&m2) {
        if text.starts_with("{\"result\":\"refused\"") {
            return Err(PeerError::Refused(text.to_string()));
        }
    }
    hs.read_message(&m2, &mut buf)?;
    let mut t = Sealed::from_transport(hs.into_transport_mode()?);
    if matches!(kind, Kind::Apply | Kind::PassOn) {
        t.send(stream, body)?;
    }
    Ok(t.recv(stream, MAX_REPLY_FRAME)?)
}

/// Who answers a host-to-host exchange, on which connection.
pub struct Responder<'a> {
    pub cluster: &'a str,
    pub me: &'a str,
    pub my_key: &'a [u8; 32],
    pub nonce: &'a [u8; 32],
}

/// B's side of any [`Kind`]: checks message 1 (`from`'s key, this
/// connection's nonce), receives A's body for [`Kind::Apply`] (at most
/// `MAX_APPLY_FRAME` bytes) and [`Kind::PassOn`] (at most
/// `MAX_PASS_ON_FRAME`), then sends `respond(body)`.
pub fn answer_with<S: Read + Write>(
    stream: &mut S,
    who: &Responder<'_>,
    (from, noise): (&str, &str),
    key_of: impl Fn(&str) -> Option<[u8; 32]>,
    kind: Kind,
    respond: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Result<(), PeerError> {
    let expected = key_of(from).ok_or_else(|| PeerError::UnknownHost(from.to_string()))?;
    let m1 = hex::decode(noise).map_err(|_| PeerError::Protocol("noise message not hex".into()))?;
    let mut hs = Builder::new(PATTERN.parse()?)
        .prologue(&prologue(kind, who.cluster, who.me))
        .local_private_key(who.my_key)
        .build_responder()?;
    let mut buf = vec![0u8; MAX_NOISE];
    let n = hs.read_message(&m1, &mut buf)?;
    if hs.get_remote_static() != Some(&expected[..]) {
        return Err(PeerError::WrongKey(from.to_string()));
    }
    if buf[..n] != who.nonce[..] {
        return Err(PeerError::WrongNonce);
    }
    let n = hs.write_message(&[], &mut buf)?;
    write_raw(stream, &buf[..n])?;
    let mut t = Sealed::from_transport(hs.into_transport_mode()?);
    let body = match kind {
        Kind::Apply => t.recv(stream, MAX_APPLY_FRAME)?,
        Kind::PassOn => t.recv(stream, MAX_PASS_ON_FRAME)?,
        Kind::Status | Kind::Fetch => Vec::new(),
    };
    let answer = respond(body);
    Ok(t.send(stream, &answer)?)
}
