//! `ftctl image write` and `ftctl image check`: an operator's Linux image
//! (`[[images]]` in the cluster config) on the shared device.
//!
//! `write` puts the files where the config places them and prints the
//! `kernel = { ... }` / `initrd = { ... }` lines that pin them; the config
//! may still have blank pins then (`size_bytes` and `sha256` left out), it
//! cannot be signed before they are filled in. `check` reads the image back
//! the way a host does at VM start and compares it with the pins.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use config_schema::model::{ImagePart, LinuxImage};
use config_schema::shared_images::{self, part_offset};
use config_schema::validate::{resolve_image, ImageRef};
use config_schema::ClusterConfig;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Write a kernel (and initrd) where the config's [[images]] entry places
    /// them on the shared device; print the lines that pin them.
    Write {
        #[command(flatten)]
        at: ImageAt,
        /// The kernel (bzImage).
        #[arg(long)]
        kernel: PathBuf,
        /// The initrd, if the [[images]] entry places one.
        #[arg(long)]
        initrd: Option<PathBuf>,
    },
    /// Read the image back from the shared device, as a host does at VM
    /// start, and check it against the config's pins.
    Check {
        #[command(flatten)]
        at: ImageAt,
    },
}

/// Which image, in which config, on which device.
#[derive(Args)]
pub struct ImageAt {
    /// The shared device (or a file holding a copy of it).
    #[arg(long)]
    device: PathBuf,
    /// The TOML cluster config.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    which: Which,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// The [[images]] entry's name.
    #[arg(long)]
    image: Option<String>,
    /// A VM whose image is an [[images]] entry.
    #[arg(long)]
    vm: Option<String>,
}

pub fn run(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Write { at, kernel, initrd } => write(&at, &kernel, initrd.as_deref()),
        ImageCmd::Check { at } => check(&at),
    }
}

/// The [[images]] entry `which` names.
fn find<'a>(c: &'a ClusterConfig, which: &Which) -> Result<&'a LinuxImage> {
    if let Some(name) = &which.image {
        return c
            .images
            .iter()
            .find(|i| &i.name == name)
            .ok_or_else(|| anyhow!("no [[images]] entry {name:?} in the config"));
    }
    let name = which.vm.as_deref().unwrap_or_default();
    let vm = c
        .vms
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| anyhow!("no VM {name:?} in the config"))?;
    match resolve_image(c, &vm.image) {
        Some(ImageRef::Shared(img)) => Ok(img),
        _ => bail!(
            "VM {name:?} boots {:?}, which is not an [[images]] entry of the config",
            vm.image
        ),
    }
}

/// The config, validated but with blank pins allowed.
fn load_unpinned(path: &Path) -> Result<ClusterConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let c: ClusterConfig = toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    config_schema::validate::validate_unpinned(&c)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(c)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(at: &ImageAt, kernel: &Path, initrd: Option<&Path>) -> Result<()> {
    let c = load_unpinned(&at.config)?;
    let old = find(&c, &at.which)?.clone();
    let kernel = read(kernel)?;
    let initrd = initrd.map(read).transpose()?;
    let new = shared_images::write_image(&c, &old.name, &at.device, &kernel, initrd.as_deref())?;
    let mut parts = vec![("kernel", &new.kernel)];
    parts.extend(new.initrd.as_ref().map(|i| ("initrd", i)));
    println!("# wrote image {:?} to {}:", new.name, at.device.display());
    for (what, p) in &parts {
        let off = part_offset(&c, &new, p).unwrap_or_default();
        println!("#   {what}: {} bytes at {off:#x}", p.size_bytes);
    }
    println!("# its [[images]] entry {:?} pins them with:", new.name);
    for (what, p) in &parts {
        println!("{what} = {}", pin_line(p));
    }
    if new == old {
        println!("# the config already pins these bytes");
    } else {
        println!(
            "# {} pins other bytes (or none): put these lines in it, then sign the config \
             disks again (ftctl make-disk, ftctl update-disk)",
            at.config.display()
        );
    }
    Ok(())
}

/// `{ offset_mib = 0, size_bytes = 14, sha256 = "..." }`
fn pin_line(p: &ImagePart) -> String {
    format!(
        "{{ offset_mib = {}, size_bytes = {}, sha256 = \"{}\" }}",
        p.offset_mib, p.size_bytes, p.sha256
    )
}

fn check(at: &ImageAt) -> Result<()> {
    let (c, _) = super::load_config(&at.config)?;
    let img = find(&c, &at.which)?;
    let who = match &at.which.vm {
        Some(vm) => format!("vm {vm}"),
        None => format!("image {}", img.name),
    };
    shared_images::load_image(&c, img, &at.device, &who)?;
    let mut parts = vec![("kernel", &img.kernel)];
    parts.extend(img.initrd.as_ref().map(|i| ("initrd", i)));
    let what: Vec<String> = parts
        .iter()
        .map(|(w, p)| format!("{w} {} bytes sha256 {}…", p.size_bytes, &p.sha256[..16]))
        .collect();
    println!(
        "ok: image {:?} on {}: {}, as the config pins",
        img.name,
        at.device.display(),
        what.join(", ")
    );
    Ok(())
}
