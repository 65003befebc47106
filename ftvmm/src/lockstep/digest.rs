//! Digests both sides compute identically: of the outputs emitted between two
//! `Outputs` records, and of guest memory at an agreed exit (tests, `ftctl`).

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::log::Fnv;
use crate::io::{BlockOp, OutputEvent};

/// Running digest of outputs since the last [`OutputDigest::take`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputDigest {
    count: u32,
    h: Fnv,
}

impl OutputDigest {
    pub fn add(&mut self, ev: &OutputEvent) {
        self.count = self.count.wrapping_add(1);
        let h = &mut self.h;
        match ev {
            OutputEvent::Frame { dev, data } => {
                h.write(&[1, *dev]);
                h.write_u64(data.len() as u64);
                h.write(data);
            }
            OutputEvent::Console(data) => {
                h.write(&[2]);
                h.write_u64(data.len() as u64);
                h.write(data);
            }
            OutputEvent::Block(req) => {
                h.write(&[3, req.dev]);
                h.write_u64(req.id);
                match &req.op {
                    BlockOp::Read { sector, len } => {
                        h.write(&[1]);
                        h.write_u64(*sector);
                        h.write_u64(u64::from(*len));
                    }
                    BlockOp::Write { sector, data } => {
                        h.write(&[2]);
                        h.write_u64(*sector);
                        h.write_u64(data.len() as u64);
                        h.write(data);
                    }
                    BlockOp::Flush => h.write(&[3]),
                }
            }
        }
    }

    /// `(count, digest)` of the outputs since the last call, or `None` if
    /// there were none; resets.
    pub fn take(&mut self) -> Option<(u32, u64)> {
        if self.count == 0 {
            return None;
        }
        let r = (self.count, self.h.finish());
        *self = OutputDigest::default();
        Some(r)
    }
}

/// SHA-256 of all guest memory, regions in address order, as hex.
pub fn memory_sha256(mem: &vm_memory::GuestMemoryMmap) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .expect("region start is inside the region");
        // SAFETY: `host` is the start of a live mapping of `len` bytes owned by
        // `mem`, which outlives this borrow. The vCPU is not running (the
        // caller holds the VM between runs), so nothing writes it meanwhile;
        // reading plain bytes has no validity requirements.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        ctx.update(bytes);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_and_order_and_resets() {
        let a = OutputEvent::Console(b"a".to_vec());
        let b = OutputEvent::Frame {
            dev: 0,
            data: b"a".to_vec(),
        };
        let mut x = OutputDigest::default();
        assert_eq!(x.take(), None);
        x.add(&a);
        x.add(&b);
        let ab = x.take().unwrap();
        x.add(&b);
        x.add(&a);
        let ba = x.take().unwrap();
        assert_eq!(ab.0, 2);
        assert_ne!(ab.1, ba.1);
        assert_eq!(x.take(), None);
    }
}
