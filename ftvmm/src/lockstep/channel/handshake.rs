//! The Noise `IK` handshake (via `snow`) that opens a channel: the initiator
//! (the Primary) knows the responder's static key from the config; the
//! responder (the Secondary) learns the initiator's static key from the first
//! message and accepts it only if the caller maps it to an allowed host.
//!
//! Handshake messages travel as `len:u16be message`; the whole handshake has
//! one deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use snow::{Builder, StatelessTransportState};

use super::{hex, ChannelError, Identity};

/// The Noise protocol of the channel.
pub const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: both sides must speak this protocol version.
const PROLOGUE: &[u8] = b"ftvmm logging channel v1";
/// Longest handshake message we accept (IK's are 96 and 48 bytes without payload).
const MAX_HANDSHAKE_MSG: usize = 1024;

fn builder<'a>(id: &'a Identity) -> Builder<'a> {
    Builder::new(PATTERN.parse().expect("valid Noise pattern"))
        .local_private_key(&id.private_key)
        .prologue(PROLOGUE)
}

fn hs_err(what: &str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Handshake(format!("{what}: {e}"))
}

fn remaining(deadline: Instant) -> Result<Duration, ChannelError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ChannelError::Handshake("timed out".into()));
    }
    Ok(left)
}

fn io_err(what: &str, e: std::io::Error) -> ChannelError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            ChannelError::Handshake(format!("timed out {what}"))
        }
        ErrorKind::UnexpectedEof => {
            ChannelError::Handshake(format!("peer closed the connection {what}"))
        }
        _ => hs_err(what, e),
    }
}

fn send(stream: &mut TcpStream, msg: &[u8], deadline: Instant) -> Result<(), ChannelError> {
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(ChannelError::Io)?;
    let mut frame = (msg.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(msg);
    stream
        .write_all(&frame)
        .map_err(|e| io_err("while sending a handshake message", e))
}

fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ChannelError> {
    let mut got = 0;
    while got < buf.len() {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(ChannelError::Io)?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(io_err(
                    "during the handshake",
                    ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("waiting for a handshake message", e)),
        }
    }
    Ok(())
}

fn recv(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, ChannelError> {
    let mut len = [0u8; 2];
    read_exact(stream, &mut len, deadline)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(ChannelError::Handshake(format!(
            "handshake message of {len} bytes (at most {MAX_HANDSHAKE_MSG})"
        )));
    }
    let mut msg = vec![0u8; len];
    read_exact(stream, &mut msg, deadline)?;
    Ok(msg)
}

/// Restores blocking I/O without timeouts once the handshake is done.
fn clear_timeouts(stream: &TcpStream) -> Result<(), ChannelError> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(())
}

/// Runs the initiator's side on a connected stream.
pub fn initiate(
    stream: &mut TcpStream,
    id: &Identity,
    peer_public: &[u8; 32],
    timeout: Duration,
) -> Result<StatelessTransportState, ChannelError> {
    let deadline = Instant::now() + timeout;
    let mut hs = builder(id)
        .remote_public_key(peer_public)
        .build_initiator()
        .map_err(|e| hs_err("cannot set up Noise", e))?;
    let mut buf = vec![0u8; MAX_HANDSHAKE_MSG];
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(|e| hs_err("cannot write the first message", e))?;
    send(stream, &buf[..n], deadline)?;
    let reply = recv(stream, deadline).map_err(|e| match e {
        ChannelError::Handshake(s) if s.contains("closed") => ChannelError::Handshake(format!(
            "{s} (the responder refused our key, or it is not the host whose key we expect)"
        )),
        e => e,
    })?;
    hs.read_message(&reply, &mut buf)
        .map_err(|e| hs_err("the responder's reply did not authenticate", e))?;
    let t = hs
        .into_stateless_transport_mode()
        .map_err(|e| hs_err("cannot enter transport mode", e))?;
    clear_timeouts(stream)?;
    Ok(t)
}

/// Runs the responder's side on an accepted stream; returns the transport
/// state and the host name `allowed` gave the initiator's key.
pub fn respond(
    stream: &mut TcpStream,
    id: &Identity,
    allowed: &dyn Fn(&[u8; 32]) -> Option<String>,
    timeout: Duration,
) -> Result<(StatelessTransportState, String), ChannelError> {
    let deadline = Instant::now() + timeout;
    let mut hs = builder(id)
        .build_responder()
        .map_err(|e| hs_err("cannot set up Noise", e))?;
    let first = recv(stream, deadline)?;
    let mut buf = vec![0u8; MAX_HANDSHAKE_MSG];
    hs.read_message(&first, &mut buf).map_err(|e| {
        hs_err(
            "the initiator's first message did not authenticate (it expects another responder key, or it is corrupt)",
            e,
        )
    })?;
    let key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| ChannelError::Handshake("no initiator static key".into()))?;
    let name = allowed(&key).ok_or_else(|| ChannelError::UnknownPeer { key: hex(&key) })?;
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(|e| hs_err("cannot write the reply", e))?;
    send(stream, &buf[..n], deadline)?;
    let t = hs
        .into_stateless_transport_mode()
        .map_err(|e| hs_err("cannot enter transport mode", e))?;
    clear_timeouts(stream)?;
    Ok((t, name))
}
