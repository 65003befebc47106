//! The keeper's look at a paired VM (every `keeper::LOOK_EVERY`): could
//! the Secondary take over (its host's storage lease,
//! `secondary_lease.rs`) and serve (its host's VM network,
//! `secondary_vmnet.rs`), and does this host still serve (its own VM
//! network, `own_vmnet.rs`)? The verdicts over time, their console lines,
//! the reason status shows, and whether the member should leave this host.

use std::path::Path;

use config_schema::ctl::{self, Request, Response};
use config_schema::runtime::RuntimeConfig;

use super::own_vmnet::{self, OwnVmNet};
use super::secondary_lease;
use super::secondary_vmnet;
use crate::lockstep::spec::PairHandle;

/// The verdicts about the pair over time: the Secondary's storage lease,
/// its host's VM network, and this host's own.
#[derive(Debug)]
pub struct SecondaryWatch {
    pub lease: secondary_lease::Watch,
    pub vmnet: secondary_vmnet::Watch,
    /// This host's own VM network at the last judged look (a console line
    /// when it must stay cut, and when it hears its peers again).
    own: Own,
    vm: String,
}

impl SecondaryWatch {
    pub fn new(vm: &str, here: &str) -> Self {
        SecondaryWatch {
            lease: secondary_lease::Watch::new(vm),
            vmnet: secondary_vmnet::Watch::new(vm, here),
            own: Own::Serves,
            vm: vm.to_string(),
        }
    }

    /// The member is not paired: no verdict.
    pub fn unpaired(&mut self) {
        self.lease.unpaired();
        self.vmnet.unpaired();
        self.own = Own::Serves;
    }
}

/// The kind of the last [`OwnVmNet`] verdict judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    Serves,
    Leave,
    Stay,
}

/// What one look at a pair found.
#[derive(Debug, Default)]
pub struct Looked {
    /// Console lines of the changes.
    pub lines: Vec<String>,
    /// This host cannot serve the VM and the Secondary's could: why (the
    /// member's `LeaveHost`).
    pub leave: Option<String>,
    /// The Secondary's host (empty: not known yet).
    pub peer: String,
    /// Nothing found against the pair (the Secondary could take over and
    /// serve, this host serves): a planned hand-over may go ahead.
    pub fit: bool,
}

/// Where the keeper asks: fencing's socket (the lease table) and
/// heartbeat's (the VM-network view).
pub struct Daemons<'a> {
    pub fencing: &'a Path,
    pub heartbeat: &'a Path,
}

/// This host's heartbeat's VM-network view.
pub fn vm_network(heartbeat: &Path) -> Result<ctl::VmNetView, String> {
    match ctl::query(heartbeat, &Request::VmNetwork) {
        Ok(Response::VmNetwork { view }) => Ok(view),
        Ok(Response::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// While paired: whether the Secondary's host renews its storage lease, in
/// the lease table of fencing (`secondary_lease.rs`), and whether it hears
/// its peers on the VM network, in heartbeat's view (`secondary_vmnet.rs`).
/// Also whether this host itself still reaches the VM network
/// (`own_vmnet.rs`). Sets the verdict status shows (every reason that
/// holds); returns the console lines of the changes and, when this host
/// should hand the VM over, why.
pub fn look_at_pair(
    handle: &PairHandle,
    daemons: &Daemons<'_>,
    rc: &RuntimeConfig,
    watch: &mut SecondaryWatch,
) -> Looked {
    let peer = handle
        .hosts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .1
        .clone();
    if peer.is_empty() {
        return Looked::default();
    }
    let table = crate::lockstep::fence::lease_table(daemons.fencing);
    let lease = secondary_lease::judge(
        table.as_ref().map_err(|e| e.as_str()),
        &rc.host_name,
        &peer,
        secondary_lease::stale_after_ms(&rc.config.timing),
    );
    let lease = watch.lease.on_lease(&peer, lease);
    let view = vm_network(daemons.heartbeat);
    let view = view.as_ref().map_err(|e| e.as_str());
    let here = &rc.host_name;
    let own = own_vmnet::judge(view, here, &peer);
    let own = own_vmnet::unless_lease_lost(own, lease.not_protected.as_deref());
    let vmnet = secondary_vmnet::judge(view, here, &peer);
    let vmnet = watch.vmnet.on_vmnet(&peer, vmnet);
    let own_reason = own_vmnet::reason(here, &own);
    let reasons: Vec<String> = [lease.not_protected, vmnet.not_protected, own_reason.clone()]
        .into_iter()
        .flatten()
        .collect();
    handle.set_secondary_unfit(&peer, (!reasons.is_empty()).then(|| reasons.join("; ")));
    let mut lines: Vec<String> = [lease.say, vmnet.say].into_iter().flatten().collect();
    let vm = &watch.vm;
    let leave = own_vmnet::leave_why(here, &peer, &own);
    // The member says why it leaves; staying is said here, once.
    let kind = match &own {
        OwnVmNet::Serves => Own::Serves,
        OwnVmNet::Leave { .. } => Own::Leave,
        OwnVmNet::Stay { .. } => Own::Stay,
        OwnVmNet::Unknown(_) => watch.own,
    };
    match (&own, watch.own) {
        (OwnVmNet::Stay { why, .. }, Own::Serves | Own::Leave) => lines.push(format!(
            "ftvmm: vm {vm}: not protected: {}; it stays here: {why}",
            own_reason.as_deref().unwrap_or_default()
        )),
        (OwnVmNet::Serves, Own::Leave | Own::Stay) => lines.push(format!(
            "ftvmm: vm {vm}: {here} hears its peers on the VM network again"
        )),
        _ => {}
    }
    watch.own = kind;
    let fit = reasons.is_empty();
    Looked {
        lines,
        leave,
        peer,
        fit,
    }
}
