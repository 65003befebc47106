//! `ftctl`: the operator's tool for keys, config disks and daemon status.
//!
//! Verbs: `keygen`, `host-keygen`, `operator-keygen`, `check`, `make-disk`, `verify`, `show`,
//! `state`, `update-disk`, `sign`, `apply`, `status`, `metrics`, `page`, `image write`, `image check`. Every
//! failure ends with a non-zero exit status and one line on stderr naming
//! the reason. `verify`, `show` and `apply` take a config disk image or a
//! signed config (`ftctl/config_file.rs` tells them apart).

#[path = "ftctl/apply.rs"]
mod apply;
#[path = "ftctl/config_file.rs"]
mod config_file;
#[path = "ftctl/image.rs"]
mod image;
#[path = "ftctl/page.rs"]
mod page;
#[path = "ftctl/remote.rs"]
mod remote;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use config_file::ConfigFile;
use config_schema::ctl::{self, Request, Response};
use config_schema::disk::{self, DISK_LEN, STATE_LEN, STATE_OFFSET};
use config_schema::{keys, slots, validate, ClusterConfig};

#[derive(Parser)]
#[command(
    name = "ftctl",
    version,
    about = "Keys, signed config disks and status of the FT appliance"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a config-signing key: DIR/signing.pk8 (PKCS#8) and DIR/signing.pub (raw 32 bytes).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a host identity key: DIR/NAME.key and DIR/NAME.pub (hex); prints the public key.
    HostKeygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        host: String,
    },
    /// Make an operator key: DIR/NAME.pk8 (PKCS#8) and DIR/NAME.pub (hex);
    /// prints the [[operators]] entry for the config.
    OperatorKeygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Validate a TOML cluster config.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate, sign and write the 1 MiB config disk for one host.
    MakeDisk {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        host: String,
        /// The signing key (PKCS#8 DER).
        #[arg(long)]
        key: PathBuf,
        /// The host's X25519 private key, hex [default: <dir of --key>/hosts/<NAME>.key].
        #[arg(long)]
        host_key: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a config disk, or a signed config (`ftctl sign`), against the
    /// trust-root public key (raw 32 bytes).
    Verify {
        /// A config disk image or a signed config file.
        #[arg(long, visible_alias = "file")]
        disk: PathBuf,
        #[arg(long)]
        pubkey: PathBuf,
    },
    /// Print the config a disk or a signed config holds, as TOML. Checks NO
    /// signature and does not validate.
    Show {
        /// A config disk image or a signed config file.
        #[arg(long, visible_alias = "file")]
        disk: PathBuf,
    },
    /// Print the anti-rollback STATE sector of a config disk.
    State {
        #[arg(long)]
        disk: PathBuf,
    },
    /// Replace the signed part of an existing config disk with a new one,
    /// keeping its STATE sector; refuses a rollback.
    UpdateDisk {
        /// The disk (image file or device) to update in place.
        #[arg(long)]
        disk: PathBuf,
        /// The new image made by `make-disk`.
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        pubkey: PathBuf,
    },
    /// Sign a config for `apply`: no host's key in it, every host verifies it.
    Sign {
        #[arg(long)]
        config: PathBuf,
        /// The signing key (PKCS#8 DER), whose public half is the trust root.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Send a newer signed config to a host, which persists it and passes
    /// it on to the others; prints one line per host.
    Apply {
        /// The host to send it to: IP, IP:PORT or NAME:PORT (port 7401 by default).
        #[arg(long)]
        host: String,
        /// The operator's private key (PKCS#8), listed in the config's [[operators]].
        #[arg(long)]
        key: PathBuf,
        /// The trust root (raw 32 bytes), when FILE is a config disk image.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// The cluster config (TOML or signed) whose hosts' keys the replies
        /// must be sealed with; default: the applied config's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A signed config (`ftctl sign`), or a config disk image holding an applied one.
        file: PathBuf,
    },
    /// A host's figures as OpenMetrics text, over the network (operator key).
    Metrics {
        /// The host to ask: IP, IP:PORT or NAME:PORT (port 7401 by default).
        #[arg(long)]
        host: String,
        /// The operator's private key (PKCS#8), listed in the config's [[operators]].
        #[arg(long)]
        key: PathBuf,
        /// The cluster config (TOML or signed) whose hosts' keys the replies
        /// must be sealed with.
        #[arg(long)]
        config: PathBuf,
    },
    /// Operator Linux images ([[images]]) on the shared device: write, check.
    Image {
        #[command(subcommand)]
        cmd: image::ImageCmd,
    },
    /// Serve a read-only status page of the cluster on this machine: polls
    /// the cluster's status every second with the operator's key and draws
    /// hosts, VMs, Primary and Secondary, lag and log bandwidth.
    Page {
        /// A host to ask (IP, IP:PORT or NAME:PORT); give several to go on
        /// when one goes down.
        #[arg(long, required = true)]
        host: Vec<String>,
        /// The operator's private key (PKCS#8), listed in the config's [[operators]].
        #[arg(long)]
        key: PathBuf,
        /// The cluster config (TOML or signed) whose hosts' keys the replies
        /// must be sealed with.
        #[arg(long)]
        config: PathBuf,
        /// Where the page is served (keep it on loopback: the page itself
        /// asks for no key).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Query the daemons' status over their control sockets, or (--cluster)
    /// the whole cluster over the network from any host.
    Status {
        /// One socket; default: ftvmm, heartbeat and fencing under /run.
        #[arg(long, conflicts_with = "cluster")]
        socket: Option<PathBuf>,
        /// Ask a host over the network for every host's and VM's status.
        #[arg(long, requires_all = ["host", "key", "config"])]
        cluster: bool,
        /// The host to ask: IP, IP:PORT or NAME:PORT (port 7401 by default).
        #[arg(long, requires = "cluster")]
        host: Option<String>,
        /// The operator's private key (PKCS#8), listed in the config's [[operators]].
        #[arg(long, requires = "cluster")]
        key: Option<PathBuf>,
        /// The cluster config (TOML or signed) whose hosts' keys the replies
        /// must be sealed with.
        #[arg(long, requires = "cluster")]
        config: Option<PathBuf>,
        /// Print the gathered reports as JSON instead of text.
        #[arg(long, requires = "cluster")]
        json: bool,
        /// Only the asked host's own report (JSON), without asking the others.
        #[arg(long, requires = "cluster")]
        only_this_host: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { out } => keygen(&out),
        Cmd::HostKeygen { out, host } => host_keygen(&out, &host),
        Cmd::OperatorKeygen { out, name } => remote::operator_keygen(&out, &name),
        Cmd::Check { config } => check(&config),
        Cmd::MakeDisk {
            config,
            host,
            key,
            host_key,
            out,
        } => make_disk(&config, &host, &key, host_key, &out),
        Cmd::Verify { disk, pubkey } => verify(&disk, &pubkey),
        Cmd::Show { disk } => show(&disk),
        Cmd::State { disk } => state(&disk),
        Cmd::UpdateDisk { disk, from, pubkey } => update_disk(&disk, &from, &pubkey),
        Cmd::Status {
            cluster: true,
            host: Some(host),
            key: Some(key),
            config: Some(config),
            json,
            only_this_host,
            ..
        } => remote::cluster_status(&host, &key, &config, json, only_this_host),
        Cmd::Status { socket, .. } => status(socket),
        Cmd::Metrics { host, key, config } => remote::metrics(&host, &key, &config),
        Cmd::Page {
            host,
            key,
            config,
            listen,
        } => page::page(&host, &key, &config, listen),
        Cmd::Sign { config, key, out } => apply::sign(&config, &key, &out),
        Cmd::Apply {
            host,
            key,
            pubkey,
            config,
            file,
        } => apply::apply(&host, &key, pubkey.as_deref(), config.as_deref(), &file),
        Cmd::Image { cmd } => image::run(cmd),
    }
}

/// Creates `path` with `mode`, refusing to overwrite.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "refusing to write {} (exists or not writable)",
                path.display()
            )
        })?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn keygen(out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (pk8, public) = keys::generate_signing_key()?;
    let (priv_path, pub_path) = (out.join("signing.pk8"), out.join("signing.pub"));
    if pub_path.exists() {
        bail!("refusing to overwrite {}", pub_path.display());
    }
    write_new(&priv_path, &pk8, 0o600)?;
    write_new(&pub_path, &public, 0o644)?;
    println!("wrote {} and {}", priv_path.display(), pub_path.display());
    println!("public key: {}", hex::encode(public));
    Ok(())
}

fn host_keygen(out: &Path, host: &str) -> Result<()> {
    validate::check_name("--host", host)?;
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (secret, public) = keys::generate_host_key()?;
    let (key_path, pub_path) = (
        out.join(format!("{host}.key")),
        out.join(format!("{host}.pub")),
    );
    if pub_path.exists() {
        bail!("refusing to overwrite {}", pub_path.display());
    }
    write_new(
        &key_path,
        format!("{}\n", hex::encode(secret)).as_bytes(),
        0o600,
    )?;
    write_new(
        &pub_path,
        format!("{}\n", hex::encode(public)).as_bytes(),
        0o644,
    )?;
    eprintln!("wrote {} and {}", key_path.display(), pub_path.display());
    println!("public_key = \"{}\"", hex::encode(public));
    Ok(())
}

fn load_config(path: &Path) -> Result<(ClusterConfig, Vec<validate::Warning>)> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = config_schema::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for w in &v.warnings {
        eprintln!("warning: {w}");
    }
    test_hooks_banner(&v.config, &mut std::io::stderr());
    Ok((v.config, v.warnings))
}

/// The loud banner for a config with test hooks (`check`, `make-disk`, `verify`).
fn test_hooks_banner(c: &ClusterConfig, out: &mut dyn Write) {
    let hooks = c.test_hooks();
    if hooks.is_empty() {
        return;
    }
    let bar = "!".repeat(72);
    let _ = writeln!(
        out,
        "{bar}\n!! THIS CONFIG ENABLES TEST HOOKS ({}): NOT FOR PRODUCTION.\n\
         !! Remove its [test] section before signing a config for real hosts.\n{bar}",
        config_schema::hooks::list(&hooks)
    );
}

/// `cluster demo generation 1: 3 hosts, 1 VMs`, then `(1 powered off: kv)`
/// when the config powers VMs off.
fn summary(c: &ClusterConfig) -> String {
    let off: Vec<&str> = c
        .vms
        .iter()
        .filter(|vm| !vm.power.is_on())
        .map(|vm| vm.name.as_str())
        .collect();
    let off = match off.len() {
        0 => String::new(),
        n => format!(" ({n} powered off: {})", off.join(", ")),
    };
    format!(
        "cluster {} generation {}: {} hosts, {} VMs{off}",
        c.cluster.name,
        c.cluster.generation,
        c.hosts.len(),
        c.vms.len()
    )
}

/// A config without `[[operators]]` is valid but locks every operator out
/// of the hosts that run it; said (apart from validation's warnings, see
/// the function's doc) where an operator makes or signs one, after what
/// succeeded (a refusal stays one line).
fn warn_no_operators(c: &config_schema::model::ClusterConfig) {
    if let Some(w) = validate::no_operators_warning(c) {
        eprintln!("warning: {w}");
    }
}

fn check(path: &Path) -> Result<()> {
    let (c, _) = load_config(path)?;
    warn_no_operators(&c);
    println!("ok: {}", summary(&c));
    for h in &c.hosts {
        if let Some(m) = &h.mgmt {
            let ip = m.addr.split('/').next().unwrap_or_default();
            println!(
                "management network: {} at {} (NIC {}); status service {ip}:{}",
                h.name,
                m.addr,
                m.mac,
                config_schema::remote::PORT
            );
        }
    }
    Ok(())
}

fn make_disk(
    config: &Path,
    host: &str,
    key: &Path,
    host_key: Option<PathBuf>,
    out: &Path,
) -> Result<()> {
    let (c, _) = load_config(config)?;
    let signer = keys::load_signing_key(&read(key)?)
        .with_context(|| format!("signing key {}", key.display()))?;
    let host_key = host_key.unwrap_or_else(|| {
        key.parent()
            .unwrap_or(Path::new("."))
            .join("hosts")
            .join(format!("{host}.key"))
    });
    let text = fs::read_to_string(&host_key)
        .with_context(|| format!("cannot read host key {}", host_key.display()))?;
    let secret =
        keys::parse_hex_key(&text).with_context(|| format!("host key {}", host_key.display()))?;
    let image = disk::write_disk(&c, host, &secret, &signer)?;
    fs::write(out, &image).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {} for host {host}: {}", out.display(), summary(&c));
    warn_no_operators(&c);
    Ok(())
}

fn verify(path: &Path, pubkey: &Path) -> Result<()> {
    let file =
        config_file::classify(path, read(path)?).map_err(|e| anyhow!("config refused: {e:#}"))?;
    let image = match file {
        ConfigFile::Signed(sc) => return config_file::verify_signed(path, &sc, pubkey),
        ConfigFile::Disk(image) => image,
    };
    let pk = read(pubkey)?;
    let active = slots::read_active(&image, &pk).map_err(|e| anyhow!("config refused: {e}"))?;
    let v = &active.current.disk;
    let host = v.config.hosts.iter().find(|h| h.name == v.host_name);
    let id = host.map(|h| h.id).unwrap_or_default();
    println!("ok: host {} (id {id}), {}", v.host_name, summary(&v.config));
    for w in &v.warnings {
        println!("warning: {w}");
    }
    test_hooks_banner(&v.config, &mut std::io::stdout());
    println!(
        "config digest: {} (of two configs of one generation, the higher digest is newer)",
        active.current.id.short_digest()
    );
    if active.current.slot != 0 || active.current.format != disk::FORMAT_VERSION {
        println!(
            "slot: {} (applied over the network, format {})",
            active.current.slot, active.current.format
        );
    }
    if let Some(p) = &active.other_problem {
        println!("other slot: {p}");
    }
    if image.len() >= DISK_LEN {
        match disk::decode_state_id(&image[STATE_OFFSET as usize..][..STATE_LEN]) {
            Ok(Some(id)) if id.has_digest() => println!(
                "state: accepted generation {} (digest {})",
                id.generation,
                id.short_digest()
            ),
            Ok(Some(id)) => println!("state: accepted generation {}", id.generation),
            Ok(None) => println!("state: blank"),
            Err(e) => println!("state: {e}"),
        }
    }
    Ok(())
}

fn show(path: &Path) -> Result<()> {
    let image = match config_file::read(path)? {
        ConfigFile::Signed(sc) => return config_file::show_signed(path, &sc),
        ConfigFile::Disk(image) => image,
    };
    let (c, host) = disk::read_disk_unverified(&image)
        .with_context(|| format!("{} is not a readable config disk", path.display()))?;
    println!("# host: {host}");
    println!("# NOT verified: this shows what the disk claims; use `ftctl verify` to check it.");
    print!(
        "{}",
        toml::to_string_pretty(&c).context("cannot print config as TOML")?
    );
    Ok(())
}

fn read_state(image: &[u8]) -> Result<Option<config_schema::config_id::ConfigId>> {
    let end = STATE_OFFSET as usize + STATE_LEN;
    let s = image
        .get(STATE_OFFSET as usize..end)
        .ok_or_else(|| anyhow!("disk is {} bytes, shorter than {end}", image.len()))?;
    Ok(disk::decode_state_id(s)?)
}

fn state(disk_path: &Path) -> Result<()> {
    match read_state(&read(disk_path)?)? {
        Some(id) if id.has_digest() => println!(
            "accepted generation {} (digest {})",
            id.generation,
            id.short_digest()
        ),
        Some(id) => println!("accepted generation {}", id.generation),
        None => println!("blank (no config accepted yet)"),
    }
    Ok(())
}

fn update_disk(target: &Path, from: &Path, pubkey: &Path) -> Result<()> {
    let new = read(from)?;
    let pk = read(pubkey)?;
    let v = disk::read_disk(&new, &pk).map_err(|e| anyhow!("config refused: {e}"))?;
    let old = read(target)?;
    if disk::looks_like_config_disk(&old) {
        let accepted = read_state(&old)?;
        let id = slots::read_slot(&new, 0, &pk)
            .map_err(|e| anyhow!("config refused: {e}"))?
            .map(|s| s.id)
            .ok_or_else(|| anyhow!("config refused: slot 0 is blank"))?;
        // What the disk holds now counts too: its STATE sector is blank
        // until a host booted from it, and a disk prepared offline must
        // not go back either, nor become another host's (its slot carries
        // that host's private key).
        let held = slots::read_active(&old, &pk).ok().map(|a| a.current);
        if let Some(h) = held.as_ref().filter(|h| h.disk.host_name != v.host_name) {
            bail!(
                "config refused: {} is {}'s config disk and {} is {}'s (each carries its host's \
                 private key); make {}'s disk with make-disk",
                target.display(),
                h.disk.host_name,
                from.display(),
                v.host_name,
                v.host_name
            );
        }
        let floor = accepted.max(held.map(|h| h.id));
        disk::check_rollback(floor, id).map_err(|e| anyhow!("config refused: {e}"))?;
    }
    let signed_part = &new[..STATE_OFFSET as usize];
    let mut f = OpenOptions::new()
        .write(true)
        .open(target)
        .with_context(|| format!("cannot open {}", target.display()))?;
    f.write_all(signed_part)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", target.display()))?;
    println!(
        "updated {} to generation {} (STATE sector kept)",
        target.display(),
        v.generation()
    );
    Ok(())
}

fn status(socket: Option<PathBuf>) -> Result<()> {
    let sockets: Vec<PathBuf> = match socket {
        Some(s) => vec![s],
        None => [
            ctl::FTVMM_SOCKET,
            ctl::HEARTBEAT_SOCKET,
            ctl::FENCING_SOCKET,
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    let mut failed = Vec::new();
    for s in &sockets {
        match ctl::query(s, &Request::Status) {
            Ok(Response::Status { status }) => {
                println!("{}:", s.display());
                println!("{}", serde_json::to_string_pretty(&status)?);
            }
            Ok(other) => {
                println!("{}: unexpected answer {other:?}", s.display());
                failed.push(s.display().to_string());
            }
            Err(e) => {
                println!("{}: {e}", s.display());
                failed.push(s.display().to_string());
            }
        }
    }
    if !failed.is_empty() {
        bail!("no status from {}", failed.join(", "));
    }
    Ok(())
}
