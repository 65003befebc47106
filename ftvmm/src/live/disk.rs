//! The live block backend: a file, or a byte region `PATH:offset:len` of a
//! block device, served by one I/O thread with `pread`/`pwrite` and
//! `fdatasync` for flushes. Every request is bounds-checked against the
//! region; one that reaches past it completes with `IoError` and a log line.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;

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
}

impl DiskBackend {
    pub fn open(spec: &DiskSpec, dev: u8) -> Result<Self, DiskError> {
        let path = spec.path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&spec.path)
            .map_err(|source| DiskError::Open {
                path: path.clone(),
                source,
            })?;
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
        })
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
                Some(at) => {
                    let mut buf = vec![0u8; *len as usize];
                    match self.file.read_exact_at(&mut buf, at) {
                        Ok(()) => (BlockStatus::Ok, buf),
                        Err(e) => {
                            tracing::warn!(id = req.id, sector, "disk read failed: {e}");
                            (BlockStatus::IoError, Vec::new())
                        }
                    }
                }
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
                Some(at) => match self.file.write_all_at(data, at) {
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

    /// Serves requests in order until the sender is dropped.
    pub fn serve(self, rx: Receiver<BlockRequest>, mut done: impl FnMut(InputEvent)) {
        for req in rx {
            let (status, data) = self.execute(&req);
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
