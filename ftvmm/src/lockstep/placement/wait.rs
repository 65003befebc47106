//! How long a member waits for its partner at power-on, and what ends the
//! wait early. The power-on pair is the first two hosts the VM's rule
//! allows, in config order; when one of them is down at power-on the VM must
//! still start (issue 10: "each configured VM is powered on with its Primary
//! on an allowed host"), and respawn brings a Secondary in afterwards:
//!
//! - The configured Primary, pairing: if its Secondary's host is not alive
//!   in heartbeat once [`POWER_ON_GRACE`] has passed, it stops waiting and
//!   runs the VM alone in the generation it won ([`WaitEnd::PartnerDown`]);
//!   its keeper places a Secondary on any eligible host.
//! - A Secondary or standby, listening: once no live host runs the VM, the
//!   configured Primary goes back to powering it on itself
//!   ([`WaitEnd::RunsNowhere`]); any other host powers it on alone if
//!   [`POWER_ON_GRACE`] has passed and `choose::power_on` over the facts
//!   names it the Primary ([`WaitEnd::PowerOnHere`]) — which it does only
//!   when the hosts before it in config order are down or unleased. Two
//!   hosts deciding so at once both ask fencing for the same next
//!   generation: one wins, the other returns to standby.
//!
//! The grace keeps a slow boot (hosts of one cluster come up seconds apart)
//! from taking the VM away from its configured hosts. It is waived when the
//! VM's owner died in this host's view (`start::owner_died_in_view`: its
//! lease was seen renewing, then expired): the VM ran and is down, and every
//! second of waiting is downtime. Seen in `respawn.rs` under load: a
//! Secondary whose pair had just re-formed lost its Primary during the
//! transfer and waited the full 30 s before powering the VM on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::runtime::RuntimeConfig;

use super::{choose, pair_hosts, StopOnDrop};
use crate::lockstep::respawn::keeper::host_facts;
use crate::lockstep::start::{owner_of, settled, Owner, PUBLISH_SETTLE};

/// How long a power-on waits for a partner that is down before it goes on
/// without it.
pub const POWER_ON_GRACE: Duration = Duration::from_secs(30);
/// How often the watch looks.
const LOOK: Duration = Duration::from_millis(200);

/// Why a wait ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitEnd {
    /// The member is stopped.
    Stopped,
    /// The configured Primary's partner is down: run alone.
    PartnerDown,
    /// No live host runs the VM: the configured Primary powers it on.
    RunsNowhere,
    /// Power it on here, alone (the hosts before this one are down).
    PowerOnHere,
}

/// A thread watching one wait; its flag is the wait's `stop`.
pub struct Watch {
    pub flag: Arc<AtomicBool>,
    end: Arc<Mutex<Option<WaitEnd>>>,
    /// Ends the watching thread when the wait is over.
    _thread: StopOnDrop,
}

/// What a listener's watch decides, each time it looks (pure, for tests).
pub fn listener_decision(
    rc: &RuntimeConfig,
    vm: &config_schema::Vm,
    standby: bool,
    waited: Duration,
    runs_nowhere: bool,
    owner_died: bool,
    facts: &[choose::HostFacts],
) -> Option<WaitEnd> {
    if !runs_nowhere {
        return None;
    }
    let here = &rc.host_name;
    let configured_primary = pair_hosts(&rc.config, vm).first() == Some(here);
    if configured_primary {
        // A standby on the configured Primary powers the VM on as soon as it
        // runs nowhere (it was waiting only because it ran elsewhere).
        return standby.then_some(WaitEnd::RunsNowhere);
    }
    if waited < POWER_ON_GRACE && !owner_died {
        return None;
    }
    let primary = match choose::power_on(&rc.config, &vm.name, facts) {
        choose::PowerOn::Paired { primary, .. } | choose::PowerOn::Unprotected { primary, .. } => {
            primary
        }
        _ => return None,
    };
    (primary == *here).then_some(WaitEnd::PowerOnHere)
}

impl Watch {
    fn spawn(
        name: String,
        stop: &Arc<AtomicBool>,
        mut decide: impl FnMut(Duration) -> Option<WaitEnd> + Send + 'static,
    ) -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let end = Arc::new(Mutex::new(None));
        let (f, d, e, stop) = (
            Arc::clone(&flag),
            Arc::clone(&done),
            Arc::clone(&end),
            Arc::clone(stop),
        );
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let started = Instant::now();
                let mut looks = 0u32;
                while !d.load(Ordering::SeqCst) {
                    let ended = if stop.load(Ordering::SeqCst) {
                        Some(WaitEnd::Stopped)
                    } else if looks % 5 == 4 {
                        // Asking the daemons every second is plenty.
                        decide(started.elapsed())
                    } else {
                        None
                    };
                    if let Some(why) = ended {
                        *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        f.store(true, Ordering::SeqCst);
                        return;
                    }
                    looks += 1;
                    std::thread::sleep(LOOK);
                }
            })
            .ok();
        Watch {
            flag,
            end,
            _thread: StopOnDrop::new(done, thread),
        }
    }

    /// The wait of a Secondary or standby listening for its Primary.
    pub fn listener(
        rc: &RuntimeConfig,
        vm: &config_schema::Vm,
        fencing: PathBuf,
        stop: &Arc<AtomicBool>,
        standby: bool,
    ) -> Self {
        let (rc, vm) = (rc.clone(), vm.clone());
        let mut last_line = String::new();
        let mut unsure_since = None;
        Self::spawn(format!("wait-{}", vm.name), stop, move |waited| {
            let here = rc.host_name.clone();
            // Runs nowhere: no owner, or its lease expired, or it is alive
            // and has not published the VM for PUBLISH_SETTLE; never while
            // this host cannot judge the owner's lease (start.rs, `Owner`).
            let (nowhere, died) = match owner_of(&fencing, &vm.name, &here) {
                Ok((h, owner, died)) => {
                    let line = match &owner {
                        Owner::Claimed(c) => Some(format!(
                            "ftvmm: vm {}: {c} claims generation {} (it publishes the VM); \
                             not powering it on here",
                            vm.name,
                            h.generation + 1
                        )),
                        Owner::Stale { host, .. } if died => Some(format!(
                            "ftvmm: vm {}: {host} may claim generation {} (its lease is not \
                             current); not powering it on here until it renews or expires",
                            vm.name,
                            h.generation + 1
                        )),
                        _ => None,
                    };
                    if let Some(line) = line {
                        if line != last_line {
                            println!("{line}");
                            last_line = line;
                        }
                    }
                    (
                        settled(&owner, h.generation, &mut unsure_since, PUBLISH_SETTLE),
                        died,
                    )
                }
                Err(_) => (false, false),
            };
            let facts = if nowhere && (waited >= POWER_ON_GRACE || died) {
                host_facts(
                    std::path::Path::new(config_schema::ctl::HEARTBEAT_SOCKET),
                    &fencing,
                    &here,
                )
            } else {
                Vec::new()
            };
            // An operator whose VM runs nowhere sees why on every listening
            // host's console: who powers it on, or that no host can
            // (`waiting: no host for the primary (host-a is down, ...)`).
            if !facts.is_empty() {
                let line = choose::power_on(&rc.config, &vm.name, &facts).line();
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
            listener_decision(&rc, &vm, standby, waited, nowhere, died, &facts)
        })
    }

    /// The wait of the configured Primary for its Secondary `secondary`.
    pub fn primary(
        rc: &RuntimeConfig,
        vm: &str,
        secondary: &str,
        fencing: PathBuf,
        stop: &Arc<AtomicBool>,
    ) -> Self {
        let (here, secondary) = (rc.host_name.clone(), secondary.to_string());
        Self::spawn(format!("wait-{vm}"), stop, move |waited| {
            if waited < POWER_ON_GRACE {
                return None;
            }
            let facts = host_facts(
                std::path::Path::new(config_schema::ctl::HEARTBEAT_SOCKET),
                &fencing,
                &here,
            );
            let alive = facts.iter().any(|h| h.name == secondary && h.alive);
            (!alive).then_some(WaitEnd::PartnerDown)
        })
    }

    /// Why the wait ended early, if it did.
    pub fn end(&self) -> Option<WaitEnd> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choose::HostFacts;

    fn rc(host: &str) -> RuntimeConfig {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/cluster.toml"
        ))
        .unwrap();
        RuntimeConfig {
            config: config_schema::validate::parse(&text).unwrap().config,
            host_name: host.into(),
            host_private_key: "00".repeat(32),
        }
    }

    fn facts(up: &[&str]) -> Vec<HostFacts> {
        ["host-a", "host-b", "host-c"]
            .iter()
            .map(|h| HostFacts {
                name: h.to_string(),
                alive: up.contains(h),
                lease_valid: up.contains(h),
                vm_network_cut: false,
                free_memory_mib: None,
            })
            .collect()
    }

    const LATE: Duration = POWER_ON_GRACE;

    #[test]
    fn only_the_first_host_up_in_config_order_powers_on_and_only_after_the_grace() {
        let (a, b, c) = (rc("host-a"), rc("host-b"), rc("host-c"));
        let vm = a.config.vms[0].clone();
        let d = listener_decision;
        // The VM runs somewhere: nobody moves.
        for r in [&a, &b, &c] {
            assert_eq!(
                d(r, &vm, true, LATE, false, false, &facts(&["host-b"])),
                None
            );
        }
        // The configured Primary waiting as a standby powers on at once.
        assert_eq!(
            d(&a, &vm, true, Duration::ZERO, true, false, &[]),
            Some(WaitEnd::RunsNowhere)
        );
        // host-b (configured Secondary): only past the grace, only with host-a down.
        let only_bc = facts(&["host-b", "host-c"]);
        assert_eq!(
            d(&b, &vm, false, LATE / 2, true, false, &only_bc),
            None,
            "grace"
        );
        assert_eq!(
            d(&b, &vm, false, LATE, true, false, &only_bc),
            Some(WaitEnd::PowerOnHere)
        );
        assert_eq!(
            d(
                &b,
                &vm,
                false,
                LATE,
                true,
                false,
                &facts(&["host-a", "host-b"])
            ),
            None
        );
        // host-c: only when host-a and host-b are both down.
        assert_eq!(
            d(&c, &vm, true, LATE, true, false, &only_bc),
            None,
            "host-b goes first"
        );
        assert_eq!(
            d(&c, &vm, true, LATE, true, false, &facts(&["host-c"])),
            Some(WaitEnd::PowerOnHere)
        );
        // No facts (daemons not answering): nobody powers on.
        assert_eq!(d(&c, &vm, true, LATE, true, false, &[]), None);
    }

    #[test]
    fn the_grace_is_waived_when_the_owner_died_in_this_hosts_view() {
        let b = rc("host-b");
        let vm = b.config.vms[0].clone();
        let only_bc = facts(&["host-b", "host-c"]);
        // Cluster power-on: host-a never renewed in host-b's view, so host-b
        // waits the grace for a slow boot.
        assert_eq!(
            listener_decision(&b, &vm, true, Duration::ZERO, true, false, &only_bc),
            None
        );
        // host-a ran the VM and died: host-b powers it on at once.
        assert_eq!(
            listener_decision(&b, &vm, true, Duration::ZERO, true, true, &only_bc),
            Some(WaitEnd::PowerOnHere)
        );
        // The waiver does not skip the rest: the VM must run nowhere, and
        // the hosts before this one must be down.
        assert_eq!(
            listener_decision(&b, &vm, true, Duration::ZERO, false, true, &only_bc),
            None
        );
        let ab = facts(&["host-a", "host-b"]);
        assert_eq!(
            listener_decision(&b, &vm, true, Duration::ZERO, true, true, &ab),
            None
        );
    }
}
