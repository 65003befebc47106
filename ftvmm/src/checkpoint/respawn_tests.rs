//! A join (respawn, `respawn.rs`) on /dev/kvm over a slow link: a lone
//! Primary (the two-vCPU counter guest with 12 MiB of non-zero ballast)
//! takes a new Secondary through a proxy that passes 2 MiB/s towards it
//! (above the ~0.9 MB/s its steady epochs need: 18 KiB of machine state
//! and pages 50 times a second), so the full epoch takes several failure
//! timeouts (1 s) to arrive. The
//! join still pairs, the switch is a later epoch than the full one (the
//! bulk streamed while the Primary ran alone), and neither side takes the
//! other for dead: the Primary hears the joining Secondary's keep-alives
//! throughout, and after the hand-over both members stay paired without
//! racing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{Request, Response};
use vm_memory::{Bytes, GuestAddress};

use super::driver::{Fencing, MemberDriver, PrimaryEffects, SecondaryEffects};
use super::gate::{EpochGate, GateConfig, Mode};
use super::gated::GatedOutputs;
use super::primary::LoopConfig;
use super::remote_tests::{counter_vm, MEM};
use super::respawn::{receive_join, CheckpointJoin, JoinTarget};
use super::test_support::{plan, slow_channel_pair};
use crate::lockstep::grant::HostGrant;
use crate::lockstep::member::{Decision, Member, State};
use crate::lockstep::respawn::keeper::JoinSource;
use crate::lockstep::spec::PairHandle;

const FAILURE_TIMEOUT: Duration = Duration::from_secs(1);
const BALLAST: usize = 12 << 20;

/// Fencing for members that must not race: a race is recorded (and lost).
struct NoRace(Arc<AtomicBool>);

impl Fencing for NoRace {
    fn acquire(&self, _vm: &str, _g: u64, _cancel: &AtomicBool) -> Option<Decision> {
        self.0.store(true, Ordering::SeqCst);
        Some(Decision::Lost {
            owner: "nobody".into(),
        })
    }
}

/// A fencing agent's socket answering that host-a owns generation 1 of
/// `kv` (the joining Secondary checks it before it counts as paired).
fn fencing_socket(dir: &Path) -> PathBuf {
    let socket = dir.join("fencing.sock");
    let listener = config_schema::ctl_server::bind(&socket).unwrap();
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(
            listener,
            config_schema::ctl_server::Policy::fencing_for_this_test(),
            |req| match req {
                Request::Highest { vm, .. } => Response::Highest {
                    generation: 1,
                    owner: Some("host-a".into()),
                    vm,
                    config_generation: 1,
                },
                other => Response::Error {
                    message: format!("not served: {other:?}"),
                },
            },
        )
    });
    socket
}

/// Parses "… at epoch F, paired at epoch J; …" of a join's report.
fn epochs_of(detail: &str) -> (u64, u64) {
    let num = |after: &str| -> u64 {
        let at = detail
            .find(after)
            .unwrap_or_else(|| panic!("{after} in {detail}"))
            + after.len();
        let digits: String = detail[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    (num("full checkpoint at epoch "), num("paired at epoch "))
}

#[test]
fn a_join_whose_full_epoch_takes_several_failure_timeouts_pairs_and_nobody_is_taken_for_dead() {
    let dir = tempfile::tempdir().unwrap();
    let fencing = fencing_socket(dir.path());
    let raced = Arc::new(AtomicBool::new(false));
    let ft_ms = FAILURE_TIMEOUT.as_millis() as u64;

    // host-a: a lone Primary in generation 1 (its gate starts in the one
    // before, as a take-over's does; the member opens it in 1).
    let cfg = GateConfig {
        max_dirty_pages: u64::MAX,
        max_write_bytes: u64::MAX,
    };
    let outputs = GatedOutputs::new(EpochGate::new(cfg, 0), None);
    let (running, pmem) = counter_vm(&outputs);
    let fill: Vec<u8> = (0..BALLAST).map(|i| (i % 251) as u8 + 1).collect();
    pmem.write_slice(&fill, GuestAddress(0x10_0000)).unwrap();
    let p_events = MemberDriver::channel();
    let loop_cfg = LoopConfig {
        epoch: Duration::from_millis(20),
        first_full: false,
        dirty: Default::default(),
        delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
    };
    let p_fx = PrimaryEffects::start_alone(
        "",
        Arc::new(running),
        Arc::clone(&outputs),
        loop_cfg,
        p_events.0.clone(),
    )
    .unwrap();
    let port = p_fx.join_port();
    let p_handle = Arc::new(PairHandle::default());
    let primary = MemberDriver::start(
        ("kv", "host-a"),
        Member::primary("kv", "host-b", 1, false, ft_ms),
        Box::new(p_fx),
        Arc::new(NoRace(Arc::clone(&raced))),
        Arc::clone(&p_handle),
        p_events,
    );
    let t = Instant::now();
    while outputs.mode() != (Mode::Solo { generation: 1 }) {
        assert!(t.elapsed() < Duration::from_secs(10), "never alone in 1");
        std::thread::sleep(Duration::from_millis(10));
    }

    // host-b joins through the slow proxy.
    // 128 KiB per 62 ms (2 MiB/s) from the Primary to the Secondary.
    let (p_ch, s_ch) = slow_channel_pair(128 << 10);
    let joiner = {
        let fencing = fencing.clone();
        std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            let t = JoinTarget {
                vm: "kv",
                primary: "host-a",
                generation: 1,
                mem_size: MEM,
                fencing,
                stop: &stop,
                timeout: FAILURE_TIMEOUT * 10,
                cuts: None,
            };
            receive_join(&t, s_ch)
        })
    };
    // The joining Secondary's silence as host-a's link sees it, while it
    // is host-a's link.
    let max_silence_ms = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (link, max, on) = (
            Arc::clone(&port.link),
            Arc::clone(&max_silence_ms),
            Arc::clone(&sampling),
        );
        std::thread::spawn(move || {
            while on.load(Ordering::SeqCst) {
                if link.connected() {
                    max.fetch_max(link.silent_for().as_millis() as u64, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let join = CheckpointJoin {
        handle: Arc::clone(&p_handle),
        port: Arc::new(Mutex::new(Some(port))),
        timeout: FAILURE_TIMEOUT * 3,
        silence: FAILURE_TIMEOUT,
    };
    let t0 = Instant::now();
    let report = join
        .join(p_ch, "host-b", 1, Arc::new(|_: u64| {}))
        .expect("the join pairs");
    let took = t0.elapsed();
    let (r, link) = joiner.join().unwrap().expect("host-b joined");
    let s_events = MemberDriver::channel();
    let s_fx =
        SecondaryEffects::start_on("kv", link, r, plan(HostGrant::always()), s_events.0.clone())
            .unwrap();
    let secondary = MemberDriver::start(
        ("kv", "host-b"),
        Member::secondary("kv", "host-a", 1, ft_ms),
        Box::new(s_fx),
        Arc::new(NoRace(Arc::clone(&raced))),
        Arc::new(PairHandle::default()),
        s_events,
    );
    let (full, switch) = epochs_of(&report.detail);
    eprintln!(
        "join over 2 MiB/s: {} ms ({}); the joining secondary's longest silence at host-a: {} ms",
        took.as_millis(),
        report.detail,
        max_silence_ms.load(Ordering::SeqCst)
    );
    assert!(
        took > FAILURE_TIMEOUT * 3,
        "the full epoch crossed in {took:?}: the proxy did not slow it down, the test proves nothing"
    );
    assert!(
        switch > full,
        "the switch epoch {switch} is not after the full epoch {full}: {}",
        report.detail
    );
    assert_eq!(primary.state(), State::Paired { g: 1 });

    // Paired: epochs acknowledged by host-b, nobody suspects anybody.
    let acked = outputs.progress().0;
    let t = Instant::now();
    while outputs.progress().0 < acked + 20 {
        assert!(t.elapsed() < Duration::from_secs(30), "no more acks");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(FAILURE_TIMEOUT * 3);
    sampling.store(false, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(primary.state(), State::Paired { g: 1 });
    assert_eq!(secondary.state(), State::Following { g: 1 });
    assert!(!raced.load(Ordering::SeqCst), "a member raced");
    let silence = max_silence_ms.load(Ordering::SeqCst);
    assert!(
        silence < ft_ms,
        "host-a heard nothing from the joining secondary for {silence} ms"
    );
    secondary.finish();
    primary.finish();
}
