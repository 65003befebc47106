//! `ftctl operator-keygen`, `ftctl status --cluster` and `ftctl metrics`:
//! operator keys and the network queries (`config_schema::remote`).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use config_schema::remote::{auth::OperatorKey, client, render, OperatorRequest, Reply};
use config_schema::{keys, validate};

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

/// `ftctl status --cluster --host ADDR --key FILE [--json] [--only-this-host]`.
pub fn cluster_status(host: &str, key: &Path, json: bool, only_this_host: bool) -> Result<()> {
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
    match client::query(addr, &key, request, QUERY_TIMEOUT)? {
        Reply::Refused { reason } => bail!("refused: {reason}"),
        Reply::Cluster { report } if json => println!("{}", serde_json::to_string_pretty(&report)?),
        Reply::Cluster { report } => print!("{}", render::render(&report)),
        Reply::Host { report } => println!("{}", serde_json::to_string_pretty(&report)?),
        Reply::Metrics { .. } | Reply::Applied { .. } | Reply::SendConfig => {
            bail!("{addr} answered something else than status to a status query")
        }
    }
    Ok(())
}

/// `ftctl metrics --host ADDR --key FILE`: the host's OpenMetrics text.
pub fn metrics(host: &str, key: &Path) -> Result<()> {
    let der =
        fs::read(key).with_context(|| format!("cannot read operator key {}", key.display()))?;
    let key =
        OperatorKey::from_pkcs8(&der).with_context(|| format!("operator key {}", key.display()))?;
    let addr = client::resolve(host)?;
    match client::query(addr, &key, OperatorRequest::Metrics, QUERY_TIMEOUT)? {
        Reply::Metrics { text } => print!("{text}"),
        Reply::Refused { reason } => bail!("refused: {reason}"),
        other => bail!("{addr} answered {other:?} to a metrics query"),
    }
    Ok(())
}
