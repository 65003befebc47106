//! Chaos campaigns (issue 12), the parts that need no QEMU: a seeded fault
//! schedule that a nemesis plays against a 3-host cluster, the per-run and
//! campaign reports, and a per-run SVG plot of request latency with the fault
//! windows shaded.
//!
//! - [`schedule`]: [`Fault`], [`Step`], [`Params`], [`Schedule::generate`]
//!   (deterministic in the seed; a model of the cluster keeps one host alive,
//!   reboots only killed hosts, heals before the end).
//! - [`draw`]: [`FaultClass`] and the weight table of each [`Draw`], how a
//!   fault is picked (the pair failures weigh most; in draw 2 kills,
//!   freezes, partitions and each storage kind alike), and the stratified
//!   first fault of each seed.
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
//! function of its seed (its first fault's class too, see [`draw`]) and of
//! the draw's version, `FT_CHAOS_DRAW=1|2` ([`draw_from_env`]; unset: 2).
//! Draw 2 gave the storage faults classes of their own per kind and role
//! (15 classes, from 11), so that campaigns draw them about as often as
//! kills; draw 1 is the table from before, kept as it was. Replay a seed
//! from a campaign before draws had versions (seeds 1–158 of the team's
//! notes, the Makefile's seed 105, any report whose schedule has no `draw`)
//! with `FT_CHAOS_DRAW=1`, or it draws another schedule; new campaigns use
//! draw 2. A replay line carries `FT_CHAOS_DRAW=1` when the run used draw 1,
//! and reports record the draw (`Params::draw`; old ones parse as draw 1, so
//! [`Schedule::replays`] regenerates them with the draw they were made by).
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

pub use draw::{first_class, Draw, FaultClass, WEIGHTS_V1, WEIGHTS_V2};
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
/// Environment variable: the draw's version, `1` or `2` (unset: 2; module
/// doc).
pub const ENV_DRAW: &str = "FT_CHAOS_DRAW";

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
    #[error("{var}={value:?}: want one of {allowed}")]
    BadChoice {
        var: &'static str,
        value: String,
        allowed: &'static str,
    },
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

/// The draw's version from `FT_CHAOS_DRAW`: `1` or `2`, unset or empty the
/// default (2), anything else an error naming the allowed values.
pub fn draw_from_env() -> Result<Draw, ChaosError> {
    let value = std::env::var(ENV_DRAW).unwrap_or_default();
    parse_draw(&value).ok_or(ChaosError::BadChoice {
        var: ENV_DRAW,
        value,
        allowed: "1, 2 (unset: 2)",
    })
}

/// A `FT_CHAOS_DRAW` value (see [`draw_from_env`]).
pub fn parse_draw(s: &str) -> Option<Draw> {
    match s.trim() {
        "" => Some(Draw::default()),
        n => Draw::try_from(n.parse::<u8>().ok()?).ok(),
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
/// campaign ran with `FT_CHAOS_SEQUENTIAL=1`; `draw`: its draw, named when
/// not the default, [`draw_from_env`]; `witness`: its `FT_CHAOS_WITNESS`
/// override, [`witness_from_env`]). Without a knob it is just the seed's
/// line.
pub fn replay_line(seed: u64, sequential: bool, draw: Draw, witness: Option<bool>) -> String {
    let mut knobs = String::new();
    if sequential {
        knobs.push_str(&format!("{ENV_SEQUENTIAL}=1 "));
    }
    if draw != Draw::default() {
        knobs.push_str(&format!("{ENV_DRAW}={draw} "));
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
