//! The live-transfer section's table (one row per run of `respawn_live.rs`), each run's rounds
//! and pause parts, and a wire-time estimate for 10 GbE labelled as such.

use std::time::Duration;

use crate::respawn::LINK_BYTES_PER_SEC;
use crate::respawn_live::{LiveRun, MEM_MIB, WARMUP, WORKING_SET_MIB};

const HEADER: [&str; 10] = [
    "asked p/ms",
    "reached p/ms free/pre-copy",
    "rounds",
    "stop reason",
    "pages sent (x mem)",
    "bytes sent (% mem)",
    "final pages",
    "pause",
    "total (pre-copy)",
    "sha256 equal",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn cells(r: &LiveRun) -> [String; 10] {
    let o = &r.out;
    let pages = r.memory_bytes / 4096;
    let reason = o
        .stats
        .stop_reason
        .map_or_else(|| "-".into(), |s| format!("{s:?}"));
    [
        r.rate.to_string(),
        format!("{:.0} / {:.0}", r.reached_free, r.reached_precopy),
        format!("{} + final", o.stats.rounds.saturating_sub(1)),
        reason,
        format!(
            "{} ({:.2}x)",
            o.stats.pages_sent,
            o.stats.pages_sent as f64 / pages as f64
        ),
        format!(
            "{:.1} MiB ({:.1}%)",
            mib(o.bytes_sent),
            o.bytes_sent as f64 * 100.0 / r.memory_bytes as f64
        ),
        o.stats.final_round_pages.to_string(),
        format!("{:.1} ms", ms(o.pause)),
        format!("{:.0} ms ({:.0})", ms(o.total), ms(o.precopy)),
        if o.sender_sha256 == o.receiver_sha256 {
            "yes".into()
        } else {
            "NO".into()
        },
    ]
}

fn print_table(table: &[[String; 10]]) {
    let width = |i: usize| {
        table
            .iter()
            .map(|c| c[i].chars().count())
            .chain([HEADER[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADER.len()).map(width).collect();
    let line = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{}{s}",
                    " ".repeat(widths[i].saturating_sub(s.chars().count()))
                )
            })
            .collect();
        println!("{}", parts.join(" | "));
    };
    line(&HEADER.map(String::from));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("{}", rule.join("-+-"));
    for c in table {
        line(c);
    }
}

/// Prints the table, then per run its rounds, its pause and the estimate.
pub fn print(runs: &[LiveRun]) {
    println!();
    println!(
        "respawn live transfer on this host's KVM: reference guest mode=dirty, {MEM_MIB} MiB, \
         working set {WORKING_SET_MIB} MiB; real Sender/Receiver machines and codec in one \
         process (no socket, no encryption), stop-and-copy at <= 1 MiB left (source.rs)"
    );
    let table: Vec<[String; 10]> = runs.iter().map(cells).collect();
    print_table(&table);
    for r in runs {
        let o = &r.out;
        let rounds: Vec<String> = o
            .rounds
            .iter()
            .map(|x| {
                format!(
                    "r{} {} pages ({} non-zero, {:.2} MiB, {:.1} ms)",
                    x.round,
                    x.pages,
                    x.nonzero,
                    mib(x.bytes),
                    ms(x.time)
                )
            })
            .collect();
        let parts: Vec<String> = o
            .pause_parts
            .iter()
            .map(|(what, d)| format!("{what} {:.2} ms", ms(*d)))
            .collect();
        println!("  rate {}: {}", r.rate, rounds.join("; "));
        if (r.reached_free as u64) < r.rate * 9 / 10 {
            println!(
                "    the guest did not reach {} pages/ms: it wrote {:.0} (dirty log off), {:.0} \
                 (on); its vCPU is the limit here (flat out, one exit per 256 pages)",
                r.rate, r.reached_free, r.reached_precopy
            );
        }
        println!(
            "    pause {:.2} ms: {}; request to pause {:.2} ms (guest still running); \
             SenderStats.paused_ms {} (see below)",
            ms(o.pause),
            parts.join(", "),
            ms(o.reach_pause),
            o.stats.paused_ms
        );
        let last = o.rounds.last().map_or(0, |x| x.bytes);
        println!(
            "    ESTIMATE (computed, not measured): on 10 GbE ({:.2} GB/s payload) all bytes \
             sent take {:.0} ms on the wire, the final round's {:.2} MiB {:.2} ms",
            LINK_BYTES_PER_SEC / 1e9,
            o.bytes_sent as f64 / LINK_BYTES_PER_SEC * 1e3,
            mib(last),
            last as f64 / LINK_BYTES_PER_SEC * 1e3
        );
    }
    println!(
        "  reached = pages/ms the guest wrote (its own counter in guest memory): free = over \
         {} ms before the transfer, dirty log off; pre-copy = from the transfer's start to the \
         pause, dirty log on",
        WARMUP.as_millis()
    );
    println!(
        "  rounds = pre-copy rounds (round 0 = all memory) + the final round in the pause; \
         bytes sent = every encoded transfer message (zero pages travel as no bytes)"
    );
    println!(
        "  pause = the stop-and-copy on the vCPU thread: final dirty pages read and sent, \
         save_state, Switch (the receiver's digest check and load_state run inside it, on the \
         same thread), Restored, dirty log stopped; not included: the lockstep log's restart \
         and the pairing, the socket"
    );
    println!(
        "  total = Start to the end of the pause; sender and receiver work share this thread \
         (no link), so it is CPU time of both sides, not a network transfer time"
    );
    println!(
        "  SenderStats.paused_ms: source.rs's driver gives the sender a Tick only after an \
         event, so the Restored that ends the pause comes before the clock moves and the stat \
         reads ~0 (source.rs reports its own measured pause instead)"
    );
    println!(
        "  sha256 equal = full-memory SHA-256 of the sender (taken in the pause, outside the \
         measured part) and of the receiver VM after Restored"
    );
}
