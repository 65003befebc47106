//! Starting a checkpoint VM (`replication = "checkpoint"`) in the daemon:
//! the same slot, placement, members and stop as a lockstep VM, with the
//! checkpoint member's run (`checkpoint/daemon_member.rs`) on the VM's
//! thread.
//!
//! Rules:
//! - Everything that can refuse a start is checked before the thread runs,
//!   so `StartVm` answers with it: the disk region and TAP, and the image
//!   on the shared device against the config's pins (one line naming VM,
//!   part, device, offset and both hashes).
//! - Placement as for lockstep: the configured Primary and Secondary, and
//!   on every other host the VM's affinity allows a standby that waits for
//!   a running Primary's join (respawn, `checkpoint/respawn.rs`); a host the
//!   config does not allow refuses the start.
//! - A member that ends here without being stopped (lost a race, found the
//!   VM running elsewhere, handed over, its guest ended) leaves the VM
//!   `exited` with the member's last state, and the host then waits as a
//!   standby for a join, as lockstep's VM thread does; a stop ends the
//!   thread. A standby whose join failed listens again.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::{ConsolePrefix, ManagerError, Slot, State, VmManager};
use crate::checkpoint::daemon_member::{run_checkpoint_member, MemberCtx};
use crate::checkpoint::daemon_spec::{checkpoint_spec, CheckpointSpec};
use crate::checkpoint::daemon_status::Figures;
use crate::checkpoint::driver::SocketFencing;
use crate::lockstep::placement::Role;
use crate::lockstep::spec::{PairError, PairHandle};

impl VmManager {
    /// The spec checkpoint VM `name` runs from here; reads and checks its
    /// image on the shared device.
    pub fn checkpoint_spec_for(&self, name: &str) -> Result<CheckpointSpec, ManagerError> {
        let vm = self.find(name)?;
        let dev = self.host_devices(vm)?;
        let mut spec = checkpoint_spec(
            &self.config,
            vm,
            self.pair_identity(name),
            dev,
            self.members.grant(),
            self.members.timing(),
        )
        .map_err(|e| ManagerError::Start {
            name: name.into(),
            reason: e.to_string(),
        })?;
        spec.pair.fencing_socket = self.fencing_socket.clone();
        spec.pair.heartbeat_socket = self.heartbeat_socket.clone();
        spec.pair.applied_config_generation = self.applied_generation;
        spec.pair.live_affinity = self.members.affinity();
        if let Some(boot) = &self.checkpoint_boot {
            spec.boot = Arc::clone(boot);
            spec.linux.tap = None;
        }
        #[cfg(test)]
        {
            spec.join_cuts = Arc::clone(&self.checkpoint_join_cuts);
        }
        Ok(spec)
    }

    /// Tests: load checkpoint guests with `boot` instead of the Linux boot
    /// protocol (this machine's KVM cannot boot a stock kernel), without a
    /// NIC (two hosts in one process would share one TAP name).
    #[cfg(test)]
    pub(crate) fn set_checkpoint_boot(&mut self, boot: crate::checkpoint::daemon_spec::Boot) {
        self.checkpoint_boot = Some(boot);
    }

    /// Tests: the next `n` joins of a new Secondary on this host cut their
    /// link after the full epoch's first piece.
    #[cfg(test)]
    pub(crate) fn cut_checkpoint_joins(&self, n: u32) {
        self.checkpoint_join_cuts
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts checkpoint VM `name` (module doc); the caller checked that it
    /// is not running and is powered on.
    pub(super) fn start_checkpoint(
        &mut self,
        name: &str,
        role: Option<Role>,
    ) -> Result<(), ManagerError> {
        let vm_cfg = self.find(name)?.clone();
        let role = role.unwrap_or_else(|| self.role_now(&vm_cfg));
        if role == Role::None {
            return Err(ManagerError::NotInMode {
                name: name.into(),
                mode: vm_cfg.replication.name(),
                what: "the config does not allow it on this host",
            });
        }
        let spec = self.checkpoint_spec_for(name)?;
        let figures = Figures::new(spec.epoch, spec.linux.vcpus);
        let slot = Slot {
            pair: Arc::new(PairHandle::for_vm(name)),
            cancel: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(State::Starting)),
            handle: Arc::new(Mutex::new(None)),
            progress: Arc::new(Mutex::new(None)),
            figures: Some(Arc::clone(&figures)),
            thread: None,
        };
        let fencing_slot = self.know_slot(name);
        self.members
            .insert(name, fencing_slot, Arc::clone(&slot.pair));
        let (state, pair, cancel) = (
            Arc::clone(&slot.state),
            Arc::clone(&slot.pair),
            Arc::clone(&slot.cancel),
        );
        let fencing = Arc::new(
            SocketFencing::new(self.fencing_socket.clone(), self.applied_generation)
                .with_claim_view(self.heartbeat_socket.clone(), &self.config.host_name),
        );
        let (rc, vm_name) = (self.config.clone(), name.to_string());
        let affinity = self.members.affinity();
        let thread = std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || {
                let mut role = role;
                loop {
                    // Each run places by the affinity in force when it starts.
                    let rc = affinity.apply(&rc);
                    let vm_cfg = super::vm_of(&rc, &vm_cfg);
                    let ctx = MemberCtx {
                        rc: &rc,
                        vm: &vm_cfg,
                        handle: &pair,
                        stop: &cancel,
                        figures: &figures,
                        fencing: Arc::clone(&fencing),
                    };
                    let console = Box::new(ConsolePrefix::new(&vm_name));
                    let st = Arc::clone(&state);
                    let running =
                        move || *st.lock().unwrap_or_else(|p| p.into_inner()) = State::Running;
                    figures.reset();
                    let end = run_checkpoint_member(&ctx, &role, spec.clone(), console, running);
                    *state.lock().unwrap_or_else(|p| p.into_inner()) = ended(&vm_name, end);
                    match super::next_role(&affinity.apply(&rc), &vm_cfg, &role, &cancel) {
                        Some(next) => role = next,
                        None => break,
                    }
                }
            })
            .map_err(|e| ManagerError::Start {
                name: name.into(),
                reason: format!("cannot spawn VM thread: {e}"),
            })?;
        self.install(name, slot, thread);
        println!(
            "ftvmm: VM {name} starting (checkpoint, {} vCPUs, {} ms epochs)",
            figures_vcpus(self, name),
            self.find(name)?
                .epoch_ms
                .unwrap_or(config_schema::DEFAULT_EPOCH_MS)
        );
        Ok(())
    }
}

fn figures_vcpus(m: &VmManager, name: &str) -> u32 {
    m.find(name).map_or(0, |v| v.vcpus)
}

/// The VM's state once its member's run ended.
fn ended(
    vm: &str,
    end: Result<crate::checkpoint::daemon_member::CheckpointEnd, PairError>,
) -> State {
    match end {
        Ok(end) => {
            println!("ftvmm: VM {vm} stopped: checkpoint member {}", end.member);
            State::Exited(end.member.to_string())
        }
        Err(PairError::RunningElsewhere { owner }) => State::Exited(format!("runs on {owner}")),
        Err(PairError::Stopped) => State::Exited("stopped before the pair started".into()),
        Err(e) => {
            println!("ftvmm: VM {vm} failed: {e}");
            State::Failed(e.to_string())
        }
    }
}
