//! Chaos campaigns (issue 12), the parts that need no QEMU: a seeded fault
//! schedule that a nemesis plays against a 3-host cluster, the per-run and
//! campaign reports, and a per-run SVG plot of request latency with the fault
//! windows shaded.
//!
//! - [`schedule`]: [`Fault`], [`Step`], [`Params`], [`Schedule::generate`]
//!   (deterministic in the seed; a model of the cluster keeps one host alive,
//!   reboots only killed hosts, heals before the end).
//! - [`draw`]: [`FaultClass`] and [`WEIGHTS`], how a fault is picked (the
//!   pair failures weigh most: kills, freezes, partitions and each storage
//!   kind alike), and the stratified first fault of each seed.
//! - [`roles`]: the predicted pair, [`costs_a_member`] (pair failures), and
//!   the [`Gate`] of a second pair failure (`FT_CHAOS_SEQUENTIAL=1`).
//! - [`pair_watch`]: what the gate reads on the consoles: protected again by
//!   a respawn, or a pair failure that cost no member.
//! - [`cold`]: judging a cold restart: a double fault, or a bug.
//! - [`report`]: [`RunReport`], [`CampaignReport`] (JSON, and a fixed-width
//!   table for people with the line that replays a failing seed).
//! - [`plot`]: [`plot::plot_run`], latency over time as SVG.
//!
//! Replay: a run is named by its seed alone. `FT_CHAOS_SEED` sets the first
//! seed and `FT_CHAOS_RUNS` the number of runs ([`seeds_from_env`]); run `i`
//! uses seed `FT_CHAOS_SEED + i`, so `FT_CHAOS_SEED=<seed> FT_CHAOS_RUNS=1`
//! regenerates exactly the schedule of the failing run: a schedule is a
//! function of its seed alone (its first fault's class too, see [`draw`]),
//! for one version of the draw: [`draw::WEIGHTS`] changed when the storage
//! faults got classes of their own per kind and role (15 classes, from 11),
//! so a seed from a report written before then replays another schedule
//! (its report's `schedule` shows the old one; [`Schedule::replays`] is
//! false for it).
//! `FT_CHAOS_SEQUENTIAL=1` ([`sequential_from_env`]) allows a second pair
//! failure after a respawn; a replay needs it too ([`replay_line`]).
//! `FT_CHAOS_WITNESS=on|off` ([`witness_from_env`]) overrides whether a
//! run's config names a VM witness (by default even seeds do): it leaves the
//! schedule alone but changes the cluster the schedule runs against, so a
//! replay line carries it when it was set.

pub mod cold;
pub mod draw;
pub mod fault;
mod model;
pub mod pair_watch;
pub mod plot;
pub mod report;
mod rng;
pub mod roles;
pub mod schedule;

pub use draw::{first_class, FaultClass, WEIGHTS};
pub use fault::{slow_stopped_ms, Fault, FaultKind, SLOW_PERIOD_MS};
pub use plot::{plot_run, OpPoint, Outcome};
pub use report::{
    median, CampaignReport, KindStats, OpCounts, RunReport, SeedNote, Spread, Verdict,
    VerdictCounts,
};
pub use roles::{costs_a_member, Gate};
pub use schedule::{Params, Schedule, Step, Window};

use std::path::PathBuf;

/// Environment variable: the first seed of a campaign (decimal or `0x` hex).
pub const ENV_SEED: &str = "FT_CHAOS_SEED";
/// Environment variable: the number of runs of a campaign.
pub const ENV_RUNS: &str = "FT_CHAOS_RUNS";
/// Environment variable: `1` allows a second pair failure per run, after
/// the pair is protected again by a respawn (off by default).
pub const ENV_SEQUENTIAL: &str = "FT_CHAOS_SEQUENTIAL";
/// Environment variable: `on` or `off` overrides whether every run's config
/// names a VM witness (unset: even seeds do).
pub const ENV_WITNESS: &str = "FT_CHAOS_WITNESS";

/// Errors of the chaos pieces.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{var}={value:?} is not a number")]
    BadEnv { var: &'static str, value: String },
    #[error("schedule step {index} at {at_ms} ms ({fault}): {why}")]
    Invalid {
        index: usize,
        at_ms: u64,
        fault: String,
        why: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plot {}: {why}", path.display())]
    Plot { path: PathBuf, why: String },
}

/// Parses a seed: decimal, or hex with a `0x` prefix.
pub fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The seeds of a campaign from `FT_CHAOS_SEED` and `FT_CHAOS_RUNS`, with
/// `default_seed` and `default_runs` for the unset ones: `runs` consecutive
/// seeds from the first.
pub fn seeds_from_env(default_seed: u64, default_runs: u64) -> Result<Vec<u64>, ChaosError> {
    let get = |var: &'static str, default: u64| -> Result<u64, ChaosError> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => parse_seed(&v).ok_or(ChaosError::BadEnv {
                var,
                value: v.clone(),
            }),
            _ => Ok(default),
        }
    };
    let first = get(ENV_SEED, default_seed)?;
    let runs = get(ENV_RUNS, default_runs)?;
    Ok(seeds(first, runs))
}

/// Whether `FT_CHAOS_SEQUENTIAL` is on: `1`/`true`/`yes` on, unset, empty,
/// `0`/`false`/`no` off, anything else an error.
pub fn sequential_from_env() -> Result<bool, ChaosError> {
    let value = std::env::var(ENV_SEQUENTIAL).unwrap_or_default();
    parse_switch(&value).ok_or(ChaosError::BadEnv {
        var: ENV_SEQUENTIAL,
        value,
    })
}

/// The `FT_CHAOS_WITNESS` override: `Some(true)` for `on`, `Some(false)`
/// for `off`, `None` when unset or empty (each seed's default), anything else
/// an error.
pub fn witness_from_env() -> Result<Option<bool>, ChaosError> {
    let value = std::env::var(ENV_WITNESS).unwrap_or_default();
    parse_witness(&value).ok_or(ChaosError::BadEnv {
        var: ENV_WITNESS,
        value,
    })
}

/// A `FT_CHAOS_WITNESS` value (see [`witness_from_env`]): `None` if it is
/// neither `on`, `off` nor empty.
pub fn parse_witness(s: &str) -> Option<Option<bool>> {
    match s.trim() {
        "" => Some(None),
        "on" => Some(Some(true)),
        "off" => Some(Some(false)),
        _ => None,
    }
}

/// An on/off switch's value (see [`sequential_from_env`]).
pub fn parse_switch(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "" | "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `runs` consecutive seeds from `first` (wrapping).
pub fn seeds(first: u64, runs: u64) -> Vec<u64> {
    (0..runs).map(|i| first.wrapping_add(i)).collect()
}

/// The shell line that replays one run of a campaign (`sequential`: the
/// campaign ran with `FT_CHAOS_SEQUENTIAL=1`; `witness`: its
/// `FT_CHAOS_WITNESS` override, [`witness_from_env`]). Without either knob
/// it is just the seed's line.
pub fn replay_line(seed: u64, sequential: bool, witness: Option<bool>) -> String {
    let mut knobs = String::new();
    if sequential {
        knobs.push_str(&format!("{ENV_SEQUENTIAL}=1 "));
    }
    if let Some(on) = witness {
        knobs.push_str(&format!("{ENV_WITNESS}={} ", if on { "on" } else { "off" }));
    }
    format!("{knobs}{ENV_SEED}={seed} {ENV_RUNS}=1 make chaos")
}

#[cfg(test)]
mod draw_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod pair_watch_tests;
#[cfg(test)]
mod plot_tests;
#[cfg(test)]
mod report_tests;
#[cfg(test)]
mod schedule_tests;
