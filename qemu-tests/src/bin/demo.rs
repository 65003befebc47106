//! `make demo`: boots every host of a cluster config in QEMU (consoles
//! streamed, prefixed with the host name), reports each reaching `appliance
//! ready`, then tells the respawn story you can watch: a KV client does
//! PUT/GET on one TCP connection to VM `kv` (host-a Primary, host-b
//! Secondary); host-a is killed and the same connection goes on with host-b
//! live (the client-visible pause printed); host-b places a new Secondary on
//! host-c and copies the VM there (the time back to redundancy printed);
//! then host-b is killed too and host-c takes over, still on the same
//! connection. At the end every acknowledged PUT is read back. A cluster
//! without host-c stops after the first failover.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use qemu_tests::kv::{key, value, Kv, GUEST};
use qemu_tests::{Cluster, ClusterSource, ConsoleLine, Host, NetnsTap};
use regex::Regex;

const VM: &str = "kv";
const PRIMARY: &str = "host-a";
const SECONDARY: &str = "host-b";
/// Where the new Secondary goes after the first failover.
const THIRD: &str = "host-c";

#[derive(Parser)]
#[command(
    about = "Boot a QEMU cluster of the appliance and watch VM kv fail over, get a new Secondary, and fail over again"
)]
struct Args {
    /// Cluster config.
    #[arg(default_value = "examples/cluster.toml")]
    config: PathBuf,
    /// Config-signing private key (PKCS#8); the image must trust its public half.
    #[arg(long, default_value = "examples/dev-keys/signing.pk8")]
    key: PathBuf,
    /// Directory holding `<host>.key` for every host.
    #[arg(long, default_value = "examples/dev-keys/hosts")]
    host_keys: PathBuf,
    /// Seconds to wait for all hosts to be ready.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Seconds from killing the Primary until the Secondary must be live.
    #[arg(long, default_value_t = 120)]
    failover_timeout: u64,
    /// Seconds from a failover until the new Secondary must be in lockstep.
    #[arg(long, default_value_t = 300)]
    respawn_timeout: u64,
    /// Only boot the cluster; no KV client, no failover.
    #[arg(long)]
    no_failover: bool,
    /// Keep the cluster running until Enter is pressed.
    #[arg(long)]
    hold: bool,
}

fn main() -> Result<()> {
    qemu_tests::host::bin_init();
    let args = Args::parse();
    let source = ClusterSource {
        config: args.config.clone(),
        signing_key: args.key.clone(),
        host_keys: args.host_keys.clone(),
    };
    let mut cluster = Cluster::new("demo", &source)?;
    let cfg = cluster.config().clone();
    let (name, generation, dir) = (&cfg.cluster.name, cfg.cluster.generation, cluster.dir());
    let n = cfg.hosts.len();
    println!("demo: cluster {name:?} generation {generation}: booting {n} hosts in QEMU (TCG); files in {}", dir.display());
    for h in &cfg.hosts {
        let mut spec = cluster.host_spec(&h.name)?;
        spec.echo = true;
        cluster.boot_spec(spec)?;
    }
    let deadline = Instant::now() + secs(args.timeout);
    for name in cfg.hosts.iter().map(|h| &h.name) {
        let host = cluster.host(name)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = host
            .wait_for_line(format!("appliance ready: host={name} "), left)
            .with_context(|| format!("{name} did not become ready"))?;
        let kvm = host.wait_for("/dev/kvm ok", secs(30)).is_ok();
        let (at, kvm) = (ready.at.as_secs_f64(), if kvm { "ok" } else { "-" });
        println!("demo: {name} ready at {at:.1}s (kvm {kvm}): {}", ready.text);
    }
    println!("demo: all {n} hosts ready");
    if !args.no_failover {
        let bounds = Bounds {
            failover: secs(args.failover_timeout),
            respawn: secs(args.respawn_timeout),
        };
        failover(&cluster, bounds)?;
    }
    if args.hold {
        let dir = cluster.dir().display();
        println!("demo: cluster running (hubs in {dir}/ft, {dir}/vm); press Enter to stop");
        std::io::stdin().read_line(&mut String::new())?;
    }
    cluster.pass();
    Ok(())
}

/// What the client saw: the time of every reply, that the PUTs of keys
/// `0..acked` were acknowledged, and the first thing that went wrong.
#[derive(Default)]
struct Seen {
    replies: Vec<Instant>,
    acked: usize,
    error: Option<String>,
}

/// How long each step may take.
#[derive(Clone, Copy)]
struct Bounds {
    /// From a kill until the survivor is live.
    failover: Duration,
    /// From a go-live until the new Secondary is in lockstep.
    respawn: Duration,
}

/// Waits for the pair, runs the client, drives the story, checks the result.
fn failover(cluster: &Cluster, bounds: Bounds) -> Result<()> {
    let (a, b) = (cluster.host(PRIMARY)?, cluster.host(SECONDARY)?);
    let paired = format!("ftvmm: vm {VM}: paired with primary {PRIMARY}; generation 1");
    b.wait_for(paired, secs(120))
        .with_context(|| format!("{SECONDARY} did not pair as Secondary of VM {VM}"))?;
    let listening = format!("[{VM}] kv: listening on {GUEST}");
    a.wait_for(listening, secs(300))
        .with_context(|| format!("the guest of VM {VM} did not listen on {PRIMARY}"))?;
    println!("demo: VM {VM} is a lockstep pair ({PRIMARY} Primary, {SECONDARY} Secondary); guest listens on {GUEST}");
    let tap = cluster.vm_client("client", "198.51.100.200/24")?;
    let (stop, seen) = (AtomicBool::new(false), Mutex::new(Seen::default()));
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| {
            let r = catch_unwind(AssertUnwindSafe(|| client(&tap, &stop, &seen)));
            if let Err(e) = r.unwrap_or_else(|p| Err(panic_text(&*p))) {
                seen.lock().unwrap().error.get_or_insert(e);
            }
        });
        let driven = drive(cluster, bounds, &seen);
        if let Err(e) = &driven {
            let why = format!("stopped: {e:#}");
            seen.lock().unwrap().error.get_or_insert(why);
        }
        stop.store(true, Ordering::SeqCst);
        driven
    })?;
    let error = seen.lock().unwrap().error.take();
    error.map_or(Ok(()), |e| Err(anyhow!("KV client: {e}")))
}

/// Lets the client make progress, kills the Primary, waits for the
/// Secondary to go live and get a new Secondary on host-c, then kills the
/// new Primary and waits for host-c to go live.
fn drive(cluster: &Cluster, bounds: Bounds, seen: &Mutex<Seen>) -> Result<()> {
    wait_replies(seen, 100, secs(120)).context("before the kill")?;
    let kill_at = kill_primary(cluster, seen, PRIMARY, SECONDARY, 2, bounds.failover)?;
    if cluster.host(THIRD).is_err() {
        println!("demo: no {THIRD} in this cluster: {SECONDARY} runs VM {VM} unprotected");
        return Ok(());
    }
    respawn(cluster.host(SECONDARY)?, THIRD, kill_at, bounds.respawn)?;
    let before = seen.lock().unwrap().replies.len();
    wait_replies(seen, before + 40, bounds.failover).context("after the respawn")?;
    kill_primary(cluster, seen, SECONDARY, THIRD, 3, bounds.failover)?;
    Ok(())
}

/// Kills `victim` (the Primary), waits for `survivor` to go live in
/// `generation` and the client to go on; prints the pause. Returns when it killed.
fn kill_primary(
    cluster: &Cluster,
    seen: &Mutex<Seen>,
    victim: &str,
    survivor: &str,
    generation: u64,
    bound: Duration,
) -> Result<Instant> {
    let (v, s) = (cluster.host(victim)?, cluster.host(survivor)?);
    let line = "=".repeat(60);
    println!("\n{line}\ndemo: killing {victim} (the Primary) now\n{line}\n");
    let before = seen.lock().unwrap().replies.len();
    let kill_at = Instant::now();
    v.kill().with_context(|| format!("kill {victim}"))?;
    let won = format!("ftvmm: vm {VM}: won generation {generation}; live as primary");
    let live = s
        .wait_for_line(won, bound)
        .with_context(|| format!("{survivor} did not go live within {bound:?} of the kill"))?;
    let ms = since(s, &live, kill_at).as_millis();
    let text = live.text;
    println!("\ndemo: {survivor} went live {ms} ms after the kill: {text}\n");
    wait_replies(seen, before + 40, bound).with_context(|| format!("after {victim}'s kill"))?;
    println!("demo: the client goes on over the same connection, now served by {survivor}");
    let pause = longest_gap(&seen.lock().unwrap().replies, kill_at).as_millis();
    let timeout = cluster.config().timing.failure_timeout_ms;
    println!("demo: client-visible pause {pause} ms (longest gap between replies after the kill); configured failure timeout {timeout} ms");
    Ok(kill_at)
}

/// Waits for `primary` to place a new Secondary on `target` and copy the VM
/// there; prints the time from the kill at `kill_at` back to redundancy.
fn respawn(primary: &Host, target: &str, kill_at: Instant, bound: Duration) -> Result<()> {
    let p = primary.name();
    // Placement is retried on every membership change: an UNPROTECTED line
    // on the way is not the end.
    let placed = format!("ftvmm: vm {VM}: secondary -> {target}");
    let placed = primary.wait_for_line(placed, bound).with_context(|| {
        format!("{p} did not place a new Secondary on {target} within {bound:?}")
    })?;
    println!("demo: {p} places a new Secondary: {}", placed.text);
    let done = format!("ftvmm: vm {VM}: protected: secondary {target} ");
    let done = primary
        .wait_for_line(done, bound)
        .with_context(|| format!("{target} was not in lockstep within {bound:?}"))?;
    let ms = since(primary, &done, kill_at).as_millis();
    let number = |what: &str| -> String {
        Regex::new(&format!(r"{what} (\d+) ms"))
            .ok()
            .and_then(|re| re.captures(&done.text).map(|c| c[1].to_string()))
            .unwrap_or_else(|| "?".into())
    };
    let (pause, alone) = (number("pause"), number("unprotected for"));
    println!("\ndemo: redundant again {ms} ms after the kill: {target} is {p}'s Secondary (guest paused {pause} ms for the last copy; unprotected for {alone} ms)\n  {}\n", done.text);
    Ok(())
}

/// Time from `from` to a console line of `host`.
fn since(host: &Host, line: &ConsoleLine, from: Instant) -> Duration {
    (host.spawned_at() + line.at).saturating_duration_since(from)
}

/// Waits until the client has `n` replies; fails on a client error or timeout.
fn wait_replies(seen: &Mutex<Seen>, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = seen.lock().unwrap();
        if let Some(e) = &s.error {
            bail!("KV client: {e}");
        }
        if s.replies.len() >= n {
            return Ok(());
        }
        let got = s.replies.len();
        drop(s);
        if Instant::now() >= deadline {
            bail!("KV client has {got} of {n} replies after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest gap between replies from `from` on (counting from the last reply before it).
fn longest_gap(replies: &[Instant], from: Instant) -> Duration {
    let (mut prev, mut gap) = (from, Duration::ZERO);
    for &t in replies {
        if t > from {
            gap = gap.max(t - prev);
        }
        prev = t;
    }
    gap
}

/// The KV client: PUT key i, then GET key i/2, one request at a time, until
/// `stop`, a line per 20 ops; then GETs every acknowledged key on the same connection.
fn client(tap: &NetnsTap, stop: &AtomicBool, seen: &Mutex<Seen>) -> Result<(), String> {
    let mut kv = Kv::connect(tap);
    println!("client: connected to {GUEST}; PUT key i, GET key i/2, one at a time");
    let (mut i, mut last) = (0, Instant::now());
    while !stop.load(Ordering::SeqCst) {
        let (k, v) = (key(i / 2), value(i / 2));
        let get = (format!("GET {k}"), format!("VALUE {v}"));
        for (request, want) in [(format!("PUT {} {}", key(i), value(i)), "OK".into()), get] {
            let reply = kv.one(&request);
            let now = Instant::now();
            let gap = now - std::mem::replace(&mut last, now);
            if reply != want {
                return Err(format!("{request:?} answered {reply:?}, expected {want:?}"));
            }
            let mut s = seen.lock().unwrap();
            s.replies.push(now);
            s.acked = i + 1;
            let ops = s.replies.len();
            let ms = gap.as_millis();
            if ms > 500 {
                println!("client: reply {ops} came after a {ms} ms pause");
            }
            if ops.is_multiple_of(20) {
                println!("client: {ops} ops done, {} PUTs acknowledged", s.acked);
            }
        }
        i += 1;
    }
    if seen.lock().unwrap().error.is_some() {
        return Ok(()); // the demo failed already; no point checking
    }
    let acked = seen.lock().unwrap().acked;
    for i in 0..acked {
        let got = kv.one(&format!("GET {}", key(i)));
        if got != format!("VALUE {}", value(i)) {
            return Err(format!("PUT {} acknowledged, then lost: {got:?}", key(i)));
        }
    }
    println!("demo: all {acked} acknowledged PUTs readable at the end (same connection)");
    Ok(())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
