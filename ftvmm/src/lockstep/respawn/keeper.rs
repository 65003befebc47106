//! The keeper of a VM's protection on its Primary's host: whenever the
//! member runs alone in a generation it owns (`Solo`, its outputs released
//! by this host alone, grant held), it chooses a host for a new Secondary
//! (`placement::choose`), says why in one console line, connects with a
//! Hello that says "join" (`JOIN_BY_TRANSFER`, the pair's Hello otherwise:
//! mode, image digest, memory), and hands the channel to the mode's
//! [`JoinSource`]: lockstep's live transfer (`source.rs`, [`LockstepJoin`]),
//! or a checkpoint VM's full first epoch (`checkpoint/respawn.rs`). A
//! failed attempt is reported and retried with back-off; no eligible host
//! leaves the VM `not protected` with the reason, re-examined every
//! [`LOOK_EVERY`] (a host that boots again, or comes back after a partition
//! heals, becomes eligible again without anyone's action).
//!
//! It also keeps the VM's protection line for status: `protected: secondary
//! host-c`, `not protected: <reason>`, `starting secondary on host-c (37%)`.
//! While the member is paired it watches the Secondary's host's storage
//! lease (`secondary_lease.rs`): a Secondary whose host cannot renew it could
//! not win the next generation, so the pair is `not protected` until the
//! lease moves again (one console line each way); and its host's VM
//! network (`secondary_vmnet.rs`): a Secondary whose host hears no peer
//! there could win but not serve. Such a Secondary is not replaced. It also
//! watches this host's own VM network (`own_vmnet.rs`): a Primary whose
//! host hears no peer there while its Secondary's host does hands the VM
//! over to it (`Event::LeaveHost`), and so does a Primary on a host a live
//! affinity change no longer allows, once its Secondary runs on an allowed
//! host and nothing is found against the pair (`live_affinity.rs`). It
//! places new Secondaries by the affinity in force. Both modes' Primaries
//! run this keeper, so these judgements cover lockstep and checkpoint VMs
//! alike.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};
use config_schema::events::{self, EventKind};
use config_schema::runtime::RuntimeConfig;

pub use super::look::{look_at_pair, vm_network, Daemons, Looked, SecondaryWatch};
use super::secondary_vmnet;
use super::source::{transfer, SourceCtx};
use super::target::platform_sha256;
use super::JOIN_BY_TRANSFER;
use crate::lockstep::channel::{self, Channel, Message};
use crate::lockstep::member::{Event, State};
use crate::lockstep::placement::{self, choose_secondary, HostFacts};
use crate::lockstep::primary::Gate;
use crate::lockstep::spec::{channel_port, PairHandle, PairSpec};
use crate::lockstep::transfer::backoff::Backoff;

/// How often the keeper looks at the member and the cluster.
pub const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Connecting to the chosen host (it was alive a moment ago).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A transfer message TCP cannot take within this fails the attempt (the
/// new Secondary is behind a partition).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// After a join posted `SecondaryJoined { generation: g }`: waits until the
/// member is `Paired { g }` (`Ok`), or returns the state it is in instead
/// once it left `Solo { g }` or `timeout` passed (`Err`). Both modes' joins
/// wait here; what a failure undoes is theirs.
pub fn await_paired(handle: &PairHandle, g: u64, timeout: Duration) -> Result<(), Option<State>> {
    let deadline = Instant::now() + timeout;
    loop {
        match handle.member_state() {
            Some(State::Paired { g: pg }) if pg == g => return Ok(()),
            Some(State::Solo { g: sg }) if sg == g && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return Err(other),
        }
    }
}

/// Progress of one join, in percent (for the protection line).
pub type JoinProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// A join that worked: what the console's `protected` line adds.
pub struct JoinReport {
    /// After `protected: secondary host-c`: how and from where.
    pub detail: String,
    /// The guest's pause, if the join paused it (the event's figure).
    pub pause_ms: Option<u64>,
    /// One more console line, if the mode has one.
    pub after: Option<String>,
}

/// How a VM's mode brings a new Secondary in over an accepted channel.
pub trait JoinSource: Send + Sync {
    /// Whether the VM can take a new Secondary now, besides the member's
    /// `Solo` (lockstep: its log's gate is open).
    fn ready(&self) -> bool;
    /// One join to `target` over `ch` (its Hello was accepted) in
    /// generation `g`: returns once the member paired with it, or why not
    /// (the VM runs on alone either way).
    fn join(
        &self,
        ch: Channel,
        target: &str,
        g: u64,
        progress: JoinProgress,
    ) -> Result<JoinReport, String>;
}

/// Lockstep's join: live state transfer (`source.rs`).
pub struct LockstepJoin {
    pub rc: RuntimeConfig,
    pub spec: PairSpec,
    pub handle: Arc<PairHandle>,
}

impl LockstepJoin {
    fn log(&self) -> Option<Arc<crate::lockstep::primary::PrimaryLog>> {
        self.handle
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl JoinSource for LockstepJoin {
    fn ready(&self) -> bool {
        self.log().is_some_and(|l| l.gate() == Gate::Open)
    }

    fn join(
        &self,
        ch: Channel,
        target: &str,
        g: u64,
        progress: JoinProgress,
    ) -> Result<JoinReport, String> {
        let log = self.log().ok_or("the member has no log")?;
        let role = placement::Role::Primary {
            secondary: target.to_string(),
        };
        let ctx = SourceCtx {
            vm: self.spec.hello.vm.clone(),
            generation: g,
            target: target.to_string(),
            handle: Arc::clone(&self.handle),
            log,
            platform_sha256: platform_sha256(&self.spec.hello.platform),
            on_traffic: placement::heartbeat_notifier(&self.rc, &role),
            progress: Arc::new(move |pct| progress(pct)),
        };
        let j = transfer(&ctx, ch)?;
        // The pair's generation, which a lone Primary's re-wins during a
        // long join move past the one it began in: naming the start's made
        // a later pair look older than the generations won meanwhile.
        let generation = match j.generation {
            p if p == g => format!("generation {p}"),
            p => format!("generation {p} (the join began in generation {g})"),
        };
        Ok(JoinReport {
            detail: format!(
                "in lockstep from exit {}; {generation}; pause {} ms; {} rounds; {} bytes sent for {} MiB of guest memory",
                j.log_start_exit,
                j.pause.as_millis(),
                j.stats.rounds,
                j.bytes_sent,
                j.memory_bytes >> 20,
            ),
            pause_ms: Some(j.pause.as_millis() as u64),
            after: Some(format!(
                "ftvmm: vm {}: stop-and-copy pause: {}",
                self.spec.hello.vm, j.pause_detail
            )),
        })
    }
}

/// What the keeper of one VM needs.
pub struct Keeper {
    pub rc: RuntimeConfig,
    pub vm: config_schema::Vm,
    /// The VM's fencing slot (its channel port, `channel_port`).
    pub index: usize,
    /// The pair's agreement: the join's Hello is its Hello.
    pub spec: PairSpec,
    pub handle: Arc<PairHandle>,
    pub stop: Arc<AtomicBool>,
    /// How this VM's mode brings the Secondary in.
    pub join: Arc<dyn JoinSource>,
}

impl Keeper {
    /// Runs the keeper on a thread of its own until `stop`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("keeper-{}", self.vm.name))
            .spawn(move || self.run())
    }

    fn run(self) {
        let name = self.vm.name.clone();
        let here = self.rc.host_name.clone();
        let mut backoff = Backoff::new(seed(&here, &name));
        let mut retry_at = Instant::now();
        let mut last_line = String::new();
        // Since when the VM runs without a Secondary (for the console).
        let mut alone_since: Option<Instant> = None;
        let mut watch = SecondaryWatch::new(&name, &here);
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(LOOK_EVERY);
            let state = self.handle.member_state();
            if !matches!(state, Some(State::Paired { .. })) {
                watch.unpaired();
                self.handle.set_secondary_unfit("", None);
            }
            let g = match state {
                Some(State::Solo { g }) => g,
                Some(State::Paired { .. }) => {
                    alone_since = None;
                    let daemons = Daemons {
                        fencing: Path::new(&self.spec.fencing_socket),
                        heartbeat: &self.spec.heartbeat_socket,
                    };
                    let look = look_at_pair(&self.handle, &daemons, &self.rc, &mut watch);
                    for line in look.lines {
                        println!("{line}");
                    }
                    // A config that moved the VM off this host: hand it over
                    // to a fit Secondary on an allowed host (`live_affinity`).
                    let moved = || {
                        let booted = &self.rc.config;
                        let live = &self.spec.live_affinity;
                        (look.fit && !look.peer.is_empty())
                            .then(|| live.leave_why(booted, &name, &here, &look.peer))
                            .flatten()
                    };
                    if let Some(why) = look.leave.clone().or_else(moved) {
                        // The member hands over on its own thread; it is
                        // no longer `Paired` at the next look.
                        self.handle.post(Event::LeaveHost { why });
                    }
                    continue;
                }
                Some(State::Following { .. }) => continue,
                Some(other) => {
                    alone_since.get_or_insert_with(Instant::now);
                    self.handle
                        .set_protection(&format!("not protected: member is {other}"));
                    continue;
                }
                None => continue,
            };
            let since = *alone_since.get_or_insert_with(Instant::now);
            if !self.join.ready() || Instant::now() < retry_at {
                continue;
            }
            let facts = host_facts(
                &self.spec.heartbeat_socket,
                Path::new(&self.spec.fencing_socket),
                &here,
            );
            // By the affinity in force (`live_affinity`).
            let live = self.spec.live_affinity.apply(&self.rc);
            let choice = choose_secondary(&live.config, &name, &here, &facts);
            let line = choice.line();
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
            let Some(target) = choice.chosen.clone() else {
                self.handle
                    .set_protection(&format!("not protected: {}", reason_of(&choice)));
                continue;
            };
            println!("ftvmm: vm {name}: starting secondary on {target} (generation {g})");
            self.handle
                .set_protection(&format!("starting secondary on {target} (0%)"));
            match self.attempt(&target, g) {
                Ok(j) => {
                    backoff.on_success();
                    last_line.clear();
                    let p = format!("protected: secondary {target}");
                    self.handle.set_protection(&p);
                    *self
                        .handle
                        .protected_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    let line = format!(
                        "ftvmm: vm {name}: {p} {}; unprotected for {} ms",
                        j.detail,
                        since.elapsed().as_millis()
                    );
                    println!("{line}");
                    events::record(EventKind::Respawn, Some(&name), j.pause_ms, &line);
                    if let Some(after) = j.after {
                        println!("{after}");
                    }
                    alone_since = None;
                }
                Err(e) => {
                    let delay = backoff.on_failure();
                    retry_at = Instant::now() + Duration::from_millis(delay);
                    last_line.clear();
                    self.handle.set_protection(&format!(
                        "not protected: secondary on {target} failed: {e}"
                    ));
                    let line = format!(
                        "ftvmm: vm {name}: starting secondary on {target} failed: {e}; retrying in {delay} ms"
                    );
                    println!("{line}");
                    events::record(EventKind::Respawn, Some(&name), None, &line);
                }
            }
        }
    }

    /// One join to `target` in generation `g`.
    fn attempt(&self, target: &str, g: u64) -> Result<JoinReport, String> {
        let ch = self.connect(target, g)?;
        let (handle, vm, target_s) = (
            Arc::clone(&self.handle),
            self.vm.name.clone(),
            target.to_string(),
        );
        let said = std::sync::atomic::AtomicU64::new(0);
        let progress: JoinProgress = Arc::new(move |pct: u64| {
            handle.set_protection(&format!("starting secondary on {target_s} ({pct}%)"));
            // One console line per quarter crossed.
            if pct / 25 > said.swap(pct / 25, Ordering::SeqCst) {
                println!("ftvmm: vm {vm}: starting secondary on {target_s} ({pct}%)");
            }
        });
        self.join.join(ch, target, g, progress)
    }

    /// Connects to `target`'s listener for this VM and proposes the join.
    fn connect(&self, target: &str, g: u64) -> Result<Channel, String> {
        let host = self
            .rc
            .config
            .hosts
            .iter()
            .find(|h| h.name == target)
            .ok_or_else(|| format!("no host {target} in the config"))?;
        let key: [u8; 32] = hex::decode(&host.public_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| format!("bad public key of {target}"))?;
        let ip: std::net::IpAddr = host
            .ft
            .addr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("bad ft.addr of {target}"))?;
        let addr = SocketAddr::new(ip, channel_port(self.index));
        let mut ch = channel::connect(addr, &self.spec.identity, &key, target, CONNECT_TIMEOUT)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let mut hello = self.spec.hello.clone();
        hello.generation = g;
        hello.start_exit = JOIN_BY_TRANSFER;
        hello.primary_host = self.rc.host_name.clone();
        ch.set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|e| format!("channel: {e}"))?;
        ch.send(&Message::Hello(hello))
            .map_err(|e| format!("hello: {e}"))?;
        ch.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("channel: {e}"))?;
        match ch.recv().map_err(|e| format!("no hello reply: {e}"))? {
            Message::HelloReply { accepted: true, .. } => Ok(ch),
            Message::HelloReply { reason, .. } => Err(format!("refused: {reason}")),
            other => Err(format!("expected a hello reply, got {other:?}")),
        }
    }
}

/// The reason part of an unprotected choice line.
fn reason_of(c: &placement::Choice) -> String {
    let line = c.line();
    match line.split_once("UNPROTECTED: ") {
        Some((_, r)) => r.to_string(),
        None => line,
    }
}

/// Every host as heartbeat (behind `heartbeat`) and fencing see it now:
/// alive (heartbeat; this host is alive), leased (fencing's lease view),
/// VM network cut (heartbeat's VM-network view, judged as a paired
/// Secondary's would be: `secondary_vmnet::judge` says `Cut`; this host
/// itself never, as nothing here could serve instead). Free memory is not
/// reported by any daemon yet: unknown.
pub fn host_facts(heartbeat: &Path, fencing: &Path, here: &str) -> Vec<HostFacts> {
    let peers = match ctl::query(heartbeat, &Request::Peers) {
        Ok(Response::Peers { peers }) => peers,
        _ => Vec::new(),
    };
    let vmnet = vm_network(heartbeat);
    let cut = |name: &str| {
        name != here
            && matches!(
                secondary_vmnet::judge(vmnet.as_ref().map_err(|e| e.as_str()), here, name),
                secondary_vmnet::SecondaryVmNet::Cut { .. }
            )
    };
    let leases = crate::lockstep::fence::leases(fencing).unwrap_or_default();
    let mut names: Vec<String> = peers.iter().map(|p| p.host.clone()).collect();
    names.extend(leases.iter().map(|l| l.host.clone()));
    names.push(here.to_string());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| HostFacts {
            alive: name == here || peers.iter().any(|p| p.host == name && p.alive),
            lease_valid: leases.iter().any(|l| l.host == name && l.live),
            vm_network_cut: cut(&name),
            free_memory_mib: None,
            name,
        })
        .collect()
}

fn seed(host: &str, vm: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{host}/{vm}").as_bytes());
    u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}
