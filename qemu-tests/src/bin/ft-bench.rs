//! `make bench`'s QEMU-host section (issue 17): FT cost where it runs.
//!
//! Boots host-a and host-b of `examples/cluster.toml` in QEMU (TCG) and, with
//! both hosts booted, measures VM `kv` served two ways:
//!
//! - **unprotected**: the VM allowed on host-a only (its affinity changed), so
//!   host-a runs it alone while host-b is booted and idle;
//! - **pair**: the example config as it is, host-a Primary, host-b Secondary.
//!
//! Affinity is read at boot (`ftctl apply` takes it only at the next boot),
//! so the two are two boots of the same two hosts, one after the other; the
//! output says so. For each: PUT and GET, one request at a time per
//! connection, with 1 and 4 connections (`--clients`), `--seconds` each:
//! ops/s, latency median and p99; ICMP echo to the guest (VM network) and to
//! both hosts (FT network). For the pair also: the Primary's per-request
//! timeline (`ft_request_segment_seconds` of `ftctl metrics`), the failover
//! pause when the Primary's QEMU is killed, and (unless `--no-survivor`) the
//! same load on the survivor running alone with its peer dead.
//!
//! A plain table on stdout, the cost model under it, JSON under the target
//! dir (`<target>/ft-bench/`) and beside it an SVG of where a request's time
//! goes (`picture.rs`: a stacked bar per configuration). Needs root, QEMU
//! and the ISO.

#[path = "ft_bench/failover.rs"]
mod failover;
#[path = "ft_bench/load.rs"]
mod load;
#[path = "ft_bench/metrics.rs"]
mod metrics;
#[path = "ft_bench/model.rs"]
mod model;
#[path = "ft_bench/picture.rs"]
mod picture;
#[path = "ft_bench/ping.rs"]
mod ping;
#[path = "ft_bench/report.rs"]
mod report;
#[path = "ft_bench/soak.rs"]
mod soak;
#[path = "ft_bench/stats.rs"]
mod stats;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use qemu_tests::kv::GUEST;
use qemu_tests::{Cluster, ClusterSource, NetnsTap};

use load::{Load, Op};
use ping::Ping;

const VM: &str = "kv";
const PRIMARY: &str = "host-a";
const SECONDARY: &str = "host-b";
/// The example config's line the unprotected run replaces.
const AFFINITY: &str = r#"affinity = { groups = ["rack-1"], hosts = ["host-c"] }"#;
const ALONE: &str = r#"affinity = { hosts = ["host-a"] }"#;
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const OPERATOR_CIDR: &str = "192.0.2.200/24";
const CLIENT_CIDR: &str = "198.51.100.200/24";

#[derive(Parser, Clone)]
#[command(
    about = "FT cost in QEMU appliance hosts: unprotected vs lockstep pair, pings, timeline, failover pause"
)]
struct Args {
    /// Cluster config (host-a, host-b, VM kv with host-a first in its affinity).
    #[arg(long, default_value = "examples/cluster.toml")]
    config: PathBuf,
    /// Config-signing private key (PKCS#8); the image must trust its public half.
    #[arg(long, default_value = "examples/dev-keys/signing.pk8")]
    key: PathBuf,
    /// Directory holding `<host>.key` for every host.
    #[arg(long, default_value = "examples/dev-keys/hosts")]
    host_keys: PathBuf,
    /// Operator key for `ftctl metrics` (its public half is added to the config).
    #[arg(long, default_value = "examples/dev-keys/operators/dev-operator")]
    operator: PathBuf,
    /// Seconds of each load phase.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Connections of the load phases (each phase once per number).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    clients: Vec<usize>,
    /// ICMP echoes per target.
    #[arg(long, default_value_t = 20)]
    pings: usize,
    /// Skip the unprotected boot (pair only).
    #[arg(long)]
    no_unprotected: bool,
    /// Skip the failover (and the survivor's load).
    #[arg(long)]
    no_failover: bool,
    /// Skip the load on the survivor after the failover.
    #[arg(long)]
    no_survivor: bool,
    /// Before the failover, hold the pair this many seconds, half idle and
    /// half under four PUT connections, counting false suspicions.
    #[arg(long, default_value_t = 0)]
    soak: u64,
    /// Where the JSON goes (default: <target>/ft-bench/ft-bench-<unix time>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds to wait for a host to be ready and the guest to listen.
    #[arg(long, default_value_t = 400)]
    boot_timeout: u64,
}

/// How VM kv runs in one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    Unprotected,
    Pair,
}

/// Everything one boot measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub mode: Mode,
    pub boot_s: f64,
    pub pings: Vec<Ping>,
    pub loads: Vec<Load>,
    pub metrics: Option<metrics::Metrics>,
    pub failover: Option<failover::Failover>,
    /// The soak before the failover (`--soak`).
    pub soak: Option<soak::Soak>,
    /// The load on the survivor alone, its peer dead.
    pub survivor: Vec<Load>,
    pub errors: Vec<String>,
}

/// The whole bench, as the JSON has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bench {
    pub seconds_per_phase: f64,
    pub clients: Vec<usize>,
    pub load_average: String,
    pub load_average_end: String,
    pub failure_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub runs: Vec<Run>,
    pub model: Vec<model::Prediction>,
}

fn main() -> Result<()> {
    qemu_tests::host::bin_init();
    let args = Args::parse();
    if args.seconds <= 0.0 || args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--seconds must be positive and --clients a list of numbers of at least 1");
    }
    let configs = tempfile::tempdir().context("temp dir for the configs")?;
    let (pair_src, alone_src) = sources(&args, configs.path())?;
    let load_start = load_average();
    let mut runs = Vec::new();
    if !args.no_unprotected {
        runs.push(measure(&args, Mode::Unprotected, &alone_src)?);
    }
    runs.push(measure(&args, Mode::Pair, &pair_src)?);
    let timing = qemu_tests::cluster::load_config(&pair_src, &[])?.timing;
    let model = model::predict(&runs);
    let bench = Bench {
        seconds_per_phase: args.seconds,
        clients: args.clients.clone(),
        load_average: load_start,
        load_average_end: load_average(),
        failure_timeout_ms: timing.failure_timeout_ms,
        heartbeat_interval_ms: timing.heartbeat_interval_ms,
        runs,
        model,
    };
    print!("{}", report::render(&bench));
    let json = match &args.json {
        Some(p) => p.clone(),
        None => default_json()?,
    };
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&bench)?)
        .with_context(|| format!("write {}", json.display()))?;
    println!("ft-bench: JSON in {}", json.display());
    if !bench.model.is_empty() {
        let svg = json.with_extension("svg");
        let title = format!(
            "Where a request's time goes: unprotected vs lockstep pair (TCG hosts, load {})",
            bench.load_average
        );
        match picture::draw(&svg, &title, &picture::bars(&bench.model)) {
            Ok(()) => println!("ft-bench: picture in {}", svg.display()),
            Err(e) => println!("ft-bench: no picture: {e}"),
        }
    }
    let failed: Vec<&String> = bench.runs.iter().flat_map(|r| &r.errors).collect();
    if !failed.is_empty() {
        bail!("{} step(s) failed (see the table)", failed.len());
    }
    Ok(())
}

/// The pair config (the example plus the operator key) and the unprotected
/// one (the same with VM kv allowed on host-a only), written into `dir`.
fn sources(args: &Args, dir: &Path) -> Result<(ClusterSource, ClusterSource)> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read {}", args.config.display()))?;
    let public = pub_path(&args.operator);
    let pk =
        std::fs::read_to_string(&public).with_context(|| format!("read {}", public.display()))?;
    let text = format!(
        "{text}\n[[operators]]\nname = \"bench-operator\"\npublic_key = \"{}\"\n",
        pk.trim()
    );
    let alone = text.replace(AFFINITY, ALONE);
    if alone == text {
        bail!(
            "{} has no line {AFFINITY:?} to restrict VM {VM} to {PRIMARY}",
            args.config.display()
        );
    }
    let mut srcs = Vec::new();
    for (name, t) in [("pair.toml", text), ("unprotected.toml", alone)] {
        let path = dir.join(name);
        std::fs::write(&path, t).with_context(|| format!("write {}", path.display()))?;
        srcs.push(ClusterSource {
            config: path,
            signing_key: args.key.clone(),
            host_keys: args.host_keys.clone(),
        });
    }
    let alone = srcs.pop().expect("two");
    Ok((srcs.pop().expect("two"), alone))
}

fn pub_path(operator: &Path) -> PathBuf {
    operator.with_extension("pub")
}

/// Boots host-a and host-b with `source`, waits for the guest, measures.
/// A failed step is recorded in the run's errors; the steps after it that
/// do not need it still run.
fn measure(args: &Args, mode: Mode, source: &ClusterSource) -> Result<Run> {
    let name = match mode {
        Mode::Unprotected => "ft-bench-unprotected",
        Mode::Pair => "ft-bench-pair",
    };
    eprintln!("ft-bench: {mode:?}: booting {PRIMARY} and {SECONDARY}");
    let mut cluster = Cluster::new(name, source)?;
    let t0 = Instant::now();
    for h in [PRIMARY, SECONDARY] {
        cluster.boot(h)?;
    }
    let boot = Duration::from_secs(args.boot_timeout);
    for h in [PRIMARY, SECONDARY] {
        cluster
            .host(h)?
            .wait_for(format!("appliance ready: host={h} "), boot)
            .with_context(|| format!("{h} not ready"))?;
    }
    if mode == Mode::Pair {
        let paired = format!("ftvmm: vm {VM}: paired with primary {PRIMARY}; generation 1");
        cluster
            .host(SECONDARY)?
            .wait_for(paired, boot)
            .context("no pair")?;
    }
    let listening = format!("[{VM}] kv: listening on {GUEST}");
    cluster
        .host(PRIMARY)?
        .wait_for(listening, boot)
        .context("the guest does not listen")?;
    let boot_s = t0.elapsed().as_secs_f64();
    eprintln!("ft-bench: {mode:?}: guest listening {boot_s:.0} s after the boot");
    let tap = cluster.vm_client("client", CLIENT_CIDR)?;
    let op_ns = format!("ftb-{}-op", std::process::id());
    let op = NetnsTap::attach(&cluster.ft, "operator", &op_ns, OPERATOR_CIDR, None)?;
    let mut run = Run {
        mode,
        boot_s,
        pings: Vec::new(),
        loads: Vec::new(),
        metrics: None,
        failover: None,
        soak: None,
        survivor: Vec::new(),
        errors: Vec::new(),
    };
    let gap = Duration::from_millis(100);
    let wait = Duration::from_secs(2);
    let targets = [
        (&tap, GUEST_IP),
        (&op, Ipv4Addr::new(192, 0, 2, 1)),
        (&op, Ipv4Addr::new(192, 0, 2, 2)),
    ];
    for (t, ip) in targets {
        note(
            &mut run.errors,
            ping::ping(t, ip, args.pings, gap, wait).map(|p| run.pings.push(p)),
        );
    }
    run.loads = loads(args, &tap, &mut run.errors, "");
    if mode == Mode::Pair {
        let addr = config_schema::remote::client::resolve("192.0.2.1")?;
        let key = args.operator.with_extension("pk8");
        note(
            &mut run.errors,
            metrics::query(&op, addr, &key).map(|t| run.metrics = Some(metrics::parse(&t, VM))),
        );
        if args.soak > 0 {
            let hosts = [PRIMARY, SECONDARY];
            let d = Duration::from_secs(args.soak);
            note(
                &mut run.errors,
                soak::run(&cluster, &hosts, &tap, d).map(|s| run.soak = Some(s)),
            );
        }
        if !args.no_failover {
            let f = failover::run(&cluster, &tap, VM, PRIMARY, SECONDARY);
            let ok = f.is_ok();
            note(&mut run.errors, f.map(|f| run.failover = Some(f)));
            if ok && !args.no_survivor {
                run.survivor = loads(args, &tap, &mut run.errors, " (survivor)");
            }
        }
    }
    drop((tap, op));
    if run.errors.is_empty() {
        cluster.pass();
    }
    Ok(run)
}

/// The load phases: PUT then GET, each with every number of clients.
fn loads(args: &Args, tap: &NetnsTap, errors: &mut Vec<String>, what: &str) -> Vec<Load> {
    let mut out = Vec::new();
    if let Err(e) = load::prefill(tap) {
        errors.push(format!("prefill{what}: {e:#}"));
        return out;
    }
    let d = Duration::from_secs_f64(args.seconds);
    let mut phase = if what.is_empty() { 0 } else { 4 };
    for op in [Op::Put, Op::Get] {
        for &c in &args.clients {
            eprintln!(
                "ft-bench: {}{what} x{c} for {:.0} s",
                op.name(),
                args.seconds
            );
            match load::run(tap, op, c, d, phase) {
                Ok(l) => out.push(l),
                Err(e) => errors.push(format!("{}{what} x{c}: {e:#}", op.name())),
            }
            phase += 1;
        }
    }
    out
}

fn note(errors: &mut Vec<String>, r: Result<()>) {
    if let Err(e) = r {
        eprintln!("ft-bench: {e:#}");
        errors.push(format!("{e:#}"));
    }
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `<target>/ft-bench/ft-bench-<unix seconds>.json`, the target dir being
/// the one this binary was built into.
fn default_json() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(2)
        .context("the binary is not in a cargo target dir")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(target.join("ft-bench").join(format!("ft-bench-{now}.json")))
}
