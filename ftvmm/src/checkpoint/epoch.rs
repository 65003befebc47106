//! The epoch wire format: one epoch (what the Primary's guest changed since
//! the previous one) as a canonical body, split into bounded pieces for the
//! channel, with SHA-256 over the whole body. Our own strict codec, as
//! `lockstep/transfer/message.rs`: every length is checked against a cap
//! before anything is allocated, every byte must be used, one encoding per
//! value, and any refusal is a typed [`EpochError`] naming what is wrong.
//! Decoding never panics (fuzzed by `ftvmm/fuzz/fuzz_targets/epoch_piece.rs`,
//! which runs [`fuzz`]).
//!
//! ```text
//! piece = version:u8 generation:u64 epoch:u64 index:u32 total:u32
//!         body_len:u64 body_sha256:[32] chunk_len:u32 chunk[chunk_len]
//!         1 <= total <= MAX_PIECES, index < total,
//!         chunk_len <= MAX_CHUNK_BYTES; the chunks in index order are the body
//! body  = epoch:u64 generation:u64 durable_through:u64
//!         pages:u32   { gfn:u64 kind:u8 (0 zero | 1 raw: [PAGE_SIZE]
//!                                        | 2 delta: len:u16 delta[len]) }
//!         machine_len:u32 machine      device_len:u32 devices
//!         writes:u32  { sector:u64 len:u32 data[len] }
//! ```
//! Pages: gfns strictly increasing; a zero page carries no bytes; a delta
//! (`delta.rs`) is against the page as of the previous epoch, which only the
//! receiver holds, so it is checked for form here and applied there. Disk
//! writes: in the order the guest issued them, each a whole number of
//! sectors, at least one. `durable_through`: every disk write of the epochs
//! up to it is durable on the shared device (as the Primary knew when it
//! closed this epoch), so the Secondary may forget their writes; it
//! re-writes the others on failover.
//!
//! Why every piece repeats the epoch's identity, total, length and digest
//! (52 bytes per piece of up to 1 MiB): the reassembler (`assemble.rs`)
//! then checks each piece against the first without trusting any one piece,
//! and names exactly what disagrees.
//!
//! NOTICE: any change to the format above requires a bump of [`VERSION`].

use crate::lockstep::channel::wire;

pub use super::epoch_decode::{decode_body, decode_piece};

/// Version byte of every piece; another is refused.
pub const VERSION: u8 = 1;
/// Guest page size of the dirty log.
pub const PAGE_SIZE: usize = 4096;
/// Disk sector size of the writes.
pub const SECTOR_SIZE: usize = 512;
/// Body bytes one piece carries at most (what a receiver accepts).
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Body bytes of the pieces [`encode_pieces`] sends. Smaller than the
/// limit because each side's silence clock runs from one complete message
/// to the next, and the Secondary re-acknowledges between pieces: a 1 MiB
/// piece took about 1 s on the QEMU test hosts' FT network, and with the
/// example's 1 s failure timeout both sides took the other for silent in
/// the middle of the first (full) epoch (stop 26). 128 KiB is 1 ms on
/// 1 GbE and costs 69 header bytes (0.05 %).
pub const SEND_CHUNK_BYTES: usize = 128 << 10;
/// Pieces of one epoch at most.
pub const MAX_PIECES: u32 = 8192;
/// Largest body (1 GiB).
pub const MAX_BODY_BYTES: u64 = 1 << 30;
// A body of the largest size fits the piece count at the sending size.
const _: () = assert!(MAX_PIECES as u64 * SEND_CHUNK_BYTES as u64 >= MAX_BODY_BYTES);
const _: () = assert!(SEND_CHUNK_BYTES <= MAX_CHUNK_BYTES);
/// Largest machine-state blob (2 vCPUs take about 15 KiB; 4 take 30).
pub const MAX_MACHINE_BYTES: usize = 16 << 20;
/// Largest device-state blob.
pub const MAX_DEVICE_BYTES: usize = 16 << 20;
/// Largest single disk write (virtio-blk segments are far smaller).
pub const MAX_WRITE_BYTES: usize = 16 << 20;
/// Bytes of a piece besides its chunk.
pub const PIECE_HEADER_BYTES: usize = 1 + 8 + 8 + 4 + 4 + 8 + 32 + 4;

// A piece fits one channel message with room for the channel's framing.
const _: () = assert!(PIECE_HEADER_BYTES + MAX_CHUNK_BYTES + 64 <= wire::MAX_MESSAGE);
// Blobs and single writes fit a body.
const _: () =
    assert!((MAX_MACHINE_BYTES + MAX_DEVICE_BYTES + MAX_WRITE_BYTES) as u64 <= MAX_BODY_BYTES);
// A delta's length fits its u16 field and is shorter than a raw page.
const _: () = assert!(PAGE_SIZE <= u16::MAX as usize);

/// A page's new contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageData {
    /// All zeros.
    Zero,
    /// The whole page, [`PAGE_SIZE`] bytes.
    Raw(Vec<u8>),
    /// XOR + zero runs against the page as of the previous epoch (`delta.rs`).
    Delta(Vec<u8>),
}

/// One dirty page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub gfn: u64,
    pub data: PageData,
}

/// One disk write the guest issued in the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskWrite {
    pub sector: u64,
    pub data: Vec<u8>,
}

impl DiskWrite {
    /// One past the last sector written.
    pub fn end_sector(&self) -> u64 {
        self.sector + (self.data.len() / SECTOR_SIZE) as u64
    }
}

/// One epoch: everything the Secondary needs to move from epoch
/// `number - 1` to `number`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Epoch {
    pub number: u64,
    pub generation: u64,
    /// Every disk write of epochs `<= durable_through` is durable on the
    /// shared device (0: none known yet).
    pub durable_through: u64,
    pub pages: Vec<Page>,
    /// `state::MachineState::encode`.
    pub machine: Vec<u8>,
    /// The VMM's devices (virtio queues, in-flight requests, serial).
    pub devices: Vec<u8>,
    pub writes: Vec<DiskWrite>,
}

/// One piece as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub generation: u64,
    pub epoch: u64,
    pub index: u32,
    pub total: u32,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    pub chunk: Vec<u8>,
}

/// An epoch, piece or body refused; the torn-epoch cases name the epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("epoch data truncated at byte {at}: {what} needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        at: usize,
        need: usize,
        have: usize,
    },
    #[error("epoch piece version {got} is not supported (this build speaks {VERSION})")]
    Version { got: u8 },
    #[error("{what} at byte {at} is {len}, more than {max}")]
    TooLong {
        what: &'static str,
        at: usize,
        len: u64,
        max: u64,
    },
    #[error("{what} at byte {at} is invalid: {detail}")]
    Invalid {
        what: &'static str,
        at: usize,
        detail: String,
    },
    #[error("page {index} at byte {at}: gfn {gfn} does not follow {prev}")]
    GfnOrder {
        index: usize,
        at: usize,
        prev: u64,
        gfn: u64,
    },
    #[error("{extra} trailing bytes at byte {at}")]
    Trailing { extra: usize, at: usize },
    #[error("epoch {epoch}: piece {got} arrived, piece {expected} was next (out of order)")]
    OutOfOrder { epoch: u64, expected: u32, got: u32 },
    #[error("epoch {epoch}: a piece says {field} is {got}, the first said {expected}")]
    Disagrees {
        epoch: u64,
        field: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("epoch {epoch}: torn, {have} of {total} pieces arrived before {next}")]
    Missing {
        epoch: u64,
        have: u32,
        total: u32,
        next: String,
    },
    #[error("epoch {epoch}: pieces hold {got} body bytes, they said {expected}")]
    Length { epoch: u64, expected: u64, got: u64 },
    #[error("epoch {epoch}: body checksum mismatch")]
    Checksum { epoch: u64 },
    #[error("epoch {epoch}: body says epoch {body_epoch} generation {body_generation}, pieces said generation {generation}")]
    Identity {
        epoch: u64,
        generation: u64,
        body_epoch: u64,
        body_generation: u64,
    },
}

pub(super) fn too_long(
    what: &'static str,
    at: usize,
    len: u64,
    max: u64,
) -> Result<(), EpochError> {
    if len > max {
        return Err(EpochError::TooLong { what, at, len, max });
    }
    Ok(())
}

/// Encodes the body of `e`, refusing (with no output) what [`decode_body`]
/// would refuse.
pub fn encode_body(e: &Epoch) -> Result<Vec<u8>, EpochError> {
    let mut out = Vec::new();
    out.extend_from_slice(&e.number.to_le_bytes());
    out.extend_from_slice(&e.generation.to_le_bytes());
    out.extend_from_slice(&e.durable_through.to_le_bytes());
    let count = u32::try_from(e.pages.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for (index, p) in e.pages.iter().enumerate() {
        let at = out.len();
        if let Some(prev) = index.checked_sub(1).map(|i| e.pages[i].gfn) {
            if prev >= p.gfn {
                return Err(EpochError::GfnOrder {
                    index,
                    at,
                    prev,
                    gfn: p.gfn,
                });
            }
        }
        out.extend_from_slice(&p.gfn.to_le_bytes());
        put_page(&mut out, &p.data)?;
    }
    put_blob(&mut out, "machine state", &e.machine, MAX_MACHINE_BYTES)?;
    put_blob(&mut out, "device state", &e.devices, MAX_DEVICE_BYTES)?;
    let count = u32::try_from(e.writes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for w in &e.writes {
        out.extend_from_slice(&w.sector.to_le_bytes());
        check_write(out.len(), w.sector, w.data.len())?;
        put_blob(&mut out, "disk write", &w.data, MAX_WRITE_BYTES)?;
    }
    too_long("epoch body", 0, out.len() as u64, MAX_BODY_BYTES)?;
    Ok(out)
}

fn put_page(out: &mut Vec<u8>, data: &PageData) -> Result<(), EpochError> {
    let at = out.len();
    match data {
        PageData::Zero => out.push(0),
        PageData::Raw(b) => {
            if b.len() != PAGE_SIZE {
                let detail = format!("raw page of {} bytes, not {PAGE_SIZE}", b.len());
                return Err(EpochError::Invalid {
                    what: "page",
                    at,
                    detail,
                });
            }
            out.push(1);
            out.extend_from_slice(b);
        }
        PageData::Delta(d) => {
            super::delta::check(PAGE_SIZE, d).map_err(|e| EpochError::Invalid {
                what: "page delta",
                at,
                detail: e.to_string(),
            })?;
            out.push(2);
            out.extend_from_slice(&(d.len() as u16).to_le_bytes());
            out.extend_from_slice(d);
        }
    }
    Ok(())
}

pub(super) fn check_write(at: usize, sector: u64, len: usize) -> Result<(), EpochError> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        let detail = format!("{len} bytes at sector {sector}: not a whole number of sectors");
        return Err(EpochError::Invalid {
            what: "disk write",
            at,
            detail,
        });
    }
    if sector.checked_add((len / SECTOR_SIZE) as u64).is_none() {
        let detail = format!("{len} bytes at sector {sector} run past the last sector");
        return Err(EpochError::Invalid {
            what: "disk write",
            at,
            detail,
        });
    }
    Ok(())
}

fn put_blob(out: &mut Vec<u8>, what: &'static str, b: &[u8], max: usize) -> Result<(), EpochError> {
    too_long(what, out.len(), b.len() as u64, max as u64)?;
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Encodes `e` as its pieces, each at most [`PIECE_HEADER_BYTES`] +
/// [`SEND_CHUNK_BYTES`] long. An empty body is impossible (it holds at least
/// its 36 fixed bytes), so there is always a piece.
pub fn encode_pieces(e: &Epoch) -> Result<Vec<Vec<u8>>, EpochError> {
    encode_pieces_sized(e, SEND_CHUNK_BYTES)
}

/// [`encode_pieces`] with smaller chunks (tests and the simulation, so
/// epochs take several pieces).
pub fn encode_pieces_sized(e: &Epoch, chunk_bytes: usize) -> Result<Vec<Vec<u8>>, EpochError> {
    assert!(
        (1..=MAX_CHUNK_BYTES).contains(&chunk_bytes),
        "chunk size {chunk_bytes}"
    );
    let body = encode_body(e)?;
    let total = body.len().div_ceil(chunk_bytes);
    too_long("piece count", 0, total as u64, u64::from(MAX_PIECES))?;
    let body_sha256 = sha256(&body);
    Ok(body
        .chunks(chunk_bytes)
        .enumerate()
        .map(|(index, chunk)| {
            encode_piece_parts(
                e.generation,
                e.number,
                index as u32,
                total as u32,
                body.len() as u64,
                &body_sha256,
                chunk,
            )
        })
        .collect())
}

/// Encodes one piece (its fields must be within the caps [`decode_piece`]
/// checks; [`encode_pieces`] guarantees that).
pub fn encode_piece(p: &Piece) -> Vec<u8> {
    encode_piece_parts(
        p.generation,
        p.epoch,
        p.index,
        p.total,
        p.body_len,
        &p.body_sha256,
        &p.chunk,
    )
}

fn encode_piece_parts(
    generation: u64,
    epoch: u64,
    index: u32,
    total: u32,
    body_len: u64,
    body_sha256: &[u8; 32],
    chunk: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PIECE_HEADER_BYTES + chunk.len());
    out.push(VERSION);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(body_sha256);
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(chunk);
    out
}

/// The body of the `epoch_piece` fuzz target: arbitrary bytes as a piece and
/// as a body; what decodes re-encodes to the same bytes (one encoding per
/// value). Runs in the crate's proptests too.
pub fn fuzz(data: &[u8]) {
    if let Ok(p) = decode_piece(data) {
        assert_eq!(
            encode_piece(&p),
            data,
            "piece re-encodes differently: {p:?}"
        );
        // A one-piece epoch from it goes through the reassembler too.
        let mut a = super::assemble::Assembler::new();
        let _ = a.on_piece(data);
    }
    if let Ok(e) = decode_body(data) {
        let again = encode_body(&e).expect("a decoded body encodes");
        assert_eq!(again, data, "body re-encodes differently");
    }
}
