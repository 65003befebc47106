//! Whether a paired Primary's own host still serves the guest's clients, by
//! its reachability on the VM network, and whether its Secondary's host
//! could serve them instead (pure; the keeper acts on it, `keeper.rs`).
//!
//! The chaos campaign's seed 65 cut the VM-network port of the Primary's
//! host: the FT network, storage and the pair were whole, so nothing failed
//! over, and the clients had no service for 15.5 s, until the heal, while
//! status said `protected`. The Secondary's host, one FT hop away, still
//! reached the clients. When the evidence says exactly that, the Primary
//! hands the VM over to its Secondary (`member.rs`, `Event::LeaveHost`):
//! the same orderly hand-over as after a lost storage path, so the same
//! safety argument holds (outputs held, every record acknowledged, then
//! `Resign`; the Secondary replays to the end and races for `g + 1`
//! through fencing like any go-live).
//!
//! # The evidence (heartbeat's VM-network view, `secondary_vmnet.rs`)
//!
//! A host "hears" a peer there when it accepted a VM-network heartbeat from
//! it within the failure timeout `T`, and heartbeat accepts only a
//! heartbeat that echoes one of its own recent ones: hearing is both
//! directions at once.
//!
//! # The rule
//!
//! Nothing is judged unless this host has listened on the VM network for
//! more than `T`, and while it hears any peer there (or has been quiet for
//! no more than `T`) it serves. Otherwise, quiet for `N > T` ms:
//!
//! - Not judged while a fresh report of any peer still hears this host: it
//!   contradicts this host's silence, for up to a report's age plus `T`
//!   after a real cut (a peer's report lists whom it heard within `T`), or
//!   for good if this host's own view is what is broken (then a hand-over
//!   would cost a pause for nothing).
//! - **Leave**: the Secondary's host is heard on FT with a fresh report
//!   from a watch longer than `T` that hears some host other than this one
//!   there (so its side works, both ways). Two hosts alone can never show
//!   this: each one's silence looks the same from both sides — unless the
//!   config names a VM witness (`cluster.vm_witness`, an address outside
//!   the appliance that every host pings there): heartbeat lists it as
//!   `witness:<ip>` among what a host hears, so a Secondary that hears the
//!   witness while this host hears nobody (neither peer nor witness) shows
//!   its side works, and this host leaves.
//! - **Stay**: otherwise, with the reason (nobody could serve instead, or
//!   nothing shows who is cut). The VM is unreachable either way; status
//!   says so, and a take-over would not help. Also instead of Leave while
//!   the Secondary's host cannot renew its storage lease
//!   ([`unless_lease_lost`]): it could not win the generation to take over.
//!
//! Why `T`: the same bound FT suspicion uses, so a lost datagram or two is
//! never a verdict, and a hand-over costs no more than a failover's pause.

use config_schema::ctl::VmNetView;

use super::secondary_vmnet::{judgeable, usable};

/// What the VM-network view says about this (the Primary's) host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnVmNet {
    /// It hears a peer on the VM network (or has not been quiet for `T`).
    Serves,
    /// It has heard no peer for `for_ms` (more than `T`) while the
    /// Secondary's host hears `secondary_hears` there: hand over.
    Leave {
        for_ms: u64,
        secondary_hears: Vec<String>,
    },
    /// It has heard no peer for `for_ms`, and nothing shows the Secondary
    /// could serve instead (`why`).
    Stay { for_ms: u64, why: String },
    /// Nothing to judge by, and why.
    Unknown(String),
}

/// Judges `here`'s own VM network, paired with `secondary` (module doc).
pub fn judge(view: Result<&VmNetView, &str>, here: &str, secondary: &str) -> OwnVmNet {
    let view = match judgeable(view, here) {
        Ok(v) => v,
        Err(why) => return OwnVmNet::Unknown(why),
    };
    let t = view.failure_timeout_ms;
    let own = &view.own;
    if !own.hears.is_empty() || own.quiet_ms <= t {
        return OwnVmNet::Serves;
    }
    let for_ms = own.quiet_ms;
    let stay = |why: String| OwnVmNet::Stay { for_ms, why };
    // A fresh report that hears this host contradicts its silence: for up
    // to a report's age plus `T` after a real cut (a peer heard this host
    // within `T` of its report), or for good if this host's own view is
    // what is broken. Either way nothing is judged yet.
    if let Some(p) = view
        .peers
        .iter()
        .find(|p| usable(p, t).is_ok_and(|r| r.hears.iter().any(|h| h == here)))
    {
        return OwnVmNet::Unknown(format!(
            "{} still hears {here} there, although {here} hears nobody",
            p.host
        ));
    }
    let Some(peer) = view.peers.iter().find(|p| p.host == secondary) else {
        return OwnVmNet::Unknown(format!("{secondary} is not a peer of {here}"));
    };
    let reach = match usable(peer, t) {
        Ok(r) => r,
        Err(why) => return stay(why),
    };
    let secondary_hears: Vec<String> = reach.hears.iter().filter(|h| *h != here).cloned().collect();
    if secondary_hears.is_empty() {
        return stay(format!(
            "secondary {secondary} hears no other host there either"
        ));
    }
    OwnVmNet::Leave {
        for_ms,
        secondary_hears,
    }
}

/// `v`, except that a Leave becomes a Stay while the Secondary's host
/// cannot renew its storage lease (`lease_lost`: `secondary_lease.rs`'s
/// reason): it could not win the generation a hand-over needs, so leaving
/// would halt the VM here for nobody. Chaos seed 160: host-b's storage
/// path cut, then host-a's VM network; host-a handed over, host-b could not
/// win, and host-a cold-started the VM from its disk (its memory lost).
/// Staying keeps the VM's state; it serves again when either fault heals.
pub fn unless_lease_lost(v: OwnVmNet, lease_lost: Option<&str>) -> OwnVmNet {
    match (v, lease_lost) {
        (OwnVmNet::Leave { for_ms, .. }, Some(why)) => OwnVmNet::Stay {
            for_ms,
            why: why.to_string(),
        },
        (v, _) => v,
    }
}

/// The reason a pair whose Primary's host hears nobody on the VM network
/// is not protected (whether or not it can leave; with two hosts that
/// does not show whose side is cut, so it says what was seen).
pub fn reason(here: &str, v: &OwnVmNet) -> Option<String> {
    match v {
        OwnVmNet::Leave { for_ms, .. } | OwnVmNet::Stay { for_ms, .. } => Some(format!(
            "primary {here} hears no peer on the VM network (for {for_ms} ms)"
        )),
        OwnVmNet::Serves | OwnVmNet::Unknown(_) => None,
    }
}

/// Why the member leaves (its hand-over lines begin with it).
pub fn leave_why(here: &str, secondary: &str, v: &OwnVmNet) -> Option<String> {
    let OwnVmNet::Leave {
        for_ms,
        secondary_hears,
    } = v
    else {
        return None;
    };
    Some(format!(
        "VM network lost on {here} (no peer heard on it for {for_ms} ms) while secondary \
         {secondary} hears {}",
        secondary_hears.join(", ")
    ))
}

#[cfg(test)]
#[path = "own_vmnet_tests.rs"]
mod tests;
