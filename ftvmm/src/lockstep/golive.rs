//! Going live (docs/architecture.md §6): a Secondary that won the next generation switches
//! the same VM, stopped at the exit where its log ran out, to the real
//! backends and continues as a Primary running alone.
//!
//! What it emits first goes through its new output gate like everything
//! after (docs/design.md §1: nothing leaves before the member opens it): the
//! block requests the replay issued and the log never completed — with the
//! bytes the *replay* produced, not what guest memory holds now — and three
//! gratuitous ARPs announcing the guest's MAC. The clock continues from the
//! last recorded value; the timer is re-armed from the PIT.

use std::sync::Arc;
use std::time::Instant;

use config_schema::events::{self, EventKind};

use super::driver::Driver;
use super::pair::run_with_digests;
use super::pair::DigestForward;
use super::pair::{hand_over_at_end, new_gate, start_live, stop_on_reset};
use super::primary::{Gate, PrimaryInputs, PrimaryOutputs};
use super::secondary::ReplayQueue;
use super::spec::PairHandle;
use super::spec::{PairError, PairSpec};
use crate::io::{
    BlockOp, BlockRequest, InputEvent, Inputs, OutputEvent, Outputs, TimeSource, TimerProgram,
};
use crate::live::late_write::{WriteFence, LATE_WRITE_BOUND_MS};
use crate::live::{self, ConsoleSink};
use crate::runner::{guest_mac, open_backends};
use crate::vcpu::RunOutcome;
use crate::vm::Vm;

/// Where replay left the Secondary's VM.
pub struct Replayed {
    /// The exit at which the log was exhausted.
    pub at: u64,
    /// The generation won.
    pub generation: u64,
    /// The last time value the Primary recorded.
    pub last_time: Option<u64>,
    /// When the Primary was lost (the replay queue closed).
    pub lost_at: Option<Instant>,
    /// Fencing cut the old Primary's host off at the storage before it
    /// answered the win (PREEMPT AND ABORT): its late writes cannot land.
    pub storage_cut: bool,
}

/// Inputs of a VM that went live on another host than the one that recorded
/// its past: the live clock, shifted to continue the recorded one.
struct ShiftedClock<I: Inputs> {
    inner: I,
    /// Added to the live clock (wrapping: the value may be "negative").
    shift: u64,
}

impl<I: Inputs> Inputs for ShiftedClock<I> {
    fn events_at(&mut self, n: u64, out: &mut Vec<InputEvent>) {
        self.inner.events_at(n, out)
    }
    fn events_at_halt(&mut self, n: u64, out: &mut Vec<InputEvent>) {
        self.inner.events_at_halt(n, out)
    }
    fn time_read(&mut self, n: u64, source: TimeSource) -> u64 {
        self.inner.time_read(n, source).wrapping_add(self.shift)
    }
    fn program_timer(&mut self, n: u64, program: TimerProgram) {
        self.inner.program_timer(n, program)
    }
}

/// The hold on later writes over the re-issued ones (`live::late_write`
/// rule 2), or none when the old Primary's host can no longer write: fencing
/// preempted it with PREEMPT AND ABORT before answering the win, so the
/// target ended every command of it and refuses the rest (rule 4).
fn write_fence(reissue: &[BlockRequest], storage_cut: bool) -> Option<WriteFence> {
    if storage_cut {
        return None;
    }
    WriteFence::for_reissued(reissue)
}

/// The member won `from.generation` at exit `from.at`: continue the same VM
/// on the real backends until it stops.
pub fn go_live(
    spec: &PairSpec,
    vm: &mut Vm,
    from: &Replayed,
    q: &ReplayQueue,
    console: ConsoleSink,
    driver: &Driver,
    handle: &Arc<PairHandle>,
) -> Result<RunOutcome, PairError> {
    let pause = &handle.pause;
    let name = &spec.hello.vm;
    let vs = &spec.vm;
    let opening = Instant::now();
    let (mut disk, tap) = open_backends(vs)?;
    let with_tap = tap.is_some();
    let reissue = q.in_flight_block_requests();
    check_in_flight(name, vm, &reissue);
    // The deposed Primary may still have the writes among these in flight,
    // so later writes to their sectors wait (live::late_write) — unless
    // fencing already cut its host off at the storage.
    if let (Some(d), Some(f)) = (disk.as_mut(), write_fence(&reissue, from.storage_cut)) {
        println!(
            "ftvmm: vm {name}: {} re-issued write(s); later writes to their sectors wait {LATE_WRITE_BOUND_MS} ms",
            f.ranges().len()
        );
        d.fence_writes(f);
    } else if from.storage_cut
        && reissue
            .iter()
            .any(|r| matches!(r.op, BlockOp::Write { .. }))
    {
        println!(
            "ftvmm: vm {name}: re-issued write(s) need no wait: the old Primary's host is cut off at the storage"
        );
    }
    let mut live = start_live(spec, disk, tap, console, vm)?;
    let opened_ms = opening.elapsed().as_millis();
    let n = vm.exit_index();
    live.inputs.program_timer(n, vm.devices().timer_program());
    let live::Live {
        inputs,
        outputs,
        backends,
    } = live;
    // Held until the member opens it (it does right after this hand-back).
    let gate = new_gate(spec, Box::new(outputs), Gate::Held);
    stop_on_reset(&backends, vm, &gate);
    driver.attach_live(Arc::clone(&gate));
    let mut out = PrimaryOutputs(Arc::clone(&gate));
    let reissued = reissue.len();
    for req in reissue {
        out.emit(n, OutputEvent::Block(req));
    }
    if with_tap {
        // Checked when the VM was built from the same command line.
        let mac = guest_mac(&vs.cmdline)?;
        if let Some(ip) = cmdline_ip(&vs.cmdline) {
            for _ in 0..3 {
                out.emit(
                    n,
                    OutputEvent::Frame {
                        dev: 0,
                        data: gratuitous_arp(mac, ip),
                    },
                );
            }
        }
    }
    let ms = from.lost_at.map(|t| t.elapsed().as_millis()).unwrap_or(0);
    let line = format!(
        "ftvmm: vm {name}: won generation {}; live as primary at exit {n} ({ms} ms after suspicion; {reissued} disk requests re-issued; backends opened in {opened_ms} ms)",
        from.generation
    );
    println!("{line}");
    // The pause an outside client sees: from losing the peer to going live.
    events::record(EventKind::Failover, Some(name), Some(ms as u64), &line);
    let shift = from
        .last_time
        .map(|v| v.wrapping_sub(live::monotonic_ns()))
        .unwrap_or(0);
    let inputs = ShiftedClock {
        inner: inputs,
        shift,
    };
    // Recorded (nothing while alone) so a new Secondary can join later.
    let mut inputs = PrimaryInputs::new(inputs, Arc::clone(&gate))
        .with_vm(vm.handle())
        .with_pause_point(Arc::clone(pause));
    let _digests = DigestForward::start(handle, inputs.digest_request());
    let outcome = run_with_digests(
        vm,
        name,
        "primary",
        &mut inputs,
        &mut out,
        Some(pause),
        |p| p.take_pause(),
    );
    // A Secondary that joined since (respawn) takes over by hand-over.
    hand_over_at_end(driver, &backends);
    gate.detach_sink();
    drop(inputs);
    drop(backends);
    Ok(outcome?)
}

/// The replay's record of in-flight requests must name the same requests as
/// the device model; a difference is a bug worth a loud line (the replay's
/// record is what is re-issued).
fn check_in_flight(name: &str, vm: &Vm, reissue: &[crate::io::BlockRequest]) {
    let mut ours: Vec<(u8, u64)> = reissue.iter().map(|r| (r.dev, r.id)).collect();
    let mut device: Vec<(u8, u64)> = vm
        .devices()
        .in_flight_block_requests(vm.memory())
        .iter()
        .map(|r| (r.dev, r.id))
        .collect();
    ours.sort_unstable();
    device.sort_unstable();
    if ours != device {
        tracing::error!(
            ?ours,
            ?device,
            "in-flight block requests differ between replay and device"
        );
        println!(
            "ftvmm: vm {name}: in-flight block requests differ between the replay ({ours:?}) and the device ({device:?}); re-issuing the replay's"
        );
    }
}

/// A gratuitous ARP request announcing `ip` at `mac` (so switches and
/// neighbours learn the guest's new port at once).
pub fn gratuitous_arp(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip);
    f
}

/// The guest's IPv4 address from a `ip=a.b.c.d/len` command-line word.
pub fn cmdline_ip(cmdline: &str) -> Option<[u8; 4]> {
    let v = crate::runner::cmdline_value(cmdline, "ip")?;
    let ip: std::net::Ipv4Addr = v.split('/').next()?.parse().ok()?;
    Some(ip.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_announces_the_guest() {
        let f = gratuitous_arp([0x52, 0x54, 0, 0x12, 0x34, 0x56], [198, 51, 100, 10]);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[198, 51, 100, 10]);
        assert_eq!(&f[38..42], &[198, 51, 100, 10]);
        assert_eq!(
            cmdline_ip("mode=kv ip=198.51.100.10/24 mac=x"),
            Some([198, 51, 100, 10])
        );
        assert_eq!(cmdline_ip("mode=kv"), None);
    }

    #[test]
    fn re_issued_writes_hold_later_ones_unless_the_old_host_is_cut_off_at_the_storage() {
        let write = BlockRequest {
            dev: 0,
            id: 7,
            op: BlockOp::Write {
                sector: 8,
                data: vec![1; 512],
            },
        };
        let fence = write_fence(std::slice::from_ref(&write), false).expect("a fence");
        assert_eq!(fence.ranges().len(), 1);
        assert!(write_fence(std::slice::from_ref(&write), true).is_none());
        assert!(write_fence(&[], false).is_none());
    }
}
