//! The log device: `/dev/vda` in the VM, any file on the host, in 512-byte sectors.
//!
//! Rules:
//! - Opened with `O_DIRECT` when the file system allows it (block devices, ext4, xfs); every
//!   transfer then goes through one 4 KiB-aligned bounce buffer, at sector offsets, in whole
//!   sectors. Where `O_DIRECT` is refused at open (tmpfs) the device is opened buffered and
//!   [`Disk::open`] says so; durability then rests on `fdatasync` alone.
//! - [`LogWriter::write_durable`] returns only after the write **and** an `fdatasync` (a
//!   virtio-blk FLUSH in the guest) completed: the service answers `OK` after that.
//! - Replay reads go through a read-ahead window ([`READ_AHEAD_SECTORS`]); any write drops it.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ftguest_kvlog::replay::SectorSource;
use ftguest_kvlog::{LogWriter, SECTOR_SIZE};

/// Alignment of the bounce buffer (covers 512 and 4096-byte logical blocks).
const ALIGN: usize = 4096;
/// Sectors read at once while the log is replayed.
pub const READ_AHEAD_SECTORS: usize = 128;
const BOUNCE_BYTES: usize = READ_AHEAD_SECTORS * SECTOR_SIZE;
/// The largest single read or write (a group commit must fit).
pub const MAX_TRANSFER: usize = BOUNCE_BYTES;
const _: () = assert!(BOUNCE_BYTES.is_multiple_of(ALIGN));

/// A failure of the log device.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The device or file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its size could not be read.
    #[error("cannot read the size of {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A read, write or flush failed.
    #[error("{what} at sector {sector}: {source}")]
    Io {
        what: &'static str,
        sector: u64,
        #[source]
        source: std::io::Error,
    },
    /// A transfer that is not whole sectors or beyond the bounce buffer (a bug of the caller).
    #[error("{what} of {len} bytes at sector {sector}: not whole sectors of at most {BOUNCE_BYTES} bytes")]
    Shape {
        what: &'static str,
        sector: u64,
        len: usize,
    },
}

/// A heap buffer whose usable part starts on an [`ALIGN`] boundary (no unsafe: a larger
/// `Vec` and an offset into it).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        assert!(start < ALIGN, "no aligned start in the bounce buffer");
        Self { raw, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

/// The log device.
pub struct Disk {
    file: File,
    sectors: u64,
    direct: bool,
    bounce: AlignedBuf,
    /// Sectors `cache_first .. cache_first + cache_len` are in `bounce` (read-ahead).
    cache_first: u64,
    cache_len: usize,
}

impl Disk {
    /// Opens `path` read-write, with `O_DIRECT` when possible; `note` hears about a fallback.
    pub fn open(path: &Path, note: impl Fn(&str)) -> Result<Self, DiskError> {
        let open = |flags: rustix::fs::OFlags| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags.bits() as i32)
                .open(path)
        };
        let (mut file, direct) = match open(rustix::fs::OFlags::DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                note(&format!(
                    "kv: note: {} refuses O_DIRECT ({e}); buffered writes + fdatasync",
                    path.display()
                ));
                let f = open(rustix::fs::OFlags::empty()).map_err(|source| DiskError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
                (f, false)
            }
            Err(source) => {
                return Err(DiskError::Open {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file,
            sectors: bytes / SECTOR_SIZE as u64,
            direct,
            bounce: AlignedBuf::new(BOUNCE_BYTES),
            cache_first: 0,
            cache_len: 0,
        })
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// True when the device was opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    fn check_shape(what: &'static str, sector: u64, len: usize) -> Result<(), DiskError> {
        if !len.is_multiple_of(SECTOR_SIZE) || len > BOUNCE_BYTES {
            return Err(DiskError::Shape { what, sector, len });
        }
        Ok(())
    }

    fn fill_cache(&mut self, first: u64) -> Result<(), DiskError> {
        let n = (self.sectors - first).min(READ_AHEAD_SECTORS as u64) as usize;
        self.cache_len = 0;
        let buf = self.bounce.get(n * SECTOR_SIZE);
        self.file
            .read_exact_at(buf, first * SECTOR_SIZE as u64)
            .map_err(|source| DiskError::Io {
                what: "read",
                sector: first,
                source,
            })?;
        self.cache_first = first;
        self.cache_len = n;
        Ok(())
    }
}

impl SectorSource for Disk {
    type Error = DiskError;

    fn capacity_sectors(&self) -> u64 {
        self.sectors
    }

    fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        Self::check_shape("read", first, buf.len())?;
        let count = (buf.len() / SECTOR_SIZE) as u64;
        if first + count > self.sectors {
            return Err(DiskError::Io {
                what: "read",
                sector: first,
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        }
        let cached =
            first >= self.cache_first && first + count <= self.cache_first + self.cache_len as u64;
        if !cached {
            self.fill_cache(first)?;
        }
        let off = (first - self.cache_first) as usize * SECTOR_SIZE;
        buf.copy_from_slice(&self.bounce.get(BOUNCE_BYTES)[off..off + buf.len()]);
        Ok(())
    }
}

impl LogWriter for Disk {
    type Error = DiskError;

    fn write_durable(&mut self, first: u64, bytes: &[u8]) -> Result<(), DiskError> {
        Self::check_shape("write", first, bytes.len())?;
        self.cache_len = 0;
        let buf = self.bounce.get(bytes.len());
        buf.copy_from_slice(bytes);
        self.file
            .write_all_at(buf, first * SECTOR_SIZE as u64)
            .map_err(|source| DiskError::Io {
                what: "write",
                sector: first,
                source,
            })?;
        self.file.sync_data().map_err(|source| DiskError::Io {
            what: "fdatasync",
            sector: first,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftguest_kvlog::KvService;

    #[test]
    fn writes_read_back_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 300 * SECTOR_SIZE]).unwrap();
        let mut disk = Disk::open(&path, |_| {}).unwrap();
        assert_eq!(disk.sectors(), 300);
        let mut one = [0u8; SECTOR_SIZE];
        disk.read_sectors(5, &mut one).unwrap();
        disk.write_durable(6, &[7u8; 2 * SECTOR_SIZE]).unwrap();
        let mut two = [0u8; 2 * SECTOR_SIZE];
        disk.read_sectors(6, &mut two).unwrap();
        assert!(two.iter().all(|&b| b == 7));
        // The last sectors: the read-ahead window is cut at the end of the device.
        disk.read_sectors(299, &mut one).unwrap();
        assert!(disk.read_sectors(300, &mut one).is_err());
        assert!(disk.write_durable(0, &[1u8; 100]).is_err());
    }

    #[test]
    fn a_fresh_disk_recovers_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 1024 * SECTOR_SIZE]).unwrap();
        let mut disk = Disk::open(&path, |_| {}).unwrap();
        let (svc, outcome) = KvService::recover(&mut disk).unwrap();
        assert_eq!((svc.store().len(), outcome.records), (0, 0));
    }
}
