//! Starting a VM under a durable generation (docs/design.md §1): every start
//! — power-on, restart, a new config — first wins `highest on disk + 1`, and a
//! Secondary pairs only with the owner of the generation it is offered.
//!
//! [`win_start_generation`] is the Primary's (or a lone VM's) step before it
//! boots; [`check_offered_generation`] is the Secondary's check of `Hello`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use config_schema::ctl::LeaseView;

use super::fence::{self, Highest};
use super::member::Decision;

/// How often a start that waits (storage down, the VM running elsewhere)
/// looks again.
const RETRY: Duration = Duration::from_secs(2);
/// How often a start that waits for the owner or its lease slot looks again.
const LOOK: Duration = Duration::from_millis(200);

/// Why a VM is not started here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error(
        "generation {generation} was decided under config generation {recorded}, this host \
         runs {ours}; not starting"
    )]
    OlderConfig {
        generation: u64,
        recorded: u64,
        ours: u64,
    },
    #[error("{owner} started generation {generation} first; not starting here")]
    StartedElsewhere { generation: u64, owner: String },
    #[error("stopped while waiting to start")]
    Cancelled,
    /// Another live host runs the VM: this host may become its Secondary
    /// (respawn), never a second Primary.
    #[error("{owner} runs it in generation {generation}")]
    RunningElsewhere { generation: u64, owner: String },
}

/// What a start needs to know about its host.
pub struct StartCtx<'a> {
    pub vm: &'a str,
    pub host: &'a str,
    pub config_generation: u64,
    pub fencing: &'a Path,
    pub cancel: &'a AtomicBool,
    /// Called with the generation about to be acquired (the daemon publishes
    /// it to fencing before the Acquire).
    pub acquiring: &'a dyn Fn(u64),
    /// [`PUBLISH_SETTLE`] (shorter in tests).
    pub publish_settle: Duration,
}

/// Wins the generation to start `vm` in: `Highest + 1`, unless the config is
/// older than the one recorded, or another live host publishes that it runs
/// the VM ([`StartError::RunningElsewhere`]: the caller waits as a standby
/// for a transfer instead), or another host wins it first.
pub fn win_start_generation(ctx: &StartCtx<'_>) -> Result<u64, StartError> {
    let vm = ctx.vm;
    let mut said: Option<String> = None;
    let mut say_once = |line: String| {
        if said.as_deref() != Some(line.as_str()) {
            println!("{line}");
            said = Some(line);
        }
    };
    let mut unsure_since = None;
    loop {
        if ctx.cancel.load(Ordering::SeqCst) {
            return Err(StartError::Cancelled);
        }
        let h = match fence::highest(ctx.fencing, vm) {
            Ok(h) => h,
            Err(why) => {
                say_once(format!(
                    "ftvmm: vm {vm}: storage does not answer ({why}); waiting to start"
                ));
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if h.config_generation > ctx.config_generation {
            return Err(StartError::OlderConfig {
                generation: h.generation,
                recorded: h.config_generation,
                ours: ctx.config_generation,
            });
        }
        let leases = fence::leases(ctx.fencing);
        let owner = owner_state(&h, ctx.host, vm, leases.as_deref().map_err(|e| e.as_str()));
        if let Owner::Runs(owner) = &owner {
            println!(
                "ftvmm: vm {vm}: runs on {owner} (generation {}); not starting here while it does",
                h.generation
            );
            return Err(StartError::RunningElsewhere {
                generation: h.generation,
                owner: owner.clone(),
            });
        }
        if !settled(&owner, h.generation, &mut unsure_since, ctx.publish_settle) {
            say_once(match &owner {
                Owner::Unpublished(o) => format!(
                    "ftvmm: vm {vm}: {o} owns generation {} and is alive but does not publish \
                     the VM; waiting up to {} ms before starting here",
                    h.generation,
                    ctx.publish_settle.as_millis()
                ),
                Owner::Unjudged { owner, why } => format!(
                    "ftvmm: vm {vm}: {owner} owns generation {} and {why}; waiting to start",
                    h.generation
                ),
                Owner::Claimed(c) => format!(
                    "ftvmm: vm {vm}: {c} publishes the VM (it claims generation {}, holding its \
                     state); waiting to start until it wins, stops or its lease expires",
                    h.generation + 1
                ),
                // No milliseconds in the line: it is said once, not every look.
                Owner::Stale { host, .. } => format!(
                    "ftvmm: vm {vm}: {host} may claim generation {} (its lease is not current); \
                     waiting to start until it renews or expires",
                    h.generation + 1
                ),
                _ => String::new(),
            });
            if matches!(owner, Owner::Claimed(_) | Owner::Stale { .. }) {
                // Withdraw this host's own publication of an earlier attempt
                // (its Acquire found storage silent): two starters must not
                // each wait for the other.
                (ctx.acquiring)(0);
            }
            std::thread::sleep(LOOK);
            continue;
        }
        let next = h.generation + 1;
        (ctx.acquiring)(next);
        // One attempt at a time: while storage does not answer (or this
        // host does not hold its lease slot yet, ~7 s after boot) the world
        // moves on, so the owner is looked at again before every attempt.
        let decision = match fence::acquire(ctx.fencing, vm, next, ctx.config_generation) {
            Ok(a) => a.decision,
            Err(why) => {
                say_once(format!(
                    "ftvmm: vm {vm}: storage does not answer ({why}); waiting to start"
                ));
                std::thread::sleep(LOOK);
                continue;
            }
        };
        match decision {
            Decision::Won => {
                // The facts the start went by, for the operator and for the
                // chaos verdict on a cold restart (it checks them against
                // the faults it applied).
                let why = start_reason(
                    &h,
                    ctx.host,
                    &owner,
                    leases.as_deref().map_err(|e| e.as_str()),
                );
                println!("ftvmm: vm {vm}: won generation {next} to start: {why}");
                return Ok(next);
            }
            Decision::Lost { owner } => {
                return Err(StartError::StartedElsewhere {
                    generation: next,
                    owner,
                })
            }
            // A later generation appeared meanwhile: look again.
            Decision::Superseded { .. } => continue,
        }
    }
}

/// How long the owner of the highest generation may be alive without
/// publishing the VM before a host concludes it does not run it: a host that
/// has just won a go-live publishes with its next lease renewal (every
/// 500 ms, later on a loaded host).
pub const PUBLISH_SETTLE: Duration = Duration::from_secs(3);

/// What this host can tell about the owner of a VM's highest generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Nobody else runs it: no owner, this host, or an owner whose lease
    /// expired.
    Nobody,
    /// A live host that publishes that it runs the VM.
    Runs(String),
    /// A live host that does not publish the VM: it may have just won and
    /// not published yet, or it stopped the VM. Taken as [`Owner::Nobody`]
    /// only once this lasted [`PUBLISH_SETTLE`] for the same generation.
    Unpublished(String),
    /// Not judged: this host's fencing agent has not watched the owner's
    /// lease long enough (it just booted: the first reading is a baseline,
    /// not movement), or the leases cannot be read. Never taken as nobody:
    /// a host that rebooted into a running cluster saw every lease as not
    /// live, started the VM again in a new generation and deposed the copy
    /// that was serving (chaos seed 22).
    Unjudged { owner: String, why: String },
    /// Another host than the owner, its lease not expired, publishes the
    /// VM: a Secondary draining or racing for the next generation (or a
    /// host starting it). It holds the VM's state; a start here would boot
    /// the VM from its disk and break every connection (chaos seed 105).
    /// It ends when that host wins (then it is the owner), stops
    /// publishing (it lost), or its lease expires (it died).
    Claimed(String),
    /// Another host than the owner, its lease not expired, was seen renewing
    /// but not for longer than [`FRESH_PUBLICATION`]: a claim it made since
    /// would not show yet. Seed 105 again: the slowed
    /// Secondary drained and published, but its renewals stalled for 7 s,
    /// so the record on disk still said it claimed nothing. It ends when
    /// that host renews (its record then says) or its lease expires.
    Stale { host: String, why: String },
}

/// How recent another host's lease renewal must be for its publication to
/// count as current: a few renewal periods (500 ms with the example config),
/// well inside the lease timeout.
pub const FRESH_PUBLICATION: Duration = Duration::from_secs(2);

/// [`Owner`] from the highest generation and the leases (pure).
pub fn owner_state(h: &Highest, host: &str, vm: &str, leases: Result<&[LeaseView], &str>) -> Owner {
    let owner = owner_only(h, host, vm, leases);
    if matches!(owner, Owner::Runs(_)) || h.generation == 0 {
        // Before any generation nothing holds state: power-on races are
        // for fencing to decide, and two hosts starting at once each
        // publishing would otherwise wait for the other.
        return owner;
    }
    let Ok(leases) = leases else {
        return owner;
    };
    let others = || unexpired_others(leases, h, host);
    if let Some(c) = others().find(|l| l.running.iter().any(|v| v == vm)) {
        return Owner::Claimed(c.host.clone());
    }
    let fresh = FRESH_PUBLICATION.as_millis() as u64;
    // Never seen renewing (this host just booted, or that one never did):
    // no claim can have been seen either way; the owner's own lease has its
    // rule for this (`Unjudged`).
    let stale = others().find_map(|l| match l.last_renewal_ms {
        Some(ms) if ms > fresh => Some(Owner::Stale {
            host: l.host.clone(),
            why: format!("its lease was last renewed {ms} ms ago"),
        }),
        _ => None,
    });
    stale.unwrap_or(owner)
}

/// Why a start went ahead, from the facts it went by (pure): the previous
/// generation and what became of its owner, then every other host's lease.
/// One line, `; `-separated: `first start (no generation on disk)`,
/// `after this host (generation <g>)`, `after generation <g> (no owner
/// recorded)` (an Acquire that was never decided) or `after <owner>
/// (generation <g>): <its state>`, then `<host>: <state>` per other host, a
/// state being `lease expired`, `renewing, does not publish the VM`, `not
/// seen renewing yet` or (the owner) `alive, not publishing the VM`.
/// `qemu_tests::chaos::cold` parses it: keep the two in step.
pub fn start_reason(
    h: &Highest,
    host: &str,
    owner: &Owner,
    leases: Result<&[LeaseView], &str>,
) -> String {
    let mut parts = vec![match (h.generation, h.owner.as_deref()) {
        (0, _) => "first start (no generation on disk)".to_string(),
        (g, Some(o)) if o == host => format!("after this host (generation {g})"),
        (g, Some(o)) => format!(
            "after {o} (generation {g}): {}",
            match owner {
                Owner::Unpublished(_) => "alive, not publishing the VM",
                _ => "lease expired",
            }
        ),
        (g, None) => format!("after generation {g} (no owner recorded)"),
    }];
    match leases {
        Err(e) => parts.push(format!("other leases unreadable ({e})")),
        Ok(leases) => parts.extend(
            leases
                .iter()
                .filter(|l| l.host != host && h.owner.as_deref() != Some(l.host.as_str()))
                .map(|l| {
                    let state = match (l.expired, l.last_renewal_ms) {
                        (true, _) => "lease expired",
                        (false, Some(_)) => "renewing, does not publish the VM",
                        (false, None) => "not seen renewing yet",
                    };
                    format!("{}: {state}", l.host)
                }),
        ),
    }
    parts.join("; ")
}

/// The leases of the hosts other than this one and the owner that have not
/// expired: the hosts that may hold a claim on the VM (a claim of their
/// own, `Claimed`, or one their record may not show yet, `Stale`).
fn unexpired_others<'a>(
    leases: &'a [LeaseView],
    h: &'a Highest,
    host: &'a str,
) -> impl Iterator<Item = &'a LeaseView> {
    leases.iter().filter(move |l| {
        l.host != host && h.owner.as_deref() != Some(l.host.as_str()) && !l.expired
    })
}

/// [`owner_state`] from the owner's lease alone.
fn owner_only(h: &Highest, host: &str, vm: &str, leases: Result<&[LeaseView], &str>) -> Owner {
    let Some(owner) = h.owner.as_deref().filter(|o| *o != host) else {
        return Owner::Nobody;
    };
    let unjudged = |why: String| Owner::Unjudged {
        owner: owner.to_string(),
        why,
    };
    let leases = match leases {
        Ok(l) => l,
        Err(e) => return unjudged(format!("cannot read the leases: {e}")),
    };
    match leases.iter().find(|l| l.host == owner) {
        None => unjudged(format!("no lease of {owner} in the table")),
        Some(l) if l.live && l.running.iter().any(|v| v == vm) => Owner::Runs(owner.to_string()),
        Some(l) if l.live => Owner::Unpublished(owner.to_string()),
        Some(l) if l.expired => Owner::Nobody,
        Some(_) => unjudged(format!("the lease of {owner} is not judged yet")),
    }
}

/// The owner of `vm`'s highest generation as seen from `host`, and whether
/// it died in this host's view ([`owner_died_in_view`]).
pub fn owner_of(fencing: &Path, vm: &str, host: &str) -> Result<(Highest, Owner, bool), String> {
    let h = fence::highest(fencing, vm)?;
    let leases = fence::leases(fencing);
    let owner = owner_state(&h, host, vm, leases.as_deref().map_err(|e| e.as_str()));
    let died = leases
        .as_deref()
        .is_ok_and(|l| owner_died_in_view(&h, host, l));
    Ok((h, owner, died))
}

/// Whether the owner of the highest generation (another host) died while
/// this host's fencing agent watched: it saw the owner's lease counter move,
/// then stand still for the lease timeout (pure). Then the VM did run and
/// its host is gone — unlike a cluster powering on, where a configured host
/// not renewing yet may only be booting slowly, so no power-on grace is due.
pub fn owner_died_in_view(h: &Highest, host: &str, leases: &[LeaseView]) -> bool {
    let Some(owner) = h.owner.as_deref().filter(|o| *o != host) else {
        return false;
    };
    leases
        .iter()
        .any(|l| l.host == owner && l.expired && !l.live && l.last_renewal_ms.is_some())
}

/// Whether `owner` (for generation `g`) lets a start go ahead: `Nobody`, or
/// `Unpublished` that lasted `settle` (tracked in `since`).
pub fn settled(
    owner: &Owner,
    g: u64,
    since: &mut Option<(u64, Instant)>,
    settle: Duration,
) -> bool {
    match owner {
        Owner::Nobody => true,
        Owner::Runs(_) | Owner::Unjudged { .. } | Owner::Claimed(_) | Owner::Stale { .. } => {
            *since = None;
            false
        }
        Owner::Unpublished(_) => {
            let (sg, t) = *since.get_or_insert((g, Instant::now()));
            if sg != g {
                *since = Some((g, Instant::now()));
                return false;
            }
            t.elapsed() >= settle
        }
    }
}

/// The Secondary's check of an offered generation: it must be the highest on
/// disk and owned by the host that offers it. `Err` names what is wrong.
pub fn check_offered_generation(
    fencing: &Path,
    vm: &str,
    generation: u64,
    primary: &str,
) -> Result<(), String> {
    let h = fence::highest(fencing, vm).map_err(|e| format!("cannot check generation: {e}"))?;
    if h.generation != generation || h.owner.as_deref() != Some(primary) {
        return Err(format!(
            "generation {generation} offered by {primary}, but the highest on disk is {} owned \
             by {}",
            h.generation,
            h.owner.as_deref().unwrap_or("nobody")
        ));
    }
    Ok(())
}

/// A standby's check of a join's `Hello`: the offering host must own the
/// highest generation on disk, which may be later than the one offered (a
/// lone Primary re-wins `g + 1` each time its output grant comes back; the
/// join pairs in the generation it owns at the end, checked again then by
/// [`check_offered_generation`] in `respawn::target`). `Err` names what is
/// wrong.
pub fn check_join_offer(
    fencing: &Path,
    vm: &str,
    generation: u64,
    primary: &str,
) -> Result<(), String> {
    let h = fence::highest(fencing, vm).map_err(|e| format!("cannot check generation: {e}"))?;
    if h.generation < generation || h.owner.as_deref() != Some(primary) {
        return Err(format!(
            "join in generation {generation} offered by {primary}, but the highest on disk is {} \
             owned by {}",
            h.generation,
            h.owner.as_deref().unwrap_or("nobody")
        ));
    }
    Ok(())
}

/// Why a power-off was not fenced ([`fence_power_off`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerOffError {
    #[error(
        "generation {generation} was decided under config generation {recorded}, newer than \
         this power-off's {ours}; the newer config decides"
    )]
    NewerConfig {
        generation: u64,
        recorded: u64,
        ours: u64,
    },
    #[error("storage does not answer ({why})")]
    Storage { why: String },
    #[error("other hosts kept winning the next generation ({attempts} attempts)")]
    Contended { attempts: u32 },
}

/// Fences a power-off of `vm` under config generation `config_generation`
/// before this host stops a copy that acts (or may act) as Primary: wins
/// `highest + 1` on shared storage, a generation nobody acts in. Every copy
/// that could act in an earlier one then loses or is deposed: a Secondary
/// that races because this Primary stops asks for that very generation and
/// loses (it halts, docs/design.md §1); a copy live elsewhere is deposed by
/// its host's fencing agent; a host that has not taken the newer config and
/// tries to start the VM finds it decided under a newer config and refuses
/// ([`win_start_generation`]). Lost to another host (it raced first): looks
/// again, at most `attempts` times, `retry` apart while storage does not
/// answer. Refused when the highest generation was decided under a newer
/// config than this power-off's (that config, not this one, decides).
pub fn fence_power_off(
    fencing: &Path,
    vm: &str,
    config_generation: u64,
    attempts: u32,
    retry: Duration,
) -> Result<u64, PowerOffError> {
    let mut last = PowerOffError::Storage {
        why: "not asked".into(),
    };
    for _ in 0..attempts {
        let h = match fence::highest(fencing, vm) {
            Ok(h) => h,
            Err(why) => {
                last = PowerOffError::Storage { why };
                std::thread::sleep(retry);
                continue;
            }
        };
        if h.config_generation > config_generation {
            return Err(PowerOffError::NewerConfig {
                generation: h.generation,
                recorded: h.config_generation,
                ours: config_generation,
            });
        }
        let next = h.generation + 1;
        match fence::acquire(fencing, vm, next, config_generation) {
            Ok(a) if a.decision == Decision::Won => return Ok(next),
            // Another host took `next` first (a race, a start): look again.
            Ok(_) => last = PowerOffError::Contended { attempts },
            Err(why) => {
                last = PowerOffError::Storage { why };
                std::thread::sleep(retry);
            }
        }
    }
    Err(last)
}

#[cfg(test)]
#[path = "start_tests.rs"]
mod tests;
