//! `ftctl apply` over the status protocol: the operator's signed request
//! names the SHA-256 of a signed config ([`crate::signed`]); once the
//! signature checks out the server reads the signed config itself as a
//! second frame (at most [`MAX_APPLY_FRAME`] bytes, so an unauthenticated
//! client never makes a server read more than `MAX_CLIENT_FRAME`), checks
//! its hash, persists it and passes it on to the other hosts.
//!
//! ```text
//! server -> client   ServerHello
//! client -> server   ClientMsg::Operator { request: Apply { config_sha256 }, noise, .. }
//! server -> client   Reply::Sealed { noise } | Reply::Refused   (not authenticated)
//! server -> client   sealed: Reply::SendConfig
//! client -> server   raw frame: the signed-config file bytes
//! server -> client   sealed: Reply::Applied { generation, hosts: [HostApplied] } | Reply::Refused
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::OperatorKey;
use super::client::{ClientError, HostKeys, Session};
use super::wire::{OperatorRequest, Reply};
use crate::signed::{self, SignedConfig};

/// Largest signed-config frame a server reads (after authentication).
pub const MAX_APPLY_FRAME: usize = 12 + signed::MAX_CONFIG_LEN + signed::SIGNATURE_LEN;

/// One host's outcome, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostApplied {
    pub host: String,
    pub outcome: Outcome,
    /// `host-a: generation 8 persisted (was 7); live: ...; needs reboot: ...`
    /// or `host-a: refused: ...` or `host-b: unreachable: ...`.
    pub line: String,
    /// After this apply the host holds this very config: it persisted it,
    /// or refused it as not newer because it already had it (a catch-up
    /// from the host this apply went to can get there first; a second
    /// apply of the same file). `ftctl apply` fails only where this is
    /// false. Absent (an older host): false.
    #[serde(default)]
    pub holds: bool,
}

/// What a host did with the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Persisted; every change is live.
    Applied,
    /// Persisted; some changes take effect at the next boot.
    NeedsReboot,
    Refused,
    Unreachable,
}

/// Sends `config` to `addr` signed with `key`; the answer (or a refusal),
/// opened with the host's key from `hosts`.
pub fn apply(
    addr: SocketAddr,
    key: &OperatorKey,
    hosts: &HostKeys,
    config: &SignedConfig,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let request = OperatorRequest::Apply {
        config_sha256: config.sha256(),
    };
    let mut session = match Session::open(addr, key, hosts, request, timeout)? {
        (_, Some(refused)) => return Ok(refused),
        (session, None) => session,
    };
    match session.reply()? {
        Reply::SendConfig => {}
        other => return Ok(other),
    }
    session.send_raw(&config.encode())?;
    session.reply()
}
