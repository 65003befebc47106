//! Live state transfer messages and their strict binary codec (ours, not
//! postcard): every length is read from a fixed-width field and checked
//! against a cap stated below before anything is allocated, every byte must be
//! used, and any refusal is a typed [`TransferError`] naming what is wrong and
//! at which byte offset. Decoding never panics on any input (fuzzed by
//! `ftvmm/fuzz/fuzz_targets/transfer_message.rs`, which runs [`fuzz`]).
//!
//! How these messages travel (inside the logging channel, or a connection of
//! their own) is left to the integration; [`MAX_MESSAGE_BYTES`] is asserted
//! at compile time to fit in one channel message.
//!
//! ```text
//! message  = version:u8 (= VERSION)  tag:u8  body          (integers little-endian)
//! str      = len:u16  utf8[len]                            len <= MAX_TEXT_BYTES
//! Offer    0  vm:str(<= MAX_VM_NAME_BYTES) generation:u64 memory_bytes:u64
//!             page_size:u32 platform_sha256:[32]
//! Accept   1
//! Refuse   2  reason:str
//! Pages    3  round:u32 count:u32 (1..=MAX_PAGES_PER_MESSAGE)
//!             count * (gfn:u64 len:u32 (0..=MAX_PAGE_BYTES) bytes[len])
//!             len 0: a page of zeros (most of a guest's memory at first)
//!             gfns strictly increasing; sum of len <= MAX_PAGES_DATA_BYTES
//! RoundEnd 4  round:u32 pages_sent:u64 dirty_left:u64
//! RoundAck 5  round:u32
//! Switch   6  round:u32 state_len:u32 (<= MAX_STATE_BYTES) state
//!             memory_sha256:[32] log_start_exit:u64
//! Restored 7  memory_sha256:[32]
//! Abort    8  reason:str
//! Paired   9  generation:u64
//! ```

use crate::lockstep::channel::wire;

pub use super::message_decode::decode;

/// Version byte in front of every message; another version is refused.
/// NOTICE: any change to the format above requires a bump.
pub const VERSION: u8 = 2;
/// Longest VM name in an [`Message::Offer`].
pub const MAX_VM_NAME_BYTES: usize = 256;
/// Longest reason in [`Message::Refuse`] / [`Message::Abort`].
pub const MAX_TEXT_BYTES: usize = 1024;
/// Largest page (x86 huge pages are never sent whole; the dirty log is 4 KiB).
pub const MAX_PAGE_BYTES: usize = 64 << 10;
/// Page data one [`Message::Pages`] may carry (the per-message byte cap).
pub const MAX_PAGES_DATA_BYTES: usize = 4 << 20;
/// Most entries in one [`Message::Pages`] (4 KiB pages: 1024 fill the data cap).
pub const MAX_PAGES_PER_MESSAGE: usize = 1 << 18;
/// Largest opaque vCPU + device state in a [`Message::Switch`]. A real
/// `snapshot::VmState` is tens of KiB; a larger one fails the transfer.
pub const MAX_STATE_BYTES: usize = 8 << 20;
/// Bytes of one page entry besides its data (gfn + len).
pub const PAGE_ENTRY_OVERHEAD: usize = 8 + 4;
/// Largest encoded message of any kind.
pub const MAX_MESSAGE_BYTES: usize = MAX_STATE_BYTES + 64;
/// Number of message tags.
pub(super) const TAGS: u8 = 10;

// A Pages message at both caps and a Switch at its cap fit in one message,
// and one message fits in one logging-channel message.
const _: () = assert!(
    2 + 4 + 4 + MAX_PAGES_PER_MESSAGE * PAGE_ENTRY_OVERHEAD + MAX_PAGES_DATA_BYTES
        <= MAX_MESSAGE_BYTES
);
const _: () = assert!(2 + 4 + 4 + MAX_STATE_BYTES + 32 + 8 <= MAX_MESSAGE_BYTES);
const _: () = assert!(MAX_MESSAGE_BYTES + 64 <= wire::MAX_MESSAGE);
const _: () = assert!(MAX_PAGE_BYTES <= MAX_PAGES_DATA_BYTES);

/// One guest page: frame number (GPA / page size) and its bytes; no bytes
/// stands for a page of zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub gfn: u64,
    pub bytes: Vec<u8>,
}

/// What the Primary (sender) and the new Secondary (receiver) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sender -> receiver, first: the VM to be transferred.
    Offer {
        vm: String,
        generation: u64,
        memory_bytes: u64,
        page_size: u32,
        platform_sha256: [u8; 32],
    },
    /// Receiver -> sender: the offer matches what it expects.
    Accept,
    /// Receiver -> sender: it does not (final).
    Refuse { reason: String },
    /// Sender -> receiver: pages of `round`, gfns strictly increasing.
    Pages { round: u32, pages: Vec<Page> },
    /// Sender -> receiver: `round` is complete with `pages_sent` pages;
    /// `dirty_left` pages were dirtied meanwhile (the next round's size).
    RoundEnd {
        round: u32,
        pages_sent: u64,
        dirty_left: u64,
    },
    /// Receiver -> sender: every page of `round` is applied.
    RoundAck { round: u32 },
    /// Sender -> receiver: the final (paused) round `round` is complete; the
    /// vCPU + device state, the digest all memory must have now, and the exit
    /// index lockstep logging starts from.
    Switch {
        round: u32,
        state: Vec<u8>,
        memory_sha256: [u8; 32],
        log_start_exit: u64,
    },
    /// Receiver -> sender: memory matched and the state is taken.
    Restored { memory_sha256: [u8; 32] },
    /// Either way: the transfer is over, unsuccessfully (final).
    Abort { reason: String },
    /// Sender -> receiver, after `Restored`: the Primary now releases output
    /// only by the Output Rule in `generation` (its gate is `ByAcks`), so
    /// the new Secondary may race for `generation + 1` if it loses the
    /// Primary (docs/design.md §11). Before this, losing the channel makes
    /// the receiver discard its copy. The log follows on the channel.
    Paired { generation: u64 },
}

/// A message refused by [`encode`] or [`decode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("transfer message truncated at byte {at}: {what} needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        at: usize,
        need: usize,
        have: usize,
    },
    #[error("transfer message of {len} bytes exceeds {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("transfer message version {got} is not supported (this build speaks {VERSION})")]
    Version { got: u8 },
    #[error("unknown transfer message tag {tag} at byte {at}")]
    UnknownTag { tag: u8, at: usize },
    #[error("{what} at byte {at} is {len} long, more than {max}")]
    TooLong {
        what: &'static str,
        at: usize,
        len: usize,
        max: usize,
    },
    #[error("{what} at byte {at} is empty")]
    Empty { what: &'static str, at: usize },
    #[error("{what} at byte {at} is not UTF-8")]
    NotUtf8 { what: &'static str, at: usize },
    #[error("page {index} of a Pages message at byte {at}: gfn {gfn} does not follow {prev}")]
    GfnOrder {
        index: usize,
        at: usize,
        prev: u64,
        gfn: u64,
    },
    #[error("{extra} trailing bytes after the transfer message at byte {at}")]
    Trailing { extra: usize, at: usize },
}

/// Encodes `m`, refusing (without output) anything [`decode`] would refuse.
pub fn encode(m: &Message) -> Result<Vec<u8>, TransferError> {
    let mut out = Vec::new();
    out.push(VERSION);
    match m {
        Message::Offer {
            vm,
            generation,
            memory_bytes,
            page_size,
            platform_sha256,
        } => {
            out.push(0);
            put_str(&mut out, "vm name", vm, MAX_VM_NAME_BYTES)?;
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&memory_bytes.to_le_bytes());
            out.extend_from_slice(&page_size.to_le_bytes());
            out.extend_from_slice(platform_sha256);
        }
        Message::Accept => out.push(1),
        Message::Refuse { reason } => {
            out.push(2);
            put_str(&mut out, "refuse reason", reason, MAX_TEXT_BYTES)?;
        }
        Message::Pages { round, pages } => {
            out.push(3);
            put_pages(&mut out, *round, pages)?;
        }
        Message::RoundEnd {
            round,
            pages_sent,
            dirty_left,
        } => {
            out.push(4);
            out.extend_from_slice(&round.to_le_bytes());
            out.extend_from_slice(&pages_sent.to_le_bytes());
            out.extend_from_slice(&dirty_left.to_le_bytes());
        }
        Message::RoundAck { round } => {
            out.push(5);
            out.extend_from_slice(&round.to_le_bytes());
        }
        Message::Switch {
            round,
            state,
            memory_sha256,
            log_start_exit,
        } => {
            out.push(6);
            out.extend_from_slice(&round.to_le_bytes());
            check_len("switch state", out.len(), state.len(), MAX_STATE_BYTES)?;
            out.extend_from_slice(&(state.len() as u32).to_le_bytes());
            out.extend_from_slice(state);
            out.extend_from_slice(memory_sha256);
            out.extend_from_slice(&log_start_exit.to_le_bytes());
        }
        Message::Restored { memory_sha256 } => {
            out.push(7);
            out.extend_from_slice(memory_sha256);
        }
        Message::Abort { reason } => {
            out.push(8);
            put_str(&mut out, "abort reason", reason, MAX_TEXT_BYTES)?;
        }
        Message::Paired { generation } => {
            out.push(9);
            out.extend_from_slice(&generation.to_le_bytes());
        }
    }
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(TransferError::MessageTooLarge {
            len: out.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(out)
}

pub(super) fn check_len(
    what: &'static str,
    at: usize,
    len: usize,
    max: usize,
) -> Result<(), TransferError> {
    if len > max {
        return Err(TransferError::TooLong { what, at, len, max });
    }
    Ok(())
}

fn put_str(
    out: &mut Vec<u8>,
    what: &'static str,
    s: &str,
    max: usize,
) -> Result<(), TransferError> {
    check_len(what, out.len(), s.len(), max)?;
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_pages(out: &mut Vec<u8>, round: u32, pages: &[Page]) -> Result<(), TransferError> {
    out.extend_from_slice(&round.to_le_bytes());
    if pages.is_empty() {
        return Err(TransferError::Empty {
            what: "Pages message",
            at: out.len(),
        });
    }
    check_len("page count", out.len(), pages.len(), MAX_PAGES_PER_MESSAGE)?;
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    let mut data = 0usize;
    for (index, p) in pages.iter().enumerate() {
        let at = out.len();
        if index > 0 && pages[index - 1].gfn >= p.gfn {
            let prev = pages[index - 1].gfn;
            return Err(TransferError::GfnOrder {
                index,
                at,
                prev,
                gfn: p.gfn,
            });
        }
        check_len("page", at, p.bytes.len(), MAX_PAGE_BYTES)?;
        data += p.bytes.len();
        check_len("page data", at, data, MAX_PAGES_DATA_BYTES)?;
        out.extend_from_slice(&p.gfn.to_le_bytes());
        out.extend_from_slice(&(p.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&p.bytes);
    }
    Ok(())
}

/// How many pages of `page_size` bytes one [`Message::Pages`] carries at most.
pub fn pages_per_message(page_size: u32) -> usize {
    let p = (page_size as usize).clamp(1, MAX_PAGE_BYTES);
    (MAX_PAGES_DATA_BYTES / p).min(MAX_PAGES_PER_MESSAGE)
}

/// The body of the `transfer_message` fuzz target: decode arbitrary bytes;
/// what decodes must re-encode to exactly the same bytes (the codec has one
/// encoding per message), and what encodes must decode to itself.
pub fn fuzz(data: &[u8]) {
    let Ok(m) = decode(data) else {
        return;
    };
    let again = encode(&m).expect("a decoded message encodes");
    assert_eq!(again, data, "re-encoding differs for {m:?}");
    assert_eq!(decode(&again).as_ref(), Ok(&m));
}
