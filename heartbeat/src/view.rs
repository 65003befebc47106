//! The membership/suspicion view: pure logic fed with authenticated heartbeats,
//! logging-channel signs of life and an explicit clock (milliseconds on the
//! daemon's own monotonic clock), so it is deterministic to test.
//!
//! Rules, in the order a heartbeat meets them (see [`Membership::on_heartbeat`]):
//! - **Replay checks.** Per (sender, boot id) the seq must be strictly greater
//!   than every seq seen of that boot (the confirmed boot and, separately, the
//!   one unconfirmed candidate boot); boot ids replaced by a newer one are
//!   remembered (a few) and refused. A packet that fails them changes nothing
//!   but a counter.
//! - **Echo.** What we echo back to a peer (`heard` in our view entry for it)
//!   is the (boot id, seq) of its last packet that *passed the replay checks*,
//!   accepted or not, so two hosts that both restarted confirm each other after
//!   one exchange, and a replay can never turn our echo back to an old boot.
//! - **Freshness.** A packet refreshes liveness only if it echoes one of *our*
//!   seqs of our current boot sent less than the failure timeout ago: the
//!   peer demonstrably heard us recently. One that does not is a new boot id
//!   not confirmed yet (`UnconfirmedBoot`: learned as the candidate, confirmed
//!   by the first packet that does echo us) or, for the confirmed boot, a
//!   delayed or withheld packet (`Stale`: its seq and echo are recorded, it
//!   keeps nobody alive). So an authentic packet recorded on the wire and
//!   delivered later can extend a dead peer's liveness by less than one
//!   failure timeout past the moment it last heard us, never indefinitely.
//! - A peer is alive while its last sign of life (accepted heartbeat or
//!   `PeerAlive`) is younger than the failure timeout.
//!
//! Invariants: `last_heartbeat_ms` changes only on an accepted packet; the
//! seq recorded for a boot never decreases.

use std::collections::VecDeque;
use std::fmt;

use config_schema::ctl::PeerView;
use serde_json::json;

use crate::drops::{DropCounts, DropReason};
use crate::packet::{Entry, Payload, VmReport};

/// How many replaced boot ids per peer are remembered and refused.
const RETIRED_BOOTS: usize = 8;
/// Upper bound on remembered sent seqs, whatever the timing config says.
const MAX_SENT: usize = 1 << 16;

/// A change worth a console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Up { host: String },
    Suspected { host: String, silent_ms: u64 },
    NeverHeard { host: String, since_start_ms: u64 },
    Restarted { host: String },
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Up { host } => write!(f, "heartbeat: peer {host} up"),
            Transition::Suspected { host, silent_ms } => {
                write!(
                    f,
                    "heartbeat: peer {host} suspected (silent {silent_ms} ms)"
                )
            }
            Transition::NeverHeard {
                host,
                since_start_ms,
            } => write!(
                f,
                "heartbeat: peer {host} suspected (never heard in {since_start_ms} ms)"
            ),
            Transition::Restarted { host } => {
                write!(f, "heartbeat: peer {host} restarted (new boot id)")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    Up,
    Suspected,
}

#[derive(Debug, Clone)]
struct PeerState {
    id: u32,
    name: String,
    state: State,
    /// Confirmed boot id and the highest seq seen in it (never decreases).
    boot: Option<(u64, u64)>,
    /// The last boot id seen that is neither confirmed nor retired, and its
    /// highest seq: the replay check for a peer that restarted.
    candidate: Option<(u64, u64)>,
    retired: VecDeque<u64>,
    /// (boot, seq) of its last packet that passed the replay checks, echoed
    /// back in our heartbeats.
    heard: Option<(u64, u64)>,
    last_heartbeat_ms: Option<u64>,
    last_peer_alive_ms: Option<u64>,
    received: u64,
    peer_alive_reports: u64,
    /// Times it went from up to suspected.
    suspicions: u64,
    dropped: DropCounts,
    /// The peer's own view, from its last accepted heartbeat.
    their_view: Vec<Entry>,
    /// The peer's VM-network reachability and when it came (its last
    /// accepted heartbeat that carried one).
    their_vm: Option<(VmReport, u64)>,
}

impl PeerState {
    fn last_seen(&self) -> Option<u64> {
        self.last_heartbeat_ms.max(self.last_peer_alive_ms)
    }
}

/// A peer's VM-network reachability as its heartbeats said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TheirVm {
    pub name: String,
    /// Alive in this view now.
    pub alive: bool,
    /// Its last report and the report's age (ms).
    pub report: Option<(VmReport, u64)>,
}

/// This host's membership view.
#[derive(Debug, Clone)]
pub struct Membership {
    me: u32,
    boot_id: u64,
    seq: u64,
    timeout_ms: u64,
    started_ms: u64,
    /// Our recently sent seqs with their send time, oldest first.
    sent: VecDeque<(u64, u64)>,
    peers: Vec<PeerState>,
    dropped: DropCounts,
}

impl Membership {
    /// `peers` are (host id, name) of every other host; `now_ms` is the start.
    pub fn new(
        me: u32,
        peers: Vec<(u32, String)>,
        boot_id: u64,
        failure_timeout_ms: u64,
        now_ms: u64,
    ) -> Self {
        Membership {
            me,
            boot_id,
            seq: 0,
            timeout_ms: failure_timeout_ms,
            started_ms: now_ms,
            sent: VecDeque::new(),
            peers: peers
                .into_iter()
                .map(|(id, name)| PeerState {
                    id,
                    name,
                    state: State::Unknown,
                    boot: None,
                    candidate: None,
                    retired: VecDeque::new(),
                    heard: None,
                    last_heartbeat_ms: None,
                    last_peer_alive_ms: None,
                    received: 0,
                    peer_alive_reports: 0,
                    suspicions: 0,
                    dropped: DropCounts::default(),
                    their_view: Vec::new(),
                    their_vm: None,
                })
                .collect(),
            dropped: DropCounts::default(),
        }
    }

    pub fn me(&self) -> u32 {
        self.me
    }

    /// A failure timeout taken live (`ftctl apply`): peers are judged by it
    /// from the next tick on. Suspicion is not a safety input
    /// (`config_schema::timing_live`).
    pub fn set_timeout(&mut self, failure_timeout_ms: u64) {
        self.timeout_ms = failure_timeout_ms;
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }
    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }
    pub fn is_peer(&self, id: u32) -> bool {
        self.peers.iter().any(|p| p.id == id)
    }
    pub fn dropped(&self) -> &DropCounts {
        &self.dropped
    }

    fn peer_mut(&mut self, id: u32) -> Option<&mut PeerState> {
        self.peers.iter_mut().find(|p| p.id == id)
    }

    fn alive(&self, p: &PeerState, now: u64) -> bool {
        p.last_seen()
            .is_some_and(|t| now.saturating_sub(t) < self.timeout_ms)
    }

    fn prune_sent(&mut self, now: u64) {
        while let Some(&(_, at)) = self.sent.front() {
            if now.saturating_sub(at) >= self.timeout_ms || self.sent.len() > MAX_SENT {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }

    /// The next heartbeat to send (one seq for all receivers of this round).
    pub fn next_heartbeat(&mut self, now: u64) -> Payload {
        self.seq += 1;
        self.prune_sent(now);
        self.sent.push_back((self.seq, now));
        let view = self
            .peers
            .iter()
            .map(|p| Entry {
                host: p.id,
                alive: self.alive(p, now),
                heard: p.heard,
            })
            .collect();
        Payload {
            sender: self.me,
            boot_id: self.boot_id,
            seq: self.seq,
            view,
            vm: None,
        }
    }

    /// When this view started (ms on its clock).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The peers alive now (heard within the failure timeout), by id in
    /// increasing order.
    pub fn alive_ids(&self, now: u64) -> Vec<u32> {
        let mut ids: Vec<u32> = (self.peers.iter())
            .filter(|p| self.alive(p, now))
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// When any peer was last heard (accepted heartbeat or sign of life).
    pub fn last_heard_any(&self) -> Option<u64> {
        self.peers.iter().filter_map(|p| p.last_seen()).max()
    }

    /// Every peer's last VM-network report, at `now`.
    pub fn their_vm(&self, now: u64) -> Vec<TheirVm> {
        (self.peers.iter())
            .map(|p| TheirVm {
                name: p.name.clone(),
                alive: self.alive(p, now),
                report: (p.their_vm.clone()).map(|(r, at)| (r, now.saturating_sub(at))),
            })
            .collect()
    }

    /// A peer's name.
    pub fn name_of(&self, id: u32) -> Option<&str> {
        (self.peers.iter())
            .find(|p| p.id == id)
            .map(|p| p.name.as_str())
    }

    /// Counts a dropped packet, against `peer` when the header named one.
    pub fn record_drop(&mut self, peer: Option<u32>, reason: DropReason) {
        self.record_drops(peer, reason, 1);
    }

    /// `n` drops of one kind at once (the daemon counts the gate's
    /// refusals outside the node's lock and adds them in batches).
    pub fn record_drops(&mut self, peer: Option<u32>, reason: DropReason, n: u64) {
        self.dropped.add_n(reason, n);
        if let Some(p) = peer.and_then(|id| self.peer_mut(id)) {
            p.dropped.add_n(reason, n);
        }
    }

    /// Does `p` echo one of our seqs of this boot sent within the timeout?
    fn echoes_us(&mut self, p: &Payload, now: u64) -> bool {
        self.prune_sent(now);
        let me = self.me;
        match p.view.iter().find(|e| e.host == me).and_then(|e| e.heard) {
            Some((boot, seq)) => boot == self.boot_id && self.sent.iter().any(|(s, _)| *s == seq),
            None => false,
        }
    }

    /// An authenticated heartbeat whose header named `header_sender`. Returns
    /// the transitions it caused, or why it was dropped (already counted).
    pub fn on_heartbeat(
        &mut self,
        now: u64,
        header_sender: u32,
        p: &Payload,
    ) -> Result<Vec<Transition>, DropReason> {
        let verdict = self.judge(now, header_sender, p);
        match verdict {
            Err(r) => {
                self.record_drop(Some(header_sender), r);
                Err(r)
            }
            Ok(restarted) => {
                let peer = self.peer_mut(p.sender).expect("judge checked the sender");
                peer.last_heartbeat_ms = Some(now);
                peer.received += 1;
                peer.their_view = p.view.clone();
                if let Some(vm) = &p.vm {
                    peer.their_vm = Some((vm.clone(), now));
                }
                let mut out = Vec::new();
                if restarted {
                    out.push(Transition::Restarted {
                        host: peer.name.clone(),
                    });
                }
                if peer.state != State::Up {
                    peer.state = State::Up;
                    out.push(Transition::Up {
                        host: peer.name.clone(),
                    });
                }
                Ok(out)
            }
        }
    }

    /// The replay, echo and freshness rules (module docs) for an authenticated
    /// payload; on success returns whether a new boot id replaced a confirmed
    /// one. Every packet that passes the replay checks becomes the echo.
    fn judge(&mut self, now: u64, header_sender: u32, p: &Payload) -> Result<bool, DropReason> {
        if p.sender != header_sender {
            return Err(DropReason::SenderMismatch);
        }
        let fresh = self.echoes_us(p, now);
        let peer = self.peer_mut(p.sender).ok_or(DropReason::UnknownSender)?;
        if peer.retired.contains(&p.boot_id) {
            return Err(DropReason::Replayed);
        }
        let highest = [peer.boot, peer.candidate]
            .into_iter()
            .flatten()
            .find(|(b, _)| *b == p.boot_id)
            .map(|(_, s)| s);
        if highest.is_some_and(|s| p.seq <= s) {
            return Err(DropReason::Replayed);
        }
        // The newest packet of its (sender, boot): from here on it is echoed.
        peer.heard = Some((p.boot_id, p.seq));
        match peer.boot {
            Some((b, last)) if b == p.boot_id => {
                assert!(p.seq > last, "the seq of a confirmed boot never decreases");
                peer.boot = Some((b, p.seq));
                if fresh {
                    Ok(false)
                } else {
                    Err(DropReason::Stale)
                }
            }
            old => {
                if !fresh {
                    peer.candidate = Some((p.boot_id, p.seq));
                    return Err(DropReason::UnconfirmedBoot);
                }
                if let Some((b, _)) = old {
                    if peer.retired.len() == RETIRED_BOOTS {
                        peer.retired.pop_front();
                    }
                    peer.retired.push_back(b);
                }
                peer.boot = Some((p.boot_id, p.seq));
                peer.candidate = None;
                Ok(old.is_some())
            }
        }
    }

    /// ftvmm saw logging-channel traffic from `host` (a name). `Err` if no
    /// such peer.
    pub fn on_peer_alive(&mut self, now: u64, host: &str) -> Result<Vec<Transition>, String> {
        let peer = self
            .peers
            .iter_mut()
            .find(|p| p.name == host)
            .ok_or_else(|| format!("{host} is not a peer of this host"))?;
        peer.last_peer_alive_ms = Some(now);
        peer.peer_alive_reports += 1;
        if peer.state != State::Up {
            peer.state = State::Up;
            return Ok(vec![Transition::Up {
                host: peer.name.clone(),
            }]);
        }
        Ok(Vec::new())
    }

    /// Suspects peers silent past the timeout.
    pub fn tick(&mut self, now: u64) -> Vec<Transition> {
        let timeout = self.timeout_ms;
        let started = self.started_ms;
        let mut out = Vec::new();
        for p in &mut self.peers {
            match (p.state, p.last_seen()) {
                (State::Up, Some(t)) if now.saturating_sub(t) >= timeout => {
                    p.state = State::Suspected;
                    p.suspicions += 1;
                    out.push(Transition::Suspected {
                        host: p.name.clone(),
                        silent_ms: now - t,
                    });
                }
                (State::Unknown, None) if now.saturating_sub(started) >= timeout => {
                    p.state = State::Suspected;
                    out.push(Transition::NeverHeard {
                        host: p.name.clone(),
                        since_start_ms: now - started,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// The view answered to `Peers`.
    pub fn peer_views(&self, now: u64) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|p| PeerView {
                host: p.name.clone(),
                alive: self.alive(p, now),
                last_seen_ms: p.last_seen().map(|t| now.saturating_sub(t)),
            })
            .collect()
    }

    /// Per-peer detail for `Status`.
    pub fn status(&self, now: u64) -> serde_json::Value {
        let name_of = |id: u32| {
            self.peers
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| format!("id {id}"))
        };
        let peers: Vec<_> = self
            .peers
            .iter()
            .map(|p| {
                let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t));
                json!({
                    "name": p.name,
                    "id": p.id,
                    "state": match p.state {
                        State::Unknown => "unknown",
                        State::Up => "up",
                        State::Suspected => "suspected",
                    },
                    "alive": self.alive(p, now),
                    "last_seen_ms": ago(p.last_seen()),
                    "last_heartbeat_ms": ago(p.last_heartbeat_ms),
                    "last_peer_alive_ms": ago(p.last_peer_alive_ms),
                    "boot_id": p.boot.map(|(b, _)| format!("{b:016x}")),
                    "last_seq": p.boot.map(|(_, s)| s),
                    "received": p.received,
                    "peer_alive_reports": p.peer_alive_reports,
                    "suspicions": p.suspicions,
                    "dropped": p.dropped.to_json(),
                    "their_view": p.their_view.iter().map(|e| json!({
                        "host": if e.host == self.me { "(this host)".to_string() } else { name_of(e.host) },
                        "alive": e.alive,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "boot_id": format!("{:016x}", self.boot_id),
            "seq": self.seq,
            "peers": peers,
            "dropped": self.dropped.to_json(),
        })
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
