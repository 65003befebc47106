//! On-disk format of the in-place slots, and where slots and log sit on the disk.
//!
//! The last [`SLOT_COUNT`] sectors of the device are the slot area: slot `n` is the one sector
//! `capacity - SLOT_COUNT + n`, rewritten in place by every `SET n <value>` (like a database page
//! update). The append-only log uses the sectors before it ([`DiskLayout::log_sectors`]).
//!
//! | offset | size  | field                                                          |
//! |--------|-------|----------------------------------------------------------------|
//! | 0      | 4     | magic `b"FTSL"`                                                |
//! | 4      | 4     | CRC-32C (iSCSI) of bytes 8..512 (the rest of the sector), LE   |
//! | 8      | 8     | version (1 for the first SET of the slot, then +1), LE         |
//! | 16     | 2     | slot number, LE (must match the sector's place in the area)    |
//! | 18     | 2     | value length (0..=[`MAX_SLOT_VALUE_LEN`]), LE                  |
//! | 20     | 4     | reserved, zero                                                 |
//! | 24     | v     | value                                                          |
//! | 24+v   | ..512 | zero                                                           |
//!
//! Rules: an all-zero sector is a slot never written. Anything else must decode completely —
//! magic, CRC over the whole rest of the sector, the slot number of its place, a version of at
//! least 1, a length in range, zero reserved bytes and zero padding — or it is damaged.
//!
//! Invariant (checked by the tests and the `decode_slots` fuzz target): a sector that decodes
//! re-encodes to exactly the same 512 bytes.

use crate::record::{MAX_RECORD_SECTORS, SECTOR_SIZE};
use crc::{Crc, CRC_32_ISCSI};

/// Number of slots (`SET`/`SLOT` take a slot number below this).
pub const SLOT_COUNT: usize = 64;
/// Magic bytes at the start of every written slot sector.
pub const SLOT_MAGIC: [u8; 4] = *b"FTSL";
/// Length of the fixed slot header.
pub const SLOT_HEADER_LEN: usize = 24;
/// Longest slot value in bytes (what fits in one sector after the header).
pub const MAX_SLOT_VALUE_LEN: usize = SECTOR_SIZE - SLOT_HEADER_LEN;
/// Bytes of the whole slot area.
pub const SLOT_AREA_BYTES: usize = SLOT_COUNT * SECTOR_SIZE;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

// Slot numbers and value lengths are stored as u16.
const _: () = assert!(SLOT_COUNT <= u16::MAX as usize);
const _: () = assert!(MAX_SLOT_VALUE_LEN <= u16::MAX as usize);

/// Why a slot sector read from the disk is not a valid slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotDecodeError {
    /// Not exactly one sector.
    #[error("slot sector of {0} bytes, expected {SECTOR_SIZE}")]
    Size(usize),
    /// The first four bytes are not the slot magic.
    #[error("bad magic {found:#010x}")]
    BadMagic { found: u32 },
    /// The stored CRC does not match the sector.
    #[error("bad crc stored={stored:#010x} computed={computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// The sector names another slot than the one at its place.
    #[error("sector of slot {expected} holds slot {found}")]
    WrongSlot { expected: usize, found: usize },
    /// Version 0 is never written.
    #[error("version 0")]
    ZeroVersion,
    /// Value length over [`MAX_SLOT_VALUE_LEN`].
    #[error("value length {0} over {MAX_SLOT_VALUE_LEN}")]
    BadLength(usize),
    /// Non-zero reserved bytes or padding after the value.
    #[error("non-zero byte at offset {0} outside the value")]
    StrayByte(usize),
}

/// A valid slot sector, borrowing its value from the sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSector<'a> {
    /// The slot's version: the number of durable SETs of this slot so far.
    pub version: u64,
    /// The value.
    pub value: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The CRC a slot sector must store at offset 4: CRC-32C of everything after the CRC field.
pub fn slot_crc(sector: &[u8]) -> u32 {
    CRC32C.checksum(sector.get(8..).unwrap_or_default())
}

/// Encodes slot `slot` at `version` holding `value` as one sector.
///
/// Panics if `slot`, `version` or the value length is out of range: callers check them first
/// (the parser bounds both; versions start at 1).
pub fn encode_slot(slot: usize, version: u64, value: &[u8]) -> [u8; SECTOR_SIZE] {
    assert!(slot < SLOT_COUNT, "slot {slot} out of range");
    assert!(version >= 1, "slot versions start at 1");
    assert!(value.len() <= MAX_SLOT_VALUE_LEN, "slot value too long");
    let mut s = [0u8; SECTOR_SIZE];
    s[0..4].copy_from_slice(&SLOT_MAGIC);
    s[8..16].copy_from_slice(&version.to_le_bytes());
    // Both bounded above (const assertion: they fit in u16).
    s[16..18].copy_from_slice(&(slot as u16).to_le_bytes());
    s[18..20].copy_from_slice(&(value.len() as u16).to_le_bytes());
    s[SLOT_HEADER_LEN..SLOT_HEADER_LEN + value.len()].copy_from_slice(value);
    let crc = slot_crc(&s);
    s[4..8].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Decodes the sector at place `slot` of the slot area: `Ok(None)` for an all-zero (never
/// written) sector, `Ok(Some(..))` for a valid slot, an error naming the damage otherwise.
pub fn decode_slot(slot: usize, sector: &[u8]) -> Result<Option<SlotSector<'_>>, SlotDecodeError> {
    if sector.len() != SECTOR_SIZE {
        return Err(SlotDecodeError::Size(sector.len()));
    }
    if sector.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if sector[0..4] != SLOT_MAGIC {
        return Err(SlotDecodeError::BadMagic {
            found: u32_at(sector, 0),
        });
    }
    let stored = u32_at(sector, 4);
    let computed = slot_crc(sector);
    if stored != computed {
        return Err(SlotDecodeError::BadCrc { stored, computed });
    }
    let found = u16_at(sector, 16);
    if found != slot {
        return Err(SlotDecodeError::WrongSlot {
            expected: slot,
            found,
        });
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&sector[8..16]);
    let version = u64::from_le_bytes(v);
    if version == 0 {
        return Err(SlotDecodeError::ZeroVersion);
    }
    let len = u16_at(sector, 18);
    if len > MAX_SLOT_VALUE_LEN {
        return Err(SlotDecodeError::BadLength(len));
    }
    let end = SLOT_HEADER_LEN + len;
    let stray = (20..SLOT_HEADER_LEN)
        .chain(end..SECTOR_SIZE)
        .find(|&i| sector[i] != 0);
    if let Some(at) = stray {
        return Err(SlotDecodeError::StrayByte(at));
    }
    Ok(Some(SlotSector {
        version,
        value: &sector[SLOT_HEADER_LEN..end],
    }))
}

/// Why a device cannot hold the KV service's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Fewer sectors than the slot area plus one largest log record.
    #[error(
        "disk of {sectors} sectors is too small: the slot area takes the last {SLOT_COUNT} and the log needs at least {MAX_RECORD_SECTORS} more; give the VM a disk of at least {} sectors",
        DiskLayout::MIN_SECTORS
    )]
    TooSmall { sectors: u64 },
}

/// Where the log and the slot area sit on a device of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLayout {
    /// Device size in sectors.
    pub capacity: u64,
    /// Sectors `0..log_sectors` are the log; the slot area follows up to `capacity`.
    pub log_sectors: u64,
}

impl DiskLayout {
    /// Smallest device the service runs on.
    pub const MIN_SECTORS: u64 = (SLOT_COUNT + MAX_RECORD_SECTORS) as u64;

    /// The layout of a device of `capacity` sectors.
    pub fn new(capacity: u64) -> Result<Self, LayoutError> {
        if capacity < Self::MIN_SECTORS {
            return Err(LayoutError::TooSmall { sectors: capacity });
        }
        Ok(Self {
            capacity,
            log_sectors: capacity - SLOT_COUNT as u64,
        })
    }

    /// First sector of the slot area.
    pub fn slot_area_start(&self) -> u64 {
        self.log_sectors
    }

    /// The sector of slot `slot`.
    pub fn slot_sector(&self, slot: usize) -> u64 {
        assert!(slot < SLOT_COUNT, "slot {slot} out of range");
        self.log_sectors + slot as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_exact_bytes() {
        let s = encode_slot(5, 7, b"page-7");
        let d = decode_slot(5, &s).unwrap().unwrap();
        assert_eq!((d.version, d.value), (7, &b"page-7"[..]));
        assert_eq!(&s[0..4], b"FTSL");
        assert_eq!(u16_at(&s, 16), 5);
        assert_eq!(encode_slot(5, d.version, d.value), s);
        let full = [b'v'; MAX_SLOT_VALUE_LEN];
        let s = encode_slot(SLOT_COUNT - 1, u64::MAX, &full);
        let d = decode_slot(SLOT_COUNT - 1, &s).unwrap().unwrap();
        assert_eq!((d.version, d.value), (u64::MAX, &full[..]));
        let s = encode_slot(0, 1, b"");
        assert_eq!(decode_slot(0, &s).unwrap().unwrap().value, b"");
    }

    #[test]
    fn blank_is_empty() {
        assert_eq!(decode_slot(3, &[0u8; SECTOR_SIZE]), Ok(None));
    }

    #[test]
    fn damage_is_named() {
        let good = encode_slot(2, 9, b"x");
        assert_eq!(
            decode_slot(2, &good[..100]),
            Err(SlotDecodeError::Size(100))
        );
        let mut s = good;
        s[0] = b'X';
        assert!(matches!(
            decode_slot(2, &s),
            Err(SlotDecodeError::BadMagic { .. })
        ));
        // Any flipped bit after the CRC field, padding included, breaks the CRC.
        for at in [8, 16, 18, 20, 24, 200, SECTOR_SIZE - 1] {
            let mut s = good;
            s[at] ^= 0x10;
            assert!(
                matches!(decode_slot(2, &s), Err(SlotDecodeError::BadCrc { .. })),
                "offset {at}"
            );
        }
        // A valid sector of slot 2 found at the place of slot 3.
        assert_eq!(
            decode_slot(3, &good),
            Err(SlotDecodeError::WrongSlot {
                expected: 3,
                found: 2
            })
        );
    }

    /// Re-seals a hand-edited sector with a correct CRC.
    fn reseal(mut s: [u8; SECTOR_SIZE]) -> [u8; SECTOR_SIZE] {
        let crc = slot_crc(&s);
        s[4..8].copy_from_slice(&crc.to_le_bytes());
        s
    }

    #[test]
    fn fields_checked_even_under_a_valid_crc() {
        let good = encode_slot(1, 4, b"abc");
        let mut s = good;
        s[8..16].fill(0);
        assert_eq!(
            decode_slot(1, &reseal(s)),
            Err(SlotDecodeError::ZeroVersion)
        );
        let mut s = good;
        s[18..20].copy_from_slice(&489u16.to_le_bytes());
        assert_eq!(
            decode_slot(1, &reseal(s)),
            Err(SlotDecodeError::BadLength(489))
        );
        let mut s = good;
        s[21] = 1;
        assert_eq!(
            decode_slot(1, &reseal(s)),
            Err(SlotDecodeError::StrayByte(21))
        );
        let mut s = good;
        s[SLOT_HEADER_LEN + 3] = b'd';
        assert_eq!(
            decode_slot(1, &reseal(s)),
            Err(SlotDecodeError::StrayByte(SLOT_HEADER_LEN + 3))
        );
    }

    #[test]
    #[should_panic(expected = "slot 64 out of range")]
    fn encode_refuses_a_slot_out_of_range() {
        let _ = encode_slot(SLOT_COUNT, 1, b"");
    }

    #[test]
    fn layout_reserves_the_last_sectors() {
        let l = DiskLayout::new(131_072).unwrap();
        assert_eq!(l.log_sectors, 131_072 - 64);
        assert_eq!(l.slot_area_start(), 131_008);
        assert_eq!(l.slot_sector(0), 131_008);
        assert_eq!(l.slot_sector(63), 131_071);
        assert!(DiskLayout::new(DiskLayout::MIN_SECTORS).is_ok());
        assert_eq!(
            DiskLayout::new(66),
            Err(LayoutError::TooSmall { sectors: 66 })
        );
    }
}
