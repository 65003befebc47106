//! The operator's tool from the QEMU tests: this build's `ftctl` (built if
//! missing), `ftctl sign` of a config text, and the example config with the
//! development operator key listed (the tests that query or apply as an
//! operator use it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::ClusterSource;
use crate::paths::workspace_root;

/// The development operator's private key (PKCS#8), for `--key`.
pub fn dev_operator_key() -> PathBuf {
    workspace_root().join("examples/dev-keys/operators/dev-operator.pk8")
}

/// `ftctl` next to the running test binary (`<profile>/deps/<test>`'s
/// `<profile>/ftctl`), built with cargo if it is not there yet.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .ancestors()
        .nth(2)
        .expect("the test binary sits in <profile>/deps")
        .to_path_buf();
    let ftctl = profile.join("ftctl");
    if !ftctl.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "config-schema", "--bin", "ftctl"])
            .status()
            .expect("cargo runs")
            .success();
        assert!(ok, "cannot build ftctl");
    }
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
