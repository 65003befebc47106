//! Decoding of transfer messages (the format is in [`super::message`]):
//! a cursor that refuses reads past the end, every length checked against its
//! cap before anything is taken or allocated, and no trailing bytes.

use super::message::{
    check_len, Message, Page, TransferError, MAX_MESSAGE_BYTES, MAX_PAGES_DATA_BYTES,
    MAX_PAGES_PER_MESSAGE, MAX_PAGE_BYTES, MAX_STATE_BYTES, MAX_TEXT_BYTES, MAX_VM_NAME_BYTES,
    PAGE_ENTRY_OVERHEAD, TAGS, VERSION,
};

/// A cursor over the input that refuses reads past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, need: usize) -> Result<&'a [u8], TransferError> {
        let have = self.bytes.len() - self.at;
        if need > have {
            return Err(TransferError::Truncated {
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

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], TransferError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(what, N)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TransferError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TransferError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, TransferError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length field, checked against `max` before anything is taken.
    fn len32(&mut self, what: &'static str, max: usize) -> Result<usize, TransferError> {
        let at = self.at;
        let len = self.u32(what)? as usize;
        check_len(what, at, len, max)?;
        Ok(len)
    }

    fn str(&mut self, what: &'static str, max: usize) -> Result<String, TransferError> {
        let at = self.at;
        let len = u16::from_le_bytes(self.array(what)?) as usize;
        check_len(what, at, len, max)?;
        let bytes = self.take(what, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| TransferError::NotUtf8 { what, at })
    }
}

/// Decodes one complete message; refuses anything [`super::message::encode`] would not
/// produce.
pub fn decode(bytes: &[u8]) -> Result<Message, TransferError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(TransferError::MessageTooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(TransferError::Version { got: version });
    }
    let at = r.at;
    let m = match r.u8("tag")? {
        0 => Message::Offer {
            vm: r.str("vm name", MAX_VM_NAME_BYTES)?,
            generation: r.u64("generation")?,
            memory_bytes: r.u64("memory bytes")?,
            page_size: r.u32("page size")?,
            platform_sha256: r.array("platform sha256")?,
        },
        1 => Message::Accept,
        2 => Message::Refuse {
            reason: r.str("refuse reason", MAX_TEXT_BYTES)?,
        },
        3 => decode_pages(&mut r)?,
        4 => Message::RoundEnd {
            round: r.u32("round")?,
            pages_sent: r.u64("pages sent")?,
            dirty_left: r.u64("dirty left")?,
        },
        5 => Message::RoundAck {
            round: r.u32("round")?,
        },
        6 => {
            let round = r.u32("round")?;
            let len = r.len32("switch state", MAX_STATE_BYTES)?;
            Message::Switch {
                round,
                state: r.take("switch state", len)?.to_vec(),
                memory_sha256: r.array("memory sha256")?,
                log_start_exit: r.u64("log start exit")?,
            }
        }
        7 => Message::Restored {
            memory_sha256: r.array("memory sha256")?,
        },
        8 => Message::Abort {
            reason: r.str("abort reason", MAX_TEXT_BYTES)?,
        },
        9 => Message::Paired {
            generation: r.u64("generation")?,
        },
        tag => {
            debug_assert!(tag >= TAGS);
            return Err(TransferError::UnknownTag { tag, at });
        }
    };
    if r.at != bytes.len() {
        return Err(TransferError::Trailing {
            extra: bytes.len() - r.at,
            at: r.at,
        });
    }
    Ok(m)
}

fn decode_pages(r: &mut Reader<'_>) -> Result<Message, TransferError> {
    let round = r.u32("round")?;
    let at = r.at;
    let count = r.len32("page count", MAX_PAGES_PER_MESSAGE)?;
    if count == 0 {
        return Err(TransferError::Empty {
            what: "Pages message",
            at,
        });
    }
    // Each entry takes at least PAGE_ENTRY_OVERHEAD bytes (a zero page):
    // refuse a count the input cannot hold before reserving for it.
    let left = r.bytes.len() - r.at;
    if count > left / PAGE_ENTRY_OVERHEAD {
        return Err(TransferError::Truncated {
            what: "page entries",
            at: r.at,
            need: count * PAGE_ENTRY_OVERHEAD,
            have: left,
        });
    }
    let mut pages: Vec<Page> = Vec::with_capacity(count);
    let mut data = 0usize;
    for index in 0..count {
        let at = r.at;
        let gfn = r.u64("gfn")?;
        if let Some(prev) = pages.last().map(|p| p.gfn) {
            if prev >= gfn {
                return Err(TransferError::GfnOrder {
                    index,
                    at,
                    prev,
                    gfn,
                });
            }
        }
        let len = r.len32("page", MAX_PAGE_BYTES)?;
        data += len;
        check_len("page data", at, data, MAX_PAGES_DATA_BYTES)?;
        let bytes = r.take("page", len)?.to_vec();
        pages.push(Page { gfn, bytes });
    }
    Ok(Message::Pages { round, pages })
}
