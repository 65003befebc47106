//! Fuzz target: the fencing region's sector decoders (header, delta lease,
//! Disk Paxos block) and the Disk Paxos state machine fed with sectors read
//! "from disk" that the input chooses.
//!
//! - Decoders never panic, and whatever decodes re-encodes to the same bytes.
//! - The input is also cut into 64-byte records, each turned into a sector:
//!   raw bytes (padded), or a well-formed block with fuzzer-chosen fields (so
//!   the CRC does not stop the input at the door). A proposer of a 3-host
//!   cluster is driven with them as read results (writes succeed); it must
//!   never panic and may only decide a real host.
#![no_main]

use fencing::layout::{decode_header, Geometry, LeaseRecord, PaxosBlock, SECTOR};
use fencing::paxos::{IoResult, Op, Outcome, Poll, Proposer};
use libfuzzer_sys::fuzz_target;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    let end = (at + 8).min(b.len());
    if at < end {
        x[..end - at].copy_from_slice(&b[at..end]);
    }
    u64::from_le_bytes(x)
}

fn sector_from(rec: &[u8]) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    match rec.first().copied().unwrap_or(0) % 3 {
        0 => {
            let n = rec.len().min(SECTOR);
            s[..n].copy_from_slice(&rec[..n]);
            s
        }
        _ => PaxosBlock {
            host: (u64_at(rec, 1) % 4) as u32,
            vm: (u64_at(rec, 2) % 2) as u32,
            generation: u64_at(rec, 3) % 8,
            // Small values half the time, so they compete with real ballots.
            mbal: if rec.len() > 40 && rec[40] & 1 == 0 { u64_at(rec, 11) % 32 } else { u64_at(rec, 11) },
            bal: if rec.len() > 41 && rec[41] & 1 == 0 { u64_at(rec, 19) % 32 } else { u64_at(rec, 19) },
            inp: u64_at(rec, 27) % 5,
            owner: u64_at(rec, 35) % 5,
        }
        .encode(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut raw = [0u8; SECTOR];
    let n = data.len().min(SECTOR);
    raw[..n].copy_from_slice(&data[..n]);
    for b in [data, &raw[..]] {
        if let Ok(h) = decode_header(b) {
            let g = h.geometry;
            if h.version == fencing::layout::VERSION && g.ring > 0 {
                assert_eq!(&g.encode_header()[..], b);
            }
        }
        if let Ok(l) = LeaseRecord::decode(b) {
            assert_eq!(&l.encode()[..], b);
        }
        if let Ok(p) = PaxosBlock::decode(b) {
            assert_eq!(&p.encode()[..], b);
        }
    }

    let geo = Geometry::new(["a", "b", "c"], ["kv"], 4);
    let mut sectors = data.chunks(64).map(sector_from);
    let (mut p, mut queue) = Proposer::new(geo, 1, 0, 5);
    for _ in 0..64 {
        let Some(req) = queue.pop() else {
            queue = p.retry();
            continue;
        };
        let result = match req.op {
            Op::Read { .. } => match sectors.next() {
                Some(s) => IoResult::Read(Box::new(s)),
                None => return,
            },
            Op::Write { .. } => IoResult::Written,
        };
        match p.complete(req.token, result) {
            Poll::Io(more) => queue.extend(more),
            Poll::Wait | Poll::Retry => {}
            Poll::Done(Outcome::Decided { owner }) => {
                assert!(owner < 3);
                return;
            }
            Poll::Done(_) => return,
        }
    }
});
