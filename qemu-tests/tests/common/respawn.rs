//! The three-host cluster of the respawn tests (issue 10, docs/design.md
//! §11) and the console lines they follow: the Primary places a new
//! Secondary (`secondary -> host-c (…)`), transfers the VM (`starting
//! secondary on host-c (generation G)`) and reports the pair whole again
//! (`protected: secondary host-c in lockstep from exit N; generation G; …`);
//! the target reports `receiving from primary …` and `restored from … at exit
//! N; following in generation G`. A respawned Secondary joins in the
//! Primary's current generation; it never makes a new one.

use std::time::{Duration, Instant};

use qemu_tests::{Cluster, ConsoleLine, Host, Pattern};
use regex::Regex;

use super::{wait_paired, BOOT_TIMEOUT, VM};

/// From a Primary's go-live (or its Secondary's loss) to `protected:` (a
/// 64 MiB guest copied between TCG hosts on a loaded machine).
pub const RESPAWN_TIMEOUT: Duration = Duration::from_secs(300);
/// From a kill to the survivor's `won generation` line.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);
/// How many exits ahead both sides hash memory ([`memories_match`]).
pub const DIGEST_AHEAD: u64 = 5000;
/// How long the digests may take (about 11 s quiet).
pub const DIGEST_TIMEOUT: Duration = Duration::from_secs(240);
/// The client's progress between steps.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(180);

/// Boots host-a, host-b and host-c at once; waits until the pair of power-on
/// serves (host-a Primary, host-b Secondary, generation 1) and host-c is ready
/// (allowed for `kv`, idle).
pub fn trio(name: &str) -> Cluster {
    // The vmctl hook: `ftvmm-test digest` compares both sides' memory.
    let mut cluster = Cluster::example_with_hooks(name, &["vmctl"]).unwrap();
    for h in ["host-a", "host-b", "host-c"] {
        cluster.boot(h).unwrap();
    }
    let cluster = wait_paired(cluster);
    cluster
        .host("host-c")
        .unwrap()
        .wait_for("appliance ready: host=host-c generation=1", BOOT_TIMEOUT)
        .unwrap();
    cluster
}

/// Boots a killed `host` again from the spec it was first booted with (its
/// config disk, hub ports and the shared storage), as a new QEMU process
/// beside the cluster, which stays shared with the running client. Its
/// files go to `<test dir>/<host>.reboot` (the first console log stays);
/// the old, dead entry stays in the cluster. Drop it before the cluster
/// (declare it after), so it dies before the hubs.
pub fn reboot(cluster: &Cluster, host: &str) -> Host {
    let old = cluster.host(host).unwrap();
    assert!(!old.is_running(), "{host} is still running; kill it first");
    let mut spec = cluster.host_spec(host).unwrap();
    spec.work_dir = cluster.dir().join(format!("{host}.reboot"));
    let h = Host::spawn(spec).unwrap();
    eprintln!(
        "  [{host}] rebooted (console in {})",
        h.work_dir().display()
    );
    h
}

/// Waits for a line on `host` matching `pattern` that arrived after `since`
/// (a fault) and prints it on the timeline with the time since then; returns
/// the line and that time.
pub fn wait_since(
    host: &Host,
    pattern: impl Into<Pattern>,
    timeout: Duration,
    since: Instant,
) -> (ConsoleLine, Duration) {
    let pattern = pattern.into();
    let deadline = Instant::now() + timeout;
    let after = |l: &ConsoleLine| (host.spawned_at() + l.at).saturating_duration_since(since);
    let l = loop {
        let found = host
            .console()
            .lines()
            .into_iter()
            .find(|l| host.spawned_at() + l.at >= since && pattern.matches(&l.text));
        if let Some(l) = found {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no line {pattern} within {timeout:?}{}; last lines:\n{}",
            host.name(),
            if host.is_running() {
                ""
            } else {
                " (its QEMU exited)"
            },
            host.console().tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "  [{} {:7.3}] {}   (+{:.3} s)",
        host.name(),
        l.at.as_secs_f64(),
        l.text,
        after(&l).as_secs_f64()
    );
    let t = after(&l);
    (l, t)
}

/// The Primary's `protected:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    pub secondary: String,
    /// The exit from which the pair runs in lockstep.
    pub exit: u64,
    pub generation: u64,
    /// The guest's stop for the last copy.
    pub pause_ms: u64,
    pub rounds: u64,
    pub bytes_sent: u64,
    pub guest_mib: u64,
    /// From the loss of the old Secondary to this line.
    pub unprotected_ms: u64,
}

impl Protected {
    /// Parses `ftvmm: vm kv: protected: secondary H in lockstep from exit N;
    /// generation G[ (the join began in generation S)]; pause P ms; R rounds;
    /// B bytes sent for M MiB of guest memory; unprotected for U ms`; panics
    /// with the line if it is not that.
    pub fn parse(line: &str) -> Protected {
        let re = Regex::new(&format!(
            r"ftvmm: vm {VM}: protected: secondary (\S+) in lockstep from exit (\d+); generation (\d+)(?: \(the join began in generation \d+\))?; pause (\d+) ms; (\d+) rounds; (\d+) bytes sent for (\d+) MiB of guest memory; unprotected for (\d+) ms"
        ))
        .unwrap();
        let c = re
            .captures(line)
            .unwrap_or_else(|| panic!("not a protected line: {line:?}"));
        let n = |i: usize| -> u64 { c[i].parse().unwrap() };
        Protected {
            secondary: c[1].to_owned(),
            exit: n(2),
            generation: n(3),
            pause_ms: n(4),
            rounds: n(5),
            bytes_sent: n(6),
            guest_mib: n(7),
            unprotected_ms: n(8),
        }
    }
}

/// Follows a respawn from the Primary's side: the placement line naming
/// `target`, the transfer's start in `generation`, and `protected:` in that
/// generation (no new generation for joining); then checks `target` received
/// and restored from `primary` at the exit the Primary names. Returns the
/// parsed line and the time from `since` to it.
pub fn wait_protected(
    primary: &Host,
    target: &Host,
    generation: u64,
    since: Instant,
) -> (Protected, Duration) {
    let (p, t) = (primary.name(), target.name());
    wait_since(
        primary,
        format!("ftvmm: vm {VM}: secondary -> {t} ("),
        RESPAWN_TIMEOUT,
        since,
    );
    wait_since(
        primary,
        format!("ftvmm: vm {VM}: starting secondary on {t} (generation {generation})"),
        RESPAWN_TIMEOUT,
        since,
    );
    let (line, after) = wait_since(
        primary,
        format!("ftvmm: vm {VM}: protected: secondary {t} "),
        RESPAWN_TIMEOUT,
        since,
    );
    let prot = Protected::parse(&line.text);
    assert_eq!(prot.secondary, t, "{}", line.text);
    assert_eq!(
        prot.generation, generation,
        "{p} joined {t} in another generation than its own: {}",
        line.text
    );
    wait_since(
        target,
        format!("ftvmm: vm {VM}: receiving from primary {p}; generation {generation}"),
        Duration::from_secs(30),
        since,
    );
    wait_since(
        target,
        format!("ftvmm: vm {VM}: restored from {p} at exit "),
        Duration::from_secs(30),
        since,
    );
    let restored = last_line(
        target,
        &format!("ftvmm: vm {VM}: restored from {p} at exit "),
    );
    let want = format!(
        "ftvmm: vm {VM}: restored from {p} at exit {}; following in generation {generation}",
        prot.exit
    );
    assert!(
        restored.contains(&want),
        "{t} restored elsewhere than {p} says the pair runs from: {restored:?}, expected {want:?}"
    );
    let (pause, _) = wait_since(
        primary,
        format!("ftvmm: vm {VM}: stop-and-copy pause: "),
        Duration::from_secs(10),
        since,
    );
    eprintln!("respawn: {p}: {}", pause.text);
    eprintln!(
        "respawn: {t} protects {p} {:.1} s after the fault: guest paused {} ms for the last copy, {} rounds, {} bytes sent for {} MiB, unprotected for {} ms",
        after.as_secs_f64(),
        prot.pause_ms,
        prot.rounds,
        prot.bytes_sent,
        prot.guest_mib,
        prot.unprotected_ms
    );
    (prot, after)
}

/// After a join: both sides hash all guest memory at one exit the Primary
/// puts into the log (the test hook `ftvmm-test digest`); the digests must
/// be equal — a guest write the dirty log missed would show here. The
/// client must keep the guest busy meanwhile (the point is exits ahead).
///
/// 5000 exits ahead: the digest record travels in the log before the
/// Secondary can reach that exit (it is at most the lag limit, milliseconds,
/// behind), and the guest makes that many exits in about 11 s on a quiet
/// machine and under a minute with the cores busy. The earlier 20000 took
/// 45 s quiet and missed 120 s twice with a compile running beside it.
pub fn memories_match(primary: &Host, secondary: &Host) {
    let asked = Instant::now();
    primary
        .send_console(&format!("ftvmm-test digest {VM} {DIGEST_AHEAD}\n"))
        .unwrap();
    let digest = |host: &Host, role: &str| {
        let (l, _) = wait_since(
            host,
            Pattern::regex(&format!(
                r"ftvmm: vm {VM}: memory digest n=\d+ sha256=[0-9a-f]{{64}} role={role}"
            ))
            .unwrap(),
            DIGEST_TIMEOUT,
            asked,
        );
        let n = l.text.split("n=").nth(1).and_then(|r| r.split(' ').next());
        let sha = l
            .text
            .split("sha256=")
            .nth(1)
            .and_then(|r| r.split(' ').next());
        (
            n.unwrap_or_default().to_string(),
            sha.unwrap_or_default().to_string(),
        )
    };
    let (pn, psha) = digest(primary, "primary");
    let (sn, ssha) = digest(secondary, "secondary");
    assert_eq!(pn, sn, "both sides hash at the same exit");
    assert_eq!(
        psha,
        ssha,
        "{}'s memory differs from {}'s at exit {pn} after the join",
        secondary.name(),
        primary.name()
    );
    eprintln!(
        "respawn: {} and {} hold the same memory at exit {pn} (sha256 {psha})",
        primary.name(),
        secondary.name()
    );
}

/// The last console line of `host` containing `needle` (empty if none).
pub fn last_line(host: &Host, needle: &str) -> String {
    host.console()
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.text.contains(needle))
        .map(|l| l.text)
        .unwrap_or_default()
}

/// Marks the panic of a run whose generation-1 pair broke before the
/// test's first kill (see [`pair_held`]); retried once.
pub const PAIR_BROKE: &str = "test bed: the pair broke before the test's fault";

/// Fails (with [`PAIR_BROKE`]) when host-a already dropped host-b, or host-b
/// host-a, before the test's first fault (or first config change:
/// `affinity_live.rs`, which saw it with one core busy and a compile
/// beside it: host-a's lease renewals failing, it handed the VM over to
/// host-b before the apply). Seen once in `make test` (stop
/// 36): three TCG hosts on two cores, each starved for over a second while
/// their VMs booted
/// (host-b's heartbeats and acks more than 1 s old on arrival, host-a's own
/// lease renewal failing for 1 s), so with the 1 s failure timeout host-a
/// took host-b for silent, went on alone in generations 2 and 3 and
/// respawned a Secondary: right, but not the pair this test kills.
pub fn pair_held(a: &Host, b: &Host) {
    let lost = [
        (a, format!("ftvmm: vm {VM}: secondary suspected")),
        (b, format!("ftvmm: vm {VM}: primary host-a lost")),
    ];
    for (h, line) in &lost {
        if h.console().count(line.as_str()) > 0 {
            panic!("{PAIR_BROKE}: {}", last_line(h, line));
        }
    }
}

/// No console of `hosts` reported a lockstep divergence.
pub fn never_diverged(hosts: &[&Host]) {
    for h in hosts {
        h.assert_absent("lockstep divergence", Duration::ZERO)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `host` never went live and never won a generation.
pub fn never_went_live(host: &Host) {
    for needle in [
        "; live as primary",
        &format!("ftvmm: vm {VM}: won generation"),
    ] {
        host.assert_absent(needle, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{} raced or went live: {e}", host.name()));
    }
}

/// `host` never went live and never won a generation up to `up_to` (one
/// that was decided, or could have been, before it came back).
pub fn never_won_up_to(host: &Host, up_to: u64) {
    host.assert_absent("; live as primary", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{} went live: {e}", host.name()));
    let won = Regex::new(&format!(r"ftvmm: vm {VM}: won generation (\d+)\b")).unwrap();
    for l in host.console().lines() {
        if let Some(c) = won.captures(&l.text) {
            let g: u64 = c[1].parse().unwrap();
            assert!(
                g > up_to,
                "{} won generation {g} (<= {up_to}): {}",
                host.name(),
                l.text
            );
        }
    }
}
