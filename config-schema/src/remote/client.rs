//! The client side: connect, read the host's challenge, send the signed
//! query with message 1 of the sealing exchange, open the host's sealed
//! replies with the host's key from the operator's config (`ftctl status
//! --cluster`, `ftctl apply`), and the same connect step for host-to-host
//! queries.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::auth::{AuthError, OperatorKey};
use super::sealed::{ClientSeal, SealError, Sealed};
use super::wire::{self, OperatorRequest, Reply, ServerHello, WireError};
use super::{MAX_REPLY_FRAME, PORT, VERSION};
use crate::model::ClusterConfig;

/// Why a query got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr:?} is not an address (want IP, IP:PORT or NAME:PORT)")]
    Address { addr: String },
    #[error(
        "{addr:?} is not an address (want IP, IP:PORT or NAME:PORT, NAME a DNS name this \
         machine resolves, not a [[hosts]] name): {error}"
    )]
    Resolve { addr: String, error: String },
    // Fields named `error`, not `source`: the message already says it, and
    // a `source` would be printed twice in `ftctl`'s error chain.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{addr}: {error}")]
    Wire { addr: SocketAddr, error: WireError },
    #[error("{addr} speaks status protocol version {got}; this build speaks {VERSION}")]
    Version { addr: SocketAddr, got: u32 },
    #[error("{addr}: {error}")]
    Auth { addr: SocketAddr, error: AuthError },
    #[error(
        "{addr} says it is host {host:?} of cluster {cluster:?}, which the config given \
         (--config) does not list: cannot check its answer"
    )]
    UnknownHost {
        addr: SocketAddr,
        cluster: String,
        host: String,
    },
    #[error("{addr}: the reply is not sealed by host {host}'s key from the config: {error}")]
    Unsealed {
        addr: SocketAddr,
        host: String,
        error: SealError,
    },
}

/// The hosts' X25519 public keys as the operator's copy of the cluster
/// config gives them: what a sealed reply is checked against.
#[derive(Debug, Clone, Default)]
pub struct HostKeys {
    cluster: String,
    keys: BTreeMap<String, [u8; 32]>,
}

impl HostKeys {
    /// Every host of `config` with a well-formed key (validation refuses
    /// configs without one, so none is left out of a validated config).
    pub fn of(config: &ClusterConfig) -> Self {
        let keys = config
            .hosts
            .iter()
            .filter_map(|h| {
                let k: [u8; 32] = hex::decode(&h.public_key).ok()?.try_into().ok()?;
                Some((h.name.clone(), k))
            })
            .collect();
        HostKeys {
            cluster: config.cluster.name.clone(),
            keys,
        }
    }

    /// Keys given directly (tests, tools that hold no config).
    pub fn from_pairs(cluster: &str, pairs: impl IntoIterator<Item = (String, [u8; 32])>) -> Self {
        HostKeys {
            cluster: cluster.to_string(),
            keys: pairs.into_iter().collect(),
        }
    }

    fn of_hello(&self, addr: SocketAddr, hello: &ServerHello) -> Result<&[u8; 32], ClientError> {
        self.keys
            .get(&hello.host)
            .filter(|_| hello.cluster == self.cluster)
            .ok_or_else(|| ClientError::UnknownHost {
                addr,
                cluster: hello.cluster.clone(),
                host: hello.host.clone(),
            })
    }
}

/// One operator connection after the signed request: the host's replies,
/// opened with its key.
pub struct Session {
    addr: SocketAddr,
    host: String,
    stream: TcpStream,
    sealed: Option<Sealed>,
}

impl Session {
    /// Connects, signs `request` and opens the sealed replies. A refusal
    /// before authentication comes back as `Ok` with [`Session::refused`].
    pub fn open(
        addr: SocketAddr,
        key: &OperatorKey,
        hosts: &HostKeys,
        request: OperatorRequest,
        timeout: Duration,
    ) -> Result<(Self, Option<Reply>), ClientError> {
        let (mut stream, hello) = connect(addr, timeout)?;
        let host_key = hosts.of_hello(addr, &hello)?;
        let unsealed = |error| ClientError::Unsealed {
            addr,
            host: hello.host.clone(),
            error,
        };
        let (seal, m1) = ClientSeal::start(&hello, host_key).map_err(unsealed)?;
        let msg = key
            .sign(&hello, request, &m1)
            .map_err(|error| ClientError::Auth { addr, error })?;
        let wire = |error| ClientError::Wire { addr, error };
        wire::write_frame(&mut stream, &msg).map_err(wire)?;
        let mut session = Session {
            addr,
            host: hello.host.clone(),
            stream,
            sealed: None,
        };
        match wire::read_frame(&mut session.stream, MAX_REPLY_FRAME).map_err(wire)? {
            Reply::Sealed { noise } => {
                let m2 = hex::decode(noise)
                    .map_err(|_| unsealed(SealError::Protocol("message 2 not hex".into())))?;
                session.sealed = Some(seal.finish(&m2).map_err(unsealed)?);
                Ok((session, None))
            }
            refused @ Reply::Refused { .. } => Ok((session, Some(refused))),
            other => Err(unsealed(SealError::Protocol(format!(
                "a plain reply where a sealed one belongs: {other:?}"
            )))),
        }
    }

    /// The next sealed reply.
    pub fn reply(&mut self) -> Result<Reply, ClientError> {
        let addr = self.addr;
        let host = &self.host;
        let unsealed = |error| ClientError::Unsealed {
            addr,
            host: host.clone(),
            error,
        };
        let sealed = self
            .sealed
            .as_mut()
            .ok_or_else(|| unsealed(SealError::Protocol("no sealed exchange".into())))?;
        let body = sealed
            .recv(&mut self.stream, MAX_REPLY_FRAME)
            .map_err(unsealed)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Wire {
            addr,
            error: WireError::Malformed(e),
        })
    }

    /// Sends one raw frame (an apply's signed config).
    pub fn send_raw(&mut self, body: &[u8]) -> Result<(), ClientError> {
        let addr = self.addr;
        wire::write_raw(&mut self.stream, body).map_err(|error| ClientError::Wire { addr, error })
    }
}

/// `IP`, `IP:PORT` or `NAME:PORT`; the port defaults to [`PORT`].
pub fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    let bad = || ClientError::Address { addr: addr.into() };
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT));
    }
    match addr.to_socket_addrs() {
        Ok(mut a) => a.next().ok_or_else(bad),
        // A name the resolver does not know, or no port: say which.
        Err(e) => Err(ClientError::Resolve {
            addr: addr.into(),
            error: e.to_string(),
        }),
    }
}

/// How long a connect may take, whatever the exchange's timeout: a host's
/// kernel answers a SYN at once however busy its daemons are, so a connect
/// that takes longer is to a host that is down (its ARP entry still cached,
/// the SYNs unanswered). 3 s covers one lost SYN (Linux resends the first
/// after 1 s) and keeps `ftctl page`, which asks its hosts in order, from
/// spending a long read timeout on a dead first host before the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects (within `timeout` and at most [`CONNECT_TIMEOUT`]) and reads the
/// host's hello (within `timeout`).
pub fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(TcpStream, ServerHello), ClientError> {
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(CONNECT_TIMEOUT))
        .map_err(|error| ClientError::Connect { addr, error })?;
    let wire = |error| ClientError::Wire { addr, error };
    s.set_read_timeout(Some(timeout))
        .map_err(|e| wire(e.into()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| wire(e.into()))?;
    let hello = read_hello(&mut s, addr)?;
    Ok((s, hello))
}

/// Reads the hello of the host at `addr` from a connection to it (what
/// [`connect`] does once connected): for a caller that bounds the read
/// itself, e.g. by one deadline for the whole exchange.
pub fn read_hello<R: Read>(r: &mut R, addr: SocketAddr) -> Result<ServerHello, ClientError> {
    let hello: ServerHello =
        wire::read_frame(r, MAX_REPLY_FRAME).map_err(|error| ClientError::Wire { addr, error })?;
    if hello.version != VERSION {
        return Err(ClientError::Version {
            addr,
            got: hello.version,
        });
    }
    Ok(hello)
}

/// One signed operator query, its reply opened with the host's key from
/// `hosts`. `timeout` bounds each read: a cluster query waits for the
/// queried host to gather the others (a few seconds at most).
pub fn query(
    addr: SocketAddr,
    key: &OperatorKey,
    hosts: &HostKeys,
    request: OperatorRequest,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    match Session::open(addr, key, hosts, request, timeout)? {
        (_, Some(refused)) => Ok(refused),
        (mut session, None) => session.reply(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_and_a_name_that_does_not_says_why() {
        assert_eq!(
            resolve("192.0.2.1").unwrap(),
            "192.0.2.1:7401".parse().unwrap()
        );
        assert_eq!(
            resolve("192.0.2.1:9000").unwrap(),
            "192.0.2.1:9000".parse().unwrap()
        );
        // `.invalid` never resolves (RFC 2606); a name without a port is
        // not a socket address either.
        for addr in ["host-a.invalid:7401", "localhost"] {
            let e = resolve(addr).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{addr:?} is not an address"))
                    && e.contains("not a [[hosts]] name): "),
                "{e}"
            );
        }
    }

    #[test]
    fn a_hello_is_read_from_any_reader_and_another_version_is_refused() {
        let addr: SocketAddr = "192.0.2.1:7401".parse().unwrap();
        let hello = |version| {
            let mut v = Vec::new();
            let h = ServerHello {
                version,
                cluster: "demo".into(),
                host: "host-a".into(),
                nonce: "00".repeat(32),
            };
            wire::write_frame(&mut v, &h).unwrap();
            v
        };
        let got = read_hello(&mut &hello(VERSION)[..], addr).unwrap();
        assert_eq!(
            (got.host.as_str(), got.cluster.as_str()),
            ("host-a", "demo")
        );
        let e = read_hello(&mut &hello(VERSION + 1)[..], addr).unwrap_err();
        assert!(
            matches!(e, ClientError::Version { got, .. } if got == VERSION + 1),
            "{e}"
        );
        // Nothing to read: said as a wire error at that address.
        let e = read_hello(&mut &b""[..], addr).unwrap_err().to_string();
        assert!(e.starts_with("192.0.2.1:7401: truncated frame"), "{e}");
    }
}
