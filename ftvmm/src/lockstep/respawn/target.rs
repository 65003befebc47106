//! The new Secondary's side of a live state transfer: the [`Receiver`]
//! state machine (`transfer/receiver.rs`) decides, this file performs it on a
//! freshly built VM whose memory the pages are written into directly.
//!
//! After `Switch` the VM is restored from the state (`snapshot.rs`) at the
//! Primary's exit, and `Restored` goes back. The copy is a go-live candidate
//! only once the Primary says `Paired` (its gate follows the Output Rule
//! from then on, docs/design.md §11): until then any loss of the channel
//! discards the VM, so a copy the Primary never counted on can never race
//! for the next generation. Then the log is replayed from that exit
//! (`pair::follow`), like a Secondary booted at power-on.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::pagehash::{is_zero, PageHashes};
use super::source::VCPU_WAIT;
use super::{from_channel, to_channel, SwitchState, PAGE_SIZE};
use crate::live::ConsoleSink;
use crate::lockstep::channel::{Channel, ChannelError};
use crate::lockstep::link::OnTraffic;
use crate::lockstep::pair::{boot, follow, PairReport};
use crate::lockstep::secondary::{ReplayQueue, SecondaryInputs};
use crate::lockstep::spec::{PairError, PairHandle, PairSpec};
use crate::lockstep::start::check_offered_generation;
use crate::lockstep::transfer::message::Message;
use crate::lockstep::transfer::receiver::{
    Expected, GuestMemoryImage, MemoryImageError, Receiver, RxAction,
};
use crate::lockstep::transfer::sender::PAUSE_TIMEOUT_MS;
use crate::vm::{Progress, Vm, VmHandle};

/// The received pages go straight into the new VM's memory; their hashes
/// make the digest the Switch is checked against (`pagehash.rs`).
pub struct VmMemory {
    mem: GuestMemoryMmap,
    received: PageHashes,
}

impl VmMemory {
    /// The memory of a freshly built VM of `mem_bytes`, nothing received yet.
    pub fn new(mem: GuestMemoryMmap, mem_bytes: u64) -> Self {
        VmMemory {
            mem,
            received: PageHashes::new(mem_bytes / u64::from(PAGE_SIZE), PAGE_SIZE),
        }
    }
}

impl GuestMemoryImage for VmMemory {
    fn write_page(&mut self, gfn: u64, bytes: &[u8]) -> Result<(), MemoryImageError> {
        let at = GuestAddress(gfn * u64::from(PAGE_SIZE));
        let err = |e: vm_memory::GuestMemoryError| MemoryImageError {
            gfn,
            detail: e.to_string(),
        };
        // A fresh VM's memory is zero where the image did not load: reading
        // maps the shared zero page, writing zeros would allocate it (a
        // mostly empty 3 GiB guest grew the new Secondary by 3 GiB).
        let mut skip = false;
        if is_zero(bytes) {
            let mut now = vec![0u8; bytes.len()];
            self.mem.read_slice(&mut now, at).map_err(err)?;
            skip = is_zero(&now);
        }
        if !skip {
            self.mem.write_slice(bytes, at).map_err(err)?;
        }
        self.received.set(gfn, bytes);
        Ok(())
    }

    fn sha256(&self) -> [u8; 32] {
        self.received.digest()
    }
}

/// SHA-256 of the platform description both sides agreed on in `Hello`.
pub fn platform_sha256(p: &crate::platform::Platform) -> [u8; 32] {
    let bytes = postcard::to_allocvec(p).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// A VM restored from a transfer, not yet replaying.
pub struct Restored {
    pub vm: Vm,
    /// The generation the Primary paired in (`Paired`), checked on disk: the
    /// Hello's or a later one the same Primary won during the transfer.
    pub generation: u64,
    pub first_seq: u64,
    pub last_time: Option<u64>,
    pub at: u64,
}

/// Receives the VM over `ch` (the Hello was accepted for `spec.hello`'s
/// generation) into a VM built here, and waits for `Paired`.
pub fn receive(
    spec: &PairSpec,
    ch: &mut Channel,
    disk_sectors: Option<u64>,
) -> Result<Restored, String> {
    ch.set_write_timeout(Some(super::keeper::SEND_TIMEOUT))
        .map_err(|e| format!("channel: {e}"))?;
    let vs = &spec.vm;
    let mut vm = boot(vs, disk_sectors, vs.tap.is_some()).map_err(|e| e.to_string())?;
    let expected = Expected {
        vm: spec.hello.vm.clone(),
        memory_bytes: vm.mem_size(),
        page_size: PAGE_SIZE,
        platform_sha256: platform_sha256(&spec.hello.platform),
    };
    let memory = VmMemory::new(vm.memory().clone(), vm.mem_size());
    let mut rx = Receiver::new(expected, memory);
    let mut restored: Option<(u64, Option<u64>, u64)> = None;
    // Whether this side's last word was a round's ack (the Primary may be
    // pausing the guest for the stop-and-copy: `silence_limit`).
    let mut acked = false;
    while !rx.is_done() {
        let failure_timeout = spec.live_timing.failure_timeout(spec.failure_timeout);
        let actions = match recv_silent(ch, silence_limit(failure_timeout, acked)) {
            Ok(m) => {
                acked = false;
                rx.on_message(m)
            }
            Err(e) => rx.on_cut(&e),
        };
        for a in actions {
            match a {
                RxAction::Send(m) => {
                    acked = matches!(m, Message::RoundAck { .. });
                    if let Err(e) = send(ch, &m) {
                        rx.on_cut(&e);
                    }
                }
                RxAction::Restore {
                    generation,
                    state,
                    log_start_exit,
                } => {
                    if generation != spec.hello.generation {
                        return abort(ch, format!("offer for generation {generation}"));
                    }
                    match restore(&mut vm, &state, log_start_exit) {
                        Ok(r) => restored = Some(r),
                        Err(e) => return abort(ch, e),
                    }
                }
                RxAction::Done => {}
                RxAction::Failed(e) | RxAction::Rejected(e) => {
                    return Err(format!("transfer failed: {e}"))
                }
            }
        }
        if rx.is_failed() {
            return Err("transfer failed".into());
        }
    }
    let (first_seq, last_time, at) = restored.ok_or("transfer done without a restore")?;
    match recv(ch, Duration::from_millis(PAUSE_TIMEOUT_MS + 2_000))? {
        Message::Paired { generation } if generation >= spec.hello.generation => {
            // Only the owner of the highest generation on disk may pair: a
            // Secondary following in any other would race for a generation
            // already decided and lose, leaving the VM unprotected.
            check_offered_generation(&spec.fencing_socket, &spec.hello.vm, generation, &spec.peer)
                .or_else(|e| abort(ch, format!("paired in generation {generation}: {e}")))?;
            Ok(Restored {
                vm,
                generation,
                first_seq,
                last_time,
                at,
            })
        }
        other => Err(format!("expected Paired, got {other:?}")),
    }
}

/// Restores `vm` from a Switch's state at exit `at`: (first log sequence,
/// last guest time, exit).
pub fn restore(vm: &mut Vm, state: &[u8], at: u64) -> Result<(u64, Option<u64>, u64), String> {
    let sw: SwitchState =
        postcard::from_bytes(state).map_err(|e| format!("undecodable switch state: {e}"))?;
    vm.load_state(sw.vm)
        .map_err(|e| format!("cannot restore the VM state: {e}"))?;
    if vm.exit_index() != at {
        return Err(format!(
            "restored at exit {}, the switch says {at}",
            vm.exit_index()
        ));
    }
    Ok((sw.first_seq, sw.last_time, at))
}

fn abort<T>(ch: &mut Channel, reason: String) -> Result<T, String> {
    let _ = send(
        ch,
        &Message::Abort {
            reason: reason.clone(),
        },
    );
    Err(reason)
}

fn send(ch: &mut Channel, m: &Message) -> Result<(), String> {
    ch.send(&to_channel(m)?)
        .map_err(|e| format!("send failed: {e}"))
}

/// How long the new Secondary lets the Primary send nothing during the
/// transfer before it counts the Primary as lost; `after_round_ack`: this
/// side's last word was a `RoundAck`.
///
/// It is a limit on silence, not on a message: the channel's read timeout
/// runs between the bytes that arrive, so a large page batch over a slow
/// link is not silence. The Primary is silent legitimately only while its
/// vCPU is brought to an exit: to start or read the dirty log (after the
/// `Accept`, after each round's pages; bounded by `source::VCPU_WAIT`) or
/// to pause the guest for the stop-and-copy (after a `RoundAck`; bounded
/// by `PAUSE_TIMEOUT_MS + VCPU_WAIT`, the source's own limit). So a dead
/// Primary is lost after the VM's failure timeout plus the longest such
/// pause it could be in; the pause work itself (reading the dirty log,
/// saving the vCPU and device state) is covered by the failure timeout.
pub fn silence_limit(failure_timeout: Duration, after_round_ack: bool) -> Duration {
    let pause = if after_round_ack {
        Duration::from_millis(PAUSE_TIMEOUT_MS) + VCPU_WAIT
    } else {
        VCPU_WAIT
    };
    failure_timeout + pause
}

/// The next transfer message, or an error naming the silence if nothing
/// arrived for `limit` (`silence_limit`).
fn recv_silent(ch: &mut Channel, limit: Duration) -> Result<Message, String> {
    ch.set_read_timeout(Some(limit))
        .map_err(|e| format!("channel: {e}"))?;
    match ch.recv() {
        Ok(m) => from_channel(m),
        Err(ChannelError::Timeout) => Err(format!(
            "the primary sent nothing for {} ms (the failure timeout plus the longest pause \
             it can be in)",
            limit.as_millis()
        )),
        Err(e) => Err(format!("channel: {e}")),
    }
}

fn recv(ch: &mut Channel, timeout: Duration) -> Result<Message, String> {
    ch.set_read_timeout(Some(timeout))
        .map_err(|e| format!("channel: {e}"))?;
    from_channel(ch.recv().map_err(|e| format!("channel: {e}"))?)
}

/// Receives the VM, then follows the Primary as its Secondary until the run
/// ends (the same path as a power-on Secondary from there).
#[allow(clippy::too_many_arguments)]
pub fn join_as_secondary(
    spec: &PairSpec,
    mut ch: Channel,
    disk_sectors: Option<u64>,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    let name = &spec.hello.vm;
    println!(
        "ftvmm: vm {name}: receiving from primary {}; generation {}",
        spec.peer, spec.hello.generation
    );
    handle.set_role("secondary (receiving)");
    let r = receive(spec, &mut ch, disk_sectors).map_err(|e| {
        println!(
            "ftvmm: vm {name}: transfer from {} failed: {e}; copy discarded",
            spec.peer
        );
        PairError::Protocol(e)
    })?;
    println!(
        "ftvmm: vm {name}: restored from {} at exit {}; following in generation {}",
        spec.peer, r.at, r.generation
    );
    let Restored {
        vm,
        generation,
        first_seq,
        last_time,
        ..
    } = r;
    let mut spec = spec.clone();
    spec.hello.generation = generation;
    let spec = &spec;
    let q = ReplayQueue::new(first_seq);
    q.seed_in_flight(vm.devices().in_flight_block_requests(vm.memory()));
    let sin = SecondaryInputs::new(Arc::clone(&q), vm.handle()).with_last_time(last_time);
    ch.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(crate::lockstep::channel::ChannelError::Io)?;
    follow(spec, ch, vm, q, sin, console, handle, on_start, on_traffic)
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
