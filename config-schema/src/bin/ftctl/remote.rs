//! `ftctl operator-keygen`, `ftctl status --cluster` and `ftctl metrics`:
//! operator keys and the network queries (`config_schema::remote`).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use config_schema::remote::client::HostKeys;
use config_schema::remote::{auth::OperatorKey, client, render, OperatorRequest, Reply};
use config_schema::signed::{self, SignedConfig};
use config_schema::{canonical, keys, validate};

/// How long each read of a status query waits (the queried host gathers the
/// others within a few seconds).
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Writes DIR/NAME.pk8 and DIR/NAME.pub; prints the `[[operators]]` entry.
pub fn operator_keygen(out: &Path, name: &str) -> Result<()> {
    validate::check_name("--name", name)?;
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (pk8, public) = keys::generate_signing_key()?;
    let (priv_path, pub_path) = (
        out.join(format!("{name}.pk8")),
        out.join(format!("{name}.pub")),
    );
    if pub_path.exists() {
        bail!("refusing to overwrite {}", pub_path.display());
    }
    super::write_new(&priv_path, &pk8, 0o600)?;
    super::write_new(
        &pub_path,
        format!("{}\n", hex::encode(public)).as_bytes(),
        0o644,
    )?;
    eprintln!("wrote {} and {}", priv_path.display(), pub_path.display());
    println!(
        "[[operators]]\nname = \"{name}\"\npublic_key = \"{}\"",
        hex::encode(public)
    );
    Ok(())
}

/// The hosts' keys that replies are checked against, from the operator's
/// copy of the cluster config: the TOML, or a signed config (`ftctl sign`;
/// its content is read, not verified: it is the operator's own file).
pub fn host_keys(path: &Path) -> Result<HostKeys> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(&signed::MAGIC) {
        let sc = SignedConfig::decode(&bytes).with_context(|| path.display().to_string())?;
        return host_keys_of_signed(&sc).with_context(|| path.display().to_string());
    }
    let (c, _) = super::load_config(path)?;
    Ok(HostKeys::of(&c))
}

/// The hosts' keys of a signed config's content.
pub fn host_keys_of_signed(sc: &SignedConfig) -> Result<HostKeys> {
    let c = canonical::decode(&sc.canonical).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(HostKeys::of(&c))
}

/// `ftctl status --cluster --host ADDR --key FILE --config FILE [--json] [--only-this-host]`.
pub fn cluster_status(
    host: &str,
    key: &Path,
    config: &Path,
    json: bool,
    only_this_host: bool,
) -> Result<()> {
    let hosts = host_keys(config)?;
    let der =
        fs::read(key).with_context(|| format!("cannot read operator key {}", key.display()))?;
    let key =
        OperatorKey::from_pkcs8(&der).with_context(|| format!("operator key {}", key.display()))?;
    let addr = client::resolve(host)?;
    let request = if only_this_host {
        OperatorRequest::HostStatus
    } else {
        OperatorRequest::ClusterStatus
    };
    match client::query(addr, &key, &hosts, request, QUERY_TIMEOUT)? {
        Reply::Refused { reason } => bail!("refused: {reason}"),
        Reply::Cluster { report } if json => println!("{}", serde_json::to_string_pretty(&report)?),
        Reply::Cluster { report } => print!("{}", render::render(&report)),
        Reply::Host { report } => println!("{}", serde_json::to_string_pretty(&report)?),
        Reply::Metrics { .. }
        | Reply::Applied { .. }
        | Reply::SendConfig
        | Reply::Sealed { .. } => {
            bail!("{addr} answered something else than status to a status query")
        }
    }
    Ok(())
}

/// `ftctl metrics --host ADDR --key FILE --config FILE`: the host's OpenMetrics text.
pub fn metrics(host: &str, key: &Path, config: &Path) -> Result<()> {
    let hosts = host_keys(config)?;
    let der =
        fs::read(key).with_context(|| format!("cannot read operator key {}", key.display()))?;
    let key =
        OperatorKey::from_pkcs8(&der).with_context(|| format!("operator key {}", key.display()))?;
    print!("{}", fetch_metrics(host, &key, &hosts, QUERY_TIMEOUT)?);
    Ok(())
}

/// `host`'s OpenMetrics text, asked with `key` (also `ftctl page`'s
/// `/metrics?host=`).
pub fn fetch_metrics(
    host: &str,
    key: &OperatorKey,
    hosts: &HostKeys,
    timeout: Duration,
) -> Result<String> {
    let addr = client::resolve(host)?;
    match client::query(addr, key, hosts, OperatorRequest::Metrics, timeout)? {
        Reply::Metrics { text } => Ok(text),
        Reply::Refused { reason } => bail!("refused: {reason}"),
        other => bail!("{addr} answered {other:?} to a metrics query"),
    }
}
