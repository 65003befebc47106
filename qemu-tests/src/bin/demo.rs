//! `make demo`: boots every host of a cluster config in QEMU, each with its
//! signed config disk, the shared storage file and its NICs on the FT and VM
//! hubs, streams their consoles (prefixed with the host name) and reports
//! each host reaching `appliance ready`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use qemu_tests::{Cluster, ClusterSource};

#[derive(Parser)]
#[command(about = "Boot a QEMU cluster of the appliance and show every host reaching ready")]
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
    /// Keep the cluster running until Enter is pressed.
    #[arg(long)]
    hold: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let source = ClusterSource {
        config: args.config.clone(),
        signing_key: args.key.clone(),
        host_keys: args.host_keys.clone(),
    };
    let mut cluster = Cluster::new("demo", &source)?;
    let names: Vec<String> = cluster
        .config()
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .collect();
    println!(
        "demo: cluster {:?} generation {}: booting {} hosts in QEMU (TCG); files in {}",
        cluster.config().cluster.name,
        cluster.config().cluster.generation,
        names.len(),
        cluster.dir().display()
    );
    for name in &names {
        let mut spec = cluster.host_spec(name)?;
        spec.echo = true;
        cluster.boot_spec(spec)?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut rows = Vec::new();
    for name in &names {
        let host = cluster.host(name)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = host
            .wait_for_line(format!("appliance ready: host={name} "), left)
            .with_context(|| format!("{name} did not become ready"))?;
        let kvm = host
            .wait_for("/dev/kvm ok", Duration::from_secs(30))
            .is_ok();
        rows.push((name.clone(), ready, kvm));
    }
    println!();
    println!(
        "{:<10} {:>9}  {:<6}  console line",
        "host", "ready at", "kvm"
    );
    for (name, ready, kvm) in &rows {
        println!(
            "{:<10} {:>8.1}s  {:<6}  {}",
            name,
            ready.at.as_secs_f64(),
            if *kvm { "ok" } else { "-" },
            ready.text
        );
    }
    println!("demo: all {} hosts ready", rows.len());
    for hub in [&cluster.ft, &cluster.vm] {
        let counts: Vec<String> = hub
            .all_stats()
            .into_iter()
            .map(|(port, s)| format!("{port} sent {} got {}", s.rx_frames, s.tx_frames))
            .collect();
        println!("demo: {} network frames: {}", hub.name(), counts.join(", "));
    }
    if args.hold {
        println!(
            "demo: cluster running; hub sockets in {}/ft and {}/vm; press Enter to stop",
            cluster.dir().display(),
            cluster.dir().display()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    cluster.pass();
    Ok(())
}
