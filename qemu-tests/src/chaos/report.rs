//! Reports of chaos runs: a [`RunReport`] per seeded run (its schedule, op
//! counts, the checkers' findings, pauses and recovery times by fault kind,
//! pass/fail) and a [`CampaignReport`] over the runs (totals, verdict counts,
//! median and max pause and time-to-recovery by fault kind). Both are JSON
//! for machines and a fixed-width table for people; a failing run's lines
//! end with the command that replays its seed.

use super::draw::Draw;
use super::fault::FaultKind;
use super::plot::{OpPoint, Outcome};
use super::schedule::Schedule;
use super::{replay_line, ChaosError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The linearizability verdict of a run's history (mapped from the checker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        why: String,
    },
    /// The checker gave up (time or search budget) or did not run.
    Unknown {
        why: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable { why } => write!(f, "not linearizable: {why}"),
            Verdict::Unknown { why } => write!(f, "linearizability unknown: {why}"),
        }
    }
}

/// Client operations by outcome: acknowledged, failed for sure, or unknown
/// (timed out: it may or may not have taken effect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
}

impl OpCounts {
    /// Counts the outcomes of a run's operations.
    pub fn of(ops: &[OpPoint]) -> OpCounts {
        let mut c = OpCounts::default();
        for op in ops {
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.unknown
    }

    pub fn add(&mut self, other: &OpCounts) {
        self.ok += other.ok;
        self.fail += other.fail;
        self.unknown += other.unknown;
    }
}

/// One seeded run.
///
/// NOTICE: written as JSON next to each run's logs; renaming a field breaks
/// reading old reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub seed: u64,
    pub schedule: Schedule,
    pub ops: OpCounts,
    pub linearizable: Verdict,
    /// Acknowledged writes no later read or final state shows.
    pub lost_acked_writes: Vec<String>,
    /// Times two hosts ran the VM live at once.
    pub dual_live: Vec<String>,
    /// Disk or state divergences between what the hosts hold.
    pub divergences: Vec<String>,
    /// The VM was started again from its disk on another host (a cold
    /// start after it had run: its memory and every connection lost) while
    /// no go-live explains the switch (chaos seed 105).
    #[serde(default)]
    pub cold_restarts: Vec<String>,
    /// Cold restarts after a double fault (`super::cold::judge`): no member
    /// holding the VM's state was left, so starting it from its disk was the
    /// only way back. Beyond what a pair promises: counted, not failed.
    #[serde(default)]
    pub double_faults: Vec<String>,
    /// The VM stopped serving: a client that could not reconnect, final
    /// reads without an answer.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// The VM was not protected again after the heal although at least two
    /// hosts were running (respawn, issue 10).
    #[serde(default)]
    pub unprotected: Vec<String>,
    /// Longest client-visible pause after each fault, by the fault's kind.
    pub pauses_ms: Vec<(FaultKind, u64)>,
    /// Time from each fault until clients are served again, by kind.
    pub recovery_ms: Vec<(FaultKind, u64)>,
    /// Set by [`RunReport::judge`].
    pub passed: bool,
    /// What the runner says about the run beside the verdicts: schedule
    /// steps it dropped or could not apply, hosts that did not boot, the
    /// go-lives it saw.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The run's `FT_CHAOS_WITNESS` override (`super::witness_from_env`;
    /// `None`: unset, the seed's default). Not part of the schedule, so the
    /// runner sets it; the replay line carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<bool>,
    /// The appliance image the run booted ([`crate::paths::image_id`]:
    /// its SHA-256 and file name), so runs summed across campaigns can be
    /// told apart by the product they tested. Reports written before it
    /// existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl RunReport {
    /// An empty report for the run of `schedule`: nothing checked yet, so
    /// the verdict is unknown and it has not passed.
    pub fn new(schedule: Schedule) -> Self {
        RunReport {
            seed: schedule.seed,
            schedule,
            ops: OpCounts::default(),
            linearizable: Verdict::Unknown {
                why: "not checked".into(),
            },
            lost_acked_writes: Vec::new(),
            dual_live: Vec::new(),
            divergences: Vec::new(),
            cold_restarts: Vec::new(),
            double_faults: Vec::new(),
            unavailable: Vec::new(),
            unprotected: Vec::new(),
            pauses_ms: Vec::new(),
            recovery_ms: Vec::new(),
            passed: false,
            notes: Vec::new(),
            witness: None,
            image: None,
        }
    }

    /// Why the run fails; empty if it passes. A run with no acknowledged
    /// operation fails: it checked nothing.
    pub fn failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.linearizable != Verdict::Linearizable {
            why.push(self.linearizable.to_string());
        }
        if self.ops.ok == 0 {
            why.push("no acknowledged operation: nothing was checked".into());
        }
        for (name, list) in [
            ("lost acked write", &self.lost_acked_writes),
            ("dual live", &self.dual_live),
            ("divergence", &self.divergences),
            ("cold restart", &self.cold_restarts),
            ("unavailable", &self.unavailable),
            ("unprotected", &self.unprotected),
        ] {
            why.extend(list.iter().map(|w| format!("{name}: {w}")));
        }
        why
    }

    /// Sets `passed` from [`RunReport::failures`] and returns it.
    pub fn judge(&mut self) -> bool {
        self.passed = self.failures().is_empty();
        self.passed
    }

    pub fn to_json(&self) -> String {
        // Strings, numbers and plain enums only: always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<RunReport, ChaosError> {
        serde_json::from_str(text).map_err(|source| ChaosError::Json {
            what: "parse run report".into(),
            source,
        })
    }

    /// The run for people: header, per-kind table, and on failure the reasons
    /// and the replay line.
    pub fn table(&self) -> String {
        let campaign = CampaignReport::from_runs(std::slice::from_ref(self));
        let mut out = format!(
            "chaos run seed {}: {}\n",
            self.seed,
            if self.passed { "passed" } else { "FAILED" }
        );
        campaign.write_body(&mut out);
        out
    }
}

/// A run's note: the seed and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedNote {
    pub seed: u64,
    pub what: String,
    /// For a failed run: the command that replays it, from the run's own
    /// settings (a summary over campaigns mixes draws and overrides, so the
    /// campaign's cannot stand for every run). Older reports have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
}

/// Count, median and max of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    pub n: u64,
    pub median_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl Spread {
    pub fn of(values: &[u64]) -> Spread {
        Spread {
            n: values.len() as u64,
            median_ms: median(values),
            max_ms: values.iter().copied().max(),
        }
    }
}

/// The median; for an even count the mean of the two middle values, rounded
/// down.
pub fn median(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => {
            let (a, b) = (v.get(n / 2 - 1)?, v.get(n / 2)?);
            Some(((u128::from(*a) + u128::from(*b)) / 2) as u64)
        }
    }
}

/// One fault kind over a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    /// Schedule steps of this kind (recovery steps `heal`, `reboot_host` too).
    pub faults: u64,
    pub pause: Spread,
    pub recovery: Spread,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounts {
    pub linearizable: u64,
    pub not_linearizable: u64,
    pub unknown: u64,
}

/// A campaign: the aggregates of its runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignReport {
    pub runs: u64,
    pub passed: u64,
    pub seeds: Vec<u64>,
    /// Failed runs with their reasons joined by "; ".
    pub failed: Vec<SeedNote>,
    pub ops: OpCounts,
    pub verdicts: VerdictCounts,
    pub lost_acked_writes: Vec<SeedNote>,
    pub dual_live: Vec<SeedNote>,
    pub divergences: Vec<SeedNote>,
    #[serde(default)]
    pub cold_restarts: Vec<SeedNote>,
    /// [`RunReport::double_faults`] of every run.
    #[serde(default)]
    pub double_faults: Vec<SeedNote>,
    pub by_kind: BTreeMap<FaultKind, KindStats>,
    /// The runs had `FT_CHAOS_SEQUENTIAL=1` (their replay lines say so).
    #[serde(default)]
    pub sequential: bool,
    /// The runs' draw (`Params::draw`; one environment, so one for all: like
    /// `witness`, a run's other than the default wins); the replay lines name
    /// draw 1. Reports written before draws had versions have none and were
    /// all drawn by draw 1, so they parse as 1.
    #[serde(default = "Draw::unrecorded")]
    pub draw: Draw,
    /// The runs' `FT_CHAOS_WITNESS` override ([`RunReport::witness`]; one
    /// environment, so one for all); the replay lines carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<bool>,
    /// Runs per appliance image ([`RunReport::image`]; "unrecorded" for
    /// reports that name none).
    #[serde(default)]
    pub images: BTreeMap<String, u64>,
}

impl CampaignReport {
    pub fn from_runs(runs: &[RunReport]) -> CampaignReport {
        let mut c = CampaignReport {
            runs: runs.len() as u64,
            passed: 0,
            seeds: runs.iter().map(|r| r.seed).collect(),
            failed: Vec::new(),
            ops: OpCounts::default(),
            verdicts: VerdictCounts::default(),
            lost_acked_writes: Vec::new(),
            dual_live: Vec::new(),
            divergences: Vec::new(),
            cold_restarts: Vec::new(),
            double_faults: Vec::new(),
            by_kind: BTreeMap::new(),
            sequential: runs.iter().any(|r| r.schedule.params.sequential()),
            draw: (runs.iter().map(|r| r.schedule.params.draw))
                .find(|d| *d != Draw::default())
                .unwrap_or_default(),
            witness: runs.iter().find_map(|r| r.witness),
            images: BTreeMap::new(),
        };
        let mut pauses: BTreeMap<FaultKind, Vec<u64>> = BTreeMap::new();
        let mut recoveries: BTreeMap<FaultKind, Vec<u64>> = BTreeMap::new();
        for r in runs {
            let note = |what: &String| SeedNote {
                seed: r.seed,
                what: what.clone(),
                replay: None,
            };
            let image = r.image.clone().unwrap_or_else(|| "unrecorded".into());
            *c.images.entry(image).or_default() += 1;
            if r.passed {
                c.passed += 1;
            } else {
                let why = r.failures();
                let what = if why.is_empty() {
                    "not judged".to_string()
                } else {
                    why.join("; ")
                };
                let params = &r.schedule.params;
                c.failed.push(SeedNote {
                    replay: Some(replay_line(
                        r.seed,
                        params.sequential(),
                        params.draw,
                        r.witness,
                    )),
                    ..note(&what)
                });
            }
            c.ops.add(&r.ops);
            match r.linearizable {
                Verdict::Linearizable => c.verdicts.linearizable += 1,
                Verdict::NotLinearizable { .. } => c.verdicts.not_linearizable += 1,
                Verdict::Unknown { .. } => c.verdicts.unknown += 1,
            }
            c.lost_acked_writes
                .extend(r.lost_acked_writes.iter().map(note));
            c.dual_live.extend(r.dual_live.iter().map(note));
            c.divergences.extend(r.divergences.iter().map(note));
            c.cold_restarts.extend(r.cold_restarts.iter().map(note));
            c.double_faults.extend(r.double_faults.iter().map(note));
            for step in &r.schedule.steps {
                c.by_kind.entry(step.fault.kind()).or_default().faults += 1;
            }
            for (k, ms) in &r.pauses_ms {
                pauses.entry(*k).or_default().push(*ms);
            }
            for (k, ms) in &r.recovery_ms {
                recoveries.entry(*k).or_default().push(*ms);
            }
        }
        for (k, v) in pauses {
            c.by_kind.entry(k).or_default().pause = Spread::of(&v);
        }
        for (k, v) in recoveries {
            c.by_kind.entry(k).or_default().recovery = Spread::of(&v);
        }
        c
    }

    /// Whether every run passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        self.runs > 0 && self.passed == self.runs
    }

    pub fn to_json(&self) -> String {
        // Strings, numbers, plain enums and maps keyed by unit enums only.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<CampaignReport, ChaosError> {
        serde_json::from_str(text).map_err(|source| ChaosError::Json {
            what: "parse campaign report".into(),
            source,
        })
    }

    /// The campaign for people: totals, a per-kind table, then each failed
    /// seed with its replay line.
    pub fn table(&self) -> String {
        let mut out = format!(
            "chaos campaign: {} runs, {} passed, {} failed\n",
            self.runs,
            self.passed,
            self.runs - self.passed.min(self.runs)
        );
        self.write_body(&mut out);
        out
    }

    fn write_body(&self, out: &mut String) {
        let o = &self.ops;
        let v = &self.verdicts;
        let _ = writeln!(
            out,
            "ops checked: {} (ok {}, fail {}, unknown {})",
            o.total(),
            o.ok,
            o.fail,
            o.unknown
        );
        let _ = writeln!(
            out,
            "verdicts: linearizable {}, not linearizable {}, unknown {}",
            v.linearizable, v.not_linearizable, v.unknown
        );
        let _ = writeln!(
            out,
            "lost acked writes: {}, dual-live: {}, divergences: {}, cold restarts: {} (and {} \
             after a double fault)",
            self.lost_acked_writes.len(),
            self.dual_live.len(),
            self.divergences.len(),
            self.cold_restarts.len(),
            self.double_faults.len()
        );
        let _ = writeln!(
            out,
            "{:<14} {:>6} | {:>7} {:>8} {:>8} | {:>10} {:>8} {:>8}",
            "kind", "steps", "pauses", "med ms", "max ms", "recoveries", "med ms", "max ms"
        );
        let ms = |x: Option<u64>| x.map_or("-".to_string(), |x| x.to_string());
        for (k, s) in &self.by_kind {
            let _ = writeln!(
                out,
                "{:<14} {:>6} | {:>7} {:>8} {:>8} | {:>10} {:>8} {:>8}",
                k.name(),
                s.faults,
                s.pause.n,
                ms(s.pause.median_ms),
                ms(s.pause.max_ms),
                s.recovery.n,
                ms(s.recovery.median_ms),
                ms(s.recovery.max_ms)
            );
        }
        for d in &self.double_faults {
            let _ = writeln!(
                out,
                "double fault, seed {}: cold restart {}",
                d.seed, d.what
            );
        }
        if self.images.len() > 1 || self.images.keys().any(|i| i != "unrecorded") {
            let images: Vec<String> = (self.images.iter())
                .map(|(image, n)| format!("{image} ({n} run{})", if *n == 1 { "" } else { "s" }))
                .collect();
            let _ = writeln!(out, "images: {}", images.join(", "));
        }
        for f in &self.failed {
            let _ = writeln!(out, "FAILED seed {}: {}", f.seed, f.what);
            let line = (f.replay.clone())
                .unwrap_or_else(|| replay_line(f.seed, self.sequential, self.draw, self.witness));
            let _ = writeln!(out, "  replay: {line}");
        }
    }
}
