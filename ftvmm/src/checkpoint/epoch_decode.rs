//! Decoding of epoch pieces and bodies (the format is in [`super::epoch`]):
//! a cursor that refuses reads past the end, every length and count checked
//! against its cap and against the bytes left before anything is allocated,
//! and no trailing bytes.

use super::epoch::{
    check_write, too_long, DiskWrite, Epoch, EpochError, Page, PageData, Piece, MAX_BODY_BYTES,
    MAX_CHUNK_BYTES, MAX_DEVICE_BYTES, MAX_MACHINE_BYTES, MAX_PIECES, MAX_WRITE_BYTES, PAGE_SIZE,
    PIECE_HEADER_BYTES, VERSION,
};

/// Smallest page entry (a zero page: gfn + kind).
const MIN_PAGE_ENTRY: usize = 8 + 1;
/// Smallest write entry (sector + len + one sector).
const MIN_WRITE_ENTRY: usize = 8 + 4 + super::epoch::SECTOR_SIZE;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, what: &'static str, need: usize) -> Result<&'a [u8], EpochError> {
        let have = self.left();
        if need > have {
            return Err(EpochError::Truncated {
                what,
                at: self.at,
                need,
                have,
            });
        }
        let s = &self.bytes[self.at..self.at + need];
        self.at += need;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], EpochError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(what, N)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, EpochError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, EpochError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, EpochError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, EpochError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u32 length then that many bytes, the length checked against `max`
    /// first.
    fn blob(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, EpochError> {
        let at = self.at;
        let len = self.u32(what)? as usize;
        too_long(what, at, len as u64, max as u64)?;
        Ok(self.take(what, len)?.to_vec())
    }

    /// A u32 count of entries of at least `min_entry` bytes each, checked
    /// against the bytes left before anything is reserved for it.
    fn count(&mut self, what: &'static str, min_entry: usize) -> Result<usize, EpochError> {
        let at = self.at;
        let count = self.u32(what)? as usize;
        let fits = self.left() / min_entry;
        if count > fits {
            return Err(EpochError::Truncated {
                what,
                at,
                need: count.saturating_mul(min_entry),
                have: self.left(),
            });
        }
        Ok(count)
    }

    fn end(&self) -> Result<(), EpochError> {
        if self.at != self.bytes.len() {
            return Err(EpochError::Trailing {
                extra: self.bytes.len() - self.at,
                at: self.at,
            });
        }
        Ok(())
    }
}

/// Decodes one piece; refuses anything [`super::epoch::encode_piece`] of a
/// valid piece would not produce. The pieces' agreement with each other and
/// the digest are the reassembler's to check.
pub fn decode_piece(bytes: &[u8]) -> Result<Piece, EpochError> {
    too_long(
        "epoch piece",
        0,
        bytes.len() as u64,
        (PIECE_HEADER_BYTES + MAX_CHUNK_BYTES) as u64,
    )?;
    let mut r = Reader { bytes, at: 0 };
    let got = r.u8("version")?;
    if got != VERSION {
        return Err(EpochError::Version { got });
    }
    let generation = r.u64("generation")?;
    let epoch = r.u64("epoch")?;
    let index_at = r.at;
    let index = r.u32("piece index")?;
    let total_at = r.at;
    let total = r.u32("piece total")?;
    if total == 0 {
        let detail = "an epoch has at least one piece".to_string();
        return Err(EpochError::Invalid {
            what: "piece total",
            at: total_at,
            detail,
        });
    }
    too_long(
        "piece total",
        total_at,
        u64::from(total),
        u64::from(MAX_PIECES),
    )?;
    if index >= total {
        let detail = format!("index {index} of {total} pieces");
        return Err(EpochError::Invalid {
            what: "piece index",
            at: index_at,
            detail,
        });
    }
    let len_at = r.at;
    let body_len = r.u64("body length")?;
    too_long("body length", len_at, body_len, MAX_BODY_BYTES)?;
    let body_sha256 = r.array("body sha256")?;
    let chunk = r.blob("chunk", MAX_CHUNK_BYTES)?;
    r.end()?;
    Ok(Piece {
        generation,
        epoch,
        index,
        total,
        body_len,
        body_sha256,
        chunk,
    })
}

/// Decodes an epoch body; refuses anything [`super::epoch::encode_body`]
/// would refuse.
pub fn decode_body(bytes: &[u8]) -> Result<Epoch, EpochError> {
    too_long("epoch body", 0, bytes.len() as u64, MAX_BODY_BYTES)?;
    let mut r = Reader { bytes, at: 0 };
    let number = r.u64("epoch")?;
    let generation = r.u64("generation")?;
    let durable_through = r.u64("durable through")?;
    let count = r.count("page count", MIN_PAGE_ENTRY)?;
    let mut pages: Vec<Page> = Vec::with_capacity(count);
    for index in 0..count {
        let at = r.at;
        let gfn = r.u64("gfn")?;
        if let Some(prev) = pages.last().map(|p| p.gfn) {
            if prev >= gfn {
                return Err(EpochError::GfnOrder {
                    index,
                    at,
                    prev,
                    gfn,
                });
            }
        }
        pages.push(Page {
            gfn,
            data: decode_page(&mut r)?,
        });
    }
    let machine = r.blob("machine state", MAX_MACHINE_BYTES)?;
    let devices = r.blob("device state", MAX_DEVICE_BYTES)?;
    let count = r.count("write count", MIN_WRITE_ENTRY)?;
    let mut writes = Vec::with_capacity(count);
    for _ in 0..count {
        let sector = r.u64("sector")?;
        let at = r.at;
        let data = r.blob("disk write", MAX_WRITE_BYTES)?;
        check_write(at, sector, data.len())?;
        writes.push(DiskWrite { sector, data });
    }
    r.end()?;
    Ok(Epoch {
        number,
        generation,
        durable_through,
        pages,
        machine,
        devices,
        writes,
    })
}

fn decode_page(r: &mut Reader<'_>) -> Result<PageData, EpochError> {
    let at = r.at;
    Ok(match r.u8("page kind")? {
        0 => PageData::Zero,
        1 => PageData::Raw(r.take("raw page", PAGE_SIZE)?.to_vec()),
        2 => {
            let len = usize::from(r.u16("delta length")?);
            let d = r.take("page delta", len)?;
            super::delta::check(PAGE_SIZE, d).map_err(|e| EpochError::Invalid {
                what: "page delta",
                at,
                detail: e.to_string(),
            })?;
            PageData::Delta(d.to_vec())
        }
        kind => {
            let detail = format!("kind {kind} (0 zero, 1 raw, 2 delta)");
            return Err(EpochError::Invalid {
                what: "page",
                at,
                detail,
            });
        }
    })
}
