//! `heartbeat --config PATH`: started by init with the verified runtime config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use config_schema::ctl_server;
use config_schema::runtime::{RuntimeConfig, RUNTIME_CONFIG_PATH};
use heartbeat::View;

#[derive(Parser)]
#[command(name = "heartbeat", about = "The appliance's heartbeat daemon")]
struct Cli {
    #[arg(long, default_value = RUNTIME_CONFIG_PATH)]
    config: PathBuf,
    #[arg(long, default_value = config_schema::ctl::HEARTBEAT_SOCKET)]
    socket: PathBuf,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = RuntimeConfig::load(&cli.config)?;
    let view =
        View::new(&rt).ok_or_else(|| anyhow::anyhow!("host {} not in config", rt.host_name))?;
    tracing::info!(
        "heartbeat: host {} (id {}) on FT {}; interval {} ms, failure timeout {} ms",
        view.host,
        view.host_id,
        view.ft_addr,
        view.interval_ms,
        view.failure_timeout_ms
    );
    for p in &view.peers {
        tracing::info!("heartbeat: peer {} (id {}) at {}", p.name, p.id, p.ft_addr);
    }
    tracing::warn!("heartbeat: thin version, no heartbeat packets are sent yet");
    let listener = ctl_server::bind(&cli.socket)?;
    tracing::info!("heartbeat: serving status on {}", cli.socket.display());
    ctl_server::serve(listener, move |req| {
        ctl_server::status_only("heartbeat", req, || view.status())
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
            eprintln!("heartbeat: {e:#}");
            ExitCode::FAILURE
        }
    }
}
