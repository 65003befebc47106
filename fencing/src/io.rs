//! Sector I/O on the fencing region: the [`SectorIo`] trait and its real
//! implementation on the shared block device.
//!
//! On a block device the region is opened `O_DIRECT | O_SYNC`: every read goes
//! to the device (no page cache hiding another host's write) and every write is
//! on the device when `pwrite` returns. Buffers are 4096-byte aligned, which
//! satisfies any logical block size up to 4 KiB. Tests use regular files on
//! filesystems that may refuse `O_DIRECT` (tmpfs): for a regular file only, the
//! open falls back to plain `O_SYNC`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::layout::{Sector, SECTOR};

/// Reads and writes single sectors at an index of the fencing region.
pub trait SectorIo: Send + Sync {
    fn read(&self, index: u64) -> std::io::Result<Sector>;
    fn write(&self, index: u64, data: &Sector) -> std::io::Result<()>;
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
}

/// The region `[offset, offset + len)` of a device or file.
#[derive(Debug)]
pub struct RegionIo {
    file: File,
    offset: u64,
    sectors: u64,
    direct: bool,
}

#[repr(C, align(4096))]
struct Aligned([u8; SECTOR]);

impl RegionIo {
    /// Opens `path` for sector I/O on `sectors` sectors from byte `offset`.
    pub fn open(path: &Path, offset: u64, sectors: u64) -> Result<Self, OpenError> {
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
        let size = device_size(&file).map_err(err)?;
        let need = sectors * SECTOR as u64;
        if offset.checked_add(need).is_none_or(|end| end > size) {
            return Err(OpenError::TooSmall {
                path: path.to_path_buf(),
                offset,
                need,
                size,
            });
        }
        Ok(RegionIo {
            file,
            offset,
            sectors,
            direct,
        })
    }

    /// Whether the region is opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    fn at(&self, index: u64) -> std::io::Result<u64> {
        if index >= self.sectors {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("sector {index} outside the fencing region"),
            ));
        }
        Ok(self.offset + index * SECTOR as u64)
    }
}

impl SectorIo for RegionIo {
    fn read(&self, index: u64) -> std::io::Result<Sector> {
        let at = self.at(index)?;
        let mut buf = Box::new(Aligned([0; SECTOR]));
        self.file.read_exact_at(&mut buf.0, at)?;
        Ok(buf.0)
    }

    fn write(&self, index: u64, data: &Sector) -> std::io::Result<()> {
        let at = self.at(index)?;
        let buf = Box::new(Aligned(*data));
        self.file.write_all_at(&buf.0, at)
    }
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Size of a regular file or block device (seek to the end).
fn device_size(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_round_trip_in_a_file_region() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let io = RegionIo::open(&p, 1024, 8).unwrap();
        let mut s = [0u8; SECTOR];
        s[0] = 7;
        s[511] = 9;
        io.write(3, &s).unwrap();
        assert_eq!(io.read(3).unwrap(), s);
        assert_eq!(io.read(2).unwrap(), [0u8; SECTOR]);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(raw[1024 + 3 * 512], 7);
        assert!(io.read(8).is_err());
        assert!(io.write(8, &s).is_err());
    }

    #[test]
    fn too_small_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(matches!(
            RegionIo::open(&p, 512, 8),
            Err(OpenError::TooSmall { need: 4096, .. })
        ));
    }
}
