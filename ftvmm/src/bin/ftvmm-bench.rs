//! `ftvmm-bench`: the numbers of `make bench` (issue 3), printed as one table of medians over
//! `--runs` runs: boot time of the reference guest to its first serial line, KV PUT/GET ops/s
//! and p50/p99 latency over TCP (one connection, TAP in a private network namespace), exits per
//! second (a port-I/O loop guest, and during the KV requests), and the CPU-bound workload under
//! ftvmm next to the same `ftguest_cpuwork::run` natively in this process; and (issue 4) FT on
//! vs off in the same run: CPU and KV ratios, PUT latency, log bandwidth and Secondary lag of a
//! lockstep pair over loopback (`ftvmm_bench/ft.rs`); and (issue 10) the parts of respawn's
//! stop-and-copy on this host's KVM at 64, 512 and 3072 MiB, with a pause estimate for 10 GbE
//! (`ftvmm_bench/respawn.rs`, a table of its own); and respawn's live transfer of a 256 MiB guest
//! idle or busy writing memory (`mode=dirty`): pre-copy rounds, bytes sent, the pause
//! (`ftvmm_bench/respawn_live.rs`, a table of its own); and (issue 11) checkpoint epochs without a
//! VM: bytes per epoch raw vs delta, encode and apply rates (`ftvmm_bench/checkpoint.rs`); and
//! (issue 17) the FT rows per lag-throttle controller (`--ft-throttle until-ack,fixed` runs both
//! side by side) and per batching (`--ft-batching eager,coalesced`: records and acks per PUT,
//! ratios and latency of each) and the per-request timeline of the KV runs, FT off next to FT on
//! (`ftvmm_bench/ft_timeline.rs`, a table of its own).
//! Needs root and `/dev/kvm`.

#[path = "ftvmm_bench/checkpoint.rs"]
mod checkpoint;
#[path = "ftvmm_bench/console.rs"]
mod console;
#[path = "ftvmm_bench/cpu.rs"]
mod cpu;
#[path = "ftvmm_bench/exits.rs"]
mod exits;
#[path = "ftvmm_bench/ft.rs"]
mod ft;
#[path = "ftvmm_bench/ft_rows.rs"]
mod ft_rows;
#[path = "ftvmm_bench/ft_timeline.rs"]
mod ft_timeline;
#[path = "ftvmm_bench/kv.rs"]
mod kv;
#[path = "ftvmm_bench/net.rs"]
mod net;
#[path = "ftvmm_bench/respawn.rs"]
mod respawn;
#[path = "ftvmm_bench/respawn_live.rs"]
mod respawn_live;
#[path = "ftvmm_bench/respawn_live_table.rs"]
mod respawn_live_table;
#[path = "ftvmm_bench/respawn_live_wire.rs"]
mod respawn_live_wire;
#[path = "ftvmm_bench/respawn_live_xfer.rs"]
mod respawn_live_xfer;
#[path = "ftvmm_bench/respawn_table.rs"]
mod respawn_table;
#[path = "ftvmm_bench/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use stats::{median, percentile};

#[derive(Parser)]
#[command(
    name = "ftvmm-bench",
    about = "ftvmm benchmarks (issue 3): one table of medians"
)]
struct Args {
    /// Runs of each benchmark; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// PUTs (then as many GETs) per KV run.
    #[arg(long, default_value_t = 100)]
    kv_ops: usize,
    /// Rounds of the CPU-bound workload.
    #[arg(long, default_value_t = 30_000)]
    cpu_iters: u64,
    /// Port writes of the exit-loop guest.
    #[arg(long, default_value_t = 100_000)]
    exit_loops: u32,
    /// The reference guest ELF.
    #[arg(
        long,
        default_value = "guest/target/x86_64-unknown-none/release/ftguest"
    )]
    kernel: PathBuf,
    /// Skip the KV benchmark (no root/TAP needed then).
    #[arg(long)]
    no_kv: bool,
    /// Skip the FT on vs off comparison (lockstep pair over loopback).
    #[arg(long)]
    no_ft: bool,
    /// Skip respawn's stop-and-copy parts (two VMs of up to 3 GiB each).
    #[arg(long)]
    no_respawn: bool,
    /// Skip respawn's live transfer with the guest idle or writing memory (256 MiB VMs).
    #[arg(long)]
    no_respawn_live: bool,
    /// Guest write rates (pages per ms, 0 = idle) of the live-transfer section.
    #[arg(long, value_delimiter = ',', default_values_t = respawn_live::RATES)]
    respawn_live_rates: Vec<u64>,
    /// Guest memory sizes (MiB) of the respawn section.
    #[arg(long, value_delimiter = ',', default_values_t = respawn::SIZES_MIB)]
    respawn_mib: Vec<u64>,
    /// Skip the checkpoint epoch encode/apply rates.
    #[arg(long)]
    no_checkpoint: bool,
    /// Echo the guests' console lines to stderr.
    #[arg(long)]
    verbose: bool,
    /// Lag-throttle controllers of the FT-on runs, each run side by side with FT off:
    /// `until-ack` (wait for the ack that brings the lag back) and/or `fixed` (the earlier
    /// 1 ms sleep per input call).
    #[arg(long, value_delimiter = ',', default_value = "until-ack")]
    ft_throttle: Vec<String>,
    /// How the FT-on runs cut batches and ack them, each run side by side with FT off:
    /// `coalesced` (a batch when a held output waits, at 64 KiB or after 5 ms; acks at once
    /// only for what the Primary may wait on) and/or `eager` (every record at once, every
    /// batch acked at once: before issue 17). Crossed with `--ft-throttle`.
    #[arg(long, value_delimiter = ',', default_value = "coalesced")]
    ft_batching: Vec<String>,
    /// The FT-on runs' lag limit (the config's `timing.lag_limit_ms`).
    #[arg(long, default_value_t = ft::LAG_LIMIT.as_millis() as u64)]
    lag_limit_ms: u64,
    /// Trace one in this many requests of each kind for the timeline (0: none).
    #[arg(long, default_value_t = 1)]
    timeline_every: u64,
    /// Only the FT on vs off section (and its timeline).
    #[arg(long)]
    only_ft: bool,
}

fn throttle_modes(names: &[String]) -> Result<Vec<ftvmm::lockstep::primary::ThrottleMode>> {
    use ftvmm::lockstep::primary::ThrottleMode;
    names
        .iter()
        .map(|n| match n.as_str() {
            "until-ack" => Ok(ThrottleMode::UntilAck),
            "fixed" => Ok(ThrottleMode::FixedSleep),
            other => bail!("--ft-throttle {other}: expected until-ack or fixed"),
        })
        .collect()
}

fn batchings(names: &[String]) -> Result<Vec<ftvmm::lockstep::primary::Batching>> {
    use ftvmm::lockstep::primary::Batching;
    names
        .iter()
        .map(|n| match n.as_str() {
            "eager" => Ok(Batching::Eager),
            "coalesced" => Ok(Batching::Coalesced),
            other => bail!("--ft-batching {other}: expected eager or coalesced"),
        })
        .collect()
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.runs == 0 || args.kv_ops == 0 {
        bail!("--runs and --kv-ops must be at least 1");
    }
    if !args.kernel.is_file() {
        bail!(
            "guest ELF {} missing: build it with `cd guest && cargo build --release --target x86_64-unknown-none`",
            args.kernel.display()
        );
    }
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    // Before any thread exists: every later thread shares the private namespace.
    let _tap = if args.no_kv {
        None
    } else {
        net::enter_private_netns()?;
        Some(net::TapGuard::create()?)
    };
    let tmp = tempfile::tempdir().context("cannot create a temp dir")?;
    let batchings = batchings(&args.ft_batching)?;
    let ft_opts: Vec<ft::FtOptions> = throttle_modes(&args.ft_throttle)?
        .into_iter()
        .flat_map(|mode| {
            batchings.iter().map(move |&batching| ft::FtOptions {
                lag_limit: Duration::from_millis(args.lag_limit_ms),
                mode,
                batching,
                timeline_every: args.timeline_every,
            })
        })
        .collect();
    if args.only_ft && args.no_ft {
        bail!("--only-ft and --no-ft exclude each other");
    }

    let mut cpu_runs = Vec::new();
    let mut exit_runs = Vec::new();
    let mut kv_runs = Vec::new();
    let mut ft_runs: Vec<Vec<ft::FtRun>> = ft_opts.iter().map(|_| Vec::new()).collect();
    for r in 0..args.runs {
        eprintln!("ftvmm-bench: run {}/{}", r + 1, args.runs);
        if !args.only_ft {
            cpu_runs.push(cpu::run(&args.kernel, args.cpu_iters, args.verbose)?);
            exit_runs.push(exits::run(args.exit_loops)?);
        }
        if !args.no_kv && !args.only_ft {
            kv_runs.push(kv::run(
                &args.kernel,
                tmp.path(),
                r,
                args.kv_ops,
                args.verbose,
            )?);
        }
        if !args.no_ft {
            for (opts, runs) in ft_opts.iter().zip(&mut ft_runs) {
                runs.push(ft::run(
                    &args.kernel,
                    args.cpu_iters,
                    r,
                    (!args.no_kv).then(|| (tmp.path(), args.kv_ops)),
                    args.verbose,
                    opts,
                )?);
            }
        }
    }
    if args.only_ft {
        print_ft(&args, &ft_opts, &ft_runs);
        return Ok(());
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let med = |xs: Vec<f64>| median(&xs).unwrap_or(f64::NAN);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let boot = med(cpu_runs.iter().map(|c| ms(c.boot)).collect());
    rows.push((
        "boot to first serial line".into(),
        format!("{boot:.1} ms"),
        "run_vm() call (VM create + ELF load) to `guest: boot`".into(),
    ));
    if !args.no_kv {
        for (name, lat, total) in [
            (
                "PUT",
                kv_runs.iter().map(|k| &k.put).collect::<Vec<_>>(),
                kv_runs.iter().map(|k| k.put_total).collect::<Vec<_>>(),
            ),
            (
                "GET",
                kv_runs.iter().map(|k| &k.get).collect(),
                kv_runs.iter().map(|k| k.get_total).collect(),
            ),
        ] {
            let ops = med(total
                .iter()
                .map(|t| args.kv_ops as f64 / t.as_secs_f64())
                .collect());
            let p = |q: f64| {
                med(lat
                    .iter()
                    .map(|l| percentile(l, q).map_or(f64::NAN, ms))
                    .collect())
            };
            rows.push((
                format!("KV {name} throughput"),
                format!("{ops:.1} ops/s"),
                format!("{} sequential {name}s, one TCP connection", args.kv_ops),
            ));
            rows.push((
                format!("KV {name} latency p50 / p99"),
                format!("{:.2} / {:.2} ms", p(50.0), p(99.0)),
                "request sent to reply line read".into(),
            ));
        }
    }
    let exit_rate = med(exit_runs
        .iter()
        .map(|(n, d)| *n as f64 / d.as_secs_f64())
        .collect());
    rows.push((
        "exits/s, port-I/O loop".into(),
        format!("{exit_rate:.0}"),
        format!("{} `out 0x80` + debug exit", args.exit_loops),
    ));
    if !args.no_kv {
        let kv_rate = med(kv_runs
            .iter()
            .map(|k| k.exits as f64 / k.phase.as_secs_f64())
            .collect());
        rows.push((
            "exits/s, during KV requests".into(),
            format!("{kv_rate:.0}"),
            "guest exits / wall time of the PUT+GET phase".into(),
        ));
    }
    let guest = med(cpu_runs.iter().map(|c| ms(c.guest_work)).collect());
    let native = med(cpu_runs.iter().map(|c| ms(c.native_work)).collect());
    rows.push((
        "CPU workload under ftvmm".into(),
        format!("{guest:.1} ms"),
        format!(
            "cpu_iters={}, `guest: mem=` to `cpu: checksum=` lines",
            args.cpu_iters
        ),
    ));
    rows.push((
        "CPU workload native".into(),
        format!("{native:.3} ms"),
        format!(
            "ftguest_cpuwork::run({}) in this process (median of {} calls/run), checksum {:016x} (equal)",
            args.cpu_iters,
            cpu::NATIVE_REPEATS,
            cpu_runs[0].checksum
        ),
    ));
    rows.push((
        "CPU ratio ftvmm / native".into(),
        format!("{:.1}x", guest / native),
        "medians of the same runs".into(),
    ));
    if !args.no_checkpoint {
        eprintln!("ftvmm-bench: checkpoint epochs");
        rows.extend(checkpoint::rows(&checkpoint::run()));
    }

    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    println!(
        "ftvmm-bench: medians of {} runs (kv-ops {}, cpu-iters {}, exit-loops {})",
        args.runs, args.kv_ops, args.cpu_iters, args.exit_loops
    );
    println!("{:<w0$}  {:>w1$}  how", "what", "median");
    println!("{}  {}  {}", "-".repeat(w0), "-".repeat(w1), "-".repeat(3));
    for (a, b, c) in &rows {
        println!("{a:<w0$}  {b:>w1$}  {c}");
    }
    println!(
        "note: {nproc} CPUs, load average at start {load}; this host's /dev/kvm is PVM-based and \
         emulates guest instructions, so guest CPU work is far slower than on hardware KVM"
    );
    if !args.no_ft {
        print_ft(&args, &ft_opts, &ft_runs);
    }
    if !args.no_respawn {
        let (rows, notes) = respawn::run(&args.kernel, &args.respawn_mib, args.runs)?;
        respawn_table::print(&rows, &notes, args.runs);
    }
    if !args.no_respawn_live {
        let runs = respawn_live::run(
            &args.kernel,
            &args.respawn_live_rates,
            args.runs,
            args.verbose,
        )?;
        respawn_live_table::print(&runs);
    }
    Ok(())
}

/// The FT on vs off table (one block of rows per controller) and the timeline table.
fn print_ft(args: &Args, opts: &[ft::FtOptions], runs: &[Vec<ft::FtRun>]) {
    let mut rows = Vec::new();
    for (o, r) in opts.iter().zip(runs) {
        rows.extend(ft_rows::rows(r, args.kv_ops, o));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    println!();
    println!(
        "FT on vs off: medians of {} runs (kv-ops {}, cpu-iters {})",
        args.runs, args.kv_ops, args.cpu_iters
    );
    println!("{:<w0$}  {:>w1$}  how", "what", "median");
    println!("{}  {}  {}", "-".repeat(w0), "-".repeat(w1), "-".repeat(3));
    for (a, b, c) in &rows {
        println!("{a:<w0$}  {b:>w1$}  {c}");
    }
    if args.no_kv || args.timeline_every == 0 {
        return;
    }
    let kv = |r: &ft::FtRun, on: bool| {
        r.kv.as_ref()
            .map(|k| if on { &k.on } else { &k.off }.timeline.clone())
    };
    let mut columns = vec![(
        "FT off".to_string(),
        runs.iter().flatten().filter_map(|r| kv(r, false)).collect(),
    )];
    for (o, r) in opts.iter().zip(runs) {
        columns.push((
            format!("FT on, {}", ft::mode_label(o)),
            r.iter().filter_map(|r| kv(r, true)).collect(),
        ));
    }
    ft_timeline::print(&columns, args.timeline_every);
}
