//! A VM powered off and on live with `ftctl apply` (issue 15).
//!
//! Proves: against a booted pair (host-a Primary, host-b Secondary of VM
//! `kv`, a config with the development operator key) that served
//! acknowledged PUTs, `ftctl apply` of generation 2 with `power = "off"`,
//! sent from an "operator machine" (a network namespace on the FT hub) to
//! host-a, is taken live on both hosts (`live: vms[kv].power`): host-a wins
//! the power-off generation and stops its Primary, both hosts say `powered
//! off by config generation 2`, the guest's address stops answering, the
//! status of both hosts says `powered off (config)`, and no host goes live.
//! Then generation 3 with `power = "on"`: the pair starts again, paired in
//! generation 3, and every PUT acknowledged before the power-off is read back.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{took, wait, wait_paired, wait_serving, Client, VM};
use qemu_tests::ftctl;
use qemu_tests::kv::GUEST;
use qemu_tests::paths::workspace_root;
use qemu_tests::{Cluster, ClusterSource, NetnsTap};

const OPERATOR_CIDR: &str = "192.0.2.200/24";
const STEP: Duration = Duration::from_secs(120);

#[test]
fn power_off_and_on_live_through_ftctl_apply() {
    let ftctl = ftctl::binary();
    let dir = tempfile::tempdir().unwrap();
    let source = ftctl::with_operator(dir.path());
    let base = std::fs::read_to_string(&source.config).unwrap();
    let mut cluster = Cluster::new("power-live", &source).unwrap();
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }
    let mut cluster = wait_paired(cluster);
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let client = Client::start(&cluster, "before the power-off");
    client.wait_replies(40, STEP);
    let before = client.finish();
    let op = NetnsTap::attach(
        &cluster.ft,
        "operator",
        &format!("ftp-{}-op", std::process::id()),
        OPERATOR_CIDR,
        None,
    )
    .unwrap();
    let key_file = workspace_root().join("examples/dev-keys/operators/dev-operator.pk8");

    // Power off: generation 2.
    let t_off = Instant::now();
    let out = apply(&op, &ftctl, &key_file, &source, dir.path(), &base, 2, "off");
    // The asked host persists it; the other by the pass-on or, first, by
    // its catch-up (`common::took`).
    let line = |h: &str| format!("{h}: generation 2 persisted (was 1); live: vms[kv].power\n");
    assert!(out.contains(&line("host-a")), "{out}");
    assert!(took(&out, "host-b", 2, &line("host-b")), "{out}");
    wait(
        a,
        format!("ftvmm: vm {VM}: power off (config generation 2): won generation 2"),
    );
    for h in [a, b] {
        wait(
            h,
            format!("ftvmm: vm {VM}: powered off by config generation 2"),
        );
    }
    eprintln!(
        "power off: both hosts powered off {:.1} s after the apply started",
        t_off.elapsed().as_secs_f64()
    );
    let probe = cluster.vm_client("probe", "198.51.100.201/24").unwrap();
    let addr: SocketAddr = GUEST.parse().unwrap();
    let answered = probe.tcp_connect(addr, Duration::from_secs(5));
    assert!(
        answered.is_err(),
        "the guest still answers after the power-off"
    );
    let status = status(&op, &ftctl, &key_file, &source.config);
    assert_eq!(
        status.matches("\"state\":\"powered off (config)\"").count(),
        2,
        "{status}"
    );
    assert!(status.contains("by config generation 2"), "{status}");
    // Nothing goes live: not now, not for a while.
    for h in [a, b] {
        h.assert_absent("live as primary", Duration::from_secs(10))
            .unwrap();
    }

    // Power on: generation 3.
    let t_on = Instant::now();
    let out = apply(&op, &ftctl, &key_file, &source, dir.path(), &base, 3, "on");
    assert!(
        out.contains("host-a: generation 3 persisted (was 2); live: vms[kv].power\n"),
        "{out}"
    );
    wait(
        a,
        format!("ftvmm: vm {VM}: powered on by config generation 3"),
    );
    wait(
        b,
        format!("ftvmm: vm {VM}: paired with primary host-a; generation 3"),
    );
    let after = cluster.vm_client("after", "198.51.100.202/24").unwrap();
    let mut kv = wait_serving(&after);
    eprintln!(
        "power on: paired and serving {:.1} s after the apply started",
        t_on.elapsed().as_secs_f64()
    );
    common::client::read_back(&mut kv, &before.acked, "across the power-off");
    eprintln!(
        "{} acknowledged PUTs from before the power-off all readable after the power-on",
        before.acked.len()
    );
    for h in [a, b] {
        h.assert_absent("lockstep divergence", Duration::ZERO)
            .unwrap();
    }
    drop(op);
    cluster.pass();
}

/// Signs the example config at `generation` with `power` and applies it to
/// host-a from the operator's namespace; ftctl's stdout.
#[allow(clippy::too_many_arguments)]
fn apply(
    op: &NetnsTap,
    ftctl: &Path,
    key: &Path,
    source: &ClusterSource,
    dir: &Path,
    base: &str,
    generation: u64,
    power: &str,
) -> String {
    let text = base
        .replacen(
            "generation = 1\n",
            &format!("generation = {generation}\n"),
            1,
        )
        .replacen(
            "disk_region = \"kv-disk\"\n",
            &format!("disk_region = \"kv-disk\"\npower = \"{power}\"\n"),
            1,
        );
    let signed = ftctl::sign(
        ftctl,
        &text,
        &source.signing_key,
        dir,
        &format!("gen{generation}"),
    );
    let stdout = ftctl::apply_in(op.netns(), ftctl, key, &signed, "192.0.2.1");
    // host-c is not booted: its line says unreachable, and the exit status
    // is 1 for that alone.
    assert!(
        stdout.contains("host-c: unreachable: "),
        "ftctl apply: {stdout}"
    );
    stdout
}

/// `ftctl status --cluster --json` from the operator's namespace, as one
/// line (the matches count fields).
fn status(op: &NetnsTap, ftctl: &Path, key: &Path, config: &Path) -> String {
    ftctl::cluster_status(op.netns(), ftctl, key, config, "192.0.2.2").to_string()
}
