//! The FT on vs off table rows (`ft.rs` runs the pairs): medians over runs, one block per
//! lag-throttle controller.

use std::time::Duration;

use ftvmm::lockstep::primary::Lag;

use crate::ft::{mode_label, FtOptions, FtRun, KvPhase, KvTimes, IDLE_WINDOW, LAG_SAMPLE};
use crate::stats::{median, percentile};

/// The table rows: medians over `runs`.
pub fn rows(runs: &[FtRun], kv_ops: usize, opts: &FtOptions) -> Vec<(String, String, String)> {
    let tag = format!(
        "[{}, lag {} ms] ",
        mode_label(opts),
        opts.lag_limit.as_millis()
    );
    let mut rows = rows_untagged(runs, kv_ops, opts);
    for r in &mut rows {
        r.0 = r.0.replacen("FT ", &format!("FT {tag}"), 1);
    }
    rows
}

fn rows_untagged(runs: &[FtRun], kv_ops: usize, opts: &FtOptions) -> Vec<(String, String, String)> {
    let med = |xs: Vec<f64>| median(&xs).unwrap_or(f64::NAN);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut rows = Vec::new();
    let off = med(runs.iter().map(|r| ms(r.cpu.off)).collect());
    let on = med(runs.iter().map(|r| ms(r.cpu.on)).collect());
    rows.push((
        "FT CPU workload off / on".into(),
        format!("{off:.1} / {on:.1} ms"),
        "same guest and backends, alternating order; on = pair over loopback, console under the Output Rule"
            .into(),
    ));
    rows.push((
        "FT CPU time ratio on / off".into(),
        format!(
            "{:.3}",
            med(runs
                .iter()
                .map(|r| r.cpu.on.as_secs_f64() / r.cpu.off.as_secs_f64())
                .collect())
        ),
        "per-run ratio, median (1.0 = no cost; VMware FT: 1/0.94..1/0.98)".into(),
    ));
    rows.push((
        "FT CPU throttled calls / ms".into(),
        format!(
            "{:.0} / {:.0}",
            med(runs.iter().map(|r| r.cpu.throttled as f64).collect()),
            med(runs.iter().map(|r| r.cpu.throttled_ms as f64).collect())
        ),
        format!(
            "input calls and ms the Primary was slowed past the {} ms lag limit (CPU run)",
            opts.lag_limit.as_millis()
        ),
    ));
    let kvs: Vec<&KvTimes> = runs.iter().filter_map(|r| r.kv.as_ref()).collect();
    if kvs.is_empty() {
        return rows;
    }
    let ops = |total: Duration| kv_ops as f64 / total.as_secs_f64();
    for (name, off_ops, on_ops) in [
        (
            "PUT",
            med(kvs.iter().map(|k| ops(k.off.put_total)).collect()),
            med(kvs.iter().map(|k| ops(k.on.put_total)).collect()),
        ),
        (
            "GET",
            med(kvs.iter().map(|k| ops(k.off.get_total)).collect()),
            med(kvs.iter().map(|k| ops(k.on.get_total)).collect()),
        ),
    ] {
        rows.push((
            format!("FT KV {name} ops/s off / on"),
            format!("{off_ops:.1} / {on_ops:.1}"),
            format!("{kv_ops} sequential {name}s, one TCP connection"),
        ));
        rows.push((
            format!("FT KV {name} throughput ratio on / off"),
            format!("{:.3}", on_ops / off_ops),
            "medians of the same runs (VMware FT: 0.94..0.98)".into(),
        ));
    }
    let p = |f: fn(&KvTimes) -> &KvPhase, q: f64| {
        med(kvs
            .iter()
            .map(|k| percentile(&f(k).put, q).map_or(f64::NAN, ms))
            .collect())
    };
    let (p50_off, p99_off) = (p(|k| &k.off, 50.0), p(|k| &k.off, 99.0));
    let (p50_on, p99_on) = (p(|k| &k.on, 50.0), p(|k| &k.on, 99.0));
    rows.push((
        "FT PUT latency p50 off / on".into(),
        format!("{p50_off:.2} / {p50_on:.2} ms"),
        format!("added by FT: {:+.2} ms", p50_on - p50_off),
    ));
    rows.push((
        "FT PUT latency p99 off / on".into(),
        format!("{p99_off:.2} / {p99_on:.2} ms"),
        format!("added by FT: {:+.2} ms", p99_on - p99_off),
    ));
    let rate = |b: u64, d: Duration| b as f64 / d.as_secs_f64();
    let idle = med(kvs
        .iter()
        .map(|k| rate(k.log.idle_bytes, k.log.idle))
        .collect());
    rows.push((
        "FT log bandwidth, idle guest".into(),
        format!("{:.0} B/s", idle),
        format!(
            "{:.3} Mbit/s; KV guest listening, no requests, {} s (VMware FT: 0.5..1.5 Mbit/s)",
            idle * 8.0 / 1e6,
            IDLE_WINDOW.as_secs()
        ),
    ));
    let load = med(kvs
        .iter()
        .map(|k| rate(k.log.load_bytes, k.log.load))
        .collect());
    rows.push((
        "FT log bandwidth, KV load".into(),
        format!("{:.0} B/s", load),
        format!(
            "{:.3} Mbit/s over the PUT+GET phase (VMware FT: 1.5..18 Mbit/s)",
            load * 8.0 / 1e6
        ),
    ));
    rows.push((
        "FT log bytes per PUT".into(),
        format!(
            "{:.0} B",
            med(kvs
                .iter()
                .map(|k| k.log.put_bytes as f64 / kv_ops as f64)
                .collect())
        ),
        "log bytes during the PUT phase / PUTs".into(),
    ));
    let per_put = |i: usize| {
        med(kvs
            .iter()
            .map(|k| k.log.put_msgs[i] as f64 / kv_ops as f64)
            .collect())
    };
    rows.push((
        "FT records / batches / acks per PUT".into(),
        format!("{:.1} / {:.1} / {:.1}", per_put(0), per_put(1), per_put(2)),
        "during the PUT phase: each batch is one channel message, each ack one back".into(),
    ));
    for (label, pick) in [
        ("records", (|l: &Lag| l.records) as fn(&Lag) -> u64),
        ("bytes", |l: &Lag| l.bytes),
        ("ms", |l: &Lag| l.ms),
    ] {
        let max = med(kvs
            .iter()
            .map(|k| k.log.lag.iter().map(pick).max().unwrap_or(0) as f64)
            .collect());
        let mid = med(kvs
            .iter()
            .map(|k| {
                median(&k.log.lag.iter().map(|l| pick(l) as f64).collect::<Vec<_>>()).unwrap_or(0.0)
            })
            .collect());
        rows.push((
            format!("FT secondary lag, {label}: median / max"),
            format!("{mid:.0} / {max:.0}"),
            format!(
                "PrimaryLog::lag() every {} ms during PUT+GET ({} samples/run)",
                LAG_SAMPLE.as_millis(),
                kvs[0].log.lag.len()
            ),
        ));
    }
    rows.push((
        "FT stalls / throttled calls / throttled ms".into(),
        format!(
            "{:.0} / {:.0} / {:.0}",
            med(kvs.iter().map(|k| k.log.stalls as f64).collect()),
            med(kvs.iter().map(|k| k.log.throttled as f64).collect()),
            med(kvs.iter().map(|k| k.log.throttled_ms as f64).collect())
        ),
        format!(
            "full-window stalls; input calls and ms slowed past the {} ms lag limit (KV run, {:.0} outputs)",
            opts.lag_limit.as_millis(),
            med(kvs.iter().map(|k| k.log.outputs_emitted as f64).collect())
        ),
    ));
    rows
}
