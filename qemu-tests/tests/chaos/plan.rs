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
//!
//! [`restrict`] also drops what this runner cannot do: kills of host-c
//! before any failure (nothing reboots it during the run; a gated kill may
//! aim at a respawned Secondary there), reboots (a killed host stays down,
//! and later kills and freezes of it are dropped too), slowed hosts. Faults
//! on host-c (freeze, storage, FT partitions to it) and VM-network cuts are
//! kept: without respawn they cost the pair nothing. Every dropped step is a
//! note in the run's report.

use std::collections::BTreeSet;

use qemu_tests::chaos::{self, Fault, FaultKind, Params, Schedule};

/// A run's length: faults within it, healed `settle_ms` before its end (a
/// wait at a gate makes it longer).
pub const DURATION_MS: u64 = 60_000;
/// The pair of VM `kv`: host-a Primary, host-b Secondary.
pub const PAIR: [&str; 2] = ["host-a", "host-b"];

/// The generator's parameters: only kinds the harness applies (no slow
/// host); a second pair failure with `sequential` (`FT_CHAOS_SEQUENTIAL=1`).
pub fn params(sequential: bool) -> Params {
    Params {
        start_ms: 8_000,
        min_gap_ms: 6_000,
        max_gap_ms: 12_000,
        max_concurrent: 2,
        kinds: vec![
            FaultKind::KillHost,
            FaultKind::FreezeHost,
            FaultKind::PartitionFt,
            FaultKind::CutStorage,
            FaultKind::SeverStorage,
            FaultKind::DelayStorage,
            FaultKind::CutVmNet,
        ],
        combine_percent: 25,
        heal_percent: 35,
        settle_ms: 12_000,
        freeze_ms: (500, 4_000),
        storage_delay_ms: (50, 500),
        slow_factor: (2, 2),
        one_way_percent: 30,
        pair_failures: if sequential { 2 } else { 1 },
        respawn_ms: 15_000,
    }
}

/// The schedule of `seed` on `hosts` (host-a, host-b, and host-c if it
/// booted).
pub fn generate(seed: u64, hosts: &[&str], sequential: bool) -> Schedule {
    Schedule::generate(seed, hosts, DURATION_MS, &params(sequential))
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
    for step in &generated.steps {
        let f = &step.fault;
        let needs_qemu = matches!(f, Fault::KillHost { .. } | Fault::FreezeHost { .. });
        let drop = match f {
            _ if needs_qemu && f.hosts().iter().any(|h| down.contains(*h)) => {
                Some("the host stays down: its reboot was dropped".to_string())
            }
            Fault::KillHost { host } if !PAIR.contains(&host.as_str()) && step.gate.is_none() => {
                Some(format!("{host} is not rebooted during a run"))
            }
            Fault::RebootHost { host } if killed.contains(host) => {
                down.insert(host.clone());
                Some("this runner reboots no host: a killed host stays down".into())
            }
            Fault::RebootHost { .. } => Some("its kill was dropped".into()),
            Fault::SlowHost { .. } => Some("the harness cannot slow a host".into()),
            _ if costs_a_member(f) || step.gate.is_some() => {
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
                if let Fault::KillHost { host } = f {
                    killed.insert(host.clone());
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
