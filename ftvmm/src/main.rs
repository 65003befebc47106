//! The `ftvmm` binary: `ftvmm daemon` (started by init) and `ftvmm run` (one VM
//! in the foreground).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ftvmm", about = "The fault-tolerant appliance's VMM")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the control socket and run the config's VMs (started by init).
    Daemon {
        #[arg(long, default_value = config_schema::runtime::RUNTIME_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long, default_value = config_schema::ctl::FTVMM_SOCKET)]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Daemon { config, socket } => match ftvmm::daemon::run(&config, &socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ftvmm: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
