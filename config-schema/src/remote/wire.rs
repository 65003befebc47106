//! The messages of the status protocol and their framing: a 4-byte big-endian
//! length, then JSON. [`decode_client`] parses what a server reads from the
//! network before anything is authenticated (fuzzed: `fuzz/fuzz_targets/remote_wire.rs`).

use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::report::{ClusterReport, HostReport};
use super::MAX_CLIENT_FRAME;

/// The server's first message: who it is and the connection's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerHello {
    pub version: u32,
    pub cluster: String,
    pub host: String,
    /// 32 fresh random bytes, hex; what the client signs (or, host to host,
    /// carries in its Noise message).
    pub nonce: String,
}

/// What an operator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorRequest {
    /// Every host's report, gathered by the queried host.
    ClusterStatus,
    /// The queried host's report only.
    HostStatus,
    /// The queried host's figures as OpenMetrics text.
    Metrics,
    /// Apply a newer signed config (`ftctl apply`): the signed-config file
    /// whose SHA-256 this is follows as a second frame once the request is
    /// authenticated (`super::apply`).
    Apply { config_sha256: [u8; 32] },
}

/// The client's one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// An operator's signed query.
    Operator {
        /// The operator's Ed25519 public key, 64 hex digits.
        public_key: String,
        request: OperatorRequest,
        /// Ed25519 signature over `auth::signed_bytes`, 128 hex digits.
        signature: String,
        /// Message 1 of the Noise NK exchange that seals the replies (hex;
        /// `super::sealed`), covered by the signature.
        noise: String,
    },
    /// Another host of the cluster asks for this host's report: the first
    /// message of a Noise IK handshake (hex) whose payload is the nonce.
    Host { from: String, noise: String },
    /// Another host passes on an applied config: the first message of a
    /// Noise IK handshake (payload: the nonce), then the signed config
    /// encrypted (`heartbeat::status_service::noise`). What hosts without
    /// `HostPassOn` send, and what a host sends to one that refuses
    /// `HostPassOn`.
    HostApply { from: String, noise: String },
    /// Another host passes on an applied config with what it knows of it:
    /// as `HostApply` with its own Noise prologue, the body a
    /// [`super::pass_on::PassOn`]. A host without it refuses the message
    /// before the handshake (an unknown kind).
    HostPassOn { from: String, noise: String },
    /// Another host asks for this host's applied config, to catch up after
    /// it was down: Noise IK as for `Host`; the answer is the signed config
    /// of this host's active slot (empty if it was made by `make-disk`).
    HostFetch { from: String, noise: String },
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Cluster {
        report: ClusterReport,
    },
    Host {
        report: HostReport,
    },
    /// OpenMetrics text exposition (`application/openmetrics-text; version=1.0.0`).
    Metrics {
        text: String,
    },
    /// The request is authenticated: message 2 of the Noise NK exchange
    /// (hex); every later reply on the connection is sealed (`super::sealed`).
    Sealed {
        noise: String,
    },
    /// An apply request is authenticated: send the signed config now.
    SendConfig,
    /// What each host did with an applied config, one line per host.
    Applied {
        generation: u64,
        hosts: Vec<super::apply::HostApplied>,
    },
    Refused {
        reason: String,
    },
}

/// Why a frame was not read or not understood.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within the time limit")]
    Timeout,
    #[error("frame of {len} bytes exceeds the limit of {cap} bytes")]
    TooLong { len: usize, cap: usize },
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame holding `msg` as JSON.
pub fn write_frame<T: Serialize, W: Write>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg)?;
    write_raw(w, &body)
}

/// Writes one frame holding `body`.
pub fn write_raw<W: Write>(w: &mut W, body: &[u8]) -> Result<(), WireError> {
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLong {
        len: body.len(),
        cap: u32::MAX as usize,
    })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend(len.to_be_bytes());
    buf.extend(body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// A read error, with a socket timeout (`EAGAIN` under `SO_RCVTIMEO`) said as one.
fn read_error(e: std::io::Error, eof: &'static str) -> WireError {
    use std::io::ErrorKind::{TimedOut, UnexpectedEof, WouldBlock};
    match e.kind() {
        UnexpectedEof => WireError::Truncated(eof),
        WouldBlock | TimedOut => WireError::Timeout,
        _ => WireError::Io(e),
    }
}

/// Reads one frame's bytes, refusing one longer than `cap` before reading it.
pub fn read_raw<R: Read>(r: &mut R, cap: usize) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| read_error(e, "connection closed before a frame"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(WireError::TooLong { len, cap });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| read_error(e, "connection closed inside a frame"))?;
    Ok(body)
}

/// Reads one frame and decodes its JSON.
pub fn read_frame<T: DeserializeOwned, R: Read>(r: &mut R, cap: usize) -> Result<T, WireError> {
    Ok(serde_json::from_slice(&read_raw(r, cap)?)?)
}

/// Parses the bytes of a whole client frame (length prefix included): what a
/// server does with untrusted network bytes.
pub fn decode_client(bytes: &[u8]) -> Result<ClientMsg, WireError> {
    let mut r = bytes;
    let msg = read_frame(&mut r, MAX_CLIENT_FRAME)?;
    if !r.is_empty() {
        return Err(WireError::Truncated("bytes after the frame"));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &ClientMsg) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, msg).unwrap();
        v
    }

    fn query() -> ClientMsg {
        ClientMsg::Operator {
            public_key: "ab".repeat(32),
            request: OperatorRequest::ClusterStatus,
            signature: "cd".repeat(64),
            noise: "ef".repeat(48),
        }
    }

    #[test]
    fn a_frame_round_trips() {
        assert_eq!(decode_client(&frame(&query())).unwrap(), query());
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error() {
        let f = frame(&query());
        for cut in 0..f.len() {
            assert!(decode_client(&f[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(matches!(
            decode_client(&longer),
            Err(WireError::Truncated(_))
        ));
        let garbage = [&[0, 0, 0, 5][..], b"\xff{x}\x00"].concat();
        assert!(matches!(
            decode_client(&garbage),
            Err(WireError::Malformed(_))
        ));
        let unknown = br#"{"kind":"operator","public_key":"","request":"cluster_status","signature":"","noise":"","x":1}"#;
        let mut g = Vec::new();
        write_raw(&mut g, unknown).unwrap();
        assert!(matches!(decode_client(&g), Err(WireError::Malformed(_))));
    }

    #[test]
    fn apply_and_host_to_host_messages_round_trip() {
        let apply = ClientMsg::Operator {
            public_key: "ab".repeat(32),
            request: OperatorRequest::Apply {
                config_sha256: [7; 32],
            },
            signature: "cd".repeat(64),
            noise: "ef".repeat(48),
        };
        let fetch = ClientMsg::HostFetch {
            from: "host-b".into(),
            noise: "00".repeat(96),
        };
        let pass = ClientMsg::HostApply {
            from: "host-b".into(),
            noise: "00".repeat(96),
        };
        let pass_on = ClientMsg::HostPassOn {
            from: "host-b".into(),
            noise: "00".repeat(96),
        };
        for m in [apply, fetch, pass, pass_on] {
            assert_eq!(decode_client(&frame(&m)).unwrap(), m);
        }
    }

    #[test]
    fn an_overlong_frame_is_refused_before_it_is_read() {
        let huge = (MAX_CLIENT_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            decode_client(&huge),
            Err(WireError::TooLong { len, cap }) if len == MAX_CLIENT_FRAME + 1 && cap == MAX_CLIENT_FRAME
        ));
    }
}
