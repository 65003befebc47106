//! Cluster status over the network, for operators: the wire protocol, the
//! operator's signature, the server loop and the client `ftctl` uses.
//!
//! One TCP connection per query, on [`PORT`] of a host's FT address:
//!
//! ```text
//! server -> client   ServerHello { version, cluster, host, nonce }      (fresh 32 random bytes)
//! client -> server   ClientMsg::Operator { public_key, request, signature }
//!                  | ClientMsg::Host { from, noise }                     (host to host, see below)
//! server -> client   Reply::Sealed { noise } | Reply::Refused { reason }   (operator)
//! server -> client   sealed: Reply::Cluster | Reply::Host | Reply::Metrics | Reply::Refused
//! ```
//!
//! An apply (`ftctl apply`, [`apply`]) is an operator request naming the
//! SHA-256 of a signed config; only once it is authenticated does the server
//! read the signed config as a second, larger frame, and it answers
//! `Reply::Applied` with one line per host.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many
//! bytes of JSON. A frame longer than its cap ([`MAX_CLIENT_FRAME`] for what
//! a server reads, [`MAX_REPLY_FRAME`] for replies) is refused before it is
//! read; every read has a deadline ([`IO_TIMEOUT`]).
//!
//! Authentication (`auth`): the operator signs, with an Ed25519 key listed
//! in the signed config's `[[operators]]`, the bytes of
//! `(domain, cluster, host, nonce, request)`. The nonce is fresh for each
//! connection and forgotten when it closes, so a recorded query is refused on
//! any other connection (replay), and a query for one host is refused by
//! another. The server checks the key against the config it runs and refuses
//! others with a reason; it logs refusals at most once per 10 s.
//!
//! The replies to an authenticated operator are sealed ([`sealed`]): a Noise
//! NK exchange keyed by the host's X25519 key from the config the operator
//! holds (`ftctl --config`), so they are encrypted to the operator and no
//! machine in the middle can forge them; message 1 of that exchange is part
//! of what the operator signs. A refusal before authentication stays plain
//! (it only ever reads as a refusal). Host-to-host
//! gathering (`ClientMsg::Host`) runs over Noise with the hosts' X25519 keys
//! from the config and is implemented by the heartbeat daemon, which serves
//! this protocol.

pub mod apply;
pub mod auth;
pub mod client;
pub mod page;
pub mod pass_on;
pub mod render;
pub mod report;
pub mod sealed;
pub mod server;
pub mod wire;

pub use wire::{ClientMsg, OperatorRequest, Reply, ServerHello, WireError};

use std::time::Duration;

/// The TCP port of the status service, on each host's FT address.
pub const PORT: u16 = 7401;
/// Protocol version in [`ServerHello`].
pub const VERSION: u32 = 2;
/// Largest frame a server reads from a client.
pub const MAX_CLIENT_FRAME: usize = 8 << 10;
/// Largest reply (or hello) frame a client reads.
pub const MAX_REPLY_FRAME: usize = 8 << 20;
/// Deadline of every read and write of a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
