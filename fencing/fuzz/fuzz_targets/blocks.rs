//! Fuzz target: the fencing region's block decoders (layout 2: header,
//! delta lease, Disk Paxos block at 512 and 4096 bytes) and the Disk Paxos
//! state machine fed with blocks read "from disk" that the input chooses.
//!
//! - Decoders never panic, and whatever decodes re-encodes to the same bytes.
//! - `view_paxos` classifies every block as blank-empty, valid or corrupt
//!   without panicking, and never calls a non-blank undecodable block empty.
//! - The input is also cut into 64-byte records, each turned into a block:
//!   raw bytes (padded), or a well-formed block with fuzzer-chosen fields (so
//!   the CRC does not stop the input at the door). A proposer of a 3-host
//!   cluster is driven with them as read results (writes succeed); it must
//!   never panic and may only decide a real host (a corrupt read is read
//!   again or ends the run).
#![no_main]

use fencing::layout::{
    decode_header, valid_block_size, view_paxos, Block, Geometry, LeaseRecord, PaxosBlock,
    SlotView,
};
use fencing::paxos::{IoResult, Op, Outcome, Poll, Proposer};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    let end = (at + 8).min(b.len());
    if at < end {
        x[..end - at].copy_from_slice(&b[at..end]);
    }
    u64::from_le_bytes(x)
}

fn block_from(rec: &[u8]) -> Block {
    let mut s = vec![0u8; SECTOR].into_boxed_slice();
    match rec.first().copied().unwrap_or(0) % 3 {
        0 => {
            let n = rec.len().min(SECTOR);
            s[..n].copy_from_slice(&rec[..n]);
            s
        }
        _ => PaxosBlock {
            host: (u64_at(rec, 1) % 4) as u32,
            vm: (u64_at(rec, 2) % 2) as u32,
            generation: u64_at(rec, 3) % 12,
            // Small values half the time, so they compete with real ballots.
            mbal: if rec.len() > 40 && rec[40] & 1 == 0 { u64_at(rec, 11) % 32 } else { u64_at(rec, 11) },
            bal: if rec.len() > 41 && rec[41] & 1 == 0 { u64_at(rec, 19) % 32 } else { u64_at(rec, 19) },
            inp: u64_at(rec, 27) % 5,
            owner: u64_at(rec, 35) % 5,
            inp_config: u64_at(rec, 43) % 3,
            owner_config: u64_at(rec, 51) % 3,
        }
        .encode(SECTOR),
    }
}

fn decoders(b: &[u8]) {
    if let Ok(h) = decode_header(b) {
        assert_eq!(&h.geometry.encode_header()[..], b);
    }
    if let Ok(l) = LeaseRecord::decode(b) {
        assert_eq!(&l.encode(b.len())[..], b);
    }
    if let Ok(p) = PaxosBlock::decode(b) {
        assert_eq!(&p.encode(b.len())[..], b);
    }
    // Only a block of a valid size can be blank (the I/O never returns
    // another length).
    let blank = valid_block_size(b.len() as u64) && b.iter().all(|&x| x == 0);
    for generation in [1, 5, 9] {
        match view_paxos(b, 1, 0, generation, 4) {
            SlotView::Empty => assert!(blank || PaxosBlock::decode(b).is_ok()),
            SlotView::Corrupt(_) => assert!(!blank),
            SlotView::Block(_) | SlotView::Later(_) => assert!(PaxosBlock::decode(b).is_ok()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // As is, and zero-padded to each block size.
    decoders(data);
    for size in [512usize, 4096] {
        let mut raw = vec![0u8; size];
        let n = data.len().min(size);
        raw[..n].copy_from_slice(&data[..n]);
        decoders(&raw);
    }

    let geo = Geometry::new(["a", "b", "c"], ["kv"], 4, SECTOR as u32);
    let mut blocks = data.chunks(64).map(block_from);
    let (mut p, mut queue) = Proposer::new(geo, 1, 0, 5, 1);
    for _ in 0..64 {
        let Some(req) = queue.pop() else {
            queue = p.retry();
            continue;
        };
        let result = match req.op {
            Op::Read { block } => match blocks.next() {
                Some(s) => {
                    assert!(geo.paxos_position(block).is_some(), "reads only Paxos blocks");
                    IoResult::Read(s)
                }
                None => return,
            },
            Op::Write { .. } => IoResult::Written,
        };
        match p.complete(req.token, result) {
            Poll::Io(more) => queue.extend(more),
            Poll::Wait | Poll::Retry => {}
            Poll::Done(Outcome::Decided { owner, .. }) => {
                assert!(owner < 3);
                return;
            }
            Poll::Done(_) => return,
        }
    }
});
