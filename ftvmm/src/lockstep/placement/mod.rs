//! Which half of a pair this host runs for a config VM, and running it.
//!
//! Placement at power-on (anti-affinity): among the hosts the VM's affinity
//! allows, in the config's `hosts` order, the first is the Primary and the
//! next one the Secondary — never the same host. A VM that allows only one
//! host runs unprotected (config validation already warns about it).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_schema::runtime::RuntimeConfig;
use config_schema::validate::allowed_hosts;

use super::channel::{Hello, Identity};
use super::grant::HostGrant;
use super::link::OnTraffic;
use super::pair::{
    listen, primary_handshake, run_alone, run_primary, run_secondary, secondary_handshake, Allowed,
    PairReport,
};
use super::respawn::keeper::{Keeper, LockstepJoin};
use super::respawn::{target, JOIN_BY_TRANSFER};
use super::spec::{channel_port, image_sha256, PairError, PairHandle, PairSpec};
use super::start::{
    check_join_offer, check_offered_generation, win_start_generation, StartCtx, StartError,
};
use crate::live::ConsoleSink;
use crate::runner::{RunError, VmSpec};
use crate::vm::{Progress, VmHandle};

pub mod choose;
pub mod wait;

pub use choose::{
    choose_secondary, power_on, Alone, Choice, HostFacts, PowerOn, Reason, MEMORY_OVERHEAD_MIB,
};
use wait::WaitEnd;

/// This host's part in a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Run it as Primary, paired with the Secondary on `secondary`.
    Primary { secondary: String },
    /// Run it as Secondary of the Primary on `primary`.
    Secondary { primary: String },
    /// Only this host is allowed: run it alone, unprotected.
    Unprotected,
    /// Allowed here, run elsewhere: wait for its Primary to bring this host
    /// in as a new Secondary by live transfer (respawn), or for a power-on
    /// pair from the owner of a newer generation (the VM ran nowhere).
    Standby,
    /// Not this host's business.
    None,
}

/// The pair of a config VM: (Primary host, Secondary host if any).
pub fn pair_hosts(config: &config_schema::ClusterConfig, vm: &config_schema::Vm) -> Vec<String> {
    let allowed = allowed_hosts(config, vm);
    config
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .filter(|h| allowed.contains(&h.as_str()))
        .take(2)
        .collect()
}

/// This host's role for `vm`.
pub fn role(rc: &RuntimeConfig, vm: &config_schema::Vm) -> Role {
    let hosts = pair_hosts(&rc.config, vm);
    let here = &rc.host_name;
    match hosts.as_slice() {
        [p] if p == here => Role::Unprotected,
        [p, s] if p == here => Role::Primary {
            secondary: s.clone(),
        },
        [p, s] if s == here => Role::Secondary { primary: p.clone() },
        _ if allowed_hosts(&rc.config, vm).contains(&here.as_str()) => Role::Standby,
        _ => Role::None,
    }
}

pub(crate) fn key(hex_str: &str) -> Option<[u8; 32]> {
    hex::decode(hex_str).ok()?.try_into().ok()
}

pub(crate) fn ft_ip(rc: &RuntimeConfig, host: &str) -> Option<IpAddr> {
    let h = rc.config.hosts.iter().find(|h| h.name == host)?;
    h.ft.addr.split('/').next()?.parse().ok()
}

/// Everything both sides agree on for `vm`, and this host's identity and
/// output grant. The generation is set when it is won (or offered).
/// `config`: the config the pair's `Hello` names — the booted one, or for a
/// VM added live the one that added it (`VmManager::pair_identity`).
pub fn pair_spec(
    rc: &RuntimeConfig,
    vm: &config_schema::Vm,
    config: config_schema::config_id::ConfigId,
    spec: VmSpec,
    grant: Arc<HostGrant>,
    live_timing: Arc<crate::lockstep::live_timing::LiveTiming>,
) -> Result<PairSpec, PairError> {
    let primary = pair_hosts(&rc.config, vm)
        .into_iter()
        .next()
        .ok_or_else(|| PairError::Protocol(format!("vm {} allows no host", vm.name)))?;
    let private_key = key(&rc.host_private_key)
        .ok_or_else(|| PairError::Protocol("host private key is not 32 bytes of hex".into()))?;
    Ok(PairSpec {
        hello: Hello {
            vm: vm.name.clone(),
            // Won before the VM starts (start.rs); go-live moves it.
            generation: 0,
            config_generation: config.generation,
            config_digest: config.digest,
            image_sha256: image_sha256(&spec.kernel)?,
            mem_mib: spec.mem_mib,
            start_exit: 0,
            primary_host: primary,
            replication: super::channel::PairMode::Lockstep,
            platform: Box::new(
                crate::platform::Platform::for_host(&spec.cpu)
                    .map_err(|e| RunError::Vm(e.into()))?,
            ),
        },
        vm: spec,
        identity: Identity { private_key },
        lag_limit: Duration::from_millis(rc.config.timing.lag_limit_ms),
        host: rc.host_name.clone(),
        peer: String::new(),
        failure_timeout: Duration::from_millis(rc.config.timing.failure_timeout_ms),
        live_timing,
        // The daemon's manager puts its members' one in (`Members::affinity`).
        live_affinity: Arc::default(),
        heartbeat_socket: config_schema::ctl::HEARTBEAT_SOCKET.into(),
        fencing_socket: config_schema::ctl::FENCING_SOCKET.into(),
        grant,
        applied_config_generation: rc.config.cluster.generation,
    })
}

/// Reports logging-channel traffic from the peer to the heartbeat daemon as a
/// sign of life, at most every 100 ms, from a thread of its own (the link
/// threads only set a flag: a slow heartbeat socket must never delay acks).
/// Failures are ignored: heartbeats are the other path.
pub fn heartbeat_notifier(_rc: &RuntimeConfig, role: &Role) -> OnTraffic {
    let peer = match role {
        Role::Primary { secondary } => secondary.clone(),
        Role::Secondary { primary } => primary.clone(),
        _ => return Arc::new(|| {}),
    };
    let seen = Arc::new(AtomicBool::new(false));
    let flag = Arc::downgrade(&seen);
    let spawned = std::thread::Builder::new()
        .name("peer-alive".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            // Ends when the link (the only owner of the flag) is gone.
            let Some(f) = flag.upgrade() else { return };
            if f.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = config_schema::ctl::query(
                    std::path::Path::new(config_schema::ctl::HEARTBEAT_SOCKET),
                    &config_schema::ctl::Request::PeerAlive { host: peer.clone() },
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the peer-alive reporter: {e}");
    }
    Arc::new(move || seen.store(true, std::sync::atomic::Ordering::SeqCst))
}

/// Wins the generation to start `vm` in (docs/design.md §1), publishing it
/// through the handle while it is acquired.
pub(crate) fn win_generation(
    spec: &PairSpec,
    handle: &PairHandle,
    stop: &AtomicBool,
) -> Result<u64, PairError> {
    let acquiring = |g: u64| handle.running.store(g, Ordering::SeqCst);
    let ctx = StartCtx {
        vm: &spec.hello.vm,
        host: &spec.host,
        config_generation: spec.applied_config_generation,
        fencing: &spec.fencing_socket,
        cancel: stop,
        acquiring: &acquiring,
        publish_settle: super::start::PUBLISH_SETTLE,
    };
    win_start_generation(&ctx).map_err(|e| {
        handle.running.store(0, Ordering::SeqCst);
        match e {
            StartError::RunningElsewhere { owner, .. } => PairError::RunningElsewhere { owner },
            e => PairError::NotStarting(e.to_string()),
        }
    })
}

/// Runs this host's part of `vm` to its end (blocking): win the generation
/// (a Primary, or a VM alone) or check the offered one (a Secondary), the
/// handshake, then the run.
#[allow(clippy::too_many_arguments)]
pub fn run_member(
    rc: &RuntimeConfig,
    vm: &config_schema::Vm,
    role: &Role,
    spec: PairSpec,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    stop: &Arc<AtomicBool>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    // The VM's fencing slot: its channel port (`channel_port`).
    let index = (rc.config.slot_of(&vm.name)).expect("vm is from this config") as usize;
    let mut spec = spec;
    // The Primary a power-on pair comes from (both sides' Hellos name it),
    // by the rule in force for this run: after a live affinity change it
    // may no longer be the booted rule's (`live_affinity`).
    if let Some(p) = pair_hosts(&rc.config, vm).first() {
        spec.hello.primary_host = p.clone();
    }
    match role {
        Role::Primary { secondary } => {
            let peer = rc
                .config
                .hosts
                .iter()
                .find(|h| &h.name == secondary)
                .ok_or_else(|| PairError::Protocol(format!("no host {secondary}")))?;
            let peer_key = key(&peer.public_key)
                .ok_or_else(|| PairError::Protocol(format!("bad public key of {secondary}")))?;
            let ip = ft_ip(rc, secondary)
                .ok_or_else(|| PairError::Protocol(format!("bad ft.addr of {secondary}")))?;
            handle.set_role("primary (winning its generation)");
            spec.hello.generation = win_generation(&spec, handle, stop)?;
            handle.set_role("primary (pairing)");
            let addr = SocketAddr::new(ip, channel_port(index));
            spec.peer = secondary.clone();
            let watch =
                wait::Watch::primary(rc, &vm.name, secondary, spec.fencing_socket.clone(), stop);
            let paired = primary_handshake(&spec, addr, &peer_key, secondary, &watch.flag);
            let end = watch.end();
            drop(watch);
            let ch = match (paired, end) {
                (Ok(ch), _) => ch,
                (Err(PairError::Stopped), Some(WaitEnd::PartnerDown)) => {
                    println!(
                        "ftvmm: vm {}: secondary {secondary} is down {} s after power-on; running alone in generation {} until a secondary can be placed",
                        vm.name,
                        wait::POWER_ON_GRACE.as_secs(),
                        spec.hello.generation
                    );
                    spec.peer = String::new();
                    return run_lone(rc, vm, index, &spec, console, handle, on_start);
                }
                (Err(e), _) => return Err(e),
            };
            let _keeper = start_keeper(rc, vm, index, &spec, handle);
            println!(
                "ftvmm: vm {}: paired with secondary {secondary}; generation {}",
                vm.name, spec.hello.generation
            );
            run_primary(&spec, ch, console, handle, on_start, on_traffic)
        }
        Role::Secondary { .. } | Role::Standby => {
            let standby = *role == Role::Standby;
            let ip = ft_ip(rc, &rc.host_name)
                .ok_or_else(|| PairError::Protocol("bad ft.addr of this host".into()))?;
            let listener = listen(ip, index)?;
            let at = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match role {
                Role::Secondary { primary } => {
                    handle.set_role("secondary (pairing)");
                    println!(
                        "ftvmm: vm {}: secondary waiting for primary {primary} on {at}",
                        vm.name
                    );
                }
                _ => {
                    handle.set_role("standby");
                    handle.set_protection("");
                    println!(
                        "ftvmm: vm {}: standby on {at}: a new secondary here when its primary asks",
                        vm.name
                    );
                }
            }
            let hosts: Vec<(String, [u8; 32])> = rc
                .config
                .hosts
                .iter()
                .filter_map(|h| Some((h.name.clone(), key(&h.public_key)?)))
                .collect();
            let allowed: Allowed = Arc::new(move |k: &[u8; 32]| {
                hosts.iter().find(|(_, pk)| pk == k).map(|(n, _)| n.clone())
            });
            let fencing = spec.fencing_socket.clone();
            // A standby takes a power-on pair too, from the owner of the
            // highest generation: chaos seed 112 — host-b, a standby after
            // its member halted, refused the configured Primary's power-on
            // pair ("joins only by live transfer"); the Primary's start
            // failed, it found the VM running nowhere, won the next
            // generation and asked again: 104 generations in 90 s and the
            // VM never ran. A power-on pair boots both members from the
            // start; it needs no state this host lacks.
            let live = Arc::clone(&spec.live_affinity);
            let verify = |h: &Hello| {
                // A Primary that has not taken the newest config may ask a
                // host it excludes (`live_affinity`).
                live.check(&rc.config, &h.vm, &rc.host_name)?;
                if h.start_exit == JOIN_BY_TRANSFER {
                    check_join_offer(&fencing, &h.vm, h.generation, &h.primary_host)
                } else {
                    check_offered_generation(&fencing, &h.vm, h.generation, &h.primary_host)
                }
            };
            let watch = wait::Watch::listener(rc, vm, spec.fencing_socket.clone(), stop, standby);
            let accepted = secondary_handshake(
                &listener,
                &spec.identity,
                allowed,
                &spec.hello,
                &verify,
                &watch.flag,
            );
            let end = watch.end();
            drop(watch);
            let (ch, hello) = match (accepted, end) {
                (Ok(got), _) => got,
                (Err(PairError::Stopped), Some(WaitEnd::PowerOnHere)) => {
                    drop(listener);
                    handle.set_role("primary alone (winning its generation)");
                    spec.hello.generation = win_generation(&spec, handle, stop)?;
                    println!(
                        "ftvmm: vm {}: the hosts before {} are down; powered on here alone in generation {} until a secondary can be placed",
                        vm.name, spec.host, spec.hello.generation
                    );
                    return run_lone(rc, vm, index, &spec, console, handle, on_start);
                }
                (Err(e), _) => return Err(e),
            };
            drop(listener);
            spec.hello.generation = hello.generation;
            spec.peer = hello.primary_host.clone();
            let sectors = spec
                .vm
                .disk
                .as_ref()
                .and_then(|d| d.region)
                .map(|(_, len)| len / crate::live::disk::SECTOR);
            let _keeper = start_keeper(rc, vm, index, &spec, handle);
            if hello.start_exit == JOIN_BY_TRANSFER {
                let peer_role = Role::Secondary {
                    primary: spec.peer.clone(),
                };
                let traffic = heartbeat_notifier(rc, &peer_role);
                return target::join_as_secondary(
                    &spec, ch, sectors, console, handle, on_start, traffic,
                );
            }
            println!(
                "ftvmm: vm {}: paired with primary {}; generation {}",
                vm.name,
                ch.peer(),
                hello.generation
            );
            run_secondary(&spec, ch, sectors, console, handle, on_start, on_traffic)
        }
        Role::Unprotected => {
            handle.set_role("primary alone (winning its generation)");
            spec.hello.generation = win_generation(&spec, handle, stop)?;
            println!(
                "ftvmm: vm {}: runs unprotected on {} in generation {} (its affinity allows no other host)",
                vm.name, spec.host, spec.hello.generation
            );
            run_lone(rc, vm, index, &spec, console, handle, on_start)
        }
        Role::None => Err(PairError::Protocol(format!(
            "vm {} has no role on this host",
            vm.name
        ))),
    }
}

/// Runs the VM alone in the generation won (`spec.hello.generation`), its
/// keeper bringing a Secondary in whenever a host is eligible.
fn run_lone(
    rc: &RuntimeConfig,
    vm: &config_schema::Vm,
    index: usize,
    spec: &PairSpec,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
) -> Result<PairReport, PairError> {
    let _keeper = start_keeper(rc, vm, index, spec, handle);
    let (report, member) = run_alone(spec, console, handle, on_start)?;
    Ok(PairReport {
        outcome: report.outcome,
        exit_index: report.exit_index,
        replay_end: None,
        member,
    })
}

/// A helper thread that runs until its owner drops this: the drop raises
/// `stop` and joins the thread (the keeper beside a member, a wait's watch).
pub(crate) struct StopOnDrop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StopOnDrop {
    pub(crate) fn new(stop: Arc<AtomicBool>, thread: Option<std::thread::JoinHandle<()>>) -> Self {
        StopOnDrop { stop, thread }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the respawn keeper of a member; it stops when the member's run
/// ends (the returned guard is dropped).
fn start_keeper(
    rc: &RuntimeConfig,
    vm: &config_schema::Vm,
    index: usize,
    spec: &PairSpec,
    handle: &Arc<PairHandle>,
) -> StopOnDrop {
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = Keeper {
        rc: rc.clone(),
        vm: vm.clone(),
        index,
        spec: spec.clone(),
        handle: Arc::clone(handle),
        stop: Arc::clone(&stop),
        join: Arc::new(LockstepJoin {
            rc: rc.clone(),
            spec: spec.clone(),
            handle: Arc::clone(handle),
        }),
    };
    let thread = keeper
        .spawn()
        .map_err(|e| tracing::error!("cannot start the respawn keeper: {e}"))
        .ok();
    StopOnDrop::new(stop, thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(host: &str) -> RuntimeConfig {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/cluster.toml"
        ))
        .unwrap();
        let config = config_schema::validate::parse(&text).unwrap().config;
        RuntimeConfig {
            config,
            host_name: host.into(),
            host_private_key: "00".repeat(32),
        }
    }

    #[test]
    fn primary_and_secondary_are_the_first_two_allowed_hosts_never_the_same() {
        let a = rc("host-a");
        let vm = a.config.vms[0].clone();
        assert_eq!(pair_hosts(&a.config, &vm), vec!["host-a", "host-b"]);
        assert_eq!(
            role(&a, &vm),
            Role::Primary {
                secondary: "host-b".into()
            }
        );
        assert_eq!(
            role(&rc("host-b"), &vm),
            Role::Secondary {
                primary: "host-a".into()
            }
        );
        assert_eq!(
            role(&rc("host-c"), &vm),
            Role::Standby,
            "allowed, not paired"
        );
        let mut c = rc("host-c");
        c.config.vms[0].affinity = config_schema::Affinity {
            hosts: vec!["host-a".into(), "host-b".into()],
            groups: Vec::new(),
        };
        assert_eq!(role(&c, &c.config.vms[0].clone()), Role::None);
    }
}
