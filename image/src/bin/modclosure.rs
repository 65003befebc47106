//! `modclosure`: copies the wanted kernel modules and their dependencies out
//! of an unpacked `lib/modules/<version>` tree and writes a filtered
//! `modules.dep`, `modules.alias`, `modules.order` and `modules.builtin` next
//! to them. With `--drivers image/drivers.txt` it also takes that table's
//! modules (each must exist), prints what each group costs, and with
//! `--firmware-lock` checks that every firmware file a table module declares
//! is pinned there.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use image::drivers::{self, Driver};
use image::kmod::{Closure, ModuleTree};

#[derive(Parser, Debug)]
#[command(about = "Copy a closure of kernel modules with a filtered modules.dep")]
struct Args {
    /// The unpacked lib/modules/<version> directory of the kernel package.
    #[arg(long)]
    moddir: PathBuf,
    /// Output directory (becomes lib/modules/<version> in the image); must not exist.
    #[arg(long)]
    out: PathBuf,
    /// The driver table (image/drivers.txt): its modules are wanted too, and must exist.
    #[arg(long)]
    drivers: Option<PathBuf>,
    /// The firmware pin (image/firmware.lock): every `firmware=` of a table module must be in it.
    #[arg(long, requires = "drivers")]
    firmware_lock: Option<PathBuf>,
    /// Further wanted modules; those that exist neither as files nor built in are reported and skipped.
    modules: Vec<String>,
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every firmware file a table module declares must be pinned.
fn check_firmware(table: &[Driver], closure: &Closure, lock: &drivers::FirmwareLock) -> Result<()> {
    let mut unpinned = Vec::new();
    for d in table {
        let Some(info) = closure.info.get(&d.module) else {
            continue;
        };
        for f in &info.firmware {
            if !lock.files.iter().any(|p| &p.path == f) {
                unpinned.push(format!("{} requests {f}", d.module));
            }
        }
    }
    if !unpinned.is_empty() {
        bail!(
            "firmware not pinned in the firmware lock: {} (add it, with its sha256, or drop the module)",
            unpinned.join(", ")
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.out.exists() {
        bail!("{} already exists", args.out.display());
    }
    let table = match &args.drivers {
        Some(p) => drivers::parse_drivers(&read(p)?)?,
        None => Vec::new(),
    };
    if table.is_empty() && args.modules.is_empty() {
        bail!("no modules wanted (name some, or --drivers FILE)");
    }
    let tree = ModuleTree::scan(&args.moddir)
        .with_context(|| format!("scanning {}", args.moddir.display()))?;
    let mut wanted: Vec<String> = table.iter().map(|d| d.module.clone()).collect();
    wanted.extend(args.modules.iter().cloned());
    let closure = tree.closure(&wanted)?;
    let absent: Vec<&str> = table
        .iter()
        .filter(|d| closure.missing.contains(&d.module))
        .map(|d| d.module.as_str())
        .collect();
    if !absent.is_empty() {
        bail!(
            "modules of the driver table that this kernel has neither as files nor built in: {}",
            absent.join(", ")
        );
    }
    if let Some(p) = &args.firmware_lock {
        check_firmware(&table, &closure, &drivers::parse_firmware_lock(&read(p)?)?)?;
    }
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
    for g in drivers::group_costs(&table, &closure, tree.root())? {
        println!(
            "group   {:<10} {:>3} module files {:>9} bytes {:>9} bytes gzip",
            g.group,
            g.modules.len(),
            g.bytes,
            g.gzip_bytes
        );
    }
    Ok(())
}
