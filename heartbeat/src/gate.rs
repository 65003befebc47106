//! The first half of the receive path, run outside the node lock: everything
//! decided from the clear header and the source address, the per-source rate
//! limit, then the Noise open (the two X25519 operations of a K responder).
//! It never sees the membership view; [`crate::node::Node`] judges what it
//! lets through.
//!
//! Rules, in order; each failure is a drop with its [`DropReason`], and only
//! the last step costs X25519:
//! 1. `Header::parse`: size, magic, wire version (`Malformed`, `BadVersion`).
//! 2. The header's sender is a configured peer (`UnknownSender`).
//! 3. The datagram comes from that peer's FT address and heartbeat port, the
//!    only address its daemon sends from (`WrongSource`); on the VM network's
//!    gate, from its VM-network address, and the magic is `FTHV`.
//! 4. The header names us as receiver (`NotForUs`).
//! 5. The source has a token in its bucket (`RateLimited`): a genuine peer
//!    sends one packet per heartbeat interval; its bucket refills
//!    [`HEADROOM`] tokens per interval and holds [`BURST`].
//! 6. The Noise open with the peer's static key (`Forged`, `BadVersion`,
//!    `Malformed`).
//!
//! Invariant: every open takes a token from the claimed sender's bucket, so in
//! any span of `t` ms at most `BURST + HEADROOM * t / interval_ms` opens happen
//! per peer, whatever arrives ([`max_opens`]); the whole host's X25519 budget is
//! that times the number of peers. A flood from any other address costs a
//! header parse and a compare.
//!
//! What it cannot do: a flood that forges the source address of a peer (raw
//! sockets on the FT network) empties that peer's bucket, and its genuine
//! heartbeats are then dropped like the flood: the CPU is protected, the
//! liveness of that one peer is not.

use std::net::SocketAddr;

use crate::drops::DropReason;
use crate::node::NodeConfig;
use crate::packet::{self, Header, Net, PacketError, Payload};

/// Tokens a source's bucket gains per heartbeat interval (a genuine peer
/// spends one).
pub const HEADROOM: u64 = 4;
/// Tokens a source's bucket holds: packets it may send back to back.
pub const BURST: u64 = 8;

const _: () = assert!(HEADROOM >= 2 && BURST >= HEADROOM);

/// The most opens one source can cause in `span_ms` (bucket full at the start).
pub fn max_opens(interval_ms: u64, span_ms: u64) -> u64 {
    BURST + HEADROOM * span_ms / interval_ms.max(1)
}

/// A token bucket in integer units: one token is `interval_ms` units, the
/// bucket gains `HEADROOM` units per ms (so `HEADROOM` tokens per interval)
/// and holds `BURST` tokens. Exact, no division.
#[derive(Debug, Clone)]
struct Bucket {
    units: u64,
    last_ms: u64,
}

impl Bucket {
    fn full(interval_ms: u64, now_ms: u64) -> Self {
        Bucket {
            units: BURST * interval_ms,
            last_ms: now_ms,
        }
    }

    fn take(&mut self, interval_ms: u64, now_ms: u64) -> bool {
        let gained = now_ms.saturating_sub(self.last_ms).saturating_mul(HEADROOM);
        self.last_ms = self.last_ms.max(now_ms);
        self.units = self.units.saturating_add(gained).min(BURST * interval_ms);
        if self.units >= interval_ms {
            self.units -= interval_ms;
            true
        } else {
            false
        }
    }
}

/// A peer as the gate sees it: where its packets must come from, its key.
#[derive(Debug, Clone)]
struct Source {
    id: u32,
    name: String,
    addr: SocketAddr,
    public_key: [u8; 32],
    bucket: Bucket,
}

/// A datagram refused by the gate, already classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: DropReason,
    /// The peer the header named, when it names one.
    pub peer: Option<u32>,
    pub detail: String,
}

/// What the gate made of one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// It authenticated as `sender`'s (the payload is not judged yet).
    Opened {
        sender: u32,
        payload: Payload,
    },
    Rejected(Rejected),
}

/// The receive thread's gate: keys, peer addresses, one bucket per peer.
/// One per network: the VM network's ([`Gate::new_vm`]) takes only
/// `FTHV` packets from the peers' VM-network addresses, with buckets of its
/// own.
#[derive(Debug, Clone)]
pub struct Gate {
    net: Net,
    me: u32,
    private_key: [u8; 32],
    interval_ms: u64,
    sources: Vec<Source>,
    opens: u64,
}

fn reject(reason: DropReason, peer: Option<u32>, detail: String) -> Admitted {
    Admitted::Rejected(Rejected {
        reason,
        peer,
        detail,
    })
}

impl Gate {
    /// The interval the buckets count in. A live interval (`ftctl apply`)
    /// only ever raises the allowed rate above the booted one
    /// ([`crate::live::LiveTiming::gate_interval_ms`]): peers that took a
    /// shorter interval first send faster, and peers that have not yet
    /// taken a longer one still send at the old rate.
    pub fn set_interval_ms(&mut self, interval_ms: u64) {
        self.interval_ms = interval_ms.max(1);
    }

    /// The FT network's gate; every peer's bucket starts full at `now_ms`.
    pub fn new(cfg: &NodeConfig, now_ms: u64) -> Self {
        let addrs = cfg.peers.iter().map(|p| (p.id, p.addr)).collect();
        Self::on(Net::Ft, cfg, addrs, now_ms)
    }

    /// The VM network's gate: the peers at their VM-network addresses
    /// (`cfg.vm`; none without it).
    pub fn new_vm(cfg: &NodeConfig, now_ms: u64) -> Self {
        let addrs = cfg.vm.as_ref().map(|v| v.peers.clone()).unwrap_or_default();
        Self::on(Net::Vm, cfg, addrs, now_ms)
    }

    fn on(net: Net, cfg: &NodeConfig, addrs: Vec<(u32, SocketAddr)>, now_ms: u64) -> Self {
        let interval_ms = cfg.interval_ms.max(1);
        let sources = (cfg.peers.iter())
            .filter_map(|p| {
                let addr = addrs.iter().find(|(id, _)| *id == p.id)?.1;
                Some(Source {
                    id: p.id,
                    name: p.name.clone(),
                    addr,
                    public_key: p.public_key,
                    bucket: Bucket::full(interval_ms, now_ms),
                })
            })
            .collect();
        Gate {
            net,
            me: cfg.id,
            private_key: cfg.private_key,
            interval_ms,
            sources,
            opens: 0,
        }
    }

    /// Noise opens attempted so far (each two X25519 operations).
    pub fn opens(&self) -> u64 {
        self.opens
    }

    /// Tokens per second of one source, and the burst.
    pub fn rate_limit(&self) -> (f64, u64) {
        (HEADROOM as f64 * 1000.0 / self.interval_ms as f64, BURST)
    }

    /// Rules 1-6 of the module docs for one datagram from `src`.
    pub fn admit(&mut self, now_ms: u64, src: SocketAddr, datagram: &[u8]) -> Admitted {
        let header = match Header::parse_on(datagram, self.net) {
            Ok((h, _)) => h,
            Err(e @ PacketError::WireVersion(_)) => {
                return reject(DropReason::BadVersion, None, e.to_string())
            }
            Err(e) => return reject(DropReason::Malformed, None, e.to_string()),
        };
        let (me, interval_ms) = (self.me, self.interval_ms);
        let Some(source) = self.sources.iter_mut().find(|p| p.id == header.sender) else {
            let detail = format!("header names host id {}", header.sender);
            return reject(DropReason::UnknownSender, None, detail);
        };
        let peer = Some(source.id);
        if src != source.addr {
            let net = match self.net {
                Net::Ft => "FT",
                Net::Vm => "VM-network",
            };
            let detail = format!(
                "not from {}'s {net} address {} (heartbeats come only from there)",
                source.name, source.addr
            );
            return reject(DropReason::WrongSource, peer, detail);
        }
        if header.receiver != me {
            let detail = format!("header names receiver id {}", header.receiver);
            return reject(DropReason::NotForUs, peer, detail);
        }
        if !source.bucket.take(interval_ms, now_ms) {
            let detail = format!(
                "more than {BURST} at once or {HEADROOM} per {interval_ms} ms from {}",
                source.name
            );
            return reject(DropReason::RateLimited, peer, detail);
        }
        self.opens += 1;
        match packet::open_on(self.net, datagram, &self.private_key, &source.public_key) {
            Ok((_, payload)) => Admitted::Opened {
                sender: source.id,
                payload,
            },
            Err(e) => {
                let reason = match e {
                    PacketError::Auth | PacketError::Noise(_) => DropReason::Forged,
                    PacketError::PayloadVersion(_) | PacketError::WireVersion(_) => {
                        DropReason::BadVersion
                    }
                    _ => DropReason::Malformed,
                };
                reject(reason, peer, e.to_string())
            }
        }
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
