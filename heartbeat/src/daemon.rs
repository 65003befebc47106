//! The running daemon: one UDP socket bound to this host's FT address, a send
//! thread (a heartbeat round every interval, then the suspicion check) and a
//! receive thread, around one [`Node`] behind a mutex. State changes go to the
//! console with `println!` like the other daemons; dropped packets too, at most
//! one line per reason every [`DROP_LOG_EVERY`].
//!
//! Both threads run under `SCHED_RR` ([`config_schema::sched`]) when the
//! process may (root): busy guests' vCPU threads must not delay a round or
//! the reading of a peer's, or a healthy host looks dead.
//!
//! Rule: no X25519 under the node lock. The receive thread owns the [`Gate`]
//! (source check, rate limit, Noise open) and takes the lock only to judge
//! what the gate opened; what it refused is counted in the receive thread
//! ([`Refused`]) and added to the node's counters under the lock in batches,
//! at most every [`REFUSED_FLUSH_EVERY`] (and before an opened packet is
//! judged). The send thread takes the lock for the next payload and seals it
//! for every peer after releasing it. A flood of garbage therefore never
//! takes the lock per packet: the send thread, the suspicion check and a
//! control-socket answer wait neither for a Diffie-Hellman nor behind a lock
//! retaken tens of thousands of times a second (a loaded host's heartbeat
//! rounds came late that way, and its peers suspected it).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use config_schema::ctl::{PeerView, Request, Response, VmNetView};
use config_schema::sched;
use serde_json::json;

use crate::drops::DropReason;
use crate::gate::{Admitted, Gate};
use crate::live::LiveTiming;
use crate::node::{seal_round, seal_vm_round, Node, NodeConfig, Received};
use crate::packet::{Net, MAX_PACKET};
use crate::view::Transition;

#[path = "daemon_vm.rs"]
mod vm;
pub use vm::{vm_line, witness_name};

#[path = "daemon_witness.rs"]
mod witness;
use vm::{announce_vm, vm_loop, vm_net_view};

/// At most one console line per drop reason in this period.
pub const DROP_LOG_EVERY: Duration = Duration::from_secs(5);
/// How long a blocked receive waits before checking for shutdown.
const RECV_POLL: Duration = Duration::from_millis(200);
/// How stale the status's drop counters may be under a flood.
pub const REFUSED_FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The gate's refusals not yet added to the node's counters, by (the peer
/// the header named, reason).
#[derive(Debug, Default)]
struct Refused {
    counts: Vec<((Option<u32>, DropReason), u64)>,
    since: Option<Instant>,
}

impl Refused {
    fn add(&mut self, peer: Option<u32>, reason: DropReason, now: Instant) {
        self.since.get_or_insert(now);
        match self.counts.iter_mut().find(|(k, _)| *k == (peer, reason)) {
            Some((_, n)) => *n += 1,
            None => self.counts.push(((peer, reason), 1)),
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.since
            .is_some_and(|t| now.duration_since(t) >= REFUSED_FLUSH_EVERY)
    }

    /// Adds every pending count to the node's view of `net` (under its lock).
    fn flush_into(&mut self, node: &mut Node, net: Net) {
        for ((peer, reason), n) in self.counts.drain(..) {
            let view = match net {
                Net::Ft => Some(node.view_mut()),
                Net::Vm => node.vm_view_mut(),
            };
            if let Some(v) = view {
                v.record_drops(peer, reason, n);
            }
        }
        self.since = None;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("UDP socket setup: {0}")]
    Socket(std::io::Error),
    #[error("no OS randomness for the boot id: {0}")]
    Random(getrandom::Error),
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
}

/// Per-reason rate limit for drop lines.
#[derive(Debug, Default)]
struct DropLog {
    last: [Option<Instant>; DropReason::ALL.len()],
    suppressed: [u64; DropReason::ALL.len()],
}

impl DropLog {
    /// Whether a drop for `reason` at `now` gets a line (then build its
    /// details and call [`DropLog::line`]); one that does not is counted as
    /// not shown, as `line` would.
    fn due(&mut self, now: Instant, reason: DropReason) -> bool {
        let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) else {
            return false;
        };
        if self.last[i].is_none_or(|t| now.duration_since(t) >= DROP_LOG_EVERY) {
            return true;
        }
        self.suppressed[i] += 1;
        false
    }

    /// The line to print for this drop, if any.
    fn line(
        &mut self,
        now: Instant,
        reason: DropReason,
        src: SocketAddr,
        detail: &str,
    ) -> Option<String> {
        if !self.due(now, reason) {
            return None;
        }
        let i = DropReason::ALL.iter().position(|r| *r == reason)?;
        let more = std::mem::take(&mut self.suppressed[i]);
        self.last[i] = Some(now);
        let more = if more > 0 {
            format!(" ({more} more {} drops not shown)", reason.as_str())
        } else {
            String::new()
        };
        Some(format!(
            "heartbeat: dropped {} packet from {src}: {detail}{more}",
            reason.as_str()
        ))
    }
}

struct Shared {
    node: Mutex<Node>,
    epoch: Instant,
    stop: AtomicBool,
    local: SocketAddr,
    send_errors: Mutex<(u64, Option<String>)>,
    /// Noise opens the receive thread attempted (mirrors [`Gate::opens`]).
    noise_opens: AtomicU64,
    /// The gate's per-source rate (tokens/s) and burst.
    rate_limit: (f64, u64),
    /// The interval and failure timeout, as `ftctl apply` may change them.
    timing: Arc<LiveTiming>,
    /// The send thread's scheduling (`config_schema::sched`), for status.
    scheduling: Mutex<String>,
    /// The VM-network socket (the send thread's clone), once bound.
    vm_socket: OnceLock<UdpSocket>,
    /// Why the VM-network socket is not bound (yet).
    vm_unbound: Mutex<Option<String>>,
    /// Failed VM-network sends (counted only: a cut network is what the
    /// VM-network view is there to show).
    vm_send_errors: AtomicU64,
    /// Noise opens of the VM network's gate.
    vm_noise_opens: AtomicU64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    /// The node, with the live timing taken (two atomic loads).
    fn node(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock leaves a view that is still consistent
        // enough to report; keep serving.
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        node.set_timing(self.timing.interval_ms(), self.timing.failure_timeout_ms());
        node
    }
    /// The node with its suspicion check brought up to `now`, so an answer
    /// never shows a peer dead by the clock but still "up" by state.
    fn ticked(&self) -> (MutexGuard<'_, Node>, u64) {
        let mut node = self.node();
        let now = self.now_ms();
        announce(&node.view_mut().tick(now));
        if let Some(vm) = node.vm_view_mut() {
            announce_vm(&vm.tick(now));
        }
        (node, now)
    }
}

fn announce(ts: &[Transition]) {
    for t in ts {
        say_membership(&t.to_string());
    }
}

/// A membership line: on the console and in the events (FT and VM network).
pub(super) fn say_membership(line: &str) {
    println!("{line}");
    config_schema::events::record(
        config_schema::events::EventKind::Membership,
        None,
        None,
        line,
    );
}

/// A cloneable handle on the running daemon (for the control socket).
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

/// The running daemon; [`Daemon::stop`] (or drop) ends its threads.
pub struct Daemon {
    handle: Handle,
    threads: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Binds `cfg.bind`, picks a random boot id and starts both threads.
    pub fn start(cfg: NodeConfig) -> Result<Daemon, DaemonError> {
        let timing = Arc::new(LiveTiming::new(cfg.interval_ms, cfg.failure_timeout_ms));
        Self::start_live(cfg, timing)
    }

    /// [`Daemon::start`] with the timing the status service changes live
    /// (`ftctl apply`): read every round.
    pub fn start_live(cfg: NodeConfig, timing: Arc<LiveTiming>) -> Result<Daemon, DaemonError> {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).map_err(DaemonError::Random)?;
        let boot_id = u64::from_le_bytes(b);
        let socket = UdpSocket::bind(cfg.bind).map_err(|source| DaemonError::Bind {
            addr: cfg.bind,
            source,
        })?;
        socket
            .set_read_timeout(Some(RECV_POLL))
            .map_err(DaemonError::Socket)?;
        let local = socket.local_addr().map_err(DaemonError::Socket)?;
        let gate = Gate::new(&cfg, 0);
        let keys = cfg.clone();
        let shared = Arc::new(Shared {
            node: Mutex::new(Node::new(cfg, boot_id, 0)),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            local,
            send_errors: Mutex::new((0, None)),
            noise_opens: AtomicU64::new(0),
            rate_limit: gate.rate_limit(),
            timing,
            scheduling: Mutex::new("SCHED_OTHER".into()),
            vm_socket: OnceLock::new(),
            vm_unbound: Mutex::new(Some("not bound yet".into())),
            vm_send_errors: AtomicU64::new(0),
            vm_noise_opens: AtomicU64::new(0),
        });
        let vm_gate = Gate::new_vm(&keys, 0);
        let vm_bind = keys.vm.as_ref().map(|v| v.bind);
        let witness = (keys.vm.as_ref()).and_then(|v| match (v.bind.ip(), v.witness) {
            (std::net::IpAddr::V4(ip), Some(w)) => Some((ip, w)),
            _ => None,
        });
        let tx = socket.try_clone().map_err(DaemonError::Socket)?;
        let s1 = Arc::clone(&shared);
        let sender = std::thread::Builder::new()
            .name("heartbeat-send".into())
            .spawn(move || {
                // Said once, by this thread (the receive thread does the same).
                match sched::realtime_thread(sched::HEARTBEAT_PRIORITY) {
                    Ok(()) => {
                        *s1.scheduling.lock().unwrap_or_else(|e| e.into_inner()) =
                            sched::describe_thread()
                    }
                    Err(e) => println!(
                        "heartbeat: no real-time scheduling ({e}); the threads run at normal \
                         priority, so busy guests can delay heartbeats"
                    ),
                }
                send_loop(&s1, &keys, &tx)
            })
            .map_err(DaemonError::Thread)?;
        let s2 = Arc::clone(&shared);
        let receiver = std::thread::Builder::new()
            .name("heartbeat-recv".into())
            .spawn(move || {
                let _ = sched::realtime_thread(sched::HEARTBEAT_PRIORITY);
                recv_loop(&s2, gate, &socket, Net::Ft)
            });
        let receiver = match receiver {
            Ok(r) => r,
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                let _ = sender.join();
                return Err(DaemonError::Thread(e));
            }
        };
        let mut threads = vec![sender, receiver];
        if let Some(addr) = vm_bind {
            let s3 = Arc::clone(&shared);
            let vm = std::thread::Builder::new()
                .name("heartbeat-vmnet".into())
                .spawn(move || vm_loop(&s3, vm_gate, addr));
            push_or_stop(&shared, &mut threads, vm)?;
        }
        if let Some((ip, w)) = witness {
            let s4 = Arc::clone(&shared);
            let t = std::thread::Builder::new()
                .name("heartbeat-witness".into())
                .spawn(move || witness::witness_loop(&s4, ip, w));
            push_or_stop(&shared, &mut threads, t)?;
        }
        Ok(Daemon {
            handle: Handle(shared),
            threads,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops sending and receiving (as if the host went silent) and joins.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle.0.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Handle {
    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local
    }

    /// The membership view (`Request::Peers`).
    pub fn peers(&self) -> Vec<PeerView> {
        let (node, now) = self.0.ticked();
        node.view().peer_views(now)
    }

    /// Which peers this host, and by their FT heartbeats every other host,
    /// hear on the VM network (`Request::VmNetwork`).
    pub fn vm_network(&self) -> VmNetView {
        let (node, now) = self.0.ticked();
        vm_net_view(&node, now)
    }

    /// ftvmm saw logging-channel traffic from `host` (`Request::PeerAlive`).
    pub fn peer_alive(&self, host: &str) -> Result<(), String> {
        let now = self.0.now_ms();
        let ts = self.0.node().view_mut().on_peer_alive(now, host)?;
        announce(&ts);
        Ok(())
    }

    /// The `Status` object.
    pub fn status(&self) -> serde_json::Value {
        let (node, now) = self.0.ticked();
        let cfg = node.config();
        let mut s = node.view().status(now);
        let (send_errors, last_send_error) = self
            .0
            .send_errors
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default();
        if let Some(m) = s.as_object_mut() {
            for (k, v) in [
                ("daemon", json!("heartbeat")),
                ("host", json!(cfg.name)),
                ("host_id", json!(cfg.id)),
                ("udp", json!(self.0.local.to_string())),
                ("interval_ms", json!(cfg.interval_ms)),
                ("failure_timeout_ms", json!(cfg.failure_timeout_ms)),
                ("uptime_ms", json!(now)),
                (
                    "scheduling",
                    json!(self
                        .0
                        .scheduling
                        .lock()
                        .map(|g| g.clone())
                        .unwrap_or_default()),
                ),
                ("send_errors", json!(send_errors)),
                ("last_send_error", json!(last_send_error)),
                (
                    "noise_opens",
                    json!(self.0.noise_opens.load(Ordering::Relaxed)),
                ),
                (
                    "rate_limit",
                    json!({
                        "per_source_per_s": self.0.rate_limit.0,
                        "burst": self.0.rate_limit.1,
                        "sources": cfg.peers.len(),
                        "budget_per_s": self.0.rate_limit.0 * cfg.peers.len() as f64,
                    }),
                ),
            ] {
                m.insert(k.into(), v);
            }
            if let Some(peers) = m.get_mut("peers").and_then(|p| p.as_array_mut()) {
                for (p, conf) in peers.iter_mut().zip(&cfg.peers) {
                    p["addr"] = json!(conf.addr.to_string());
                }
            }
            m.insert("vm_network".into(), self.vm_status(&node, now));
        }
        config_schema::events::status_fields(&mut s);
        s
    }

    /// The control-socket handler.
    pub fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status {
                status: self.status(),
            },
            Request::Peers => Response::Peers {
                peers: self.peers(),
            },
            Request::VmNetwork => Response::VmNetwork {
                view: self.vm_network(),
            },
            Request::PeerAlive { host } => match self.peer_alive(&host) {
                Ok(()) => Response::Ok,
                Err(message) => Response::Error { message },
            },
            other => Response::Error {
                message: format!("heartbeat does not handle {other:?}"),
            },
        }
    }
}

/// Sends one sealed round; errors are counted (the first FT one printed).
fn send_round(
    s: &Shared,
    socket: &UdpSocket,
    round: Vec<(SocketAddr, Result<Vec<u8>, crate::packet::PacketError>)>,
    net: Net,
) {
    for (addr, sealed) in round {
        let res = sealed.map_err(|e| e.to_string()).and_then(|p| {
            socket
                .send_to(&p, addr)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let Err(e) = res else { continue };
        if net == Net::Vm {
            s.vm_send_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut g = s.send_errors.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == 0 {
            println!("heartbeat: cannot send to {addr}: {e} (further send errors only counted in status)");
        }
        g.0 += 1;
        g.1 = Some(format!("{addr}: {e}"));
    }
}

/// Keeps a started thread, or, if it could not start, stops and joins
/// every thread started so far.
fn push_or_stop(
    shared: &Shared,
    threads: &mut Vec<JoinHandle<()>>,
    spawned: std::io::Result<JoinHandle<()>>,
) -> Result<(), DaemonError> {
    match spawned {
        Ok(t) => {
            threads.push(t);
            Ok(())
        }
        Err(e) => {
            shared.stop.store(true, Ordering::SeqCst);
            for t in threads.drain(..) {
                let _ = t.join();
            }
            Err(DaemonError::Thread(e))
        }
    }
}

fn send_loop(s: &Shared, keys: &NodeConfig, socket: &UdpSocket) {
    // When the last round was due (`None`: none yet).
    let mut last: Option<Instant> = None;
    while !s.stop.load(Ordering::SeqCst) {
        // Read every pass: a live interval (`ftctl apply`) counts from the
        // last round, so a shorter one takes effect at once.
        let interval = Duration::from_millis(s.timing.interval_ms());
        let now = Instant::now();
        if let Some(next) = last.map(|l| l + interval) {
            if now < next {
                std::thread::sleep((next - now).min(RECV_POLL));
                continue;
            }
            // On time: keep the cadence; far behind (suspended): do not burst.
            last = Some(if now < next + interval { next } else { now });
        } else {
            last = Some(now);
        }
        let (payload, transitions, vm) = {
            let mut node = s.node();
            let t = s.now_ms();
            let payload = node.next_ft_heartbeat(t);
            let transitions = node.view_mut().tick(t);
            let vm_payload = node.next_vm_heartbeat(t);
            let vm_transitions = node.vm_view_mut().map(|v| v.tick(t)).unwrap_or_default();
            (payload, transitions, (vm_payload, vm_transitions))
        };
        // The FT round first: it is the one failure detection hangs on.
        let round = seal_round(keys, &payload);
        announce(&transitions);
        send_round(s, socket, round, Net::Ft);
        announce_vm(&vm.1);
        if let (Some(p), Some(vm_socket)) = (vm.0, s.vm_socket.get()) {
            send_round(s, vm_socket, seal_vm_round(keys, &p), Net::Vm);
        }
    }
}

fn recv_loop(s: &Shared, mut gate: Gate, socket: &UdpSocket, net: Net) {
    // One byte more than the largest valid packet, so oversize datagrams are seen as such.
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let mut drops = DropLog::default();
    let mut refused = Refused::default();
    while !s.stop.load(Ordering::SeqCst) {
        let got = socket.recv_from(&mut buf);
        if refused.due(Instant::now()) {
            refused.flush_into(&mut s.node(), net);
        }
        let (n, src) = match got {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                // ICMP errors from an earlier send (peer port closed) land here: harmless.
                tracing::debug!("heartbeat: receive error: {e}");
                continue;
            }
        };
        gate.set_interval_ms(s.timing.gate_interval_ms());
        let admitted = gate.admit(s.now_ms(), src, &buf[..n]);
        match net {
            Net::Ft => s.noise_opens.store(gate.opens(), Ordering::Relaxed),
            Net::Vm => s.vm_noise_opens.store(gate.opens(), Ordering::Relaxed),
        }
        let r = match admitted {
            Admitted::Rejected(r) => {
                // Counted here, without the node's lock (module doc); the
                // lock only for the name in a console line, which is rare.
                let now = Instant::now();
                refused.add(r.peer, r.reason, now);
                if drops.due(now, r.reason) {
                    s.node().describe_rejected(r)
                } else {
                    continue;
                }
            }
            opened => {
                let mut node = s.node();
                refused.flush_into(&mut node, net);
                node.on_admitted_on(net, s.now_ms(), opened)
            }
        };
        match r {
            Received::Accepted { transitions, .. } if net == Net::Ft => announce(&transitions),
            Received::Accepted { transitions, .. } => announce_vm(&transitions),
            Received::Dropped {
                reason,
                claimed,
                detail,
            } => {
                let detail = match claimed {
                    Some(h) => format!("claims {h}: {detail}"),
                    None => detail,
                };
                if let Some(line) = drops.line(Instant::now(), reason, src, &detail) {
                    println!("{line}");
                }
            }
        }
    }
    refused.flush_into(&mut s.node(), net);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_hosts;

    fn secret(i: usize) -> [u8; 32] {
        [0x30 + i as u8; 32]
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 77, 60, i as u8 + 1], 17402))
    }

    #[test]
    fn x25519_runs_while_another_thread_holds_the_node_lock() {
        // host-a with one peer, host-b.
        let cfg = test_hosts::config(0, 2, secret, addr, 100, 1000);
        let a_pub = config_schema::keys::host_public_key(&secret(0));
        let d = Daemon::start(cfg).unwrap();
        let b = UdpSocket::bind(addr(1)).unwrap();
        let shared = &d.handle().0;
        let pkt = test_hosts::b_to_a(7, &secret(1), &a_pub);
        // Hold the node lock, as a slow control-socket answer or a send
        // round would: the receive thread must still open the packet.
        let guard = shared.node();
        b.send_to(&pkt, addr(0)).unwrap();
        let start = Instant::now();
        while shared.noise_opens.load(Ordering::Relaxed) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the receive thread did not open the packet while the node lock was held"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(guard);
        // Then it judges it (a new boot without echo) under the lock.
        let start = Instant::now();
        while d.handle().status()["dropped"]["unconfirmed_boot"] != 1 {
            assert!(start.elapsed() < Duration::from_secs(60), "never judged");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_shorter_interval_taken_live_sends_the_next_round_at_once() {
        // host-a at addr(2) with one peer, host-b at addr(3).
        let cfg = test_hosts::config(0, 2, secret, |i| addr(i + 2), 100, 1000);
        let b = UdpSocket::bind(addr(3)).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Booted with an interval of ten minutes: one round at start.
        let timing = Arc::new(LiveTiming::new(600_000, 1_200_000));
        let d = Daemon::start_live(cfg, Arc::clone(&timing)).unwrap();
        let mut buf = [0u8; MAX_PACKET + 1];
        b.recv_from(&mut buf).expect("the first round");
        assert_eq!(d.handle().status()["interval_ms"], 600_000);
        // Shortened live (forced: no config moves fencing's renewal this
        // far live): the next round follows within the read timeout, not
        // ten minutes later, and status shows it.
        timing.force_interval_ms(50);
        let line = timing
            .adopt(
                2,
                &config_schema::Timing {
                    heartbeat_interval_ms: 50,
                    failure_timeout_ms: 1000,
                    lag_limit_ms: 500,
                },
            )
            .unwrap();
        assert!(
            line.contains("failure timeout 1200000 -> 1000 ms"),
            "{line}"
        );
        b.recv_from(&mut buf)
            .expect("no round after the interval was shortened live");
        let st = d.handle().status();
        assert_eq!(
            (&st["interval_ms"], &st["failure_timeout_ms"]),
            (&json!(50), &json!(1000))
        );
    }

    #[test]
    fn drop_lines_are_rate_limited_per_reason() {
        let mut d = DropLog::default();
        let t0 = Instant::now();
        let src: SocketAddr = "192.0.2.9:7400".parse().unwrap();
        let first = d.line(t0, DropReason::Forged, src, "x").unwrap();
        assert_eq!(
            first,
            "heartbeat: dropped forged packet from 192.0.2.9:7400: x"
        );
        assert_eq!(d.line(t0, DropReason::Forged, src, "x"), None);
        assert_eq!(d.line(t0, DropReason::Forged, src, "x"), None);
        assert!(d.line(t0, DropReason::Replayed, src, "y").is_some());
        let later = d
            .line(t0 + DROP_LOG_EVERY, DropReason::Forged, src, "z")
            .unwrap();
        assert!(
            later.ends_with("z (2 more forged drops not shown)"),
            "{later}"
        );
    }
}
