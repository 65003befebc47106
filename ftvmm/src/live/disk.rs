//! The live block backend: a file, or a byte region `PATH:offset:len` of a
//! block device, served by one I/O thread with `pread`/`pwrite` and
//! `fdatasync` for flushes. Every request is bounds-checked against the
//! region; one that reaches past it completes with `IoError` and a log line.
//!
//! The device is opened with `O_DIRECT` (through 4 KiB-aligned bounce
//! buffers): a completed write is on the shared device, not in this host's
//! page cache, where the kernel could write it back seconds later, after
//! another host took the VM over (DESIGN §5). Where the file system refuses
//! `O_DIRECT` (tmpfs) the file is opened buffered, with a warning.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use super::late_write::{InFlight, WriteFence};
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent};

pub const SECTOR: u64 = 512;

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
}

/// Alignment of `O_DIRECT` buffers (covers 512- and 4096-byte devices).
const ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes starting at an [`ALIGN`]-aligned address.
struct Aligned {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN];
        let off = buf.as_ptr().align_offset(ALIGN);
        assert!(off < ALIGN, "cannot align a byte buffer");
        Aligned { buf, off, len }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
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

    fn read_at(&self, len: usize, at: u64) -> std::io::Result<Vec<u8>> {
        if !self.direct {
            let mut buf = vec![0u8; len];
            self.file.read_exact_at(&mut buf, at)?;
            return Ok(buf);
        }
        let mut a = Aligned::new(len);
        self.file.read_exact_at(a.bytes_mut(), at)?;
        Ok(a.bytes().to_vec())
    }

    fn write_at(&self, data: &[u8], at: u64) -> std::io::Result<()> {
        if !self.direct {
            return self.file.write_all_at(data, at);
        }
        let mut a = Aligned::new(data.len());
        a.bytes_mut().copy_from_slice(data);
        self.file.write_all_at(a.bytes(), at)
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

    /// Executes one request.
    pub fn execute(&self, req: &BlockRequest) -> (BlockStatus, Vec<u8>) {
        match &req.op {
            BlockOp::Read { sector, len } => match self.range(*sector, u64::from(*len)) {
                Some(at) => match self.read_at(*len as usize, at) {
                    Ok(buf) => (BlockStatus::Ok, buf),
                    Err(e) => {
                        tracing::warn!(id = req.id, sector, "disk read failed: {e}");
                        (BlockStatus::IoError, Vec::new())
                    }
                },
                None => {
                    tracing::warn!(
                        id = req.id,
                        sector,
                        len,
                        capacity = self.len,
                        "disk read past the region"
                    );
                    (BlockStatus::IoError, Vec::new())
                }
            },
            BlockOp::Write { sector, data } => match self.range(*sector, data.len() as u64) {
                Some(at) => match self.write_at(data, at) {
                    Ok(()) => (BlockStatus::Ok, Vec::new()),
                    Err(e) => {
                        tracing::warn!(id = req.id, sector, "disk write failed: {e}");
                        (BlockStatus::IoError, Vec::new())
                    }
                },
                None => {
                    tracing::warn!(
                        id = req.id,
                        sector,
                        len = data.len(),
                        capacity = self.len,
                        "disk write past the region"
                    );
                    (BlockStatus::IoError, Vec::new())
                }
            },
            BlockOp::Flush => match self.file.sync_data() {
                Ok(()) => (BlockStatus::Ok, Vec::new()),
                Err(e) => {
                    tracing::warn!(id = req.id, "disk flush failed: {e}");
                    (BlockStatus::IoError, Vec::new())
                }
            },
        }
    }

    /// Serves requests in order until the sender is dropped; each completion
    /// is counted in `inflight` (where the sender counted the release).
    pub fn serve(
        mut self,
        rx: Receiver<BlockRequest>,
        inflight: Option<Arc<InFlight>>,
        mut done: impl FnMut(InputEvent),
    ) {
        for req in rx {
            if let Some(wait) = self
                .fence
                .as_mut()
                .and_then(|f| f.wait_for(&req, Instant::now()))
            {
                std::thread::sleep(wait);
            }
            let (status, data) = self.execute(&req);
            if let Some(f) = &inflight {
                f.completed();
            }
            done(InputEvent::BlockDone {
                dev: req.dev,
                id: req.id,
                status,
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size: u64, spec_region: Option<(u64, u64)>) -> (tempfile::NamedTempFile, DiskBackend) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        let spec = DiskSpec {
            path: f.path().into(),
            region: spec_region,
        };
        let d = DiskBackend::open(&spec, 0).unwrap();
        (f, d)
    }

    #[test]
    fn spec_parses_plain_paths_and_regions() {
        assert_eq!(
            "/dev/vdb:1048576:4096".parse::<DiskSpec>().unwrap(),
            DiskSpec {
                path: "/dev/vdb".into(),
                region: Some((1 << 20, 4096))
            }
        );
        assert_eq!("a:b".parse::<DiskSpec>().unwrap().region, None);
        assert!("".parse::<DiskSpec>().is_err());
    }

    #[test]
    fn writes_land_at_the_region_offset_and_read_back() {
        let (f, d) = disk(8192, Some((1024, 4096)));
        let w = BlockRequest {
            dev: 0,
            id: 1,
            op: BlockOp::Write {
                sector: 1,
                data: vec![0xab; 512],
            },
        };
        assert_eq!(d.execute(&w).0, BlockStatus::Ok);
        let raw = std::fs::read(f.path()).unwrap();
        assert_eq!(&raw[1536..2048], &[0xab; 512][..]);
        assert_eq!(raw[1535], 0);
        let r = BlockRequest {
            dev: 0,
            id: 2,
            op: BlockOp::Read {
                sector: 1,
                len: 512,
            },
        };
        assert_eq!(d.execute(&r), (BlockStatus::Ok, vec![0xab; 512]));
        let fl = BlockRequest {
            dev: 0,
            id: 3,
            op: BlockOp::Flush,
        };
        assert_eq!(d.execute(&fl).0, BlockStatus::Ok);
    }

    #[test]
    fn requests_past_the_region_fail_and_touch_nothing() {
        let (f, d) = disk(8192, Some((0, 4096)));
        assert_eq!(d.sectors(), 8);
        let w = BlockRequest {
            dev: 0,
            id: 1,
            op: BlockOp::Write {
                sector: 7,
                data: vec![1; 1024],
            },
        };
        assert_eq!(d.execute(&w).0, BlockStatus::IoError);
        let r = BlockRequest {
            dev: 0,
            id: 2,
            op: BlockOp::Read {
                sector: u64::MAX,
                len: 512,
            },
        };
        assert_eq!(d.execute(&r).0, BlockStatus::IoError);
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn a_region_past_the_device_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let spec = DiskSpec {
            path: f.path().into(),
            region: Some((2048, 4096)),
        };
        assert!(matches!(
            DiskBackend::open(&spec, 0),
            Err(DiskError::PastEnd { .. })
        ));
        let spec = DiskSpec {
            path: f.path().into(),
            region: Some((100, 512)),
        };
        assert!(matches!(
            DiskBackend::open(&spec, 0),
            Err(DiskError::Alignment { .. })
        ));
    }
}
