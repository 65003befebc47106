//! The nemesis's fault schedule: what fault to apply to which host when.
//! [`Schedule::generate`] draws it from a seed (splitmix64, so the same seed
//! gives the same schedule everywhere), keeping to the cluster model's rules
//! (module `model`): one host stays healthy, only killed hosts reboot, all is
//! healed and rebooted `settle_ms` before the end, faults come at least
//! `min_gap_ms` apart and at most `max_concurrent` are in force; sometimes
//! two faults start together (e.g. a freeze and a partition).
//!
//! Faults are drawn by class and weight (module `draw`: the pair failures,
//! kills, freezes, partitions and storage faults of the pair, weigh most),
//! the first one stratified by the seed so a campaign's runs start with every
//! class in turn. At most `Params::pair_failures` faults per run can cost the
//! pair a member (module `roles`); a second one waits for a respawn: its step
//! carries a [`Gate`] and comes `respawn_ms` after the first at the earliest.
//!
//! A schedule is JSON (it is part of each run's report) and carries its seed,
//! hosts, duration and parameters, so [`Schedule::replays`] can tell that a
//! regeneration from the seed gives it back.

use super::draw::{first_class, Draw, Scope};
pub use super::fault::{Fault, FaultKind};
use super::model::Model;
use super::rng::Rng;
pub use super::roles::Gate;
use super::roles::Roles;
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
    /// Percent of partitions to or from a spare host that are one-way (a
    /// partition between the pair is one-way or not by its class).
    pub one_way_percent: u8,
    /// Most faults per run that can cost the pair a member (module `roles`):
    /// 1 without respawn; 2 with `FT_CHAOS_SEQUENTIAL=1`, the second gated.
    pub pair_failures: usize,
    /// A gated pair failure comes at least this long after the previous one
    /// (the respawn's time to `protected:`; the nemesis waits longer if it
    /// has to).
    pub respawn_ms: u64,
    /// The draw's version (module `draw`): which weight table. Missing from
    /// JSON written before draws had versions, which was all drawn by draw
    /// 1, so it parses as draw 1 and those schedules still replay; new
    /// params default to draw 2.
    #[serde(default = "Draw::unrecorded")]
    pub draw: Draw,
}

impl Params {
    /// Whether a run may have a second pair failure after a respawn.
    pub fn sequential(&self) -> bool {
        self.pair_failures > 1
    }
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
            freeze_ms: (500, 4_000),
            storage_delay_ms: (50, 500),
            slow_factor: (2, 8),
            one_way_percent: 30,
            pair_failures: 1,
            respawn_ms: 15_000,
            draw: Draw::default(),
        }
    }
}

/// One step: apply `fault` at `at_ms` after the run's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    pub fault: Fault,
    /// Set on a pair failure after the first: wait for the pair to be
    /// protected again ([`Gate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

impl Step {
    /// An ungated step.
    pub fn new(at_ms: u64, fault: Fault) -> Step {
        Step {
            at_ms,
            fault,
            gate: None,
        }
    }
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
    /// `hosts`: the Primary's host first, the Secondary's second, spares
    /// after.
    pub fn generate(seed: u64, hosts: &[&str], duration_ms: u64, params: &Params) -> Schedule {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut rng = Rng::new(seed);
        let mut model = Model::new(&hosts);
        let mut roles = Roles::new(&hosts);
        let mut first = first_class(seed, params);
        let mut steps = Vec::new();
        let min_gap = params.min_gap_ms.max(1);
        let max_gap = params.max_gap_ms.max(min_gap);
        let max_concurrent = params.max_concurrent.max(1);
        let end_at = duration_ms.saturating_sub(params.settle_ms);
        let respawn = params.sequential();
        let mut push = |model: &mut Model, roles: &mut Roles, at_ms: u64, fault: Fault| {
            let mut gate = None;
            if roles.is_pair_failure(&fault) {
                gate = roles.gate();
                roles.fail(&fault, at_ms, respawn);
            }
            model.apply(&fault, at_ms);
            steps.push(Step { at_ms, fault, gate });
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
                    push(&mut model, &mut roles, t, fault);
                }
            } else if let Some(one) =
                Scope::at(&model, &roles, params, t, None).draw(&mut rng, first.take())
            {
                let kind = one.kind();
                push(&mut model, &mut roles, t, one);
                if model.in_force() < max_concurrent && rng.percent(params.combine_percent) {
                    if let Some(two) =
                        Scope::at(&model, &roles, params, t, Some(kind)).draw(&mut rng, None)
                    {
                        push(&mut model, &mut roles, t, two);
                    }
                }
            }
            t = t.saturating_add(rng.range(min_gap, max_gap));
        }
        model.expire(end_at);
        if model.in_force() > model.killed().len() {
            push(&mut model, &mut roles, end_at, Fault::Heal);
        }
        for host in model.killed() {
            push(&mut model, &mut roles, end_at, Fault::RebootHost { host });
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

    /// Checks the pair-failure rules (module `roles`): at most
    /// `pair_failures`, a later one `respawn_ms` after the previous and gated
    /// by the predicted pair, no gate on any other step.
    pub fn check_pair_failures(&self) -> Result<(), ChaosError> {
        let p = &self.params;
        let mut roles = Roles::new(&self.hosts);
        for (index, step) in self.steps.iter().enumerate() {
            let bad = |why: String| ChaosError::Invalid {
                index,
                at_ms: step.at_ms,
                fault: step.fault.to_string(),
                why,
            };
            if !roles.is_pair_failure(&step.fault) {
                if step.gate.is_some() {
                    return Err(bad("a gate on a step that is no pair failure".into()));
                }
                continue;
            }
            if !roles.pair_failure_allowed(step.at_ms, p.pair_failures, p.respawn_ms) {
                return Err(bad(format!(
                    "pair failure {} of at most {}, or within {} ms of the previous",
                    roles.failures + 1,
                    p.pair_failures,
                    p.respawn_ms
                )));
            }
            let want = roles.gate();
            if step.gate != want {
                return Err(bad(format!("gate {:?}, predicted {want:?}", step.gate)));
            }
            roles.fail(&step.fault, step.at_ms, p.sequential());
        }
        Ok(())
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

    /// A window per reboot, from its step until the next step that injects
    /// a fault (or the end): the rebooted host boots and rejoins, and the
    /// cluster may place a Secondary on it, whose transfer's stop-and-copy
    /// pauses the guest. The client-visible pause of a reboot is measured
    /// over it; the fault windows ([`Schedule::windows`]) stay as they are
    /// (a kill's ends at its reboot).
    pub fn reboot_windows(&self) -> Vec<Window> {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.fault.kind() == FaultKind::RebootHost)
            .map(|(i, s)| {
                let end_ms = (self.steps[i + 1..].iter())
                    .find(|n| n.fault.kind().is_injection() && n.at_ms > s.at_ms)
                    .map_or(self.duration_ms, |n| n.at_ms)
                    .max(s.at_ms);
                Window {
                    fault: s.fault.clone(),
                    start_ms: s.at_ms,
                    end_ms,
                }
            })
            .collect()
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
