//! The VM witness (`cluster.vm_witness`): an address outside the appliance
//! on the VM network that this host pings (ICMP echo) from its VM-network
//! address, so that a host hearing no peer there can still tell whether
//! its own side works.
//!
//! Why: with two hosts, a VM network cut on one side looks the same from
//! both (each hears nobody), so the Primary could neither hand over to a
//! Secondary whose side works nor tell that it is the one cut (the chaos
//! campaign's two-host VM-network cuts; `ftvmm/src/lockstep/respawn/
//! own_vmnet.rs`). A witness that answers one host and not the other
//! breaks the tie. Hearing the witness is both directions at once (an echo
//! reply answers a request that went out), like hearing a peer.
//!
//! What it is not: authenticated, or a vote. ICMP cannot be authenticated,
//! so anything on the VM network could answer for the witness. It only
//! feeds the VM-network view (which side serves the clients best, whether
//! a pair is protected); failure detection stays the FT network's and
//! going live stays fencing's, so a lying witness can cost a needless
//! hand-over (one failover pause) or hide a cut, never make two copies
//! live.
//!
//! This file is the pure part: the echo request this host sends, the check
//! of what the raw socket receives ([`parse_reply`], fuzzed by
//! `fuzz_targets/witness_reply.rs`), and the state the daemon's witness
//! thread keeps ([`Witness`]). The thread is `daemon_witness.rs`.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, IpNumber, Ipv4Slice};

/// The first bytes of every echo payload this appliance sends.
pub const MAGIC: [u8; 8] = *b"FTWITNES";
/// Payload: [`MAGIC`], then this daemon's random nonce (u64le).
pub const PAYLOAD_LEN: usize = 16;
/// How many unanswered probes are remembered (older replies are ignored).
pub const OUTSTANDING: usize = 64;

/// Why a received datagram is not a reply of the witness to one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not an IPv4 packet carrying ICMP (the raw socket gets every ICMP
    /// packet for this address; a malformed one ends here).
    #[error("not an IPv4 ICMP packet: {0}")]
    Malformed(String),
    #[error("from {0}, not the witness")]
    NotWitness(Ipv4Addr),
    /// ICMP of another kind (someone pinging this host, an error message).
    #[error("ICMP type {0}, not an echo reply")]
    NotEchoReply(u8),
    /// An echo reply to another program's ping.
    #[error("echo reply with id {0}, not this daemon's")]
    OtherId(u16),
    #[error("bad ICMP checksum")]
    Checksum,
    /// Our id but not our payload: a forgery, or a corrupted reply.
    #[error("echo reply with this daemon's id but not its payload")]
    Payload,
}

impl ReplyError {
    /// Traffic that was simply not ours (counted, not suspicious).
    pub fn is_foreign(&self) -> bool {
        matches!(
            self,
            ReplyError::NotWitness(_) | ReplyError::NotEchoReply(_) | ReplyError::OtherId(_)
        )
    }
}

/// The echo payload of a daemon with `nonce`.
pub fn payload(nonce: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&nonce.to_le_bytes());
    p
}

/// The ICMP echo request (header and payload; the kernel adds the IPv4
/// header on a raw ICMP socket).
pub fn echo_request(id: u16, seq: u16, nonce: u64) -> Vec<u8> {
    let body = payload(nonce);
    let h = Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq }), &body);
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Checks a datagram from a raw ICMP socket (IPv4 header included): an
/// echo reply from `witness` to this daemon's `id` with its payload.
/// Returns the reply's sequence number.
pub fn parse_reply(
    datagram: &[u8],
    witness: Ipv4Addr,
    id: u16,
    nonce: u64,
) -> Result<u16, ReplyError> {
    let ip = Ipv4Slice::from_slice(datagram).map_err(|e| ReplyError::Malformed(e.to_string()))?;
    if ip.payload().ip_number != IpNumber::ICMP {
        return Err(ReplyError::Malformed(format!(
            "IP protocol {}, not ICMP",
            ip.payload().ip_number.0
        )));
    }
    let from = ip.header().source_addr();
    if from != witness {
        return Err(ReplyError::NotWitness(from));
    }
    if ip.is_payload_fragmented() {
        return Err(ReplyError::Malformed("a fragment".into()));
    }
    let icmp = Icmpv4Slice::from_slice(ip.payload().payload)
        .map_err(|e| ReplyError::Malformed(e.to_string()))?;
    let Icmpv4Type::EchoReply(echo) = icmp.icmp_type() else {
        return Err(ReplyError::NotEchoReply(icmp.type_u8()));
    };
    if echo.id != id {
        return Err(ReplyError::OtherId(echo.id));
    }
    let expect = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
    if icmp.checksum() != expect {
        return Err(ReplyError::Checksum);
    }
    if icmp.payload() != payload(nonce) {
        return Err(ReplyError::Payload);
    }
    Ok(echo.seq)
}

/// What this host knows of its witness (kept by the daemon's witness
/// thread, read with the node: [`crate::node::Node::vm_report`]).
#[derive(Debug, Clone)]
pub struct Witness {
    pub addr: Ipv4Addr,
    /// The echo id and payload nonce of this daemon (random per boot).
    pub id: u16,
    pub nonce: u64,
    next_seq: u16,
    /// Probes sent and not yet answered: (seq, sent at ms), oldest first.
    outstanding: VecDeque<(u16, u64)>,
    /// When the first probe went out (ms); `None`: none yet.
    pub started_ms: Option<u64>,
    /// When the last valid reply came (ms).
    pub last_reply_ms: Option<u64>,
    /// Its round trip (ms).
    pub last_rtt_ms: Option<u64>,
    pub sent: u64,
    pub replies: u64,
    /// Replies with this daemon's id that failed the checks (checksum,
    /// payload) or answered no outstanding probe.
    pub bad: u64,
    /// The last socket error (open, bind, send), for status; cleared by a
    /// successful send.
    pub error: Option<String>,
    /// Whether it was heard at the last [`Witness::transition`].
    heard: bool,
    /// Whether "never answered" was said (once per daemon).
    said_never: bool,
}

impl Witness {
    pub fn new(addr: Ipv4Addr, id: u16, nonce: u64) -> Self {
        Witness {
            addr,
            id,
            nonce,
            next_seq: 0,
            outstanding: VecDeque::with_capacity(OUTSTANDING),
            started_ms: None,
            last_reply_ms: None,
            last_rtt_ms: None,
            sent: 0,
            replies: 0,
            bad: 0,
            error: None,
            heard: false,
            said_never: false,
        }
    }

    /// The next probe's bytes, remembered as sent at `now_ms` (call
    /// [`Witness::sent_ok`] or [`Witness::send_failed`] after sending).
    pub fn next_probe(&mut self, now_ms: u64) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.outstanding.len() == OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((seq, now_ms));
        self.started_ms.get_or_insert(now_ms);
        echo_request(self.id, seq, self.nonce)
    }

    pub fn sent_ok(&mut self) {
        self.sent += 1;
        self.error = None;
    }

    pub fn send_failed(&mut self, why: String) {
        self.error = Some(why);
    }

    /// A datagram the raw socket received at `now_ms`: counts a valid
    /// reply to an outstanding probe as hearing the witness. Foreign
    /// traffic is ignored.
    pub fn on_datagram(&mut self, datagram: &[u8], now_ms: u64) -> Result<(), ReplyError> {
        match parse_reply(datagram, self.addr, self.id, self.nonce) {
            Ok(seq) => {
                let Some(i) = self.outstanding.iter().position(|(s, _)| *s == seq) else {
                    // A duplicate, or an answer older than every remembered
                    // probe: it shows nothing about now.
                    self.bad += 1;
                    return Ok(());
                };
                let (_, sent) = self.outstanding[i];
                self.outstanding.drain(..=i);
                self.replies += 1;
                self.last_reply_ms = Some(now_ms);
                self.last_rtt_ms = Some(now_ms.saturating_sub(sent));
                Ok(())
            }
            Err(e) => {
                if !e.is_foreign() {
                    self.bad += 1;
                }
                Err(e)
            }
        }
    }

    /// Heard within `timeout_ms` of `now_ms` (the rule for peers too).
    pub fn heard(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.last_reply_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= timeout_ms)
    }

    /// The console line when hearing it changed since the last call.
    pub fn transition(&mut self, now_ms: u64, timeout_ms: u64) -> Option<String> {
        let heard = self.heard(now_ms, timeout_ms);
        let addr = self.addr;
        if heard == self.heard {
            let waited = self.started_ms.map(|s| now_ms.saturating_sub(s));
            let never = self.last_reply_ms.is_none() && waited.is_some_and(|w| w > timeout_ms);
            if never && !self.said_never {
                self.said_never = true;
                return Some(format!(
                    "heartbeat: witness {addr} not heard on the VM network (never answered in \
                     {} ms)",
                    waited.unwrap_or(0)
                ));
            }
            return None;
        }
        self.heard = heard;
        Some(if heard {
            format!(
                "heartbeat: witness {addr} answers on the VM network (round trip {} ms)",
                self.last_rtt_ms.unwrap_or(0)
            )
        } else {
            let silent = now_ms.saturating_sub(self.last_reply_ms.unwrap_or(0));
            format!("heartbeat: witness {addr} not heard on the VM network (silent {silent} ms)")
        })
    }

    /// Status's `vm_network.witness` object.
    pub fn status(&self, now_ms: u64, timeout_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "addr": self.addr.to_string(),
            "heard": self.heard(now_ms, timeout_ms),
            "last_reply_ms_ago": self.last_reply_ms.map(|t| now_ms.saturating_sub(t)),
            "round_trip_ms": self.last_rtt_ms,
            "sent": self.sent,
            "replies": self.replies,
            "bad_replies": self.bad,
            "error": self.error,
        })
    }
}

#[cfg(test)]
#[path = "witness_tests.rs"]
mod tests;
