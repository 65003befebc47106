//! Record/replay between two PROCESSES on the host's /dev/kvm, over loopback
//! TCP and the real Noise channel (issue 4: "Primary and Secondary ftvmm as
//! two processes over loopback").
//!
//! The test binary spawns itself: with `FT_PAIR_CHILD=secondary` the test
//! function is the Secondary (listens on 127.0.0.1, accepts only the parent's
//! host key, checks its Hello, boots the same reference guest in KV mode and
//! replays the log through `link::start_secondary`). Otherwise it is the
//! Primary: live backends (disk on a temp file, the live timer, ARP request
//! frames injected at random wall-clock times, no TAP), recorded into a
//! `PrimaryLog` shipped by `link::start_primary`. Both vCPUs are kicked every
//! few µs (host exits at arbitrary guest instructions, issue 14). At a memory-digest point both
//! stop at the same exit; the child writes its trace, registers and memory
//! digest to a JSON file and the parent compares them with its own. Outputs
//! must have left the Primary only under the Output Rule.
//!
//! Needs /dev/kvm and the guest ELF (see tests/ftguest.rs); fails otherwise.
//! The child never outlives a deadline: it exits on its own after
//! [`CHILD_DEADLINE`], and the parent kills it when it fails or gives up.

mod common;

use common::{arp_request, boot_kv_guest, guest_elf, live_kv_guest, LiveKv, KV_MEM_MIB};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvmm::io::InputEvent;
use ftvmm::live;
use ftvmm::lockstep::channel::{self, Hello, Identity, Message};
use ftvmm::lockstep::digest::memory_sha256;
use ftvmm::lockstep::link;
use ftvmm::lockstep::pair::secondary_handshake;
use ftvmm::lockstep::primary::{PrimaryInputs, PrimaryLog, PrimaryOutputs};
use ftvmm::lockstep::secondary::{ReplayQueue, SecondaryInputs, SecondaryOutputs};
use ftvmm::lockstep::spec::image_sha256;
use ftvmm::vcpu::TraceEntry;
use ftvmm::RunOutcome;
use serde::{Deserialize, Serialize};

const TEST_NAME: &str = "two_processes_replay_identically_over_loopback";
const CHILD_ENV: &str = "FT_PAIR_CHILD";
/// Directory where the child writes `port` and `result.json`.
const DIR_ENV: &str = "FT_PAIR_DIR";
/// The Secondary's host secret and the Primary's public key (hex).
const SECRET_ENV: &str = "FT_PAIR_SECONDARY_SECRET";
const PRIMARY_PUB_ENV: &str = "FT_PAIR_PRIMARY_PUBLIC";

/// Exits from the first input call to the memory-digest pause.
const DIGEST_DISTANCE: u64 = 30_000;
/// The child exits (status 3) if it is still running after this.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);
/// The parent gives up on the child (and kills it) after this.
const PARENT_WAIT: Duration = Duration::from_secs(320);
const VM_NAME: &str = "pair-loopback";
const PRIMARY_HOST: &str = "primary-host";

/// What the Secondary process reports.
#[derive(Debug, Serialize, Deserialize)]
struct SecondaryResult {
    outcome: String,
    pause: Option<u64>,
    exit_index: u64,
    trace: Vec<TraceEntry>,
    regs: kvm_bindings::kvm_regs,
    memory_sha256: String,
    replay_end: Option<String>,
    divergences: u64,
    host_exits: u64,
}

fn hello() -> Hello {
    Hello {
        vm: VM_NAME.into(),
        generation: 1,
        config_generation: 1,
        config_digest: [0x2b; 32],
        image_sha256: image_sha256(&guest_elf()).expect("hash the guest image"),
        mem_mib: KV_MEM_MIB,
        start_exit: 0,
        primary_host: PRIMARY_HOST.into(),
        replication: ftvmm::lockstep::channel::PairMode::Lockstep,
        platform: Box::new(
            ftvmm::platform::Platform::for_host(&Default::default())
                .expect("this host provides the default CPU baseline"),
        ),
    }
}

/// An ARP request "who has 10.0.0.2" from 10.0.0.1.
fn to_hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn env_key(name: &str) -> [u8; 32] {
    let v = std::env::var(name).unwrap_or_else(|_| panic!("child: {name} not set"));
    config_schema::keys::parse_hex_key(&v).unwrap_or_else(|e| panic!("child: bad {name}: {e}"))
}

/// Kicks `kicker`'s vCPU every 5..=300 µs until `stop` (host exits at
/// arbitrary guest instructions; issue 14).
fn kick_every_few_us(
    kicker: Arc<ftvmm::kick::Kicker>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            kicker.kick();
            i += 1;
            std::thread::sleep(Duration::from_micros(5 + (i * 7919) % 296));
        }
    })
}

#[test]
fn two_processes_replay_identically_over_loopback() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("secondary") => secondary_process(),
        Ok(other) => panic!("{CHILD_ENV}={other:?}: unknown role"),
        Err(_) => primary_process(),
    }
}

// ---------------------------------------------------------------- Secondary

/// The child: runs the Secondary, writes `result.json`, returns.
fn secondary_process() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("child: FT_PAIR_DIR not set"));
    let identity = Identity {
        private_key: env_key(SECRET_ENV),
    };
    let primary_pub = env_key(PRIMARY_PUB_ENV);

    // Never hang: a watchdog ends the whole process past the deadline, and
    // stops the accept loop long before.
    let stop_accept = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop_accept);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            stop.store(true, Ordering::SeqCst);
            std::thread::sleep(CHILD_DEADLINE.saturating_sub(Duration::from_secs(60)));
            eprintln!(
                "pair_loopback child: still running after {CHILD_DEADLINE:?}; exiting with status 3"
            );
            std::process::exit(3);
        });
    }

    let listener = TcpListener::bind("127.0.0.1:0").expect("child: bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    // Publish the port atomically (write, then rename).
    std::fs::write(dir.join("port.tmp"), port.to_string()).unwrap();
    std::fs::rename(dir.join("port.tmp"), dir.join("port")).unwrap();

    let allowed: ftvmm::lockstep::pair::Allowed =
        Arc::new(move |k: &[u8; 32]| (*k == primary_pub).then(|| PRIMARY_HOST.to_string()));
    let expected = hello();
    let verify = |_: &Hello| Ok(());
    let (ch, got) = secondary_handshake(
        &listener,
        &identity,
        allowed,
        &expected,
        &verify,
        &stop_accept,
    )
    .expect("child: pair start (accept + hello)");
    assert_eq!(got, expected, "child: hello differs");

    let mut vm = boot_kv_guest();
    // Host exits at arbitrary guest instructions must not change the replay.
    let stop_kicks = Arc::new(AtomicBool::new(false));
    let kicks = kick_every_few_us(vm.handle().kicker(), Arc::clone(&stop_kicks));
    let q = ReplayQueue::new(0);
    let (tx, rx) = ch.split();
    let link = link::start_secondary(Arc::clone(&q), tx, rx, Arc::new(|| {}), Arc::new(|_| {}));
    let mut sin = SecondaryInputs::new(Arc::clone(&q), vm.handle());
    let outcome = vm
        .run(&mut sin, &mut SecondaryOutputs(Arc::clone(&q)), None)
        .expect("child: vCPU loop failed");
    let result = SecondaryResult {
        outcome: format!("{outcome:?}"),
        pause: sin.take_pause(),
        exit_index: vm.exit_index(),
        trace: vm.take_trace(),
        regs: vm.vcpu().get_regs().expect("child: KVM_GET_REGS"),
        memory_sha256: memory_sha256(vm.memory()),
        replay_end: sin.end().map(|e| format!("{e:?}")),
        divergences: q.divergences(),
        host_exits: vm.stats().host,
    };
    stop_kicks.store(true, Ordering::SeqCst);
    kicks.join().unwrap();
    let json = serde_json::to_vec(&result).unwrap();
    std::fs::write(dir.join("result.tmp"), json).unwrap();
    std::fs::rename(dir.join("result.tmp"), dir.join("result.json")).unwrap();
    link.stop("secondary done");
}

// ------------------------------------------------------------------ Primary

/// Kills the child unless it was reaped (a failing parent never leaves it).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Waits for the child's exit up to `limit`; kills it past that.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().expect("child already reaped");
        loop {
            if let Some(st) = child.try_wait().expect("wait for the child") {
                self.0 = None;
                return st;
            }
            if Instant::now() > deadline {
                panic!("the Secondary process did not finish within {limit:?}; killed it");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics (killing the child) if it already exited.
    fn check_alive(&mut self, what: &str) {
        if let Some(st) = self.0.as_mut().unwrap().try_wait().unwrap() {
            self.0 = None;
            panic!("the Secondary process exited ({st}) while {what}");
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_file(path: &Path, child: &mut ChildGuard, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(b) = std::fs::read(path) {
            return b;
        }
        child.check_alive(&format!("the parent waited for {}", path.display()));
        assert!(
            Instant::now() < deadline,
            "no {} from the Secondary within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn primary_process() {
    // Fail early and clearly without the guest or /dev/kvm.
    let elf = guest_elf();
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (the Primary and Secondary run the guest on KVM)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (p_secret, p_public) = config_schema::keys::generate_host_key().unwrap();
    let (s_secret, s_public) = config_schema::keys::generate_host_key().unwrap();

    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "secondary")
        .env(DIR_ENV, dir.path())
        .env(SECRET_ENV, to_hex(&s_secret))
        .env(PRIMARY_PUB_ENV, to_hex(&p_public))
        .env("FTGUEST_ELF", &elf)
        .spawn()
        .expect("spawn the Secondary process");
    let mut child = ChildGuard(Some(child));

    // --- Pair start over loopback: Noise IK with the host keys, then Hello.
    let port: u16 = String::from_utf8(wait_for_file(
        &dir.path().join("port"),
        &mut child,
        Duration::from_secs(60),
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let identity = Identity {
        private_key: p_secret,
    };
    let mut ch = channel::connect(
        addr,
        &identity,
        &s_public,
        "secondary-host",
        Duration::from_secs(10),
    )
    .expect("connect to the Secondary");
    ch.send(&Message::Hello(hello())).unwrap();
    ch.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    match ch.recv().expect("hello reply") {
        Message::HelloReply { accepted: true, .. } => {}
        other => panic!("the Secondary did not accept the pair: {other:?}"),
    }
    ch.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // --- Primary: live backends, recorded.
    let LiveKv {
        disk_file: _disk_file,
        vm: mut pvm,
        console,
        live: live::Live {
            inputs,
            outputs,
            backends,
        },
    } = live_kv_guest();
    let log = PrimaryLog::new(Box::new(outputs), Duration::from_millis(500));
    let mut pin = PrimaryInputs::new(inputs, Arc::clone(&log));
    pin.digest_request()
        .store(DIGEST_DISTANCE, Ordering::SeqCst);
    let (tx, rx) = ch.split();
    let link = link::start_primary(Arc::clone(&log), tx, rx, Arc::new(|| {}), Arc::new(|_| {}));
    link_threads_run_real_time(&["lockstep-send", "lockstep-ack"]);
    let stop_kicks = Arc::new(AtomicBool::new(false));
    let kicks = kick_every_few_us(pvm.handle().kicker(), Arc::clone(&stop_kicks));

    // Frames at random wall-clock times (timer ticks come from the live timer).
    let stop = Arc::new(AtomicBool::new(false));
    let injector = {
        let (queue, stop) = (backends.queue(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut k = 1u8;
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                queue.push(InputEvent::Frame {
                    dev: 0,
                    data: arp_request(k),
                });
                sent += 1;
                k = k.wrapping_add(1);
                std::thread::sleep(Duration::from_micros(2_000 + 997 * u64::from(k % 7)));
            }
            sent
        })
    };

    let outcome = pvm
        .run(&mut pin, &mut PrimaryOutputs(Arc::clone(&log)), None)
        .expect("primary vCPU loop");
    // Taking the pause tells the Secondary, waiting in the same input call,
    // how that call ended.
    let pause = pin.take_pause();
    assert!(pause.is_some(), "primary paused for the digest");
    stop.store(true, Ordering::SeqCst);
    stop_kicks.store(true, Ordering::SeqCst);
    kicks.join().unwrap();
    let frames = injector.join().unwrap();
    let p_trace = pvm.take_trace();
    let p_regs = pvm.vcpu().get_regs().unwrap();
    let p_mem = memory_sha256(pvm.memory());

    // --- The Secondary's result.
    let status = child.wait(PARENT_WAIT);
    let bytes = std::fs::read(dir.path().join("result.json"))
        .unwrap_or_else(|e| panic!("the Secondary process ended ({status}) without a result: {e}"));
    assert!(status.success(), "the Secondary process failed: {status}");
    let s: SecondaryResult = serde_json::from_slice(&bytes).unwrap();
    // The Secondary's acks released whatever the Output Rule allows by now.
    let stats = log.stats();
    let held = log.held() as u64;
    link.stop("test done");
    log.detach_sink();
    drop(backends);

    assert_eq!(outcome, RunOutcome::ExitLimit);
    assert_eq!(s.replay_end, None, "the Secondary stopped replaying");
    assert_eq!(s.divergences, 0);
    assert!(
        pvm.stats().host > 0 && s.host_exits > 0,
        "kicks caused no host exits: primary {}, secondary {}",
        pvm.stats().host,
        s.host_exits
    );
    assert_eq!(s.outcome, format!("{:?}", RunOutcome::ExitLimit));
    assert_eq!(pause, s.pause, "different memory-digest points");
    assert_eq!(pvm.exit_index(), s.exit_index);
    assert_eq!(Some(s.exit_index), pause);
    assert!(
        s.exit_index >= DIGEST_DISTANCE,
        "paused at {}",
        s.exit_index
    );
    assert_eq!(p_trace.len(), s.trace.len(), "trace lengths differ");
    if let Some(i) = (0..p_trace.len()).find(|&i| p_trace[i] != s.trace[i]) {
        panic!(
            "exit/RIP traces differ first at entry {i}: primary {:?}, secondary {:?}",
            p_trace[i], s.trace[i]
        );
    }
    assert_eq!(p_regs, s.regs, "final registers differ");
    assert_eq!(p_mem, s.memory_sha256, "guest memory differs");

    // Inputs of every kind went through the log, and outputs through the rule.
    assert!(frames > 0);
    assert!(stats.records > 100, "{stats:?}");
    assert!(stats.batches > 1, "{stats:?}");
    assert!(stats.outputs_emitted > 0, "{stats:?}");
    assert_eq!(
        stats.outputs_released + held,
        stats.outputs_emitted,
        "{stats:?}"
    );
    assert!(stats.outputs_released > 0, "{stats:?}");
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).to_string();
    assert!(text.contains("kv"), "guest console: {text}");
    eprintln!(
        "pair_loopback: identical at exit {}: {} traced exits, {} frames injected, {} records in {} batches ({} bytes), outputs {} emitted / {} released",
        s.exit_index,
        s.trace.len(),
        frames,
        stats.records,
        stats.batches,
        stats.log_bytes,
        stats.outputs_emitted,
        stats.outputs_released
    );
}

/// The link's threads run `SCHED_RR` at the link priority where this
/// process may (root), and the thread that started them — the one that
/// runs the vCPU here — stays at the normal policy (`ftvmm::priority`).
fn link_threads_run_real_time(names: &[&str]) {
    use config_schema::sched;
    let allowed = std::thread::spawn(|| sched::realtime_thread(1).is_ok())
        .join()
        .unwrap();
    let policy = |tid: i32| {
        // SAFETY: sched_getscheduler only reads the policy of task `tid`.
        let p = unsafe { libc::sched_getscheduler(tid) };
        p & !libc::SCHED_RESET_ON_FORK
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    for name in names {
        let want = if allowed {
            libc::SCHED_RR
        } else {
            libc::SCHED_OTHER
        };
        loop {
            let found: Vec<i32> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| {
                    let tid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                    let comm =
                        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
                    (comm.trim() == *name).then_some(policy(tid))
                })
                .collect();
            if !found.is_empty() && found.iter().all(|p| *p == want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "thread {name}: policies {found:?}, want {want} (real-time allowed: {allowed})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(sched::describe_thread(), "SCHED_OTHER", "the vCPU's thread");
}
