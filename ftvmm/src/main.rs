//! The `ftvmm` binary: `ftvmm daemon` (started by init) and `ftvmm run` (one VM
//! in the foreground, exit status = the guest's debug-exit code).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ftvmm::live::DiskSpec;
use ftvmm::runner::{run_vm, VmSpec};
use ftvmm::RunOutcome;

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
    /// Run one VM in the foreground; console on stdout, stats on stderr.
    Run {
        /// Guest kernel (ELF, see BOOT-PROTOCOL.md); not needed with --restore.
        #[arg(long, required_unless_present = "restore")]
        kernel: Option<PathBuf>,
        /// Guest memory in MiB (at most 3072).
        #[arg(long, default_value_t = 64)]
        mem: u64,
        /// virtio-blk backing: PATH or PATH:OFFSET:LEN (bytes).
        #[arg(long)]
        disk: Option<DiskSpec>,
        /// TAP interface for virtio-net (created if missing).
        #[arg(long)]
        tap: Option<String>,
        /// Guest command line (virtio_mmio= and mac= are added).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Write a snapshot when the guest stops.
        #[arg(long)]
        snapshot_on_exit: Option<PathBuf>,
        /// Start from a snapshot instead of booting the kernel.
        #[arg(long)]
        restore: Option<PathBuf>,
        /// Forward stdin to the guest's COM1.
        #[arg(long)]
        stdin: bool,
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
        Cmd::Run {
            kernel,
            mem,
            disk,
            tap,
            cmdline,
            snapshot_on_exit,
            restore,
            stdin,
        } => {
            let spec = VmSpec {
                kernel: kernel.unwrap_or_default(),
                mem_mib: mem,
                disk,
                tap,
                cmdline,
                restore,
                snapshot_on_exit,
                stdin,
                bridge: None,
                cpu: Default::default(),
            };
            let stop_on_signal = |h: ftvmm::VmHandle, _| {
                if let Err(e) = ftvmm::signals::stop_on_sigint(h) {
                    tracing::warn!("cannot install SIGINT/SIGTERM handling: {e}");
                }
            };
            match run_vm(&spec, Box::new(std::io::stdout()), stop_on_signal) {
                Ok(report) => {
                    eprintln!("{}", report.stats.report(report.exit_index, report.secs));
                    eprintln!("ftvmm: guest stopped: {:?}", report.outcome);
                    match report.outcome {
                        RunOutcome::DebugExit(code) => ExitCode::from(code),
                        _ => ExitCode::from(125),
                    }
                }
                Err(e) => {
                    eprintln!("ftvmm: {e}");
                    ExitCode::from(126)
                }
            }
        }
    }
}
