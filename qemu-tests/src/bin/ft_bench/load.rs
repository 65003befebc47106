//! The KV load: `clients` connections to the guest, each sending one request
//! at a time (PUT of a new key, or GET of a prefilled one) for a fixed time;
//! every reply is checked and its latency kept.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use qemu_tests::kv::{key, value, Kv};
use qemu_tests::NetnsTap;

use super::stats::{summary, Summary};

/// Keys `PREFILL_BASE..PREFILL_BASE + PREFILL` are PUT once per configuration; GETs read them.
const PREFILL_BASE: usize = 9_000_000;
const PREFILL: usize = 64;
/// Each client of a PUT phase writes its own key range.
const CLIENT_SPAN: usize = 100_000;

/// What a phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Op {
    Put,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get => "GET",
        }
    }
}

/// One phase's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Load {
    pub op: Op,
    pub clients: usize,
    pub seconds: f64,
    pub ops: usize,
    pub ops_per_s: f64,
    pub latency: Option<Summary>,
}

/// PUTs the keys the GET phases read (pipelined, one connection).
pub fn prefill(tap: &NetnsTap) -> Result<()> {
    guarded(|| {
        let mut kv = Kv::connect(tap);
        let puts: Vec<String> = (0..PREFILL)
            .map(|j| {
                let i = PREFILL_BASE + j;
                format!("PUT {} {}", key(i), value(i))
            })
            .collect();
        for (j, r) in kv.exchange(&puts).iter().enumerate() {
            if r != "OK" {
                return Err(anyhow!(
                    "prefill PUT {} answered {r:?}",
                    key(PREFILL_BASE + j)
                ));
            }
        }
        Ok(())
    })
}

/// Runs `clients` connections doing `op` for `duration`; `phase` keeps the
/// PUT phases' keys apart.
pub fn run(
    tap: &NetnsTap,
    op: Op,
    clients: usize,
    duration: Duration,
    phase: usize,
) -> Result<Load> {
    if clients == 0 {
        bail!("a phase needs at least one client");
    }
    let conns: Vec<Kv> = guarded(|| Ok((0..clients).map(|_| Kv::connect(tap)).collect()))?;
    let start = Barrier::new(clients + 1);
    let (t0, results) = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(c, kv)| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let deadline = Instant::now() + duration;
                    guarded(|| client(kv, op, c, deadline, phase))
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let results: Vec<Result<(Vec<Duration>, Instant)>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("client thread panicked")))
            })
            .collect();
        (t0, results)
    });
    let mut lat = Vec::new();
    let mut end = t0;
    for r in results {
        let (l, e) = r?;
        lat.extend(l);
        end = end.max(e);
    }
    let seconds = (end - t0).as_secs_f64();
    Ok(Load {
        op,
        clients,
        seconds,
        ops: lat.len(),
        ops_per_s: lat.len() as f64 / seconds.max(1e-9),
        latency: summary(&lat),
    })
}

/// One connection's loop: its latencies and when its last reply came.
fn client(
    mut kv: Kv,
    op: Op,
    c: usize,
    deadline: Instant,
    phase: usize,
) -> Result<(Vec<Duration>, Instant)> {
    let mut lat = Vec::new();
    let mut i = 0;
    while Instant::now() < deadline {
        let (request, want) = match op {
            Op::Put => {
                let k = phase * 10 * CLIENT_SPAN + c * CLIENT_SPAN + i;
                (format!("PUT {} {}", key(k), value(k)), "OK".to_string())
            }
            Op::Get => {
                let k = PREFILL_BASE + (c * 16 + i) % PREFILL;
                (format!("GET {}", key(k)), format!("VALUE {}", value(k)))
            }
        };
        let t = Instant::now();
        let reply = kv.one(&request);
        lat.push(t.elapsed());
        if reply != want {
            bail!("client {c}: {request:?} answered {reply:?}, expected {want:?}");
        }
        i += 1;
    }
    Ok((lat, Instant::now()))
}

/// Runs `f`, turning the KV client's panics (it panics on a lost
/// connection or a missing reply) into errors.
pub fn guarded<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        Err(anyhow!("KV client: {text}"))
    })
}
