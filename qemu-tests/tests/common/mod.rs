//! Helpers shared by the failover tests: a booted pair, a client that does
//! PUT/GET over one TCP connection through a fault (`client`), and the pause
//! it saw; the three-host cluster of the respawn tests (`respawn`).

#![allow(dead_code)] // each test file uses its own subset

pub mod client;
pub mod respawn;
pub mod roles;
pub mod slots;

use std::time::{Duration, Instant};

use qemu_tests::kv::{key, on_disk, value, GUEST};
use qemu_tests::{Cluster, ConsoleLine, Host, Pattern};

pub use client::Client;

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
pub const VM: &str = "kv";
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Boots host-a and host-b and waits until the pair serves.
pub fn pair(name: &str) -> Cluster {
    pair_with(name, false)
}

/// [`pair`], with each host's storage through its own NBD path if `nbd`.
pub fn pair_with(name: &str, nbd: bool) -> Cluster {
    boot_pair(Cluster::example(name).unwrap(), nbd)
}

/// Boots `cluster`'s host-a and host-b (each with its storage through its
/// own NBD path if `nbd`) and waits until the pair serves.
pub fn boot_pair(mut cluster: Cluster, nbd: bool) -> Cluster {
    if nbd {
        cluster.use_nbd_storage().unwrap();
    }
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }
    wait_paired(cluster)
}

/// [`pair`] on the iSCSI LUN with persistent reservations
/// (`Cluster::use_iscsi_storage`), each host through its own path and I_T
/// nexus. Kernel+initrd boots with `no_timer_check`: under TCG on a loaded
/// machine the kernel's IO-APIC timer check can fail and panic.
pub fn pair_on_iscsi(name: &str) -> Cluster {
    let mut cluster = Cluster::example(name).unwrap();
    cluster.use_iscsi_storage().unwrap();
    for h in ["host-a", "host-b"] {
        let mut spec = cluster.host_spec(h).unwrap();
        spec.boot = cluster.kernel_boot("no_timer_check").unwrap();
        cluster.boot_spec(spec).unwrap();
    }
    wait_paired(cluster)
}

/// [`pair`] on two emulated servers ([`qemu_tests::Machine::ServerQ35`]:
/// q35, OVMF, e1000e NICs, config disk on AHCI, the ICH9 TCO watchdog),
/// booting the ISO under UEFI as it ships; with each host's storage through
/// its own NBD path if `nbd`; `tco_may_reset` false leaves the chipset's
/// no-reboot strap as QEMU sets it (the TCO then never resets the host).
pub fn pair_on_server_hw(name: &str, nbd: bool, tco_may_reset: bool) -> Cluster {
    let mut cluster = Cluster::example(name).unwrap();
    if nbd {
        cluster.use_nbd_storage().unwrap();
    }
    for h in ["host-a", "host-b"] {
        let mut spec = cluster.host_spec(h).unwrap();
        spec.machine = qemu_tests::Machine::server_q35().unwrap();
        spec.watchdog = tco_may_reset;
        // COM2 (ttyS1), where serial-over-LAN usually is on Dell and HPE
        // servers: init writes its lines there too.
        spec.add_com2();
        cluster.boot_spec(spec).unwrap();
    }
    wait_paired(cluster)
}

/// Waits until host-a and host-b are ready, paired, and the guest serves.
pub fn wait_paired(cluster: Cluster) -> Cluster {
    for h in ["host-a", "host-b"] {
        cluster
            .host(h)
            .unwrap()
            .wait_for(
                format!("appliance ready: host={h} generation=1"),
                BOOT_TIMEOUT,
            )
            .unwrap();
    }
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    b.wait_for(
        format!("ftvmm: vm {VM}: paired with primary host-a; generation 1"),
        Duration::from_secs(120),
    )
    .unwrap();
    a.wait_for(
        format!("[{VM}] kv: listening on {GUEST}"),
        Duration::from_secs(300),
    )
    .unwrap();
    cluster
}

/// Runs the client, applies `fault` once it has made progress, waits for
/// `recovered` and some more replies, then checks every acknowledged PUT on
/// the same connection. Returns the pause in ms and the acknowledged keys.
pub fn survive(
    cluster: &Cluster,
    what: &str,
    fault: impl FnOnce(),
    recovered: impl FnOnce(),
) -> (f64, Vec<usize>) {
    // The VM network's frames, for the diagnosis if the client stalls (a
    // test that captures for its own checks has started this already).
    if !cluster.vm.capturing() {
        cluster.vm.start_capture();
    }
    let client = Client::start(cluster, what);
    client.wait_replies(40, Duration::from_secs(120));
    let before = client.replies();
    let t_fault = Instant::now();
    fault();
    recovered();
    if let Err(e) = client.try_wait_replies(before + 40, Duration::from_secs(180)) {
        stalled(cluster, t_fault);
        panic!("{e}");
    }
    // The read-back of every acknowledged PUT can stall too (a guest that
    // served after the fault and then went away): the same diagnosis then.
    let done = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.finish())) {
        Ok(done) => done,
        Err(e) => {
            stalled(cluster, t_fault);
            std::panic::resume_unwind(e)
        }
    };
    let ms = done.pause(t_fault, None).as_secs_f64() * 1000.0;
    eprintln!(
        "failover: {what}: pause {ms:.0} ms (failure timeout {} ms); {} acknowledged PUTs all readable on the same connection",
        cluster.config().timing.failure_timeout_ms,
        done.acked.len()
    );
    (ms, done.acked)
}

/// What the VM network carried around a stall: each port's counters, the
/// frames from 2 s before the fault on (the last 80 as lines on stderr,
/// all of them as `vm-network.pcap` in the cluster's directory, which a
/// failing test keeps).
fn stalled(cluster: &Cluster, t_fault: Instant) {
    use qemu_tests::hub::frames;
    // A checkpoint VM's epoch summary names a device whose interrupt the
    // guest stopped taking (`Bus::lines_unanswered`).
    for h in cluster.hosts() {
        for l in h.console().lines() {
            if l.text.contains("WARNING: virtio slot") {
                eprintln!("[{} {:7.3}] {}", h.name(), l.at.as_secs_f64(), l.text);
            }
        }
    }
    for (port, s) in cluster.vm.all_stats() {
        eprintln!(
            "vm network port {port}: in {} frames, out {} frames, dropped {}",
            s.rx_frames, s.tx_frames, s.dropped
        );
    }
    let from = t_fault
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(t_fault);
    let frames: Vec<_> = cluster
        .vm
        .captured()
        .into_iter()
        .filter(|f| f.at >= from)
        .collect();
    let lines = frames::timeline(&frames, t_fault);
    eprintln!(
        "vm network: {} frames from 2 s before the fault (times from the fault); the last {}:",
        lines.len(),
        lines.len().min(80)
    );
    for l in &lines[lines.len().saturating_sub(80)..] {
        eprintln!("  {l}");
    }
    let pcap = cluster.dir().join("vm-network.pcap");
    match frames::write_pcap(&pcap, &frames) {
        Ok(()) => eprintln!("vm network: capture in {}", pcap.display()),
        Err(e) => eprintln!("vm network: {}: {e}", pcap.display()),
    }
}

/// The route by which a Primary that lost its storage path handed the VM
/// over ([`wait_storage_hand_over`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageHandOver {
    /// Fencing withdrew the output grant and it stayed withdrawn for the
    /// failure timeout.
    GrantHeld,
    /// A disk request stuck on the path reached its age limit first: the
    /// host must be reset, and hands over before it is.
    StuckRequest,
}

/// Waits until `host` handed the VM over to secondary `to` after losing its
/// storage path, by whichever route came first (both are right: a cut path
/// withdraws the grant about a second after the cut and the hold hands over
/// a failure timeout later, while the first request stuck on the path
/// reaches its age limit, 2 s, from its submission; with the example's 1 s
/// failure timeout the two are within tens of ms of each other).
pub fn wait_storage_hand_over(host: &Host, to: &str) -> StorageHandOver {
    let re = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: (storage lost \(fencing holds output\)|this host must be reset \(.*\)); handed the VM over to secondary {to} in generation"
    ))
    .unwrap();
    let l = wait_line(host, re);
    if l.text.contains("this host must be reset") {
        StorageHandOver::StuckRequest
    } else {
        StorageHandOver::GrantHeld
    }
}

pub fn wait(host: &Host, line: String) -> String {
    wait_line(host, line).text
}

/// Waits up to 120 s for a console line of `host` matching `pattern` (fails
/// the test otherwise) and prints it with its time.
pub fn wait_line(host: &Host, pattern: impl Into<Pattern>) -> ConsoleLine {
    let l = host
        .wait_for_line(pattern, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    // The timeline of a failover on stderr, so a slow run can be told apart
    // (detection and go-live here, the client's retransmissions elsewhere).
    eprintln!("  [{} {:7.3}] {}", host.name(), l.at.as_secs_f64(), l.text);
    l
}

/// The frames the guest sent (its MAC as source), in capture order.
pub fn guest_frames(
    frames: &[qemu_tests::hub::CapturedFrame],
) -> Vec<&qemu_tests::hub::CapturedFrame> {
    frames
        .iter()
        .filter(|f| f.src_mac() == Some(GUEST_MAC))
        .collect()
}

/// Host-a's guest frames all precede host-b's first one.
pub fn no_overlap(frames: &[qemu_tests::hub::CapturedFrame]) {
    let guest = guest_frames(frames);
    assert!(!guest.is_empty(), "no guest frames captured");
    let first_b = guest.iter().find(|f| f.from == "host-b").map(|f| f.at);
    let last_a = guest
        .iter()
        .rev()
        .find(|f| f.from == "host-a")
        .map(|f| f.at);
    let (Some(fb), Some(la)) = (first_b, last_a) else {
        panic!("expected guest frames from both hosts (host-a before, host-b after)");
    };
    assert!(
        la < fb,
        "host-a emitted guest output after host-b went live"
    );
}

/// How soon after a thaw the frames a frozen host had handed to its NIC
/// before the freeze have left it (QEMU serves the queue at once; generous
/// for a loaded machine).
pub const THAW_WINDOW: Duration = Duration::from_secs(3);

/// At most this many frames can wait in a host's NIC transmit queue (the
/// virtio ring of the VM-network device).
const TX_RING: usize = 256;

/// Whether a frame captured at `at` left a thawed host's NIC with what it
/// held at the freeze: between the QMP `cont` (`resume_sent`) and
/// [`THAW_WINDOW`] after it returned (`thawed`).
pub fn in_thaw_window(at: Instant, resume_sent: Instant, thawed: Instant) -> bool {
    at >= resume_sent && at <= thawed + THAW_WINDOW
}

/// [`no_overlap`] for a host-a that was frozen (QMP `stop`) and thawed after
/// host-b went live. Its frames after host-b's first one are allowed only
/// if they are what its NIC held at the freeze: all of them leave between
/// the QMP `cont` (`resume_sent`) and [`THAW_WINDOW`] after it returned
/// (`thawed`), no more than one transmit ring of them. They were released
/// before the freeze under the Output Rule of the old generation — a paired
/// Primary releases only on fresh acknowledgements from its Secondary, which
/// a Secondary that went live never sends again — so host-b's log covers
/// them and they reach the world like packets a switch delayed
/// (docs/design.md §3, frozen hosts). Returns how many there were.
pub fn no_overlap_but_queued(
    frames: &[qemu_tests::hub::CapturedFrame],
    resume_sent: Instant,
    thawed: Instant,
) -> usize {
    let guest = guest_frames(frames);
    let Some(first_b) = guest.iter().find(|f| f.from == "host-b").map(|f| f.at) else {
        panic!("no guest frame from host-b after it went live");
    };
    assert!(
        guest.iter().any(|f| f.from == "host-a" && f.at < first_b),
        "no guest frame from host-a before host-b went live"
    );
    let late: Vec<_> = guest
        .iter()
        .filter(|f| f.from == "host-a" && f.at > first_b)
        .collect();
    for f in &late {
        assert!(
            in_thaw_window(f.at, resume_sent, thawed),
            "host-a emitted guest output after host-b went live, {} the thaw window: a frame {} the QMP cont",
            if f.at < resume_sent { "outside" } else { "after" },
            if f.at < resume_sent {
                format!("{:.3} s before", (resume_sent - f.at).as_secs_f64())
            } else {
                format!("{:.3} s after", (f.at - resume_sent).as_secs_f64())
            }
        );
    }
    assert!(
        late.len() <= TX_RING,
        "host-a emitted {} guest frames after the thaw, more than its NIC can have held at the freeze",
        late.len()
    );
    if let Some(f) = late.first() {
        eprintln!(
            "  {} guest frame(s) host-a's NIC held at the freeze left {:.3} s after the QMP cont (released before the freeze)",
            late.len(),
            (f.at - resume_sent).as_secs_f64()
        );
    }
    late.len()
}

/// Every acknowledged PUT is in the guest's log on the shared storage.
pub fn all_on_disk(cluster: &qemu_tests::Cluster, acked: &[usize], what: &str) {
    let (table, end) = on_disk(cluster.shared_storage(), cluster.config(), VM).unwrap();
    for i in acked {
        assert_eq!(
            table.get(&key(*i)),
            Some(&value(*i)),
            "{what}: acknowledged PUT {} is not in the on-disk log ({end})",
            key(*i)
        );
    }
    eprintln!(
        "{what}: all {} acknowledged PUTs are in the on-disk log ({end})",
        acked.len()
    );
}

/// Guest frames came from one host at a time: all of one host's precede all
/// of the other's (whichever went live second).
pub fn no_overlap_either_way(frames: &[qemu_tests::hub::CapturedFrame]) {
    let guest = guest_frames(frames);
    assert!(!guest.is_empty(), "no guest frames captured");
    let hosts: Vec<&str> = guest.iter().map(|f| f.from.as_str()).collect();
    let switches = hosts.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches <= 1,
        "guest frames alternate between hosts ({switches} switches): two copies were live"
    );
}

/// Whether host `h` took generation `g` in an apply's output `out`: its line
/// `want` (persisted through this apply's pass-on), or the same line (without
/// its `\n`) followed by how its catch-up took it
/// during this apply (`…; taken by this host's catch-up from host-a 150 ms
/// before this request, during this apply`: seen in `power_live` with one
/// core busy), or that it already holds this very config. The last two
/// happen when its catch-up from the asked host gets there first: that
/// host's heartbeat announces the new generation at once, while the
/// pass-on needs a Noise handshake (seen at generation 4 once under load,
/// 5.5 s after host-a persisted, and at generation 2 in stop 36's `make
/// test`). The live changes are checked on the consoles either way.
pub fn took(out: &str, h: &str, g: u64, want: &str) -> bool {
    let caught_up = format!(
        "{}; taken by this host's catch-up from ",
        want.trim_end_matches('\n')
    );
    out.contains(want)
        || out.lines().any(|l| l.starts_with(&caught_up))
        || out.contains(&format!(
            "{h}: refused: generation {g} is not newer than this host's generation {g}: this \
             host already holds this very config"
        ))
}

/// A KV connection once the guest answers again after a power-on (it boots
/// from its disk; `power_live.rs`, `affinity_live.rs`).
pub fn wait_serving(tap: &qemu_tests::NetnsTap) -> qemu_tests::kv::Kv {
    let addr: std::net::SocketAddr = GUEST.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while tap.tcp_connect(addr, Duration::from_secs(5)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the guest does not answer after the power-on"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    qemu_tests::kv::Kv::connect(tap)
}
