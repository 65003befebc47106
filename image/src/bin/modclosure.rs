//! `modclosure`: copies the wanted kernel modules and their dependencies out
//! of an unpacked `lib/modules/<version>` tree and writes a filtered
//! `modules.dep`, `modules.order` and `modules.builtin` next to them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use image::kmod::ModuleTree;

#[derive(Parser, Debug)]
#[command(about = "Copy a closure of kernel modules with a filtered modules.dep")]
struct Args {
    /// The unpacked lib/modules/<version> directory of the kernel package.
    #[arg(long)]
    moddir: PathBuf,
    /// Output directory (becomes lib/modules/<version> in the image); must not exist.
    #[arg(long)]
    out: PathBuf,
    /// Wanted modules; those that exist neither as files nor built in are reported and skipped.
    #[arg(required = true)]
    modules: Vec<String>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.out.exists() {
        anyhow::bail!("{} already exists", args.out.display());
    }
    let tree = ModuleTree::scan(&args.moddir)
        .with_context(|| format!("scanning {}", args.moddir.display()))?;
    let closure = tree.closure(&args.modules)?;
    closure.write_tree(&tree, &args.out)?;
    for (name, (rel, _)) in &closure.modules {
        println!("module  {name:<24} {rel}");
    }
    for name in &closure.builtin {
        println!("builtin {name}");
    }
    for name in &closure.missing {
        println!("absent  {name} (neither a module file nor built in; skipped)");
    }
    Ok(())
}
