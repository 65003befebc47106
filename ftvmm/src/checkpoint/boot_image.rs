//! A checkpoint VM's kernel and initrd as the daemon boots them: read from
//! the shared device's image region (`[[images]]`) and checked against the
//! SHA-256 the signed config pins (`config_schema::shared_images`), then
//! kept in sealed memory files so the bytes booted are the bytes checked.
//!
//! Rules:
//! - A mismatch (or a short, unreadable or unplaced image) refuses the
//!   start with the one line `shared_images::ImageError` gives (VM, part,
//!   device, offset, both hashes).
//! - The verified bytes go into `memfd`s sealed against writes, growing and
//!   shrinking; the VM loads them through `/proc/self/fd/N`. Nothing on the
//!   shared device is read again after the check, so an image rewritten in
//!   between is not booted half old, half new.
//! - [`BootImage::digest`] is what the pair's `Hello` carries: the SHA-256
//!   of both parts' pinned hashes and the command line. Both members
//!   checked their bytes against their own config's pins, so equal digests
//!   mean equal kernels, initrds and command lines.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use config_schema::shared_images::{load_vm_image, ImageError};
use config_schema::{ClusterConfig, Vm};

/// A verified kernel (and initrd) held in sealed memory files.
#[derive(Debug)]
pub struct BootImage {
    kernel: File,
    initrd: Option<File>,
    pub cmdline: String,
    pub digest: [u8; 32],
}

/// Why a verified image could not be kept for booting.
#[derive(Debug, thiserror::Error)]
pub enum BootImageError {
    /// Boxed: the image errors carry paths and hashes.
    #[error(transparent)]
    Image(Box<ImageError>),
    #[error("vm {vm}: cannot keep its verified {part} image in memory: {source}")]
    Memfd {
        vm: String,
        part: &'static str,
        source: Box<std::io::Error>,
    },
}

impl BootImage {
    /// Reads and checks `vm`'s image on `device` (module doc).
    pub fn load(c: &ClusterConfig, vm: &Vm, device: &Path) -> Result<Self, BootImageError> {
        let img = load_vm_image(c, vm, device).map_err(|e| BootImageError::Image(Box::new(e)))?;
        let sealed = |part, bytes: &[u8]| {
            sealed_file(&format!("ftvmm-{}-{part}", vm.name), bytes).map_err(|source| {
                BootImageError::Memfd {
                    vm: vm.name.clone(),
                    part,
                    source: Box::new(source),
                }
            })
        };
        let kernel = sealed("kernel", &img.kernel)?;
        let initrd = img
            .initrd
            .as_deref()
            .map(|b| sealed("initrd", b))
            .transpose()?;
        Ok(BootImage {
            kernel,
            initrd,
            digest: digest(&img.kernel, img.initrd.as_deref(), &img.cmdline),
            cmdline: img.cmdline,
        })
    }

    /// Where the VM loads the kernel from.
    pub fn kernel_path(&self) -> PathBuf {
        fd_path(&self.kernel)
    }

    /// Where the VM loads the initrd from, if there is one.
    pub fn initrd_path(&self) -> Option<PathBuf> {
        self.initrd.as_ref().map(fd_path)
    }
}

/// The digest a `Hello` carries (module doc).
pub fn digest(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> [u8; 32] {
    use config_schema::shared_images::sha256_hex;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"ftvmm checkpoint image v1\0");
    ctx.update(sha256_hex(kernel).as_bytes());
    ctx.update(b"\0");
    ctx.update(initrd.map(sha256_hex).unwrap_or_default().as_bytes());
    ctx.update(b"\0");
    ctx.update(cmdline.as_bytes());
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// `bytes` in a memfd named `name`, sealed against any change.
fn sealed_file(name: &str, bytes: &[u8]) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: `cname` is a valid NUL-terminated string for the call's
    // duration; the flags are plain constants.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody
    // else; the File closes it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd we own, with an int argument.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sealed file serves the bytes back and refuses to change; the
    /// digest depends on every part.
    #[test]
    fn sealed_bytes_read_back_and_cannot_change() {
        let f = sealed_file("ftvmm-test-kernel", b"kernel bytes").unwrap();
        assert_eq!(std::fs::read(fd_path(&f)).unwrap(), b"kernel bytes");
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(fd_path(&f))
            .expect("opened for writing");
        assert!(w.write_all(b"X").is_err(), "a sealed image was changed");
        let d = digest(b"k", Some(b"i"), "console=ttyS0");
        assert_ne!(d, digest(b"k", None, "console=ttyS0"));
        assert_ne!(d, digest(b"k", Some(b"i"), "console=ttyS1"));
        assert_ne!(d, digest(b"K", Some(b"i"), "console=ttyS0"));
    }
}
