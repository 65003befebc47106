//! Whether a paired Secondary could take over now, judged by its host's
//! storage lease (pure; the keeper performs it, `keeper.rs`).
//!
//! A Secondary takes over by winning the next generation through Disk Paxos
//! on the shared device. While its host cannot reach that device (its path
//! is cut or severed) it cannot win, and its own fencing agent withholds its
//! output grant: if the Primary died then, the VM would stay down until the
//! Secondary's storage returned (safe: `acquire_until` keeps asking; found
//! by the chaos campaign, seed 39: about 30 s). "Protected" promises that a
//! host failure now is survived, so such a pair is shown `not protected`,
//! with the reason, until the lease moves again. The keeper does not replace
//! such a Secondary (a later policy decision).
//!
//! # The evidence: the delta leases, in this host's view
//!
//! Every host renews its lease block every `R` (`fencing/src/lease.rs`);
//! this host's fencing agent reads the others' blocks once per own renewal,
//! also every `R`, and `Request::Leases` reports for each host the time
//! since it last saw that host's counter move (`LeaseView::last_renewal_ms`,
//! on this host's clock). No message between the pair's members is needed.
//!
//! # The threshold: `H = 2R`, the Secondary's own hold point
//!
//! A host withdraws its own grant (`fencing: lease renewal failing for … ms;
//! asking ftvmm to hold output`) once its last successful renewal was
//! *issued* `H = 2R` or more ago (`timing_live::lease_hold_after_ms`). This
//! host saw that renewal's counter at the earliest when the write landed,
//! after its issue, so `last_renewal_ms` never exceeds the Secondary's own
//! age of its lease. Hence:
//!
//! - `last_renewal_ms > H` here implies the Secondary's host is past its own
//!   hold point: it says itself that its storage lease is failing. No false
//!   "cannot renew" for a Secondary that trusts its own lease.
//! - A healthy Secondary renews every `R` and is read every `R`, so its
//!   counter is seen standing still for about `R` (plus I/O time); `H = 2R`
//!   leaves another `R` for jitter before a healthy lease could be misread.
//! - The verdict comes at most about one read period `R` (plus the keeper's
//!   [`super::keeper::LOOK_EVERY`]) after the Secondary's own failing line,
//!   and clears one read after its lease moves again.
//!
//! `R` is derived from the heartbeat interval and never changes live
//! (`config_schema::timing_live`), so the keeper's config gives the same `R`
//! the agents booted with. With the example config (`hb` = 100 ms): R =
//! 500 ms, H = 1 s.
//!
//! When this host's own reading is not current either, every other
//! counter stands still in its view whatever the others do (lease.rs: "do
//! not take a lease that went stale while the reader could not read as
//! proof"): then nothing is judged and the last verdict stays, as it does
//! when the agent does not answer. "Current" is the agent's last *complete*
//! renewal (its own write and every other lease read,
//! `Response::Leases::renewal_complete_ms`) within `H`, the point where this
//! host's own grant is withdrawn too; an agent without that field is judged
//! by its own lease's write alone.

use config_schema::ctl::LeaseView;
use config_schema::Timing;

use crate::lockstep::fence::LeaseTable;

/// After how many ms without a seen renewal the Secondary is called unable
/// to take over: `H = 2R` (module doc).
pub fn stale_after_ms(t: &Timing) -> u64 {
    config_schema::timing_live::lease_hold_after_ms(t.heartbeat_interval_ms)
}

/// What the lease table says about the Secondary's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondaryLease {
    /// Seen renewing within the threshold.
    Renewing,
    /// Not seen renewing for `for_ms`, more than the threshold.
    Stale { for_ms: u64 },
    /// Nothing to judge by, and why (keep the last verdict).
    Unknown(String),
}

/// Judges `secondary`'s lease from `here`'s lease table (module doc).
pub fn judge(
    table: Result<&LeaseTable, &str>,
    here: &str,
    secondary: &str,
    stale_after_ms: u64,
) -> SecondaryLease {
    let table = match table {
        Ok(t) => t,
        Err(e) => return SecondaryLease::Unknown(format!("cannot read the leases: {e}")),
    };
    let seen = |host: &str| {
        table
            .leases
            .iter()
            .find(|l: &&LeaseView| l.host == host)
            .map(|l| l.last_renewal_ms)
    };
    let own = table.renewal_complete_ms.or_else(|| seen(here).flatten());
    if own.is_none_or(|ms| ms > stale_after_ms) {
        return SecondaryLease::Unknown(format!(
            "{here}'s own reading of the leases is not current"
        ));
    }
    match seen(secondary) {
        None => SecondaryLease::Unknown(format!("no lease of {secondary} in the table")),
        // Never seen moving: this host's agent has not watched long enough.
        Some(None) => SecondaryLease::Unknown(format!("{secondary}'s lease not seen moving yet")),
        Some(Some(ms)) if ms > stale_after_ms => SecondaryLease::Stale { for_ms: ms },
        Some(Some(_)) => SecondaryLease::Renewing,
    }
}

/// The reason a pair with `peer` is not protected, its lease stale `for_ms`.
pub fn reason(peer: &str, for_ms: u64) -> String {
    format!(
        "secondary {peer} cannot renew its storage lease (for {for_ms} ms); it could not take over"
    )
}

/// One look's result: what status shows and what the console says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Look {
    /// `Some(reason)`: the pair is `not protected: <reason>`; `None`:
    /// protected as far as this judgement shows (the lease here; the VM
    /// network in `secondary_vmnet.rs`, which uses this type too).
    pub not_protected: Option<String>,
    /// A console line, on a change only.
    pub say: Option<String>,
}

/// The verdict over time for one VM's pair: a console line on each change.
///
/// Invariant: `stale` is `Some` only while the last judged lease of
/// `stale.peer` was [`SecondaryLease::Stale`] (or unknown since).
#[derive(Debug)]
pub struct Watch {
    vm: String,
    stale: Option<Stale>,
}

#[derive(Debug)]
struct Stale {
    peer: String,
    for_ms: u64,
}

impl Watch {
    pub fn new(vm: &str) -> Self {
        Watch {
            vm: vm.to_string(),
            stale: None,
        }
    }

    /// The member is paired with `peer`, whose lease is `lease`.
    pub fn on_lease(&mut self, peer: &str, lease: SecondaryLease) -> Look {
        let vm = &self.vm;
        // A verdict about another Secondary is void.
        if self.stale.as_ref().is_some_and(|s| s.peer != peer) {
            self.stale = None;
        }
        match (lease, &mut self.stale) {
            // Protected -> not protected.
            (SecondaryLease::Stale { for_ms }, None) => {
                let r = reason(peer, for_ms);
                self.stale = Some(Stale {
                    peer: peer.to_string(),
                    for_ms,
                });
                Look {
                    say: Some(format!("ftvmm: vm {vm}: not protected: {r}")),
                    not_protected: Some(r),
                }
            }
            // Not protected, still.
            (SecondaryLease::Stale { for_ms }, Some(s)) => {
                s.for_ms = for_ms;
                Look {
                    not_protected: Some(reason(peer, for_ms)),
                    say: None,
                }
            }
            // Not protected -> protected.
            (SecondaryLease::Renewing, Some(s)) => {
                let line = format!(
                    "ftvmm: vm {vm}: protected: secondary {peer} renews its storage lease again \
                     (it had not for at least {} ms)",
                    s.for_ms
                );
                self.stale = None;
                Look {
                    not_protected: None,
                    say: Some(line),
                }
            }
            (SecondaryLease::Unknown(_), Some(s)) => Look {
                not_protected: Some(reason(peer, s.for_ms)),
                say: None,
            },
            (SecondaryLease::Renewing | SecondaryLease::Unknown(_), None) => Look::default(),
        }
    }

    /// The member is not paired: no verdict (a later pair starts afresh).
    pub fn unpaired(&mut self) {
        self.stale = None;
    }
}

#[cfg(test)]
#[path = "secondary_lease_tests.rs"]
mod tests;
