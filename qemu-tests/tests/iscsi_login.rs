//! The appliance's own iSCSI initiator (issue 16): the signed config names
//! the shared device as an iSCSI LUN (`examples/cluster-iscsi.toml`), and
//! each host logs in to the harness's `tgtd` target itself at boot, over a
//! storage NIC of its own, as `<initiator_prefix>:<host>` — unlike
//! `storage_pr.rs`, where QEMU logs in and the host sees a virtio-scsi disk.
//!
//! The storage NIC is QEMU's user-mode network restricted to one forward:
//! the portal `10.0.2.100:3260` inside the host goes to the host's TCP
//! `StoragePath` to the target, so a test can sever or cut that path.
//!
//! - `a_pair_logs_in_over_iscsi_and_fails_over`: both hosts say `iscsi:
//!   logged in to … LUN 1 is /dev/sdX`, reach ready, pair on the LUN (fencing
//!   and the VM's disk on it); the Primary's QEMU is killed and the client's
//!   one TCP connection carries on, every acknowledged PUT readable.
//! - `cutting_the_primarys_iscsi_path_hands_the_vm_over_and_resets_it`: as
//!   `storage_failover.rs` does with an NBD path: hold, hand-over on the
//!   client's connection, then the watchdog reset of the deposed host.
//! - `an_unanswered_login_is_reported_and_completes_once_the_path_is_back`: host-a boots with its path
//!   severed: a console line says the login is not done after 15 s and the
//!   portal does not answer; the path is restored and the login completes
//!   (within iscsid's own retries, or at a later attempt of init's after
//!   a one-line failure).
//! - `a_broken_iscsi_connection_is_logged_in_again_without_a_reboot`: the
//!   Secondary's path severed for 2 s: its session fails and iscsid logs it
//!   in again in place; then host-a is killed and host-b takes over on it.
//!
//! - `a_refused_login_is_one_line_per_attempt_and_retried`: a config whose
//!   target the portal does not serve: one line per failed attempt, with
//!   iscsiadm's reason, retried 1, 2, 4 s later.
//! - `a_chap_target_lets_in_the_configured_secret_and_refuses_another`: a
//!   target that requires CHAP lets in the config's user and secret and
//!   refuses another secret, one line per attempt.
//!
//! Kernel+initrd boots with `no_timer_check` (as `pair_on_iscsi`). Needs
//! root, `tgt`, qemu-system-x86_64 with user-mode networking and the ISO;
//! FAILS with a clear message when one is missing.

mod common;

use std::time::Duration;

use common::{all_on_disk, no_overlap, survive, wait, wait_paired, wait_storage_hand_over, VM};
use qemu_tests::{Cluster, ClusterSource, Host, Pattern};

fn source() -> ClusterSource {
    let mut s = ClusterSource::example();
    s.config = s.config.with_file_name("cluster-iscsi.toml");
    s
}

/// The `iscsi: logged in` line of `host`, on its console within `timeout`
/// (`(CHAP)` after the initiator when the config has CHAP).
fn logged_in(cluster: &Cluster, host: &str, timeout: Duration) -> String {
    let line = cluster
        .host(host)
        .unwrap()
        .wait_for(
            Pattern::regex(&format!(
                "{}{host}{}",
                r"iscsi: logged in to iqn\.2026-01\.test\.ftappliance:shared at 10\.0\.2\.100:3260 as iqn\.2026-01\.test\.ftappliance:",
                r"( \(CHAP\))? \(session\d+, attempt \d+, [0-9.]+ s\): LUN 1 is /dev/sd[a-z]+"
            ))
            .unwrap(),
            timeout,
        )
        .unwrap_or_else(|e| panic!("{host} did not log in to the iSCSI target: {e}"));
    eprintln!("{host}: {line}");
    line
}

/// Waits for `host`'s line saying its login attempt `n` to target
/// `iqn.2026-01.test.ftappliance:<target>` failed (`chap`: the regex after
/// the initiator's name, ` \(CHAP\)` with CHAP; `why`: the reason's regex)
/// and will be retried in `backoff` s; prints it. Panics with the console's
/// tail when it does not come.
fn login_failed(host: &Host, target: &str, chap: &str, n: u32, why: &str, backoff: u32) {
    let pattern = format!(
        r"iscsi: login to iqn\.2026-01\.test\.ftappliance:{target} at 10\.0\.2\.100:3260 as \S+{chap} failed \(attempt {n}\): {why}; retrying in {backoff} s"
    );
    let line = host
        .wait_for(Pattern::regex(&pattern).unwrap(), common::BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", host.name(), host.console().tail(30)));
    eprintln!("{}: {line}", host.name());
}

fn boot(cluster: &mut Cluster, host: &str) {
    let mut spec = cluster.host_spec(host).unwrap();
    spec.boot = cluster.kernel_boot("no_timer_check").unwrap();
    assert!(
        spec.storage_nic.is_some() && spec.shared_storage_iscsi.is_none(),
        "{host} must reach the LUN through its own initiator only"
    );
    cluster.boot_spec(spec).unwrap();
}

/// host-a and host-b logged in at their first attempt and paired on the LUN.
fn pair_logged_in(name: &str) -> Cluster {
    let mut cluster = Cluster::new(name, &source()).unwrap();
    cluster.use_iscsi_storage().unwrap();
    for h in ["host-a", "host-b"] {
        boot(&mut cluster, h);
    }
    for h in ["host-a", "host-b"] {
        logged_in(&cluster, h, common::BOOT_TIMEOUT);
    }
    let cluster = wait_paired(cluster);
    for h in ["host-a", "host-b"] {
        let host = cluster.host(h).unwrap();
        host.assert_absent("iscsi: login to", Duration::ZERO)
            .unwrap();
        host.assert_absent("fencing: not fencing", Duration::ZERO)
            .unwrap();
    }
    cluster
}

#[test]
fn a_pair_logs_in_over_iscsi_and_fails_over() {
    let cluster = pair_logged_in("iscsi-login-pair");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let (_, acked) = survive(
        &cluster,
        "primary host killed (shared LUN over the appliance's iSCSI login)",
        || a.kill().unwrap(),
        || {
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    all_on_disk(&cluster, &acked, "after the failover over iSCSI");
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    let mut cluster = cluster;
    cluster.pass();
}

/// The Secondary's iSCSI connection broken: its storage path severed (the
/// TCP connection closed, new ones closed at once) for 2 s. The session
/// goes `FAILED`, iscsid reconnects once the path is back and the same
/// session is logged in again in place — no reboot, no reset; then the
/// Primary's host is killed and host-b takes the VM over on that session,
/// the client's connection intact and every acknowledged PUT on the LUN.
/// With `iscsistart` (stop 32) nothing reconnected: the session stayed
/// `FAILED` and host-b was reset.
#[test]
fn a_broken_iscsi_connection_is_logged_in_again_without_a_reboot() {
    let cluster = pair_logged_in("iscsi-login-again");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let path_b = cluster.storage_path("host-b").unwrap();
    let mark = b.console().mark();
    let severed = std::time::Instant::now();
    path_b.sever();
    let session = r"iscsi: (session\d+) to iqn\.2026-01\.test\.ftappliance:shared";
    let down = b
        .wait_after(
            mark,
            Pattern::regex(&format!("{session} is FAILED")).unwrap(),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("host-b's session did not fail when its path was severed: {e}"));
    eprintln!("host-b: {down}");
    std::thread::sleep(Duration::from_secs(2));
    path_b.pass();
    let restored = std::time::Instant::now();
    let again = b
        .wait_after(
            mark,
            Pattern::regex(&format!("{session} is logged in again after [0-9.]+ s")).unwrap(),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("host-b's session was not logged in again: {e}"));
    eprintln!(
        "host-b: {again} ({:.1} s after the path was back, {:.1} s after it was severed)",
        restored.elapsed().as_secs_f64(),
        severed.elapsed().as_secs_f64()
    );
    let name =
        |line: &str| regex::Regex::new(session).unwrap().captures(line).unwrap()[1].to_string();
    assert_eq!(name(&down), name(&again), "not the same session");
    b.assert_absent("fencing: reset requested", Duration::ZERO)
        .unwrap();
    // What fencing said meanwhile: with tgt, which ties registrations to
    // the session, "… joined again with the same key after clean deposition
    // checks"; a target that keeps them per initiator port says nothing.
    for l in b.console().lines_after(mark) {
        if l.text.starts_with("fencing: ") {
            eprintln!("host-b: {}", l.text);
        }
    }
    assert_eq!(
        b.console().count("appliance ready: host=host-b"),
        1,
        "host-b rebooted"
    );
    let (_, acked) = survive(
        &cluster,
        "primary host killed after the secondary's iSCSI session was logged in again",
        || a.kill().unwrap(),
        || {
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    all_on_disk(
        &cluster,
        &acked,
        "after the failover on a re-logged-in session",
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    let mut cluster = cluster;
    cluster.pass();
}

#[test]
fn an_unanswered_login_is_reported_and_completes_once_the_path_is_back() {
    let mut cluster = Cluster::new("iscsi-login-retry", &source()).unwrap();
    cluster.use_iscsi_storage().unwrap();
    cluster.storage_path("host-a").unwrap().sever();
    boot(&mut cluster, "host-a");
    let a = cluster.host("host-a").unwrap();
    // iscsid itself retries a portal that does not answer, for 2 minutes:
    // init says so after 15 s of an attempt, in one line.
    let waiting = a
        .wait_for(
            Pattern::regex(
                r"iscsi: login to iqn\.2026-01\.test\.ftappliance:shared at 10\.0\.2\.100:3260 as \S+ not done after 15 s \(attempt 1\): the portal or the target does not answer",
            )
            .unwrap(),
            common::BOOT_TIMEOUT,
        )
        .unwrap();
    eprintln!("host-a: {waiting}");
    cluster.storage_path("host-a").unwrap().pass();
    logged_in(&cluster, "host-a", Duration::from_secs(300));
    let failures: Vec<String> = a
        .console()
        .lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.contains("iscsi: login to") && t.contains(" failed (attempt "))
        .collect();
    eprintln!("host-a: failed attempts before the login: {failures:?}");
    a.wait_for(
        "appliance ready: host=host-a generation=1",
        Duration::from_secs(120),
    )
    .unwrap();
    cluster.pass();
}

/// A login the target refuses (here: the config names a target the portal
/// does not serve): one console line per failed attempt naming the target
/// and iscsiadm's reason, retried with a back-off, and no block device,
/// so nothing is started on a wrong disk.
#[test]
fn a_refused_login_is_one_line_per_attempt_and_retried() {
    let mut dir = qemu_tests::TestDir::new("iscsi-login-refused-config").unwrap();
    let mut src = source();
    let text = std::fs::read_to_string(&src.config)
        .unwrap()
        .replace("ftappliance:shared\"", "ftappliance:nosuch\"");
    assert!(
        text.contains(":nosuch"),
        "the example's device line changed"
    );
    src.config = dir.path().join("cluster-iscsi-nosuch.toml");
    std::fs::write(&src.config, text).unwrap();
    let mut cluster = Cluster::new("iscsi-login-refused", &src).unwrap();
    cluster.use_iscsi_storage().unwrap();
    boot(&mut cluster, "host-a");
    let a = cluster.host("host-a").unwrap();
    for (n, backoff) in [(1, 1), (2, 2), (3, 4)] {
        login_failed(a, "nosuch", "", n, ".+", backoff);
    }
    a.assert_absent("iscsi: logged in", Duration::ZERO).unwrap();
    cluster.pass();
    dir.pass();
}

/// One-way CHAP (the config's `storage.device.iscsi.chap`) against a
/// target that requires it (tgt with an account bound to the target): a
/// host whose signed config carries that user and secret logs in and comes
/// up ready; a host whose config carries another secret is refused — one
/// console line per attempt with iscsiadm's reason (an authorization
/// failure), retried, and no session, so no disk appears. Without
/// this, the CHAP lines init writes into iscsid.conf were checked by unit
/// tests only, never by a target.
#[test]
fn a_chap_target_lets_in_the_configured_secret_and_refuses_another() {
    const USER: &str = "ftappliance";
    const SECRET: &str = "chap-secret-0123";
    let mut dir = qemu_tests::TestDir::new("iscsi-login-chap-configs").unwrap();
    let config_with = |name: &str, secret: &str| {
        let mut src = source();
        let plain = r#"initiator_prefix = "iqn.2026-01.test.ftappliance" } }"#;
        let text = std::fs::read_to_string(&src.config).unwrap();
        assert!(text.contains(plain), "the example's device line changed");
        let text = text.replace(
            plain,
            &format!(
                r#"initiator_prefix = "iqn.2026-01.test.ftappliance", chap = {{ user = "{USER}", secret = "{secret}" }} }} }}"#
            ),
        );
        src.config = dir.path().join(name);
        std::fs::write(&src.config, text).unwrap();
        src
    };
    let right = config_with("cluster-iscsi-chap.toml", SECRET);
    let wrong = config_with("cluster-iscsi-chap-wrong.toml", "not-the-secret-4567");

    // The configured secret: logged in, ready.
    let mut cluster = Cluster::new("iscsi-login-chap", &right).unwrap();
    cluster.use_iscsi_storage().unwrap();
    cluster.iscsi().unwrap().require_chap(USER, SECRET).unwrap();
    boot(&mut cluster, "host-a");
    let line = logged_in(&cluster, "host-a", common::BOOT_TIMEOUT);
    assert!(line.contains(":host-a (CHAP) (session"), "{line}");
    assert!(line.contains("attempt 1,"), "{line}");
    let a = cluster.host("host-a").unwrap();
    a.wait_for("appliance ready: host=host-a", common::BOOT_TIMEOUT)
        .unwrap();
    a.assert_absent("iscsi: login to", Duration::ZERO).unwrap();
    let nexus = cluster.iscsi().unwrap().initiators().unwrap();
    assert!(
        nexus.iter().any(|i| i.ends_with(":host-a")),
        "tgt lists no I_T nexus of host-a: {nexus:?}"
    );
    cluster.pass();

    // Another secret: refused at every attempt, never a disk.
    let mut cluster = Cluster::new("iscsi-login-chap-wrong", &wrong).unwrap();
    cluster.use_iscsi_storage().unwrap();
    cluster.iscsi().unwrap().require_chap(USER, SECRET).unwrap();
    boot(&mut cluster, "host-a");
    let a = cluster.host("host-a").unwrap();
    for (n, backoff) in [(1, 1), (2, 2)] {
        login_failed(
            a,
            "shared",
            r" \(CHAP\)",
            n,
            r".*authori[sz]ation failure.*",
            backoff,
        );
    }
    // (init starts the daemons after 60 s without the device, and they
    // wait for it: what matters is that no session exists.)
    a.assert_absent("iscsi: logged in", Duration::ZERO).unwrap();
    assert!(
        cluster.iscsi().unwrap().initiators().unwrap().is_empty(),
        "tgt let an initiator with a wrong CHAP secret in"
    );
    cluster.pass();
    dir.pass();
}

/// The Primary's iSCSI path cut (its session's I/O hangs): as with a cut
/// NBD path (`storage_failover.rs`), fencing holds output, the VM is handed
/// over to the Secondary on the client's connection, and the deposed host
/// asks fencing for a reset, which its watchdog carries out (hosts run with
/// `-no-reboot`, so the QEMU process ends). Unlike there, nothing needs
/// severing first: the hung I/O is in the host's kernel, not QEMU's.
#[test]
fn cutting_the_primarys_iscsi_path_hands_the_vm_over_and_resets_it() {
    let mut cluster = pair_logged_in("iscsi-login-cut");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let path_a = cluster.storage_path("host-a").unwrap();
    cluster.vm.start_capture();
    let (ms, acked) = survive(
        &cluster,
        "primary's iSCSI path cut",
        || path_a.cut(),
        || {
            wait(a, "fencing: lease renewal failing".into());
            wait_storage_hand_over(a, "host-b");
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    let frames = cluster.vm.stop_capture();
    no_overlap(&frames);
    wait(a, "fencing: reset requested".into());
    let asked = std::time::Instant::now();
    assert!(
        a.wait_stopped(Duration::from_secs(60)),
        "host-a was not reset within 60 s of asking for it"
    );
    a.assert_absent("Kernel panic", Duration::ZERO).unwrap();
    eprintln!(
        "iSCSI path cut: pause {ms:.0} ms; host-a reset by its watchdog {:.1} s after asking",
        asked.elapsed().as_secs_f64()
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    all_on_disk(&cluster, &acked, "iSCSI path cut");
    cluster.pass();
}
