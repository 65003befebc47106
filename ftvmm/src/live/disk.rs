//! The live block backend: a file, or a byte region `PATH:offset:len` of a
//! block device, read and written with `pread`/`pwrite` and `fdatasync` for
//! flushes by the disk thread (`live::disk_thread`). Every request is
//! bounds-checked against the region; one that reaches past it completes with
//! `IoError` and a log line.
//!
//! The device is opened with `O_DIRECT` (through one reused 4 KiB-aligned
//! bounce buffer): a completed write is on the shared device, not in this
//! host's page cache, where the kernel could write it back seconds later,
//! after another host took the VM over (docs/architecture.md §7). Where the file system
//! refuses `O_DIRECT` (tmpfs) the file is opened buffered, with a warning.
//!
//! A failed request is either an I/O error the guest sees, or a refusal by
//! storage fencing ([`classify`]): a persistent reservation conflict means
//! another host preempted this one, and the request is never completed.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::late_write::WriteFence;
use crate::io::{BlockOp, BlockRequest, BlockStatus};

pub const SECTOR: u64 = 512;

/// Half-open sector range `[start, end)`.
pub type Sectors = (u64, u64);

/// The sectors a read or write touches (`None` for a flush).
pub fn span(op: &BlockOp) -> Option<Sectors> {
    let (sector, bytes) = match op {
        BlockOp::Read { sector, len } => (*sector, u64::from(*len)),
        BlockOp::Write { sector, data } => (*sector, data.len() as u64),
        BlockOp::Flush => return None,
    };
    Some((sector, sector.saturating_add(bytes.div_ceil(SECTOR))))
}

/// `disk read of sectors 8..16`, `disk flush` (console lines).
pub fn describe(op: &BlockOp) -> String {
    let name = match op {
        BlockOp::Read { .. } => "read",
        BlockOp::Write { .. } => "write",
        BlockOp::Flush => return "disk flush".to_string(),
    };
    let (a, b) = span(op).unwrap_or_default();
    format!("disk {name} of sectors {a}..{b}")
}

/// What a failed storage call means for the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request failed: the guest gets `IOERR`.
    IoError,
    /// Storage fencing refused it: another host preempted this one.
    Deposed,
}

/// Classifies the error of `op`. `reservations`: the device is fenced by
/// persistent reservations (docs/design.md §3 item 5).
///
/// Linux fails I/O that a SCSI target answers with RESERVATION CONFLICT (or
/// an NVMe namespace with Reservation Conflict) with `EBADE` — block status
/// `BLK_STS_NEXUS`, renamed `BLK_STS_RESV_CONFLICT` in 6.5, both mapped to
/// `-EBADE` — and an `O_DIRECT` `pwrite`/`pread` on the block device returns
/// exactly that errno; QEMU maps `EBADE` back to RESERVATION CONFLICT for its
/// guests. Paths that flatten every failure to `EIO` (virtio-blk, writeback
/// through the page cache, some multipath set-ups) cannot be told apart: on a
/// reservation-fenced device an `EIO` of a write or flush is taken as a
/// refusal too (the safe side; a host that cannot write the VM's shared disk
/// is of no use as its Primary). `EBADE` is a refusal whatever the device.
pub fn classify(op: &BlockOp, err: &std::io::Error, reservations: bool) -> Failure {
    match err.raw_os_error() {
        Some(libc::EBADE) => Failure::Deposed,
        Some(libc::EIO) if reservations && !matches!(op, BlockOp::Read { .. }) => Failure::Deposed,
        _ => Failure::IoError,
    }
}

/// Storage fencing refused a request: this host is deposed.
#[derive(Debug, thiserror::Error)]
#[error("storage refused the {what}: {source} (a persistent reservation conflict: another host preempted this one)")]
pub struct Refused {
    pub what: String,
    pub source: std::io::Error,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk spec {0:?}: expected PATH or PATH:OFFSET:LEN (bytes)")]
    Spec(String),
    #[error("cannot open disk {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("disk {path}: region {offset}+{len} is not 512-byte aligned or is empty")]
    Alignment { path: String, offset: u64, len: u64 },
    #[error("disk {path}: region {offset}+{len} ends past the device size {size}")]
    PastEnd {
        path: String,
        offset: u64,
        len: u64,
        size: u64,
    },
}

/// `PATH` or `PATH:OFFSET:LEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub region: Option<(u64, u64)>,
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Self, DiskError> {
        let parts: Vec<&str> = s.rsplitn(3, ':').collect();
        if let [len, off, path] = parts[..] {
            if let (Ok(off), Ok(len)) = (off.parse::<u64>(), len.parse::<u64>()) {
                if path.is_empty() {
                    return Err(DiskError::Spec(s.into()));
                }
                return Ok(DiskSpec {
                    path: path.into(),
                    region: Some((off, len)),
                });
            }
        }
        if s.is_empty() {
            return Err(DiskError::Spec(s.into()));
        }
        Ok(DiskSpec {
            path: s.into(),
            region: None,
        })
    }
}

/// An open disk region.
pub struct DiskBackend {
    file: File,
    offset: u64,
    len: u64,
    /// Index in `BlockRequest::dev`.
    pub dev: u8,
    /// Opened with `O_DIRECT`.
    direct: bool,
    fence: Option<WriteFence>,
    /// The device is fenced by persistent reservations ([`classify`]).
    reservations: bool,
    /// The `O_DIRECT` bounce buffer, reused by every request.
    bounce: Aligned,
    /// The next request fails with this errno (tests of refusals, which a
    /// plain file cannot produce).
    #[cfg(test)]
    fail_next: Option<i32>,
    /// The next request stalls this long first (tests of stuck storage).
    #[cfg(test)]
    stall_next: Option<std::time::Duration>,
}

/// Alignment of `O_DIRECT` buffers (covers 512- and 4096-byte devices).
const ALIGN: usize = 4096;

/// A byte buffer whose window starts at an [`ALIGN`]-aligned address; it
/// grows to the largest request seen (at most `virtio::block::MAX_REQUEST_BYTES`)
/// and is reused, so a request allocates nothing for its bounce.
#[derive(Default)]
struct Aligned {
    buf: Vec<u8>,
    off: usize,
}

impl Aligned {
    /// The first `len` bytes of the aligned window (contents unspecified).
    fn window(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() - self.off < len {
            self.buf = vec![0u8; len + ALIGN];
            self.off = self.buf.as_ptr().align_offset(ALIGN);
            assert!(self.off < ALIGN, "cannot align a byte buffer");
        }
        &mut self.buf[self.off..self.off + len]
    }
}

fn open_rw(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

impl DiskBackend {
    pub fn open(spec: &DiskSpec, dev: u8) -> Result<Self, DiskError> {
        let path = spec.path.display().to_string();
        let (mut file, direct) = match open_rw(&spec.path, true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    path,
                    "O_DIRECT refused; disk writes go through this host's page cache"
                );
                let f = open_rw(&spec.path, false).map_err(|source| DiskError::Open {
                    path: path.clone(),
                    source,
                })?;
                (f, false)
            }
            Err(source) => {
                return Err(DiskError::Open {
                    path: path.clone(),
                    source,
                })
            }
        };
        // Works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Open {
                path: path.clone(),
                source,
            })?;
        let (offset, len) = spec.region.unwrap_or((0, size - size % SECTOR));
        if offset % SECTOR != 0 || len % SECTOR != 0 || len == 0 {
            return Err(DiskError::Alignment { path, offset, len });
        }
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(DiskError::PastEnd {
                path,
                offset,
                len,
                size,
            });
        }
        Ok(DiskBackend {
            file,
            offset,
            len,
            dev,
            direct,
            fence: None,
            reservations: false,
            bounce: Aligned::default(),
            #[cfg(test)]
            fail_next: None,
            #[cfg(test)]
            stall_next: None,
        })
    }

    /// Whether the disk is opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Defers writes overlapping a deposed Primary's possibly late ones.
    pub fn fence_writes(&mut self, fence: WriteFence) {
        self.fence = Some(fence);
    }

    /// The fence set by [`DiskBackend::fence_writes`] (the disk thread's queue
    /// applies it).
    pub fn take_fence(&mut self) -> Option<WriteFence> {
        self.fence.take()
    }

    /// The device is fenced by persistent reservations: an `EIO` of a write
    /// or flush is taken as a refusal ([`classify`]).
    pub fn set_reservations(&mut self, on: bool) {
        self.reservations = on;
    }

    /// Makes the next request fail with `errno` (tests).
    #[cfg(test)]
    pub fn fail_next(&mut self, errno: i32) {
        self.fail_next = Some(errno);
    }

    /// Makes the next request stall for `d` before it goes to the file (tests).
    #[cfg(test)]
    pub fn stall_next(&mut self, d: std::time::Duration) {
        self.stall_next = Some(d);
    }

    fn injected(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(d) = self.stall_next.take() {
            std::thread::sleep(d);
        }
        #[cfg(test)]
        if let Some(e) = self.fail_next.take() {
            return Err(std::io::Error::from_raw_os_error(e));
        }
        Ok(())
    }

    fn read_at(&mut self, len: usize, at: u64) -> std::io::Result<Vec<u8>> {
        self.injected()?;
        if !self.direct {
            let mut buf = vec![0u8; len];
            self.file.read_exact_at(&mut buf, at)?;
            return Ok(buf);
        }
        let w = self.bounce.window(len);
        self.file.read_exact_at(w, at)?;
        Ok(w.to_vec())
    }

    fn write_at(&mut self, data: &[u8], at: u64) -> std::io::Result<()> {
        self.injected()?;
        if !self.direct {
            return self.file.write_all_at(data, at);
        }
        let w = self.bounce.window(data.len());
        w.copy_from_slice(data);
        self.file.write_all_at(w, at)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.injected()?;
        self.file.sync_data()
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.len / SECTOR
    }

    /// Byte range of a request inside the region, if it fits.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (end <= self.len).then_some(self.offset + start)
    }

    /// Executes one request: its status and what a read returned, or the
    /// storage's refusal (this host is deposed; nothing to complete).
    pub fn execute(&mut self, req: &BlockRequest) -> Result<(BlockStatus, Vec<u8>), Refused> {
        let result = match &req.op {
            BlockOp::Read { sector, len } => match self.range(*sector, u64::from(*len)) {
                Some(at) => self.read_at(*len as usize, at),
                None => return Ok(self.past_region(req)),
            },
            BlockOp::Write { sector, data } => match self.range(*sector, data.len() as u64) {
                Some(at) => self.write_at(data, at).map(|()| Vec::new()),
                None => return Ok(self.past_region(req)),
            },
            BlockOp::Flush => self.flush().map(|()| Vec::new()),
        };
        match result {
            Ok(data) => Ok((BlockStatus::Ok, data)),
            Err(e) => match classify(&req.op, &e, self.reservations) {
                Failure::IoError => {
                    tracing::warn!(id = req.id, "{} failed: {e}", describe(&req.op));
                    Ok((BlockStatus::IoError, Vec::new()))
                }
                Failure::Deposed => Err(Refused {
                    what: describe(&req.op),
                    source: e,
                }),
            },
        }
    }

    fn past_region(&self, req: &BlockRequest) -> (BlockStatus, Vec<u8>) {
        tracing::warn!(
            id = req.id,
            capacity = self.len,
            "{} reaches past the region",
            describe(&req.op)
        );
        (BlockStatus::IoError, Vec::new())
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
