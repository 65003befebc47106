//! `mkbootcfg`: writes the ISO's locked boot-loader configs (see
//! `image::bootcfg`), or checks existing ones.
//!
//! `mkbootcfg --cmdline "console=ttyS0,115200 ..." --label FTAPPLIANCE
//!  --isolinux OUT --grub OUT --grub-embed OUT` writes all three;
//! `mkbootcfg --check --isolinux FILE --grub FILE` checks two files and exits 1
//! naming every problem. A command line with `ft.*` options or characters a
//! boot loader would interpret is refused.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use image::bootcfg::{self, Cmdline};

#[derive(Parser, Debug)]
#[command(about = "Write or check the ISO's locked boot-loader configs")]
struct Args {
    /// Check the files instead of writing them.
    #[arg(long)]
    check: bool,
    /// The kernel command line (when writing).
    #[arg(long)]
    cmdline: Option<String>,
    /// The ISO volume label GRUB searches for (when writing).
    #[arg(long)]
    label: Option<String>,
    /// ISOLINUX config.
    #[arg(long)]
    isolinux: PathBuf,
    /// GRUB config (boot/grub/grub.cfg).
    #[arg(long)]
    grub: PathBuf,
    /// GRUB's embedded config (when writing).
    #[arg(long)]
    grub_embed: Option<PathBuf>,
}

fn write(path: &PathBuf, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.check {
        let results = [
            bootcfg::check_isolinux(&read(&a.isolinux)?),
            bootcfg::check_grub(&read(&a.grub)?),
        ];
        let errors: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        if !errors.is_empty() {
            bail!("boot menu not locked: {}", errors.join(" | "));
        }
        return Ok(());
    }
    let (Some(cmdline), Some(label), Some(embed)) = (&a.cmdline, &a.label, &a.grub_embed) else {
        bail!("writing needs --cmdline, --label and --grub-embed (or pass --check)");
    };
    let cmdline = Cmdline::new(cmdline)?;
    write(&a.isolinux, &bootcfg::isolinux_cfg(&cmdline))?;
    write(&a.grub, &bootcfg::grub_cfg(&cmdline))?;
    write(embed, &bootcfg::grub_embed_cfg(label)?)
}
