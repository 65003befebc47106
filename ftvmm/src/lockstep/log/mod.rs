//! The lockstep log: what the Primary records and the Secondary replays.
//!
//! A log is a sequence of records, numbered by `seq` from 0 without gaps. Each
//! record is self-delimiting and self-checking, so a batch of them can be cut
//! anywhere on a record boundary, and a corrupted or truncated record is caught
//! before anything from it is applied.
//!
//! What happened at one exit is a [`Body`]. A body whose payload fits
//! [`MAX_PAYLOAD`] is one record; a longer one (a 16 MiB disk read, a burst of
//! completions) is **split**: a head record of the body's kind carrying the
//! first [`MAX_PAYLOAD`] bytes with the `MORE` flag, then `More` records with
//! the next pieces at the following sequence numbers. The Secondary's
//! [`Reader`] puts the pieces back together — across batches, since a batch
//! may end between two pieces — before the replay sees the body.
//!
//! # Rules
//!
//! - One encoding per body: a body that fits one record is never split; every
//!   piece but the last carries exactly [`MAX_PAYLOAD`] bytes and the last at
//!   least one; every piece carries the head's exit `n`. The reader refuses
//!   anything else.
//! - A whole payload is at most [`MAX_BODY`] bytes ([`MAX_BODY_PIECES`]
//!   records). Writing a longer body is an error ([`LogError::BodyTooLong`]),
//!   never a panic; the Primary's recording door hands the vCPU at most that
//!   much per input call ([`events_that_fit`]), so a guest cannot produce one.
//!
//! # Wire format (version 2), all integers little-endian
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! | 0      | 1    | magic `0xF7`                                            |
//! | 1      | 1    | format version, `2`                                     |
//! | 2      | 1    | kind (table below)                                      |
//! | 3      | 1    | flags: bit 0 `MORE` — the payload continues in the next |
//! |        |      | record (a `More` record); other bits must be 0          |
//! | 4      | 4    | `len`: payload length in bytes (≤ [`MAX_PAYLOAD`])      |
//! | 8      | 8    | `seq`: record sequence number                           |
//! | 16     | 8    | `n`: exit index the record belongs to                   |
//! | 24     | len  | payload (the whole body's, or one piece of it)          |
//! | 24+len | 4    | CRC-32C of bytes `0 .. 24+len`                          |
//!
//! | kind | name            | payload of the whole body                                      |
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
//! | 8    | `More`          | the next piece of the payload of the body being split (never a |
//! |      |                 | body of its own; `MORE` set unless it is the last piece)       |
//!
//! Versions: 1 — one record per body, payloads up to 8 MiB, byte 3 reserved
//! (a 16 MiB read could not be recorded); 2 — split bodies, `More`, flags.
//!
//! postcard's wire format is specified and stable (postcard 1.x); it is used
//! only inside the length- and CRC-delimited payload.
//!
//! NOTICE: any change to this format or to [`Body`] requires a version bump.

mod reader;
#[cfg(test)]
mod tests;
mod writer;

use serde::{Deserialize, Serialize};

use crate::io::{ExitIndex, InputEvent, TimeRead};
pub use reader::{decode_batch, Reader, Whole};
pub use writer::{encode, events_that_fit, Encoded};

pub const MAGIC: u8 = 0xF7;
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 24;
pub const TRAILER_LEN: usize = 4;
/// Largest payload of one record; a longer body is split into pieces.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Largest encoded record.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_PAYLOAD as usize + TRAILER_LEN;
/// Largest payload of one whole body, over all its pieces.
pub const MAX_BODY: usize = 32 << 20;
/// Most records one body takes.
pub const MAX_BODY_PIECES: u64 = MAX_BODY.div_ceil(MAX_PAYLOAD as usize) as u64;
/// Most bytes one event adds to an `Events` payload besides its data (the
/// postcard variant tag, device, id, status and data length varints), plus
/// the list's own length prefix. `tests.rs` checks it against the worst case.
pub const EVENT_FRAMING_MAX: usize = 32;

// The largest event a device produces — a read of the largest request, a
// received frame of the largest size — fits one body, so a guest can always
// be handed what it asked for.
const _: () = assert!(crate::virtio::MAX_REQUEST_BYTES as usize + EVENT_FRAMING_MAX <= MAX_BODY);
const _: () = assert!(crate::virtio::MAX_FRAME_LEN + EVENT_FRAMING_MAX <= MAX_BODY);

/// The postcard length prefix of an event list is at most this long.
const LIST_PREFIX_MAX: usize = 10;
const FLAG_MORE: u8 = 1;
const KIND_MORE: u8 = 8;

/// What a record says.
///
/// NOTICE: any change to this enum requires a log format version bump.
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
        kind_name(self.kind())
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "events",
        2 => "time",
        3 => "check",
        4 => "outputs",
        5 => "memory-digest",
        6 => "end",
        7 => "mark",
        _ => "more",
    }
}

/// One log record: a whole body. `seq` is the number of its first record; a
/// body split into `k` pieces takes `seq .. seq + k`.
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
    #[error("record at byte {offset}: unknown flag bits {got:#04x}")]
    Flags { offset: usize, got: u8 },
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
    /// A piece of a split body that does not continue it as the rules say.
    #[error("record seq {seq} at byte {offset}: {reason}")]
    Piece {
        offset: usize,
        seq: u64,
        reason: String,
    },
    #[error("batch starts at record {got}, expected {expected}")]
    Start { expected: u64, got: u64 },
    #[error("batch says {said} records, holds {holds}")]
    Count { said: u32, holds: u64 },
    #[error("batch ends inside the body that record seq {seq} starts")]
    Unfinished { seq: u64 },
    #[error("the log reader refused an earlier batch and reads nothing more")]
    Broken,
    /// Writing: a body the log cannot carry.
    #[error(
        "{kind} body at exit {n} is {len} bytes, more than the log carries ({MAX_BODY} bytes)"
    )]
    BodyTooLong {
        kind: &'static str,
        n: ExitIndex,
        len: usize,
    },
    #[error("{kind} body at exit {n} does not serialize: {reason}")]
    Serialize {
        kind: &'static str,
        n: ExitIndex,
        reason: String,
    },
}

/// One record as read: a whole body's payload or one piece of a split body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    pub seq: u64,
    pub n: ExitIndex,
    pub kind: u8,
    /// The payload continues in the next record.
    pub more: bool,
    pub payload: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the record at the start of `buf` (which begins at byte `offset` of
/// its batch, for error messages): header, length and checksum. Returns the
/// piece and its encoded length.
pub fn decode_piece(buf: &[u8], offset: usize) -> Result<(Piece<'_>, usize), LogError> {
    if buf.len() < HEADER_LEN {
        return Err(LogError::Truncated {
            offset,
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    let (magic, version, kind, flags) = (buf[0], buf[1], buf[2], buf[3]);
    if magic != MAGIC {
        return Err(LogError::Magic { offset, got: magic });
    }
    if version != VERSION {
        return Err(LogError::Version {
            offset,
            got: version,
        });
    }
    if !(1..=KIND_MORE).contains(&kind) {
        return Err(LogError::Kind { offset, got: kind });
    }
    if flags & !FLAG_MORE != 0 {
        return Err(LogError::Flags { offset, got: flags });
    }
    let len = u32_at(buf, 4);
    if len > MAX_PAYLOAD {
        return Err(LogError::TooLong { offset, len });
    }
    let body_end = HEADER_LEN + len as usize;
    let total = body_end + TRAILER_LEN;
    if buf.len() < total {
        return Err(LogError::Truncated {
            offset,
            need: total,
            have: buf.len(),
        });
    }
    let seq = u64_at(buf, 8);
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
    let piece = Piece {
        seq,
        n: u64_at(buf, 16),
        kind,
        more: flags & FLAG_MORE != 0,
        payload: &buf[HEADER_LEN..body_end],
    };
    Ok((piece, total))
}

/// Decodes the whole payload `p` of a body of `kind` (1..=7) that started
/// with record `seq` (at byte `offset`, for error messages).
fn decode_body(kind: u8, p: &[u8], seq: u64, offset: usize) -> Result<Body, LogError> {
    let bad = |reason: String| LogError::Payload {
        offset,
        seq,
        kind: kind_name(kind),
        reason,
    };
    let fixed = |want: usize| {
        if p.len() == want {
            Ok(())
        } else {
            Err(bad(format!("{} bytes, expected {want}", p.len())))
        }
    };
    let all = |rest: &[u8]| {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} trailing bytes", rest.len())))
        }
    };
    Ok(match kind {
        1 => {
            let (evs, rest) =
                postcard::take_from_bytes::<Vec<InputEvent>>(p).map_err(|e| bad(e.to_string()))?;
            all(rest)?;
            Body::Events(evs)
        }
        2 => {
            let (t, rest) =
                postcard::take_from_bytes::<TimeRead>(p).map_err(|e| bad(e.to_string()))?;
            all(rest)?;
            Body::Time(t)
        }
        3 => {
            fixed(16)?;
            Body::Check {
                rip: u64_at(p, 0),
                gpr_hash: u64_at(p, 8),
            }
        }
        4 => {
            fixed(12)?;
            Body::Outputs {
                count: u32_at(p, 0),
                digest: u64_at(p, 4),
            }
        }
        5 => {
            fixed(8)?;
            Body::MemoryDigest { at: u64_at(p, 0) }
        }
        6 => {
            fixed(0)?;
            Body::End
        }
        7 => {
            fixed(0)?;
            Body::Mark
        }
        _ => return Err(bad("a piece is not a body".to_string())),
    })
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
