//! The daemon's VM-network side: binding `vm.addr` (retried until init has
//! put it on the bridge), the VM-network view's console lines, and what
//! status and `VmNetwork` answer about it. Reachability only: nothing here
//! feeds failure suspicion (heartbeat/README.md, The VM network).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;

use config_schema::ctl::{PeerVmReach, VmNetView, VmReach};
use config_schema::sched;
use serde_json::json;

use super::{recv_loop, Handle, Shared, RECV_POLL};
use crate::gate::Gate;
use crate::node::Node;
use crate::packet::{Net, VmReport};
use crate::view::Transition;

/// How the VM-network view names the witness at `ip` among the hosts a
/// host hears (`ctl::VmReach::hears`).
pub fn witness_name(ip: std::net::Ipv4Addr) -> String {
    format!("witness:{ip}")
}

/// The console line of a VM-network view's transition (a restart is the
/// FT view's to say).
pub fn vm_line(t: &Transition) -> Option<String> {
    Some(match t {
        Transition::Up { host } => format!("heartbeat: peer {host} heard on the VM network"),
        Transition::Suspected { host, silent_ms } => {
            format!("heartbeat: peer {host} not heard on the VM network (silent {silent_ms} ms)")
        }
        Transition::NeverHeard {
            host,
            since_start_ms,
        } => format!(
            "heartbeat: peer {host} not heard on the VM network (never heard in {since_start_ms} ms)"
        ),
        Transition::Restarted { .. } => return None,
    })
}

pub(super) fn announce_vm(ts: &[Transition]) {
    for line in ts.iter().filter_map(vm_line) {
        super::say_membership(&line);
    }
}

impl Handle {
    /// Status's `vm_network` object (heartbeat/README.md, Status).
    pub(super) fn vm_status(&self, node: &Node, now: u64) -> serde_json::Value {
        let cfg = node.config();
        let Some(vm) = &cfg.vm else {
            return json!({"configured": false});
        };
        let view = vm_net_view(node, now);
        let mut v = json!({
            "configured": true,
            "addr": vm.bind.to_string(),
            "listening": view.own.watch_ms.is_some(),
            "not_listening_because": *self.0.vm_unbound.lock().unwrap_or_else(|e| e.into_inner()),
            "watch_ms": view.own.watch_ms,
            "quiet_ms": view.own.quiet_ms,
            "hears": view.own.hears,
            "witness": node.witness().map(|w| w.status(now, cfg.failure_timeout_ms)),
            "send_errors": self.0.vm_send_errors.load(Ordering::Relaxed),
            "noise_opens": self.0.vm_noise_opens.load(Ordering::Relaxed),
            "peers_report": view.peers,
        });
        if let Some(vv) = node.vm_view() {
            let st = vv.status(now);
            v["peers"] = st["peers"].clone();
            v["dropped"] = st["dropped"].clone();
            v["seq"] = st["seq"].clone();
        }
        v
    }
}

/// The node's [`VmNetView`] at `now`. A peer's report names this host
/// too (it hears it): by this host's name, as every other host names it —
/// ftvmm's judgements compare those names with this host's (the view holds
/// peers only, and showed this host as `id <n>`, so a Primary could not
/// see that its Secondary still heard it).
pub(super) fn vm_net_view(node: &Node, now: u64) -> VmNetView {
    let view = node.view();
    let me = node.config();
    // The witness is named by this host's config (the cluster's one
    // witness); `witness:` cannot begin a host name (`:` is not allowed in
    // one), so ftvmm's rules take it as one more party heard, never as a
    // host.
    let witness = (me.vm.as_ref()).and_then(|v| v.witness);
    let names = |ids: &[u32], heard_witness: Option<bool>| -> Vec<String> {
        let hosts = ids.iter().map(|&id| match view.name_of(id) {
            Some(n) => n.to_string(),
            None if id == me.id => me.name.clone(),
            None => format!("id {id}"),
        });
        let w = match (witness, heard_witness) {
            (Some(ip), Some(true)) => Some(witness_name(ip)),
            _ => None,
        };
        hosts.chain(w).collect()
    };
    let reach = |r: &VmReport| VmReach {
        watch_ms: (r.watch_ms > 0).then_some(u64::from(r.watch_ms)),
        quiet_ms: u64::from(r.quiet_ms),
        hears: names(&r.hears, r.witness),
    };
    let own = match node.vm_report(now) {
        Some(r) => reach(&r),
        None => VmReach {
            watch_ms: None,
            quiet_ms: 0,
            hears: Vec::new(),
        },
    };
    let peers = (view.their_vm(now).into_iter())
        .map(|t| PeerVmReach {
            host: t.name,
            ft_alive: t.alive,
            age_ms: t.report.as_ref().map(|(_, age)| *age),
            reach: t.report.as_ref().map(|(r, _)| reach(r)),
        })
        .collect();
    let own_since_heard_ms = (node.vm_view())
        .and(node.vm_last_heard())
        .map(|t| now.saturating_sub(t));
    VmNetView {
        failure_timeout_ms: view.timeout_ms(),
        own,
        peers,
        own_since_heard_ms,
    }
}

/// Binds the VM-network address (retrying every second until it exists:
/// init puts it on the bridge), starts the node's VM-network view and
/// receives there until stop. The send thread sends there once bound.
pub(super) fn vm_loop(s: &Shared, gate: Gate, addr: SocketAddr) {
    let _ = sched::realtime_thread(sched::HEARTBEAT_PRIORITY);
    let mut said = false;
    let socket = loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let bound = UdpSocket::bind(addr).and_then(|sock| {
            sock.set_read_timeout(Some(RECV_POLL))?;
            let tx = sock.try_clone()?;
            Ok((sock, tx))
        });
        match bound {
            Ok((sock, tx)) => {
                let _ = s.vm_socket.set(tx);
                break sock;
            }
            Err(e) => {
                let why = format!("cannot bind UDP {addr}: {e}");
                if !said {
                    println!("heartbeat: VM network: {why}; retrying every second");
                    said = true;
                }
                *s.vm_unbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                for _ in 0..5 {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(RECV_POLL);
                }
            }
        }
    };
    *s.vm_unbound.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let now = s.now_ms();
    s.node().start_vm(now);
    println!("heartbeat: VM network: heartbeats on {addr} (reachability only; suspicion is the FT network's)");
    recv_loop(s, gate, &socket, Net::Vm);
}
