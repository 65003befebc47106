//! Starting a VM under a durable generation (docs/design.md §1): every start
//! — power-on, restart, a new config — first wins `highest on disk + 1`, and a
//! Secondary pairs only with the owner of the generation it is offered.
//!
//! [`win_start_generation`] is the Primary's (or a lone VM's) step before it
//! boots; [`check_offered_generation`] is the Secondary's check of `Hello`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::fence::{self, Highest};
use super::member::Decision;

/// How often a start that waits (storage down, the VM running elsewhere)
/// looks again.
const RETRY: Duration = Duration::from_secs(2);

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
        if let Some(owner) = running_elsewhere(ctx, &h) {
            println!(
                "ftvmm: vm {vm}: runs on {owner} (generation {}); not starting here while it does",
                h.generation
            );
            return Err(StartError::RunningElsewhere {
                generation: h.generation,
                owner,
            });
        }
        let next = h.generation + 1;
        (ctx.acquiring)(next);
        let waiting = |why: &str| {
            println!("ftvmm: vm {vm}: storage does not answer ({why}); waiting to start")
        };
        match fence::acquire_until(
            ctx.fencing,
            vm,
            next,
            ctx.config_generation,
            ctx.cancel,
            waiting,
        )
        .map(|a| a.decision)
        {
            Some(Decision::Won) => {
                println!("ftvmm: vm {vm}: won generation {next} to start");
                return Ok(next);
            }
            Some(Decision::Lost { owner }) => {
                return Err(StartError::StartedElsewhere {
                    generation: next,
                    owner,
                })
            }
            // A later generation appeared meanwhile: look again.
            Some(Decision::Superseded { .. }) => continue,
            None => return Err(StartError::Cancelled),
        }
    }
}

/// The previous owner, if it is another host whose lease is live and that
/// publishes `vm` as running.
fn running_elsewhere(ctx: &StartCtx<'_>, h: &Highest) -> Option<String> {
    let owner = h.owner.as_deref().filter(|o| *o != ctx.host)?;
    let leases = fence::leases(ctx.fencing).ok()?;
    leases
        .iter()
        .find(|l| l.host == owner && l.live && l.running.iter().any(|v| v == ctx.vm))
        .map(|l| l.host.clone())
}

/// Which live host, other than `host`, publishes that it runs `vm` as the
/// owner of its highest generation (`Ok(None)`: none does).
pub fn runs_elsewhere(fencing: &Path, vm: &str, host: &str) -> Result<Option<String>, String> {
    let h = fence::highest(fencing, vm)?;
    let Some(owner) = h.owner.as_deref().filter(|o| *o != host) else {
        return Ok(None);
    };
    let leases = fence::leases(fencing)?;
    Ok(leases
        .iter()
        .find(|l| l.host == owner && l.live && l.running.iter().any(|v| v == vm))
        .map(|l| l.host.clone()))
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

#[cfg(test)]
#[path = "start_tests.rs"]
mod tests;
