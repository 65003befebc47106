//! The Primary's pending disk writes as the guest must see them: a write
//! completes to the guest at once but reaches the shared device only after
//! its epoch is acknowledged, so a later read of those sectors must be
//! served from here. Keyed by sector, newest wins, one sector at a time (so
//! partial overlaps need no special case); a sector leaves when the write
//! that put it there is durable on the device (unless a newer epoch wrote
//! it again meanwhile).

use std::collections::BTreeMap;

use super::epoch::SECTOR_SIZE;

/// Sectors written and not yet durable: sector -> (epoch, bytes).
#[derive(Default)]
pub struct Overlay {
    sectors: BTreeMap<u64, (u64, Box<[u8]>)>,
}

impl Overlay {
    /// Records a write of epoch `epoch` (a whole number of sectors).
    pub fn write(&mut self, epoch: u64, sector: u64, data: &[u8]) {
        assert!(
            data.len().is_multiple_of(SECTOR_SIZE),
            "partial sector write"
        );
        for (i, s) in data.chunks_exact(SECTOR_SIZE).enumerate() {
            self.sectors.insert(sector + i as u64, (epoch, s.into()));
        }
    }

    /// The write of `epoch` at `sector` is durable: drop what it left here
    /// unless a newer epoch overwrote it.
    pub fn durable(&mut self, epoch: u64, sector: u64, sectors: u64) {
        for s in sector..sector + sectors {
            if self.sectors.get(&s).is_some_and(|(e, _)| *e == epoch) {
                self.sectors.remove(&s);
            }
        }
    }

    /// Fills `buf` (a whole number of sectors from `sector`): sectors held
    /// here from the overlay, every run of others with one `device` read.
    pub fn read<E, F>(&self, sector: u64, buf: &mut [u8], mut device: F) -> Result<(), E>
    where
        F: FnMut(u64, &mut [u8]) -> Result<(), E>,
    {
        assert!(buf.len().is_multiple_of(SECTOR_SIZE), "partial sector read");
        let n = (buf.len() / SECTOR_SIZE) as u64;
        let mut miss_from: Option<u64> = None;
        for i in 0..=n {
            let held = (i < n).then(|| self.sectors.get(&(sector + i))).flatten();
            let missing = i < n && held.is_none();
            match (missing, miss_from) {
                (true, None) => miss_from = Some(i),
                (false, Some(from)) => {
                    let range = from as usize * SECTOR_SIZE..i as usize * SECTOR_SIZE;
                    device(sector + from, &mut buf[range])?;
                    miss_from = None;
                }
                _ => {}
            }
            if let Some((_, bytes)) = held {
                let at = i as usize * SECTOR_SIZE;
                buf[at..at + SECTOR_SIZE].copy_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// Sectors held.
    /// The sectors of `[sector, sector + n)` held here, ascending.
    pub fn held(&self, sector: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
        self.sectors
            .range(sector..sector.saturating_add(n))
            .map(|(s, (_, b))| (*s, b.to_vec()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sectors.is_empty()
    }
}
