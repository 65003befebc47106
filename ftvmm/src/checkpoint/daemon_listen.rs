//! The listening side of the daemon's checkpoint member
//! (`daemon_member.rs`): a configured Secondary waiting for its Primary's
//! power-on Hello or a join, a standby waiting for either, and receiving a
//! join's full first epoch (`respawn.rs`).

use std::sync::Arc;

use config_schema::runtime::RuntimeConfig;
use config_schema::validate::allowed_hosts;

use super::super::daemon_spec::CheckpointSpec;
use super::super::keepalive::AliveLink;
use super::super::receiver::Receiver;
use super::super::respawn::{receive_join, JoinTarget};
use super::super::secondary::Staging;
use super::{join_timeout, vm_index, MemberCtx};
use crate::lockstep::channel::{Channel, Hello};
use crate::lockstep::pair::{listen, secondary_handshake, Allowed};
use crate::lockstep::placement::wait::{WaitEnd, Watch};
use crate::lockstep::placement::{ft_ip, key, Role};
use crate::lockstep::respawn::JOIN_BY_TRANSFER;
use crate::lockstep::spec::PairError;
use crate::lockstep::start::{check_join_offer, check_offered_generation};

pub(super) enum Accepted {
    /// Boxed: a channel and a hello are large beside nothing.
    Paired(Box<(Channel, Hello)>),
    /// A running Primary offers this host a join (respawn).
    Join(Box<(Channel, Hello)>),
    PowerOnHere,
}

/// The listening side: a configured Secondary waits for its Primary's
/// power-on Hello or a join; a standby (`Role::Standby`) as well (seed 112).
/// A join is taken only for a VM the config allows here and only from the
/// owner of the generation on disk.
pub(super) fn accept_primary(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    role: &Role,
) -> Result<Accepted, PairError> {
    let rc = ctx.rc;
    let standby = *role == Role::Standby;
    let ip = ft_ip(rc, &rc.host_name)
        .ok_or_else(|| PairError::Protocol("bad ft.addr of this host".into()))?;
    let listener = listen(ip, vm_index(ctx))?;
    let at = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match role {
        Role::Secondary { primary } => println!(
            "ftvmm: vm {}: checkpoint secondary waiting for primary {primary} on {at}",
            ctx.vm.name
        ),
        _ => println!(
            "ftvmm: vm {}: checkpoint standby on {at}: a new secondary here when its primary asks",
            ctx.vm.name
        ),
    }
    let hosts: Vec<(String, [u8; 32])> = (rc.config.hosts.iter())
        .filter_map(|h| Some((h.name.clone(), key(&h.public_key)?)))
        .collect();
    let allowed: Allowed =
        Arc::new(move |k: &[u8; 32]| hosts.iter().find(|(_, pk)| pk == k).map(|(n, _)| n.clone()));
    let fencing = spec.pair.fencing_socket.clone();
    let live = Arc::clone(&spec.pair.live_affinity);
    let verify = |h: &Hello| {
        live.check(&rc.config, &h.vm, &rc.host_name)?;
        if h.start_exit == JOIN_BY_TRANSFER {
            return check_join(rc, ctx.vm, &fencing, h);
        }
        // A standby takes a power-on pair too (lockstep's
        // `placement::run_member`, chaos seed 112).
        check_offered_generation(&fencing, &h.vm, h.generation, &h.primary_host)
    };
    let watch = Watch::listener(rc, ctx.vm, fencing.clone(), ctx.stop, standby);
    let accepted = secondary_handshake(
        &listener,
        &spec.pair.identity,
        allowed,
        &spec.pair.hello,
        &verify,
        &watch.flag,
    );
    match (accepted, watch.end()) {
        (Ok(got), _) if got.1.start_exit == JOIN_BY_TRANSFER => Ok(Accepted::Join(Box::new(got))),
        (Ok(got), _) => Ok(Accepted::Paired(Box::new(got))),
        (Err(PairError::Stopped), Some(WaitEnd::PowerOnHere)) => Ok(Accepted::PowerOnHere),
        (Err(e), _) => Err(e),
    }
}

/// Whether this host takes the join `h` offers: only for a VM the config
/// allows here, and only from the owner of the generation on disk.
pub(crate) fn check_join(
    rc: &RuntimeConfig,
    vm: &config_schema::Vm,
    fencing: &std::path::Path,
    h: &Hello,
) -> Result<(), String> {
    if !allowed_hosts(&rc.config, vm).contains(&rc.host_name.as_str()) {
        return Err(format!(
            "the config does not allow vm {} on {}",
            vm.name, rc.host_name
        ));
    }
    check_join_offer(fencing, &h.vm, h.generation, &h.primary_host)
}

/// A join's full epoch and those after it into staging memory
/// (`respawn.rs`); the link goes on, its keep-alive thread running.
pub(super) fn receive(
    ctx: &MemberCtx<'_>,
    spec: &CheckpointSpec,
    ch: Channel,
) -> Result<(Receiver<Staging>, AliveLink), String> {
    ctx.handle
        .set_role("checkpoint secondary (receiving its first checkpoint)");
    println!(
        "ftvmm: vm {}: receiving a full checkpoint from primary {}; generation {}",
        ctx.vm.name, spec.pair.peer, spec.pair.hello.generation
    );
    let t = JoinTarget {
        vm: &ctx.vm.name,
        primary: &spec.pair.peer,
        generation: spec.pair.hello.generation,
        mem_size: spec.linux.mem_mib << 20,
        fencing: spec.pair.fencing_socket.clone(),
        stop: ctx.stop,
        timeout: join_timeout(spec),
        #[cfg(test)]
        cuts: Some(&spec.join_cuts),
        #[cfg(not(test))]
        cuts: None,
    };
    receive_join(&t, ch)
}
