//! Checkpoint epochs without a VM: how fast an epoch of dirty pages is
//! delta-encoded, encoded into pieces, and reassembled + verified + applied
//! by the Secondary's receiver; bytes per epoch raw vs delta. Two page
//! patterns: every dirty page rewritten (raw) and 8 words changed per page
//! (what a delta is for).

use std::time::{Duration, Instant};

use ftvmm::checkpoint::delta;
use ftvmm::checkpoint::epoch::{encode_pieces, Epoch, Page, PageData, PAGE_SIZE};
use ftvmm::checkpoint::receiver::Receiver;

/// Dirty pages per measured epoch (16 MiB).
pub const PAGES: u64 = 4096;

pub struct Run {
    pub pattern: &'static str,
    pub epoch_bytes: usize,
    pub encode: Duration,
    pub apply: Duration,
}

fn rnd(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

pub fn run() -> Vec<Run> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let base: Vec<u8> = (0..PAGES as usize * PAGE_SIZE)
        .map(|_| rnd(&mut seed) as u8)
        .collect();
    let mut out = Vec::new();
    for (pattern, sparse) in [("page rewritten", false), ("8 words changed", true)] {
        let mut new = base.clone();
        for page in new.chunks_mut(PAGE_SIZE) {
            if sparse {
                for _ in 0..8 {
                    let w = (rnd(&mut seed) % 512) as usize * 8;
                    page[w..w + 8].copy_from_slice(&rnd(&mut seed).to_le_bytes());
                }
            } else {
                page.iter_mut().for_each(|b| *b = rnd(&mut seed) as u8);
            }
        }
        let t = Instant::now();
        let pages: Vec<Page> = (0..PAGES)
            .map(|gfn| {
                let r = gfn as usize * PAGE_SIZE..(gfn as usize + 1) * PAGE_SIZE;
                let data = match delta::encode(&base[r.clone()], &new[r.clone()], PAGE_SIZE / 2) {
                    Some(d) => PageData::Delta(d),
                    None => PageData::Raw(new[r].to_vec()),
                };
                Page { gfn, data }
            })
            .collect();
        let e = Epoch {
            number: 1,
            generation: 1,
            pages,
            machine: vec![0; 15_000],
            ..Default::default()
        };
        let pieces = encode_pieces(&e).expect("the bench epoch encodes");
        let encode = t.elapsed();
        let mut rx = Receiver::new(1, base.clone(), 0);
        let t = Instant::now();
        for p in &pieces {
            rx.on_piece(p).expect("the bench epoch applies");
        }
        let apply = t.elapsed();
        assert!(rx.memory() == &new, "applied memory equals the Primary's");
        out.push(Run {
            pattern,
            epoch_bytes: pieces.iter().map(Vec::len).sum(),
            encode,
            apply,
        });
    }
    out
}

pub fn rows(runs: &[Run]) -> Vec<(String, String, String)> {
    let mib = (PAGES as usize * PAGE_SIZE) as f64 / (1 << 20) as f64;
    runs.iter()
        .flat_map(|r| {
            [
                (
                    format!("checkpoint epoch bytes, {}", r.pattern),
                    format!("{:.2} MiB", r.epoch_bytes as f64 / (1 << 20) as f64),
                    format!("{PAGES} dirty pages ({mib:.0} MiB) + 15 KB machine state"),
                ),
                (
                    format!("checkpoint encode, {}", r.pattern),
                    format!("{:.0} MiB/s", mib / r.encode.as_secs_f64()),
                    "delta or raw per page + pieces + SHA-256 (Primary, guest running)".into(),
                ),
                (
                    format!("checkpoint apply, {}", r.pattern),
                    format!("{:.0} MiB/s", mib / r.apply.as_secs_f64()),
                    "reassemble + SHA-256 + decode + apply (Secondary)".into(),
                ),
            ]
        })
        .collect()
}
