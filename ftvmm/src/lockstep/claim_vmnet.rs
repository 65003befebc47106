//! Whether a Secondary that lost its Primary should race for `g + 1` at
//! once, or give the race a moment to a member that can serve the guest's
//! clients, judged by its own host's reachability on the VM network.
//!
//! The chaos campaign's seed 94 cut the FT network one way (Primary host-b
//! → Secondary host-c) and host-c's VM-network port at the same moment.
//! host-c, hearing nothing from host-b, suspected it after the failure
//! timeout, said bye, raced for the next generation and won it, 155 ms
//! after its suspicion, and went live into its cut VM network; host-b,
//! whose VM network worked, raced on the bye and lost. The clients had no
//! service until the heal (10.3 s, and 13.2 s in the campaign); in the
//! replay where host-b won, the pause was 1.1 s. Fencing decides who wins,
//! and any winner is safe; which one wins decides whether anyone is served.
//!
//! # The rule (threshold `T` = the failure timeout)
//!
//! Only a claiming Secondary (`member::State::Claiming`) asks; a Primary
//! racing after losing its Secondary keeps the VM where it runs and never
//! defers. The evidence is heartbeat's VM-network view, the one the keeper
//! judges by (`respawn/secondary_vmnet.rs`):
//!
//! - **A witness**: a peer heard on FT with a fresh report (from a watch
//!   longer than `T`) that hears some host other than this one on the VM
//!   network: that network works on its side. Without one nothing tells
//!   this host's cut from a dead Primary's silence (two hosts alone look
//!   the same from both sides), so it races at once: a defer would add to
//!   every failover of a two-host cluster.
//! - **Defer**: a witness, and this host has heard no peer on the VM
//!   network for more than `T`. It waits up to [`DEFER_TIMEOUTS`] × `T`
//!   from its claim before asking fencing, looking again every
//!   [`LOOK_MS`]: a Primary that can still serve races on the bye, or at
//!   its own suspicion at most `T` later, and fencing decides within about
//!   another `T`. If nobody took the generation by then (the Primary is
//!   dead too), this host takes it: its clients could not be served by
//!   anyone else either. The VM network coming back ends the wait at once.
//! - **Unsure**: a witness, and this host has heard no peer for more than
//!   `T / 4` (two heartbeats or more missed; heartbeat's
//!   `own_since_heard_ms`) but does not yet count as hearing nobody: the
//!   cut may have come with the FT fault (seed 94's did). It looks again,
//!   for up to `T` from its claim, and then races as it then judges.
//! - **Now**: otherwise (it hears a peer, no witness, or heartbeat cannot
//!   answer).
//!
//! # Why this is safe
//!
//! It only delays an `Acquire`: until fencing decides, outputs stay held
//! and the VM stays stopped, as during any race. No member goes live
//! without winning `g + 1`, so at most one does, whoever asks first.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use config_schema::ctl::VmNetView;

use super::respawn::look::vm_network;
use super::respawn::secondary_vmnet::{judgeable, usable};

/// How many failure timeouts a claim defers to a member that can serve.
pub const DEFER_TIMEOUTS: u64 = 2;

/// How often a deferring claim looks at the VM network again (ms).
pub const LOOK_MS: u64 = 50;

/// What a claiming Secondary does about its race (module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Race at once.
    Now,
    /// Heard no peer for `quiet_ms` (more than `T / 4`, at most `T`) while
    /// a witness reaches the VM network: look again.
    Unsure { quiet_ms: u64 },
    /// Heard no peer for `for_ms` (more than `T`) while `witness` hears
    /// `hears` there: let a member that can serve win first.
    Defer {
        for_ms: u64,
        witness: String,
        hears: Vec<String>,
    },
}

/// Judges `here`'s own VM network for its claim (module doc).
pub fn judge(view: Result<&VmNetView, &str>, here: &str) -> Claim {
    let Ok(view) = judgeable(view, here) else {
        return Claim::Now;
    };
    let t = view.failure_timeout_ms;
    let own = &view.own;
    // `own.quiet_ms` stays 0 while any peer was heard within `T`; the time
    // since the last one heard shows a cut as it begins (seed 94's claim
    // came about `T` after the cut, when `quiet_ms` was often still 0).
    let quiet = if own.hears.is_empty() {
        own.quiet_ms
    } else {
        view.own_since_heard_ms.unwrap_or(0)
    };
    if quiet <= t / 4 {
        return Claim::Now;
    }
    let witness = view.peers.iter().filter(|p| p.host != here).find_map(|p| {
        let hears: Vec<String> = usable(p, t)
            .ok()?
            .hears
            .iter()
            .filter(|h| *h != here)
            .cloned()
            .collect();
        (!hears.is_empty()).then(|| (p.host.clone(), hears))
    });
    let Some((witness, hears)) = witness else {
        return Claim::Now;
    };
    if own.hears.is_empty() && quiet > t {
        Claim::Defer {
            for_ms: quiet,
            witness,
            hears,
        }
    } else {
        Claim::Unsure { quiet_ms: quiet }
    }
}

/// What one look tells the waiting claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ask fencing now; the line to print, if any.
    Race(Option<String>),
    /// Look again after [`LOOK_MS`]; the line to print, if any.
    Wait(Option<String>),
}

/// The claim's wait as a pure state machine over successive looks.
#[derive(Debug)]
pub struct Wait {
    vm: String,
    generation: u64,
    deferring: bool,
}

impl Wait {
    pub fn new(vm: &str, generation: u64) -> Self {
        Wait {
            vm: vm.to_string(),
            generation,
            deferring: false,
        }
    }

    /// The next step after a look that judged `claim`, `waited_ms` after
    /// the claim, under failure timeout `t_ms`.
    pub fn next(&mut self, claim: &Claim, waited_ms: u64, t_ms: u64) -> Next {
        let (vm, g) = (&self.vm, self.generation);
        match claim {
            Claim::Now if self.deferring => Next::Race(Some(format!(
                "ftvmm: vm {vm}: VM network heard again after {waited_ms} ms; racing for \
                 generation {g} now"
            ))),
            Claim::Now => Next::Race(None),
            Claim::Unsure { .. } if waited_ms < t_ms => Next::Wait(None),
            Claim::Unsure { quiet_ms } => Next::Race(Some(format!(
                "ftvmm: vm {vm}: VM network quiet for {quiet_ms} ms, not yet a verdict after \
                 {waited_ms} ms; racing for generation {g}"
            ))),
            Claim::Defer {
                for_ms,
                witness,
                hears,
            } => {
                let limit = DEFER_TIMEOUTS * t_ms;
                if waited_ms >= limit {
                    return Next::Race(Some(format!(
                        "ftvmm: vm {vm}: nobody took generation {g} within {waited_ms} ms; \
                         racing for it without a VM network"
                    )));
                }
                if self.deferring {
                    return Next::Wait(None);
                }
                self.deferring = true;
                Next::Wait(Some(format!(
                    "ftvmm: vm {vm}: this host hears no peer on the VM network (for {for_ms} \
                     ms) while {witness} hears {}; deferring the race for generation {g} by up \
                     to {limit} ms so a member that can serve wins it",
                    hears.join(", ")
                )))
            }
        }
    }
}

/// Waits as the claim of `generation` should before asking fencing
/// (module doc), asking this host's heartbeat at `heartbeat`; `false` if
/// `cancel` was set meanwhile.
pub fn wait_before_claim(
    heartbeat: &Path,
    (vm, here): (&str, &str),
    generation: u64,
    cancel: &AtomicBool,
) -> bool {
    let start = Instant::now();
    let mut wait = Wait::new(vm, generation);
    loop {
        if cancel.load(Ordering::SeqCst) {
            return false;
        }
        let view = vm_network(heartbeat);
        let claim = judge(view.as_ref().map_err(|e| e.as_str()), here);
        let t_ms = view.as_ref().map_or(0, |v| v.failure_timeout_ms);
        let waited_ms = start.elapsed().as_millis() as u64;
        match wait.next(&claim, waited_ms, t_ms) {
            Next::Race(line) => {
                if let Some(l) = line {
                    println!("{l}");
                }
                tracing::info!(vm, generation, waited_ms, ?claim, "claim: racing");
                return true;
            }
            Next::Wait(line) => {
                if let Some(l) = line {
                    println!("{l}");
                }
                std::thread::sleep(Duration::from_millis(LOOK_MS));
            }
        }
    }
}

#[cfg(test)]
#[path = "claim_vmnet_tests.rs"]
mod tests;
