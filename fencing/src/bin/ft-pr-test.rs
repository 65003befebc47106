//! `ft-pr-test`: the QEMU tests' hand on persistent reservations inside an
//! appliance host (the appliance has no shell).
//!
//! init starts it only when the signed config enables the test hook `pr`
//! (see init/README.md, "Test hooks"); it is never started otherwise. It finds
//! the shared device the way the fencing agent does (the config's locator),
//! reads commands typed on the serial console, one per line, and prints one
//! result line per command:
//!
//! ```text
//! ftpr register <incarnation>        REGISTER this host's key (host id from the config)
//! ftpr register-ignore <incarnation> REGISTER AND IGNORE EXISTING KEY
//! ftpr unregister | reserve | release | clear
//! ftpr preempt <host-id> <incarnation>        PREEMPT that key (WERO)
//! ftpr preempt-abort <host-id> <incarnation>  PREEMPT AND ABORT
//! ftpr join <incarnation>            fencing::pr::fence::join (register-ignore, reserve if free)
//! ftpr depose <host-id>              fencing::pr::fence::depose (preempt-abort every key of that host)
//! ftpr keys | reservation            READ KEYS / READ RESERVATION
//! ftpr probe [<device>]              does the device offer persistent reservations?
//! ftpr write <mib> <word>            O_DIRECT write of 4 KiB at <mib> MiB, outside every config region
//! ftpr read <mib>                    O_DIRECT read of 4 KiB at <mib> MiB
//!
//! ftpr: <command>: ok <micros> us[: <detail>][ [unit attention: <sense>]...]
//! ftpr: <command>: failed <micros> us: <error>[ [unit attention: <sense>]...]
//! ```
//!
//! A write refused with RESERVATION CONFLICT fails with `reservation
//! conflict (EBADE)` in the error. The reservation type is always Write
//! Exclusive – Registrants Only, the fence's type.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use config_schema::runtime::{RuntimeConfig, RUNTIME_CONFIG_PATH};
use fencing::device;
use fencing::pr::{self, fence, BlockDevice, Key, PrType, Reservations};

const CONSOLE_TTY: &str = "/dev/ttyS0";
const WERO: PrType = PrType::WriteExclusiveRegistrantsOnly;
const BLOCK: usize = 4096;

#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

struct Tool {
    host_id: u16,
    device: PathBuf,
    pr: BlockDevice,
    /// The key this host registered last (its current one).
    own: Option<Key>,
    /// `[start, end)` in MiB of the config's fencing area and disk regions.
    regions: Vec<(String, u64, u64)>,
}

fn main() {
    if let Err(e) = run() {
        println!("ftpr: cannot start: {e:#}");
        std::process::exit(1);
    }
}

/// How long the shared device may take to appear (SCSI scanning is
/// asynchronous) before the tool gives up.
const DEVICE_WAIT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "ft-pr-test",
    about = "Persistent-reservation commands from the console (QEMU tests only)"
)]
struct Cli {
    #[arg(long, default_value = RUNTIME_CONFIG_PATH)]
    config: PathBuf,
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = RuntimeConfig::load(&cli.config)?;
    let host_id = u16::try_from(rt.this_host().id).context("host id above 65535")?;
    let storage = &rt.config.storage;
    let deadline = Instant::now() + DEVICE_WAIT;
    let found = loop {
        match device::locate(Path::new("/"), &storage.device) {
            Ok(d) => break d,
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let pr = BlockDevice::open(&found.path)?;
    let mut regions = vec![(
        "fencing".to_string(),
        storage.fencing.offset_mib,
        storage.fencing.offset_mib + storage.fencing.size_mib,
    )];
    for r in &storage.regions {
        regions.push((r.name.clone(), r.offset_mib, r.offset_mib + r.size_mib));
    }
    let mut tool = Tool {
        host_id,
        device: found.path.clone(),
        pr,
        own: None,
        regions,
    };
    let tty = open_console_quiet(Path::new(CONSOLE_TTY))
        .with_context(|| format!("open {CONSOLE_TTY}"))?;
    println!(
        "ftpr: ready host={} id={host_id} device={}",
        rt.host_name,
        found.path.display()
    );
    for line in BufReader::new(tty).lines() {
        let line = line.context("console read")?;
        let Some(command) = line.trim().strip_prefix("ftpr ") else {
            continue;
        };
        let started = Instant::now();
        let result = tool.run(command);
        let micros = started.elapsed().as_micros();
        // UNIT ATTENTIONs the target reported on the way (SG_IO retried).
        let ua: Vec<String> = tool
            .pr
            .take_unit_attentions()
            .iter()
            .map(|s| format!(" [unit attention: {s}]"))
            .collect();
        let ua = ua.concat();
        match result {
            Ok(detail) if detail.is_empty() && ua.is_empty() => {
                println!("ftpr: {command}: ok {micros} us")
            }
            Ok(detail) => println!("ftpr: {command}: ok {micros} us: {detail}{ua}"),
            Err(e) => println!("ftpr: {command}: failed {micros} us: {e:#}{ua}"),
        }
    }
    Ok(())
}

fn number<T: std::str::FromStr>(word: Option<&&str>, what: &str) -> anyhow::Result<T> {
    let w = word.ok_or_else(|| anyhow!("missing {what}"))?;
    w.parse().map_err(|_| anyhow!("bad {what} {w:?}"))
}

impl Tool {
    fn own(&self) -> anyhow::Result<Key> {
        self.own
            .ok_or_else(|| anyhow!("no key registered yet (ftpr register <incarnation>)"))
    }

    fn key(&self, incarnation: u64) -> Key {
        Key::for_host(self.host_id, incarnation)
    }

    fn run(&mut self, command: &str) -> anyhow::Result<String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let arg = |i: usize| words.get(i);
        match words.first().copied().unwrap_or("") {
            "register" => {
                let new = self.key(number(arg(1), "incarnation")?);
                self.pr.register(self.own, new)?;
                self.own = Some(new);
                Ok(format!("key {new}"))
            }
            "register-ignore" => {
                let new = self.key(number(arg(1), "incarnation")?);
                self.pr.register_ignore(new)?;
                self.own = Some(new);
                Ok(format!("key {new}"))
            }
            "unregister" => {
                self.pr.unregister(self.own()?)?;
                self.own = None;
                Ok(String::new())
            }
            "reserve" => Ok(self.pr.reserve(self.own()?, WERO).map(|_| String::new())?),
            "release" => Ok(self.pr.release(self.own()?, WERO).map(|_| String::new())?),
            "clear" => Ok(self.pr.clear(self.own()?).map(|_| String::new())?),
            w @ ("preempt" | "preempt-abort") => {
                let host: u16 = number(arg(1), "host id")?;
                let victim = Key::for_host(host, number(arg(2), "incarnation")?);
                self.pr
                    .preempt(self.own()?, victim, WERO, w == "preempt-abort")?;
                Ok(format!("preempted {victim}"))
            }
            "join" => {
                let own = self.key(number(arg(1), "incarnation")?);
                let joined = fence::join(&self.pr, own)?;
                self.own = Some(own);
                Ok(format!(
                    "key {own} reserved={} holder={}",
                    joined.reserved, joined.holder
                ))
            }
            "depose" => {
                let d = fence::depose(&self.pr, self.own()?, number(arg(1), "host id")?)?;
                let list: Vec<String> = d.removed.iter().map(Key::to_string).collect();
                Ok(format!(
                    "removed=[{}] aborted={}",
                    list.join(" "),
                    d.aborted
                ))
            }
            "keys" => {
                let k = self.pr.read_keys()?;
                let list: Vec<String> = k.keys.iter().map(Key::to_string).collect();
                Ok(format!(
                    "generation={} keys=[{}]",
                    k.generation,
                    list.join(" ")
                ))
            }
            "reservation" => {
                let r = self.pr.read_reservation()?;
                Ok(match r.held {
                    None => format!("generation={} none", r.generation),
                    Some((k, t)) => format!("generation={} holder={k} type={t}", r.generation),
                })
            }
            "probe" => {
                let path = arg(1).map_or(self.device.clone(), PathBuf::from);
                let (_, caps) = pr::probe(&path)?;
                Ok(format!(
                    "{} offers persistent reservations: type mask {}, {} keys, reservation {}",
                    path.display(),
                    caps.types
                        .map_or("not reported".into(), |m| format!("{:#06x}", m.mask)),
                    caps.keys.keys.len(),
                    caps.reservation
                        .held
                        .map_or("none".into(), |(k, t)| format!("{k} {t}"))
                ))
            }
            "write" => self.write(number(arg(1), "MiB offset")?, arg(2).copied().unwrap_or("")),
            "read" => self.read(number(arg(1), "MiB offset")?),
            other => bail!("unknown command {other:?}"),
        }
    }

    /// The device opened for one `O_DIRECT` I/O at `mib` MiB, refused inside
    /// a config region (the test must never hit the fencing area or a VM disk).
    fn open_at(&self, mib: u64) -> anyhow::Result<File> {
        if let Some((name, a, b)) = self
            .regions
            .iter()
            .find(|(_, a, b)| (*a..*b).contains(&mib))
        {
            bail!("{mib} MiB is inside config region {name} [{a}, {b}) MiB; use a free offset");
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.device)
            .with_context(|| format!("open {}", self.device.display()))
    }

    fn write(&self, mib: u64, word: &str) -> anyhow::Result<String> {
        let f = self.open_at(mib)?;
        let mut buf = Box::new(Aligned([0; BLOCK]));
        let n = word.len().min(BLOCK);
        buf.0[..n].copy_from_slice(&word.as_bytes()[..n]);
        match f.write_all_at(&buf.0, mib << 20) {
            Ok(()) => Ok(String::new()),
            Err(e) if pr::is_reservation_conflict(&e) => {
                bail!("reservation conflict (EBADE): {e}")
            }
            Err(e) => Err(e).context(format!("write at {mib} MiB")),
        }
    }

    fn read(&self, mib: u64) -> anyhow::Result<String> {
        let f = self.open_at(mib)?;
        let mut buf = Box::new(Aligned([0; BLOCK]));
        f.read_exact_at(&mut buf.0, mib << 20)
            .with_context(|| format!("read at {mib} MiB"))?;
        let end = buf.0.iter().position(|&b| b == 0).unwrap_or(64).min(64);
        Ok(format!("{:?}", String::from_utf8_lossy(&buf.0[..end])))
    }
}

/// Opens the console for reading without making it the controlling
/// terminal, echo off (typed commands do not land in the console output).
fn open_console_quiet(path: &Path) -> std::io::Result<File> {
    use std::os::unix::io::AsRawFd;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    let fd = f.as_raw_fd();
    // SAFETY: `termios` is plain old data; zeroed is a valid value that
    // tcgetattr overwrites.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (owned by `f`) for the whole call; `t` is a valid,
    // writable termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } == 0 {
        t.c_lflag &= !(libc::ECHO | libc::ECHONL);
        t.c_lflag |= libc::ICANON;
        // SAFETY: as above; `t` is the termios tcgetattr filled in.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    Ok(f)
}
