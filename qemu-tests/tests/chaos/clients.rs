//! The chaos run's clients: three that keep one TCP connection each (and
//! reconnect after a timeout or a broken connection) and one that opens a
//! connection per operation, all doing PUT/GET on [`KEYS`] overlapping keys
//! with a value unique to each PUT, recording every operation in a shared
//! [`Recorder`]: invoke right before sending; `written`/`read` on the
//! answer; `fail` if the guest answered `ERR`; `unknown` on a timeout or a
//! connection error (the op may or may not have taken effect).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qemu_tests::history::{OpKind, Outcome, Recorder};
use qemu_tests::kv::GUEST;
use qemu_tests::NetnsTap;

/// Keys the clients share.
pub const KEYS: usize = 8;
/// Clients with one long-lived connection each (ids `0..LONG_LIVED`).
pub const LONG_LIVED: u32 = 3;
/// The client that opens a connection per operation.
pub const SHORT_LIVED: u32 = LONG_LIVED;
/// The client id of the final GETs.
pub const FINAL: u32 = 99;
/// A reply slower than this makes the op unknown and the connection dropped.
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that cannot connect for this long gives up (reported).
const RECONNECT_FOR: Duration = Duration::from_secs(120);
const THINK: Duration = Duration::from_millis(20);
/// The short-lived client's pause between connections (the guest has 16
/// sockets; a closed one listens again).
const SHORT_THINK: Duration = Duration::from_millis(200);
/// All final GETs together get this long (a VM that no longer serves must
/// not hold the run for every key's reconnect budget).
const FINAL_FOR: Duration = Duration::from_secs(150);

/// Key `k` of the run of `seed`.
pub fn key(seed: u64, k: usize) -> String {
    format!("s{seed}-k{k}")
}

/// What a client did.
#[derive(Debug, Default, Clone)]
pub struct ClientStats {
    pub client: u32,
    pub ops: u64,
    pub reconnects: u64,
    /// Why it stopped before being told to.
    pub gave_up: Option<String>,
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(net: &NetnsTap) -> Result<Conn, String> {
        let addr: SocketAddr = GUEST.parse().map_err(|e| format!("{GUEST}: {e}"))?;
        let s = net
            .tcp_connect(addr, CONNECT_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let io = |e: std::io::Error| e.to_string();
        s.set_read_timeout(Some(OP_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(OP_TIMEOUT)).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        let r = BufReader::new(s.try_clone().map_err(io)?);
        Ok(Conn { w: s, r })
    }

    /// Opens a connection, retrying for up to [`RECONNECT_FOR`] unless `stop`.
    fn open_retrying(net: &NetnsTap, stop: &AtomicBool) -> Result<Conn, String> {
        let deadline = Instant::now() + RECONNECT_FOR;
        loop {
            match Conn::open(net) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline || stop.load(Ordering::SeqCst) => {
                    return Err(e)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn ask(&mut self, line: &str) -> Result<String, String> {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut reply = String::new();
        match self.r.read_line(&mut reply) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(reply.trim_end().to_string()),
            Err(e) => Err(format!("no reply within {OP_TIMEOUT:?}: {e}")),
        }
    }
}

/// Sends one op and records it; false if the connection must be dropped.
fn op(rec: &Recorder, client: u32, conn: &mut Conn, key: &str, put: Option<&str>) -> bool {
    let (kind, line) = match put {
        Some(v) => (OpKind::Put { value: v.into() }, format!("PUT {key} {v}")),
        None => (OpKind::Get, format!("GET {key}")),
    };
    let id = rec.invoke(client, key, kind);
    let reply = match conn.ask(&line) {
        Ok(r) => r,
        Err(_) => {
            rec.unknown(id);
            return false;
        }
    };
    match (put.is_some(), reply.as_str()) {
        (true, "OK") => rec.written(id),
        (false, "NOTFOUND") => rec.read(id, None),
        (false, r) if r.starts_with("VALUE ") => rec.read(id, Some(r["VALUE ".len()..].into())),
        (_, r) if r.starts_with("ERR") => rec.fail(id),
        (_, r) => {
            eprintln!("chaos: client {client}: unexpected reply {r:?} to {line:?}");
            rec.unknown(id);
            return false;
        }
    }
    true
}

/// splitmix64: the clients' choices, from the seed and the client id.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One client until `stop`: long-lived connection for ids below
/// [`LONG_LIVED`], one connection per op otherwise.
pub fn run_client(
    client: u32,
    seed: u64,
    net: &NetnsTap,
    rec: &Recorder,
    stop: &AtomicBool,
) -> ClientStats {
    let mut stats = ClientStats {
        client,
        ..ClientStats::default()
    };
    let mut rng = Rng(seed ^ (u64::from(client) << 40) ^ 0xc1_1e47);
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::open_retrying(net, stop) {
                Ok(c) => c,
                Err(e) if !stop.load(Ordering::SeqCst) => {
                    stats.gave_up = Some(format!("cannot connect for {RECONNECT_FOR:?}: {e}"));
                    break;
                }
                Err(_) => break,
            },
        };
        let mut c = c;
        let k = key(seed, (rng.next() % KEYS as u64) as usize);
        let value = format!("s{seed}c{client}n{n}");
        let put = rng.next().is_multiple_of(2);
        n += 1;
        stats.ops += 1;
        let kept = op(rec, client, &mut c, &k, put.then_some(value.as_str()));
        if kept && client < LONG_LIVED {
            conn = Some(c);
        } else if !kept {
            stats.reconnects += 1;
        }
        std::thread::sleep(if client < LONG_LIVED {
            THINK
        } else {
            SHORT_THINK
        });
    }
    stats
}

/// Replies (answered ops: acknowledged, read or `ERR`) completed after `since_ns`.
pub fn replies_since(rec: &Recorder, since_ns: u64) -> usize {
    rec.snapshot()
        .ops
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Pending | Outcome::Unknown))
        .filter(|o| o.complete.is_some_and(|c| c > since_ns))
        .count()
}

/// Waits until `n` replies came after `since_ns`, at most `timeout`; whether they did.
pub fn wait_replies(rec: &Recorder, since_ns: u64, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if replies_since(rec, since_ns) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// After the clients stopped: a GET of every key on a fresh connection,
/// recorded as ops of client [`FINAL`] (so the checker judges them with the
/// rest), retried on a new connection up to 3 times. Per key, the value read
/// (`Ok(None)`: absent) or why none was.
pub fn final_gets(
    seed: u64,
    net: &NetnsTap,
    rec: &Recorder,
) -> Vec<(String, Result<Option<String>, String>)> {
    let never = AtomicBool::new(false);
    let deadline = Instant::now() + FINAL_FOR;
    let mut out = Vec::new();
    let mut conn: Option<Conn> = None;
    for k in 0..KEYS {
        let key = key(seed, k);
        let mut got = Err("no attempt".to_string());
        for _ in 0..3 {
            if Instant::now() >= deadline {
                got = Err(format!("{FINAL_FOR:?} for all final GETs spent"));
                break;
            }
            let mut c = match conn.take() {
                Some(c) => c,
                None => match Conn::open_retrying(net, &never) {
                    Ok(c) => c,
                    Err(e) => {
                        got = Err(format!("cannot connect: {e}"));
                        continue;
                    }
                },
            };
            let before = rec.snapshot().ops.len();
            if op(rec, FINAL, &mut c, &key, None) {
                conn = Some(c);
                got = match rec.snapshot().ops.get(before).map(|o| o.outcome.clone()) {
                    Some(Outcome::Read(v)) => Ok(v),
                    other => Err(format!("answered {other:?}")),
                };
                break;
            }
            got = Err("no answer".into());
        }
        out.push((key, got));
    }
    out
}
