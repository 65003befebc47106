//! The config file an operator names to `ftctl verify`, `show` or `apply`:
//! a signed config (`ftctl sign`, magic `FTCFGSG1`) or a config disk image
//! (`make-disk`, magic `FTCFGDK1`), told apart by its first bytes here only.
//!
//! Rules: every refusal of a signed config names the file and what is wrong
//! (torn, not one, bad signature); `verify` checks a signed config as every
//! host does (`SignedConfig::verify`) and prints the digest `ftctl sign`
//! printed, so two operators can compare; `show` checks nothing, as for a disk.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use config_schema::config_id::ConfigId;
use config_schema::signed::{self, SignedConfig};
use config_schema::{canonical, disk};

/// What a config file holds.
pub enum ConfigFile {
    /// A signed config, split into its parts, not verified.
    Signed(SignedConfig),
    /// A config disk image (it starts with the disk magic; nothing else checked).
    Disk(Vec<u8>),
}

/// Reads `file` and tells which kind it is ([`classify`]).
pub fn read(file: &Path) -> Result<ConfigFile> {
    classify(file, super::read(file)?)
}

/// Tells `bytes`, read from `file`, a signed config from a config disk image;
/// refuses a torn signed config and anything else (`wrong magic: …`).
pub fn classify(file: &Path, bytes: Vec<u8>) -> Result<ConfigFile> {
    if bytes.starts_with(&signed::MAGIC) {
        let sc = SignedConfig::decode(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        return Ok(ConfigFile::Signed(sc));
    }
    if !disk::looks_like_config_disk(&bytes) {
        bail!(
            "wrong magic: {} is neither a signed config (`ftctl sign`) nor a config disk image",
            file.display()
        );
    }
    Ok(ConfigFile::Disk(bytes))
}

/// `ftctl verify --disk FILE.ftcfg --pubkey FILE`: the signature against the
/// trust root, then the config's validity; prints `ok: …`, warnings, the
/// test-hook banner and the full digest.
pub fn verify_signed(file: &Path, sc: &SignedConfig, pubkey: &Path) -> Result<()> {
    let pk = super::read(pubkey)?;
    let v = sc
        .verify(&pk)
        .map_err(|e| anyhow!("config refused: {}: {e}", file.display()))?;
    println!(
        "ok: signed config {} (for every host), {}",
        file.display(),
        super::summary(&v.config)
    );
    for w in &v.warnings {
        println!("warning: {w}");
    }
    super::test_hooks_banner(&v.config, &mut std::io::stdout());
    let id = ConfigId::of_canonical(v.generation(), &sc.canonical);
    println!(
        "config digest: {} (as `ftctl sign` printed it; of two configs of one generation, \
         the higher digest is newer)",
        hex::encode(id.digest)
    );
    Ok(())
}

/// `ftctl show --disk FILE.ftcfg`: the config as TOML, WITHOUT checking the
/// signature or validating it.
pub fn show_signed(file: &Path, sc: &SignedConfig) -> Result<()> {
    let c = canonical::decode(&sc.canonical)
        .map_err(|e| anyhow!("{}: malformed config: {e}", file.display()))?;
    let toml = toml::to_string_pretty(&c).context("cannot print config as TOML")?;
    println!("# signed config (for every host)");
    println!("# NOT verified: this shows what the file claims; use `ftctl verify` to check it.");
    print!("{toml}");
    Ok(())
}
