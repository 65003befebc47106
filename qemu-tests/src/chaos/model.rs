//! The nemesis's model of the cluster: which faults are in force, and which
//! fault is allowed next. The generator draws only allowed faults; a parsed
//! schedule is checked against the same rules ([`super::Schedule::check`]).
//!
//! Rules (the cluster must be able to make progress and to settle):
//! - A *healthy* host is alive, not frozen, and has its storage and VM
//!   network. A fault that takes health from host `h` (kill, freeze, any
//!   storage fault, VM network cut) is allowed only while another host stays
//!   healthy. So at least one host is always healthy, and in particular a
//!   kill never leaves the cluster without a live host.
//! - `RebootHost` only for a killed host; every other host fault only for a
//!   live one, and not twice (one storage fault per host at a time, one
//!   partition per pair of hosts).
//! - `Heal` ends every fault but kills; a freeze ends by itself after
//!   `for_ms`; a kill ends the killed host's freeze and slowdown (those are
//!   faults of its QEMU process), not its network or storage faults (those
//!   are on the hubs and the storage path, and hold when it boots again).

use super::fault::{Fault, FaultKind};

/// A fault in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Active {
    pub fault: Fault,
    pub since_ms: u64,
    /// When it ends by itself (freeze).
    pub until_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Model {
    hosts: Vec<String>,
    active: Vec<Active>,
}

/// Whether `fault` takes health from `host` (see the module doc).
fn unhealthy_by(fault: &Fault, host: &str) -> bool {
    match fault {
        Fault::KillHost { host: h }
        | Fault::FreezeHost { host: h, .. }
        | Fault::CutStorage { host: h }
        | Fault::SeverStorage { host: h }
        | Fault::DelayStorage { host: h, .. }
        | Fault::CutVmNet { host: h } => h == host,
        _ => false,
    }
}

impl Model {
    pub(crate) fn new(hosts: &[String]) -> Self {
        Model {
            hosts: hosts.to_vec(),
            active: Vec::new(),
        }
    }

    pub(crate) fn active(&self) -> &[Active] {
        &self.active
    }

    /// Faults in force (kills included).
    pub(crate) fn in_force(&self) -> usize {
        self.active.len()
    }

    fn has(&self, pred: impl Fn(&Fault) -> bool) -> bool {
        self.active.iter().any(|a| pred(&a.fault))
    }

    pub(crate) fn alive(&self, host: &str) -> bool {
        !self.has(|f| matches!(f, Fault::KillHost { host: h } if h == host))
    }

    pub(crate) fn killed(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| !self.alive(h))
            .cloned()
            .collect()
    }

    fn healthy(&self, host: &str) -> bool {
        !self.has(|f| unhealthy_by(f, host))
    }

    /// Whether some host other than `host` is healthy.
    fn other_healthy(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h != host && self.healthy(h))
    }

    /// Ends the faults that end by themselves at or before `now`.
    pub(crate) fn expire(&mut self, now: u64) -> Vec<Active> {
        let (ended, kept) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| a.until_ms.is_some_and(|u| u <= now));
        self.active = kept;
        ended
    }

    /// Why `fault` is not allowed now, if it is not.
    pub(crate) fn refuse(&self, fault: &Fault) -> Option<String> {
        for h in fault.hosts() {
            if !self.hosts.iter().any(|k| k == h) {
                return Some(format!("unknown host {h}"));
            }
        }
        let live = |h: &str| (!self.alive(h)).then(|| format!("{h} is not alive"));
        let spare = |h: &str| {
            (!self.other_healthy(h)).then(|| format!("no host but {h} would stay healthy"))
        };
        match fault {
            Fault::Heal => None,
            Fault::RebootHost { host } => self.alive(host).then(|| format!("{host} is not killed")),
            Fault::KillHost { host } => live(host).or_else(|| spare(host)),
            Fault::FreezeHost { host, for_ms } => live(host)
                .or_else(|| (*for_ms == 0).then(|| "freeze for 0 ms".to_string()))
                .or_else(|| {
                    self.has(|f| matches!(f, Fault::FreezeHost { host: h, .. } if h == host))
                        .then(|| format!("{host} is already frozen"))
                })
                .or_else(|| spare(host)),
            Fault::PartitionFt { a, b, .. } => live(a)
                .or_else(|| live(b))
                .or_else(|| (a == b).then(|| format!("partition of {a} from itself")))
                .or_else(|| {
                    self.has(|f| match f {
                        Fault::PartitionFt { a: x, b: y, .. } => {
                            (x == a && y == b) || (x == b && y == a)
                        }
                        _ => false,
                    })
                    .then(|| format!("{a} and {b} are already partitioned"))
                }),
            Fault::CutStorage { host }
            | Fault::SeverStorage { host }
            | Fault::DelayStorage { host, .. } => live(host)
                .or_else(|| match fault {
                    Fault::DelayStorage { ms: 0, .. } => Some("storage delay of 0 ms".into()),
                    _ => None,
                })
                .or_else(|| {
                    self.has(|f| f.kind().is_storage() && f.hosts().contains(&host.as_str()))
                        .then(|| format!("{host} already has a storage fault"))
                })
                .or_else(|| spare(host)),
            Fault::CutVmNet { host } => live(host)
                .or_else(|| {
                    self.has(|f| matches!(f, Fault::CutVmNet { host: h } if h == host))
                        .then(|| format!("{host}'s VM network is already cut"))
                })
                .or_else(|| spare(host)),
            Fault::SlowHost { host, factor } => live(host)
                .or_else(|| (*factor < 2).then(|| format!("slowdown factor {factor} < 2")))
                .or_else(|| {
                    self.has(|f| matches!(f, Fault::SlowHost { host: h, .. } if h == host))
                        .then(|| format!("{host} is already slowed"))
                }),
        }
    }

    /// Applies an allowed fault at `now`; returns the faults it ends.
    pub(crate) fn apply(&mut self, fault: &Fault, now: u64) -> Vec<Active> {
        let ends: Box<dyn Fn(&Fault) -> bool> = match fault {
            Fault::Heal => Box::new(|f| f.kind() != FaultKind::KillHost),
            Fault::RebootHost { host } => {
                Box::new(move |f| matches!(f, Fault::KillHost { host: h } if h == host))
            }
            Fault::KillHost { host } => Box::new(move |f| match f {
                Fault::FreezeHost { host: h, .. } | Fault::SlowHost { host: h, .. } => h == host,
                _ => false,
            }),
            _ => Box::new(|_| false),
        };
        let (ended, kept) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| ends(&a.fault));
        self.active = kept;
        if fault.kind().is_injection() {
            let until_ms = match fault {
                Fault::FreezeHost { for_ms, .. } => Some(now.saturating_add(*for_ms)),
                _ => None,
            };
            self.active.push(Active {
                fault: fault.clone(),
                since_ms: now,
                until_ms,
            });
        }
        ended
    }

    /// The allowed faults of `kind` now, with zero parameters (the generator
    /// draws them): one per target host or host pair.
    pub(crate) fn targets(&self, kind: FaultKind) -> Vec<Fault> {
        let one = |f: fn(String) -> Fault| self.hosts.iter().map(|h| f(h.clone())).collect();
        let all: Vec<Fault> = match kind {
            FaultKind::Heal => vec![Fault::Heal],
            FaultKind::KillHost => one(|host| Fault::KillHost { host }),
            FaultKind::RebootHost => one(|host| Fault::RebootHost { host }),
            FaultKind::FreezeHost => one(|host| Fault::FreezeHost { host, for_ms: 1 }),
            FaultKind::CutStorage => one(|host| Fault::CutStorage { host }),
            FaultKind::SeverStorage => one(|host| Fault::SeverStorage { host }),
            FaultKind::DelayStorage => one(|host| Fault::DelayStorage { host, ms: 1 }),
            FaultKind::CutVmNet => one(|host| Fault::CutVmNet { host }),
            FaultKind::SlowHost => one(|host| Fault::SlowHost { host, factor: 2 }),
            FaultKind::PartitionFt => {
                let mut v = Vec::new();
                for a in &self.hosts {
                    for b in &self.hosts {
                        if a != b {
                            v.push(Fault::PartitionFt {
                                a: a.clone(),
                                b: b.clone(),
                                one_way: false,
                            });
                        }
                    }
                }
                v
            }
        };
        all.into_iter()
            .filter(|f| self.refuse(f).is_none())
            .collect()
    }
}
