//! The records appended and not yet taken by the sender, kept as segments of
//! whole records of at most [`MAX_BATCH_BYTES`] each: the sender takes one
//! segment as one batch, so every batch fits one channel message, and taking
//! one never moves the records behind it.
//!
//! Invariants: every segment holds at least one record and at most
//! [`MAX_BATCH_BYTES`] bytes; `bytes` is the sum of the segments' lengths.

use std::collections::VecDeque;

use super::MAX_BATCH_BYTES;
use crate::lockstep::log::Encoded;

/// Whole records, ready to be one batch.
#[derive(Debug, Default)]
pub(super) struct Segment {
    pub bytes: Vec<u8>,
    pub records: u32,
}

#[derive(Debug, Default)]
pub(super) struct Pending {
    segs: VecDeque<Segment>,
    bytes: usize,
}

impl Pending {
    /// Appends piece `i` of `enc` as record `seq`; returns its length.
    pub(super) fn push(&mut self, enc: &Encoded, i: u64, seq: u64) -> usize {
        let len = enc.piece_len(i);
        let fits = self
            .segs
            .back()
            .is_some_and(|s| s.bytes.len() + len <= MAX_BATCH_BYTES);
        if !fits {
            self.segs.push_back(Segment::default());
        }
        let seg = self
            .segs
            .back_mut()
            .expect("a segment was just ensured at the back");
        let written = enc.write_piece(i, seq, &mut seg.bytes);
        seg.records += 1;
        self.bytes += written;
        assert!(
            seg.bytes.len() <= MAX_BATCH_BYTES,
            "a pending segment outgrew a batch"
        );
        written
    }

    /// The oldest segment: whole records, at most [`MAX_BATCH_BYTES`].
    pub(super) fn take(&mut self) -> Option<Segment> {
        let seg = self.segs.pop_front()?;
        self.bytes -= seg.bytes.len();
        Some(seg)
    }

    pub(super) fn clear(&mut self) {
        self.segs.clear();
        self.bytes = 0;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Bytes pending.
    pub(super) fn len(&self) -> usize {
        self.bytes
    }
}
