//! A daemon-run checkpoint pair (issue 11): the Linux KV guest (the pinned
//! Debian kernel and `guest/linux-kv`'s initramfs, 2 vCPUs) as VM `web` of
//! `examples/linux-vm.toml`, its kernel and initrd written to the shared
//! device's image region the way `ftctl image write` does and pinned in the
//! signed config. host-a runs the Primary, host-b the Secondary; a client
//! does PUT/GET over ONE TCP connection while the harness kills host-a's
//! QEMU. host-b must win generation 2 and resume the guest from its last
//! complete epoch; the same connection goes on and every acknowledged PUT is
//! readable.
//!
//! History: it stalled in every run until stop 26, for two reasons found
//! then. (1) The guest's userspace console output was lost (no COM1 in the
//! DSDT: under hardware-reduced ACPI the 8250's IRQ 4 did not exist, see
//! `ftvmm/src/linux/acpi.rs`), so the guest looked stuck after the kernel's
//! last line; it was serving. (2) The client connected as soon as the
//! guest listened, while boot-time epochs (~16 MiB, seconds each over the
//! TCG FT network) held the guest's ARP reply past the client's 3 s: the
//! test now waits for the next epoch summary, and the client retries "No
//! route to host". The hosts here have two CPUs (`FT_CKPT_HOST_CPUS`), as
//! `linux_vm.rs`'s L1 (with one, the guest's two vCPUs share it with the
//! epoch loop and the daemons; not measured alone). Since: kill
//! the Primary's host, the same connection goes on, every acknowledged PUT
//! readable; pause 5.8 s with a 5 s failure timeout, 27.7 s with 20 s.
//! It was out of `make test` for a while: with two `yes` processes keeping
//! this machine's cores busy it failed 2 of 2 runs — during the boot-time
//! epochs (32 MiB) host-a's Primary sent nothing for 5 s while it harvested
//! and encoded, host-b took it for dead, won generation 2 and resumed the
//! guest from epoch 4, host-a lost the race and halted (safe: one live
//! copy, fenced), and the test, which kills host-a, waited for a guest that
//! now ran on host-b. Since each member sends keep-alives from a thread of
//! its own and the Secondary counts every authentic frame as heard
//! (`ftvmm/src/checkpoint/keepalive.rs`): 3 of 3 passed with the machine
//! otherwise in use by other builds (pause 7.0, 9.9, 5.9 s) and 3 of 3 with
//! two `yes` running throughout (pause 8.1, 10.5, 6.9 s; three more started
//! with `yes` passed too, 6.0, 7.6, 7.5 s, but someone killed the `yes`
//! processes part-way). So it runs in `make test` (which builds
//! `make linux-kv` for it) and in `make chaos`.
//! Stop 29 (CI failed once: host-b resumed the guest and it never answered
//! again): an epoch's machine state was not one instant — a device line
//! raised between reading a LAPIC and the IOAPIC left the restored IOAPIC
//! waiting for an EOI no LAPIC owed, the NIC dead (fixed in ftvmm,
//! `Bus::hold_irqs`). The test now kills whichever host runs the guest once
//! the pair is steady (`common/roles.rs`: a boot-time failover and the
//! rejoin that follows are the product working) and retries once, with a
//! new cluster, only when a host's L1 kernel froze while booting or crashed
//! in kvm_amd before the fault (QEMU TCG's emulated SVM; both seen here).
//! Runs with the fix: 5 of 5 passed (4 quiet, 1 with two `yes` running).
//! Stop 46 added the FT partition and the Primary's cut storage path
//! (`--ignored`, `make chaos`; [`Fault`]). The partition's first two runs
//! found the partitioned Primary a zombie: its epoch loop's send blocked
//! on the silent peer while holding the link's lock, which the member's
//! clock took on every tick, so it neither raced nor halted when deposed
//! (fixed in ftvmm's `checkpoint/driver_link.rs`). Since: partition 2 of
//! 2 that booted (host-a won once, host-b once; pauses 7.8 and 8.9 s with
//! the 5 s failure timeout); a third, with a core kept busy, never got
//! going: host-b's L1 kernel soft-locked while booting (now a test-bed
//! freeze, retried: `roles::wait_ready`). Storage cut 2 of 2 (8.3 and
//! 12.6 s), the second with a core kept busy.
//! Stop 48: `make chaos`'s partition run lost the guest host-b had resumed
//! to a triple fault 2.3 s after the take-over (on Debian's QEMU 7.2, whose
//! emulated SVM faults this guest far more often: `nested-qemu.lock`); the
//! hosts now run on the pinned QEMU 10 ([`pair_host`]). There, with the
//! delta cache's admission and the used-ring barrier in ftvmm: partition 4
//! of 4 (each side won twice; pauses 5.2, 5.9, 12.3 busy, 5.2 s), storage
//! cut 2 of 2 (7.9, 12.3 s busy), kill 2 of 2 (9.3, 9.5 s busy); "busy":
//! a core kept busy throughout.
//! `FT_CKPT_FAILURE_TIMEOUT_MS` (default 5000; the examples' 1000 is the
//! second test, `--ignored`, which also reboots host-a and waits until it
//! is the new Secondary by a join), `FT_LINUX_VM_VERBOSE=1` boots the guest without
//! `loglevel=4`, `FT_CKPT_GUEST_ARGS` adds kernel arguments. Replay:
//!
//! ```sh
//! make image linux-kv nested-qemu
//! flock /work/qemu.lock cargo test -p qemu-tests --test checkpoint_pair -- --nocapture
//! ```
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), `out/linux-kv-vmlinuz` and
//! `out/linux-kv-initrd.cpio.gz` (or `FT_OUT_DIR`), the hosts' pinned QEMU
//! (`make nested-qemu`: [`pair_host`]) and root; FAILS with a clear message
//! when one is missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::roles::{
    guest_fault_before, kernel_stopped, steady_pair, wait_new_line, wait_ready, GUEST_FAULT,
    L1_FROZE, L1_STOPPED, L1_SVM_CRASH,
};
use common::{survive, wait, BOOT_TIMEOUT};
use qemu_tests::cluster::ClusterSource;
use qemu_tests::console::Pattern;
use qemu_tests::kv::GUEST;
use qemu_tests::paths::workspace_root;
use qemu_tests::Cluster;

const VM: &str = "web";
const IMAGE: &str = "web-linux";

/// The Linux KV guest's files, or a message saying how to build them.
fn guest_files() -> (Vec<u8>, Vec<u8>) {
    let out = std::env::var_os("FT_OUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("out"));
    let read = |name: &str| {
        let p = out.join(name);
        std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `bash guest/linux-kv/build-initramfs.sh` first (FT_OUT_DIR as for it)",
                p.display()
            )
        })
    };
    (read("linux-kv-vmlinuz"), read("linux-kv-initrd.cpio.gz"))
}

/// `examples/linux-vm.toml` with only `web`, at the reference guest's
/// address and MAC (the harness's client talks to that), 128 MiB, the
/// image pinned to `kernel` and `initrd`, and the failure timeout
/// `failure_timeout_ms`.
fn config_text(kernel: &[u8], initrd: &[u8], failure_timeout_ms: u64) -> String {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("examples/linux-vm.toml")).unwrap();
    let kv_start = text.find("# The reference guest, in lockstep").unwrap();
    let kv_end = text.find("# The operator's Linux VM.").unwrap();
    let mut t = format!("{}{}", &text[..kv_start], &text[kv_end..]);
    let pin = |part: &str, offset: u32, bytes: &[u8]| {
        format!(
            "{part} = {{ offset_mib = {offset}, size_bytes = {}, sha256 = \"{}\" }}",
            bytes.len(),
            config_schema::shared_images::sha256_hex(bytes)
        )
    };
    let swaps = [
        // The first (full) epoch, ~15 MiB, crosses the TCG hosts' FT
        // network in 1 MiB pieces at ~1-2 MB/s: with the example's 1 s
        // each side took the other for silent during it (stop 26), and the
        // respawn that followed held the guest's frames for its 10 s join
        // timeout, so the client's connect failed. 5 s passes here; the
        // example's 1 s is `..._protected_again_with_the_examples_timeout`.
        (
            "failure_timeout_ms = 1000",
            format!("failure_timeout_ms = {failure_timeout_ms}"),
        ),
        ("memory_mib = 512", "memory_mib = 128".to_string()),
        (
            "mac = \"52:54:00:12:34:60\"",
            "mac = \"52:54:00:12:34:56\"".into(),
        ),
        (
            "ip = \"198.51.100.20/24\"",
            "ip = \"198.51.100.10/24\"".into(),
        ),
        (
            "cmdline = \"console=ttyS0 quiet\"",
            format!(
                "cmdline = \"console=ttyS0 reboot=k panic=-1 pci=off no_timer_check{}\"",
                guest_log_level()
            ),
        ),
    ];
    for (from, to) in swaps {
        assert!(t.contains(from), "linux-vm.toml changed: no {from:?}");
        t = t.replace(from, &to);
    }
    let lines: Vec<String> = t
        .lines()
        .map(|l| {
            if l.starts_with("kernel = {") {
                pin("kernel", 0, kernel)
            } else if l.starts_with("initrd = {") {
                pin("initrd", 32, initrd)
            } else {
                l.to_string()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

/// `loglevel=4` unless `FT_LINUX_VM_VERBOSE=1` (as in `linux_vm.rs`), plus
/// `FT_CKPT_GUEST_ARGS` (e.g. `initcall_debug`).
fn guest_log_level() -> String {
    let verbose = std::env::var_os("FT_LINUX_VM_VERBOSE").is_some_and(|v| v == "1");
    let extra = std::env::var("FT_CKPT_GUEST_ARGS").unwrap_or_default();
    let level = if verbose { "" } else { " loglevel=4" };
    format!("{level} {extra}").trim_end().to_string()
}

/// The pair's failure timeout (`FT_CKPT_FAILURE_TIMEOUT_MS`, default 5000).
fn failure_timeout_ms() -> u64 {
    std::env::var("FT_CKPT_FAILURE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// CPUs of each QEMU host (`FT_CKPT_HOST_CPUS`, default 2).
fn host_cpus() -> u32 {
    std::env::var("FT_CKPT_HOST_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// How a pair's host boots: two CPUs (as `linux_vm.rs`'s L1: the guest's
/// two vCPUs share the host with the epoch loop, the channel and the
/// daemons) on the pinned QEMU 10 of `nested-qemu.lock`, like that L1 —
/// Debian 12's QEMU 7.2 emulates SVM worse (its guest triple faults:
/// `nested-qemu.lock`), and this test's guest ran under nested KVM on it
/// until stop 48, whose `make chaos` partition run lost the guest host-b
/// had resumed to a triple fault 2.3 s later (`FT_L1_QEMU=system` runs it
/// there again).
fn pair_host(cluster: &Cluster, host: &str) -> qemu_tests::HostSpec {
    let mut spec = cluster.host_spec(host).unwrap();
    spec.cpus = host_cpus();
    spec.qemu = qemu_tests::paths::l1_qemu().unwrap_or_else(|e| panic!("{e}"));
    spec
}

fn source(dir: &Path, kernel: &[u8], initrd: &[u8], failure_timeout_ms: u64) -> ClusterSource {
    let example = ClusterSource::example();
    let config = dir.join("checkpoint-pair.toml");
    std::fs::write(&config, config_text(kernel, initrd, failure_timeout_ms)).unwrap();
    ClusterSource { config, ..example }
}

#[test]
fn kill_the_primary_host_the_checkpoint_pair_keeps_the_connection() {
    let mut k = pair_killed("checkpoint-pair", failure_timeout_ms());
    k.cluster.pass();
}

/// The FT network between the pair is cut both ways under a client's
/// connection: both members race for the next generation through fencing,
/// exactly one goes on (the Primary alone, or the Secondary resuming the
/// guest from its last complete epoch), the other halts its VM, guest
/// frames never come from both, and the client's connection goes on with
/// every acknowledged PUT readable. In `make chaos` (a QEMU cluster run of
/// minutes; `make test` keeps the kill as this pair's representative).
#[test]
#[ignore = "checkpoint-mode partition, minutes long: make chaos (run with --ignored)"]
fn ft_partition_of_the_checkpoint_pair_exactly_one_goes_on() {
    let mut k = pair_faulted(
        "checkpoint-partition",
        failure_timeout_ms(),
        Fault::FtPartition,
    );
    eprintln!(
        "checkpoint-pair: partition: {} goes on, {} halted",
        k.survivor, k.killed
    );
    k.cluster.pass();
}

/// The Primary's host loses its path to the shared storage under a
/// client's connection: its fencing lease lapses, it stops its VM and
/// resigns, the Secondary resumes the guest and the connection goes on,
/// every acknowledged PUT readable, guest frames from one host at a time.
/// In `make chaos` as the partition above.
#[test]
#[ignore = "checkpoint-mode storage cut, minutes long: make chaos (run with --ignored)"]
fn cut_the_checkpoint_primarys_storage_path_the_secondary_takes_over() {
    let mut k = pair_faulted(
        "checkpoint-storage-cut",
        failure_timeout_ms(),
        Fault::CutPrimaryStoragePath,
    );
    k.cluster.pass();
}

/// With the examples' timing (heartbeat 100 ms, failure timeout 1 s): the
/// Primary's host is killed, host-b resumes the guest with the client's
/// connection intact, then host-a boots again and host-b's keeper brings
/// it in as the new Secondary by a full checkpoint — tens of MiB over the
/// TCG hosts' FT network, many failure timeouts long, streamed while
/// host-b runs alone (`ftvmm/src/checkpoint/respawn.rs`) — and the VM is
/// protected again.
///
/// Runs (stop 28, helper ckpt7): 2 of 3 passed. Passed: failover pause
/// 1,740 and 1,775 ms; protected again 36.5 and 34.6 s after host-a's
/// reboot began (join 13.9 and 13.8 s from the hello, nearly all of it
/// streaming alone; full epoch 898 / 870, switch 999 / 975; the full
/// epoch's pause 634 ms in the second; the first had two false
/// suspicions before the kill too — host-b resumed in generation 4 — and
/// the joins after them worked). Failed: during the
/// boot-time epochs host-b took host-a for silent (2,211 ms at epoch 4),
/// won generation 2 and resumed the guest before it listened on host-a, so
/// this test's wait for the guest on host-a timed out — the steady pair's
/// liveness under 1 s on these hosts, not the join: host-a then joined as
/// host-b's Secondary (full epoch 18, 62.5 MiB, 1.1 s pause; switch at 20;
/// 25.6 s from the hello, 24.4 s of it streaming alone). So it is not in
/// `make test` or `make chaos` until the boot-time suspicion is fixed: run
/// it with `--ignored`.
///
/// Later runs (stops 29–30): 7 of 9 in all passed. The second failure was
/// not a suspicion: the guest host-b resumed ended about 40 s after the
/// take-over (cause not found; the guest's own failures without epochs are
/// measured by `linux_vm`'s control test).
#[test]
#[ignore = "7 of 9 passed: a boot-time false suspicion of the steady pair under 1 s, and a resumed guest that ended (see its doc); run with --ignored"]
fn kill_the_primary_host_the_checkpoint_pair_is_protected_again_with_the_examples_timeout() {
    let k = pair_killed("checkpoint-pair-1s", 1_000);
    let (mut cluster, killed, survivor) = (k.cluster, k.killed, k.survivor);
    let protected = format!("ftvmm: vm {VM}: protected: secondary {killed}");
    let before = cluster.host(&survivor).unwrap().console().mark();
    let t = Instant::now();
    cluster.boot_spec(pair_host(&cluster, &killed)).unwrap();
    let (a, b) = (
        cluster.host(&killed).unwrap(),
        cluster.host(&survivor).unwrap(),
    );
    wait_ready(a, &[b], BOOT_TIMEOUT);
    let line = wait_new_line(b, &protected, before, Duration::from_secs(900));
    eprintln!(
        "checkpoint-pair-1s: {killed} rebooted; protected again {:.1} s after its boot started: {line}",
        t.elapsed().as_secs_f64(),
    );
    wait(
        a,
        format!("ftvmm: vm {VM}: joined primary {survivor} as its secondary"),
    );
    // Still paired an epoch summary later (10 s: many failure timeouts).
    b.wait_for_next(
        format!("ftvmm: vm {VM}: checkpoint: epoch "),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // From the protected line on (the first of its kind after `before`).
    let lost: Vec<String> = (b.console().lines_after(before).into_iter())
        .map(|l| l.text)
        .skip_while(|t| !t.contains(&protected))
        .filter(|t| t.contains("secondary suspected") || t.contains("not protected"))
        .collect();
    assert!(
        lost.is_empty(),
        "{survivor} lost its new secondary again: {lost:?}"
    );
    cluster.pass();
}

/// An epoch summary of a pair whose epochs take under a second again:
/// `… R epochs/s (last N epochs)` with R ≥ 5.0 and N ≥ 20 (the format of
/// `ftvmm/src/checkpoint/local.rs`'s `Summary`; epoch 1's summary is
/// "1000.0 epochs/s (last 1 epochs)" and does not count). A steady pair
/// here runs 14–28 epochs/s; at 3.4 epochs/s (stop 33, a summary over 34
/// epochs) the client's first ARP still went unanswered for 3 s.
fn settled_summary() -> Pattern {
    Pattern::regex(&format!(
        r"ftvmm: vm {VM}: checkpoint: epoch \d+: .*, ([5-9]|[1-9][0-9]+)\.[0-9] epochs/s \(last ([2-9][0-9]|[1-9][0-9]{{2,}}) epochs\)"
    ))
    .expect("a valid regex")
}

#[test]
fn the_settled_summary_skips_boot_time_epochs() {
    let p = settled_summary();
    let line = |rate: &str, n: u32| {
        format!("ftvmm: vm {VM}: checkpoint: epoch 3: pause median 690.74 ms max 690.74 ms, 12754 pages and 31784 KiB per epoch, {rate} epochs/s (last {n} epochs)")
    };
    // CI, stop 32: the first summary after the guest listened.
    assert!(!p.matches(&line("0.1", 2)));
    assert!(!p.matches(&line("3.4", 34)));
    assert!(!p.matches(&line("1000.0", 1)));
    assert!(!p.matches(&line("9.5", 19)));
    assert!(p.matches(&line("5.0", 20)));
    assert!(p.matches(&line("14.5", 99)));
    assert!(p.matches(&line("23.4", 100)));
}

/// What [`pair_killed`] leaves: the cluster (to pass or go on with), its
/// files, the host it killed and the one that resumed the guest.
struct Killed {
    cluster: Cluster,
    _tmp: tempfile::TempDir,
    killed: String,
    survivor: String,
}

/// Boots host-a and host-b paired on the Linux KV guest with
/// `failure_timeout_ms`, kills the Primary's host under a client's
/// connection and waits until the other host resumed it and the connection
/// went on. Run up to three times, with a new cluster each, only for the
/// test bed's failures: a host's kernel froze while booting
/// (`roles::wait_ready`) or crashed in kvm_amd before the fault, the
/// survivor's kernel stopped while taking the VM over
/// (`roles::kernel_stopped`: CI, stop 42, once in the runs of this test
/// since stop 26; 0 of 8 runs here after it), or the guest triple-faulted
/// on the Primary before the kill (`roles::guest_fault_before`: stop 43's
/// `make test`, epoch 176 of a steady pair, the client's connection lost
/// with the guest's reboot). Three, as `linux_vm.rs` measured: the cluster
/// hosts run Debian 12's QEMU 7.2, where that test counted a guest fault
/// in about one boot of five.
fn pair_killed(name: &str, failure_timeout_ms: u64) -> Killed {
    pair_faulted(name, failure_timeout_ms, Fault::KillPrimaryHost)
}

/// What the harness does to the steady pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL to the Primary's host's QEMU: the Secondary resumes the guest.
    KillPrimaryHost,
    /// The FT network between the two hosts is cut both ways: both race
    /// through fencing, exactly one goes on, the other halts its VM.
    FtPartition,
    /// The Primary's host's path to the shared storage hangs (NBD): its
    /// fencing lease lapses, it stops its VM and resigns, and the Secondary
    /// resumes the guest.
    CutPrimaryStoragePath,
}

/// [`pair_killed`] for any [`Fault`]; `killed` is the host that stopped
/// running the guest, `survivor` the one that runs it afterwards.
fn pair_faulted(name: &str, failure_timeout_ms: u64, fault: Fault) -> Killed {
    qemu_tests::testbed::retry_on(
        name,
        &[L1_FROZE, L1_SVM_CRASH, L1_STOPPED, GUEST_FAULT],
        3,
        || pair_faulted_once(name, failure_timeout_ms, fault),
    )
}

fn pair_faulted_once(name: &str, failure_timeout_ms: u64, fault: Fault) -> Killed {
    let (kernel, initrd) = guest_files();
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(
        name,
        &source(tmp.path(), &kernel, &initrd, failure_timeout_ms),
    )
    .unwrap();
    config_schema::shared_images::write_image(
        cluster.config(),
        IMAGE,
        cluster.shared_storage(),
        &kernel,
        Some(&initrd),
    )
    .expect("write the image to the shared device");
    if fault == Fault::CutPrimaryStoragePath {
        cluster.use_nbd_storage().unwrap();
    }
    for h in ["host-a", "host-b"] {
        cluster.boot_spec(pair_host(&cluster, h)).unwrap();
    }
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    wait_ready(a, &[b], BOOT_TIMEOUT);
    wait_ready(b, &[a], BOOT_TIMEOUT);
    // host-a starts as the Primary; during the boot-time epochs (tens of
    // MiB, seconds each here) the pair may fail over once and pair again
    // the other way round (the history is printed then): the fault goes
    // to whichever host runs the guest once it is paired and serving.
    let listening = format!("[{VM}] kv: listening on {GUEST}");
    let (p, s) = steady_pair(
        &cluster,
        ["host-a", "host-b"],
        VM,
        &listening,
        "host-a",
        Duration::from_secs(600),
    );
    // Booting, the guest dirties ~16 MiB per epoch and an epoch takes
    // seconds over the TCG hosts' FT network (0.1–0.3 epochs/s): an ARP
    // reply held that long fails the client's connect ("No route to host").
    // Wait for a summary (every 10 s) that says epochs are short again:
    // at least 5 epochs/s over at least 20 epochs. The first summary
    // after `listening` was not enough (CI, stop 32: it still said 0.1
    // epochs/s, 12,754 pages per epoch, and the connect failed).
    // The guest's own triple fault on the Primary while epochs settle is
    // the test bed's too (this stop's `make test`: epoch 60, before the
    // kill; the Secondary took over and the summary never came on host-a).
    let settled = p
        .wait_after(
            p.console().mark(),
            settled_summary(),
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| match guest_fault_before(p, VM, None) {
            Some(line) => panic!(
                "{GUEST_FAULT}: on {}: {line} (waiting for short epochs)",
                p.name()
            ),
            None => panic!("{e}"),
        });
    eprintln!(
        "checkpoint-pair: primary {}, secondary {}; after the guest listens: {settled}",
        p.name(),
        s.name()
    );
    let resumed = format!("ftvmm: vm {VM}: resumed from epoch");
    let before = s.console().mark();
    let before_p = p.console().mark();
    let killed_at = std::sync::Mutex::new(None);
    let winner = std::sync::Mutex::new(s.name().to_string());
    cluster.vm.start_capture();
    let what = match fault {
        Fault::KillPrimaryHost => "checkpoint primary host killed",
        Fault::FtPartition => "checkpoint pair's FT network partitioned",
        Fault::CutPrimaryStoragePath => "checkpoint primary's storage path cut",
    };
    let resumed_on_s = || match s.wait_after(before, resumed.as_str(), Duration::from_secs(120)) {
        Ok(l) => eprintln!("  [{}] {l}", s.name()),
        Err(e) if kernel_stopped(s, before, &e.to_string()) => {
            panic!("{L1_STOPPED}: {} while taking the VM over: {e}", s.name())
        }
        Err(e) => panic!("{e}"),
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        survive(
            &cluster,
            what,
            || {
                *killed_at.lock().unwrap() = Some(Instant::now());
                match fault {
                    Fault::KillPrimaryHost => p.kill().unwrap(),
                    Fault::FtPartition => cluster.ft.partition(&[p.name()], &[s.name()]).unwrap(),
                    Fault::CutPrimaryStoragePath => cluster.storage_path(p.name()).unwrap().cut(),
                }
            },
            || match fault {
                Fault::KillPrimaryHost => resumed_on_s(),
                Fault::CutPrimaryStoragePath => {
                    wait(p, "fencing: lease renewal failing".into());
                    resumed_on_s()
                }
                Fault::FtPartition => {
                    let w = one_wins_the_race(p, before_p, s, before);
                    *winner.lock().unwrap() = w;
                }
            },
        )
    }));
    let (_ms, acked) = match run {
        Ok(r) => r,
        Err(payload) => {
            let until = *killed_at.lock().unwrap();
            if let Some(line) = guest_fault_before(p, VM, until) {
                panic!("{GUEST_FAULT}: on {}: {line}", p.name());
            }
            std::panic::resume_unwind(payload)
        }
    };
    assert!(!acked.is_empty(), "no PUT was acknowledged");
    let frames = cluster.vm.stop_capture();
    let survivor = winner.into_inner().unwrap();
    let killed = if survivor == p.name() {
        s.name()
    } else {
        p.name()
    }
    .to_string();
    one_emitter_at_a_time(&frames, p.name(), &survivor);
    Killed {
        cluster,
        _tmp: tmp,
        killed,
        survivor,
    }
}

/// Both sides of a partitioned pair race for the next generation: waits
/// until one of them won it (the Primary goes on alone, or the Secondary
/// resumed the guest) and the other says it lost and halts its VM; never
/// both. Returns the winner's name.
fn one_wins_the_race(
    p: &qemu_tests::Host,
    p_mark: qemu_tests::console::Mark,
    s: &qemu_tests::Host,
    s_mark: qemu_tests::console::Mark,
) -> String {
    // A Primary that wins runs on alone (the member's "won generation N;
    // primary continues ..."); a Secondary that wins says where it resumed.
    let won = Pattern::regex(&format!(
        r"ftvmm: vm {VM}: (won generation \d+|resumed from epoch \d+ .*in generation \d+)"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (w, l, l_mark) = loop {
        let p_won = !p
            .console()
            .lines_after(p_mark)
            .iter()
            .all(|x| !won.matches(&x.text));
        let s_won = !s
            .console()
            .lines_after(s_mark)
            .iter()
            .all(|x| !won.matches(&x.text));
        assert!(
            !(p_won && s_won),
            "both hosts won a generation after the partition"
        );
        if p_won {
            break (p, s, s_mark);
        }
        if s_won {
            break (s, p, p_mark);
        }
        assert!(
            Instant::now() < deadline,
            "nobody won the race after the partition"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let lost = Pattern::regex(&format!(
        r"ftvmm: vm {VM}: (lost generation \d+ to {}|generation \d+ is superseded by generation \d+); halting the VM",
        w.name()
    ))
    .unwrap();
    l.wait_after(l_mark, lost, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{} won, {} did not halt: {e}", w.name(), l.name()));
    eprintln!(
        "checkpoint-pair: partition: {} won, {} halted its VM",
        w.name(),
        l.name()
    );
    w.name().to_string()
}

/// Guest frames came from one host at a time: if the Primary `p` stayed
/// the winner, from it alone (a Secondary never emits); otherwise the
/// Primary's last one precedes the winner's first.
fn one_emitter_at_a_time(frames: &[qemu_tests::hub::CapturedFrame], p: &str, winner: &str) {
    let guest = common::guest_frames(frames);
    assert!(!guest.is_empty(), "no guest frames captured");
    if winner == p {
        let others: Vec<_> = guest.iter().filter(|f| f.from != p).collect();
        assert!(
            others.is_empty(),
            "the Secondary emitted guest output: {} frames",
            others.len()
        );
        return;
    }
    let first_w = guest.iter().find(|f| f.from == winner).map(|f| f.at);
    let last_p = guest.iter().rev().find(|f| f.from == p).map(|f| f.at);
    if let (Some(fw), Some(lp)) = (first_w, last_p) {
        assert!(lp < fw, "{p} emitted guest output after {winner} went live");
    }
    assert!(
        guest.iter().all(|f| f.from == p || f.from == winner),
        "guest output from a third host"
    );
}
