//! `elfclosure`: prints the initramfs manifest lines (see `image::manifest`)
//! that ship the programs of a lock from unpacked pinned packages with their
//! loader and every shared library they need, each once and found only in
//! those packages (`image::elfdeps`). A library that none of them has stops it,
//! naming the library and who needs it.
//!
//! `elfclosure --lock image/iscsi.lock --root DIR --root DIR ...`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use image::debpin::parse_program_lock;
use image::elfdeps::closure;

#[derive(Parser, Debug)]
#[command(about = "Manifest lines for programs and their shared-library closure")]
struct Args {
    /// The program lock (`program` and `package` lines).
    #[arg(long)]
    lock: PathBuf,
    /// An unpacked package of the lock (repeat for each; all together are one file system).
    #[arg(long, required = true)]
    root: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.lock)
        .with_context(|| format!("reading {}", args.lock.display()))?;
    // The lock's name in parse errors; leaked once, the process is short.
    let name: &'static str = Box::leak(args.lock.display().to_string().into_boxed_str());
    let lock = parse_program_lock(&text, name)?;
    let dests: Vec<&str> = lock.programs.iter().map(|p| p.dest.as_str()).collect();
    let shipped = closure(&args.root, &lock.program_paths()).with_context(|| {
        format!(
            "the closure of {} ({})",
            dests.join(", "),
            args.lock.display()
        )
    })?;
    for s in shipped {
        println!("{}", s.manifest_line());
    }
    Ok(())
}
