//! Judging a cold restart: the VM started again from its disk (`won
//! generation <g> to start`, g > 1) after it had run, its memory and every
//! connection lost. That is right only when no member holding the VM's state
//! was left — the Primary and its Secondary both lost, a double fault, which
//! is beyond what a pair promises — and wrong when one was (chaos seed 105: a
//! third host cold-started the VM while its Secondary was taking over).
//!
//! The starting host's line says what it went by (`ftvmm::lockstep::start::
//! start_reason`): the previous owner and its state, then every other host's
//! lease. [`judge`] accepts the restart only if that account holds up against
//! what the harness knows on its own:
//! - the previous owner's lease expired (an owner alive and not publishing
//!   the VM stopped it: not a cold restart this harness provokes), or the
//!   highest generation was never decided (an Acquire that died with its
//!   host: no owner recorded) and some other host's lease expired;
//! - every host the line names `lease expired` was under a fault that stops
//!   renewals (a kill, freeze, slow-down or storage fault) within
//!   [`RECENT_MS`] before the start — an expiry nothing in the schedule
//!   explains is a bug, not a double fault;
//! - no host the line names as renewing had an open claim on its console
//!   (draining towards, asking for, racing for or deferring a generation of
//!   the VM, not yet ended by a loss) within [`RECENT_MS`] before the start.

use super::fault::Fault;
use super::schedule::Window;

/// How far back a fault or a claim counts for a start: the lease timeout
/// (8 s in examples/cluster.toml), the time a race takes on a loaded host,
/// and the start's own wait for the leases to settle.
pub const RECENT_MS: u64 = 30_000;

/// What a start line says about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    LeaseExpired,
    /// Renewing and not publishing the VM.
    Renewing,
    NotSeenYet,
    /// The owner only: alive, not publishing the VM.
    AliveNotPublishing,
}

/// What a start line says about the generation before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// `after <owner> (generation <g>): <state>`.
    Owner(String, Seen),
    /// `after generation <g> (no owner recorded)`: never decided.
    Undecided,
    /// `after this host (generation <g>)`.
    ThisHost,
    /// `first start …`, or a line without reasons (an older image).
    None,
}

/// A parsed `won generation <g> to start: <why>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdStart {
    pub host: String,
    /// On the run's clock (the recorder's, as the schedule's steps).
    pub at_ms: u64,
    pub generation: u64,
    pub previous: Previous,
    pub others: Vec<(String, Seen)>,
}

/// A console line with its host and time on the run's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub host: String,
    pub at_ms: u64,
    pub text: String,
}

fn seen(state: &str) -> Option<Seen> {
    Some(match state {
        "lease expired" => Seen::LeaseExpired,
        "renewing, does not publish the VM" => Seen::Renewing,
        "not seen renewing yet" => Seen::NotSeenYet,
        "alive, not publishing the VM" => Seen::AliveNotPublishing,
        _ => return None,
    })
}

/// Parses `ftvmm: vm <vm>: won generation <g> to start: <why>` said by
/// `host` at `at_ms`; `None` if it is not such a line.
pub fn parse(host: &str, at_ms: u64, vm: &str, text: &str) -> Option<ColdStart> {
    let rest = text
        .split(&format!("ftvmm: vm {vm}: won generation "))
        .nth(1)?;
    let (g, why) = rest.split_once(" to start")?;
    let generation = g.parse().ok()?;
    let why = why.strip_prefix(": ").unwrap_or("");
    let mut parts = why.split("; ");
    let first = parts.next().unwrap_or("");
    let previous = match first.strip_prefix("after ") {
        Some(o) if o.starts_with("this host (generation ") => Previous::ThisHost,
        Some(o) if o.starts_with("generation ") && o.ends_with(" (no owner recorded)") => {
            Previous::Undecided
        }
        Some(o) => o
            .split_once(" (generation ")
            .and_then(|(o, tail)| Some(Previous::Owner(o.into(), seen(tail.split_once("): ")?.1)?)))
            .unwrap_or(Previous::None),
        None => Previous::None,
    };
    let others = parts
        .filter_map(|p| {
            let (h, s) = p.split_once(": ")?;
            Some((h.to_string(), seen(s)?))
        })
        .collect();
    Some(ColdStart {
        host: host.to_string(),
        at_ms,
        generation,
        previous,
        others,
    })
}

/// Whether `fault` stops `host`'s lease renewals (or lets them land late).
fn stops_renewals(fault: &Fault, host: &str) -> bool {
    match fault {
        Fault::KillHost { host: h }
        | Fault::FreezeHost { host: h, .. }
        | Fault::SlowHost { host: h, .. }
        | Fault::CutStorage { host: h }
        | Fault::SeverStorage { host: h }
        | Fault::DelayStorage { host: h, .. } => h == host,
        _ => false,
    }
}

const CLAIMS: [&str; 5] = [
    "asking for generation",
    "replaying what the log holds, then asking",
    "racing for generation",
    "deferring the race",
    "handing the VM over",
];
const ENDS: [&str; 5] = [
    "lost generation",
    "superseded",
    "deposed",
    "halting",
    "won generation",
];

/// Accepts `cold` as a restart after a double fault (`Ok`: the account, for
/// the report) or says why it is not one (module doc). `windows`: the fault
/// windows as played; `said`: the VM's generation lines on every console.
pub fn judge(cold: &ColdStart, windows: &[Window], said: &[Said]) -> Result<String, String> {
    let owner = match &cold.previous {
        Previous::Owner(o, Seen::LeaseExpired) => Some(o),
        Previous::Owner(o, state) => {
            return Err(format!("its previous owner {o} was {state:?}, not expired"))
        }
        Previous::Undecided => None,
        Previous::ThisHost | Previous::None => {
            return Err("the start names no previous owner whose lease expired".into())
        }
    };
    let from = cold.at_ms.saturating_sub(RECENT_MS);
    let mut account = Vec::new();
    let expired: Vec<&String> = owner
        .into_iter()
        .chain(
            (cold.others.iter())
                .filter(|(_, s)| *s == Seen::LeaseExpired)
                .map(|(h, _)| h),
        )
        .collect();
    if expired.is_empty() {
        return Err("no host named whose lease expired: nobody held the VM's state".into());
    }
    for h in expired {
        let fault = windows
            .iter()
            .find(|w| stops_renewals(&w.fault, h) && w.start_ms <= cold.at_ms && w.end_ms >= from);
        match fault {
            Some(w) => account.push(format!(
                "{h} expired under {} from {} ms",
                w.fault, w.start_ms
            )),
            None => {
                return Err(format!(
                    "{h}'s lease expired in {}'s view, but no fault on {h} in the {RECENT_MS} ms \
                     before",
                    cold.host
                ))
            }
        }
    }
    for (h, _) in cold.others.iter().filter(|(_, s)| *s == Seen::Renewing) {
        let last = said
            .iter()
            .filter(|s| &s.host == h && s.at_ms >= from && s.at_ms <= cold.at_ms)
            .filter(|s| CLAIMS.iter().chain(&ENDS).any(|k| s.text.contains(k)))
            // The latest by time: `said` is by process, not in time order.
            .max_by_key(|s| s.at_ms);
        if let Some(s) = last.filter(|s| CLAIMS.iter().any(|k| s.text.contains(k))) {
            return Err(format!(
                "{h} renewed and claimed the VM at {} ms: {}",
                s.at_ms, s.text
            ));
        }
        account.push(format!("{h} renewing without a claim"));
    }
    Ok(account.join(", "))
}

#[cfg(test)]
#[path = "cold_tests.rs"]
mod tests;
