//! Dirty-page tracking: "which guest pages changed since I last asked", for
//! live pre-copy to a new Secondary.
//!
//! Two writers change guest memory: the vCPU (seen by KVM's dirty log, enabled
//! per memory slot with `KVM_MEM_LOG_DIRTY_PAGES`) and the VMM itself (virtio
//! devices writing used rings and buffers, which KVM cannot see; the devices
//! record those pages). [`Vm::dirty_pages_since_last_call`] merges both.

use crate::virtio::DIRTY_PAGE_SIZE;
use crate::vm::{kvm_err, Vm, VmError};

/// Guest page size of the dirty log.
pub const PAGE_SIZE: u64 = 4096;

/// Page frame numbers set in a KVM dirty bitmap.
pub fn bitmap_to_gfns(bitmap: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (w, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let b = bits.trailing_zeros() as u64;
            out.push(w as u64 * 64 + b);
            bits &= bits - 1;
        }
    }
    out
}

impl Vm {
    /// Starts dirty logging. Pages written from now on are reported by the next
    /// [`Vm::dirty_pages_since_last_call`]; the caller copies all memory once.
    pub fn start_dirty_tracking(&mut self) -> Result<(), VmError> {
        if !self.dirty_log {
            self.register_memory(true)?;
            self.dirty_log = true;
            // Device-written pages from before tracking started are covered by
            // the caller's full copy.
            for t in &mut self.devices.virtio {
                t.take_dirty_pages();
            }
        }
        Ok(())
    }

    /// Stops dirty logging (guest writes get cheaper again).
    pub fn stop_dirty_tracking(&mut self) -> Result<(), VmError> {
        if self.dirty_log {
            self.register_memory(false)?;
            self.dirty_log = false;
        }
        Ok(())
    }

    pub fn dirty_tracking(&self) -> bool {
        self.dirty_log
    }

    /// Sorted, deduplicated guest page frame numbers (GPA / 4096) written since
    /// the previous call (or since tracking started). Starts tracking if it was
    /// off, in which case every page counts as dirty.
    pub fn dirty_pages_since_last_call(&mut self) -> Result<Vec<u64>, VmError> {
        if !self.dirty_log {
            self.start_dirty_tracking()?;
            return Ok((0..self.mem_size / PAGE_SIZE).collect());
        }
        let bitmap = self
            .vm_fd
            .get_dirty_log(0, self.mem_size as usize)
            .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
        let mut gfns = bitmap_to_gfns(&bitmap);
        debug_assert_eq!(DIRTY_PAGE_SIZE, PAGE_SIZE);
        for t in &mut self.devices.virtio {
            gfns.extend(t.take_dirty_pages());
        }
        gfns.sort_unstable();
        gfns.dedup();
        Ok(gfns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bits_become_page_numbers() {
        assert_eq!(bitmap_to_gfns(&[0b1010, 0, 1 << 63]), vec![1, 3, 191]);
        assert!(bitmap_to_gfns(&[0, 0]).is_empty());
    }
}
