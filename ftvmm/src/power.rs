//! A VM's power changed live: what ftvmm does when heartbeat says this host
//! persisted a newer signed config (`ctl::Request::ConfigApplied`, sent by
//! its status service after `ftctl apply` or a catch-up, and again every
//! catch-up round).
//!
//! Rules:
//! - Configs are taken in generation order: one older than the newest taken
//!   is ignored; the same one again re-checks (a power-off that could not be
//!   fenced is retried then).
//! - The booted config stays what the VMs run and pair under; only each
//!   VM's `power`, its allowed hosts (`lockstep::live_affinity`, planned
//!   after the power steps, for the VMs they leave on) and the newest
//!   generation are taken (`config_schema::changes::LIVE`).
//! - Power off (`on` → `off`, or `off` while a member still runs here): the
//!   VM's power is set first, so nothing on this host starts it again; a
//!   member that acts as Primary or races ([`MemberHere::Acting`]) is
//!   stopped only after [`fence_power_off`] won the VM's next generation
//!   under the new config; a passive one (Secondary following, standby) is
//!   stopped at once. Stopping holds every output and stops the vCPU
//!   (`member::Event::Stop`): nothing further is released. Status then
//!   says `powered off (config)`, `by config generation N`.
//! - Power on (`off` → `on`): the member starts as at boot
//!   ([`Daemon::start_as_at_boot`]).
//! - Adding a VM: a VM of the power list this host does not run is taken
//!   from the config `ConfigApplied` carries into the config the daemon
//!   runs (`config_schema::live_add`: its slot, disk region and image; the
//!   other VMs keep their booted definitions), as `off`; the power list
//!   then powers it on like any other VM. The fencing client sends its slot
//!   with every `Acquire` and `Highest`, and this host's fencing agent,
//!   booted without the VM, learns it there. A VM the running config
//!   cannot take (its region overlaps one in use here, its slot is another
//!   running VM's) is said once per config generation and waits for the
//!   host's next boot. Why two VM lists side by side are safe:
//!   docs/design.md §15.
//!
//! # Why no Secondary goes live when its VM is powered off
//!
//! Every host gets the same config, but not at the same moment: the asked
//! host persists first and passes it on in parallel; a host that was down or
//! slow takes it at a later catch-up round (up to 30 s). Going live always
//! needs a won generation on shared storage (Disk Paxos), so the argument
//! is about who can win which generation:
//!
//! 1. *The Primary's host takes the config first.* It wins `g + 1` (the
//!    power-off generation) before it stops its Primary in `g`. Its
//!    Secondary, seeing the channel end, either reads the Primary's `End`
//!    and halts, or races for `g + 1` — which is already decided for the
//!    Primary's host: it loses and halts (`member.rs`: lost → halt; a lost
//!    race is final for a member). What its host's member loop does next
//!    (wait as a standby, or power the VM on alone when the hosts before it
//!    are down) is a start, which case 4 refuses.
//! 2. *The Secondary's host takes it first.* It stops its Secondary, which
//!    races for nothing (`Event::Stop` halts before any decision; a
//!    decision that arrives later finds the member halted). The Primary
//!    loses its Secondary and runs alone in `g + 1` until its own host
//!    takes the config and case 1 applies: the VM stays on a little longer,
//!    never on two hosts.
//! 3. *A race already ran* (a real failure at the same time): the
//!    Secondary won `g + 1` and is live. The power-off finds `g + 1` taken
//!    and wins `g + 2`; the live copy's fencing agent sees a later
//!    generation and deposes it. Output of `g + 1` stops at the deposition
//!    watch's bound, as for any deposed Primary.
//! 4. *A host that has not taken the config* may later try to start the
//!    VM (a standby's power-on alone, a restarted ftvmm): the power-off
//!    generation was recorded under the newer config, and no host starts a
//!    VM decided under a newer config than its own (`start.rs`,
//!    `OlderConfig`).
//! 5. *Storage does not answer* the power-off's fence: the Primary is not
//!    stopped (stopping it would let its Secondary race, and that host's
//!    storage may well answer). The VM keeps running here, status says
//!    `power_off_pending` with the reason, and the next `ConfigApplied` of
//!    the same generation (the next catch-up round) tries again: hold, not
//!    go-live.
//!
//! Assumed: fencing decides each (VM, generation) once (fencing's
//! simulation); a lost or superseded race halts a member for good
//! (`member.rs`); every host runs ftvmm with this module (a host with an
//! older ftvmm ignores `ConfigApplied`, so the VM stays on there until its
//! next boot, and case 4 guards it).

use std::sync::Arc;
use std::time::Duration;

use config_schema::ctl::VmPower;
use config_schema::{ClusterConfig, Power};

use crate::daemon::Daemon;
use crate::lockstep::live_affinity;
use crate::lockstep::start::{fence_power_off, PowerOffError};
use crate::manager::MemberHere;

/// How often a power-off's fence asks storage before it gives up until the
/// next `ConfigApplied` (the member keeps running meanwhile).
pub const FENCE_ATTEMPTS: u32 = 10;
/// Pause between two fence attempts while storage does not answer.
pub const FENCE_RETRY: Duration = Duration::from_millis(500);

/// One `ConfigApplied`: config generation, every VM's power, the config
/// (for the VMs it adds).
pub type Applied = (u64, Vec<VmPower>, Option<Box<ClusterConfig>>);

/// Where `ConfigApplied` is queued for the power worker.
pub type Queue = std::sync::mpsc::Sender<Applied>;

/// One step of a live power change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop this host's member of `vm`; `fence`: win the VM's next
    /// generation first (the member acts or races).
    Off { vm: String, fence: bool },
    /// Start this host's member of `vm` as at boot.
    On { vm: String },
}

/// The steps for a config's power list (pure): `power_now` is each VM's
/// power as this host last took it (`None`: a VM this host does not run: an
/// added one the running config could not take waits for a reboot),
/// `member` how this host runs it.
pub fn plan(
    vms: &[VmPower],
    power_now: impl Fn(&str) -> Option<Power>,
    member: impl Fn(&str) -> MemberHere,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for v in vms {
        let Some(now) = power_now(&v.vm) else {
            continue;
        };
        let here = member(&v.vm);
        match (now, v.power) {
            (_, Power::Off) if now == Power::On || here != MemberHere::None => {
                steps.push(Step::Off {
                    vm: v.vm.clone(),
                    fence: here == MemberHere::Acting,
                })
            }
            (Power::Off, Power::On) => steps.push(Step::On { vm: v.vm.clone() }),
            _ => {}
        }
    }
    steps
}

/// Takes config `generation`'s power list (module rules); returns the
/// console lines it printed, in order.
pub fn apply(daemon: &Daemon, generation: u64, vms: &[VmPower]) -> Vec<String> {
    apply_config(daemon, generation, vms, None)
}

/// [`apply`], with the config itself: a VM it adds is taken into the
/// running config first (off), so that its power list starts it as at
/// boot (module rules, "Adding a VM").
pub fn apply_config(
    daemon: &Daemon,
    generation: u64,
    vms: &[VmPower],
    config: Option<&ClusterConfig>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        lines.push(line);
    };
    let (steps, moves, fencing) = {
        let mut m = daemon.manager();
        if generation < m.applied_generation() {
            say(format!(
                "ftvmm: config generation {generation} ignored: generation {} was taken already",
                m.applied_generation()
            ));
            return lines;
        }
        let first = generation > m.applied_generation();
        m.set_applied_generation(generation);
        let newer = config.filter(|c| c.cluster.generation == generation);
        for (v, newer) in vms.iter().filter_map(|v| Some((v, newer?))) {
            if m.power(&v.vm).is_ok() {
                continue;
            }
            match daemon.add_vm(&mut m, newer, &v.vm, generation) {
                Ok(()) => say(format!(
                    "ftvmm: vm {}: added by config generation {generation} (fencing slot {}, \
                     disk region {})",
                    v.vm,
                    m.config().slot_of(&v.vm).expect("just added"),
                    (m.config().vms.iter().find(|x| x.name == v.vm))
                        .map_or("?", |x| x.disk_region.as_str())
                )),
                Err(why) if first => say(format!(
                    "ftvmm: vm {}: added by config generation {generation} but not taken live: \
                     {why}; it runs here after this host's next boot",
                    v.vm
                )),
                Err(_) => {}
            }
        }
        let steps = plan(vms, |n| m.power(n).ok(), |n| m.member_here(n));
        // Affinity is taken with the power list, under the manager's lock
        // (nothing starts or ends a member meanwhile); its steps come after
        // the power steps, for the VMs no power step touches.
        let running = daemon.running_config();
        let affinity = daemon.affinity();
        let moved = affinity.adopt(&running.config, generation, vms);
        let powered = |vm: &str| {
            steps.iter().any(|s| match s {
                Step::Off { vm: v, .. } | Step::On { vm: v } => v == vm,
            })
        };
        let untouched: Vec<VmPower> = vms.iter().filter(|v| !powered(&v.vm)).cloned().collect();
        let moves = live_affinity::plan(
            &running.host_name,
            &untouched,
            &moved,
            |n| affinity.allowed(&running.config, n),
            |n| m.member_here(n),
        );
        for s in &steps {
            let (vm, power) = match s {
                Step::Off { vm, .. } => (vm, Power::Off),
                Step::On { vm } => (vm, Power::On),
            };
            // Set before anything stops or starts: nothing here starts a
            // powered-off VM again meanwhile.
            m.set_power(vm, power, generation)
                .expect("planned VMs exist");
        }
        (steps, moves, m.fencing_socket().to_path_buf())
    };
    for s in steps {
        match s {
            Step::Off { vm, fence } => {
                if fence {
                    match fence_power_off(&fencing, &vm, generation, FENCE_ATTEMPTS, FENCE_RETRY) {
                        Ok(g) => say(format!(
                            "ftvmm: vm {vm}: power off (config generation {generation}): won \
                             generation {g} on shared storage for nobody; stopping here"
                        )),
                        Err(e) => {
                            say(not_fenced(&vm, generation, &e));
                            daemon.manager().set_power_pending(&vm, Some(e.to_string()));
                            continue;
                        }
                    }
                }
                let mut m = daemon.manager();
                match m.stop(&vm) {
                    Ok(()) | Err(crate::manager::ManagerError::NotRunning(_)) => {}
                    Err(e) => say(format!("ftvmm: vm {vm}: stop failed: {e}")),
                }
                m.set_power_pending(&vm, None);
                say(format!(
                    "ftvmm: vm {vm}: powered off by config generation {generation}"
                ));
            }
            Step::On { vm } => {
                say(format!(
                    "ftvmm: vm {vm}: powered on by config generation {generation}"
                ));
                match daemon.placement_of(&vm) {
                    Some(p) => daemon.start_as_at_boot(&vm, &p),
                    None => say(format!("ftvmm: vm {vm}: not in this host's config")),
                }
            }
        }
    }
    let running = daemon.running_config();
    let here = &running.host_name;
    for s in moves {
        match s {
            live_affinity::Step::Leave { vm, allowed } => {
                let mut m = daemon.manager();
                // Planned passive; a Secondary whose Primary died since may
                // race now, or be live: not stopped unfenced (its keeper
                // moves it once it is a paired Primary; the next catch-up
                // round plans again).
                if m.member_here(&vm) != MemberHere::Passive {
                    say(format!(
                        "ftvmm: vm {vm}: config generation {generation} allows it on {} only; \
                         its member on {here} acts now and is not stopped",
                        allowed.join(", ")
                    ));
                    continue;
                }
                say(format!(
                    "ftvmm: vm {vm}: config generation {generation} allows it on {} only: \
                     stopping its member on {here}",
                    allowed.join(", ")
                ));
                match m.stop(&vm) {
                    Ok(()) | Err(crate::manager::ManagerError::NotRunning(_)) => {}
                    Err(e) => say(format!("ftvmm: vm {vm}: stop failed: {e}")),
                }
            }
            live_affinity::Step::MoveOff { vm, allowed } => say(format!(
                "ftvmm: vm {vm}: config generation {generation} allows it on {} only: the \
                 primary on {here} hands it over once its secondary runs on one of them in \
                 lockstep",
                allowed.join(", ")
            )),
            live_affinity::Step::Join { vm } => {
                say(format!(
                    "ftvmm: vm {vm}: config generation {generation} allows it on {here}: \
                     standby here for a new secondary"
                ));
                if let Err(e) = daemon.manager().start_standby(&vm) {
                    say(format!("ftvmm: vm {vm}: cannot start: {e}"));
                }
            }
        }
    }
    lines
}

/// The line for a power-off that was not fenced (the VM keeps running).
fn not_fenced(vm: &str, generation: u64, e: &PowerOffError) -> String {
    match e {
        PowerOffError::NewerConfig { .. } => {
            format!("ftvmm: vm {vm}: power off of config generation {generation} not done: {e}")
        }
        _ => format!(
            "ftvmm: vm {vm}: power off of config generation {generation} NOT done yet: {e}; the \
             VM keeps running here (stopping it unfenced could let its secondary go live); \
             tried again at the next catch-up round"
        ),
    }
}

/// Starts the worker that takes `ConfigApplied` in arrival order (the
/// control request only queues it: a fence may take seconds).
pub fn start_worker(daemon: &Arc<Daemon>) {
    let (tx, rx) = std::sync::mpsc::channel::<Applied>();
    let d = Arc::clone(daemon);
    let spawned = std::thread::Builder::new()
        .name("power".into())
        .spawn(move || {
            for (generation, vms, config) in rx {
                apply_config(&d, generation, &vms, config.as_deref());
            }
        });
    match spawned {
        Ok(_) => daemon.set_power_queue(tx),
        Err(e) => println!("ftvmm: cannot start the power worker ({e}); live power changes are taken on the request's thread"),
    }
}

#[cfg(test)]
#[path = "power_tests.rs"]
mod tests;
