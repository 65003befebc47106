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
    /// Run a stock Linux kernel as a checkpoint-mode VM (no replication yet):
    /// bzImage + initrd, 1-4 vCPUs, in-kernel irqchip; console on stdout.
    /// Exit status: 0 when the guest reset itself (reboot=k), powered off
    /// (ACPI S5) or triple-faulted (reboot=t), 2 when stopped by a signal,
    /// 125 on a VM error, 126 when the VM could not be built.
    Linux {
        /// Guest kernel (bzImage).
        #[arg(long)]
        kernel: PathBuf,
        /// Initial ramdisk.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line (virtio_mmio.device= entries are added).
        #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1")]
        cmdline: String,
        /// vCPUs (1 to 4).
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Guest memory in MiB (64 to 3072).
        #[arg(long, default_value_t = 256)]
        mem_mib: u64,
        /// virtio-blk backing: PATH or PATH:OFFSET:LEN (bytes).
        #[arg(long)]
        disk: Option<DiskSpec>,
        /// TAP interface for virtio-net (created if missing).
        #[arg(long)]
        tap: Option<String>,
        /// Checkpoint the VM to a Secondary inside this process (tests:
        /// epochs and take-over on one host; no channel, no fencing).
        #[arg(long)]
        local_secondary: bool,
        /// Epoch length with --local-secondary or --checkpoint-primary.
        #[arg(long, default_value_t = 20)]
        epoch_ms: u64,
        /// With --local-secondary or --checkpoint-secondary: when this file
        /// appears, abandon the Primary (as a dead host) and resume from the
        /// Secondary's last complete epoch.
        #[arg(long)]
        take_over_on: Option<PathBuf>,
        /// Checkpoint the VM to a Secondary on another host over the
        /// authenticated channel (connects to --peer; needs --key and
        /// --peer-key). Exit status 3 when the link is lost (the Primary
        /// then stops: this mode has no fencing).
        #[arg(long, conflicts_with_all = ["local_secondary", "checkpoint_secondary"], requires_all = ["peer", "key", "peer_key"])]
        checkpoint_primary: bool,
        /// Be the Secondary of a --checkpoint-primary: listen on --listen,
        /// apply and acknowledge epochs, and with --take-over-on resume the
        /// guest from the last complete epoch when that file appears. Exit
        /// status 0 without a take-over when the Primary's guest ended.
        #[arg(long, conflicts_with = "local_secondary", requires_all = ["listen", "key", "peer_key"])]
        checkpoint_secondary: bool,
        /// The Secondary's channel address (host:port).
        #[arg(long)]
        peer: Option<std::net::SocketAddr>,
        /// Where the Secondary listens (host:port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// File with this host's X25519 channel secret, 64 hex digits.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The other host's X25519 public key, 64 hex digits.
        #[arg(long)]
        peer_key: Option<String>,
        /// Harvest the dirty log with KVM_CLEAR_DIRTY_LOG (manual dirty-log
        /// protection) instead of KVM_GET_DIRTY_LOG alone.
        #[arg(long)]
        clear_dirty_log: bool,
        /// MiB of page copies the checkpoint Primary keeps to ship dirty
        /// pages as deltas against their last version (0: every page raw).
        #[arg(long, default_value_t = ftvmm::checkpoint::delta_base::DEFAULT_BYTES >> 20)]
        delta_cache_mib: usize,
    },
}

/// How `ftvmm linux` runs the VM.
enum LinuxMode {
    Alone,
    Local(ftvmm::checkpoint::local::LocalPair),
    Primary(ftvmm::checkpoint::hosts::RemotePrimary),
    Secondary(ftvmm::checkpoint::hosts::RemoteSecondary),
}

/// The channel keys of --key and --peer-key.
fn channel_keys(
    key: Option<PathBuf>,
    peer_key: Option<String>,
) -> Result<(ftvmm::lockstep::channel::Identity, [u8; 32]), String> {
    let key = key.ok_or("--key is required")?;
    let text = std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let private_key = config_schema::keys::parse_hex_key(&text)
        .map_err(|e| format!("{}: {e} (64 hex digits)", key.display()))?;
    let peer = config_schema::keys::parse_hex_key(&peer_key.ok_or("--peer-key is required")?)
        .map_err(|e| format!("--peer-key: {e} (64 hex digits)"))?;
    Ok((ftvmm::lockstep::channel::Identity { private_key }, peer))
}

fn run_linux_cmd(spec: ftvmm::linux::LinuxSpec, mode: LinuxMode) -> ExitCode {
    use ftvmm::linux::End;
    let stopper: std::sync::Arc<
        std::sync::Mutex<Option<std::sync::Arc<ftvmm::linux::vcpus::Control>>>,
    > = Default::default();
    let s2 = std::sync::Arc::clone(&stopper);
    if let Err(e) = ftvmm::signals::on_sigint(move || {
        match s2.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(c) => c.end(End::Stopped),
            // No VM yet (a Secondary waiting for epochs or its trigger,
            // a Primary connecting): nothing to stop in order.
            None => std::process::exit(2),
        }
    }) {
        tracing::warn!("cannot install SIGINT/SIGTERM handling: {e}");
    }
    let on_start = |r: &ftvmm::linux::Running| {
        *stopper.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.control());
    };
    let out = || Box::new(std::io::stdout());
    let result = match mode {
        LinuxMode::Alone => {
            ftvmm::linux::run_linux(&spec, out(), on_start).map_err(|e| e.to_string())
        }
        LinuxMode::Local(pair) => {
            ftvmm::checkpoint::local::run_local_pair(&spec, &pair, out(), on_start)
                .map_err(|e| e.to_string())
        }
        LinuxMode::Primary(cfg) => {
            match ftvmm::checkpoint::hosts::run_checkpoint_primary(&spec, &cfg, out(), on_start) {
                Err(e @ ftvmm::checkpoint::hosts::HostError::Lost { .. }) => {
                    eprintln!("ftvmm linux: {e}");
                    return ExitCode::from(3);
                }
                r => r.map_err(|e| e.to_string()),
            }
        }
        LinuxMode::Secondary(cfg) => {
            match ftvmm::checkpoint::hosts::run_checkpoint_secondary(&spec, &cfg, out(), on_start) {
                Ok(None) => return ExitCode::SUCCESS,
                Err(e @ ftvmm::checkpoint::hosts::HostError::Lost { .. }) => {
                    eprintln!("ftvmm linux: {e}");
                    return ExitCode::from(3);
                }
                Ok(Some(report)) => Ok(report),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match result {
        Ok(report) => {
            eprintln!(
                "ftvmm linux: guest ended: {} after {:.1} s (unowned port reads {}, writes {}, MMIO reads {}, writes {}){}",
                report.end,
                report.secs,
                report.unowned.pio_reads,
                report.unowned.pio_writes,
                report.unowned.mmio_reads,
                report.unowned.mmio_writes,
                report.note.map(|n| format!("; {n}")).unwrap_or_default()
            );
            match report.end {
                End::Reset | End::PowerOff | End::TripleFault | End::SystemEvent(_) => {
                    ExitCode::SUCCESS
                }
                End::Stopped => ExitCode::from(2),
                End::Error(_) => ExitCode::from(125),
            }
        }
        Err(e) => {
            eprintln!("ftvmm linux: {e}");
            ExitCode::from(126)
        }
    }
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
        Cmd::Linux {
            kernel,
            initrd,
            cmdline,
            vcpus,
            mem_mib,
            disk,
            tap,
            local_secondary,
            epoch_ms,
            take_over_on,
            checkpoint_primary,
            checkpoint_secondary,
            peer,
            listen,
            key,
            peer_key,
            clear_dirty_log,
            delta_cache_mib,
        } => {
            let delta_bytes = delta_cache_mib << 20;
            let epoch = std::time::Duration::from_millis(epoch_ms.max(1));
            let dirty = if clear_dirty_log {
                ftvmm::checkpoint::dirty_log::DirtyLog::GetClear
            } else {
                ftvmm::checkpoint::dirty_log::DirtyLog::Get
            };
            let mode = if checkpoint_primary || checkpoint_secondary {
                let (identity, peer_key) = match channel_keys(key, peer_key) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("ftvmm linux: {e}");
                        return ExitCode::from(126);
                    }
                };
                match (peer, listen) {
                    (Some(peer), _) if checkpoint_primary => {
                        LinuxMode::Primary(ftvmm::checkpoint::hosts::RemotePrimary {
                            peer,
                            identity,
                            peer_key,
                            epoch,
                            dirty,
                            delta_bytes,
                        })
                    }
                    (_, Some(listen)) => {
                        LinuxMode::Secondary(ftvmm::checkpoint::hosts::RemoteSecondary {
                            listen,
                            identity,
                            peer_key,
                            take_over_on,
                        })
                    }
                    _ => {
                        eprintln!("ftvmm linux: --peer or --listen is missing");
                        return ExitCode::from(126);
                    }
                }
            } else if local_secondary {
                LinuxMode::Local(ftvmm::checkpoint::local::LocalPair {
                    epoch,
                    dirty,
                    delta_bytes,
                    take_over_on,
                })
            } else {
                LinuxMode::Alone
            };
            run_linux_cmd(
                ftvmm::linux::LinuxSpec {
                    kernel,
                    initrd,
                    cmdline,
                    vcpus,
                    mem_mib,
                    disk,
                    tap,
                    mac: ftvmm::linux::run::DEFAULT_MAC,
                },
                mode,
            )
        }
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
