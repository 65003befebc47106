//! Block I/O on the fencing region: the [`BlockIo`] trait, the shared device
//! ([`Device`], with its logical and physical block sizes), the region on
//! it ([`RegionIo`]) and `each_at_once`, which issues several requests
//! together.
//!
//! # Rules
//!
//! - Every read and write is one whole block of the region's block size `B`,
//!   at a byte offset that is a multiple of `B`, from a buffer aligned to
//!   `max(B, 4096)`.
//! - `B` is a power of two, at least the device's logical block size (a 4Kn
//!   device refuses smaller I/O) and its physical block size (on a 512e
//!   device a smaller write is a read-modify-write of a physical sector that
//!   may hold other hosts' blocks; see [`crate::layout`]).
//! - A block device is opened `O_DIRECT | O_SYNC`: every read goes to the
//!   device (no page cache hiding another host's write) and every write is on
//!   the device when `pwrite` returns. Tests use regular files, on file
//!   systems that may refuse `O_DIRECT` (tmpfs): for a regular file only, the
//!   open falls back to plain `O_SYNC`.
//! - Block sizes come from `BLKSSZGET` (logical) and `BLKPBSZGET` (physical)
//!   on a block device; a regular file counts as 512/512.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::layout::{valid_block_size, Block};

/// Reads and writes whole blocks at an index of the fencing region.
pub trait BlockIo: Send + Sync {
    /// Bytes per block; every read returns and every write takes exactly this many.
    fn block_size(&self) -> usize;
    fn read(&self, index: u64) -> std::io::Result<Block>;
    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()>;
    /// Byte offset of block `index` on the device (for operator messages).
    fn device_offset(&self, index: u64) -> u64 {
        index * self.block_size() as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: fencing region of {need} bytes at offset {offset} does not fit in {size} bytes"
    )]
    TooSmall {
        path: PathBuf,
        offset: u64,
        need: u64,
        size: u64,
    },
    #[error(
        "{path}: block size {block} does not suit this device (logical block size {logical}); \
         use a power of two from 512 to 65536, at least the logical block size"
    )]
    BlockSize {
        path: PathBuf,
        block: u64,
        logical: u32,
    },
    #[error(
        "{path}: block size {block} is below the device's physical block size {physical}: every \
         write would read-modify-write a physical block holding other hosts' records; use \
         {physical} (or more)"
    )]
    BelowPhysical {
        path: PathBuf,
        block: u32,
        physical: u32,
    },
    #[error("{path}: fencing region offset {offset} is not a multiple of the block size {block}")]
    Unaligned {
        path: PathBuf,
        offset: u64,
        block: u32,
    },
}

/// The shared device (or a file standing in for it), opened for block I/O.
#[derive(Debug)]
pub struct Device {
    file: File,
    pub path: PathBuf,
    pub sizes: BlockSizes,
    /// Bytes.
    pub size: u64,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
}

/// A device's block sizes, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockSizes {
    pub logical: u32,
    pub physical: u32,
}

impl BlockSizes {
    /// The block size of a region laid out on this device: the physical
    /// block size (never below 512).
    pub fn layout_block(&self) -> u32 {
        self.physical.max(self.logical).max(512)
    }
}

impl Device {
    /// Opens `path` read-write (`O_DIRECT | O_SYNC`) and finds its block sizes.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let err = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(libc::O_DIRECT | libc::O_SYNC) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && is_regular(path) => {
                (open(libc::O_SYNC).map_err(err)?, false)
            }
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        let (sizes, size) = if meta.file_type().is_block_device() {
            (
                block_sizes(&file).map_err(err)?,
                end_offset(&file).map_err(err)?,
            )
        } else {
            (
                BlockSizes {
                    logical: 512,
                    physical: 512,
                },
                meta.len(),
            )
        };
        Ok(Device {
            file,
            path: path.to_path_buf(),
            sizes,
            size,
            direct,
        })
    }
}

/// `BLKSSZGET` and `BLKPBSZGET` of a block device.
fn block_sizes(file: &File) -> std::io::Result<BlockSizes> {
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    // SAFETY: `file` is an open block device for the duration of both calls;
    // BLKSSZGET writes one `int` to `logical` and BLKPBSZGET one `unsigned
    // int` to `physical`, both live locals of exactly those types.
    let rc = unsafe {
        let a = libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut logical);
        let b = libc::ioctl(file.as_raw_fd(), libc::BLKPBSZGET, &mut physical);
        a.min(b)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(BlockSizes {
        logical: logical as u32,
        physical,
    })
}

/// The region `[offset, offset + blocks * block)` of a device.
#[derive(Debug)]
pub struct RegionIo {
    dev: Device,
    offset: u64,
    block: u32,
    blocks: u64,
}

impl RegionIo {
    /// The region of `blocks` blocks of `block` bytes from byte `offset`.
    pub fn new(dev: Device, offset: u64, block: u32, blocks: u64) -> Result<Self, OpenError> {
        let path = dev.path.clone();
        if !valid_block_size(u64::from(block)) || block < dev.sizes.logical {
            return Err(OpenError::BlockSize {
                path,
                block: u64::from(block),
                logical: dev.sizes.logical,
            });
        }
        if block < dev.sizes.physical {
            return Err(OpenError::BelowPhysical {
                path,
                block,
                physical: dev.sizes.physical,
            });
        }
        if !offset.is_multiple_of(u64::from(block)) {
            return Err(OpenError::Unaligned {
                path,
                offset,
                block,
            });
        }
        let need = blocks * u64::from(block);
        if offset.checked_add(need).is_none_or(|end| end > dev.size) {
            return Err(OpenError::TooSmall {
                path,
                offset,
                need,
                size: dev.size,
            });
        }
        Ok(RegionIo {
            dev,
            offset,
            block,
            blocks,
        })
    }

    /// Whether the region is opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.dev.direct
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn at(&self, index: u64) -> std::io::Result<u64> {
        if index >= self.blocks {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("block {index} outside the fencing region"),
            ));
        }
        Ok(self.offset + index * u64::from(self.block))
    }
}

impl BlockIo for RegionIo {
    fn block_size(&self) -> usize {
        self.block as usize
    }

    fn read(&self, index: u64) -> std::io::Result<Block> {
        let at = self.at(index)?;
        let mut buf = AlignedBuf::new(self.block_size());
        self.dev.file.read_exact_at(buf.as_mut(), at)?;
        Ok(buf.as_mut().to_vec().into_boxed_slice())
    }

    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        assert_eq!(
            data.len(),
            self.block_size(),
            "a write is exactly one block"
        );
        let at = self.at(index)?;
        let mut buf = AlignedBuf::new(self.block_size());
        buf.as_mut().copy_from_slice(data);
        self.dev.file.write_all_at(buf.as_mut(), at)
    }

    fn device_offset(&self, index: u64) -> u64 {
        self.offset + index * u64::from(self.block)
    }
}

/// A buffer of `len` bytes aligned to `max(len, 4096)`, as `O_DIRECT` wants
/// (carved out of a larger allocation, so no unsafe code is needed).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let align = len.max(4096);
        let raw = vec![0u8; len + align];
        let addr = raw.as_ptr() as usize;
        let start = (align - addr % align) % align;
        AlignedBuf { raw, start, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Size of a block device (seek to the end).
fn end_offset(file: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(std::io::SeekFrom::End(0))
}

/// Runs `f` on every item at once, one scoped thread each, and returns the
/// results in `items` order: `Err` (the panic's payload) for an item whose
/// `f` panicked, the others unaffected.
///
/// Why: on a slow storage path every request is a round trip, so `n`
/// requests one after the other cost `n` round trips and at once about one
/// (a Disk Paxos phase, [`crate::paxos::decide`]; a renewal's reads of the
/// other hosts' leases, [`crate::renew`]). Only for requests whose callers
/// are right in any completion order: they are issued together and may
/// complete in any order; only the results come back in input order.
///
/// A thread that cannot be made (no resources) runs its item here and now
/// instead, before the next item is started: slower, never wrong, since the
/// caller accepts any completion order and this is one of them. Its panic
/// is caught and reported for that item, as a thread's would be (the other
/// items' threads keep running either way, so catching it here exposes
/// nothing a panicked thread would not).
pub(crate) fn each_at_once<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<std::thread::Result<R>> {
    let f = &f;
    std::thread::scope(|s| {
        let running: Vec<_> = items
            .iter()
            .map(|item| {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || f(item))
                    .map_err(|_| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item))))
            })
            .collect();
        running
            .into_iter()
            .map(|t| match t {
                Ok(t) => t.join(),
                Err(done_here) => done_here,
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev");
        std::fs::write(&p, vec![0u8; len]).unwrap();
        (dir, p)
    }

    #[test]
    fn blocks_round_trip_in_a_file_region() {
        for block in [512u32, 4096] {
            let (_d, p) = file(16384);
            let dev = Device::open(&p).unwrap();
            assert_eq!(dev.sizes.layout_block(), 512, "a file counts as 512/512");
            let io = RegionIo::new(dev, 4096, block, 2).unwrap();
            let mut s = vec![0u8; block as usize];
            s[0] = 7;
            s[block as usize - 1] = 9;
            io.write(1, &s).unwrap();
            assert!(*io.read(1).unwrap() == s[..]);
            assert!(io.read(0).unwrap().iter().all(|&x| x == 0));
            let raw = std::fs::read(&p).unwrap();
            assert_eq!(raw[4096 + block as usize], 7);
            assert_eq!(io.device_offset(1), 4096 + u64::from(block));
            assert!(io.read(2).is_err());
            assert!(io.write(2, &s).is_err());
        }
    }

    #[test]
    fn too_small_unaligned_and_bad_block_sizes_are_refused() {
        let (_d, p) = file(4096);
        let dev = || Device::open(&p).unwrap();
        assert!(matches!(
            RegionIo::new(dev(), 512, 512, 8),
            Err(OpenError::TooSmall { need: 4096, .. })
        ));
        assert!(matches!(
            RegionIo::new(dev(), 512, 4096, 1),
            Err(OpenError::Unaligned { offset: 512, .. })
        ));
        let e = RegionIo::new(dev(), 0, 1000, 1).unwrap_err();
        assert!(e.to_string().contains("block size 1000"), "{e}");
        // A 512e device (as BLKPBSZGET would report it): 512-byte blocks
        // would share physical blocks between hosts.
        let mut e512 = dev();
        e512.sizes.physical = 4096;
        assert_eq!(e512.sizes.layout_block(), 4096);
        assert!(matches!(
            RegionIo::new(e512, 0, 512, 1),
            Err(OpenError::BelowPhysical { physical: 4096, .. })
        ));
    }

    #[test]
    fn buffers_are_aligned() {
        for len in [512usize, 4096, 65536] {
            let mut b = AlignedBuf::new(len);
            let s = b.as_mut();
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % len.max(4096), 0);
        }
    }

    #[test]
    fn each_at_once_returns_results_in_input_order() {
        // Later items finish first, so completion order is not input order.
        let items: Vec<u64> = (0..8).collect();
        let out = each_at_once(&items, |&i| {
            std::thread::sleep(std::time::Duration::from_millis(5 * (8 - i)));
            i * 10
        });
        let out: Vec<u64> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(out, (0..8).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn each_at_once_runs_every_item_exactly_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let runs: Vec<AtomicU32> = (0..16).map(|_| AtomicU32::new(0)).collect();
        let items: Vec<usize> = (0..16).collect();
        let out = each_at_once(&items, |&i| runs[i].fetch_add(1, Ordering::SeqCst));
        assert_eq!(out.len(), 16);
        assert!(
            out.into_iter().all(|r| r.unwrap() == 0),
            "no item ran twice"
        );
        assert!(runs.iter().all(|n| n.load(Ordering::SeqCst) == 1));
        assert!(each_at_once(&[] as &[u8], |_| ()).is_empty());
    }

    #[test]
    fn each_at_once_reports_a_panic_for_its_item_only() {
        let items = [1u32, 2, 3, 4];
        let out = each_at_once(&items, |&i| {
            if i == 3 {
                panic!("item 3 fails (expected by this test)");
            }
            i
        });
        assert_eq!(out.len(), 4);
        for (i, r) in items.iter().zip(out) {
            match r {
                Ok(v) => {
                    assert_ne!(*i, 3, "item 3 should have panicked");
                    assert_eq!(v, *i);
                }
                Err(payload) => {
                    assert_eq!(*i, 3, "only item 3 panicked");
                    let msg = payload.downcast_ref::<&str>().copied().unwrap_or("");
                    assert!(msg.contains("item 3 fails"), "{msg:?}");
                }
            }
        }
    }
}
