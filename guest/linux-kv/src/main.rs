//! `ftguest-linux-kv`: the reference guest's KV service as a static Linux program.
//!
//! Two ways to run it:
//! - as PID 1 of the initramfs built by `build-initramfs.sh` (the Linux test guest of
//!   checkpoint mode): mounts, kernel modules, `/dev/vda`, the network from the kernel command
//!   line, then `mode=kv|cpu|dirty` as the reference guest (see `pid1.rs`, guest/README.md);
//! - as an ordinary process for tests on the host, without PID 1 duties:
//!   `ftguest-linux-kv --serve --disk FILE --listen ADDR:PORT` (port 0 picks one; the
//!   listening line shows it), or `--cmdline 'mode=cpu cpu_iters=N'` for the other modes.
//!
//! Protocol, log format and command-line keys are `ftguest-kvlog`'s, shared with the unikernel.
//! Console output is a contract (guest/README.md, "Console lines"): lines go to stdout through
//! [`say!`], one `write` each, not through a logging framework.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use ftguest_kvlog::{BootArgs, Mode};

/// Prints one console line (the contract lines of the reference guest and notes).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console_line(::std::format_args!($($arg)*))
    };
}

mod client;
mod disk;
mod modules;
mod net;
mod pid1;
mod server;
mod workload;

/// Writes one line to stdout in one piece; a console that is gone is ignored.
pub fn console_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let line = format!("{args}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Why the KV service stopped.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error("kv: recovery from disk failed: {0}")]
    Recover(ftguest_kvlog::RecoverError<disk::DiskError>),
    #[error("kv: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("kv: accept failed: {0}")]
    Accept(#[source] std::io::Error),
}

/// Recovers the service from `disk`, listens on `listen` and serves forever. The listening line
/// shows `shown` (the guest's configured address) or else the bound address.
pub fn run_kv(disk: &Path, listen: SocketAddr, shown: Option<SocketAddr>) -> Result<(), KvError> {
    let disk = disk::Disk::open(disk, |note| say!("{note}"))?;
    let service = match server::Service::recover(disk) {
        Ok(s) => s,
        Err(e) => {
            say!("kv: recovery from disk failed: {e}");
            return Err(KvError::Recover(e));
        }
    };
    // Listen before saying so: a client may connect the moment it reads the line.
    let listener = TcpListener::bind(listen).map_err(|source| KvError::Listen {
        addr: listen,
        source,
    })?;
    let bound = listener.local_addr().unwrap_or(listen);
    let shown = shown.unwrap_or(bound);
    let (keys, replayed) = service.summary();
    say!(
        "kv: listening on {}:{} keys={keys} replayed={replayed}",
        shown.ip(),
        shown.port()
    );
    server::serve(listener, service).map_err(KvError::Accept)
}

const USAGE: &str =
    "usage: ftguest-linux-kv --serve --disk FILE --listen ADDR:PORT [--cmdline LINE]
       ftguest-linux-kv --cmdline 'mode=cpu cpu_iters=N'
       ftguest-linux-kv --client ADDR:PORT [--conns N] [--seconds S]
       (as PID 1 it reads /proc/cmdline and does the guest's boot duties)";

struct HostArgs {
    serve: bool,
    disk: Option<PathBuf>,
    listen: Option<SocketAddr>,
    cmdline: String,
    client: Option<SocketAddr>,
    conns: usize,
    seconds: u64,
}

fn parse_host_args(mut argv: impl Iterator<Item = String>) -> Result<HostArgs, String> {
    let mut a = HostArgs {
        serve: false,
        disk: None,
        listen: None,
        cmdline: String::new(),
        client: None,
        conns: 1,
        seconds: 10,
    };
    while let Some(flag) = argv.next() {
        // Taken only by the flags that have a value (`--serve` has none).
        let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--serve" => a.serve = true,
            "--disk" => a.disk = Some(PathBuf::from(value()?)),
            "--listen" => a.listen = Some(parsed(&flag, value()?)?),
            "--cmdline" => a.cmdline = value()?,
            "--client" => a.client = Some(parsed(&flag, value()?)?),
            "--conns" => a.conns = parsed(&flag, value()?)?,
            "--seconds" => a.seconds = parsed(&flag, value()?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// `value` of `flag`, parsed, or an error naming both.
fn parsed<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| format!("{flag} {value}: {e}"))
}

fn host_main() -> Result<(), String> {
    let host = parse_host_args(std::env::args().skip(1))?;
    if let Some(addr) = host.client {
        return client::run(addr, host.conns, host.seconds);
    }
    let args = BootArgs::parse(&host.cmdline).map_err(|e| e.to_string())?;
    match (host.serve, args.mode) {
        (true, _) => {
            let disk = host.disk.ok_or("--serve needs --disk FILE")?;
            let listen = host.listen.ok_or("--serve needs --listen ADDR:PORT")?;
            run_kv(&disk, listen, None).map_err(|e| e.to_string())
        }
        (false, Mode::Cpu) => {
            workload::cpu(args.cpu_iters);
            Ok(())
        }
        (false, Mode::Dirty) => workload::dirty(args.dirty_mib, args.dirty_rate),
        (false, Mode::Kv) => Err("kv mode on the host needs --serve".into()),
    }
}

fn main() {
    if rustix::process::getpid().is_init() {
        pid1::run();
    }
    if let Err(e) = host_main() {
        eprintln!("ftguest-linux-kv: {e}\n{USAGE}");
        std::process::exit(2);
    }
}
