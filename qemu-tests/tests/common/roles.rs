//! Who runs a checkpoint VM now, read from the hosts' consoles, and the
//! test bed's one boot failure a test may retry.
//!
//! A test that kills "the Primary's host" must kill the host that runs the
//! guest *now*: during the boot-time epochs a pair may already have failed
//! over once (the Secondary took the Primary for silent, or the Primary's
//! guest ended) and paired again the other way round. [`steady_pair`] waits
//! until the VM runs on a Primary with a Secondary paired to it and says
//! which hosts those are, and [`role_history`] prints how it got there.
//!
//! [`wait_ready`] tells a host whose whole kernel froze while it booted
//! (its console silent, its heartbeat gone to its peers, no `appliance
//! ready`) from one that is slow: see [`L1_FROZE`]; [`steady_pair`] stops
//! on a host whose kernel crashed in kvm_amd before the fault
//! ([`L1_SVM_CRASH`]). Those two, and only before the test's fault, are
//! the test bed's; so is a host the watchdog reset without any daemon
//! having said it would ([`kernel_stopped`], [`L1_STOPPED`]), before or
//! after the fault; [`retry_once_on_l1_freeze`] retries them once.

use std::time::{Duration, Instant};

use qemu_tests::{Cluster, Host, Mark};

/// Marks the panic of a host whose kernel froze before it was ready (see
/// [`wait_ready`]); [`retry_once_on_l1_freeze`] retries on it.
pub const L1_FROZE: &str = "test bed: L1 froze while booting";

/// Marks the panic of a host whose kernel crashed inside kvm_amd's VM
/// entry/exit before the test's fault (see [`l1_svm_crash`]); retried as
/// [`L1_FROZE`] is.
pub const L1_SVM_CRASH: &str = "test bed: L1 kernel crashed in kvm_amd's VM entry";

/// Marks the panic of a host whose kernel stopped after the test's fault:
/// the watchdog reset it and nothing on its console said why (see
/// [`kernel_stopped`]); [`retry_once_on_l1_freeze`] retries on it.
pub const L1_STOPPED: &str = "test bed: L1's kernel stopped (the watchdog fired unannounced)";

/// Whether `host`'s QEMU ended (`err`, the harness's error for a wait that
/// saw it exit) because its watchdog fired while nothing since `since` on
/// its console says that anything chose to stop feeding it. fencing feeds
/// the watchdog from a SCHED_RR 11 thread, above every other thread on the
/// host, and stops only after saying so (`fencing: reset requested (…); no
/// longer feeding the watchdog`, or `… no longer feeding the watchdog` when
/// ftvmm does not confirm an output hold); a fencing process that died is
/// restarted and logged by init. So an unannounced watchdog reset means the
/// host's kernel ran none of them for the watchdog's timeout: L1 stopped.
/// Seen once in CI (stop 42): host-b won the checkpoint VM's generation 2,
/// took it over (its first nested VM entry since boot: a checkpoint
/// Secondary does not run the guest) and printed nothing more; QEMU ended
/// about 6 s later. The QMP events recorded since (`qemu_tests::qmp`) tell a
/// watchdog reset from the host's own reboot.
pub fn kernel_stopped(host: &Host, since: Mark, err: &str) -> bool {
    let announced = [
        "no longer feeding the watchdog",
        "reset requested",
        "init: daemon ",
    ];
    err.contains("QEMU exited")
        && err.contains("the watchdog fired")
        && !(host.console().lines_after(since).iter())
            .any(|l| announced.iter().any(|a| l.text.contains(a)))
}

/// Marks the panic of a checkpoint test whose guest triple-faulted on its
/// Primary before the test's fault (see [`guest_fault_before`]).
pub const GUEST_FAULT: &str = "test bed: the guest triple-faulted before the test's fault";

/// The console line of `host` saying `vm`'s guest ended in a triple fault,
/// if one came before `until` (`None`: at any time). On this test bed the
/// Linux guest triple-faults now and then with no epochs at all (plain
/// `ftvmm linux`: `linux_vm.rs`, whose boot loop counted 9 guest faults in
/// 40 boots on Debian 12's QEMU 7.2, the L1 QEMU of the cluster tests), so
/// before the fault it is the test bed's; after it, a fault of the guest
/// the Secondary resumed is the test's failure.
pub fn guest_fault_before(host: &Host, vm: &str, until: Option<Instant>) -> Option<String> {
    let ended = format!("ftvmm: vm {vm}: the guest ended: guest triple fault");
    (host.console().lines().into_iter())
        .find(|l| l.text.contains(&ended) && until.is_none_or(|u| host.spawned_at() + l.at < u))
        .map(|l| l.text)
}

/// The first of `hosts` whose kernel crashed inside kvm_amd's VM entry
/// ([`qemu_tests::testbed::l1_svm_crashed`]).
pub fn l1_svm_crash(hosts: &[&Host]) -> Option<String> {
    (hosts.iter())
        .find(|h| qemu_tests::testbed::l1_svm_crashed(h.console()))
        .map(|h| h.name().to_string())
}

/// A console line that says who runs the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `primary` runs the guest with `secondary` paired to it.
    Paired { primary: String, secondary: String },
    /// `primary` resumed or runs the guest without a Secondary.
    Alone { primary: String },
    /// The guest ended on `host` (its member stopped).
    Ended { host: String },
}

/// Every role line of `vm` on `hosts`, oldest first, with its time and text.
pub fn role_history(hosts: &[&Host], vm: &str) -> Vec<(Instant, Role, String)> {
    let paired = format!("ftvmm: vm {vm}: paired with secondary ");
    let protected = format!("ftvmm: vm {vm}: protected: secondary ");
    let resumed = format!("ftvmm: vm {vm}: resumed from epoch");
    let ended = format!("ftvmm: vm {vm}: the guest ended");
    let mut out = Vec::new();
    for h in hosts {
        let name = h.name().to_string();
        for l in h.console().lines() {
            let at = h.spawned_at() + l.at;
            let other = |prefix: &str| {
                l.text.find(prefix).map(|i| {
                    l.text[i + prefix.len()..]
                        .split([';', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
            };
            let role = if let Some(s) = other(&paired).or_else(|| other(&protected)) {
                Role::Paired {
                    primary: name.clone(),
                    secondary: s,
                }
            } else if l.text.contains(&resumed) {
                Role::Alone {
                    primary: name.clone(),
                }
            } else if l.text.contains(&ended) {
                Role::Ended { host: name.clone() }
            } else {
                continue;
            };
            out.push((at, role, format!("[{name}] {}", l.text)));
        }
    }
    out.sort_by_key(|(at, _, _)| *at);
    out
}

/// Waits until the last role line of `vm` says a Primary runs it with a
/// Secondary paired and a line containing `serving` appeared on either
/// host; returns (Primary, Secondary). The history is printed when the
/// pair is not the first one (`expected_primary` is not the Primary or
/// there were several role lines).
pub fn steady_pair<'c>(
    cluster: &'c Cluster,
    hosts: [&str; 2],
    vm: &str,
    serving: &str,
    expected_primary: &str,
    timeout: Duration,
) -> (&'c Host, &'c Host) {
    let hs: Vec<&Host> = hosts.iter().map(|h| cluster.host(h).unwrap()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let history = role_history(&hs, vm);
        let serves = hs.iter().any(|h| h.console().count(serving) > 0);
        if let (true, Some((_, Role::Paired { primary, secondary }, _))) = (serves, history.last())
        {
            if primary != expected_primary || history.len() > 1 {
                eprintln!(
                    "NOTE: vm {vm}'s pair changed before the test's fault; it runs on {primary} \
                     with {secondary} as its secondary now. Role lines:"
                );
                for (_, _, text) in &history {
                    eprintln!("  {text}");
                }
            }
            let p = cluster.host(primary).unwrap();
            let s = cluster.host(secondary).unwrap();
            return (p, s);
        }
        if let Some(h) = l1_svm_crash(&hs) {
            panic!(
                "{L1_SVM_CRASH}: {h}, before the test's fault; its last lines:\n{}",
                cluster.host(&h).unwrap().console().tail(12)
            );
        }
        if Instant::now() >= deadline {
            let lines: Vec<String> = history.into_iter().map(|(_, _, t)| t).collect();
            panic!(
                "vm {vm}: no steady pair (a Primary with a paired Secondary, {serving:?} seen: {serves}) \
                 after {timeout:?}; role lines: {lines:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `host` prints a line containing `pattern` after `mark`
/// (`host.console().mark()`), and echoes it on stderr.
pub fn wait_new_line(host: &Host, pattern: &str, mark: Mark, timeout: Duration) -> String {
    let l = (host.wait_after(mark, pattern, timeout)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("  [{}] {l}", host.name());
    l
}

/// How long a booting host's console may stay silent, its peers hearing
/// nothing from it, before it counts as frozen: a slow boot (a loaded
/// machine) still prints every few seconds; a frozen one never again.
const FROZEN_SILENCE: Duration = Duration::from_secs(90);

/// Waits for `host`'s "appliance ready" line. Panics with [`L1_FROZE`] if
/// its kernel froze while booting: no ready line, its console silent for
/// [`FROZEN_SILENCE`], and a peer's heartbeat reporting it silent; or no
/// ready line by the deadline and the kernel reported a soft lockup. Seen
/// once (stop 29, 1 of 8 runs of checkpoint_pair): host-b's console ended
/// at "heartbeat: peer host-a up", right after ftvmm's "/dev/kvm ok" and
/// before its first use of KVM (the platform measurement) printed; host-a
/// reported host-b silent 5 s later and it never printed again. L1 is QEMU
/// TCG emulating AMD SVM (NESTED-KVM.md), whose emulation has crashed L1's
/// kernel around VMRUN before (`linux_vm.rs`); a userspace process cannot
/// legitimately freeze its host's heartbeat daemon.
pub fn wait_ready(host: &Host, peers: &[&Host], timeout: Duration) {
    let ready = format!("appliance ready: host={}", host.name());
    let deadline = Instant::now() + timeout;
    loop {
        if host.console().count(ready.as_str()) > 0 {
            return;
        }
        let silent = host
            .console()
            .lines()
            .last()
            .map(|l| (host.spawned_at() + l.at).elapsed())
            .unwrap_or_else(|| host.spawned_at().elapsed());
        // "suspected (silent for …)" once heard, "suspected (never heard in
        // …)" when it froze before its first heartbeat (seen in stop 33's
        // first run: host-a's console ended at "ftvmm: /dev/kvm ok" before
        // heartbeat sent anything, and this loop waited for BOOT_TIMEOUT).
        let suspected = format!("heartbeat: peer {} suspected (", host.name());
        let peer_says = peers
            .iter()
            .any(|p| p.console().count(suspected.as_str()) > 0);
        // The kernel's own report of a CPU stuck for tens of seconds, and
        // never ready (stop 46: host-b of a checkpoint pair, booting with
        // this machine's other core kept busy, "soft lockup - CPU#0 stuck
        // for 280s" and RCU stalls): the same freeze of the emulated host,
        // only printing while stuck.
        if Instant::now() >= deadline && host.console().count("BUG: soft lockup") > 0 {
            panic!(
                "{L1_FROZE}: {} reported a soft lockup and was not ready after {timeout:?}; \
                 its last lines:\n{}",
                host.name(),
                host.console().tail(8)
            );
        }
        if silent >= FROZEN_SILENCE && peer_says {
            panic!(
                "{L1_FROZE}: {} printed nothing for {silent:?} before it was ready and a peer's \
                 heartbeat lost it; its last lines:\n{}",
                host.name(),
                host.console().tail(8)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{}: not ready after {timeout:?}; last lines:\n{}",
                host.name(),
                host.console().tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `body`, and once more if it panicked with [`L1_FROZE`],
/// [`L1_SVM_CRASH`] or [`L1_STOPPED`] (printed); any other panic, or a
/// second one of those, fails the test.
pub fn retry_once_on_l1_freeze<T>(name: &str, body: impl Fn() -> T) -> T {
    qemu_tests::testbed::retry_once_on(name, &[L1_FROZE, L1_SVM_CRASH, L1_STOPPED], body)
}
