//! `fencing --config PATH`: started by init with the verified runtime config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use config_schema::ctl_server;
use config_schema::runtime::{RuntimeConfig, RUNTIME_CONFIG_PATH};
use fencing::{device, View};

#[derive(Parser)]
#[command(name = "fencing", about = "The appliance's storage-fencing agent")]
struct Cli {
    #[arg(long, default_value = RUNTIME_CONFIG_PATH)]
    config: PathBuf,
    #[arg(long, default_value = config_schema::ctl::FENCING_SOCKET)]
    socket: PathBuf,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = RuntimeConfig::load(&cli.config)?;
    let found = device::locate(Path::new("/"), &rt.config.storage.device);
    let view = View::new(&rt, found)
        .ok_or_else(|| anyhow::anyhow!("host {} not in config", rt.host_name))?;
    tracing::info!(
        "fencing: host {} slot {} of {}; fencing region {} MiB at {} MiB; device {:?}",
        view.host,
        view.slot,
        view.slots,
        view.fencing_region.size_mib,
        view.fencing_region.offset_mib,
        view.locator
    );
    match (&view.device, view.device_problem()) {
        (Ok(d), None) => tracing::info!(
            "fencing: shared device {} found, {} bytes",
            d.path.display(),
            d.size_bytes.map_or("unknown".into(), |s| s.to_string())
        ),
        (_, Some(p)) => tracing::error!("fencing: shared device problem: {p}"),
        (Err(_), None) => {}
    }
    tracing::warn!("fencing: thin version, no Disk Paxos, leases or watchdog yet");
    let listener = ctl_server::bind(&cli.socket)?;
    tracing::info!("fencing: serving status on {}", cli.socket.display());
    ctl_server::serve(listener, move |req| {
        ctl_server::status_only("fencing", req, || view.status())
    });
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fencing: {e:#}");
            ExitCode::FAILURE
        }
    }
}
