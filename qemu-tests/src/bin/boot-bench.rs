//! Boots one appliance host N times, one after another, and prints a table of
//! console milestones and the median boot-to-ready time (`make bench`).
//!
//! Times are from spawning QEMU to the console line, wall clock, TCG.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qemu_tests::{Cluster, Pattern};

#[derive(Parser)]
#[command(about = "Boot-to-ready times of the appliance in QEMU (TCG)")]
struct Args {
    /// Number of boots.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Host of examples/cluster.toml to boot.
    #[arg(long, default_value = "host-a")]
    host: String,
    /// Boot the kernel and initramfs extracted from the ISO directly
    /// (no BIOS/bootloader stage) instead of the ISO.
    #[arg(long)]
    kernel: bool,
    /// Give up on one boot after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Console milestones, in boot order: (column title, pattern).
fn milestones() -> Result<Vec<(&'static str, Pattern)>> {
    Ok(vec![
        ("first-daemon", Pattern::regex(r"^init: started \S+ pid=")?),
        ("ready", Pattern::regex(r"^appliance ready: host=")?),
        ("kvm-ok", Pattern::from("/dev/kvm ok")),
    ])
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn main() -> Result<()> {
    qemu_tests::host::bin_init();
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let timeout = Duration::from_secs(args.timeout);
    let marks = milestones()?;
    let mut cluster = Cluster::example("boot-bench")?;
    let mode = if args.kernel { "kernel+initrd" } else { "ISO" };
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); marks.len()];
    println!(
        "boot-bench: {} boots of {} from the {mode}, QEMU TCG -cpu max, 1 vCPU, 1 GiB",
        args.runs, args.host
    );
    print!("{:>4}", "run");
    for (title, _) in &marks {
        print!(" {title:>13}");
    }
    println!();
    for run in 1..=args.runs {
        let mut spec = cluster.host_spec(&args.host)?;
        spec.work_dir = cluster.dir().join(format!("{}-run{run}", args.host));
        if args.kernel {
            spec.boot = cluster.kernel_boot("")?;
        }
        let host = cluster.boot_spec(spec)?;
        print!("{run:>4}");
        for (i, (title, pattern)) in marks.iter().enumerate() {
            let t = host
                .time_to(pattern.clone(), timeout)
                .with_context(|| format!("run {run}: waiting for {title}"))?;
            columns[i].push(t.as_secs_f64());
            print!(" {:>12.2}s", t.as_secs_f64());
        }
        println!();
        host.kill()?;
    }
    print!("{:>4}", "med");
    for col in &columns {
        match median(col.clone()) {
            Some(m) => print!(" {m:>12.2}s"),
            None => print!(" {:>13}", "-"),
        }
    }
    println!();
    let ready = median(columns[1].clone()).unwrap_or(f64::NAN);
    println!(
        "median boot-to-ready ({mode}): {ready:.2} s over {} boots",
        args.runs
    );
    cluster.pass();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
