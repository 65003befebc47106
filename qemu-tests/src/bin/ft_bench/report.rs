//! The plain text report of a bench.

use std::fmt::Write;

use super::load::Load;
use super::model::REAL_RTT_US;
use super::stats::ms;
use super::{Bench, Mode, Run};

/// The timeline's segments in the order a request meets them
/// (`ftvmm::lockstep::primary::timeline::Segment::name`); others go last.
const ORDER: [&str; 15] = [
    "frame in: recorded -> next output produced",
    "frame in: recorded -> record sent",
    "frame in: record sent -> acked",
    "disk write: produced -> digest record",
    "disk write: digest record -> sent",
    "disk write: sent -> acked",
    "disk write: acked -> released",
    "disk write: produced -> released (held)",
    "disk write: released -> completed",
    "frame out: produced -> digest record",
    "frame out: digest record -> sent",
    "frame out: sent -> acked",
    "frame out: acked -> released",
    "frame out: produced -> released (held)",
    "frame out: released -> on the wire",
];

/// The whole report.
pub fn render(b: &Bench) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "\nft-bench: VM kv in QEMU appliance hosts (TCG), host-a and host-b booted in every run; {} s per load phase; load average {} at the start, {} at the end", b.seconds_per_phase, b.load_average, b.load_average_end);
    let _ = writeln!(
        w,
        "  unprotected: VM kv allowed on host-a only (affinity changed), host-b booted and idle"
    );
    let _ = writeln!(
        w,
        "  pair:        examples/cluster.toml, host-a Primary, host-b Secondary"
    );
    let _ = writeln!(
        w,
        "  two boots of the same two hosts, one per config: affinity is read at boot"
    );
    let _ = writeln!(w, "  survivor:    host-b alone after host-a's QEMU was killed in the pair's boot (host-a dead, not idle)");
    let _ = writeln!(
        w,
        "  load: each connection sends one request, waits for its reply, sends the next"
    );
    loads(w, b);
    pings(w, b);
    timeline(w, b);
    soak(w, b);
    failover(w, b);
    model(w, b);
    for r in &b.runs {
        for e in &r.errors {
            let _ = writeln!(w, "FAILED ({:?}): {e}", r.mode);
        }
    }
    s
}

fn run(b: &Bench, mode: Mode) -> Option<&Run> {
    b.runs.iter().find(|r| r.mode == mode)
}

fn find<'a>(loads: &'a [Load], l: &Load) -> Option<&'a Load> {
    loads
        .iter()
        .find(|x| x.op == l.op && x.clients == l.clients)
}

fn cells(l: Option<&Load>) -> String {
    match l.and_then(|l| l.latency.map(|s| (l, s))) {
        Some((l, s)) => format!(
            "{:>8.1} {:>8} {:>8}",
            l.ops_per_s,
            ms(s.p50_us),
            ms(s.p99_us)
        ),
        None => format!("{:>8} {:>8} {:>8}", "-", "-", "-"),
    }
}

fn loads(w: &mut String, b: &Bench) {
    let alone = run(b, Mode::Unprotected);
    let Some(pair) = run(b, Mode::Pair) else {
        return;
    };
    let _ = writeln!(w, "\nKV load                   unprotected (host-a)  |         pair (a+b)          | pair/unprot |   survivor (host-b alone)");
    let _ = writeln!(w, "op  clients    ops/s   p50 ms   p99 ms |    ops/s   p50 ms   p99 ms |  ops/s ratio|    ops/s   p50 ms   p99 ms");
    let empty = Vec::new();
    let alone_loads = alone.map_or(&empty, |r| &r.loads);
    let mut rows: Vec<&Load> = pair.loads.iter().collect();
    for l in alone_loads {
        if find(&pair.loads, l).is_none() {
            rows.push(l);
        }
    }
    for l in rows {
        let (u, p) = (find(alone_loads, l), find(&pair.loads, l));
        let ratio = match (u, p) {
            (Some(u), Some(p)) if u.ops_per_s > 0.0 => format!("{:.2}", p.ops_per_s / u.ops_per_s),
            _ => "-".into(),
        };
        let _ = writeln!(
            w,
            "{:<3} {:>7} {} | {} | {:>11} | {}",
            l.op.name(),
            l.clients,
            cells(u),
            cells(p),
            ratio,
            cells(find(&pair.survivor, l))
        );
    }
}

fn pings(w: &mut String, b: &Bench) {
    let _ = writeln!(w, "\nICMP echo from a client namespace on the hub  (ms: min / p50 / mean / p99, lost of sent)");
    for r in &b.runs {
        for p in &r.pings {
            let what = match p.target.as_str() {
                "198.51.100.10" => "the guest (VM network)",
                "192.0.2.1" => "host-a's kernel (FT network)",
                "192.0.2.2" => "host-b's kernel (FT network)",
                _ => "?",
            };
            let fig = match p.rtt {
                Some(s) => format!(
                    "{} / {} / {} / {}",
                    ms(s.min_us),
                    ms(s.p50_us),
                    ms(s.mean_us),
                    ms(s.p99_us)
                ),
                None => "no reply".into(),
            };
            let _ = writeln!(
                w,
                "  {:<12} {:<15} {:<29} {fig}  lost {}/{}",
                format!("{:?}", r.mode).to_lowercase(),
                p.target,
                what,
                p.lost,
                p.sent
            );
        }
    }
    let _ = writeln!(w, "  (the hosts' kernels answer for the FT link: the harness cannot run ping on a host; the FT channel has no ping of its own —");
    let _ = writeln!(w, "   its ack round trip as the Primary sees it is the timeline's `frame out: sent -> acked` below)");
}

fn timeline(w: &mut String, b: &Bench) {
    let Some(m) = run(b, Mode::Pair).and_then(|r| r.metrics.as_ref()) else {
        return;
    };
    let _ = writeln!(w, "\nPer-request timeline of the pair: the Primary's `ftctl metrics` (ft_request_segment_seconds), sampled requests of all the pair's load phases");
    let _ = writeln!(w, "  {:<45} {:>9} {:>9}", "segment", "p50 ms", "p99 ms");
    let mut rows: Vec<_> = m.segments.iter().collect();
    rows.sort_by_key(|r| {
        ORDER
            .iter()
            .position(|o| *o == r.segment)
            .unwrap_or(ORDER.len())
    });
    for r in rows {
        let f = |v: Option<u64>| v.map_or("-".to_string(), ms);
        let _ = writeln!(
            w,
            "  {:<45} {:>9} {:>9}",
            r.segment,
            f(r.p50_us),
            f(r.p99_us)
        );
    }
    if m.segments.is_empty() {
        let _ = writeln!(w, "  (no segment reported)");
    }
    for (k, v) in &m.counters {
        let _ = writeln!(w, "  {k} = {v}");
    }
}

fn soak(w: &mut String, b: &Bench) {
    let Some(s) = run(b, Mode::Pair).and_then(|r| r.soak.as_ref()) else {
        return;
    };
    let _ = writeln!(
        w,
        "\nSoak: the pair idle {:.0} s, then 4 PUT connections {:.0} s ({} operations); failure timeout {} ms",
        s.idle_s, s.loaded_s, s.loaded_ops, b.failure_timeout_ms
    );
    let _ = writeln!(
        w,
        "  false suspicions (heartbeat, pair, protection lines on both hosts): {} idle, {} loaded",
        s.false_suspicions_idle, s.false_suspicions_loaded
    );
    for l in &s.lines {
        let _ = writeln!(w, "    {l}");
    }
}

fn failover(w: &mut String, b: &Bench) {
    let Some(f) = run(b, Mode::Pair).and_then(|r| r.failover.as_ref()) else {
        return;
    };
    let _ = writeln!(
        w,
        "\nFailover: {}'s QEMU killed (SIGKILL) under a PUT/GET client on one connection",
        f.victim
    );
    let _ = writeln!(
        w,
        "  failure timeout {} ms, heartbeat {} ms",
        f.failure_timeout_ms, f.heartbeat_interval_ms
    );
    let _ = writeln!(w, "  {} live {} ms after the kill; client's longest pause {} ms ({:.2} x the timeout); {} replies before the kill, {} in all", f.survivor, f.go_live_ms, f.client_pause_ms, f.client_pause_ms as f64 / f.failure_timeout_ms as f64, f.replies_before, f.replies);
}

fn model(w: &mut String, b: &Bench) {
    if b.model.is_empty() {
        return;
    }
    let _ = writeln!(w, "\nMODEL (not a measurement): FT cost per request = k x FT-link RTT + the rest; one client, medians");
    let _ = writeln!(w, "  k: FT-link round trips a request waits for by design (each held output waits for an ack): PUT 2 (disk write, reply), GET 1 (reply)");
    let _ = writeln!(w, "  FT-link RTT: median ICMP echo to the hosts' kernels on the FT network (pair run); the rest: FT cost - k x RTT, kept as measured");
    let _ = writeln!(w, "  {:<4} {:>9} {:>9} {:>9} {:>2} {:>8} {:>9} {:>9} {:>9} {:>7} | at {REAL_RTT_US:.0} us RTT: {:>9} {:>7}", "op", "unprot", "pair", "FT cost", "k", "RTT", "chan.ack", "held", "rest", "ratio", "FT cost", "ratio");
    for p in &b.model {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", v / 1000.0));
        let _ = writeln!(
            w,
            "  {:<4} {:>9.2} {:>9.2} {:>9.2} {:>2} {:>8.2} {:>9} {:>9} {:>9.2} {:>7.3} | {:>22.2} {:>7.3}",
            p.op.name(),
            p.unprotected_p50_us / 1000.0,
            p.pair_p50_us / 1000.0,
            p.ft_cost_us / 1000.0,
            p.k,
            p.link_rtt_us / 1000.0,
            f(p.channel_rtt_us),
            f(p.held_us),
            p.rest_us / 1000.0,
            p.measured_ratio,
            p.predicted_cost_us / 1000.0,
            p.predicted_ratio
        );
    }
    let _ = writeln!(w, "  (ms; ratio = unprotected p50 / pair p50 latency, which for one sequential client is the ops/s ratio; chan.ack = the channel's");
    let _ = writeln!(w, "   own ack round trip, held = the request's outputs held by the Output Rule, both timeline medians over all pair phases.");
    let _ = writeln!(w, "   The prediction keeps the rest, which on real hosts would shrink too, and the unprotected latency of TCG: read it as");
    let _ = writeln!(
        w,
        "   what the link alone would buy, not as the ratio real hardware would show.)"
    );
}
