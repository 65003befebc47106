//! The lockstep log: what the Primary records and the Secondary replays.
//!
//! A log is a sequence of records, numbered by `seq` from 0 without gaps. Each
//! record is self-delimiting and self-checking, so a batch of them can be cut
//! anywhere on a record boundary, and a corrupted or truncated record is caught
//! before anything from it is applied.
//!
//! # Wire format (version 1), all integers little-endian
//!
//! | offset | size | field                                               |
//! |-------:|-----:|-----------------------------------------------------|
//! | 0      | 1    | magic `0xF7`                                        |
//! | 1      | 1    | format version, `1`                                 |
//! | 2      | 1    | kind (table below)                                  |
//! | 3      | 1    | reserved, must be 0                                 |
//! | 4      | 4    | `len`: payload length in bytes (≤ [`MAX_PAYLOAD`])  |
//! | 8      | 8    | `seq`: record sequence number                       |
//! | 16     | 8    | `n`: exit index the record belongs to               |
//! | 24     | len  | payload                                             |
//! | 24+len | 4    | CRC-32C of bytes `0 .. 24+len`                      |
//!
//! | kind | name            | payload                                                        |
//! |-----:|-----------------|----------------------------------------------------------------|
//! | 1    | `Events`        | postcard `Vec<InputEvent>`: async events delivered at `n`      |
//! | 2    | `Time`          | postcard `TimeRead`: a synchronous time read at `n`            |
//! | 3    | `Check`         | `rip` u64, `gpr_hash` u64: divergence check after exit `n`     |
//! | 4    | `Outputs`       | `count` u32, `digest` u64: the outputs emitted since the last  |
//! |      |                 | `Outputs` record, checked by the Secondary at `n`              |
//! | 5    | `MemoryDigest`  | `at` u64: both sides hash guest memory at exit `at` (tests)    |
//! | 6    | `End`           | none: the Primary stopped the VM at `n` (orderly end)          |
//! | 7    | `Mark`          | none: the Primary's input call at `n` returned nothing (sent   |
//! |      |                 | when it pauses, so the Secondary need not wait for a later one)|
//!
//! postcard's wire format is specified and stable (postcard 1.x); it is used
//! only inside the length- and CRC-delimited payload.

use serde::{Deserialize, Serialize};

use crate::io::{ExitIndex, InputEvent, TimeRead};

pub const MAGIC: u8 = 0xF7;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
pub const TRAILER_LEN: usize = 4;
/// Largest payload accepted: a frame or a block read is far below this.
pub const MAX_PAYLOAD: u32 = 8 << 20;

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Events(Vec<InputEvent>),
    Time(TimeRead),
    Check { rip: u64, gpr_hash: u64 },
    Outputs { count: u32, digest: u64 },
    MemoryDigest { at: ExitIndex },
    End,
    Mark,
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Events(_) => 1,
            Body::Time(_) => 2,
            Body::Check { .. } => 3,
            Body::Outputs { .. } => 4,
            Body::MemoryDigest { .. } => 5,
            Body::End => 6,
            Body::Mark => 7,
        }
    }

    /// Short name for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Events(_) => "events",
            Body::Time(_) => "time",
            Body::Check { .. } => "check",
            Body::Outputs { .. } => "outputs",
            Body::MemoryDigest { .. } => "memory-digest",
            Body::End => "end",
            Body::Mark => "mark",
        }
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub n: ExitIndex,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("record at byte {offset}: bad magic {got:#04x}")]
    Magic { offset: usize, got: u8 },
    #[error(
        "record at byte {offset}: unsupported format version {got} (this build reads {VERSION})"
    )]
    Version { offset: usize, got: u8 },
    #[error("record at byte {offset}: unknown kind {got}")]
    Kind { offset: usize, got: u8 },
    #[error("record at byte {offset}: reserved byte is {got:#04x}, not 0")]
    Reserved { offset: usize, got: u8 },
    #[error("record at byte {offset}: payload length {len} exceeds {MAX_PAYLOAD}")]
    TooLong { offset: usize, len: u32 },
    #[error("record at byte {offset}: truncated ({have} of {need} bytes)")]
    Truncated {
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("record seq {seq} at byte {offset}: checksum {got:#010x}, expected {expected:#010x}")]
    Checksum {
        offset: usize,
        seq: u64,
        expected: u32,
        got: u32,
    },
    #[error("record seq {seq} at byte {offset}: malformed {kind} payload: {reason}")]
    Payload {
        offset: usize,
        seq: u64,
        kind: &'static str,
        reason: String,
    },
    #[error("record at byte {offset}: seq {got}, expected {expected}")]
    Sequence {
        offset: usize,
        expected: u64,
        got: u64,
    },
}

/// Appends the encoding of `rec` to `out` and returns its length.
pub fn encode(rec: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[MAGIC, VERSION, rec.body.kind(), 0, 0, 0, 0, 0]);
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.n.to_le_bytes());
    match &rec.body {
        Body::Events(evs) => {
            let bytes = postcard::to_allocvec(evs).expect("events always serialize");
            out.extend_from_slice(&bytes);
        }
        Body::Time(t) => {
            let bytes = postcard::to_allocvec(t).expect("time reads always serialize");
            out.extend_from_slice(&bytes);
        }
        Body::Check { rip, gpr_hash } => {
            out.extend_from_slice(&rip.to_le_bytes());
            out.extend_from_slice(&gpr_hash.to_le_bytes());
        }
        Body::Outputs { count, digest } => {
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&digest.to_le_bytes());
        }
        Body::MemoryDigest { at } => out.extend_from_slice(&at.to_le_bytes()),
        Body::End | Body::Mark => {}
    }
    let len = out.len() - start - HEADER_LEN;
    assert!(len <= MAX_PAYLOAD as usize, "record payload {len} too long");
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes one record at the start of `buf` (which begins at byte `offset` of
/// its batch, for error messages). Returns the record and its encoded length.
pub fn decode(buf: &[u8], offset: usize) -> Result<(Record, usize), LogError> {
    if buf.len() < HEADER_LEN {
        return Err(LogError::Truncated {
            offset,
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    if buf[0] != MAGIC {
        return Err(LogError::Magic {
            offset,
            got: buf[0],
        });
    }
    if buf[1] != VERSION {
        return Err(LogError::Version {
            offset,
            got: buf[1],
        });
    }
    let kind = buf[2];
    if !(1..=7).contains(&kind) {
        return Err(LogError::Kind { offset, got: kind });
    }
    if buf[3] != 0 {
        return Err(LogError::Reserved {
            offset,
            got: buf[3],
        });
    }
    let len = u32_at(buf, 4);
    if len > MAX_PAYLOAD {
        return Err(LogError::TooLong { offset, len });
    }
    let total = HEADER_LEN + len as usize + TRAILER_LEN;
    if buf.len() < total {
        return Err(LogError::Truncated {
            offset,
            need: total,
            have: buf.len(),
        });
    }
    let seq = u64_at(buf, 8);
    let n = u64_at(buf, 16);
    let body_end = HEADER_LEN + len as usize;
    let expected = u32_at(buf, body_end);
    let got = crc32c::crc32c(&buf[..body_end]);
    if got != expected {
        return Err(LogError::Checksum {
            offset,
            seq,
            expected,
            got,
        });
    }
    let p = &buf[HEADER_LEN..body_end];
    let bad = |kind: &'static str, reason: String| LogError::Payload {
        offset,
        seq,
        kind,
        reason,
    };
    let fixed = |kind: &'static str, want: usize| {
        if p.len() == want {
            Ok(())
        } else {
            Err(bad(kind, format!("{} bytes, expected {want}", p.len())))
        }
    };
    let body = match kind {
        1 => {
            let (evs, rest) = postcard::take_from_bytes::<Vec<InputEvent>>(p)
                .map_err(|e| bad("events", e.to_string()))?;
            if !rest.is_empty() {
                return Err(bad("events", format!("{} trailing bytes", rest.len())));
            }
            Body::Events(evs)
        }
        2 => {
            let (t, rest) =
                postcard::take_from_bytes::<TimeRead>(p).map_err(|e| bad("time", e.to_string()))?;
            if !rest.is_empty() {
                return Err(bad("time", format!("{} trailing bytes", rest.len())));
            }
            Body::Time(t)
        }
        3 => {
            fixed("check", 16)?;
            Body::Check {
                rip: u64_at(p, 0),
                gpr_hash: u64_at(p, 8),
            }
        }
        4 => {
            fixed("outputs", 12)?;
            Body::Outputs {
                count: u32_at(p, 0),
                digest: u64_at(p, 4),
            }
        }
        5 => {
            fixed("memory-digest", 8)?;
            Body::MemoryDigest { at: u64_at(p, 0) }
        }
        6 => {
            fixed("end", 0)?;
            Body::End
        }
        _ => {
            fixed("mark", 0)?;
            Body::Mark
        }
    };
    Ok((Record { seq, n, body }, total))
}

/// Decodes a whole batch whose first record must carry `first_seq` and whose
/// records must be numbered without gaps. All or nothing: on any error no
/// record of the batch is returned.
pub fn decode_batch(buf: &[u8], first_seq: u64) -> Result<Vec<Record>, LogError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let (rec, len) = decode(&buf[off..], off)?;
        let expected = first_seq + out.len() as u64;
        if rec.seq != expected {
            return Err(LogError::Sequence {
                offset: off,
                expected,
                got: rec.seq,
            });
        }
        out.push(rec);
        off += len;
    }
    Ok(out)
}

/// 64-bit FNV-1a, used for the register and output digests: tiny, stable,
/// identical on both sides. (Divergence detection, not an adversary: the
/// channel already authenticates every byte.)
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes())
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{BlockStatus, TimeSource};
    use proptest::prelude::*;

    fn samples() -> Vec<Record> {
        let bodies = vec![
            Body::Events(vec![
                InputEvent::TimerTick,
                InputEvent::Frame {
                    dev: 0,
                    data: vec![1, 2, 3],
                },
                InputEvent::BlockDone {
                    dev: 0,
                    id: 7,
                    status: BlockStatus::Ok,
                    data: vec![9; 512],
                },
                InputEvent::ConsoleIn(b"x".to_vec()),
            ]),
            Body::Time(TimeRead {
                source: TimeSource::MonotonicNs,
                value: 123_456_789,
            }),
            Body::Check {
                rip: 0x20_1000,
                gpr_hash: 0xdead_beef,
            },
            Body::Outputs {
                count: 3,
                digest: 42,
            },
            Body::MemoryDigest { at: 1_000_000 },
            Body::End,
            Body::Mark,
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                seq: 10 + i as u64,
                n: 100 * i as u64,
                body,
            })
            .collect()
    }

    fn batch() -> Vec<u8> {
        let mut buf = Vec::new();
        for r in samples() {
            encode(&r, &mut buf);
        }
        buf
    }

    #[test]
    fn every_kind_round_trips_in_a_batch() {
        assert_eq!(decode_batch(&batch(), 10).unwrap(), samples());
    }

    #[test]
    fn a_gap_or_wrong_first_seq_is_refused() {
        assert!(matches!(
            decode_batch(&batch(), 11),
            Err(LogError::Sequence {
                expected: 11,
                got: 10,
                ..
            })
        ));
    }

    #[test]
    fn each_header_field_is_checked() {
        let mut one = Vec::new();
        encode(&samples()[2], &mut one);
        let mut m = one.clone();
        m[0] = 0;
        assert!(matches!(decode(&m, 0), Err(LogError::Magic { .. })));
        let mut v = one.clone();
        v[1] = 2;
        assert!(matches!(
            decode(&v, 0),
            Err(LogError::Version { got: 2, .. })
        ));
        let mut k = one.clone();
        k[2] = 9;
        assert!(matches!(decode(&k, 0), Err(LogError::Kind { got: 9, .. })));
        let mut r = one.clone();
        r[3] = 1;
        assert!(matches!(decode(&r, 0), Err(LogError::Reserved { .. })));
        let mut l = one.clone();
        l[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&l, 0), Err(LogError::TooLong { .. })));
        let mut c = one.clone();
        c[30] ^= 1;
        assert!(matches!(decode(&c, 0), Err(LogError::Checksum { .. })));
    }

    #[test]
    fn a_truncated_batch_yields_nothing() {
        let b = batch();
        for cut in [1, 10, 24, b.len() - 1] {
            let err = decode_batch(&b[..cut], 10).unwrap_err();
            assert!(
                matches!(err, LogError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_payload_that_lies_about_its_kind_is_refused_with_a_valid_crc() {
        // A Check record whose payload is one byte short, CRC recomputed.
        let mut buf = vec![MAGIC, VERSION, 3, 0];
        buf.extend_from_slice(&15u32.to_le_bytes());
        buf.extend_from_slice(&[0; 16]);
        buf.extend_from_slice(&[0; 15]);
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let err = decode(&buf, 0).unwrap_err();
        assert!(err.to_string().contains("malformed check payload"), "{err}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), seq in any::<u64>()) {
            let _ = decode_batch(&bytes, seq);
        }

        #[test]
        fn any_single_bit_flip_is_caught(pos in 0usize..400, bit in 0u8..8) {
            let b = batch();
            let pos = pos % b.len();
            let mut m = b.clone();
            m[pos] ^= 1 << bit;
            prop_assert!(decode_batch(&m, 10).is_err());
        }
    }
}
