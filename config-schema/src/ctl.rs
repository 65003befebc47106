//! The small typed control protocol the daemons serve on their Unix sockets.
//!
//! One request per connection: the client writes one JSON `Request` line, the
//! daemon answers one JSON `Response` line and closes. Each daemon answers
//! `Status` with its own JSON object (a free-form map, so each daemon owns its
//! fields) and refuses requests it does not know with `Response::Error`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const FTVMM_SOCKET: &str = "/run/ftvmm.sock";
pub const HEARTBEAT_SOCKET: &str = "/run/heartbeat.sock";
pub const FENCING_SOCKET: &str = "/run/fencing.sock";

/// Requests understood by the daemons (each answers the ones that concern it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every daemon: its status as a JSON object.
    Status,
    /// ftvmm: start the named VM from the config.
    StartVm { name: String },
    /// ftvmm: stop the named VM.
    StopVm { name: String },
    /// fencing: decide, once and for all, who owns `generation` of `vm`. The
    /// answer is final: every later `Acquire` of the same (vm, generation) by
    /// any host returns the same owner. Answered with `Response::Decided`.
    Acquire { vm: String, generation: u64 },
    /// fencing: the host-liveness (delta) leases it reads on the shared device.
    /// Answered with `Response::Leases`.
    Leases,
    /// heartbeat: the membership/suspicion view. Answered with `Response::Peers`.
    Peers,
    /// heartbeat: ftvmm saw traffic from `host` on a logging channel (a sign of
    /// life that counts like a heartbeat).
    PeerAlive { host: String },
    /// ftvmm: fencing can no longer renew this host's lease: hold every output
    /// of every VM (`hold = true`) or release the hold (`hold = false`). ftvmm
    /// answers `Ok` only once the hold is in force.
    HoldOutput { hold: bool, reason: String },
    /// ftvmm -> fencing: this host must be reset (a disk request of a VM has
    /// been in flight longer than [`IO_AGE_LIMIT_MS`], so it may land late,
    /// DESIGN §5). Fencing stops feeding the watchdog and answers `Ok`.
    ResetHost { reason: String },
}

/// A disk request of a VM that has not completed this long after ftvmm
/// released it to storage gets the host reset ([`Request::ResetHost`]).
pub const IO_AGE_LIMIT_MS: u64 = 2_000;

/// The watchdog timeout every host plans for (fencing arms `/dev/watchdog`
/// with it; lease and late-write arithmetic use it).
pub const WATCHDOG_TIMEOUT_S: u32 = 5;

/// After a new Primary goes live it defers writes to sectors the deposed
/// Primary may still have had in flight for this long: such a write was
/// released no later than the go-live, completes within
/// [`IO_AGE_LIMIT_MS`] or the old host is reset by its watchdog within
/// [`WATCHDOG_TIMEOUT_S`] after that; one second covers the checks' periods.
pub const LATE_WRITE_BOUND_MS: u64 = IO_AGE_LIMIT_MS + WATCHDOG_TIMEOUT_S as u64 * 1000 + 1_000;

/// One host as the heartbeat daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub host: String,
    /// Heard from (heartbeat or logging channel) within the failure timeout.
    pub alive: bool,
    /// Milliseconds since the last sign of life; `None` if never heard.
    pub last_seen_ms: Option<u64>,
}

/// One host's delta lease as the fencing agent last read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub host: String,
    /// The lease was renewed (its counter moved) within the lease timeout.
    pub live: bool,
    /// Milliseconds since the counter was last seen to move; `None` if never.
    pub last_renewal_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status {
        status: serde_json::Value,
    },
    Ok,
    Error {
        message: String,
    },
    /// fencing: the owner of (vm, generation); `won` is true when that is the
    /// asking host.
    Decided {
        vm: String,
        generation: u64,
        owner: String,
        won: bool,
    },
    Leases {
        leases: Vec<LeaseView>,
    },
    Peers {
        peers: Vec<PeerView>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed message on {path}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("message on {path} exceeds {MAX_LINE} bytes")]
    TooLong { path: String },
}

/// A message line longer than this is refused.
pub const MAX_LINE: usize = 1 << 20;

/// Sends one request to the daemon at `path` and returns its response.
pub fn query(path: &Path, req: &Request) -> Result<Response, CtlError> {
    let p = path.display().to_string();
    let io = |source| CtlError::Io {
        path: p.clone(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: p.clone(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("Request always serializes");
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    read_message(&mut BufReader::new(s), &p)
}

/// Reads one JSON line (bounded by `MAX_LINE`) and decodes it.
pub fn read_message<T: for<'de> Deserialize<'de>, R: BufRead>(
    r: &mut R,
    path: &str,
) -> Result<T, CtlError> {
    let mut buf = Vec::new();
    let mut limited = std::io::Read::take(r, MAX_LINE as u64 + 1);
    limited
        .read_until(b'\n', &mut buf)
        .map_err(|source| CtlError::Io {
            path: path.to_string(),
            source,
        })?;
    if buf.len() > MAX_LINE {
        return Err(CtlError::TooLong {
            path: path.to_string(),
        });
    }
    serde_json::from_slice(&buf).map_err(|source| CtlError::Decode {
        path: path.to_string(),
        source,
    })
}

/// Writes one JSON line.
pub fn write_message<T: Serialize, W: Write>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_garbage_is_an_error() {
        let line = serde_json::to_string(&Request::StartVm { name: "kv".into() }).unwrap();
        let mut r = std::io::Cursor::new(format!("{line}\n"));
        let back: Request = read_message(&mut r, "test").unwrap();
        assert_eq!(back, Request::StartVm { name: "kv".into() });
        let mut g = std::io::Cursor::new(b"\xff\x00garbage\n".to_vec());
        assert!(matches!(
            read_message::<Request, _>(&mut g, "test"),
            Err(CtlError::Decode { .. })
        ));
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut r = std::io::Cursor::new(vec![b'a'; MAX_LINE + 10]);
        assert!(matches!(
            read_message::<Request, _>(&mut r, "test"),
            Err(CtlError::TooLong { .. })
        ));
    }
}
