//! One host's heartbeat core without sockets: the keys and addresses from the
//! config, the [`Membership`] view, and the packet path in both directions
//! (seal our heartbeats for every peer; judge what the [`Gate`] let through).
//! Host-testable: the daemon only moves bytes and reads the clock.
//!
//! Rule: nothing here that holds `&mut Node` does X25519. The daemon keeps the
//! node behind its lock and seals ([`seal_round`]) and opens ([`Gate::admit`])
//! outside it; [`Node::heartbeats`] and [`Node::receive`] chain both halves
//! for tests and the fuzz target.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use config_schema::runtime::RuntimeConfig;

use crate::drops::DropReason;
use crate::gate::{Admitted, Gate, Rejected};
use crate::packet::{self, Header, Net, PacketError, Payload, VmReport};
use crate::view::{Membership, Transition};
use crate::witness::Witness;

/// The UDP port heartbeats use on the FT network.
pub const PORT: u16 = 7400;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("host {0} is not in the config")]
    UnknownHost(String),
    #[error("host {host}: address {addr:?} is not a.b.c.d/prefix")]
    BadAddr { host: String, addr: String },
    #[error("host {host}: {what} is not 32 bytes of hex")]
    BadKey { host: String, what: &'static str },
    #[error("host {host}: private key does not match its public_key in the config")]
    KeyMismatch { host: String },
    #[error("cluster.vm_witness {0:?} is not an IPv4 address")]
    BadWitness(String),
}

/// A peer: who, its static key, where its heartbeats go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConf {
    pub id: u32,
    pub name: String,
    pub public_key: [u8; 32],
    pub addr: SocketAddr,
}

/// The VM network: where this host listens, where each peer's VM-network
/// heartbeats go and come from (host id, address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetConfig {
    pub bind: SocketAddr,
    pub peers: Vec<(u32, SocketAddr)>,
    /// The VM witness this host pings from `bind`'s address
    /// (`cluster.vm_witness`, [`crate::witness`]); `None`: none.
    pub witness: Option<Ipv4Addr>,
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
    /// Heartbeats on the VM network too (reachability only); `None`: not.
    pub vm: Option<VmNetConfig>,
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
    /// other host at its FT address and the same port; on the VM network
    /// the same with `hosts[].vm.addr`.
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
        let vm_peers = (cfg.hosts.iter())
            .filter(|h| h.name != me.name)
            .map(|h| Ok((h.id, SocketAddr::new(ft_ip(&h.name, &h.vm.addr)?, port))))
            .collect::<Result<_, ConfigError>>()?;
        Ok(NodeConfig {
            id: me.id,
            name: me.name.clone(),
            private_key,
            bind: SocketAddr::new(ft_ip(&me.name, &me.ft.addr)?, port),
            peers,
            interval_ms: cfg.timing.heartbeat_interval_ms,
            failure_timeout_ms: cfg.timing.failure_timeout_ms,
            vm: Some(VmNetConfig {
                bind: SocketAddr::new(ft_ip(&me.name, &me.vm.addr)?, port),
                peers: vm_peers,
                witness: match &cfg.cluster.vm_witness {
                    None => None,
                    Some(w) => Some(w.parse().map_err(|_| ConfigError::BadWitness(w.clone()))?),
                },
            }),
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
///
/// Two views with the same rules ([`Membership`]): the FT network's, the
/// only input to failure suspicion, and, once the VM-network socket is
/// bound ([`Node::start_vm`]), the VM network's, with its own seqs, echoes
/// and drop counters: which peers this host hears there. Its verdicts go
/// to status, to the FT heartbeats' [`VmReport`] and to console lines of
/// their own, never to suspicion.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    view: Membership,
    vm: Option<Membership>,
    /// The VM witness, when the config names one (its prober is the
    /// daemon's witness thread).
    witness: Option<Witness>,
}

/// ms as a u32, saturating (the wire's width).
fn ms32(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Node {
    pub fn new(cfg: NodeConfig, boot_id: u64, now_ms: u64) -> Self {
        let view = Membership::new(
            cfg.id,
            Self::peer_names(&cfg),
            boot_id,
            cfg.failure_timeout_ms,
            now_ms,
        );
        // The echo id and payload nonce come from the boot id (random per
        // daemon start): another daemon's pings, or this one's before a
        // restart, do not count as answers to this one's.
        let mixed = boot_id.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        let witness = (cfg.vm.as_ref().and_then(|v| v.witness))
            .map(|addr| Witness::new(addr, (mixed >> 48) as u16, mixed ^ boot_id));
        Node {
            cfg,
            view,
            vm: None,
            witness,
        }
    }

    /// The VM witness's state, when the config names one.
    pub fn witness(&self) -> Option<&Witness> {
        self.witness.as_ref()
    }

    pub fn witness_mut(&mut self) -> Option<&mut Witness> {
        self.witness.as_mut()
    }

    /// Whether this host hears its VM witness now (`None`: it has none).
    pub fn hears_witness(&self, now_ms: u64) -> Option<bool> {
        (self.witness.as_ref()).map(|w| w.heard(now_ms, self.cfg.failure_timeout_ms))
    }

    /// When this host last heard anyone on the VM network: a peer, or the
    /// witness (ms; `None`: never).
    pub fn vm_last_heard(&self) -> Option<u64> {
        let peer = self.vm.as_ref().and_then(|v| v.last_heard_any());
        let witness = self.witness.as_ref().and_then(|w| w.last_reply_ms);
        peer.max(witness)
    }

    fn peer_names(cfg: &NodeConfig) -> Vec<(u32, String)> {
        cfg.peers.iter().map(|p| (p.id, p.name.clone())).collect()
    }

    /// This host listens on the VM network from `now_ms` on (its socket is
    /// bound): the VM network's view starts, with the FT view's boot id.
    /// Does nothing without `cfg.vm` or when it runs already.
    pub fn start_vm(&mut self, now_ms: u64) {
        if self.cfg.vm.is_none() || self.vm.is_some() {
            return;
        }
        let peers = Self::peer_names(&self.cfg);
        let (id, boot, timeout) = (
            self.cfg.id,
            self.view.boot_id(),
            self.cfg.failure_timeout_ms,
        );
        self.vm = Some(Membership::new(id, peers, boot, timeout, now_ms));
    }

    /// The VM network's view, once this host listens there.
    pub fn vm_view(&self) -> Option<&Membership> {
        self.vm.as_ref()
    }

    pub fn vm_view_mut(&mut self) -> Option<&mut Membership> {
        self.vm.as_mut()
    }

    /// What this host's FT heartbeats say of its VM network at `now_ms`:
    /// `None` without `cfg.vm` (payload version 1); a zero watch until the
    /// socket is bound.
    pub fn vm_report(&self, now_ms: u64) -> Option<VmReport> {
        self.cfg.vm.as_ref()?;
        let witness = self.hears_witness(now_ms);
        let Some(vm) = &self.vm else {
            return Some(VmReport {
                watch_ms: 0,
                quiet_ms: 0,
                hears: Vec::new(),
                witness,
            });
        };
        let hears = vm.alive_ids(now_ms);
        // Quiet: since this host last heard anyone there, the witness
        // included (hearing it shows this host's side works, as a peer does).
        let quiet_ms = if hears.is_empty() && witness != Some(true) {
            let since = self.vm_last_heard().unwrap_or(0).max(vm.started_ms());
            now_ms.saturating_sub(since)
        } else {
            0
        };
        Some(VmReport {
            // At least 1 once listening: 0 says "not listening".
            watch_ms: ms32(now_ms.saturating_sub(vm.started_ms())).max(1),
            quiet_ms: ms32(quiet_ms),
            hears,
            witness,
        })
    }

    /// The next FT heartbeat: the FT view's, with the VM report.
    pub fn next_ft_heartbeat(&mut self, now_ms: u64) -> Payload {
        let mut p = self.view.next_heartbeat(now_ms);
        p.vm = self.vm_report(now_ms);
        p
    }

    /// The next VM-network heartbeat, once this host listens there.
    pub fn next_vm_heartbeat(&mut self, now_ms: u64) -> Option<Payload> {
        self.vm.as_mut().map(|v| v.next_heartbeat(now_ms))
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
            if let Some(vm) = &mut self.vm {
                vm.set_timeout(failure_timeout_ms);
            }
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
        let payload = self.next_ft_heartbeat(now_ms);
        seal_round(&self.cfg, &payload)
    }

    /// One round of VM-network heartbeats, sealed (tests); empty until
    /// [`Node::start_vm`].
    pub fn vm_heartbeats(
        &mut self,
        now_ms: u64,
    ) -> Vec<(SocketAddr, Result<Vec<u8>, PacketError>)> {
        match self.next_vm_heartbeat(now_ms) {
            Some(p) => seal_vm_round(&self.cfg, &p),
            None => Vec::new(),
        }
    }

    pub fn peer_name(&self, id: u32) -> Option<String> {
        peer_name(&self.cfg, id)
    }

    /// Counts a datagram the gate refused.
    pub fn on_rejected(&mut self, r: Rejected) -> Received {
        self.view.record_drop(r.peer, r.reason);
        self.describe_rejected(r)
    }

    /// The drop a refused datagram is reported as, without counting it (the
    /// daemon's receive loop counts refusals itself, outside the lock).
    pub fn describe_rejected(&self, r: Rejected) -> Received {
        describe_rejected(&self.cfg, r)
    }

    /// Judges what the gate let through (or counts what it refused).
    pub fn on_admitted(&mut self, now_ms: u64, admitted: Admitted) -> Received {
        judge(
            &self.cfg,
            &mut self.view,
            now_ms,
            admitted,
            |reason, payload| match reason {
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
        )
    }

    /// Judges what the VM network's gate let through (or counts what it
    /// refused) against the VM network's view; before [`Node::start_vm`]
    /// everything is dropped as `malformed` (nothing listens yet).
    pub fn on_admitted_vm(&mut self, now_ms: u64, admitted: Admitted) -> Received {
        let Some(vm) = &mut self.vm else {
            return Received::Dropped {
                reason: DropReason::Malformed,
                claimed: None,
                detail: "the VM-network view has not started".into(),
            };
        };
        judge(&self.cfg, vm, now_ms, admitted, |_, payload| {
            format!(
                "VM network: boot {:016x} seq {}",
                payload.boot_id, payload.seq
            )
        })
    }

    /// [`Node::on_admitted`] or [`Node::on_admitted_vm`], as `net` says.
    pub fn on_admitted_on(&mut self, net: Net, now_ms: u64, admitted: Admitted) -> Received {
        match net {
            Net::Ft => self.on_admitted(now_ms, admitted),
            Net::Vm => self.on_admitted_vm(now_ms, admitted),
        }
    }

    /// Gate, then judge, one datagram from `src` on `net` (tests and
    /// fuzzing: the daemon runs the gate outside its lock).
    pub fn receive_on(
        &mut self,
        net: Net,
        gate: &mut Gate,
        now_ms: u64,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Received {
        let admitted = gate.admit(now_ms, src, datagram);
        self.on_admitted_on(net, now_ms, admitted)
    }

    /// [`Node::receive_on`] the FT network.
    pub fn receive(
        &mut self,
        gate: &mut Gate,
        now_ms: u64,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Received {
        self.receive_on(Net::Ft, gate, now_ms, src, datagram)
    }
}

/// The name of `cfg`'s peer `id`, if it is one.
fn peer_name(cfg: &NodeConfig, id: u32) -> Option<String> {
    cfg.peers
        .iter()
        .find(|p| p.id == id)
        .map(|p| p.name.clone())
}

/// The drop a refused datagram is reported as (not counted here).
fn describe_rejected(cfg: &NodeConfig, r: Rejected) -> Received {
    Received::Dropped {
        reason: r.reason,
        claimed: r.peer.and_then(|id| peer_name(cfg, id)),
        detail: r.detail,
    }
}

/// Judges what a gate let through against `view` (either network's), or
/// counts there what it refused; `detail` says why a heartbeat the view
/// refused was dropped.
fn judge(
    cfg: &NodeConfig,
    view: &mut Membership,
    now_ms: u64,
    admitted: Admitted,
    detail: impl FnOnce(DropReason, &Payload) -> String,
) -> Received {
    let (sender, payload) = match admitted {
        Admitted::Opened { sender, payload } => (sender, payload),
        Admitted::Rejected(r) => {
            view.record_drop(r.peer, r.reason);
            return describe_rejected(cfg, r);
        }
    };
    match view.on_heartbeat(now_ms, sender, &payload) {
        Ok(transitions) => Received::Accepted {
            from: peer_name(cfg, sender).unwrap_or_default(),
            transitions,
        },
        Err(reason) => Received::Dropped {
            reason,
            claimed: peer_name(cfg, sender),
            detail: detail(reason, &payload),
        },
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

/// `payload` sealed for every peer's VM-network address (`cfg.vm`; none
/// without it), with the `FTHV` magic.
pub fn seal_vm_round(
    cfg: &NodeConfig,
    payload: &Payload,
) -> Vec<(SocketAddr, Result<Vec<u8>, PacketError>)> {
    let Some(vm) = &cfg.vm else {
        return Vec::new();
    };
    (cfg.peers.iter())
        .filter_map(|p| {
            let addr = vm.peers.iter().find(|(id, _)| *id == p.id)?.1;
            let h = Header {
                sender: cfg.id,
                receiver: p.id,
            };
            let sealed = packet::seal_on(Net::Vm, h, payload, &cfg.private_key, &p.public_key);
            Some((addr, sealed))
        })
        .collect()
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "node_vm_tests.rs"]
mod vm_tests;
