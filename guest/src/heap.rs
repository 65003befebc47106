//! The kernel heap: a linked-list allocator over all RAM above the kernel image.
//! virtio DMA buffers come from the same heap (RAM is identity mapped, phys == virt).

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Lowest RAM size the guest accepts (kernel at 2 MiB plus a useful heap).
pub const MIN_MEM: u64 = 8 << 20;
/// The heap never grows past 3 GiB (the boot protocol's RAM limit).
const MAX_MEM: u64 = 3 << 30;

unsafe extern "C" {
    /// End of the kernel image (.bss included), defined by the linker.
    static _end: u8;
}

/// Hands RAM from the end of the image (rounded up to 4 KiB) to `mem_size` to the allocator.
/// Returns `(start, size)` of the heap, or `None` (heap left empty) when `mem_size` is below
/// [`MIN_MEM`].
pub fn init(mem_size: u64) -> Option<(u64, u64)> {
    if mem_size < MIN_MEM {
        return None;
    }
    // Only the address of the linker symbol is taken (no read), which needs no `unsafe`.
    let end = core::ptr::addr_of!(_end) as u64;
    let start = (end + 0xfff) & !0xfff;
    let top = mem_size.min(MAX_MEM);
    let size = top.saturating_sub(start);
    // SAFETY: [start, top) is RAM that the boot protocol gives to the guest, identity mapped,
    // above everything the kernel image and its boot data use, and handed over exactly once.
    unsafe { HEAP.lock().init(start as *mut u8, size as usize) };
    Some((start, size))
}
