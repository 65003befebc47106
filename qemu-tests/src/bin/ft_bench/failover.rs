//! The failover pause: a KV client does PUT key i, GET key i (one at a
//! time, one connection) while the Primary host's QEMU is killed; the pause
//! is the longest gap between its replies from the kill on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use qemu_tests::kv::{key, value, Kv};
use qemu_tests::{Cluster, NetnsTap};

use super::load::guarded;

/// Keys of the failover client.
const BASE: usize = 8_000_000;

/// What one kill gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failover {
    pub victim: String,
    pub survivor: String,
    /// From the kill to the survivor's `live as primary` console line.
    pub go_live_ms: u64,
    /// The client's longest gap between replies from the kill on.
    pub client_pause_ms: u64,
    pub failure_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Replies the client had before the kill and in all.
    pub replies_before: usize,
    pub replies: usize,
}

#[derive(Default)]
struct Seen {
    replies: Vec<Instant>,
    error: Option<String>,
}

/// Kills `victim` (the Primary of `vm`) under a running client and waits
/// until `survivor` is live and the client has 40 more replies.
pub fn run(
    cluster: &Cluster,
    tap: &NetnsTap,
    vm: &str,
    victim: &str,
    survivor: &str,
) -> Result<Failover> {
    let (v, s) = (cluster.host(victim)?, cluster.host(survivor)?);
    let timing = &cluster.config().timing;
    let mut kv = guarded(|| Ok(Kv::connect(tap)))?;
    let (stop, seen) = (AtomicBool::new(false), Mutex::new(Seen::default()));
    std::thread::scope(|sc| -> Result<Failover> {
        sc.spawn(|| {
            let r = guarded(|| client(&mut kv, &stop, &seen));
            if let Err(e) = r {
                seen.lock().unwrap().error.get_or_insert(format!("{e:#}"));
            }
        });
        let driven = (|| {
            wait_replies(&seen, 20, Duration::from_secs(120)).context("before the kill")?;
            still_the_first_pair(cluster, vm, &[victim, survivor])?;
            let before = seen.lock().unwrap().replies.len();
            let kill_at = Instant::now();
            v.kill().with_context(|| format!("kill {victim}"))?;
            let won = format!("ftvmm: vm {vm}: won generation 2; live as primary");
            let live = s
                .wait_for_line(won, Duration::from_secs(120))
                .with_context(|| format!("{survivor} did not go live"))?;
            let go_live = (s.spawned_at() + live.at).saturating_duration_since(kill_at);
            wait_replies(&seen, before + 40, Duration::from_secs(120)).context("after the kill")?;
            let replies = seen.lock().unwrap().replies.clone();
            Ok(Failover {
                victim: victim.into(),
                survivor: survivor.into(),
                go_live_ms: go_live.as_millis() as u64,
                client_pause_ms: longest_gap(&replies, kill_at).as_millis() as u64,
                failure_timeout_ms: timing.failure_timeout_ms,
                heartbeat_interval_ms: timing.heartbeat_interval_ms,
                replies_before: before,
                replies: replies.len(),
            })
        })();
        stop.store(true, Ordering::SeqCst);
        driven
    })
}

/// The pair the bench booted is still the one it measures: no member won
/// a later generation or lost its partner since the start. Otherwise the
/// kill would measure a cold start of an unprotected VM (its client's
/// connection reset), not a failover: say so instead (seen with a 500 ms
/// failure timeout on a machine at load 9, where lease renewals lapsed and
/// the pair re-formed twice before the kill).
fn still_the_first_pair(cluster: &Cluster, vm: &str, hosts: &[&str]) -> Result<()> {
    for h in hosts {
        let c = cluster.host(h)?.console();
        let changed = c.lines().into_iter().map(|l| l.text).find(|t| {
            (t.contains(&format!("ftvmm: vm {vm}: won generation"))
                && !t.contains("won generation 1 to start"))
                || t.contains(&format!("ftvmm: vm {vm}: UNPROTECTED"))
        });
        if let Some(line) = changed {
            bail!(
                "the pair changed before the kill, so no failover can be measured: {h} said {line:?}"
            );
        }
    }
    Ok(())
}

/// PUT key i then GET key i until `stop`.
fn client(kv: &mut Kv, stop: &AtomicBool, seen: &Mutex<Seen>) -> Result<()> {
    let mut i = BASE;
    while !stop.load(Ordering::SeqCst) {
        let get = (format!("GET {}", key(i)), format!("VALUE {}", value(i)));
        for (request, want) in [
            (format!("PUT {} {}", key(i), value(i)), "OK".to_string()),
            get,
        ] {
            let reply = kv.one(&request);
            if reply != want {
                bail!("{request:?} answered {reply:?}, expected {want:?}");
            }
            seen.lock().unwrap().replies.push(Instant::now());
        }
        i += 1;
    }
    Ok(())
}

fn wait_replies(seen: &Mutex<Seen>, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let s = seen.lock().unwrap();
            if let Some(e) = &s.error {
                return Err(anyhow!("KV client: {e}"));
            }
            if s.replies.len() >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "KV client has {} of {n} replies after {timeout:?}",
                    s.replies.len()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The longest gap between replies from `from` on, counting from the last reply before it.
pub fn longest_gap(replies: &[Instant], from: Instant) -> Duration {
    let (mut prev, mut gap) = (from, Duration::ZERO);
    for &t in replies {
        if t > from {
            gap = gap.max(t - prev);
        }
        prev = t;
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_spans_the_kill() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let replies = [t, t + ms(10), t + ms(20), t + ms(900), t + ms(910)];
        // Killed at 15 ms: the gap from the reply at 10 ms does not count
        // before the kill, the one from 20 to 900 ms does.
        assert_eq!(longest_gap(&replies, t + ms(15)), ms(880));
        assert_eq!(longest_gap(&replies, t + ms(950)), Duration::ZERO);
    }
}
