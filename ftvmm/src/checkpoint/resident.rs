//! Which pages of guest memory were ever touched, from the kernel's page
//! tables (`/proc/self/pagemap`: present or swapped), so the first epoch
//! copies those and not the rest, which is zero on both sides (the
//! Secondary's staging memory starts zeroed).
//!
//! Why not read every page: reading an untouched page of anonymous memory
//! faults it in (the zero page, or a real page with THP), so a first epoch
//! that read all of a 3 GiB guest would cost the host up to 3 GiB for
//! nothing, and copying it would lengthen the first epoch for nothing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::epoch::PAGE_SIZE;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

/// Page frame numbers (relative to `base`) of the `len` bytes at `base`
/// that are present or swapped, ascending.
pub fn touched_pages(base: *const u8, len: usize) -> std::io::Result<Vec<u64>> {
    let host_page = 4096usize;
    assert_eq!(PAGE_SIZE, host_page, "guest and host pages are both 4 KiB");
    let first = base as usize / host_page;
    let n = len / host_page;
    let mut f = File::open("/proc/self/pagemap")?;
    f.seek(SeekFrom::Start(first as u64 * 8))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8 * 4096];
    let mut done = 0usize;
    while done < n {
        let want = (n - done).min(4096);
        f.read_exact(&mut buf[..want * 8])?;
        for (i, e) in buf[..want * 8].chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().expect("8-byte chunk"));
            if e & (PM_PRESENT | PM_SWAPPED) != 0 {
                out.push((done + i) as u64);
            }
        }
        done += want;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_touched_pages_are_reported() {
        let len = 64 * 4096;
        // SAFETY: a fresh private anonymous mapping of `len` bytes, unmapped
        // below; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p.cast::<u8>();
        for page in [3usize, 17, 40] {
            // SAFETY: inside the mapping above.
            unsafe { base.add(page * 4096 + 5).write(1) };
        }
        let got = touched_pages(base, len).unwrap();
        // SAFETY: the mapping made above, with its length.
        unsafe { libc::munmap(p, len) };
        assert_eq!(got, vec![3, 17, 40]);
    }
}
