//! The chaos run's plan: the generator's parameters for this runner, and
//! which generated faults a run applies ([`restrict`]).
//!
//! A run has at most one *pair failure* (a fault that can cost the pair a
//! member: kill or freeze of host-a or host-b, an FT partition between them,
//! any storage fault of either, even a delay, since a Primary whose lease
//! renewals land late hands over, see storage_failover), or with
//! `FT_CHAOS_SEQUENTIAL=1` two, the second gated until the respawn protects
//! the pair again (`chaos/nemesis.rs` plays the gate). The generator draws
//! no more (`chaos::roles`); [`restrict`] drops any beyond as a safeguard.
//! After the first pair failure every host counts as a member: respawn may
//! have placed the new Secondary on host-c, or on a rebooted host, so an
//! ungated fault there would be a second pair failure.
//!
//! Reboots are applied (`chaos/fleet.rs`): a killed host boots again into
//! the running cluster, and may become the new Secondary. A reboot costs no
//! member; a kill of host-c before any pair failure is kept (its reboot
//! brings it back). A slowdown (`Host::throttle`, CPU starvation at most 75
//! ms of every 100 ms here) is no pair failure: a slowed host is late, never
//! silent for a failure timeout.
//!
//! [`restrict`] drops what this runner cannot do: a reboot while the host's
//! storage path is cut or severed (QEMU's NBD client fails its first
//! connect and QEMU exits; a delayed path boots), and then later kills,
//! freezes and slowdowns of that host, which stays down; a reboot whose kill
//! was dropped. Every dropped step is a note in the run's report.

use std::collections::BTreeSet;

use qemu_tests::chaos::{self, Draw, Fault, FaultKind, Params, Schedule};

/// A run's length: faults within it, healed `settle_ms` before its end (a
/// wait at a gate makes it longer).
pub const DURATION_MS: u64 = 60_000;
/// The pair of VM `kv`: host-a Primary, host-b Secondary.
pub const PAIR: [&str; 2] = ["host-a", "host-b"];

/// The generator's parameters: every injection kind, slowdowns by 2 to 4
/// (stopped 50 to 75 of every 100 ms); a second pair failure with
/// `sequential` (`FT_CHAOS_SEQUENTIAL=1`); the weight table of `draw`
/// (`FT_CHAOS_DRAW`).
pub fn params(sequential: bool, draw: Draw) -> Params {
    Params {
        start_ms: 8_000,
        min_gap_ms: 6_000,
        max_gap_ms: 12_000,
        max_concurrent: 2,
        kinds: FaultKind::INJECTIONS.to_vec(),
        combine_percent: 25,
        heal_percent: 35,
        settle_ms: 12_000,
        freeze_ms: (500, 4_000),
        storage_delay_ms: (50, 500),
        slow_factor: (2, 4),
        one_way_percent: 30,
        pair_failures: if sequential { 2 } else { 1 },
        respawn_ms: 15_000,
        draw,
    }
}

/// The schedule of `seed` on `hosts` (host-a, host-b, and host-c if it
/// booted).
pub fn generate(seed: u64, hosts: &[&str], sequential: bool, draw: Draw) -> Schedule {
    Schedule::generate(seed, hosts, DURATION_MS, &params(sequential, draw))
}

/// Whether `fault` can cost the pair host-a/host-b a member (module doc).
pub fn costs_a_member(fault: &Fault) -> bool {
    chaos::costs_a_member(fault, &PAIR)
}

/// The generated schedule cut down to what this runner does (module doc),
/// and a note per dropped step.
pub fn restrict(generated: &Schedule) -> (Schedule, Vec<String>) {
    let cap = generated.params.pair_failures;
    let mut notes = Vec::new();
    let mut steps = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut killed: BTreeSet<String> = BTreeSet::new();
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut no_path: BTreeSet<String> = BTreeSet::new();
    for step in &generated.steps {
        let f = &step.fault;
        let needs_qemu = matches!(
            f,
            Fault::KillHost { .. } | Fault::FreezeHost { .. } | Fault::SlowHost { .. }
        );
        let member = match failures.is_empty() {
            // The power-on pair: the generator's first two hosts (host-a,
            // host-b unless the pair failed over at power-on).
            true => chaos::costs_a_member(f, &generated.hosts[..generated.hosts.len().min(2)]),
            false => chaos::costs_a_member(f, &generated.hosts),
        };
        let drop = match f {
            _ if needs_qemu && f.hosts().iter().any(|h| down.contains(*h)) => {
                Some("the host stays down: its reboot was dropped".to_string())
            }
            Fault::RebootHost { host } if killed.contains(host) && no_path.contains(host) => {
                down.insert(host.clone());
                Some("its storage path is cut or severed: QEMU would not start".into())
            }
            Fault::RebootHost { host } if !killed.contains(host) => {
                Some("its kill was dropped".into())
            }
            _ if member || step.gate.is_some() => {
                if failures.len() >= cap {
                    Some(format!(
                        "at most {cap} pair failure(s) per run, already: {}",
                        failures.join(", ")
                    ))
                } else if !failures.is_empty() && step.gate.is_none() {
                    Some("a later pair failure must wait for the respawn (no gate)".into())
                } else {
                    failures.push(format!("{f} at {} ms", step.at_ms));
                    None
                }
            }
            _ => None,
        };
        match drop {
            Some(why) => notes.push(format!("dropped {f} at {} ms: {why}", step.at_ms)),
            None => {
                match f {
                    Fault::KillHost { host } => {
                        killed.insert(host.clone());
                    }
                    Fault::RebootHost { host } => {
                        killed.remove(host);
                    }
                    Fault::CutStorage { host } | Fault::SeverStorage { host } => {
                        no_path.insert(host.clone());
                    }
                    Fault::Heal => no_path.clear(),
                    _ => {}
                }
                steps.push(step.clone());
            }
        }
    }
    let schedule = Schedule {
        steps,
        ..generated.clone()
    };
    (schedule, notes)
}
