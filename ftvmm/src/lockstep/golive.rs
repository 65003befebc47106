//! Going live (docs/architecture.md §6): a Secondary that won the next generation switches
//! the same VM, stopped at the exit where its log ran out, to the real
//! backends and continues as a Primary running alone.
//!
//! What it emits first goes through its new output gate like everything
//! after (docs/design.md §1: nothing leaves before the member opens it): the
//! block requests the replay issued and the log never completed — with the
//! bytes the *replay* produced, not what guest memory holds now — and three
//! gratuitous ARPs announcing the guest's MAC — and then the TCP segments the
//! replay produced in its last moments ([`tcp_to_resend`]). The clock
//! continues from the last recorded value; the timer is re-armed from the PIT.
//!
//! Why send TCP segments again: the deposed Primary held its last outputs
//! until the Secondary acknowledged them and may have died holding them;
//! the replay produced the same segments and dropped them. Left alone, the
//! guest's own retransmission timer sends them again — a timer that stood
//! still during the outage (the guest's time did not move) and runs its
//! whole course after go-live — and a client whose request was lost with
//! the old host waits for its own retransmission timeout (≥ 200 ms on
//! Linux, doubled at every try). Sent at once, a segment the client lacks
//! is delivered, and one it already has is a duplicate that makes it
//! acknowledge at once, which (with SACK) tells it what to send again
//! without waiting for its timer. A duplicate TCP segment is harmless by
//! TCP's design, and these are the surviving member's own outputs, which
//! the Output Rule lets it release; other protocols are not sent again
//! (a UDP application may count a duplicate datagram).

use std::sync::Arc;
use std::time::{Duration, Instant};

use config_schema::events::{self, EventKind};

use super::driver::Driver;
use super::pair::run_with_digests;
use super::pair::DigestForward;
use super::pair::{new_gate, start_live, stop_on_reset};
use super::primary::{Gate, PrimaryInputs, PrimaryOutputs};
use super::secondary::{RecentFrame, ReplayQueue};
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
    let mut resent = 0;
    if with_tap {
        let window = 2 * spec.live_timing.failure_timeout(spec.failure_timeout);
        for f in tcp_to_resend(q.recent_tcp_frames(), from.lost_at, window) {
            resent += 1;
            out.emit(
                n,
                OutputEvent::Frame {
                    dev: f.dev,
                    data: f.data,
                },
            );
        }
    }
    let ms = from.lost_at.map(|t| t.elapsed().as_millis()).unwrap_or(0);
    let line = format!(
        "ftvmm: vm {name}: won generation {}; live as primary at exit {n} ({ms} ms after suspicion; {reissued} disk requests re-issued; {resent} TCP segments sent again; backends opened in {opened_ms} ms)",
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

/// The TCP segments a go-live sends again: those the replay produced
/// within `window` before the Primary was lost (`lost_at`; all of them when
/// unknown), oldest first. `window` is twice the failure timeout: the
/// Primary was last heard a failure timeout before it was lost, and the
/// segments it may have held were produced shortly before that.
pub fn tcp_to_resend(
    recent: Vec<RecentFrame>,
    lost_at: Option<Instant>,
    window: Duration,
) -> Vec<RecentFrame> {
    let since = lost_at.and_then(|t| t.checked_sub(window));
    recent
        .into_iter()
        .filter(|f| since.is_none_or(|s| f.at >= s))
        .collect()
}

/// Whether an Ethernet frame carries a TCP segment (IPv4 or IPv6 with TCP
/// as the next header, with or without one 802.1Q tag).
pub fn is_tcp(frame: &[u8]) -> bool {
    const TCP: u8 = 6;
    let (ethertype, l3) = match frame.get(12..14) {
        Some([0x81, 0x00]) => (frame.get(16..18), 18),
        Some(t) => (Some(t), 14),
        None => return false,
    };
    match ethertype {
        Some([0x08, 0x00]) => frame.get(l3 + 9) == Some(&TCP),
        Some([0x86, 0xdd]) => frame.get(l3 + 6) == Some(&TCP),
        _ => false,
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

    /// An Ethernet frame: `ethertype` after the MACs, then `l3`.
    fn frame(ethertype: &[u8], l3: &[u8]) -> Vec<u8> {
        [&[0u8; 12][..], ethertype, l3].concat()
    }

    fn ipv4(protocol: u8) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, protocol, 0, 0];
        h.extend([198, 51, 100, 10, 198, 51, 100, 200]);
        h.extend([0u8; 20]);
        h
    }

    #[test]
    fn only_tcp_segments_count_as_tcp() {
        assert!(is_tcp(&frame(&[0x08, 0x00], &ipv4(6))));
        assert!(!is_tcp(&frame(&[0x08, 0x00], &ipv4(17))), "UDP");
        assert!(!is_tcp(&frame(&[0x08, 0x00], &ipv4(1))), "ICMP");
        let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        v6.extend([0u8; 32]);
        assert!(is_tcp(&frame(&[0x86, 0xdd], &v6)));
        v6[6] = 17;
        assert!(!is_tcp(&frame(&[0x86, 0xdd], &v6)), "UDP over IPv6");
        let tagged = frame(&[0x81, 0x00, 0x00, 0x05, 0x08, 0x00], &ipv4(6));
        assert!(is_tcp(&tagged), "one 802.1Q tag");
        assert!(!is_tcp(&gratuitous_arp([2, 0, 0, 0, 0, 1], [192, 0, 2, 1])));
        // Cut short anywhere: not TCP, and no panic.
        let full = frame(&[0x08, 0x00], &ipv4(6));
        for n in 0..24 {
            assert!(!is_tcp(&full[..n]), "{n} bytes");
        }
        assert!(is_tcp(&full[..24]));
    }

    #[test]
    fn segments_from_before_the_window_are_not_sent_again() {
        // In the future, so subtracting never underflows the clock.
        let lost = Instant::now() + Duration::from_secs(10);
        let window = Duration::from_millis(1000);
        let seg = |ago_ms: u64, tag: u8| RecentFrame {
            at: lost - Duration::from_millis(ago_ms),
            dev: 0,
            data: vec![tag],
        };
        let recent = vec![seg(3000, 1), seg(1001, 2), seg(999, 3), seg(10, 4)];
        let tags = |v: Vec<RecentFrame>| v.into_iter().map(|f| f.data[0]).collect::<Vec<_>>();
        assert_eq!(
            tags(tcp_to_resend(recent.clone(), Some(lost), window)),
            [3, 4],
            "oldest first, within the window only"
        );
        assert_eq!(
            tags(tcp_to_resend(recent, None, window)),
            [1, 2, 3, 4],
            "when the loss time is unknown, every kept segment"
        );
    }

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
