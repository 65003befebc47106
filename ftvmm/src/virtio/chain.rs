//! Descriptor-chain access shared by the devices: popping a chain from a
//! virtqueue, validating it against guest memory, and scatter/gather copies.
//!
//! `virtio-queue`'s [`DescriptorChain`] iterator bounds every walk by the queue
//! size (so a loop ends) and silently stops on anything invalid (next index out
//! of range, unreadable table, total length over 4 GiB). We turn that silent stop
//! into an error by checking that the last descriptor yielded has no NEXT flag,
//! and we check every buffer against guest memory before anyone copies.

use std::collections::BTreeSet;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{GuestMemoryMmap, DIRTY_PAGE_SIZE};

/// One validated buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// Why a chain (or the ring it came from) is unusable. Any of these puts the
/// device into DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("available ring unusable: {0}")]
    Ring(virtio_queue::Error),
    #[error("chain head index {head} out of range for queue size {size}")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("chain at head {head} is broken (loop, next index out of range, unreadable descriptor or over 4 GiB)")]
    Truncated { head: u16 },
    #[error("chain at head {head} has more than {limit} descriptors")]
    TooLong { head: u16, limit: usize },
    #[error("descriptor buffer {addr:#x}+{len:#x} at head {head} is outside guest memory")]
    OutOfMemory { head: u16, addr: u64, len: u32 },
}

/// A chain taken from the available ring, already validated.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| !d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }

    pub fn readable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| !d.writable)
    }

    pub fn writable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| d.writable)
    }
}

/// Pop the next available chain of `queue` and validate it. `Ok(None)` means the
/// ring is empty.
pub(crate) fn pop_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<Option<Chain>, ChainError> {
    let size = queue.size();
    let chain = {
        let mut iter = queue.iter(mem).map_err(ChainError::Ring)?;
        match iter.next() {
            Some(c) => c,
            None => return Ok(None),
        }
    };
    let head = chain.head_index();
    if head >= size {
        return Err(ChainError::HeadOutOfRange { head, size });
    }
    // Without VIRTIO_F_INDIRECT_DESC (never offered) a chain has at most `size`
    // descriptors; a longer walk came through an indirect table we refuse.
    let limit = usize::from(size);
    let mut descs = Vec::new();
    let mut last_has_next = true;
    for d in chain {
        if descs.len() == limit {
            return Err(ChainError::TooLong { head, limit });
        }
        let (addr, len) = (d.addr().0, d.len());
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), len as usize) {
            return Err(ChainError::OutOfMemory { head, addr, len });
        }
        last_has_next = d.has_next();
        descs.push(Desc {
            addr,
            len,
            writable: d.is_write_only(),
        });
    }
    if descs.is_empty() || last_has_next {
        return Err(ChainError::Truncated { head });
    }
    Ok(Some(Chain { head, descs }))
}

/// Undo the last [`pop_chain`] (the chain stays available for later).
pub(crate) fn unpop_chain(queue: &mut Queue) {
    queue.go_to_previous_position();
}

/// Records the guest pages the devices write (KVM's dirty log does not see
/// writes done by the VMM process itself).
#[derive(Debug, Default, Clone)]
pub(crate) struct DirtyPages(pub BTreeSet<u64>);

impl DirtyPages {
    pub fn mark(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = addr / DIRTY_PAGE_SIZE;
        let last = addr.saturating_add(len - 1) / DIRTY_PAGE_SIZE;
        for p in first..=last {
            self.0.insert(p);
        }
    }
}

/// Gather `len` bytes starting `skip` bytes into the concatenation of `descs`.
/// The descriptors were validated, so a failure here means guest memory vanished.
pub(crate) fn gather<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = &'a Desc>,
    mut skip: u64,
    len: usize,
) -> Result<Vec<u8>, vm_memory::GuestMemoryError> {
    let mut out = vec![0u8; len];
    let mut done = 0usize;
    for d in descs {
        if done == len {
            break;
        }
        let dlen = u64::from(d.len);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let avail = (dlen - skip) as usize;
        let n = avail.min(len - done);
        mem.read_slice(&mut out[done..done + n], GuestAddress(d.addr + skip))?;
        done += n;
        skip = 0;
    }
    out.truncate(done);
    Ok(out)
}

/// Scatter `data` over the concatenation of `descs`; returns bytes written
/// (less than `data.len()` when the buffers are too small).
pub(crate) fn scatter<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = &'a Desc>,
    data: &[u8],
    dirty: &mut DirtyPages,
) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut done = 0usize;
    for d in descs {
        if done == data.len() {
            break;
        }
        let n = (d.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(d.addr))?;
        dirty.mark(d.addr, n as u64);
        done += n;
    }
    Ok(done)
}

/// Put `head` into the used ring with `len` bytes written; returns whether the
/// driver wants an interrupt for it.
///
/// The used index is published *before* the driver's flag is read, with a
/// full barrier between the two. The driver re-enables interrupts the other
/// way round (Linux `virtqueue_enable_cb`: clear `VRING_AVAIL_F_NO_INTERRUPT`,
/// `mb()`, read `used->idx`; virtio-blk's completion loop and virtio-net's
/// NAPI end that way). Without the barrier this is the store-buffering
/// pattern, which x86 allows: our read of the flag passes our still-buffered
/// store of the index, so the device reads the old flag (interrupts off) while
/// the driver reads the old index (nothing new) — no interrupt, and a driver
/// waiting for one: a block request that never completes. The device threads
/// (TAP, disk) call this while a vCPU runs the driver, so it can happen.
/// vhost (`vhost_notify`), QEMU (`virtio_should_notify`) and virtio-queue's
/// own `needs_notification` (which we do not call) have the same barrier.
pub(crate) fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
    dirty: &mut DirtyPages,
) -> Result<bool, virtio_queue::Error> {
    let slot = u64::from(queue.next_used() % queue.size().max(1));
    queue.add_used(mem, head, len)?;
    let used = queue.used_ring();
    dirty.mark(used, 4);
    dirty.mark(used.saturating_add(4 + slot * 8), 8);
    // StoreLoad: the used index above is visible to every CPU before the
    // flag below is read (an `mfence` on x86; pairs with the driver's mb()).
    fence(Ordering::SeqCst);
    // VIRTIO_F_EVENT_IDX is never offered, so the only suppression is the
    // driver's VRING_AVAIL_F_NO_INTERRUPT flag (virtio-queue ignores it). An
    // atomic load: the driver writes the flag concurrently.
    let flags: u16 = mem
        .load(GuestAddress(queue.avail_ring()), Ordering::Relaxed)
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0)
}
