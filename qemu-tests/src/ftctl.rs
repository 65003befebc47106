//! The operator's tool from the QEMU tests: this build's `ftctl` (built
//! first), `ftctl sign` of a config text, `ftctl apply` and `ftctl status
//! --cluster` from an operator's network namespace, and the example config
//! with the development operator key listed (the tests that query or apply
//! as an operator use it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::ClusterSource;
use crate::paths::workspace_root;

/// The development operator's private key (PKCS#8), for `--key`.
pub fn dev_operator_key() -> PathBuf {
    workspace_root().join("examples/dev-keys/operators/dev-operator.pk8")
}

/// `ftctl` next to the running test binary (`<profile>/deps/<test>`'s
/// `<profile>/ftctl`), brought up to date with cargo first (a no-op when
/// it is): an older `ftctl` left in a target directory signs configs this
/// build may not read the same way (seen: `unknown field slot`). cargo
/// holds its build lock only while it builds, so a test may call it.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .ancestors()
        .nth(2)
        .expect("the test binary sits in <profile>/deps")
        .to_path_buf();
    let target = profile.parent().expect("a profile directory has a parent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "-p",
            "config-schema",
            "--bin",
            "ftctl",
            "--target-dir",
        ])
        .arg(target)
        .current_dir(workspace_root());
    if profile.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let ok = build.status().expect("cargo runs").success();
    let ftctl = profile.join("ftctl");
    assert!(ok && ftctl.exists(), "cannot build {}", ftctl.display());
    ftctl
}

/// Writes `text` as `<dir>/<name>.toml` and signs it with `key` into
/// `<dir>/<name>.ftcfg`; returns the signed file.
pub fn sign(ftctl: &Path, text: &str, key: &Path, dir: &Path, name: &str) -> PathBuf {
    let toml = dir.join(format!("{name}.toml"));
    std::fs::write(&toml, text).expect("write the config text");
    let signed = dir.join(format!("{name}.ftcfg"));
    let ok = Command::new(ftctl)
        .arg("sign")
        .arg("--config")
        .arg(&toml)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&signed)
        .status()
        .expect("ftctl runs")
        .success();
    assert!(ok, "ftctl sign of {} failed", toml.display());
    signed
}

/// `ftctl apply` of `signed` to the host at `addr` (its status service's
/// IP), run in the network namespace `netns` (an operator's machine on the
/// FT or management network); stdout, also printed with stderr. The exit
/// status is not checked: a host that took the config by its catch-up
/// first answers `refused: ... already holds this very config`, and tests
/// read the lines.
pub fn apply_in(netns: &str, ftctl: &Path, key: &Path, signed: &Path, addr: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(ftctl)
        .args(["apply", "--host", addr, "--key"])
        .arg(key)
        .arg(signed)
        .output()
        .expect("ip netns exec ftctl apply runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "ftctl apply {}:\n{stdout}{}",
        signed.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `ftctl status --cluster --json` asked of the host at `addr` from the
/// network namespace `netns`; the cluster report (panics with ftctl's
/// stderr when it fails).
pub fn cluster_status(
    netns: &str,
    ftctl: &Path,
    key: &Path,
    config: &Path,
    addr: &str,
) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(ftctl)
        .args(["status", "--cluster", "--host", addr, "--key"])
        .arg(key)
        .arg("--config")
        .arg(config)
        .arg("--json")
        .output()
        .expect("ip netns exec ftctl status runs");
    assert!(
        out.status.success(),
        "ftctl status --cluster --host {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ftctl status --json prints JSON")
}

/// The `[[operators]]` block listing the development operator.
pub fn dev_operator_block() -> String {
    let pk = std::fs::read_to_string(
        workspace_root().join("examples/dev-keys/operators/dev-operator.pub"),
    )
    .expect("the development operator's public key");
    format!(
        "\n[[operators]]\nname = \"dev-operator\"\npublic_key = \"{}\"\n",
        pk.trim()
    )
}

/// `examples/cluster.toml` with the development operator listed, written
/// to `<dir>/cluster.toml`.
pub fn with_operator(dir: &Path) -> ClusterSource {
    let mut source = ClusterSource::example();
    let text = std::fs::read_to_string(&source.config).expect("the example config");
    source.config = dir.join("cluster.toml");
    std::fs::write(&source.config, format!("{text}{}", dev_operator_block()))
        .expect("write the config");
    source
}
