//! The KV benchmark: boots the reference guest in KV mode (fresh disk file, TAP in the private
//! namespace), then one TCP connection does `ops` PUTs followed by `ops` GETs of the same keys,
//! timing each request/reply round trip. Exits per second are counted over the request phase.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ftvmm::runner::{run_vm, VmSpec};

use crate::console::{wait_for, LineSink};
use crate::net;

/// Timings of one KV run.
pub struct KvRun {
    pub put: Vec<Duration>,
    pub put_total: Duration,
    pub get: Vec<Duration>,
    pub get_total: Duration,
    /// Guest exits during the PUT+GET phase and its length.
    pub exits: u64,
    pub phase: Duration,
}

/// One KV run on a fresh disk in `dir`.
pub fn run(kernel: &Path, dir: &Path, run_no: usize, ops: usize, echo: bool) -> Result<KvRun> {
    let disk = dir.join(format!("kv{run_no}.img"));
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .with_context(|| format!("cannot create {}", disk.display()))?;
    let spec = VmSpec {
        kernel: kernel.to_path_buf(),
        mem_mib: 64,
        disk: Some(
            disk.to_str()
                .ok_or_else(|| anyhow!("non-UTF-8 temp path"))?
                .parse()?,
        ),
        tap: Some(net::TAP.into()),
        cmdline: format!("mode=kv ip={}", net::GUEST_CIDR),
        restore: None,
        snapshot_on_exit: None,
        stdin: false,
        bridge: None,
        cpu: Default::default(),
    };
    let (sink, lines) = LineSink::new(echo);
    let (started_tx, started_rx) = mpsc::channel();
    let vm_thread = std::thread::Builder::new()
        .name("bench-kv-vcpu".into())
        .spawn(move || {
            run_vm(&spec, Box::new(sink), move |h, p| {
                let _ = started_tx.send((h, p));
            })
        })?;
    let (handle, progress) = match started_rx.recv() {
        Ok(hp) => hp,
        Err(_) => bail!("the KV VM did not start: {}", vm_thread_error(vm_thread)),
    };
    let result = (|| {
        wait_for(&lines, "kv: listening", Duration::from_secs(120)).map_err(|e| anyhow!(e))?;
        let mut client = Client::connect()?;
        let n0 = progress.exit_index.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let (put, put_total) = timed_puts(&mut client, ops)?;
        let (get, get_total) = timed_gets(&mut client, ops)?;
        let exits = progress.exit_index.load(Ordering::Relaxed) - n0;
        Ok(KvRun {
            put,
            put_total,
            get,
            get_total,
            exits,
            phase: t0.elapsed(),
        })
    })();
    handle.stop();
    match vm_thread.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("KV VM ended with an error: {e}"),
        Err(_) => bail!("the KV VM thread panicked"),
    }
    result
}

/// PUTs keys `0..ops` one at a time, each reply checked: the latency of
/// each and the total.
pub(crate) fn timed_puts(client: &mut Client, ops: usize) -> Result<(Vec<Duration>, Duration)> {
    timed(
        client,
        ops,
        |i| format!("PUT {} {}", key(i), value(i)),
        |_| "OK".into(),
    )
}

/// GETs keys `0..ops` one at a time, each value checked: the latency of
/// each and the total.
pub(crate) fn timed_gets(client: &mut Client, ops: usize) -> Result<(Vec<Duration>, Duration)> {
    timed(
        client,
        ops,
        |i| format!("GET {}", key(i)),
        |i| format!("VALUE {}", value(i)),
    )
}

fn timed(
    client: &mut Client,
    ops: usize,
    request: impl Fn(usize) -> String,
    expect: impl Fn(usize) -> String,
) -> Result<(Vec<Duration>, Duration)> {
    let t0 = Instant::now();
    let mut each = Vec::with_capacity(ops);
    for i in 0..ops {
        let req = request(i);
        let t = Instant::now();
        let reply = client.call(&req)?;
        each.push(t.elapsed());
        if reply != expect(i) {
            bail!("{req}: {reply}");
        }
    }
    Ok((each, t0.elapsed()))
}

fn vm_thread_error(
    t: std::thread::JoinHandle<Result<ftvmm::runner::RunReport, ftvmm::runner::RunError>>,
) -> String {
    match t.join() {
        Ok(Ok(r)) => format!("ended: {:?}", r.outcome),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "panicked".into(),
    }
}

pub(crate) fn key(i: usize) -> String {
    format!("key{i:06}")
}

pub(crate) fn value(i: usize) -> String {
    format!("value-{i:06}-0123456789abcdef0123456789abcdef")
}

/// One TCP connection speaking the line protocol.
pub(crate) struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    /// Connects, retrying while the guest's first ARP/SYN exchange settles.
    pub(crate) fn connect() -> Result<Client> {
        let addr: SocketAddr = format!("{}:{}", net::GUEST_IP, net::KV_PORT).parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("connect {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            r: BufReader::new(stream.try_clone()?),
            w: stream,
        })
    }

    pub(crate) fn call(&mut self, line: &str) -> Result<String> {
        self.w.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.r.read_line(&mut reply)? == 0 {
            bail!("the guest closed the connection");
        }
        Ok(reply.trim_end().to_string())
    }
}
