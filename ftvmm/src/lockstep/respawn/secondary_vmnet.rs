//! Whether a paired Secondary could serve after a take-over, judged by its
//! host's reachability on the VM network (pure; the keeper performs it,
//! `keeper.rs`).
//!
//! A Secondary that goes live serves the guest's clients over its host's VM
//! network. If that host has lost the VM network (its NIC, cable or switch
//! port), a take-over wins the generation and then serves into nothing: the
//! chaos campaign's seed 62 cut host-b's VM-network port, killed host-a,
//! and host-b went live 91 ms after suspicion, into the cut, so the
//! client's pause lasted 17.8 s, until the heal, while status had said
//! `protected` all along. Go-live is unchanged by this (failure detection
//! is the FT network's alone); what changes is that status says so.
//!
//! # The evidence: heartbeats on the VM network, reported over FT
//!
//! Every host's heartbeat daemon also exchanges its authenticated
//! heartbeats with each peer at the peer's `hosts[].vm.addr` (same rules as
//! on FT: replay checks, echo, freshness; its own view, never suspicion),
//! and puts in every FT heartbeat which peers it hears there, how long it
//! has listened there (`watch`), and how long since it last heard any peer
//! there (`quiet`). This host's heartbeat answers `VmNetwork` with its own
//! reachability and each peer's last report (`heartbeat/src/packet.rs`,
//! `VmReport`). No message between the pair's members is needed.
//!
//! # The rule (threshold `T` = the failure timeout)
//!
//! Nothing is judged (the last verdict stays) unless this host has listened
//! on the VM network for more than `T` (just booted: it may simply not have
//! heard anyone yet), and the Secondary's host is heard on FT now, with a
//! report younger than `T` from a watch longer than `T`.
//!
//! - The Secondary's host hears some peer on the VM network: it reaches it.
//! - It has heard none for more than `T` (N ms), and this host hears some
//!   third host there: this host's side works, and the third host reaches
//!   this one but not the Secondary's, so the Secondary's VM network is cut
//!   (a host that hears nobody either receives nothing or, through the
//!   echo, is answered by nobody): `secondary <h> has no VM network (no
//!   peer heard on it for N ms); it could not serve after a take-over`.
//! - It hears none and this host hears no third host (with two hosts up, a
//!   cut between them looks the same from both sides; that this host may
//!   still hear the Secondary's host for a moment proves nothing about the
//!   other direction): `the VM network between <here> and <h> carries no
//!   heartbeat (for N ms; either side may be cut)`. Not protected either
//!   way: if the Secondary's side is cut, a take-over serves nobody; if
//!   this host's is, the VM serves nobody now, and no take-over comes (FT
//!   is whole).
//!
//! A VM witness (`cluster.vm_witness`) counts as a third host here:
//! heartbeat lists it as `witness:<ip>` among what a host hears (an echo
//! reply within `T`), so with two hosts a Primary that hears the witness
//! while its Secondary's host hears nobody says `Cut`, not `NoneBetween`.
//!
//! Why `T`: a host's "hears" is "an accepted VM-network heartbeat within
//! `T`", the same bound FT suspicion uses, so a lost datagram or two is
//! never a verdict; the report rides the next FT heartbeat, so the verdict
//! comes about one interval (plus the keeper's look) after the Secondary's
//! host itself stopped hearing anyone, and clears as soon as it hears one.

use config_schema::ctl::{PeerVmReach, VmNetView};

/// What the VM-network view says about the Secondary's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondaryVmNet {
    /// It hears a peer on the VM network (or has not been quiet for `T`).
    Reaches,
    /// It has heard no peer there for `for_ms` (more than `T`), and this
    /// host hears a third one: its side is cut.
    Cut { for_ms: u64 },
    /// It has heard no peer there for `for_ms`, and this host hears no
    /// third one: either side may be cut.
    NoneBetween { for_ms: u64 },
    /// Nothing to judge by, and why (keep the last verdict).
    Unknown(String),
}

/// Judges `secondary`'s VM network from `here`'s heartbeat view (module doc).
pub fn judge(view: Result<&VmNetView, &str>, here: &str, secondary: &str) -> SecondaryVmNet {
    let view = match judgeable(view, here) {
        Ok(v) => v,
        Err(why) => return SecondaryVmNet::Unknown(why),
    };
    let t = view.failure_timeout_ms;
    let Some(peer) = view.peers.iter().find(|p| p.host == secondary) else {
        return SecondaryVmNet::Unknown(format!("{secondary} is not a peer of {here}"));
    };
    let reach = match usable(peer, t) {
        Ok(r) => r,
        Err(why) => return SecondaryVmNet::Unknown(why),
    };
    if !reach.hears.is_empty() || reach.quiet_ms <= t {
        return SecondaryVmNet::Reaches;
    }
    let for_ms = reach.quiet_ms;
    // Only a third host heard here shows that this host's side works: that
    // it hears the Secondary's host says nothing about who drops the
    // other direction.
    if view.own.hears.iter().any(|h| h != secondary) {
        SecondaryVmNet::Cut { for_ms }
    } else {
        SecondaryVmNet::NoneBetween { for_ms }
    }
}

/// The view, if anything may be judged by it: heartbeat answered, and
/// `here` has listened on the VM network for longer than the failure
/// timeout (just booted, it may simply not have heard anyone yet).
pub(crate) fn judgeable<'v>(
    view: Result<&'v VmNetView, &str>,
    here: &str,
) -> Result<&'v VmNetView, String> {
    let view = view.map_err(|e| format!("cannot ask heartbeat: {e}"))?;
    match view.own.watch_ms {
        Some(w) if w > view.failure_timeout_ms => Ok(view),
        w => Err(format!(
            "{here}'s own VM-network view is too young (listening for {w:?} ms)"
        )),
    }
}

/// The peer's report, if it may be judged by (heard on FT, fresh, from a
/// watch longer than `t`).
pub(crate) fn usable(p: &PeerVmReach, t: u64) -> Result<&config_schema::ctl::VmReach, String> {
    let host = &p.host;
    if !p.ft_alive {
        return Err(format!("{host} is not heard on the FT network"));
    }
    let (Some(r), Some(age)) = (&p.reach, p.age_ms) else {
        return Err(format!("{host} has reported no VM-network view"));
    };
    if age > t {
        return Err(format!("{host}'s VM-network report is {age} ms old"));
    }
    match r.watch_ms {
        Some(w) if w > t => Ok(r),
        w => Err(format!(
            "{host}'s VM-network view is too young (listening for {w:?} ms)"
        )),
    }
}

/// The reason a pair is not protected, by the verdict.
pub fn reason(here: &str, peer: &str, v: &SecondaryVmNet) -> Option<String> {
    match v {
        SecondaryVmNet::Cut { for_ms } => Some(format!(
            "secondary {peer} has no VM network (no peer heard on it for {for_ms} ms); \
             it could not serve after a take-over"
        )),
        SecondaryVmNet::NoneBetween { for_ms } => Some(format!(
            "the VM network between {here} and {peer} carries no heartbeat \
             (for {for_ms} ms; either side may be cut)"
        )),
        SecondaryVmNet::Reaches | SecondaryVmNet::Unknown(_) => None,
    }
}

/// One look's result (the storage judgement's type: both say the same two
/// things, a status reason and a console line on a change).
pub use super::secondary_lease::Look;

/// The verdict over time for one VM's pair: a console line on each change
/// (from reaching to cut or none-between, between those two, and back).
///
/// Invariant: `last` is `Some` only while the last judged verdict about
/// `last.peer` was `Cut` or `NoneBetween` (or unknown since).
#[derive(Debug)]
pub struct Watch {
    vm: String,
    here: String,
    last: Option<Last>,
}

#[derive(Debug)]
struct Last {
    peer: String,
    verdict: SecondaryVmNet,
}

impl Last {
    fn for_ms(&self) -> u64 {
        match self.verdict {
            SecondaryVmNet::Cut { for_ms } | SecondaryVmNet::NoneBetween { for_ms } => for_ms,
            _ => unreachable!("only Cut and NoneBetween are kept"),
        }
    }
}

/// Same kind of verdict (the figure aside).
fn same_kind(a: &SecondaryVmNet, b: &SecondaryVmNet) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl Watch {
    pub fn new(vm: &str, here: &str) -> Self {
        Watch {
            vm: vm.to_string(),
            here: here.to_string(),
            last: None,
        }
    }

    /// The member is paired with `peer`, whose VM network is `v`.
    pub fn on_vmnet(&mut self, peer: &str, v: SecondaryVmNet) -> Look {
        let (vm, here) = (&self.vm, &self.here);
        if self.last.as_ref().is_some_and(|l| l.peer != peer) {
            self.last = None;
        }
        match (v, &mut self.last) {
            (v @ (SecondaryVmNet::Cut { .. } | SecondaryVmNet::NoneBetween { .. }), last) => {
                let r = reason(here, peer, &v).expect("a verdict has a reason");
                let changed = last.as_ref().is_none_or(|l| !same_kind(&l.verdict, &v));
                *last = Some(Last {
                    peer: peer.to_string(),
                    verdict: v,
                });
                Look {
                    say: changed.then(|| format!("ftvmm: vm {vm}: not protected: {r}")),
                    not_protected: Some(r),
                }
            }
            (SecondaryVmNet::Reaches, Some(l)) => {
                let line = format!(
                    "ftvmm: vm {vm}: protected: secondary {peer} hears its peers on the VM \
                     network again (it had heard none for at least {} ms)",
                    l.for_ms()
                );
                self.last = None;
                Look {
                    not_protected: None,
                    say: Some(line),
                }
            }
            (SecondaryVmNet::Unknown(_), Some(l)) => Look {
                not_protected: reason(here, peer, &l.verdict),
                say: None,
            },
            (SecondaryVmNet::Reaches | SecondaryVmNet::Unknown(_), None) => Look::default(),
        }
    }

    /// The member is not paired: no verdict (a later pair starts afresh).
    pub fn unpaired(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
#[path = "secondary_vmnet_tests.rs"]
mod tests;
