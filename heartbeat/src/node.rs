//! One host's heartbeat core without sockets: the keys and addresses from the
//! config, the [`Membership`] view, and the packet path in both directions
//! (seal our heartbeats for every peer; judge what the [`Gate`] let through).
//! Host-testable: the daemon only moves bytes and reads the clock.
//!
//! Rule: nothing here that holds `&mut Node` does X25519. The daemon keeps the
//! node behind its lock and seals ([`seal_round`]) and opens ([`Gate::admit`])
//! outside it; [`Node::heartbeats`] and [`Node::receive`] chain both halves
//! for tests and the fuzz target.

use std::net::{IpAddr, SocketAddr};

use config_schema::runtime::RuntimeConfig;

use crate::drops::DropReason;
use crate::gate::{Admitted, Gate, Rejected};
use crate::packet::{self, Header, PacketError, Payload};
use crate::view::{Membership, Transition};

/// The UDP port heartbeats use on the FT network.
pub const PORT: u16 = 7400;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("host {0} is not in the config")]
    UnknownHost(String),
    #[error("host {host}: ft.addr {addr:?} is not a.b.c.d/prefix")]
    BadAddr { host: String, addr: String },
    #[error("host {host}: {what} is not 32 bytes of hex")]
    BadKey { host: String, what: &'static str },
    #[error("host {host}: private key does not match its public_key in the config")]
    KeyMismatch { host: String },
}

/// A peer: who, its static key, where its heartbeats go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConf {
    pub id: u32,
    pub name: String,
    pub public_key: [u8; 32],
    pub addr: SocketAddr,
}

/// Everything a node needs, from the runtime config or built by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: u32,
    pub name: String,
    pub private_key: [u8; 32],
    /// Where the daemon binds its UDP socket.
    pub bind: SocketAddr,
    pub peers: Vec<PeerConf>,
    pub interval_ms: u64,
    pub failure_timeout_ms: u64,
}

fn ft_ip(host: &str, addr: &str) -> Result<IpAddr, ConfigError> {
    addr.split('/')
        .next()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| ConfigError::BadAddr {
            host: host.into(),
            addr: addr.into(),
        })
}

fn key(host: &str, what: &'static str, hex_key: &str) -> Result<[u8; 32], ConfigError> {
    config_schema::keys::parse_hex_key(hex_key).map_err(|_| ConfigError::BadKey {
        host: host.into(),
        what,
    })
}

impl NodeConfig {
    /// This host's node: bind its FT address at `port`, a peer for every
    /// other host at its FT address and the same port.
    pub fn from_runtime(rt: &RuntimeConfig, port: u16) -> Result<Self, ConfigError> {
        let cfg = &rt.config;
        let me = cfg
            .hosts
            .iter()
            .find(|h| h.name == rt.host_name)
            .ok_or_else(|| ConfigError::UnknownHost(rt.host_name.clone()))?;
        let private_key = key(&me.name, "the private key", &rt.host_private_key)?;
        if config_schema::keys::host_public_key(&private_key)
            != key(&me.name, "public_key", &me.public_key)?
        {
            return Err(ConfigError::KeyMismatch {
                host: me.name.clone(),
            });
        }
        let peers = cfg
            .hosts
            .iter()
            .filter(|h| h.name != me.name)
            .map(|h| {
                Ok(PeerConf {
                    id: h.id,
                    name: h.name.clone(),
                    public_key: key(&h.name, "public_key", &h.public_key)?,
                    addr: SocketAddr::new(ft_ip(&h.name, &h.ft.addr)?, port),
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(NodeConfig {
            id: me.id,
            name: me.name.clone(),
            private_key,
            bind: SocketAddr::new(ft_ip(&me.name, &me.ft.addr)?, port),
            peers,
            interval_ms: cfg.timing.heartbeat_interval_ms,
            failure_timeout_ms: cfg.timing.failure_timeout_ms,
        })
    }
}

/// What became of one received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Accepted {
        from: String,
        transitions: Vec<Transition>,
    },
    Dropped {
        reason: DropReason,
        /// The peer the header named, if it is one.
        claimed: Option<String>,
        detail: String,
    },
}

/// The heartbeat core of one host.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    view: Membership,
}

impl Node {
    pub fn new(cfg: NodeConfig, boot_id: u64, now_ms: u64) -> Self {
        let peers = cfg.peers.iter().map(|p| (p.id, p.name.clone())).collect();
        let view = Membership::new(cfg.id, peers, boot_id, cfg.failure_timeout_ms, now_ms);
        Node { cfg, view }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Takes a live interval and failure timeout ([`crate::live`]): the
    /// config shown in status and the view's timeout follow.
    pub fn set_timing(&mut self, interval_ms: u64, failure_timeout_ms: u64) {
        self.cfg.interval_ms = interval_ms;
        if self.cfg.failure_timeout_ms != failure_timeout_ms {
            self.cfg.failure_timeout_ms = failure_timeout_ms;
            self.view.set_timeout(failure_timeout_ms);
        }
    }

    pub fn view(&self) -> &Membership {
        &self.view
    }

    pub fn view_mut(&mut self) -> &mut Membership {
        &mut self.view
    }

    /// One round of heartbeats, sealed (tests; the daemon seals outside its lock).
    pub fn heartbeats(&mut self, now_ms: u64) -> Vec<(SocketAddr, Result<Vec<u8>, PacketError>)> {
        let payload = self.view.next_heartbeat(now_ms);
        seal_round(&self.cfg, &payload)
    }

    pub fn peer_name(&self, id: u32) -> Option<String> {
        self.cfg
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
    }

    /// Counts a datagram the gate refused.
    pub fn on_rejected(&mut self, r: Rejected) -> Received {
        self.view.record_drop(r.peer, r.reason);
        self.describe_rejected(r)
    }

    /// The drop a refused datagram is reported as, without counting it (the
    /// daemon's receive loop counts refusals itself, outside the lock).
    pub fn describe_rejected(&self, r: Rejected) -> Received {
        Received::Dropped {
            reason: r.reason,
            claimed: r.peer.and_then(|id| self.peer_name(id)),
            detail: r.detail,
        }
    }

    /// Judges what the gate let through (or counts what it refused).
    pub fn on_admitted(&mut self, now_ms: u64, admitted: Admitted) -> Received {
        let (sender, payload) = match admitted {
            Admitted::Opened { sender, payload } => (sender, payload),
            Admitted::Rejected(r) => return self.on_rejected(r),
        };
        match self.view.on_heartbeat(now_ms, sender, &payload) {
            Ok(transitions) => Received::Accepted {
                from: self.peer_name(sender).unwrap_or_default(),
                transitions,
            },
            Err(reason) => Received::Dropped {
                reason,
                claimed: self.peer_name(sender),
                detail: match reason {
                    DropReason::UnconfirmedBoot => format!(
                        "boot {:016x} seq {}: new boot id, counted once it echoes one of ours",
                        payload.boot_id, payload.seq
                    ),
                    DropReason::Stale => format!(
                        "boot {:016x} seq {}: echoes none of our heartbeats of the last {} ms",
                        payload.boot_id, payload.seq, self.cfg.failure_timeout_ms
                    ),
                    _ => format!("boot {:016x} seq {}", payload.boot_id, payload.seq),
                },
            },
        }
    }

    /// Gate, then judge, one datagram from `src` (tests and fuzzing: the
    /// daemon runs the gate outside its lock).
    pub fn receive(
        &mut self,
        gate: &mut Gate,
        now_ms: u64,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Received {
        let admitted = gate.admit(now_ms, src, datagram);
        self.on_admitted(now_ms, admitted)
    }
}

/// `payload` sealed for every peer of `cfg`, with the peer's address: two
/// X25519 operations and one key generation per peer.
pub fn seal_round(
    cfg: &NodeConfig,
    payload: &Payload,
) -> Vec<(SocketAddr, Result<Vec<u8>, PacketError>)> {
    cfg.peers
        .iter()
        .map(|p| {
            let h = Header {
                sender: cfg.id,
                receiver: p.id,
            };
            (
                p.addr,
                packet::seal(h, payload, &cfg.private_key, &p.public_key),
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
