//! `ftctl sign` and `ftctl apply`: a host-independent signed config
//! (`config_schema::signed`) and sending it to a host over the network
//! (`config_schema::remote::apply`), which persists it and passes it on.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use config_schema::remote::apply::{self, Outcome};
use config_schema::remote::auth::OperatorKey;
use config_schema::remote::{client, Reply};
use config_schema::signed::SignedConfig;
use config_schema::{keys, slots};

use super::config_file::ConfigFile;

/// How long each read of an apply waits: the asked host persists, then
/// passes the config on to the others (each within a few seconds).
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// `ftctl sign --config FILE --key signing.pk8 --out FILE`.
pub fn sign(config: &Path, key: &Path, out: &Path) -> Result<()> {
    let (c, _) = super::load_config(config)?;
    let signer = keys::load_signing_key(&super::read(key)?)
        .with_context(|| format!("signing key {}", key.display()))?;
    let sc = SignedConfig::sign(&c, &signer)?;
    super::write_new(out, &sc.encode(), 0o644)?;
    // The digest decides between two configs of one generation (the higher
    // wins everywhere): printed so that two operators can compare.
    let id = config_schema::config_id::ConfigId::of_config(&c);
    println!(
        "wrote {}: {}; digest {}",
        out.display(),
        super::summary(&c),
        hex::encode(id.digest)
    );
    super::warn_no_operators(&c);
    Ok(())
}

/// The signed config in `file`: a signed-config file, or a config disk
/// image whose active slot was applied (checked against `pubkey`).
fn load_signed(file: &Path, pubkey: Option<&Path>) -> Result<SignedConfig> {
    let bytes = match super::config_file::read(file)? {
        ConfigFile::Signed(sc) => return Ok(sc),
        ConfigFile::Disk(bytes) => bytes,
    };
    let Some(pubkey) = pubkey else {
        bail!(
            "{} is a config disk image: give --pubkey (the trust root) to find its active slot",
            file.display()
        );
    };
    let pk = super::read(pubkey)?;
    slots::signed_of_image(&bytes, &pk).map_err(|e| anyhow!("{}: {e}", file.display()))
}

/// `ftctl apply --host ADDR --key FILE [--pubkey FILE] [--config FILE] SIGNED`:
/// prints one line per host; fails when a host refused or was unreachable.
/// The replies are checked against the hosts' keys of `--config`, or else of
/// the applied config itself.
pub fn apply(
    host: &str,
    key: &Path,
    pubkey: Option<&Path>,
    keys_from: Option<&Path>,
    file: &Path,
) -> Result<()> {
    let config = load_signed(file, pubkey)?;
    let hosts = match keys_from {
        Some(p) => super::remote::host_keys(p)?,
        None => super::remote::host_keys_of_signed(&config)
            .with_context(|| format!("the hosts' keys of {}", file.display()))?,
    };
    let der = super::read(key)?;
    let key =
        OperatorKey::from_pkcs8(&der).with_context(|| format!("operator key {}", key.display()))?;
    let addr = client::resolve(host)?;
    let (generation, hosts) = match apply::apply(addr, &key, &hosts, &config, APPLY_TIMEOUT)? {
        Reply::Applied { generation, hosts } => (generation, hosts),
        Reply::Refused { reason } => bail!("refused: {reason}"),
        other => bail!("{addr} answered {other:?} to an apply"),
    };
    for h in &hosts {
        println!("{}", h.line);
    }
    let failed: Vec<&str> = hosts
        .iter()
        .filter(|h| !h.holds && matches!(h.outcome, Outcome::Refused | Outcome::Unreachable))
        .map(|h| h.host.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "generation {generation} not applied on {}",
            failed.join(", ")
        );
    }
    Ok(())
}
