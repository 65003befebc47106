//! The management network (`hosts[].mgmt`): operators reach the cluster
//! without being on the FT network.
//!
//! Proves, against host-a and host-b booted from a config that gives every
//! host a management NIC (203.0.113.N/24 on a third hub) and the development
//! operator key (host-c is in the config but never booted):
//! 1. init brings the management NIC up by its MAC (`net: management network
//!    <nic> (<mac>) = <addr> up`) and heartbeat's status service listens on
//!    the management address besides the FT one;
//! 2. from an operator namespace attached to the management hub only (the
//!    FT addresses are unreachable from it), `ftctl status --cluster` via
//!    host-a's management address answers with host-a and host-b (host-c
//!    unreachable), and `ftctl metrics` via host-b's answers;
//! 3. a key that is not in `[[operators]]` is refused there;
//! 4. `ftctl apply` of generation 2 via host-b's management address is
//!    persisted on host-b and passed on (over FT) to host-a, whose status,
//!    asked via its own management address, shows generation 2 applied.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{took, BOOT_TIMEOUT};
use qemu_tests::console::Pattern;
use qemu_tests::ftctl;
use qemu_tests::paths::workspace_root;
use qemu_tests::{Cluster, ClusterSource, NetnsTap};

const OPERATOR_CIDR: &str = "203.0.113.200/24";
const STEP: Duration = Duration::from_secs(120);

/// host-N's management address.
fn mgmt_ip(n: usize) -> String {
    format!("203.0.113.{n}")
}

#[test]
fn operators_query_and_apply_over_the_management_network() {
    let ftctl = ftctl::binary();
    let dir = tempfile::tempdir().unwrap();
    let source = with_mgmt_and_operator(dir.path());
    let base = std::fs::read_to_string(&source.config).unwrap();
    let mut cluster = Cluster::new("mgmt-network", &source).unwrap();
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }

    // 1. The NIC and the listener.
    for (n, h) in [(1, "host-a"), (2, "host-b")] {
        let host = cluster.host(h).unwrap();
        host.wait_for(
            format!("appliance ready: host={h} generation=1").as_str(),
            BOOT_TIMEOUT,
        )
        .unwrap();
        let up = host
            .wait_for(
                Pattern::regex(&format!(
                    r"net: management network \S+ \(52:54:00:f9:00:0{n}\) = 203\.0\.113\.{n}/24 up"
                ))
                .unwrap(),
                Duration::ZERO,
            )
            .unwrap();
        eprintln!("{h}: {up}");
        host.wait_for(
            format!("heartbeat: status service on tcp {}:7401", mgmt_ip(n)).as_str(),
            STEP,
        )
        .unwrap();
        host.wait_for("heartbeat: status service on tcp 192.0.2.", STEP)
            .unwrap();
    }
    let hub = cluster.mgmt.as_ref().expect("a management hub");
    let op = NetnsTap::attach(
        hub,
        "operator",
        &format!("ftm-{}-op", std::process::id()),
        OPERATOR_CIDR,
        None,
    )
    .unwrap();
    let key = workspace_root().join("examples/dev-keys/operators/dev-operator.pk8");
    let query = |args: &[&str], key: &Path, host: &str| -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", op.netns()])
            .arg(&ftctl)
            .args(args)
            .args(["--host", host, "--key"])
            .arg(key)
            .arg("--config")
            .arg(&source.config)
            .output()
            .unwrap();
        eprintln!(
            "ftctl {args:?} --host {host}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };

    // 2. Status and metrics over the management network only.
    let ft = query(&["status", "--cluster"], &key, "192.0.2.1");
    assert!(!ft.status.success(), "the FT network answered the operator");
    let t0 = Instant::now();
    let report = loop {
        let out = query(&["status", "--cluster", "--json"], &key, &mgmt_ip(1));
        if out.status.success() {
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if ["host-a", "host-b"]
                .iter()
                .all(|h| host_report(&r, h).is_some())
            {
                break r;
            }
        }
        assert!(
            t0.elapsed() < STEP,
            "host-a's management address never answered with host-a and host-b: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "cluster status via {} answered {:.1} s after the first try",
        mgmt_ip(1),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(report["queried"], "host-a", "{report}");
    let c = &report["hosts"][2];
    assert_eq!(c["host"], "host-c", "{report}");
    assert!(c["unreachable"].is_string(), "{report}");
    let metrics = query(&["metrics"], &key, &mgmt_ip(2));
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.status.success(), "{text}");
    assert!(
        text.contains("ft_daemon_up{host=\"host-b\",daemon=\"heartbeat\"} 1"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // 3. Only operators.
    let stranger_dir = dir.path().join("stranger");
    let ok = Command::new(&ftctl)
        .args(["operator-keygen", "--name", "stranger", "--out"])
        .arg(&stranger_dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "ftctl operator-keygen failed");
    let stranger = stranger_dir.join("stranger.pk8");
    for n in [1, 2] {
        let out = query(&["status", "--cluster"], &stranger, &mgmt_ip(n));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a stranger got an answer: {err}");
        assert!(
            err.contains("is not an operator of this cluster's config"),
            "{err}"
        );
    }

    // 4. Apply via host-b's management address reaches host-a.
    let gen2 = sign(&ftctl, &source, dir.path(), &base);
    let out = Command::new("ip")
        .args(["netns", "exec", op.netns()])
        .arg(&ftctl)
        .args(["apply", "--host", &mgmt_ip(2), "--key"])
        .arg(&key)
        .arg(&gen2)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "ftctl apply via {}:\n{stdout}{}",
        mgmt_ip(2),
        String::from_utf8_lossy(&out.stderr)
    );
    // Asked through host-b's management address: host-b persists it;
    // host-a by the pass-on or, first, by its catch-up (`common::took`).
    let line = |h: &str| {
        format!("{h}: generation 2 persisted (was 1); live: timing.lag_limit_ms 500 -> 400 ms\n")
    };
    assert!(stdout.contains(&line("host-b")), "{stdout}");
    assert!(took(&stdout, "host-a", 2, &line("host-a")), "{stdout}");
    assert!(stdout.contains("host-c: unreachable: "), "{stdout}");
    let out = query(&["status", "--cluster", "--json"], &key, &mgmt_ip(1));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in ["host-a", "host-b"] {
        let r = host_report(&report, h).unwrap();
        assert_eq!(
            r["heartbeat"]["applied_config"]["generation"], 2,
            "{h}: {r}"
        );
    }
    for h in cluster.hosts() {
        h.assert_absent("network setup failed", Duration::ZERO)
            .unwrap();
    }
    drop(op);
    cluster.pass();
}

/// The report of `host` in a cluster report, if it answered.
fn host_report<'a>(r: &'a serde_json::Value, host: &str) -> Option<&'a serde_json::Value> {
    let entries = r["hosts"].as_array()?;
    let e = entries.iter().find(|e| e["host"] == host)?;
    e["report"].is_object().then(|| &e["report"])
}

/// `examples/cluster.toml` with a management NIC on every host
/// (52:54:00:f9:00:0N, 203.0.113.N/24) and the development operator.
fn with_mgmt_and_operator(dir: &Path) -> ClusterSource {
    let mut source = ClusterSource::example();
    let mut text = std::fs::read_to_string(&source.config).unwrap();
    for n in 1..=3 {
        let vm =
            format!("vm = {{ mac = \"52:54:00:f8:00:0{n}\", addr = \"198.51.100.{n}/24\" }}\n");
        assert!(text.contains(&vm), "the example config changed: {vm}");
        let mgmt =
            format!("mgmt = {{ mac = \"52:54:00:f9:00:0{n}\", addr = \"203.0.113.{n}/24\" }}\n");
        text = text.replacen(&vm, &format!("{vm}{mgmt}"), 1);
    }
    text.push_str(&ftctl::dev_operator_block());
    source.config = dir.join("cluster.toml");
    std::fs::write(&source.config, text).unwrap();
    source
}

/// `base` at generation 2 with lag limit 400 ms (a live change), signed.
fn sign(ftctl: &Path, source: &ClusterSource, dir: &Path, base: &str) -> PathBuf {
    let mut text = base.to_string();
    for (from, to) in [
        ("generation = 1\n", "generation = 2\n"),
        ("lag_limit_ms = 500\n", "lag_limit_ms = 400\n"),
    ] {
        assert!(text.contains(from), "the example config changed: {from}");
        text = text.replacen(from, to, 1);
    }
    ftctl::sign(ftctl, &text, &source.signing_key, dir, "gen2")
}
