//! Page delta encoding: XOR a page against the copy the Secondary already
//! holds (the previous epoch's version, which it applied), then run-length
//! encode the zeros. A guest that changes a few words of a page (counters,
//! list links, timestamps: most of a kernel's dirty pages) ships a few
//! dozen bytes instead of 4 KiB.
//!
//! ```text
//! delta = { zeros:u16 len:u16 literal[len] }*      (integers little-endian)
//! ```
//! Each run skips `zeros` unchanged bytes, then XORs `len` literal bytes
//! in; runs cover the page exactly (the last may have `len` 0). Decoding
//! refuses a delta that runs past the page or leaves bytes uncovered, so
//! a delta either applies completely or not at all.
//!
//! The encoder keeps a zero run inside a literal when it is shorter than a
//! run header (4 bytes), so the output is never larger than needed for
//! short gaps; [`encode`] gives `None` when the delta would not be smaller
//! than [`max_len`] (the caller sends the page raw then).

/// Bytes of one run header.
const RUN_HEADER: usize = 4;

/// Why a delta does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("page delta truncated at byte {at}")]
    Truncated { at: usize },
    #[error("page delta runs past the page ({end} > {page})")]
    PastEnd { end: usize, page: usize },
    #[error("page delta covers {covered} of {page} bytes")]
    Uncovered { covered: usize, page: usize },
}

/// The delta turning `old` into `new` (same length), if it is shorter than
/// `max_len` bytes.
pub fn encode(old: &[u8], new: &[u8], max_len: usize) -> Option<Vec<u8>> {
    assert_eq!(old.len(), new.len(), "delta of pages of different sizes");
    assert!(
        new.len() <= usize::from(u16::MAX),
        "page too large for a delta"
    );
    let n = new.len();
    let diff = |i: usize| old[i] ^ new[i];
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let zeros_from = i;
        // Unchanged stretches a word at a time (most of a sparse page).
        while i + 8 <= n && old[i..i + 8] == new[i..i + 8] {
            i += 8;
        }
        while i < n && diff(i) == 0 {
            i += 1;
        }
        let zeros = i - zeros_from;
        let lit_from = i;
        // Extend the literal across zero gaps shorter than a run header.
        let mut end = i;
        while end < n {
            if diff(end) != 0 {
                end += 1;
                continue;
            }
            let mut gap = end;
            while gap < n && diff(gap) == 0 && gap - end < RUN_HEADER {
                gap += 1;
            }
            if gap < n && gap - end < RUN_HEADER && diff(gap) != 0 {
                end = gap;
            } else {
                break;
            }
        }
        out.extend_from_slice(&(zeros as u16).to_le_bytes());
        out.extend_from_slice(&((end - lit_from) as u16).to_le_bytes());
        out.extend((lit_from..end).map(diff));
        if out.len() >= max_len {
            return None;
        }
        i = end;
    }
    // The loop always ends with the page covered: trailing zeros make a last
    // run of no literal, an unchanged page one run of only zeros.
    debug_assert!(n == 0 || !out.is_empty());
    Some(out)
}

/// Applies `delta` to `page` in place; on error `page` is unchanged.
pub fn apply(page: &mut [u8], delta: &[u8]) -> Result<(), DeltaError> {
    check(page.len(), delta)?;
    let mut at = 0;
    let mut pos = 0;
    while at < delta.len() {
        let zeros = usize::from(u16::from_le_bytes([delta[at], delta[at + 1]]));
        let len = usize::from(u16::from_le_bytes([delta[at + 2], delta[at + 3]]));
        at += RUN_HEADER;
        pos += zeros;
        for (p, d) in page[pos..pos + len].iter_mut().zip(&delta[at..at + len]) {
            *p ^= d;
        }
        pos += len;
        at += len;
    }
    Ok(())
}

/// Checks that `delta` is well formed for a page of `page_len` bytes.
pub fn check(page_len: usize, delta: &[u8]) -> Result<(), DeltaError> {
    let mut at = 0;
    let mut pos = 0usize;
    while at < delta.len() {
        if delta.len() - at < RUN_HEADER {
            return Err(DeltaError::Truncated { at });
        }
        let zeros = usize::from(u16::from_le_bytes([delta[at], delta[at + 1]]));
        let len = usize::from(u16::from_le_bytes([delta[at + 2], delta[at + 3]]));
        at += RUN_HEADER;
        if delta.len() - at < len {
            return Err(DeltaError::Truncated { at });
        }
        let end = pos + zeros + len;
        if end > page_len {
            return Err(DeltaError::PastEnd {
                end,
                page: page_len,
            });
        }
        pos = end;
        at += len;
    }
    if pos != page_len {
        return Err(DeltaError::Uncovered {
            covered: pos,
            page: page_len,
        });
    }
    Ok(())
}
