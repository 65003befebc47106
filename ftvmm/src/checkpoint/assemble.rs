//! Reassembly of an epoch from its pieces (the Secondary's first step): the
//! pieces of one epoch must arrive in index order, all agree on the epoch's
//! identity, total, length and digest, and together hold exactly the body
//! whose SHA-256 they announced. Anything else tears the epoch: it is
//! dropped whole and the refusal says why ([`EpochError`]). Only a complete,
//! verified, decodable epoch leaves the assembler.
//!
//! The channel is ordered, so out-of-order or missing pieces mean a lost
//! connection, a resend after one, or a bug; the Primary resends every
//! unacknowledged epoch from its first piece (`gate.rs`), so the rule is
//! simple: a piece 0 always starts a new assembly (an unfinished one before
//! it is reported [`EpochError::Missing`]), any other piece must be the next
//! one of the assembly in progress.
//!
//! Invariant (asserted): the assembly in progress holds pieces `0..next`,
//! `next < total`, and `buf.len() <= body_len`.

use super::epoch::{decode_body, decode_piece, sha256, Epoch, EpochError, Piece};

struct Partial {
    first: Piece,
    next: u32,
    buf: Vec<u8>,
}

/// The reassembler; see the module doc.
#[derive(Default)]
pub struct Assembler {
    cur: Option<Partial>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The epoch being assembled and how many of its pieces arrived.
    pub fn in_progress(&self) -> Option<(u64, u32, u32)> {
        self.cur
            .as_ref()
            .map(|p| (p.first.epoch, p.next, p.first.total))
    }

    /// Takes one encoded piece. `Ok(Some(epoch))` when it completed a
    /// verified epoch, `Ok(None)` when more pieces are due; an error drops
    /// the epoch in progress (except that a piece 0 after an unfinished
    /// epoch is kept as the start of the next, and the error reports the
    /// unfinished one).
    pub fn on_piece(&mut self, bytes: &[u8]) -> Result<Option<Epoch>, EpochError> {
        let p = match decode_piece(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.cur = None;
                return Err(e);
            }
        };
        if p.index == 0 {
            let torn = self.cur.take().map(|c| EpochError::Missing {
                epoch: c.first.epoch,
                have: c.next,
                total: c.first.total,
                next: format!("piece 0 of epoch {}", p.epoch),
            });
            let done = self.start(p)?;
            return match torn {
                Some(e) => Err(e),
                None => Ok(done),
            };
        }
        let Some(cur) = self.cur.take() else {
            return Err(EpochError::OutOfOrder {
                epoch: p.epoch,
                expected: 0,
                got: p.index,
            });
        };
        self.extend(cur, p)
    }

    fn start(&mut self, p: Piece) -> Result<Option<Epoch>, EpochError> {
        // Reserve no more than this piece can vouch for (a lying body_len
        // must not allocate a gigabyte).
        let buf = Vec::with_capacity(p.chunk.len());
        let cur = Partial {
            buf,
            next: 0,
            first: Piece {
                chunk: Vec::new(),
                ..p.clone()
            },
        };
        self.extend(cur, p)
    }

    fn extend(&mut self, mut cur: Partial, p: Piece) -> Result<Option<Epoch>, EpochError> {
        let f = &cur.first;
        let epoch = f.epoch;
        if p.epoch != epoch {
            return Err(EpochError::Missing {
                epoch,
                have: cur.next,
                total: f.total,
                next: format!("piece {} of epoch {}", p.index, p.epoch),
            });
        }
        if p.index != cur.next {
            return Err(EpochError::OutOfOrder {
                epoch,
                expected: cur.next,
                got: p.index,
            });
        }
        for (field, expected, got) in [
            ("generation", f.generation, p.generation),
            ("total", u64::from(f.total), u64::from(p.total)),
            ("body length", f.body_len, p.body_len),
        ] {
            if expected != got {
                return Err(EpochError::Disagrees {
                    epoch,
                    field,
                    expected,
                    got,
                });
            }
        }
        if p.body_sha256 != f.body_sha256 {
            return Err(EpochError::Checksum { epoch });
        }
        let have = cur.buf.len() as u64 + p.chunk.len() as u64;
        if have > f.body_len {
            return Err(EpochError::Length {
                epoch,
                expected: f.body_len,
                got: have,
            });
        }
        cur.buf.extend_from_slice(&p.chunk);
        cur.next += 1;
        if cur.next < cur.first.total {
            assert!(cur.buf.len() as u64 <= cur.first.body_len);
            self.cur = Some(cur);
            return Ok(None);
        }
        finish(cur).map(Some)
    }
}

/// The last piece arrived: length, digest, then the body and its identity.
fn finish(cur: Partial) -> Result<Epoch, EpochError> {
    let f = &cur.first;
    let epoch = f.epoch;
    if cur.buf.len() as u64 != f.body_len {
        return Err(EpochError::Length {
            epoch,
            expected: f.body_len,
            got: cur.buf.len() as u64,
        });
    }
    if sha256(&cur.buf) != f.body_sha256 {
        return Err(EpochError::Checksum { epoch });
    }
    let e = decode_body(&cur.buf)?;
    if e.number != epoch || e.generation != f.generation {
        return Err(EpochError::Identity {
            epoch,
            generation: f.generation,
            body_epoch: e.number,
            body_generation: e.generation,
        });
    }
    Ok(e)
}
