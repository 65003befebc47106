//! The simulated shared device: 512-byte logical sectors grouped into
//! physical sectors of `physical` bytes, holding the region's blocks of
//! `block` bytes.
//!
//! - A write of whole physical sectors (`block >= physical`, layout 2) lands
//!   atomically when it completes; torn by a power loss, it damages only the
//!   sectors it was writing: the writer's own block.
//! - A smaller write (`block < physical`: 512-byte blocks on a 512e device,
//!   the packing of layout 1) is a read-modify-write of its physical sector
//!   done above the device, as a hypervisor's or a host's I/O stack does to
//!   emulate 512-byte sectors: the physical sector is read when the write is
//!   issued and written back whole when it completes. The other blocks in it
//!   then get back what they held at issue (another host's newer record is
//!   lost), and a torn write-back garbles them.

use crate::layout::Block;
use crate::rng::SplitMix;

const LOGICAL: usize = 512;

/// A write on its way to the device.
#[derive(Debug, Clone)]
pub struct PendingWrite {
    pub block: u64,
    pub data: Block,
    /// The physical sector as read at issue, for a read-modify-write.
    snapshot: Option<Vec<u8>>,
}

/// The device's bytes.
pub struct Disk {
    bytes: Vec<u8>,
    pub block: usize,
    pub physical: usize,
}

impl Disk {
    pub fn new(blocks: u64, block: usize, physical: usize) -> Self {
        assert!(block.is_power_of_two() && physical.is_power_of_two() && block >= LOGICAL);
        let len = (blocks as usize * block).next_multiple_of(physical);
        Disk {
            bytes: vec![0u8; len],
            block,
            physical,
        }
    }

    fn range(&self, i: u64) -> std::ops::Range<usize> {
        let at = i as usize * self.block;
        at..at + self.block
    }

    /// The physical sector around block `i` (when it is smaller than one).
    fn physical_range(&self, i: u64) -> std::ops::Range<usize> {
        let at = i as usize * self.block / self.physical * self.physical;
        at..at + self.physical
    }

    /// Whether writes are read-modify-writes of shared physical sectors.
    pub fn rmw(&self) -> bool {
        self.block < self.physical
    }

    pub fn read(&self, i: u64) -> Block {
        self.bytes[self.range(i)].into()
    }

    /// Whether block `i` is all zero.
    pub fn blank(&self, i: u64) -> bool {
        self.bytes[self.range(i)].iter().all(|&b| b == 0)
    }

    /// A write of `data` to block `i`, issued now.
    pub fn issue(&self, i: u64, data: Block) -> PendingWrite {
        assert_eq!(data.len(), self.block, "a write is one block");
        let snapshot = self
            .rmw()
            .then(|| self.bytes[self.physical_range(i)].to_vec());
        PendingWrite {
            block: i,
            data,
            snapshot,
        }
    }

    /// The write lands whole. Returns the other blocks whose bytes it changed
    /// (stale contents written back by a read-modify-write).
    pub fn land(&mut self, w: &PendingWrite) -> Vec<u64> {
        let mut changed = Vec::new();
        if let Some(snap) = &w.snapshot {
            let r = self.physical_range(w.block);
            let first = (r.start / self.block) as u64;
            for (k, chunk) in snap.chunks(self.block).enumerate() {
                let b = first + k as u64;
                if b != w.block && self.bytes[self.range(b)] != *chunk {
                    changed.push(b);
                }
            }
            self.bytes[r].copy_from_slice(snap);
        }
        let r = self.range(w.block);
        self.bytes[r].copy_from_slice(&w.data);
        changed
    }

    /// The write tears (power lost while the device wrote it). Returns every
    /// block left damaged.
    pub fn tear(&mut self, w: &PendingWrite, rng: &mut SplitMix) -> Vec<u64> {
        let own = self.range(w.block);
        let mut damaged = vec![w.block];
        if self.rmw() {
            // The write-back of the whole physical sector stopped part way:
            // every other block in it is garbled, the own one too.
            let r = self.physical_range(w.block);
            let first = (r.start / self.block) as u64;
            for k in 0..(self.physical / self.block) as u64 {
                if first + k != w.block {
                    damaged.push(first + k);
                }
            }
            garbage(&mut self.bytes[r], rng);
        } else {
            // Some logical sectors of the own block were written, the rest
            // hold garbage (or their old bytes).
            let sectors = self.block / LOGICAL;
            let done = rng.below(sectors as u64) as usize;
            let (new, rest) = (
                own.start..own.start + done * LOGICAL,
                own.start + done * LOGICAL..own.end,
            );
            self.bytes[new.clone()].copy_from_slice(&w.data[..done * LOGICAL]);
            garbage(&mut self.bytes[rest], rng);
        }
        damaged
    }

    /// Bit rot: block `i` is garbled in place.
    pub fn garble(&mut self, i: u64, rng: &mut SplitMix) {
        let r = self.range(i);
        let at = r.start + rng.below(self.block as u64) as usize;
        let flips = 1 + rng.below(4) as usize;
        for k in 0..flips {
            let j = r.start + (at - r.start + k * 37) % self.block;
            self.bytes[j] ^= 1 << rng.below(8);
        }
        if self.blank(i) {
            self.bytes[at] = 0x5a;
        }
    }
}

/// Fills `b` with random bytes, never all zero (garbage is not blank).
pub fn garbage(b: &mut [u8], rng: &mut SplitMix) {
    for chunk in b.chunks_mut(8) {
        let x = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    b[0] |= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(byte: u8, len: usize) -> Block {
        vec![byte; len].into_boxed_slice()
    }

    #[test]
    fn a_read_modify_write_puts_back_what_the_neighbours_held_at_issue() {
        let mut d = Disk::new(16, 512, 4096);
        let a = d.issue(1, data(0xaa, 512));
        let b = d.issue(2, data(0xbb, 512));
        assert!(d.land(&b).is_empty());
        // a's write-back restores block 2 as it was when a was issued.
        assert_eq!(d.land(&a), [2]);
        assert!(d.blank(2));
        assert_eq!(d.read(1)[0], 0xaa);
    }

    #[test]
    fn whole_physical_blocks_do_not_touch_each_other() {
        let mut d = Disk::new(4, 4096, 4096);
        let a = d.issue(1, data(0xaa, 4096));
        let b = d.issue(2, data(0xbb, 4096));
        assert!(d.land(&b).is_empty() && d.land(&a).is_empty());
        assert_eq!((d.read(1)[0], d.read(2)[0]), (0xaa, 0xbb));
        let mut rng = SplitMix::new(1);
        let c = d.issue(2, data(0xcc, 4096));
        assert_eq!(d.tear(&c, &mut rng), [2]);
        assert!(
            d.read(1).iter().all(|&x| x == 0xaa),
            "a tear stays in its block"
        );
    }

    #[test]
    fn a_torn_read_modify_write_garbles_the_neighbours() {
        let mut d = Disk::new(16, 512, 4096);
        let mut rng = SplitMix::new(2);
        let w = d.issue(3, data(0xaa, 512));
        let damaged = d.tear(&w, &mut rng);
        assert_eq!(damaged.len(), 8);
        assert!(!d.blank(0) && !d.blank(7) && d.blank(8));
        d.garble(9, &mut rng);
        assert!(!d.blank(9));
    }
}
