//! A Primary with no Secondary from the start: a VM whose affinity rule
//! allows one host. It still runs under a won generation, behind the host's
//! output grant, and halts when deposed (docs/design.md §1): it is alone,
//! not unguarded.

use std::sync::Arc;

use super::{mark_started, new_gate, start_live};
use crate::io::Inputs;
use crate::io::OutputEvent;
use crate::live::ConsoleSink;
use crate::lockstep::driver::{Driver, Resources};
use crate::lockstep::member::{Member, State};
use crate::lockstep::primary::{Gate, PrimaryInputs, PrimaryOutputs};
use crate::lockstep::spec::{PairError, PairHandle, PairSpec};
use crate::runner::{build_vm, open_backends, save_snapshot, RunReport};
use crate::vm::{Progress, VmHandle};

/// Runs `spec`'s VM alone in generation `spec.hello.generation` (booted, or
/// restored from `spec.vm.restore`) until it stops.
pub fn run_alone(
    spec: &PairSpec,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
) -> Result<(RunReport, State), PairError> {
    let vs = &spec.vm;
    let (disk, tap) = open_backends(vs)?;
    let mut vm = build_vm(vs, disk.as_ref().map(|d| d.sectors()), tap.is_some())?;
    let mut live = start_live(spec, disk, tap, console, &vm)?;
    let n0 = vm.exit_index();
    // A restored VM: re-arm the timer as the PIT is programmed, and issue
    // again the I/O whose completions the old process never delivered.
    let reissue = if vs.restore.is_some() {
        live.inputs.program_timer(n0, vm.devices().timer_program());
        vm.devices().in_flight_block_requests(vm.memory())
    } else {
        Vec::new()
    };
    let crate::live::Live {
        inputs,
        outputs,
        backends,
    } = live;
    let log = new_gate(spec, Box::new(outputs), Gate::Held);
    super::stop_on_reset(&backends, &vm, &log);
    *handle.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&log));
    mark_started(handle, spec.hello.generation);
    let member = Member::primary(
        &spec.hello.vm,
        "",
        spec.hello.generation,
        false,
        spec.failure_timeout.as_millis() as u64,
    );
    let res = Resources {
        log: Some(Arc::clone(&log)),
        queue: None,
        link: None,
        vm: vm.handle(),
    };
    let driver = Driver::start(Driver::prepare(), member, spec, handle, res);
    let mut out = PrimaryOutputs(Arc::clone(&log));
    for req in reissue {
        crate::io::Outputs::emit(&mut out, n0, OutputEvent::Block(req));
    }
    on_start(vm.handle(), vm.progress());
    let started = std::time::Instant::now();
    // Recorded (nothing while alone) so a Secondary can join later.
    let mut inputs = PrimaryInputs::new(inputs, Arc::clone(&log))
        .with_vm(vm.handle())
        .with_pause_point(Arc::clone(&handle.pause));
    let _digests = super::DigestForward::start(handle, inputs.digest_request());
    let outcome = super::run_with_digests(
        &mut vm,
        &spec.hello.vm,
        "primary",
        &mut inputs,
        &mut out,
        Some(&handle.pause),
        |p| p.take_pause(),
    );
    let secs = started.elapsed().as_secs_f64();
    // A Secondary that joined since (respawn) takes over by hand-over.
    super::hand_over_at_end(&driver, &backends);
    let member = driver.finish();
    let outcome = outcome?;
    save_snapshot(vs, &mut vm)?;
    log.detach_sink();
    drop(inputs);
    drop(backends);
    Ok((
        RunReport {
            outcome,
            exit_index: vm.exit_index(),
            stats: vm.stats().clone(),
            secs,
        },
        member,
    ))
}
