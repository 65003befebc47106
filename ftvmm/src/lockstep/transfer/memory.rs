//! An in-memory [`GuestMemoryImage`] and the SHA-256 helper: what the tests
//! and the simulation write into; a real receiver writes into the guest's
//! `GuestMemoryMmap` (the integration).

use super::receiver::{GuestMemoryImage, MemoryImageError};

/// A memory image in a `Vec` (tests, the simulation, and a receiver that
/// copies into guest memory after the switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMemory {
    pub page_size: u32,
    pub bytes: Vec<u8>,
}

impl VecMemory {
    pub fn new(memory_bytes: u64, page_size: u32) -> Self {
        VecMemory {
            page_size,
            bytes: vec![0; memory_bytes as usize],
        }
    }
}

impl GuestMemoryImage for VecMemory {
    fn write_page(&mut self, gfn: u64, bytes: &[u8]) -> Result<(), MemoryImageError> {
        let ps = self.page_size as usize;
        let start = usize::try_from(gfn)
            .ok()
            .and_then(|g| g.checked_mul(ps))
            .filter(|s| s + ps <= self.bytes.len() && bytes.len() == ps)
            .ok_or_else(|| MemoryImageError {
                gfn,
                detail: format!("{} bytes at page {gfn} do not fit", bytes.len()),
            })?;
        self.bytes[start..start + ps].copy_from_slice(bytes);
        Ok(())
    }

    fn sha256(&self) -> [u8; 32] {
        sha256(&self.bytes)
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
