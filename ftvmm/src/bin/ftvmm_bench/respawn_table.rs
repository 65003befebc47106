//! The respawn section's table (medians of `respawn.rs`'s runs) and the stop-and-copy pause
//! estimate for a 10 GbE link, labelled as an estimate.

use std::time::Duration;

use crate::respawn::{Row, Run, DIRTY_EXITS, FILL_FROM, FINAL_PAGES, LINK_BYTES_PER_SEC, RTT};
use crate::stats::median;

const HEADER: [&str; 11] = [
    "size",
    "dirty log start/read",
    "save_state",
    "state bytes",
    "round-0 send (MB/s)",
    "bytes sent",
    "page-hash digest",
    "full sha256",
    "ratio",
    "receive+write",
    "load_state",
];

/// Median over the runs of `f` (NaN for no runs).
fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cells(row: &Row) -> [String; 11] {
    let r = &row.runs;
    let mem = row.mib as f64 * 1048576.0;
    let send = med(r, |x| ms(x.send));
    let mbps = med(r, |x| mem / x.send.as_secs_f64() / 1e6);
    [
        format!("{} MiB {}", row.mib, row.variant),
        format!(
            "{:.0} / {:.0} µs",
            med(r, |x| us(x.dirty_start)),
            med(r, |x| us(x.dirty_read))
        ),
        format!("{:.0} µs", med(r, |x| us(x.save_state))),
        format!("{:.0}", med(r, |x| x.state_bytes as f64)),
        format!("{send:.1} ms ({mbps:.0})"),
        format!("{:.1} MiB", med(r, |x| x.bytes_sent as f64) / 1048576.0),
        format!("{:.0} µs", med(r, |x| us(x.digest))),
        format!("{:.1} ms", med(r, |x| ms(x.full_sha))),
        format!(
            "{:.0}x",
            med(r, |x| x.full_sha.as_secs_f64() / x.digest.as_secs_f64())
        ),
        format!("{:.1} ms", med(r, |x| ms(x.receive))),
        format!("{:.0} µs", med(r, |x| us(x.load_state))),
    ]
}

/// Prints the table, the notes and the pause estimates.
pub fn print(rows: &[Row], notes: &[String], runs: usize) {
    println!();
    println!(
        "respawn stop-and-copy parts on this host's KVM: medians of {runs} runs \
         (no channel: no Noise encryption, no socket)"
    );
    let table: Vec<[String; 11]> = rows.iter().map(cells).collect();
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
                let pad = widths[i].saturating_sub(s.chars().count());
                if i == 0 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        println!("{}", parts.join(" | "));
    };
    line(&HEADER.map(String::from));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for c in &table {
        line(c);
    }
    for row in rows {
        let r = &row.runs;
        println!(
            "  {} MiB {}: {:.0} pages dirty after {DIRTY_EXITS} exits, {:.0} non-zero pages sent; \
             final round of the top {FINAL_PAGES} pages again: sender {:.1} ms, receiver {:.1} ms; \
             SwitchState postcard encode / decode {:.0} / {:.0} µs",
            row.mib,
            row.variant,
            med(r, |x| x.dirty_pages as f64),
            med(r, |x| x.nonzero_pages as f64),
            med(r, |x| ms(x.final_send)),
            med(r, |x| ms(x.final_receive)),
            med(r, |x| us(x.state_encode)),
            med(r, |x| us(x.state_decode)),
        );
    }
    println!(
        "  booted = the guest as it runs (mostly zero pages, which travel as no bytes); filled = \
         every zero page from {} MiB up then written with pseudo-random bytes by the bench",
        FILL_FROM >> 20
    );
    println!(
        "  booted rows: the sender reads mostly never-written memory (the host's shared zero \
         page, cache-hot); every run receives into a freshly built VM, so receive+write includes \
         first-touch page faults (zero pages are written as 4 KiB of zeros)"
    );
    println!(
        "  round-0 send = read page + zero check + PageHashes::set + encode Pages (source.rs); \
         receive+write = decode + Receiver writes into the second VM + its page hashes (target.rs)"
    );
    for n in notes {
        println!("  {n}");
    }
    estimates(rows);
}

/// The pause estimate per size: wire time of the final pages plus the measured fixed parts,
/// and the same with both sides' per-page CPU of the filled row's final round added
/// unoverlapped.
fn estimates(rows: &[Row]) {
    println!(
        "ESTIMATE (computed from the medians above, not measured) of the stop-and-copy pause on \
         10 GbE ({:.2} GB/s payload, RTT {} µs); fixed part = save_state + encode + page-hash \
         digest + the receiver's Switch (its digest) + decode + load_state + RTT; not included: \
         the log restart and pairing, encryption, the socket",
        LINK_BYTES_PER_SEC / 1e9,
        RTT.as_micros()
    );
    for row in rows.iter().filter(|r| r.variant == "filled") {
        let r = &row.runs;
        let fixed = med(r, |x| {
            (x.save_state
                + x.state_encode
                + x.digest
                + x.switch_rx
                + x.state_decode
                + x.load_state
                + RTT)
                .as_secs_f64()
        });
        let n = FINAL_PAGES as f64;
        let tx = med(r, |x| x.final_send.as_secs_f64()) / n;
        let rx = med(r, |x| x.final_receive.as_secs_f64()) / n;
        let parts: Vec<String> = [256u32, 4096]
            .iter()
            .map(|&n| {
                let wire = f64::from(n) * 4096.0 / LINK_BYTES_PER_SEC;
                format!(
                    "{n} final pages {:.2} ms (wire {:.2}), {:.2} ms with per-page CPU",
                    (wire + fixed) * 1e3,
                    wire * 1e3,
                    (wire + fixed + f64::from(n) * (tx + rx)) * 1e3
                )
            })
            .collect();
        println!(
            "  {} MiB: fixed {:.2} ms; {}; per-page CPU sender {:.2} + receiver {:.2} µs (filled \
             row's final round)",
            row.mib,
            fixed * 1e3,
            parts.join("; "),
            tx * 1e6,
            rx * 1e6
        );
    }
}
