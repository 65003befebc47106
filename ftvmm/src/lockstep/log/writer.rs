//! Writing bodies as records: [`Encoded`] serializes a body once and writes
//! it as one record or as its pieces (the rules in the module docs of `log`);
//! [`events_that_fit`] says how many events one body may carry.

use super::{
    kind_name, Body, LogError, Record, FLAG_MORE, HEADER_LEN, KIND_MORE, LIST_PREFIX_MAX, MAGIC,
    MAX_BODY, MAX_PAYLOAD, TRAILER_LEN, VERSION,
};
use crate::io::bytes::Append;
use crate::io::{ExitIndex, InputEvent};

/// How many events from the front of `evs` one `Events` body carries: as many
/// as fit in [`MAX_BODY`], but at least one (an event that alone is larger
/// fails to record with [`LogError::BodyTooLong`]).
pub fn events_that_fit(evs: &[InputEvent]) -> usize {
    let mut total = LIST_PREFIX_MAX;
    for (i, e) in evs.iter().enumerate() {
        let size = postcard::experimental::serialized_size(e).unwrap_or(usize::MAX);
        total = total.saturating_add(size);
        if total > MAX_BODY {
            return i.max(1);
        }
    }
    evs.len()
}

/// A body serialized for exit `n`, ready to be written as one record or as
/// [`Encoded::pieces`] records.
pub struct Encoded {
    kind: u8,
    n: ExitIndex,
    payload: Vec<u8>,
}

impl Encoded {
    /// Serializes `body`; refuses one longer than [`MAX_BODY`].
    pub fn new(n: ExitIndex, body: &Body) -> Result<Self, LogError> {
        let kind = body.kind();
        let mut payload = Vec::new();
        let ser = |r: postcard::Result<Vec<u8>>| {
            r.map_err(|e| LogError::Serialize {
                kind: kind_name(kind),
                n,
                reason: e.to_string(),
            })
        };
        match body {
            Body::Events(evs) => return Self::events(n, evs),
            Body::Time(t) => payload = ser(postcard::to_allocvec(t))?,
            Body::Check { rip, gpr_hash } => {
                payload.extend_from_slice(&rip.to_le_bytes());
                payload.extend_from_slice(&gpr_hash.to_le_bytes());
            }
            Body::Outputs { count, digest } => {
                payload.extend_from_slice(&count.to_le_bytes());
                payload.extend_from_slice(&digest.to_le_bytes());
            }
            Body::MemoryDigest { at } => payload.extend_from_slice(&at.to_le_bytes()),
            Body::End | Body::Mark => {}
        }
        Self::checked(kind, n, payload)
    }

    /// An `Events` body of `evs` (without building a [`Body`]).
    /// Refuses a body too long before building it.
    pub fn events(n: ExitIndex, evs: &[InputEvent]) -> Result<Self, LogError> {
        let bad = |e: postcard::Error| LogError::Serialize {
            kind: "events",
            n,
            reason: e.to_string(),
        };
        let len = postcard::experimental::serialized_size(evs).map_err(bad)?;
        if len > MAX_BODY {
            return Err(LogError::BodyTooLong {
                kind: "events",
                n,
                len,
            });
        }
        let out = Append(Vec::with_capacity(len));
        let payload = postcard::serialize_with_flavor(evs, out).map_err(bad)?;
        Self::checked(1, n, payload)
    }

    fn checked(kind: u8, n: ExitIndex, payload: Vec<u8>) -> Result<Self, LogError> {
        if payload.len() > MAX_BODY {
            return Err(LogError::BodyTooLong {
                kind: kind_name(kind),
                n,
                len: payload.len(),
            });
        }
        Ok(Encoded { kind, n, payload })
    }

    /// How many records this body takes (at least one).
    pub fn pieces(&self) -> u64 {
        self.payload.len().div_ceil(MAX_PAYLOAD as usize).max(1) as u64
    }

    fn piece(&self, i: u64) -> &[u8] {
        let start = (i as usize).saturating_mul(MAX_PAYLOAD as usize);
        let end = start.saturating_add(MAX_PAYLOAD as usize);
        self.payload
            .get(start..end.min(self.payload.len()))
            .unwrap_or(&[])
    }

    /// The encoded length of piece `i`.
    pub fn piece_len(&self, i: u64) -> usize {
        HEADER_LEN + self.piece(i).len() + TRAILER_LEN
    }

    /// Appends piece `i` (of [`Encoded::pieces`]) as record `seq` to `out`;
    /// returns its length.
    pub fn write_piece(&self, i: u64, seq: u64, out: &mut Vec<u8>) -> usize {
        let chunk = self.piece(i);
        let kind = if i == 0 { self.kind } else { KIND_MORE };
        let flags = if i + 1 < self.pieces() { FLAG_MORE } else { 0 };
        let start = out.len();
        out.extend_from_slice(&[MAGIC, VERSION, kind, flags]);
        // A piece is at most MAX_PAYLOAD (a u32) long by construction.
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(chunk);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.len() - start
    }
}

/// Appends the records of `rec` (numbered from `rec.seq`) to `out`; returns
/// how many records it took.
pub fn encode(rec: &Record, out: &mut Vec<u8>) -> Result<u64, LogError> {
    let enc = Encoded::new(rec.n, &rec.body)?;
    for i in 0..enc.pieces() {
        enc.write_piece(i, rec.seq + i, out);
    }
    Ok(enc.pieces())
}
