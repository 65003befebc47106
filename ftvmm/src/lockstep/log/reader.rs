//! [`Reader`]: reads batches of records back into whole bodies, putting split
//! bodies together across batches (the rules in the module docs of `log`).
//!
//! Invariants: `next_seq` is the sequence number the next batch must start
//! with; `partial`, when set, is a split body whose pieces `partial.seq ..
//! next_seq` arrived and whose last piece has not. After any refusal the
//! reader is broken and reads nothing more (the log cannot continue past a
//! bad batch; the link ends there).

use super::{
    decode_body, decode_piece, kind_name, LogError, Piece, Record, KIND_MORE, MAX_BODY, MAX_PAYLOAD,
};
use crate::io::ExitIndex;

/// A whole body read from the log and the sequence number after its last
/// record (what the Secondary has replayed once it consumed the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whole {
    pub rec: Record,
    pub end_seq: u64,
}

/// A split body whose last piece has not arrived yet.
#[derive(Debug)]
struct Partial {
    seq: u64,
    n: ExitIndex,
    kind: u8,
    payload: Vec<u8>,
}

/// Reads a log batch by batch (module docs).
#[derive(Debug)]
pub struct Reader {
    next_seq: u64,
    partial: Option<Partial>,
    broken: bool,
}

impl Reader {
    /// A reader whose first batch starts at record `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Reader {
            next_seq: first_seq,
            partial: None,
            broken: false,
        }
    }

    /// The sequence number the next batch must start with.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The first record of a split body still waiting for pieces, if any.
    pub fn unfinished(&self) -> Option<u64> {
        self.partial.as_ref().map(|p| p.seq)
    }

    /// Reads one batch of `count` records starting at `first_seq`; returns
    /// the bodies it completes, in order. All or nothing: on an error no body
    /// of the batch is returned, and the reader is broken.
    pub fn read_batch(
        &mut self,
        buf: &[u8],
        first_seq: u64,
        count: u32,
    ) -> Result<Vec<Whole>, LogError> {
        if self.broken {
            return Err(LogError::Broken);
        }
        let res = self.read(buf, first_seq).and_then(|out| {
            let holds = self.next_seq - first_seq;
            if holds == u64::from(count) {
                Ok(out)
            } else {
                Err(LogError::Count { said: count, holds })
            }
        });
        if res.is_err() {
            self.broken = true;
            self.partial = None;
        }
        res
    }

    fn read(&mut self, buf: &[u8], first_seq: u64) -> Result<Vec<Whole>, LogError> {
        if first_seq != self.next_seq {
            return Err(LogError::Start {
                expected: self.next_seq,
                got: first_seq,
            });
        }
        let mut out = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let (piece, len) = decode_piece(&buf[off..], off)?;
            if piece.seq != self.next_seq {
                return Err(LogError::Sequence {
                    offset: off,
                    expected: self.next_seq,
                    got: piece.seq,
                });
            }
            if let Some(rec) = self.take(piece, off)? {
                out.push(Whole {
                    rec,
                    end_seq: piece.seq + 1,
                });
            }
            self.next_seq += 1;
            off += len;
        }
        Ok(out)
    }

    /// Takes one piece; returns the body it completes, if any.
    fn take(&mut self, p: Piece<'_>, offset: usize) -> Result<Option<Record>, LogError> {
        let refuse = |reason: String| LogError::Piece {
            offset,
            seq: p.seq,
            reason,
        };
        let full = p.payload.len() == MAX_PAYLOAD as usize;
        let Some(part) = self.partial.as_mut() else {
            if p.kind == KIND_MORE {
                return Err(refuse("a `more` record continues no body".into()));
            }
            if !p.more {
                let body = decode_body(p.kind, p.payload, p.seq, offset)?;
                return Ok(Some(Record {
                    seq: p.seq,
                    n: p.n,
                    body,
                }));
            }
            if !full {
                return Err(refuse(format!(
                    "first piece of a split {} body is {} bytes, not {MAX_PAYLOAD}",
                    kind_name(p.kind),
                    p.payload.len()
                )));
            }
            self.partial = Some(Partial {
                seq: p.seq,
                n: p.n,
                kind: p.kind,
                payload: p.payload.to_vec(),
            });
            return Ok(None);
        };
        if p.kind != KIND_MORE {
            return Err(refuse(format!(
                "a {} record interrupts the body that record {} started",
                kind_name(p.kind),
                part.seq
            )));
        }
        if p.n != part.n {
            return Err(refuse(format!(
                "piece at exit {} of the body at exit {} (record {})",
                p.n, part.n, part.seq
            )));
        }
        if (p.more && !full) || p.payload.is_empty() {
            return Err(refuse(format!(
                "piece of {} bytes{} (pieces are {MAX_PAYLOAD} bytes, the last at least 1)",
                p.payload.len(),
                if p.more { " with more to come" } else { "" }
            )));
        }
        if part.payload.len() + p.payload.len() > MAX_BODY {
            return Err(refuse(format!(
                "the body that record {} started grows past {MAX_BODY} bytes",
                part.seq
            )));
        }
        part.payload.extend_from_slice(p.payload);
        if p.more {
            return Ok(None);
        }
        let Partial {
            seq,
            n,
            kind,
            payload,
        } = self.partial.take().ok_or(LogError::Broken)?;
        let body = decode_body(kind, &payload, seq, offset)?;
        Ok(Some(Record { seq, n, body }))
    }
}

/// Decodes one self-contained batch whose first record must carry
/// `first_seq` and whose records must be numbered without gaps; a split body
/// must end inside it. All or nothing: on any error no record is returned.
pub fn decode_batch(buf: &[u8], first_seq: u64) -> Result<Vec<Record>, LogError> {
    let mut r = Reader::new(first_seq);
    let wholes = r.read(buf, first_seq)?;
    if let Some(seq) = r.unfinished() {
        return Err(LogError::Unfinished { seq });
    }
    Ok(wholes.into_iter().map(|w| w.rec).collect())
}
