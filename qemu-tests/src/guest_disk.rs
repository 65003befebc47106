//! A VM's disk region read out of the shared storage image, as the reference guest lays it out.
//!
//! The region's place comes from the cluster config (`storage.regions`, found through the VM's
//! `disk_region`); the split into log and slot area from the guest's own code
//! (`ftguest_kvlog::DiskLayout`), so the harness and the guest cannot disagree about it.
//! Read-only: nothing here writes to the image.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use config_schema::ClusterConfig;
use ftguest_kvlog::{DiskLayout, SectorSource, SlotState, SlotTable, SECTOR_SIZE};

/// One VM's disk region inside the shared image file.
pub struct GuestDisk {
    file: File,
    offset: u64,
    sectors: u64,
}

/// The bytes of the shared device that are `vm`'s disk region.
pub fn region_bytes(config: &ClusterConfig, vm: &str) -> io::Result<Range<u64>> {
    let v = config
        .vms
        .iter()
        .find(|v| v.name == vm)
        .ok_or_else(|| io::Error::other(format!("no vm {vm} in the config")))?;
    let r = config
        .storage
        .regions
        .iter()
        .find(|r| r.name == v.disk_region)
        .ok_or_else(|| {
            io::Error::other(format!(
                "vm {vm}: no region {} in storage.regions",
                v.disk_region
            ))
        })?;
    Ok(r.offset_mib << 20..(r.offset_mib + r.size_mib) << 20)
}

impl GuestDisk {
    /// Opens `shared` and finds `vm`'s region in `config`.
    pub fn open(shared: &Path, config: &ClusterConfig, vm: &str) -> io::Result<Self> {
        let region = region_bytes(config, vm)?;
        let file = File::open(shared).map_err(|e| {
            io::Error::new(e.kind(), format!("shared image {}: {e}", shared.display()))
        })?;
        Ok(Self {
            file,
            offset: region.start,
            sectors: (region.end - region.start) / SECTOR_SIZE as u64,
        })
    }

    /// Where the guest keeps its log and its slots in this region.
    pub fn layout(&self) -> io::Result<DiskLayout> {
        DiskLayout::new(self.sectors).map_err(io::Error::other)
    }

    /// Decodes every slot of the slot area (CRC, slot number and fields checked).
    pub fn slots(&mut self) -> io::Result<Vec<SlotState>> {
        let layout = self.layout()?;
        let table = SlotTable::read(self, &layout)?;
        Ok((0..ftguest_kvlog::SLOT_COUNT)
            .map(|s| table.get(s).clone())
            .collect())
    }
}

impl SectorSource for GuestDisk {
    type Error = io::Error;

    fn capacity_sectors(&self) -> u64 {
        self.sectors
    }

    fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = first + (buf.len() / SECTOR_SIZE) as u64;
        if end > self.sectors {
            return Err(io::Error::other(format!(
                "read of sectors {first}..{end} past the region's {} sectors",
                self.sectors
            )));
        }
        let at = self.offset + first * SECTOR_SIZE as u64;
        self.file.read_exact_at(buf, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSource;
    use ftguest_kvlog::encode_slot;

    fn example() -> ClusterConfig {
        let text = std::fs::read_to_string(ClusterSource::example().config).unwrap();
        config_schema::parse(&text).unwrap().config
    }

    #[test]
    fn slots_are_read_from_the_end_of_the_vms_region() {
        let config = example();
        let r = &config.storage.regions[0];
        let image = tempfile::NamedTempFile::new().unwrap();
        image
            .as_file()
            .set_len(config.storage.size_mib << 20)
            .unwrap();
        let region_end = (r.offset_mib + r.size_mib) << 20;
        // Slot 3 at its place (C-64+3), slot 5 damaged, a stray valid slot-3 sector at slot 4.
        let at = |slot: u64| region_end - (64 - slot) * 512;
        let f = image.as_file();
        f.write_all_at(&encode_slot(3, 9, b"page"), at(3)).unwrap();
        f.write_all_at(&encode_slot(3, 1, b"stray"), at(4)).unwrap();
        let mut bad = encode_slot(5, 2, b"x");
        bad[100] = 1;
        f.write_all_at(&bad, at(5)).unwrap();
        let mut disk = GuestDisk::open(image.path(), &config, "kv").unwrap();
        assert_eq!(disk.layout().unwrap().log_sectors, (r.size_mib << 11) - 64);
        let slots = disk.slots().unwrap();
        assert_eq!(slots.len(), 64);
        assert_eq!(
            slots[3],
            SlotState::Held {
                version: 9,
                value: b"page".to_vec()
            }
        );
        assert!(matches!(
            slots[4],
            SlotState::Damaged(ftguest_kvlog::SlotDecodeError::WrongSlot { .. })
        ));
        assert!(matches!(
            slots[5],
            SlotState::Damaged(ftguest_kvlog::SlotDecodeError::BadCrc { .. })
        ));
        assert_eq!(slots[0], SlotState::Empty);
        assert!(GuestDisk::open(image.path(), &config, "nope").is_err());
        assert_eq!(
            region_bytes(&config, "kv").unwrap(),
            r.offset_mib << 20..region_end
        );
    }
}
