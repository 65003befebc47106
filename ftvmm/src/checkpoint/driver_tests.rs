//! The checkpoint member driver on /dev/kvm: two hosts' members in one
//! process over TCP loopback with the real channel, the two-vCPU counter
//! guest, and an in-process fencing that decides each generation once (what
//! Disk Paxos guarantees). The Primary's host goes away: the Secondary wins
//! generation 2, resumes from its last complete epoch and the guest counts
//! on. The link alone is cut: both race, exactly one runs on. A Secondary
//! that wins while fencing withdrew its grant (told through the daemon's
//! `Members`) resumes held and re-wins before output.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::checkpoint::gated::GatedOutputs;
use crate::checkpoint::primary::LoopConfig;
use crate::checkpoint::receiver::Receiver;
use crate::checkpoint::remote_tests::{counter_vm, gate, MEM};
use crate::checkpoint::secondary::Staging;
use crate::checkpoint::test_support::{channel_pair, frozen_channel_pair, plan};
use crate::linux::tests::{counter, wait_until};
use crate::lockstep::grant::HostGrant;
use crate::lockstep::member::Halt;
use crate::lockstep::spec::PairHandle;
use crate::members::Members;

/// Long enough for the first (full, 64 MiB) epoch on a loaded machine
/// (with 300 ms, parallel tests raced before pairing, when a member heard
/// nothing from its peer until that epoch was applied; keep-alives,
/// `keepalive.rs`, now cover that, and the value stays).
const FAILURE_TIMEOUT_MS: u64 = 2_000;
const SETTLE: Duration = Duration::from_secs(10);

/// Generations of one VM, each decided once, first come first served;
/// and the claims looked at before asking (host, generation).
#[derive(Default)]
struct Generations(Mutex<BTreeMap<u64, String>>, Mutex<Vec<(String, u64)>>);

struct HostFencing {
    disk: Arc<Generations>,
    host: &'static str,
}

impl Fencing for HostFencing {
    fn acquire(&self, _vm: &str, generation: u64, cancel: &AtomicBool) -> Option<Decision> {
        if cancel.load(Ordering::SeqCst) {
            return None;
        }
        let mut owners = self.disk.0.lock().unwrap();
        if let Some(&top) = owners.keys().next_back() {
            if top > generation {
                return Some(Decision::Superseded { by: top });
            }
        }
        let owner = owners
            .entry(generation)
            .or_insert_with(|| self.host.to_string());
        Some(if owner == self.host {
            Decision::Won
        } else {
            Decision::Lost {
                owner: owner.clone(),
            }
        })
    }

    fn before_claim(&self, _vm: &str, generation: u64, _cancel: &AtomicBool) -> bool {
        let claim = (self.host.to_string(), generation);
        self.disk.1.lock().unwrap().push(claim);
        true
    }
}

struct Pair {
    primary: MemberDriver,
    secondary: MemberDriver,
    p_outputs: Arc<GatedOutputs>,
    p_handle: Arc<PairHandle>,
    p_control: Arc<crate::linux::vcpus::Control>,
    s_members: Arc<Members>,
    live: Arc<Mutex<Option<Live>>>,
    cut: Box<dyn Fn() + Send>,
    disk: Arc<Generations>,
    /// ms each of the Primary's epoch pieces waits before it is sent.
    p_slow: Arc<std::sync::atomic::AtomicU64>,
    /// The Secondary's silence as host-a's member sees it.
    p_silence: Box<dyn Fn() -> u64 + Send>,
    /// When host-b last heard its Primary.
    s_heard: Arc<Mutex<std::time::Instant>>,
}

/// host-a Primary and host-b Secondary of "kv" in generation 1, paired,
/// with five epochs acknowledged.
fn pair() -> Pair {
    pair_with(HostGrant::always())
}

/// [`pair`], host-b's output grant being `s_grant`.
fn pair_with(s_grant: Arc<HostGrant>) -> Pair {
    let (p_ch, s_ch) = channel_pair();
    pair_on(s_grant, p_ch, s_ch, FAILURE_TIMEOUT_MS)
}

/// [`pair_with`] over the channels given, with the failure timeout given.
fn pair_on(
    s_grant: Arc<HostGrant>,
    p_ch: crate::lockstep::channel::Channel,
    s_ch: crate::lockstep::channel::Channel,
    failure_timeout_ms: u64,
) -> Pair {
    let disk = Arc::new(Generations::default());
    disk.0.lock().unwrap().insert(1, "host-a".into());

    let p_handle = Arc::new(PairHandle::default());
    // host-b's daemon side: its members behind its grant (`members.rs`).
    let s_members = (
        Members::new(Arc::clone(&s_grant)),
        Arc::new(PairHandle::default()),
    );
    s_members.0.insert("kv", None, Arc::clone(&s_members.1));
    let p_events = MemberDriver::channel();
    let outputs = GatedOutputs::new(gate(), None);
    let (running, _pmem) = counter_vm(&outputs);
    let cfg = LoopConfig {
        epoch: Duration::from_millis(20),
        first_full: true,
        dirty: Default::default(),
        delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
    };
    let p_fx = PrimaryEffects::start(
        "",
        Arc::new(running),
        outputs,
        p_ch,
        cfg,
        p_events.0.clone(),
    )
    .unwrap();
    let (cut, p_outputs) = (Box::new(p_fx.link_cutter()), p_fx.outputs());
    let p_control = p_fx.vm_control();
    let (p_slow, p_silence) = (p_fx.slow_sends(), Box::new(p_fx.silence()));
    let primary = MemberDriver::start(
        ("kv", "host-a"),
        Member::primary("kv", "host-b", 1, true, failure_timeout_ms),
        Box::new(p_fx),
        Arc::new(HostFencing {
            disk: Arc::clone(&disk),
            host: "host-a",
        }),
        Arc::clone(&p_handle),
        p_events,
    );

    let s_events = MemberDriver::channel();
    let s_fx =
        SecondaryEffects::start("kv", s_ch, fresh(1), plan(s_grant), s_events.0.clone()).unwrap();
    let (live, s_heard) = (s_fx.live(), s_fx.heard());
    let secondary = MemberDriver::start(
        ("kv", "host-b"),
        Member::secondary("kv", "host-a", 1, failure_timeout_ms),
        Box::new(s_fx),
        Arc::new(HostFencing {
            disk: Arc::clone(&disk),
            host: "host-b",
        }),
        Arc::clone(&s_members.1),
        s_events,
    );
    wait_until("five epochs acknowledged", || p_outputs.progress().0 >= 5);
    assert_eq!(primary.state(), State::Paired { g: 1 });
    assert_eq!(secondary.state(), State::Following { g: 1 });
    assert_eq!(
        p_handle.running_generation(),
        Some(1),
        "published as Primary"
    );
    assert_eq!(
        s_members.0.running(),
        vec![],
        "a Secondary publishes nothing"
    );
    Pair {
        primary,
        secondary,
        p_outputs,
        p_handle,
        p_control,
        s_members: s_members.0,
        live,
        cut,
        disk,
        p_slow,
        p_silence,
        s_heard,
    }
}

/// The member's state is published before its `GoLive` is performed:
/// waits for the resumed VM.
fn resumed(live: &Mutex<Option<Live>>) -> std::sync::MutexGuard<'_, Option<Live>> {
    wait_until("the VM resumed", || live.lock().unwrap().is_some());
    live.lock().unwrap()
}

fn solo(g: u64) -> impl Fn(&State) -> bool {
    move |s| *s == State::Solo { g }
}

/// The Primary's epoch loop is busy for three failure timeouts before each
/// piece (as a large harvest, pre-copy or encode is on a loaded host): its
/// keep-alive thread still reaches the Secondary, and the Secondary's the
/// Primary (`keepalive.rs`), so neither member suspects the other; once
/// the loop is quick again, epochs are acknowledged as before.
#[test]
fn a_primary_busy_longer_than_the_failure_timeout_stays_heard() {
    let p = pair();
    let busy = 3 * FAILURE_TIMEOUT_MS;
    p.p_slow.store(busy, Ordering::SeqCst);
    let acked = p.p_outputs.progress().0;
    let start = std::time::Instant::now();
    let (mut s_max, mut p_max) = (0, 0);
    while start.elapsed() < Duration::from_millis(2 * busy) {
        s_max = s_max.max(p.s_heard.lock().unwrap().elapsed().as_millis() as u64);
        p_max = p_max.max((p.p_silence)());
        let (a, b) = (p.primary.state(), p.secondary.state());
        assert!(
            a == State::Paired { g: 1 } && b == State::Following { g: 1 },
            "suspected after {} ms busy: host-a {a:?}, host-b {b:?}; silence seen up to {s_max} ms by host-b, {p_max} ms by host-a",
            start.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("busy {busy} ms per piece: silence seen by host-b up to {s_max} ms, by host-a up to {p_max} ms");
    assert!(s_max < FAILURE_TIMEOUT_MS && p_max < FAILURE_TIMEOUT_MS);
    p.p_slow.store(0, Ordering::SeqCst);
    wait_until("epochs acknowledged again", || {
        p.p_outputs.progress().0 > acked + 3
    });
    assert_eq!(p.disk.0.lock().unwrap().get(&2), None, "nobody raced");
    p.primary.finish();
    p.secondary.finish();
}

#[test]
fn the_primary_host_lost_the_secondary_wins_generation_2_and_the_guest_counts_on() {
    let p = pair();
    let acked = p.p_outputs.progress().0;
    // host-a goes away: its member, VM and link are dropped.
    let last = p.primary.finish();
    assert_eq!(last, State::Paired { g: 1 });
    let s = p.secondary.wait_for(SETTLE, solo(2));
    assert_eq!(
        s,
        State::Solo { g: 2 },
        "the Secondary runs on in generation 2"
    );
    assert_eq!(
        p.disk.0.lock().unwrap().get(&2).map(String::as_str),
        Some("host-b")
    );
    assert_eq!(
        *p.disk.1.lock().unwrap(),
        vec![("host-b".to_string(), 2)],
        "the Secondary's claim looked at its VM network first"
    );
    assert_eq!(
        p.p_handle.running_generation(),
        None,
        "host-a publishes nothing"
    );
    assert_eq!(
        p.s_members.running(),
        vec![config_schema::ctl::RunningVm {
            vm: "kv".into(),
            generation: 2,
            slot: None,
        }],
        "host-b publishes generation 2"
    );

    let guard = resumed(&p.live);
    let live = guard.as_ref().expect("the VM was resumed");
    assert!(
        live.epoch >= acked,
        "resumed from epoch {} though {acked} were acknowledged",
        live.epoch
    );
    assert!(!live.outputs.failed());
    assert!(live.outputs.may_release(), "the member opened the new gate");
    let mem = live.running.memory();
    let at = counter(&mem);
    wait_until("the resumed guest counts on", || counter(&mem) != at);
    drop(guard);
    assert_eq!(p.secondary.finish(), State::Solo { g: 2 });
}

#[test]
fn a_cut_link_makes_both_race_and_exactly_one_runs_on() {
    let p = pair();
    (p.cut)();
    let winner = exactly_one_runs_on(&p, SETTLE);
    // Only the Secondary's race is a claim; a Primary racing after losing
    // its Secondary asks at once (`claim_vmnet.rs`).
    let claims = p.disk.1.lock().unwrap().clone();
    assert!(
        claims.iter().all(|c| c.0 == "host-b"),
        "a Primary looked before racing: {claims:?}"
    );
    if winner == "host-a" {
        assert!(p.p_outputs.may_release());
    } else {
        let guard = resumed(&p.live);
        let mem = guard.as_ref().expect("the winner resumed").running.memory();
        let at = counter(&mem);
        wait_until("the resumed guest counts on", || counter(&mem) != at);
    }
    p.primary.finish();
    p.secondary.finish();
}

/// Waits up to `within` for both members to settle; exactly one runs on
/// in generation 2 and the other lost it (the loser resumed nothing, or
/// the losing Primary releases nothing more). Returns the winner.
fn exactly_one_runs_on(p: &Pair, within: Duration) -> &'static str {
    let settled = |s: &State| matches!(s, State::Solo { .. } | State::Halted(_));
    let a = p.primary.wait_for(within, settled);
    let b = p.secondary.wait_for(within, settled);
    let winner = p.disk.0.lock().unwrap().get(&2).cloned();
    match (&a, &b, winner.as_deref()) {
        (State::Solo { g: 2 }, State::Halted(Halt::Lost { generation: 2, .. }), Some("host-a")) => {
            assert!(!p.p_outputs.failed());
            assert!(
                p.live.lock().unwrap().is_none(),
                "the loser resumed nothing"
            );
            "host-a"
        }
        (State::Halted(Halt::Lost { generation: 2, .. }), State::Solo { g: 2 }, Some("host-b")) => {
            assert!(
                p.p_outputs.failed(),
                "the losing Primary releases nothing more"
            );
            "host-b"
        }
        other => panic!("not exactly one member running on in generation 2: {other:?}"),
    }
}

/// A partition as TCP sees it: the connection stays open but nothing is
/// read at either end any more, so the Primary's next epoch piece blocks
/// in its send. Both members still race and exactly one runs on. Before
/// the link's connection id was readable without its lock and sends had a
/// timeout, the Primary's member waited for that lock behind the blocked
/// send on every tick: it never raced, and never halted when deposed (found
/// by `qemu-tests checkpoint_pair`'s partition test: the Secondary won
/// generation 2 and resumed the guest, the old Primary went on saying it
/// was protected).
/// The failure timeout is long (8 s) so that the Primary's epochs fill the
/// loopback buffers (megabytes) and its send blocks before anyone races.
#[test]
fn a_partition_that_blocks_the_primarys_send_still_ends_with_one_running() {
    let (p_ch, s_ch, frozen) = frozen_channel_pair();
    let p = pair_on(HostGrant::always(), p_ch, s_ch, 8_000);
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    exactly_one_runs_on(&p, Duration::from_secs(40));
    p.primary.finish();
    p.secondary.finish();
}

/// host-b's grant is away when it wins: it resumes the VM but holds every
/// output (`Fenced`); when the grant is back it re-wins generation 3 before
/// anything leaves, as a lockstep Secondary does.
#[test]
fn a_secondary_that_wins_without_its_grant_resumes_held_and_rewins_before_output() {
    let grant = HostGrant::none();
    let p = pair_with(Arc::clone(&grant));
    // Fencing withdraws host-b's grant, through the daemon's path.
    p.s_members.on_grant(false, 0, "lease renewal failing");
    p.primary.finish();
    let s = p
        .secondary
        .wait_for(SETTLE, |s| *s == State::Fenced { g: 2 });
    assert_eq!(s, State::Fenced { g: 2 }, "live but held");
    {
        let guard = resumed(&p.live);
        let live = guard.as_ref().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!live.outputs.may_release(), "released while fenced");
        let mem = live.running.memory();
        let at = counter(&mem);
        wait_until("the resumed guest counts, held", || counter(&mem) != at);
    }
    p.s_members.on_grant(true, 60_000, "");
    let s = p.secondary.wait_for(SETTLE, solo(3));
    assert_eq!(s, State::Solo { g: 3 }, "re-won generation 3");
    assert_eq!(
        p.disk.0.lock().unwrap().get(&3).map(String::as_str),
        Some("host-b")
    );
    wait_until("the gate opens in generation 3", || {
        p.live
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .outputs
            .may_release()
    });
    p.secondary.finish();
}

/// Fencing withdraws host-a's grant and it does not come back: the paired
/// Primary holds, stops its VM after the failure timeout, and resigns once
/// every closed epoch is acknowledged; the Secondary races at once and
/// resumes from exactly that epoch.
#[test]
fn a_primary_that_loses_storage_hands_over_at_its_last_acknowledged_epoch() {
    let p = pair();
    assert!(p
        .p_handle
        .post(Event::Grant(crate::lockstep::member::Grant::Withdrawn {
            reason: "lease renewal failing".into(),
        })));
    let a = p
        .primary
        .wait_for(SETTLE, |s| matches!(s, State::Halted(_)));
    assert_eq!(
        a,
        State::Halted(Halt::HandedOver { to_secondary: true }),
        "handed over after every epoch was acknowledged"
    );
    let acked = p.p_outputs.progress().0;
    assert!(p.p_outputs.all_closed_acked() && p.p_outputs.failed());
    let s = p.secondary.wait_for(SETTLE, solo(2));
    assert_eq!(s, State::Solo { g: 2 });
    let guard = resumed(&p.live);
    assert_eq!(
        guard.as_ref().unwrap().epoch,
        acked,
        "resumed from the Primary's last acknowledged epoch"
    );
    drop(guard);
    p.primary.finish();
    p.secondary.finish();
}

/// The keeper asks host-a to leave (its VM network cut while host-b's
/// works, `respawn/own_vmnet.rs`): the paired Primary stops its VM at once
/// (no fencing hold first) and resigns once every closed epoch is
/// acknowledged; the Secondary races and resumes from exactly that epoch.
#[test]
fn a_primary_asked_to_leave_its_host_hands_over_at_its_last_acknowledged_epoch() {
    let p = pair();
    assert!(p.p_handle.post(Event::LeaveHost {
        why: "VM network lost on host-a".into(),
    }));
    let a = p
        .primary
        .wait_for(SETTLE, |s| matches!(s, State::Halted(_)));
    assert_eq!(a, State::Halted(Halt::HandedOver { to_secondary: true }));
    let acked = p.p_outputs.progress().0;
    assert!(p.p_outputs.all_closed_acked());
    let s = p.secondary.wait_for(SETTLE, solo(2));
    assert_eq!(s, State::Solo { g: 2 });
    let guard = resumed(&p.live);
    assert_eq!(guard.as_ref().unwrap().epoch, acked);
    drop(guard);
    p.primary.finish();
    p.secondary.finish();
}

/// The Primary's guest ends on its own: an orderly end of the pair, no race.
#[test]
fn the_primary_guest_ending_halts_both_without_a_race() {
    let p = pair();
    p.p_control.end(crate::linux::End::Stopped);
    let a = p
        .primary
        .wait_for(SETTLE, |s| matches!(s, State::Halted(_)));
    assert_eq!(a, State::Halted(Halt::Stopped));
    let b = p
        .secondary
        .wait_for(SETTLE, |s| matches!(s, State::Halted(_)));
    assert_eq!(b, State::Halted(Halt::PrimaryEnded));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.disk.0.lock().unwrap().get(&2), None, "nobody raced");
    assert!(p.live.lock().unwrap().is_none(), "nothing resumed");
    p.primary.finish();
    p.secondary.finish();
}

/// A Secondary whose Primary goes away before a single epoch completed has
/// nothing to resume from: it halts and never races.
#[test]
fn a_secondary_without_a_complete_epoch_never_races() {
    let disk = Arc::new(Generations::default());
    disk.0.lock().unwrap().insert(1, "host-a".into());
    let (p_ch, s_ch) = channel_pair();
    let events = MemberDriver::channel();
    let fx = SecondaryEffects::start(
        "kv",
        s_ch,
        fresh(1),
        plan(HostGrant::always()),
        events.0.clone(),
    )
    .unwrap();
    let live = fx.live();
    let secondary = MemberDriver::start(
        ("kv", "host-b"),
        Member::secondary("kv", "host-a", 1, FAILURE_TIMEOUT_MS),
        Box::new(fx),
        Arc::new(HostFencing {
            disk: Arc::clone(&disk),
            host: "host-b",
        }),
        Arc::new(PairHandle::default()),
        events,
    );
    let (tx, _rx) = p_ch.split();
    tx.shutdown();
    let s = secondary.wait_for(SETTLE, |s| matches!(s, State::Halted(_)));
    assert!(
        matches!(&s, State::Halted(Halt::Diverged { what }) if what.contains("no complete epoch")),
        "{s:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(disk.0.lock().unwrap().get(&2), None, "it never raced");
    assert!(live.lock().unwrap().is_none());
    secondary.finish();
}

/// A power-on Secondary's receiver in `generation`: empty staging memory.
fn fresh(generation: u64) -> Receiver<Staging> {
    Receiver::new(generation, Staging::new(MEM).unwrap(), 0)
}

/// A checkpoint member takes the failure timeout `ftctl apply` changed
/// live, as a lockstep member does: a paired Primary's silence limit is
/// the live value, a Secondary's never below the booted one.
#[test]
fn a_member_takes_the_failure_timeout_applied_live() {
    let live = LiveFailureTimeout {
        timing: Arc::new(crate::lockstep::live_timing::LiveTiming::default()),
        booted: Duration::from_millis(FAILURE_TIMEOUT_MS),
    };
    let mut p = Member::primary("kv", "host-b", 1, true, FAILURE_TIMEOUT_MS);
    let mut s = Member::secondary("kv", "host-a", 1, FAILURE_TIMEOUT_MS);
    super::take_live(&mut p, Some(&live));
    assert_eq!(p.silence_limit_ms(), Some(FAILURE_TIMEOUT_MS));
    let timing = |ms| config_schema::Timing {
        heartbeat_interval_ms: 100,
        failure_timeout_ms: ms,
        lag_limit_ms: 100,
    };
    live.timing.adopt(2, &timing(FAILURE_TIMEOUT_MS / 2));
    super::take_live(&mut p, Some(&live));
    super::take_live(&mut s, Some(&live));
    assert_eq!(p.silence_limit_ms(), Some(FAILURE_TIMEOUT_MS / 2));
    assert_eq!(s.silence_limit_ms(), Some(FAILURE_TIMEOUT_MS));
    live.timing.adopt(3, &timing(3 * FAILURE_TIMEOUT_MS));
    super::take_live(&mut p, Some(&live));
    super::take_live(&mut s, Some(&live));
    assert_eq!(p.silence_limit_ms(), Some(3 * FAILURE_TIMEOUT_MS));
    assert_eq!(s.silence_limit_ms(), Some(3 * FAILURE_TIMEOUT_MS));
    // Without a live source the member keeps its own.
    let mut q = Member::primary("kv", "host-b", 1, true, FAILURE_TIMEOUT_MS);
    super::take_live(&mut q, None);
    assert_eq!(q.silence_limit_ms(), Some(FAILURE_TIMEOUT_MS));
}

/// Effects that do nothing, whose tick (`silent_ms`) blocks once for as
/// long as `block_ms` says: the member thread stuck in one step, as the
/// partitioned Primary of stop 46 was.
struct StuckTick {
    block_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Effects for StuckTick {
    fn set_gate(&mut self, _: Gate, _: u64) {}
    fn stop_vcpu(&mut self) {}
    fn close_link(&mut self, _: &str) {}
    fn resign(&mut self, _: &str) {}
    fn go_live(&mut self, _: u64, _: u64) {}
    fn grant_back(&mut self) {}
    fn silent_ms(&self) -> u64 {
        let ms = self.block_ms.swap(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        0
    }
    fn unacked(&self) -> (u64, u64) {
        (0, 0)
    }
    fn drained(&mut self) -> Option<u64> {
        None
    }
    fn all_acked(&self) -> bool {
        false
    }
}

#[test]
fn a_member_step_that_blocks_is_reported_while_it_lasts() {
    let block_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let d = MemberDriver::start(
        ("kv", "host-b"),
        Member::secondary("kv", "host-a", 1, 60_000),
        Box::new(StuckTick {
            block_ms: Arc::clone(&block_ms),
        }),
        Arc::new(HostFencing {
            disk: Arc::new(Generations::default()),
            host: "host-b",
        }),
        Arc::new(PairHandle::default()),
        MemberDriver::channel(),
    );
    // Ticks every 50 ms for a second: none is a stall.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.stalls(), 0);
    block_ms.store(
        (super::stall::STALL_AFTER + Duration::from_secs(3)).as_millis() as u64,
        Ordering::SeqCst,
    );
    wait_until("the stuck tick reported", || d.stalls() == 1);
    // It returns (8 s after it began); the member ticks on and nothing
    // more is reported.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(d.stalls(), 1);
    assert_eq!(d.finish(), State::Following { g: 1 });
}
