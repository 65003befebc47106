//! The in-memory copy of the slot area and the in-place update of one slot.
//!
//! Rules: at boot the whole slot area is read and decoded ([`SlotTable::read`]); a `SET` is
//! [`SlotTable::prepare`]d (the next version and its sector), written durably by the caller,
//! and only then [`SlotTable::commit`]ted, so `SLOT` never shows a value that is not on disk.
//! A slot whose sector is damaged at boot is refused for `SET` and `SLOT` until the disk is
//! repaired: its last version is unknown, and writing any version could roll it back.
//!
//! Invariant (asserted): for every slot, the highest version ever handed to the device is at
//! least the version held, and every prepared version is above both — versions never repeat,
//! not even after a write that failed (its sector may or may not have reached the disk).

use crate::record::SECTOR_SIZE;
use crate::replay::SectorSource;
use crate::slot::{
    decode_slot, encode_slot, DiskLayout, SlotDecodeError, MAX_SLOT_VALUE_LEN, SLOT_AREA_BYTES,
    SLOT_COUNT,
};
use alloc::vec;
use alloc::vec::Vec;

/// What one slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Never written (an all-zero sector).
    Empty,
    /// The last durable `SET`.
    Held {
        /// Its version.
        version: u64,
        /// Its value.
        value: Vec<u8>,
    },
    /// The sector did not decode at boot.
    Damaged(SlotDecodeError),
}

/// Why a slot cannot be updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The slot's sector was damaged at boot.
    #[error("slot {slot} damaged ({reason})")]
    Damaged {
        slot: usize,
        reason: SlotDecodeError,
    },
    /// Slot number out of range (the parser never produces one).
    #[error("slot {0} out of range")]
    OutOfRange(usize),
    /// Value longer than one sector holds (the parser never produces one).
    #[error("value too long")]
    ValueTooLong,
    /// The slot's version is already the highest there is (only a forged disk gets there).
    #[error("slot {0} has no version left")]
    VersionsExhausted(usize),
}

/// A slot update encoded for its sector, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSlot {
    /// The slot.
    pub slot: usize,
    /// The version it gets.
    pub version: u64,
    /// The sector's bytes.
    pub bytes: [u8; SECTOR_SIZE],
}

/// All slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    states: Vec<SlotState>,
    /// Per slot, the highest version handed to the device (or found on it).
    issued: Vec<u64>,
}

impl SlotTable {
    /// Decodes a whole slot area (exactly [`SLOT_AREA_BYTES`]).
    pub fn decode(area: &[u8]) -> Self {
        assert_eq!(area.len(), SLOT_AREA_BYTES, "slot area size");
        let states: Vec<SlotState> = area
            .chunks_exact(SECTOR_SIZE)
            .enumerate()
            .map(|(slot, sector)| match decode_slot(slot, sector) {
                Ok(None) => SlotState::Empty,
                Ok(Some(s)) => SlotState::Held {
                    version: s.version,
                    value: s.value.to_vec(),
                },
                Err(e) => SlotState::Damaged(e),
            })
            .collect();
        let issued = states.iter().map(held_version).collect();
        Self { states, issued }
    }

    /// Reads and decodes the slot area of `src` (one request of [`SLOT_AREA_BYTES`]).
    pub fn read<S: SectorSource + ?Sized>(
        src: &mut S,
        layout: &DiskLayout,
    ) -> Result<Self, S::Error> {
        let mut area = vec![0u8; SLOT_AREA_BYTES];
        src.read_sectors(layout.slot_area_start(), &mut area)?;
        Ok(Self::decode(&area))
    }

    /// What slot `slot` holds (panics when out of range).
    pub fn get(&self, slot: usize) -> &SlotState {
        &self.states[slot]
    }

    /// Slots holding a value.
    pub fn held(&self) -> usize {
        self.states
            .iter()
            .filter(|s| matches!(s, SlotState::Held { .. }))
            .count()
    }

    /// The damaged slots and why, in slot order.
    pub fn damaged(&self) -> impl Iterator<Item = (usize, SlotDecodeError)> + '_ {
        self.states.iter().enumerate().filter_map(|(i, s)| match s {
            SlotState::Damaged(e) => Some((i, *e)),
            _ => None,
        })
    }

    /// Encodes the next version of `slot` holding `value` and reserves that version.
    pub fn prepare(&mut self, slot: usize, value: &[u8]) -> Result<PendingSlot, SlotError> {
        if slot >= SLOT_COUNT {
            return Err(SlotError::OutOfRange(slot));
        }
        if value.len() > MAX_SLOT_VALUE_LEN {
            return Err(SlotError::ValueTooLong);
        }
        if let SlotState::Damaged(reason) = self.states[slot] {
            return Err(SlotError::Damaged { slot, reason });
        }
        let version = self.issued[slot]
            .checked_add(1)
            .ok_or(SlotError::VersionsExhausted(slot))?;
        assert!(
            version > held_version(&self.states[slot]),
            "slot versions must grow"
        );
        self.issued[slot] = version;
        Ok(PendingSlot {
            slot,
            version,
            bytes: encode_slot(slot, version, value),
        })
    }

    /// Records `pending` as the slot's value once its sector is durable.
    pub fn commit(&mut self, pending: &PendingSlot) {
        let slot = pending.slot;
        assert!(
            pending.version <= self.issued[slot]
                && pending.version > held_version(&self.states[slot]),
            "slot {slot}: commit of version {} out of order",
            pending.version
        );
        let decoded = decode_slot(slot, &pending.bytes)
            .ok()
            .flatten()
            .expect("a prepared slot sector decodes");
        self.states[slot] = SlotState::Held {
            version: pending.version,
            value: decoded.value.to_vec(),
        };
    }
}

fn held_version(s: &SlotState) -> u64 {
    match s {
        SlotState::Held { version, .. } => *version,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::MemDisk;

    fn layout() -> DiskLayout {
        DiskLayout::new(128).unwrap()
    }

    fn write(disk: &mut MemDisk, p: &PendingSlot) {
        let at = layout().slot_sector(p.slot) as usize * SECTOR_SIZE;
        disk.bytes[at..at + SECTOR_SIZE].copy_from_slice(&p.bytes);
    }

    #[test]
    fn versions_grow_and_survive_a_reread() {
        let mut disk = MemDisk::new(128);
        let mut t = SlotTable::read(&mut disk, &layout()).unwrap();
        assert_eq!(t.get(7), &SlotState::Empty);
        for (i, v) in [&b"a"[..], b"bb", b""].iter().enumerate() {
            let p = t.prepare(7, v).unwrap();
            assert_eq!(p.version, i as u64 + 1);
            write(&mut disk, &p);
            t.commit(&p);
        }
        let held = SlotState::Held {
            version: 3,
            value: Vec::new(),
        };
        assert_eq!(t.get(7), &held);
        let mut t = SlotTable::read(&mut disk, &layout()).unwrap();
        assert_eq!((t.get(7), t.held()), (&held, 1));
        assert_eq!(t.prepare(7, b"x").unwrap().version, 4);
    }

    #[test]
    fn a_failed_write_never_reuses_its_version() {
        let mut t = SlotTable::decode(&[0u8; SLOT_AREA_BYTES]);
        let lost = t.prepare(1, b"lost").unwrap();
        // Not committed: the write failed. The next SET takes a higher version.
        let next = t.prepare(1, b"next").unwrap();
        assert_eq!((lost.version, next.version), (1, 2));
        assert_eq!(t.get(1), &SlotState::Empty);
        t.commit(&next);
        assert_eq!(
            t.get(1),
            &SlotState::Held {
                version: 2,
                value: b"next".to_vec()
            }
        );
    }

    #[test]
    fn damaged_slot_is_refused_others_serve() {
        let mut disk = MemDisk::new(128);
        let mut t = SlotTable::read(&mut disk, &layout()).unwrap();
        let p = t.prepare(4, b"v").unwrap();
        write(&mut disk, &p);
        let at = layout().slot_sector(4) as usize * SECTOR_SIZE;
        disk.bytes[at + 30] ^= 1;
        let mut t = SlotTable::read(&mut disk, &layout()).unwrap();
        let mut damaged = t.damaged();
        assert!(matches!(
            damaged.next(),
            Some((4, SlotDecodeError::BadCrc { .. }))
        ));
        assert!(damaged.next().is_none());
        drop(damaged);
        assert!(matches!(
            t.prepare(4, b"w"),
            Err(SlotError::Damaged { slot: 4, .. })
        ));
        assert_eq!(t.prepare(5, b"w").unwrap().version, 1);
        assert_eq!(t.prepare(64, b"w"), Err(SlotError::OutOfRange(64)));
        assert_eq!(
            t.prepare(5, &[b'v'; MAX_SLOT_VALUE_LEN + 1]),
            Err(SlotError::ValueTooLong)
        );
    }

    #[test]
    fn the_last_version_is_refused_not_wrapped() {
        let mut area = vec![0u8; SLOT_AREA_BYTES];
        area[..SECTOR_SIZE].copy_from_slice(&encode_slot(0, u64::MAX, b"end"));
        let mut t = SlotTable::decode(&area);
        assert_eq!(t.prepare(0, b"x"), Err(SlotError::VersionsExhausted(0)));
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn committing_an_older_version_panics() {
        let mut t = SlotTable::decode(&[0u8; SLOT_AREA_BYTES]);
        let old = t.prepare(0, b"1").unwrap();
        let new = t.prepare(0, b"2").unwrap();
        t.commit(&new);
        t.commit(&old);
    }
}
