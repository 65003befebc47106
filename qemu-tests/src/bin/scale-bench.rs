//! `make bench`'s scaling section (issue 17): N protected VMs on the three
//! hosts of `examples/cluster.toml` (1, 2, 4 and 8 by default), the pairs
//! rotating over (host-a, host-b), (host-b, host-c), (host-a, host-c) (see
//! [`vm`]), each with its own disk region, MAC and address. For each N, one boot of the
//! three hosts:
//!
//! - **idle**: every VM paired and serving nobody for `--idle-seconds`: each
//!   host's CPU and each VM's log bandwidth then — what a protected VM costs
//!   its two hosts before it does any work (its timer ticks, recorded,
//!   shipped, acknowledged and replayed), the fixed cost that grows with N;
//! - **load**: every VM under one PUT connection at once for `--seconds`:
//!   per-VM ops/s, each VM's log bandwidth (the Primary's
//!   `ft_log_bytes_total` over the phase), each host's CPU (its QEMU
//!   process's CPU time over the phase, in cores) and memory (QEMU's resident
//!   set: guest RAM the host touched);
//! - **kill**: the host running the most Primaries is killed (SIGKILL) under
//!   a PUT/GET client per VM; every VM must answer again (its pause is the
//!   longest gap between its replies), and every acknowledged PUT is read back
//!   on a fresh connection — a missing or different value is a lost write.
//!
//! A table on stdout and JSON under the target dir. Needs root, QEMU and the
//! ISO.

#[path = "ft_bench/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "ft_bench/metrics.rs"]
#[allow(dead_code)]
mod metrics;
#[path = "ft_bench/stats.rs"]
#[allow(dead_code)]
mod stats;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use qemu_tests::kv::Kv;
use qemu_tests::{Cluster, ClusterSource, NetnsTap};

use load::guarded;

const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];
/// Region size per VM (the shared device of the example has 256 MiB, 16 of
/// them for fencing).
const REGION_MIB: u64 = 24;
const MAX_VMS: usize = 9;
/// Each QEMU host's memory: up to six members of 64 MiB VMs, their VMM
/// buffers and the appliance, which runs from RAM.
const HOST_MEMORY_MIB: u32 = 2048;
const OPERATOR_CIDR: &str = "192.0.2.200/24";
const CLIENT_CIDR: &str = "198.51.100.200/24";

#[derive(Parser)]
#[command(
    about = "FT with N protected VMs on three QEMU hosts: throughput, log bandwidth, CPU and memory per host, a host kill"
)]
struct Args {
    /// Base cluster config (hosts, timing, storage; its VMs are replaced).
    #[arg(long, default_value = "examples/cluster.toml")]
    config: PathBuf,
    #[arg(long, default_value = "examples/dev-keys/signing.pk8")]
    key: PathBuf,
    #[arg(long, default_value = "examples/dev-keys/hosts")]
    host_keys: PathBuf,
    /// Operator key for `ftctl metrics` (its public half is added to the config).
    #[arg(long, default_value = "examples/dev-keys/operators/dev-operator")]
    operator: PathBuf,
    /// Numbers of VMs, one boot each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    vms: Vec<usize>,
    /// Seconds of the load phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of the idle phase before it (0: none).
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// Skip the host kill.
    #[arg(long)]
    no_kill: bool,
    /// Seconds to wait for hosts, pairs and guests.
    #[arg(long, default_value_t = 600)]
    boot_timeout: u64,
    /// Where the JSON goes (default: <target>/scale-bench/scale-bench-<unix time>.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One VM of a run.
#[derive(Debug, Clone, serde::Serialize)]
struct VmRow {
    name: String,
    primary: String,
    /// `-` while the Primary runs alone.
    secondary: String,
    /// At the load; above 1, the VM failed over before it (a spurious failover).
    generation: u64,
    puts: usize,
    ops_per_s: f64,
    log_bytes_per_s: Option<f64>,
    /// The log's bandwidth over the idle phase.
    idle_log_bytes_per_s: Option<f64>,
    /// After the kill: the longest gap between the VM's replies.
    pause_ms: Option<u64>,
    acked_puts: Option<usize>,
    lost_puts: Option<usize>,
}

/// One host of a run.
#[derive(Debug, Clone, serde::Serialize)]
struct HostRow {
    name: String,
    primaries: usize,
    secondaries: usize,
    /// QEMU's CPU time over the load phase per second of it (1.0 = one core).
    cpu_cores: f64,
    /// The same over the idle phase.
    idle_cpu_cores: Option<f64>,
    rss_mib: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    vms: usize,
    seconds: f64,
    idle_seconds: f64,
    rows: Vec<VmRow>,
    hosts: Vec<HostRow>,
    victim: Option<String>,
    errors: Vec<String>,
}

fn main() -> Result<()> {
    qemu_tests::host::bin_init();
    let args = Args::parse();
    if args.vms.iter().any(|&n| n == 0 || n > MAX_VMS)
        || args.seconds <= 0.0
        || args.idle_seconds < 0.0
    {
        bail!(
            "--vms takes numbers from 1 to {MAX_VMS}, --seconds a positive number, \
             --idle-seconds zero or more"
        );
    }
    let base = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read {}", args.config.display()))?;
    let operator_pub = std::fs::read_to_string(args.operator.with_extension("pub"))
        .context("read the operator's public key")?;
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for &n in &args.vms {
        let path = dir.path().join(format!("scale-{n}.toml"));
        std::fs::write(&path, config(&base, n, operator_pub.trim())?)?;
        let src = ClusterSource {
            config: path,
            signing_key: args.key.clone(),
            host_keys: args.host_keys.clone(),
        };
        let run = measure(&args, n, &src)?;
        print!("{}", render(&run));
        runs.push(run);
    }
    let json = match &args.json {
        Some(p) => p.clone(),
        None => default_json()?,
    };
    if let Some(d) = json.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&runs)?)?;
    println!("scale-bench: JSON in {}", json.display());
    let failed: usize = runs.iter().map(|r| r.errors.len()).sum();
    if failed > 0 {
        bail!("{failed} step(s) failed (see the tables)");
    }
    Ok(())
}

/// VM `i`'s name, Primary and Secondary hosts. Its affinity allows exactly
/// these two, and placement puts the Primary on the first of them in the
/// config's `hosts` order (`ftvmm/src/lockstep/placement/choose.rs`; the
/// order of an affinity list is no preference), so the pairs rotate over
/// (a, b), (b, c), (a, c): host-c is never a Primary while host-a or host-b
/// is allowed.
fn vm(i: usize) -> (String, &'static str, &'static str) {
    let (p, s) = [(0, 1), (1, 2), (0, 2)][i % 3];
    (format!("kv{i}"), HOSTS[p], HOSTS[s])
}

fn vm_addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, 10 + i as u8), 7000))
}

/// The base config with its regions and VMs replaced by `n` VMs and the
/// operator added.
fn config(base: &str, n: usize, operator_pub: &str) -> Result<String> {
    let cut = |from: &str| {
        base.find(from)
            .with_context(|| format!("the base config has no {from:?}"))
    };
    let (regions, groups, vms) = (
        cut("[[storage.regions]]")?,
        cut("[[host_groups]]")?,
        cut("[[vms]]")?,
    );
    if !(regions < groups && groups < vms) {
        bail!("the base config must have its regions, then its host groups, then its VMs");
    }
    let mut t = base[..regions].to_string();
    for i in 0..n {
        t += &format!(
            "[[storage.regions]]\nname = \"kv{i}-disk\"\noffset_mib = {}\nsize_mib = {REGION_MIB}\n\n",
            16 + REGION_MIB * i as u64
        );
    }
    t += &base[groups..vms];
    t += &format!("[[operators]]\nname = \"bench-operator\"\npublic_key = \"{operator_pub}\"\n\n");
    for i in 0..n {
        let (name, p, s) = vm(i);
        t += &format!(
            "[[vms]]\nname = \"{name}\"\nmemory_mib = 64\nimage = \"kv-guest\"\nmode = \"kv\"\n\
             disk_region = \"{name}-disk\"\nmac = \"52:54:00:12:34:{:02x}\"\nip = \"198.51.100.{}/24\"\n\
             affinity = {{ hosts = [\"{p}\", \"{s}\"] }}\n\n",
            0x56 + i,
            10 + i
        );
    }
    Ok(t)
}

fn measure(args: &Args, n: usize, src: &ClusterSource) -> Result<Run> {
    eprintln!("scale-bench: {n} VM(s): booting {}", HOSTS.join(", "));
    let mut cluster = Cluster::new(&format!("scale-bench-{n}"), src)?;
    for h in HOSTS {
        let mut spec = cluster.host_spec(h)?;
        spec.memory_mib = HOST_MEMORY_MIB;
        cluster.boot_spec(spec)?;
    }
    let t = Duration::from_secs(args.boot_timeout);
    for h in HOSTS {
        cluster
            .host(h)?
            .wait_for(format!("appliance ready: host={h} "), t)
            .with_context(|| format!("{h} not ready"))?;
    }
    // Any host: a boot storm on loaded TCG hosts can move a Primary before
    // the load starts (a spurious failover, reported as the generation).
    for i in 0..n {
        let name = vm(i).0;
        wait_any(
            &cluster,
            &format!("ftvmm: vm {name}: paired with primary "),
            t,
        )
        .with_context(|| format!("{name} not paired"))?;
        wait_any(&cluster, &format!("[{name}] kv: listening on"), t)
            .with_context(|| format!("{name}'s guest does not listen"))?;
    }
    let tap = cluster.vm_client("client", CLIENT_CIDR)?;
    let op = NetnsTap::attach(
        &cluster.ft,
        "operator",
        &format!("fts-{}-op", std::process::id()),
        OPERATOR_CIDR,
        None,
    )?;
    let mut run = Run {
        vms: n,
        seconds: args.seconds,
        idle_seconds: args.idle_seconds,
        rows: Vec::new(),
        hosts: Vec::new(),
        victim: None,
        errors: Vec::new(),
    };
    let key = args.operator.with_extension("pk8");
    let idle = idle(args, &cluster, &op, &key, n, &mut run.errors)?;
    let window = Window::open(&cluster, &op, &key, n)?;
    let puts = put_load(&tap, n, Duration::from_secs_f64(args.seconds));
    let load = window.close(&cluster, &op, &key, n)?;
    let wall = load.wall;
    for (i, put) in puts.iter().enumerate() {
        let name = vm(i).0;
        let (p, s, generation) = roles(&cluster, &name)?;
        let (count, err) = match put {
            Ok(c) => (*c, None),
            Err(e) => (0, Some(format!("{name}: load: {e:#}"))),
        };
        run.errors.extend(err);
        let bw = load.log.as_ref().ok().and_then(|l| l.get(&name).copied());
        let idle_bw = idle
            .as_ref()
            .and_then(|d| d.log.as_ref().ok()?.get(&name).copied());
        run.rows.push(VmRow {
            name,
            primary: p,
            secondary: s,
            generation,
            puts: count,
            ops_per_s: count as f64 / wall,
            log_bytes_per_s: bw,
            idle_log_bytes_per_s: idle_bw,
            pause_ms: None,
            acked_puts: None,
            lost_puts: None,
        });
    }
    if let Err(e) = &load.log {
        run.errors.push(format!("metrics: {e:#}"));
    }
    for (k, h) in HOSTS.iter().enumerate() {
        run.hosts.push(HostRow {
            name: h.to_string(),
            primaries: run.rows.iter().filter(|r| r.primary == *h).count(),
            secondaries: run.rows.iter().filter(|r| r.secondary == *h).count(),
            cpu_cores: load.cpu_cores[k],
            idle_cpu_cores: idle.as_ref().map(|d| d.cpu_cores[k]),
            rss_mib: rss_mib(cluster.host(h)?.pid()).unwrap_or(f64::NAN),
        });
    }
    if !args.no_kill {
        if let Err(e) = kill(&cluster, &tap, n, &mut run) {
            run.errors.push(format!("kill: {e:#}"));
        }
    }
    drop((tap, op));
    if run.errors.is_empty() {
        cluster.pass();
    }
    Ok(run)
}

/// A phase's measuring window: each host's QEMU CPU time and each VM's log
/// bytes at its start, read again at its end.
struct Window {
    log: Result<BTreeMap<String, f64>>,
    cpu: Vec<f64>,
    t0: Instant,
}

/// What a [`Window`] saw, per second of it.
struct Rates {
    wall: f64,
    /// Per host, in [`HOSTS`] order (1.0 = one core).
    cpu_cores: Vec<f64>,
    /// Log bytes per second per VM, or why the metrics query failed.
    log: Result<BTreeMap<String, f64>>,
}

impl Window {
    fn open(cluster: &Cluster, op: &NetnsTap, key: &Path, n: usize) -> Result<Self> {
        let log = log_bytes(op, key, n);
        let cpu = cpu_seconds(cluster)?;
        Ok(Window {
            log,
            cpu,
            t0: Instant::now(),
        })
    }

    fn close(self, cluster: &Cluster, op: &NetnsTap, key: &Path, n: usize) -> Result<Rates> {
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(cluster)?;
        let after = log_bytes(op, key, n);
        let log = self.log.and_then(|b| {
            Ok(after?
                .iter()
                .filter_map(|(k, a)| Some((k.clone(), (a - b.get(k)?) / wall)))
                .collect())
        });
        Ok(Rates {
            wall,
            cpu_cores: self
                .cpu
                .iter()
                .zip(&cpu)
                .map(|(a, b)| (b - a) / wall)
                .collect(),
            log,
        })
    }
}

/// Every VM paired and serving nobody for `--idle-seconds` (`None` when 0).
/// A metrics query that fails is an error of the run, not of the bench.
fn idle(
    args: &Args,
    cluster: &Cluster,
    op: &NetnsTap,
    key: &Path,
    n: usize,
    errors: &mut Vec<String>,
) -> Result<Option<Rates>> {
    if args.idle_seconds <= 0.0 {
        return Ok(None);
    }
    eprintln!(
        "scale-bench: {n} VM(s): idle for {:.0} s",
        args.idle_seconds
    );
    let window = Window::open(cluster, op, key, n)?;
    std::thread::sleep(Duration::from_secs_f64(args.idle_seconds));
    let rates = window.close(cluster, op, key, n)?;
    if let Err(e) = &rates.log {
        errors.push(format!("idle metrics: {e:#}"));
    }
    Ok(Some(rates))
}

/// Waits until some host's console has a line containing `pattern`.
fn wait_any(cluster: &Cluster, pattern: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for h in HOSTS {
            if cluster.host(h)?.console().count(pattern) > 0 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("no host said {pattern:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// VM `name`'s Primary now (the host that won its highest generation), its
/// Secondary in that generation (`-` if none paired) and the generation.
fn roles(cluster: &Cluster, name: &str) -> Result<(String, String, u64)> {
    let won = regex::Regex::new(&format!(r"ftvmm: vm {name}: won generation (\d+)"))?;
    let paired = regex::Regex::new(&format!(
        r"ftvmm: vm {name}: paired with secondary (\S+); generation (\d+)"
    ))?;
    let mut best: Option<(u64, String)> = None;
    let mut secondaries = Vec::new();
    for h in HOSTS {
        for l in cluster.host(h)?.console().lines() {
            if let Some(c) = won.captures(&l.text) {
                let g: u64 = c[1].parse()?;
                if best.as_ref().is_none_or(|(b, _)| g > *b) {
                    best = Some((g, h.to_string()));
                }
            }
            if let Some(c) = paired.captures(&l.text) {
                secondaries.push((h.to_string(), c[1].to_string(), c[2].parse::<u64>()?));
            }
        }
    }
    let (g, p) = best.with_context(|| format!("no host won a generation of {name}"))?;
    let s = secondaries
        .into_iter()
        .rev()
        .find(|(h, _, sg)| *h == p && *sg == g)
        .map_or("-".to_string(), |(_, s, _)| s);
    Ok((p, s, g))
}

/// One PUT connection per VM for `d`; PUTs answered per VM.
fn put_load(tap: &NetnsTap, n: usize, d: Duration) -> Vec<Result<usize>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    guarded(|| {
                        let mut kv = Kv::connect_to(tap, vm_addr(i));
                        let deadline = Instant::now() + d;
                        let mut k = 0;
                        while Instant::now() < deadline {
                            let r = kv.one(&format!("PUT s{i}-{k} v{k}"));
                            if r != "OK" {
                                bail!("PUT answered {r:?}");
                            }
                            k += 1;
                        }
                        Ok(k)
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("load thread panicked")))
            .collect()
    })
}

/// `ft_log_bytes_total` per VM, summed over the hosts (only a Primary
/// reports its log).
fn log_bytes(op: &NetnsTap, key: &Path, n: usize) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (k, _) in HOSTS.iter().enumerate() {
        let addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1 + k as u8), 7401));
        let text = metrics::query(op, addr, key)?;
        for i in 0..n {
            let name = vm(i).0;
            let m = metrics::parse(&text, &name);
            if let Some(v) = m.counters.get("ft_log_bytes_total") {
                *out.entry(name).or_insert(0.0) += v;
            }
        }
    }
    Ok(out)
}

/// CPU seconds (user + system) of each host's QEMU, in [`HOSTS`] order.
fn cpu_seconds(cluster: &Cluster) -> Result<Vec<f64>> {
    // SAFETY: sysconf reads a constant of the C library; no memory is shared.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    HOSTS
        .iter()
        .map(|h| {
            let pid = cluster.host(h)?.pid();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // Fields after the command name (which may hold spaces).
            let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, s): (f64, f64) = (f[11].parse()?, f[12].parse()?);
            Ok((u + s) / hz)
        })
        .collect()
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[derive(Default)]
struct Seen {
    replies: Vec<Instant>,
    acked: Vec<usize>,
    error: Option<String>,
}

/// Kills the host with the most Primaries under a PUT/GET client per VM.
fn kill(cluster: &Cluster, tap: &NetnsTap, n: usize, run: &mut Run) -> Result<()> {
    let victim = HOSTS
        .iter()
        .max_by_key(|h| {
            (
                run.rows.iter().filter(|r| r.primary == **h).count(),
                std::cmp::Reverse(**h),
            )
        })
        .copied()
        .expect("three hosts");
    run.victim = Some(victim.into());
    let stop = AtomicBool::new(false);
    let seen: Vec<Mutex<Seen>> = (0..n).map(|_| Mutex::new(Seen::default())).collect();
    std::thread::scope(|sc| -> Result<()> {
        for (i, s) in seen.iter().enumerate() {
            let stop = &stop;
            sc.spawn(move || {
                let r = guarded(|| {
                    let mut kv = Kv::connect_to(tap, vm_addr(i));
                    let mut k = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let r = kv.one(&format!("PUT f{i}-{k} v{k}"));
                        if r != "OK" {
                            bail!("PUT answered {r:?}");
                        }
                        {
                            let mut s = s.lock().unwrap();
                            s.replies.push(Instant::now());
                            s.acked.push(k);
                        }
                        let r = kv.one(&format!("GET f{i}-{k}"));
                        if r != format!("VALUE v{k}") {
                            bail!("GET f{i}-{k} answered {r:?}");
                        }
                        s.lock().unwrap().replies.push(Instant::now());
                        k += 1;
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    s.lock().unwrap().error.get_or_insert(format!("{e:#}"));
                }
            });
        }
        let driven = (|| -> Result<()> {
            wait_all(&seen, |_| 10, Duration::from_secs(120)).context("before the kill")?;
            let before: Vec<usize> = seen
                .iter()
                .map(|s| s.lock().unwrap().replies.len())
                .collect();
            let kill_at = Instant::now();
            cluster.host(victim)?.kill()?;
            wait_all(&seen, |i| before[i] + 20, Duration::from_secs(180))
                .context("after the kill")?;
            for (i, s) in seen.iter().enumerate() {
                let s = s.lock().unwrap();
                let mut last = kill_at;
                let mut gap = Duration::ZERO;
                for t in s.replies.iter().filter(|t| **t >= kill_at) {
                    gap = gap.max(*t - last);
                    last = *t;
                }
                run.rows[i].pause_ms = Some(gap.as_millis() as u64);
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        driven
    })?;
    // Every acknowledged PUT, read back on a fresh connection.
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        if let Some(e) = &s.error {
            run.errors.push(format!("{}: {e}", vm(i).0));
        }
        let acked = s.acked.clone();
        let lost = guarded(|| {
            let mut kv = Kv::connect_to(tap, vm_addr(i));
            Ok(acked
                .iter()
                .filter(|k| kv.one(&format!("GET f{i}-{k}")) != format!("VALUE v{k}"))
                .count())
        })?;
        run.rows[i].acked_puts = Some(acked.len());
        run.rows[i].lost_puts = Some(lost);
        if lost > 0 {
            run.errors
                .push(format!("{}: {lost} acknowledged PUT(s) lost", vm(i).0));
        }
    }
    Ok(())
}

/// Waits until VM `i` has `want(i)` replies, for every VM.
fn wait_all(seen: &[Mutex<Seen>], want: impl Fn(usize) -> usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut short = Vec::new();
        for (i, s) in seen.iter().enumerate() {
            let s = s.lock().unwrap();
            if let Some(e) = &s.error {
                bail!("{}: {e}", vm(i).0);
            }
            if s.replies.len() < want(i) {
                short.push(format!("{} {}/{}", vm(i).0, s.replies.len(), want(i)));
            }
        }
        if short.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("replies after {timeout:?}: {}", short.join(", "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn render(r: &Run) -> String {
    use std::fmt::Write;
    let mut w = String::new();
    let _ = writeln!(
        w,
        "\nSCALE: {} protected VM(s) on host-a, host-b, host-c; one PUT connection per VM, {:.0} s",
        r.vms, r.seconds
    );
    let _ = writeln!(
        w,
        "  {:<5} {:<7} {:<9} {:>3} {:>8} {:>12} {:>14} {:>9} {:>11}",
        "vm",
        "primary",
        "secondary",
        "gen",
        "PUT/s",
        "log KiB/s",
        "idle log KiB/s",
        "pause ms",
        "lost/acked"
    );
    for v in &r.rows {
        let opt = |x: Option<u64>| x.map_or("-".into(), |x| x.to_string());
        let kib = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.1}", b / 1024.0));
        let _ = writeln!(
            w,
            "  {:<5} {:<7} {:<9} {:>3} {:>8.1} {:>12} {:>14} {:>9} {:>11}",
            v.name,
            v.primary,
            v.secondary,
            v.generation,
            v.ops_per_s,
            kib(v.log_bytes_per_s),
            kib(v.idle_log_bytes_per_s),
            opt(v.pause_ms),
            match (v.lost_puts, v.acked_puts) {
                (Some(l), Some(a)) => format!("{l}/{a}"),
                _ => "-".into(),
            }
        );
    }
    let total: f64 = r.rows.iter().map(|v| v.ops_per_s).sum();
    let _ = writeln!(
        w,
        "  all VMs: {total:.1} PUT/s (gen > 1: the VM failed over before the load)"
    );
    let _ = writeln!(
        w,
        "  {:<7} {:>9} {:>11} {:>10} {:>15} {:>9}",
        "host", "primaries", "secondaries", "CPU cores", "idle CPU cores", "RSS MiB"
    );
    for h in &r.hosts {
        let _ = writeln!(
            w,
            "  {:<7} {:>9} {:>11} {:>10.2} {:>15} {:>9.0}",
            h.name,
            h.primaries,
            h.secondaries,
            h.cpu_cores,
            h.idle_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            h.rss_mib
        );
    }
    let idle: Option<f64> = r.hosts.iter().map(|h| h.idle_cpu_cores).sum();
    if let Some(c) = idle {
        let _ = writeln!(
            w,
            "  idle {:.0} s: {c:.2} cores for the three hosts, {:.3} per VM (the appliance's own \
             idle work included: the per-VM cost is the growth with N)",
            r.idle_seconds,
            c / r.vms as f64
        );
    }
    if let Some(v) = &r.victim {
        let _ = writeln!(w, "  killed: {v} (SIGKILL) under a PUT/GET client per VM; pause = longest gap between a VM's replies from the kill on");
    }
    for e in &r.errors {
        let _ = writeln!(w, "FAILED: {e}");
    }
    w
}

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
    Ok(target
        .join("scale-bench")
        .join(format!("scale-bench-{now}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configs_are_valid_and_spread_the_primaries() {
        let base = include_str!("../../../examples/cluster.toml");
        for n in 1..=MAX_VMS {
            let t = config(base, n, &"ab".repeat(32)).unwrap();
            let c = config_schema::parse(&t)
                .unwrap_or_else(|e| panic!("{n} VMs: {e}\n{t}"))
                .config;
            assert_eq!(c.vms.len(), n);
            for (i, v) in c.vms.iter().enumerate() {
                assert_eq!(v.name, vm(i).0);
            }
        }
        let pairs: Vec<(&str, &str)> = (0..4).map(|i| (vm(i).1, vm(i).2)).collect();
        assert_eq!(
            pairs,
            [
                ("host-a", "host-b"),
                ("host-b", "host-c"),
                ("host-a", "host-c"),
                ("host-a", "host-b")
            ]
        );
    }
}
