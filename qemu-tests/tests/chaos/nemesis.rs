//! The chaos run's nemesis: which generated faults a run applies, and
//! applying them at their times.
//!
//! Nothing respawns a lost pair member yet (issue 10), so a run may cause at
//! most ONE failover: [`restrict`] keeps the first fault that can cost the
//! pair a member (kill or freeze of host-a or host-b, an FT partition
//! between them, any storage fault of either: even a delay, since a Primary
//! whose lease renewals land late hands over, see storage_failover) and
//! drops the later ones, drops kills of host-c (nothing reboots it during
//! the run) with their reboots, and drops the reboot of a killed pair host
//! (no respawn). Faults
//! on host-c (freeze, storage, FT partitions to it) and VM-network cuts are
//! kept: they cost the pair nothing. Every dropped step is a note in the
//! run's report.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qemu_tests::chaos::{Fault, FaultKind, Params, Schedule, Step};
use qemu_tests::history::Recorder;
use qemu_tests::Cluster;

/// A run's length: faults within it, healed `settle_ms` before its end.
pub const DURATION_MS: u64 = 60_000;
/// The pair of VM `kv`: host-a Primary, host-b Secondary.
pub const PAIR: [&str; 2] = ["host-a", "host-b"];

/// The generator's parameters: only kinds the harness applies (no slow host).
pub fn params() -> Params {
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
        freeze_ms: (1_000, 8_000),
        storage_delay_ms: (50, 500),
        slow_factor: (2, 2),
        one_way_percent: 30,
    }
}

/// Whether `fault` can cost the pair a member (see the module doc).
pub fn costs_a_member(fault: &Fault) -> bool {
    let pair = |h: &str| PAIR.contains(&h);
    match fault {
        Fault::KillHost { host }
        | Fault::FreezeHost { host, .. }
        | Fault::CutStorage { host }
        | Fault::SeverStorage { host }
        | Fault::DelayStorage { host, .. } => pair(host),
        Fault::PartitionFt { a, b, .. } => pair(a) && pair(b),
        _ => false,
    }
}

/// The generated schedule cut down to what a run without respawn survives
/// (module doc), and a note per dropped step.
pub fn restrict(generated: &Schedule) -> (Schedule, Vec<String>) {
    let mut notes = Vec::new();
    let mut steps = Vec::new();
    let mut member_fault: Option<String> = None;
    let mut killed_kept: BTreeSet<String> = BTreeSet::new();
    for step in &generated.steps {
        let drop = match &step.fault {
            Fault::KillHost { host } if !PAIR.contains(&host.as_str()) => {
                Some(format!("{host} is not rebooted during a run"))
            }
            Fault::RebootHost { host } if killed_kept.contains(host) => {
                Some("no respawn: a killed pair host stays down".into())
            }
            Fault::RebootHost { .. } => Some("its kill was dropped".into()),
            Fault::SlowHost { .. } => Some("the harness cannot slow a host".into()),
            f if costs_a_member(f) => match &member_fault {
                Some(first) => Some(format!("one failover per run, already: {first}")),
                None => {
                    member_fault = Some(format!("{f} at {} ms", step.at_ms));
                    None
                }
            },
            _ => None,
        };
        match drop {
            Some(why) => notes.push(format!(
                "dropped {} at {} ms: {why}",
                step.fault, step.at_ms
            )),
            None => {
                if let Fault::KillHost { host } = &step.fault {
                    killed_kept.insert(host.clone());
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

/// One applied step.
#[derive(Debug, Clone)]
pub struct Applied {
    /// When it was applied (ms on the recorder's clock).
    pub at_ms: u64,
    pub what: String,
    pub error: Option<String>,
}

/// A frozen host thawed: the QMP `cont` was sent at `resume_sent` and
/// returned at `thawed`.
#[derive(Debug, Clone)]
pub struct Thaw {
    pub host: String,
    pub resume_sent: Instant,
    pub thawed: Instant,
}

/// What the nemesis did.
#[derive(Debug, Default)]
pub struct Played {
    pub applied: Vec<Applied>,
    pub thaws: Vec<Thaw>,
}

enum Event {
    Step(Fault),
    /// A freeze's end.
    Thaw(String),
}

/// Applies the steps of `schedule` at their times on `rec`'s clock (a freeze
/// thaws by itself after `for_ms`), then heals everything and returns at the
/// schedule's end (its `settle_ms` after the last heal).
pub fn play(cluster: &Cluster, schedule: &Schedule, rec: &Recorder) -> Played {
    let mut events: Vec<(u64, Event)> = Vec::new();
    for Step { at_ms, fault } in &schedule.steps {
        if let Fault::FreezeHost { host, for_ms } = fault {
            events.push((at_ms + for_ms, Event::Thaw(host.clone())));
        }
        events.push((*at_ms, Event::Step(fault.clone())));
    }
    events.sort_by_key(|(at, _)| *at); // stable: a step before the thaw it starts
    let mut played = Played::default();
    let mut frozen: BTreeSet<String> = BTreeSet::new();
    for (at_ms, event) in events {
        let now_ms = rec.now() / 1_000_000;
        if at_ms > now_ms {
            std::thread::sleep(Duration::from_millis(at_ms - now_ms));
        }
        let (what, result) = match event {
            Event::Thaw(host) if frozen.contains(&host) => {
                frozen.remove(&host);
                (format!("thaw {host}"), thaw(cluster, &host, &mut played))
            }
            Event::Thaw(_) => continue, // healed already
            Event::Step(Fault::Heal) => {
                heal(cluster, &mut frozen, &mut played);
                ("heal".to_string(), Ok(()))
            }
            Event::Step(fault) => {
                let r = apply(cluster, &fault);
                if let (Fault::FreezeHost { host, .. }, Ok(())) = (&fault, &r) {
                    frozen.insert(host.clone());
                }
                (fault.to_string(), r)
            }
        };
        let at_ms = rec.now() / 1_000_000;
        eprintln!(
            "chaos: [{:6.1} s] {what}{}",
            at_ms as f64 / 1000.0,
            result
                .as_ref()
                .err()
                .map_or(String::new(), |e| format!(": {e}"))
        );
        played.applied.push(Applied {
            at_ms,
            what,
            error: result.err(),
        });
    }
    heal(cluster, &mut frozen, &mut played);
    let now_ms = rec.now() / 1_000_000;
    std::thread::sleep(Duration::from_millis(
        schedule.duration_ms.saturating_sub(now_ms),
    ));
    played
}

fn apply(cluster: &Cluster, fault: &Fault) -> Result<(), String> {
    let e = |e: qemu_tests::HarnessError| e.to_string();
    match fault {
        Fault::KillHost { host } => cluster.host(host).and_then(|h| h.kill()).map_err(e),
        Fault::FreezeHost { host, .. } => cluster.host(host).and_then(|h| h.pause()).map_err(e),
        Fault::PartitionFt { a, b, one_way } => if *one_way {
            cluster.ft.cut_one_way(a, b)
        } else {
            cluster.ft.cut(a, b)
        }
        .map_err(e),
        Fault::CutStorage { host } => cluster.storage_path(host).map(|p| p.cut()).map_err(e),
        Fault::SeverStorage { host } => cluster.storage_path(host).map(|p| p.sever()).map_err(e),
        Fault::DelayStorage { host, ms } => cluster
            .storage_path(host)
            .map(|p| p.delay(Duration::from_millis(*ms)))
            .map_err(e),
        Fault::CutVmNet { host } => cluster.vm.isolate(host).map_err(e),
        Fault::SlowHost { .. } | Fault::RebootHost { .. } | Fault::Heal => {
            Err(format!("{fault}: not applied by this runner"))
        }
    }
}

fn thaw(cluster: &Cluster, host: &str, played: &mut Played) -> Result<(), String> {
    let h = cluster.host(host).map_err(|e| e.to_string())?;
    let resume_sent = Instant::now();
    h.resume().map_err(|e| e.to_string())?;
    played.thaws.push(Thaw {
        host: host.to_string(),
        resume_sent,
        thawed: Instant::now(),
    });
    Ok(())
}

/// Ends every fault but kills: FT and VM links, storage paths, freezes.
fn heal(cluster: &Cluster, frozen: &mut BTreeSet<String>, played: &mut Played) {
    cluster.ft.heal_all();
    cluster.vm.heal_all();
    for h in &cluster.config().hosts {
        if let Ok(p) = cluster.storage_path(&h.name) {
            p.pass();
        }
    }
    for host in std::mem::take(frozen) {
        if let Err(e) = thaw(cluster, &host, played) {
            eprintln!("chaos: thaw {host} at the heal: {e}");
        }
    }
}
