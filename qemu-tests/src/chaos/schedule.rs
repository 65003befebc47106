//! The nemesis's fault schedule: what fault to apply to which host when.
//! [`Schedule::generate`] draws it from a seed (splitmix64, so the same seed
//! gives the same schedule everywhere), keeping to the cluster model's rules
//! (module `model`): one host stays healthy, only killed hosts reboot, all is
//! healed and rebooted `settle_ms` before the end, faults come at least
//! `min_gap_ms` apart and at most `max_concurrent` are in force; sometimes
//! two faults start together (e.g. a freeze and a partition).
//!
//! A schedule is JSON (it is part of each run's report) and carries its seed,
//! hosts, duration and parameters, so [`Schedule::replays`] can tell that a
//! regeneration from the seed gives it back.

pub use super::fault::{Fault, FaultKind};
use super::model::Model;
use super::rng::Rng;
use super::ChaosError;
use serde::{Deserialize, Serialize};

/// The generator's knobs. Ranges are inclusive `(lo, hi)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// Quiet time before the first fault (the cluster comes up, clients start).
    pub start_ms: u64,
    /// Least time between two step times (faults starting together share one).
    pub min_gap_ms: u64,
    /// Most time between two step times.
    pub max_gap_ms: u64,
    /// Most faults in force at once (a kill counts until its reboot).
    pub max_concurrent: usize,
    /// The fault kinds drawn (injections; `RebootHost` and `Heal` are always
    /// allowed as recovery).
    pub kinds: Vec<FaultKind>,
    /// Percent of fault steps that start a second fault of another kind.
    pub combine_percent: u8,
    /// Percent of steps, while faults are in force, that recover instead.
    pub heal_percent: u8,
    /// The final heal and reboots come this long before the end.
    pub settle_ms: u64,
    pub freeze_ms: (u64, u64),
    pub storage_delay_ms: (u64, u64),
    pub slow_factor: (u32, u32),
    /// Percent of partitions that are one-way.
    pub one_way_percent: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            start_ms: 10_000,
            min_gap_ms: 8_000,
            max_gap_ms: 20_000,
            max_concurrent: 2,
            kinds: FaultKind::INJECTIONS.to_vec(),
            combine_percent: 20,
            heal_percent: 35,
            settle_ms: 15_000,
            freeze_ms: (1_000, 8_000),
            storage_delay_ms: (50, 500),
            slow_factor: (2, 8),
            one_way_percent: 30,
        }
    }
}

/// One step: apply `fault` at `at_ms` after the run's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    pub fault: Fault,
}

/// A fault in force from `start_ms` to `end_ms` (by a heal, reboot, its own
/// end, or the end of the run), for plots and for recovery times by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub fault: Fault,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A run's fault schedule, steps in time order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    pub hosts: Vec<String>,
    pub duration_ms: u64,
    pub params: Params,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Draws the schedule of `seed` (see the module doc for its rules).
    pub fn generate(seed: u64, hosts: &[&str], duration_ms: u64, params: &Params) -> Schedule {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut rng = Rng::new(seed);
        let mut model = Model::new(&hosts);
        let mut steps = Vec::new();
        let min_gap = params.min_gap_ms.max(1);
        let max_gap = params.max_gap_ms.max(min_gap);
        let max_concurrent = params.max_concurrent.max(1);
        let end_at = duration_ms.saturating_sub(params.settle_ms);
        let mut push = |model: &mut Model, at_ms: u64, fault: Fault| {
            model.apply(&fault, at_ms);
            steps.push(Step { at_ms, fault });
        };
        let mut t = params.start_ms;
        while t.saturating_add(min_gap) <= end_at {
            model.expire(t);
            let n = model.in_force();
            if n >= max_concurrent || (n > 0 && rng.percent(params.heal_percent)) {
                let mut relief = model.killed();
                if model.in_force() > relief.len() {
                    relief.push(String::new()); // "" stands for Heal
                }
                if let Some(host) = rng.pick(&relief).cloned() {
                    let fault = if host.is_empty() {
                        Fault::Heal
                    } else {
                        Fault::RebootHost { host }
                    };
                    push(&mut model, t, fault);
                }
            } else if let Some(first) = draw(&model, &mut rng, params, None) {
                let kind = first.kind();
                push(&mut model, t, first);
                if model.in_force() < max_concurrent && rng.percent(params.combine_percent) {
                    if let Some(second) = draw(&model, &mut rng, params, Some(kind)) {
                        push(&mut model, t, second);
                    }
                }
            }
            t = t.saturating_add(rng.range(min_gap, max_gap));
        }
        model.expire(end_at);
        if model.in_force() > model.killed().len() {
            push(&mut model, end_at, Fault::Heal);
        }
        for host in model.killed() {
            push(&mut model, end_at, Fault::RebootHost { host });
        }
        Schedule {
            seed,
            hosts,
            duration_ms,
            params: params.clone(),
            steps,
        }
    }

    /// Whether regenerating from the seed, hosts, duration and parameters
    /// gives this schedule back (what `FT_CHAOS_SEED` replay relies on).
    pub fn replays(&self) -> bool {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        Schedule::generate(self.seed, &hosts, self.duration_ms, &self.params) == *self
    }

    /// Checks the model's rules on every step, time order, and that the
    /// schedule ends with nothing in force by its duration.
    pub fn check(&self) -> Result<(), ChaosError> {
        let mut model = Model::new(&self.hosts);
        let mut last = 0;
        for (index, step) in self.steps.iter().enumerate() {
            let bad = |why: String| ChaosError::Invalid {
                index,
                at_ms: step.at_ms,
                fault: step.fault.to_string(),
                why,
            };
            if step.at_ms < last {
                return Err(bad(format!("before the previous step ({last} ms)")));
            }
            if step.at_ms > self.duration_ms {
                return Err(bad(format!("after the end ({} ms)", self.duration_ms)));
            }
            last = step.at_ms;
            model.expire(step.at_ms);
            if let Some(why) = model.refuse(&step.fault) {
                return Err(bad(why));
            }
            model.apply(&step.fault, step.at_ms);
        }
        model.expire(self.duration_ms);
        match model.active().first() {
            None => Ok(()),
            Some(a) => Err(ChaosError::Invalid {
                index: self.steps.len(),
                at_ms: self.duration_ms,
                fault: a.fault.to_string(),
                why: "still in force at the end".into(),
            }),
        }
    }

    /// The fault windows: every injected fault from its step to its end.
    pub fn windows(&self) -> Vec<Window> {
        let mut model = Model::new(&self.hosts);
        let mut out = Vec::new();
        let mut close = |ended: Vec<super::model::Active>, at: u64| {
            for a in ended {
                out.push(Window {
                    end_ms: a.until_ms.map_or(at, |u| u.min(at)),
                    fault: a.fault,
                    start_ms: a.since_ms,
                });
            }
        };
        for step in &self.steps {
            close(model.expire(step.at_ms), step.at_ms);
            close(model.apply(&step.fault, step.at_ms), step.at_ms);
        }
        let end = self.duration_ms;
        close(model.expire(u64::MAX), end);
        close(model.apply(&Fault::Heal, end), end);
        for host in model.killed() {
            close(model.apply(&Fault::RebootHost { host }, end), end);
        }
        out.sort_by_key(|w| (w.start_ms, w.end_ms));
        out
    }

    pub fn to_json(&self) -> String {
        // A Schedule has only strings, numbers and plain enums: it always
        // serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Schedule, ChaosError> {
        serde_json::from_str(text).map_err(|source| ChaosError::Json {
            what: "parse schedule".into(),
            source,
        })
    }
}

/// Draws an allowed injection of an enabled kind other than `not`, with its
/// parameters.
fn draw(model: &Model, rng: &mut Rng, params: &Params, not: Option<FaultKind>) -> Option<Fault> {
    let mut kinds: Vec<FaultKind> = Vec::new();
    for k in &params.kinds {
        if k.is_injection() && Some(*k) != not && !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let choices: Vec<(FaultKind, Vec<Fault>)> = kinds
        .into_iter()
        .map(|k| (k, model.targets(k)))
        .filter(|(_, t)| !t.is_empty())
        .collect();
    let (_, targets) = rng.pick(&choices)?;
    let mut fault = rng.pick(targets)?.clone();
    match &mut fault {
        Fault::FreezeHost { for_ms, .. } => {
            *for_ms = rng.range(params.freeze_ms.0, params.freeze_ms.1).max(1)
        }
        Fault::DelayStorage { ms, .. } => {
            let (lo, hi) = params.storage_delay_ms;
            *ms = rng.range(lo, hi).max(1)
        }
        Fault::SlowHost { factor, .. } => {
            let (lo, hi) = params.slow_factor;
            let f = rng.range(u64::from(lo), u64::from(hi)).max(2);
            *factor = u32::try_from(f).unwrap_or(u32::MAX)
        }
        Fault::PartitionFt { one_way, .. } => *one_way = rng.percent(params.one_way_percent),
        _ => {}
    }
    Some(fault)
}
