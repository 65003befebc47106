//! The faults a chaos nemesis applies ([`Fault`]) and their kinds
//! ([`FaultKind`], for enabling kinds in a schedule and counting by kind).

use serde::{Deserialize, Serialize};
use std::fmt;

/// One fault (or recovery step) the nemesis applies.
///
/// NOTICE: serialized in run reports; renaming a variant or field breaks
/// reading old reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Kill the host's QEMU (power loss).
    KillHost { host: String },
    /// Boot a killed host again.
    RebootHost { host: String },
    /// Stop the host's vCPUs (QMP `stop`) for `for_ms`, then `cont`.
    FreezeHost { host: String, for_ms: u64 },
    /// Drop FT-network frames between `a` and `b` (only a→b if `one_way`).
    PartitionFt { a: String, b: String, one_way: bool },
    /// The host's storage path stops answering (requests hang).
    CutStorage { host: String },
    /// The host's storage connection is closed (requests fail).
    SeverStorage { host: String },
    /// The host's storage requests are delayed by `ms`.
    DelayStorage { host: String, ms: u64 },
    /// The host's link to the VM network is cut.
    CutVmNet { host: String },
    /// The host runs `factor` times slower: starved of CPU, its QEMU stopped
    /// [`slow_stopped_ms`]`(factor)` of every [`SLOW_PERIOD_MS`], until a heal
    /// or its kill.
    SlowHost { host: String, factor: u32 },
    /// Undo every fault in force but kills (killed hosts need `RebootHost`).
    Heal,
}

/// The period of a slowed host's duty cycle (ms): stopped, then running.
/// Well below the failure timeout (1 s in examples/cluster.toml): a slowed
/// host is late, never silent for long.
pub const SLOW_PERIOD_MS: u64 = 100;

/// How long of every [`SLOW_PERIOD_MS`] a host slowed by `factor` is
/// stopped: it runs `1/factor` of the time (factor 2: 50 ms, 4: 75 ms).
pub fn slow_stopped_ms(factor: u32) -> u64 {
    SLOW_PERIOD_MS - SLOW_PERIOD_MS / u64::from(factor.max(1))
}

/// The kind of a [`Fault`], for enabling kinds and counting by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    KillHost,
    RebootHost,
    FreezeHost,
    PartitionFt,
    CutStorage,
    SeverStorage,
    DelayStorage,
    CutVmNet,
    SlowHost,
    Heal,
}

impl FaultKind {
    /// The kinds that can cost the pair a member when aimed at one of its
    /// hosts (a run's pair failures: `tests/chaos/plan.rs`); the others of
    /// [`Self::INJECTIONS`] (a VM-network cut, a slowdown) cannot.
    pub const PAIR_FAILURES: [FaultKind; 6] = [
        FaultKind::KillHost,
        FaultKind::FreezeHost,
        FaultKind::PartitionFt,
        FaultKind::CutStorage,
        FaultKind::SeverStorage,
        FaultKind::DelayStorage,
    ];

    /// The kinds that inject a fault (all but `RebootHost` and `Heal`, the
    /// recovery steps, which are always allowed).
    pub const INJECTIONS: [FaultKind; 8] = [
        FaultKind::KillHost,
        FaultKind::FreezeHost,
        FaultKind::PartitionFt,
        FaultKind::CutStorage,
        FaultKind::SeverStorage,
        FaultKind::DelayStorage,
        FaultKind::CutVmNet,
        FaultKind::SlowHost,
    ];

    /// The snake_case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillHost => "kill_host",
            FaultKind::RebootHost => "reboot_host",
            FaultKind::FreezeHost => "freeze_host",
            FaultKind::PartitionFt => "partition_ft",
            FaultKind::CutStorage => "cut_storage",
            FaultKind::SeverStorage => "sever_storage",
            FaultKind::DelayStorage => "delay_storage",
            FaultKind::CutVmNet => "cut_vm_net",
            FaultKind::SlowHost => "slow_host",
            FaultKind::Heal => "heal",
        }
    }

    pub fn is_injection(self) -> bool {
        !matches!(self, FaultKind::RebootHost | FaultKind::Heal)
    }

    pub fn is_storage(self) -> bool {
        matches!(
            self,
            FaultKind::CutStorage | FaultKind::SeverStorage | FaultKind::DelayStorage
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::KillHost { .. } => FaultKind::KillHost,
            Fault::RebootHost { .. } => FaultKind::RebootHost,
            Fault::FreezeHost { .. } => FaultKind::FreezeHost,
            Fault::PartitionFt { .. } => FaultKind::PartitionFt,
            Fault::CutStorage { .. } => FaultKind::CutStorage,
            Fault::SeverStorage { .. } => FaultKind::SeverStorage,
            Fault::DelayStorage { .. } => FaultKind::DelayStorage,
            Fault::CutVmNet { .. } => FaultKind::CutVmNet,
            Fault::SlowHost { .. } => FaultKind::SlowHost,
            Fault::Heal => FaultKind::Heal,
        }
    }

    /// The fault with every host name `h` replaced by `rename(h)`.
    pub fn renamed(&self, rename: impl Fn(&str) -> String) -> Fault {
        let mut f = self.clone();
        match &mut f {
            Fault::KillHost { host }
            | Fault::RebootHost { host }
            | Fault::FreezeHost { host, .. }
            | Fault::CutStorage { host }
            | Fault::SeverStorage { host }
            | Fault::DelayStorage { host, .. }
            | Fault::CutVmNet { host }
            | Fault::SlowHost { host, .. } => *host = rename(host),
            Fault::PartitionFt { a, b, .. } => {
                *a = rename(a);
                *b = rename(b);
            }
            Fault::Heal => {}
        }
        f
    }

    /// The hosts the fault names.
    pub fn hosts(&self) -> Vec<&str> {
        match self {
            Fault::KillHost { host }
            | Fault::RebootHost { host }
            | Fault::FreezeHost { host, .. }
            | Fault::CutStorage { host }
            | Fault::SeverStorage { host }
            | Fault::DelayStorage { host, .. }
            | Fault::CutVmNet { host }
            | Fault::SlowHost { host, .. } => vec![host],
            Fault::PartitionFt { a, b, .. } => vec![a, b],
            Fault::Heal => vec![],
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::FreezeHost { host, for_ms } => write!(f, "freeze {host} {for_ms}ms"),
            Fault::PartitionFt { a, b, one_way } => {
                write!(f, "partition {a}{}{b}", if *one_way { "->" } else { "<->" })
            }
            Fault::DelayStorage { host, ms } => write!(f, "delay_storage {host} {ms}ms"),
            Fault::SlowHost { host, factor } => write!(f, "slow {host} x{factor}"),
            Fault::Heal => f.write_str("heal"),
            other => write!(f, "{} {}", other.kind(), other.hosts().join(" ")),
        }
    }
}
