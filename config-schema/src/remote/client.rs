//! The client side: connect, read the host's challenge, send the signed
//! query, read the reply (`ftctl status --cluster`), and the same connect
//! step for host-to-host queries.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::auth::{AuthError, OperatorKey};
use super::wire::{self, OperatorRequest, Reply, ServerHello, WireError};
use super::{MAX_REPLY_FRAME, PORT, VERSION};

/// Why a query got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr:?} is not an address (want IP, IP:PORT or NAME:PORT)")]
    Address { addr: String },
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
}

/// `IP`, `IP:PORT` or `NAME:PORT`; the port defaults to [`PORT`].
pub fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    let bad = || ClientError::Address { addr: addr.into() };
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT));
    }
    addr.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// Connects and reads the host's hello.
pub fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(TcpStream, ServerHello), ClientError> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|error| ClientError::Connect { addr, error })?;
    let wire = |error| ClientError::Wire { addr, error };
    s.set_read_timeout(Some(timeout))
        .map_err(|e| wire(e.into()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| wire(e.into()))?;
    let hello: ServerHello = wire::read_frame(&mut s, MAX_REPLY_FRAME).map_err(wire)?;
    if hello.version != VERSION {
        return Err(ClientError::Version {
            addr,
            got: hello.version,
        });
    }
    Ok((s, hello))
}

/// One signed operator query. `timeout` bounds each read: a cluster query
/// waits for the queried host to gather the others (a few seconds at most).
pub fn query(
    addr: SocketAddr,
    key: &OperatorKey,
    request: OperatorRequest,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let (mut s, hello) = connect(addr, timeout)?;
    let msg = key
        .sign(&hello, request)
        .map_err(|error| ClientError::Auth { addr, error })?;
    let wire = |error| ClientError::Wire { addr, error };
    wire::write_frame(&mut s, &msg).map_err(wire)?;
    wire::read_frame(&mut s, MAX_REPLY_FRAME).map_err(wire)
}
