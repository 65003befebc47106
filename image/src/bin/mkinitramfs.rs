//! `mkinitramfs`: writes a reproducible initramfs (cpio newc, optionally gzip).
//!
//! Inputs are staging directories (`--root DIR`, copied to `/`) and manifest
//! files (`--manifest FILE`, see `image::manifest`). The output depends only on
//! the input bytes, the declared modes and `--mtime`.

use std::fs;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use image::{gzip, manifest, Archive};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Compress {
    /// gzip with a fixed header (mtime 0, no name, OS=Unix).
    Gzip,
    /// plain cpio.
    None,
}

#[derive(Parser, Debug)]
#[command(about = "Write a reproducible initramfs (cpio newc)")]
struct Args {
    /// Staging directory copied to the archive root (repeatable).
    #[arg(long)]
    root: Vec<PathBuf>,
    /// Manifest file (repeatable), applied after the staging directories.
    #[arg(long)]
    manifest: Vec<PathBuf>,
    /// mtime of every entry (seconds since the epoch); defaults to SOURCE_DATE_EPOCH.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    mtime: u32,
    /// Compression of the output.
    #[arg(long, value_enum, default_value = "gzip")]
    compress: Compress,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Print every entry path.
    #[arg(long)]
    list: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut archive = Archive::new();
    for root in &args.root {
        manifest::add_tree(&mut archive, "/", root)
            .with_context(|| format!("staging directory {}", root.display()))?;
    }
    for m in &args.manifest {
        manifest::add_manifest(&mut archive, m)?;
    }
    if archive.is_empty() {
        anyhow::bail!("nothing to archive: give --root and/or --manifest");
    }
    if args.list {
        for p in archive.paths() {
            println!("/{p}");
        }
    }
    let cpio = archive.write_newc(args.mtime, Vec::new())?;
    let bytes = match args.compress {
        Compress::Gzip => gzip::compress(&cpio).context("gzip")?,
        Compress::None => cpio.clone(),
    };
    let tmp = args.out.with_extension("tmp");
    {
        let mut f = BufWriter::new(
            fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?,
        );
        std::io::Write::write_all(&mut f, &bytes)?;
        std::io::Write::flush(&mut f)?;
    }
    fs::rename(&tmp, &args.out).with_context(|| format!("rename to {}", args.out.display()))?;
    tracing::info!(
        entries = archive.len(),
        cpio_bytes = cpio.len(),
        out_bytes = bytes.len(),
        out = %args.out.display(),
        "initramfs written"
    );
    Ok(())
}
