//! On-disk format of one KV log record.
//!
//! A record starts on a sector boundary and is zero-padded to a whole number of 512-byte sectors:
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 4    | magic `b"FTKV"`                                              |
//! | 4      | 4    | CRC-32C (iSCSI) of bytes 8.. up to the end of the value      |
//! | 8      | 8    | sequence number (first record is 1, then +1 per record), LE  |
//! | 16     | 4    | CRC of the previous record (0 for the first record), LE      |
//! | 20     | 2    | key length (1..=64), LE                                      |
//! | 22     | 2    | value length (0..=1024), LE                                  |
//! | 24     | k+v  | key bytes, then value bytes                                  |
//!
//! The padding is not covered by the CRC. The chained `prev_crc` lets replay reject a stale record
//! that happens to follow a rewritten one with the expected sequence number.

use alloc::vec::Vec;
use crc::{Crc, CRC_32_ISCSI};

/// Size of a disk sector; every record starts at a sector boundary.
pub const SECTOR_SIZE: usize = 512;
/// Magic bytes at the start of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"FTKV";
/// Length of the fixed record header.
pub const HEADER_LEN: usize = 24;
/// Longest key in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value in bytes.
pub const MAX_VALUE_LEN: usize = 1024;
/// Sectors taken by the largest possible record.
pub const MAX_RECORD_SECTORS: usize = sectors_for(HEADER_LEN + MAX_KEY_LEN + MAX_VALUE_LEN);

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// Number of whole sectors needed for `len` bytes.
pub const fn sectors_for(len: usize) -> usize {
    len.div_ceil(SECTOR_SIZE)
}

/// Why bytes read from the disk are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the lengths in it require.
    #[error("truncated: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    /// The first four bytes are not the record magic.
    #[error("bad magic {found:#010x}")]
    BadMagic { found: u32 },
    /// Key or value length outside the allowed range.
    #[error("bad lengths key={key_len} value={value_len}")]
    BadLength { key_len: usize, value_len: usize },
    /// The stored CRC does not match the contents.
    #[error("bad crc stored={stored:#010x} computed={computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
}

/// Why a record cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Key empty or longer than [`MAX_KEY_LEN`].
    #[error("key length {0} not in 1..={MAX_KEY_LEN}")]
    KeyLength(usize),
    /// Value longer than [`MAX_VALUE_LEN`].
    #[error("value length {0} over {MAX_VALUE_LEN}")]
    ValueLength(usize),
}

/// The fixed header of a record, as parsed from its first sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored CRC-32C.
    pub crc: u32,
    /// Sequence number.
    pub seq: u64,
    /// CRC of the previous record in the log.
    pub prev_crc: u32,
    /// Key length in bytes.
    pub key_len: usize,
    /// Value length in bytes.
    pub value_len: usize,
}

impl RecordHeader {
    /// Bytes of header + key + value (without padding).
    pub fn data_len(&self) -> usize {
        HEADER_LEN + self.key_len + self.value_len
    }

    /// Sectors the whole record occupies.
    pub fn sectors(&self) -> usize {
        sectors_for(self.data_len())
    }
}

/// A decoded record borrowing its key and value from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The header (lengths, sequence, CRCs).
    pub header: RecordHeader,
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
}

/// An encoded record, padded to whole sectors, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    /// The sector-padded bytes.
    pub bytes: Vec<u8>,
    /// The record's CRC (becomes the next record's `prev_crc`).
    pub crc: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses and sanity-checks the header at the start of `bytes` (needs [`HEADER_LEN`] bytes).
pub fn parse_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            have: bytes.len(),
        });
    }
    if bytes[0..4] != RECORD_MAGIC {
        return Err(DecodeError::BadMagic {
            found: u32_at(bytes, 0),
        });
    }
    let key_len = usize::from(u16_at(bytes, 20));
    let value_len = usize::from(u16_at(bytes, 22));
    if key_len == 0 || key_len > MAX_KEY_LEN || value_len > MAX_VALUE_LEN {
        return Err(DecodeError::BadLength { key_len, value_len });
    }
    Ok(RecordHeader {
        crc: u32_at(bytes, 4),
        seq: u64_at(bytes, 8),
        prev_crc: u32_at(bytes, 16),
        key_len,
        value_len,
    })
}

/// Decodes a whole record from `bytes` (which may hold padding or more data after it).
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header = parse_header(bytes)?;
    let end = header.data_len();
    if bytes.len() < end {
        return Err(DecodeError::Truncated {
            needed: end,
            have: bytes.len(),
        });
    }
    let computed = CRC32C.checksum(&bytes[8..end]);
    if computed != header.crc {
        return Err(DecodeError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    let key_end = HEADER_LEN + header.key_len;
    Ok(Record {
        header,
        key: &bytes[HEADER_LEN..key_end],
        value: &bytes[key_end..end],
    })
}

/// Encodes a record and pads it with zeros to whole sectors.
pub fn encode_record(
    seq: u64,
    prev_crc: u32,
    key: &[u8],
    value: &[u8],
) -> Result<EncodedRecord, EncodeError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(EncodeError::KeyLength(key.len()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(EncodeError::ValueLength(value.len()));
    }
    let data_len = HEADER_LEN + key.len() + value.len();
    let mut bytes = Vec::with_capacity(sectors_for(data_len) * SECTOR_SIZE);
    bytes.extend_from_slice(&RECORD_MAGIC);
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&prev_crc.to_le_bytes());
    // Lengths were checked above, so they fit in u16.
    bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(value);
    let crc = CRC32C.checksum(&bytes[8..data_len]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    bytes.resize(sectors_for(data_len) * SECTOR_SIZE, 0);
    Ok(EncodedRecord { bytes, crc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn roundtrip_and_padding() {
        let enc = encode_record(7, 0xdead_beef, b"key", b"value").unwrap();
        assert_eq!(enc.bytes.len(), SECTOR_SIZE);
        let rec = decode_record(&enc.bytes).unwrap();
        assert_eq!(rec.key, b"key");
        assert_eq!(rec.value, b"value");
        assert_eq!(rec.header.seq, 7);
        assert_eq!(rec.header.prev_crc, 0xdead_beef);
        assert_eq!(rec.header.crc, enc.crc);
        assert_eq!(rec.header.sectors(), 1);
    }

    #[test]
    fn max_sizes() {
        let key = vec![b'k'; MAX_KEY_LEN];
        let value = vec![b'v'; MAX_VALUE_LEN];
        let enc = encode_record(1, 0, &key, &value).unwrap();
        assert_eq!(enc.bytes.len(), MAX_RECORD_SECTORS * SECTOR_SIZE);
        assert_eq!(MAX_RECORD_SECTORS, 3);
        let rec = decode_record(&enc.bytes).unwrap();
        assert_eq!(rec.key, &key[..]);
        assert_eq!(rec.value, &value[..]);
        // Empty value is allowed.
        assert!(encode_record(1, 0, b"k", b"").is_ok());
    }

    #[test]
    fn over_limits_rejected() {
        assert_eq!(
            encode_record(1, 0, b"", b"v"),
            Err(EncodeError::KeyLength(0))
        );
        assert_eq!(
            encode_record(1, 0, &[b'k'; MAX_KEY_LEN + 1], b"v"),
            Err(EncodeError::KeyLength(MAX_KEY_LEN + 1))
        );
        assert_eq!(
            encode_record(1, 0, b"k", &[b'v'; MAX_VALUE_LEN + 1]),
            Err(EncodeError::ValueLength(MAX_VALUE_LEN + 1))
        );
    }

    #[test]
    fn corrupted_byte_gives_bad_crc() {
        let mut enc = encode_record(1, 0, b"key", b"value").unwrap();
        enc.bytes[HEADER_LEN + 1] ^= 0x40;
        assert!(matches!(
            decode_record(&enc.bytes),
            Err(DecodeError::BadCrc { .. })
        ));
        // Corrupting the padding is harmless.
        let mut enc = encode_record(1, 0, b"key", b"value").unwrap();
        enc.bytes[SECTOR_SIZE - 1] = 0xff;
        assert!(decode_record(&enc.bytes).is_ok());
    }

    #[test]
    fn bad_magic_length_and_truncation() {
        assert_eq!(
            decode_record(&[0u8; SECTOR_SIZE]),
            Err(DecodeError::BadMagic { found: 0 })
        );
        let mut enc = encode_record(1, 0, b"key", b"value").unwrap();
        enc.bytes[20] = 0;
        enc.bytes[21] = 0;
        assert_eq!(
            decode_record(&enc.bytes),
            Err(DecodeError::BadLength {
                key_len: 0,
                value_len: 5
            })
        );
        let enc = encode_record(1, 0, b"key", &[b'v'; 600]).unwrap();
        assert_eq!(
            decode_record(&enc.bytes[..SECTOR_SIZE]),
            Err(DecodeError::Truncated {
                needed: HEADER_LEN + 3 + 600,
                have: SECTOR_SIZE
            })
        );
        assert!(matches!(
            parse_header(&enc.bytes[..10]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
