//! Operator Linux images on the shared device (`[[images]]`): where each part
//! lives, reading it back when a host starts the VM (verified against the
//! length and SHA-256 the signed config pins), and writing it (`ftctl image
//! write`).
//!
//! # Rules
//!
//! - A part lives at `region.offset_mib + part.offset_mib` MiB of the shared
//!   device, `size_bytes` long; validation keeps it inside its region, and
//!   the region apart from the fencing area and every VM disk.
//! - A host boots only bytes whose length and SHA-256 equal the config's
//!   pins; anything else is an [`ImageError`] whose message is one line
//!   naming the VM, the part, the device, the offset, and both hashes.
//! - Reads bypass the page cache (`O_DIRECT`, 4 KiB-aligned: offsets are
//!   whole MiB) so a host sees what is on the device, not what it cached
//!   before an operator rewrote the image; a file system without `O_DIRECT`
//!   (tmpfs before Linux 6.6) is read buffered.
//! - Writes refuse a device shorter than the part's end (a file would grow,
//!   a short device is the wrong one), are synced, then read back through
//!   the host's own check.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::model::{ClusterConfig, ImagePart, LinuxImage, Vm};
use crate::validate::{self, resolve_image, ConfigError, ImageRef};

/// `O_DIRECT` alignment of buffer, offset and length.
const ALIGN: usize = 4096;

/// A Linux image read from the shared device and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
}

/// Why an image was not read or written. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("vm {vm}: image {image:?} is not an [[images]] entry of the config")]
    NotShared { vm: String, image: String },
    #[error("no [[images]] entry {0:?} in the config")]
    UnknownImage(String),
    #[error("image {image:?}: region {region:?} is not in storage.regions")]
    UnknownRegion { image: String, region: String },
    #[error("{who}: {part} of image {image:?} is not pinned in the config")]
    Unpinned {
        who: String,
        image: String,
        part: &'static str,
    },
    #[error("{who}: cannot open {} for its {part} image: {source}", device.display())]
    Open {
        who: String,
        part: &'static str,
        device: PathBuf,
        source: io::Error,
    },
    #[error("{who}: cannot read its {part} image on {} at {at:#x}: {source}", device.display())]
    Read {
        who: String,
        part: &'static str,
        device: PathBuf,
        at: u64,
        source: io::Error,
    },
    #[error(
        "{who}: {part} image on {} at {at:#x} needs {want} bytes, the device has only {got} \
         there (is this the shared device of this config?)",
        device.display()
    )]
    Short {
        who: String,
        part: &'static str,
        device: PathBuf,
        at: u64,
        want: u64,
        got: u64,
    },
    #[error(
        "{who}: {part} image on {} at {at:#x} has sha256 {}…, config pins {}… (write it \
         again with `ftctl image write`, or pin it and sign the config again)",
        device.display(), short(got), short(want)
    )]
    Mismatch {
        who: String,
        part: &'static str,
        device: PathBuf,
        at: u64,
        got: String,
        want: String,
    },
    #[error("image {0:?}: the config places an initrd, but none was given")]
    InitrdMissing(String),
    #[error("image {0:?}: the config places no initrd, but one was given")]
    InitrdUnplaced(String),
    #[error("image {image:?} does not fit its place: {source}")]
    Layout { image: String, source: ConfigError },
    #[error(
        "{} is {len} bytes; the {part} of image {image:?} ends at {end:#x} (is this the shared \
         device of this config?)",
        device.display()
    )]
    DeviceTooSmall {
        image: String,
        part: &'static str,
        device: PathBuf,
        len: u64,
        end: u64,
    },
    #[error("cannot write the {part} of image {image:?} to {}: {source}", device.display())]
    Write {
        image: String,
        part: &'static str,
        device: PathBuf,
        source: io::Error,
    },
}

/// The first 16 digits of a hash, for messages.
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// SHA-256 as 64 lowercase hex digits (the form the config pins).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The byte offset on the shared device of `part` of image `img`.
pub fn part_offset(c: &ClusterConfig, img: &LinuxImage, part: &ImagePart) -> Option<u64> {
    let r = c.storage.regions.iter().find(|r| r.name == img.region)?;
    (r.offset_mib.checked_add(part.offset_mib)?).checked_mul(1 << 20)
}

/// The image's parts with their names: the kernel, then the initrd if any.
fn parts(img: &LinuxImage) -> Vec<(&'static str, &ImagePart)> {
    let mut v = vec![("kernel", &img.kernel)];
    v.extend(img.initrd.as_ref().map(|i| ("initrd", i)));
    v
}

/// Reads the Linux image of `vm` from `device` (the shared device as this
/// host sees it) and checks every part against the config's pins. This is
/// what a host calls when it starts a VM whose image is an `[[images]]` entry.
pub fn load_vm_image(c: &ClusterConfig, vm: &Vm, device: &Path) -> Result<LoadedImage, ImageError> {
    let Some(ImageRef::Shared(img)) = resolve_image(c, &vm.image) else {
        return Err(ImageError::NotShared {
            vm: vm.name.clone(),
            image: vm.image.clone(),
        });
    };
    load_image(c, img, device, &format!("vm {}", vm.name))
}

/// Reads image `img` of config `c` from `device` and checks every part
/// against its pins; `who` starts the error messages (`vm web`).
pub fn load_image(
    c: &ClusterConfig,
    img: &LinuxImage,
    device: &Path,
    who: &str,
) -> Result<LoadedImage, ImageError> {
    let mut out = Vec::new();
    for (part, pin) in parts(img) {
        if !pin.is_pinned() {
            return Err(ImageError::Unpinned {
                who: who.into(),
                image: img.name.clone(),
                part,
            });
        }
        let at = part_offset(c, img, pin).ok_or_else(|| ImageError::UnknownRegion {
            image: img.name.clone(),
            region: img.region.clone(),
        })?;
        out.push(read_part(who, part, device, at, pin)?);
    }
    let mut out = out.into_iter();
    Ok(LoadedImage {
        kernel: out.next().unwrap_or_default(),
        initrd: out.next(),
        cmdline: img.cmdline.clone(),
    })
}

/// Reads `pin.size_bytes` at `at` of `device` and checks length and hash;
/// `who` starts the error messages (`vm web`).
pub fn read_part(
    who: &str,
    part: &'static str,
    device: &Path,
    at: u64,
    pin: &ImagePart,
) -> Result<Vec<u8>, ImageError> {
    let file = open_direct(device).map_err(|source| ImageError::Open {
        who: who.into(),
        part,
        device: device.into(),
        source,
    })?;
    let want = pin.size_bytes;
    let len = usize::try_from(want).map_err(|_| ImageError::Short {
        who: who.into(),
        part,
        device: device.into(),
        at,
        want,
        got: 0,
    })?;
    let bytes = read_span(&file, at, len).map_err(|source| ImageError::Read {
        who: who.into(),
        part,
        device: device.into(),
        at,
        source,
    })?;
    if bytes.len() < len {
        return Err(ImageError::Short {
            who: who.into(),
            part,
            device: device.into(),
            at,
            want,
            got: bytes.len() as u64,
        });
    }
    let got = sha256_hex(&bytes);
    if got != pin.sha256 {
        return Err(ImageError::Mismatch {
            who: who.into(),
            part,
            device: device.into(),
            at,
            got,
            want: pin.sha256.clone(),
        });
    }
    Ok(bytes)
}

/// Opens `device` for reading with `O_DIRECT`, or buffered where the file
/// system refuses it (EINVAL: tmpfs before Linux 6.6).
fn open_direct(device: &Path) -> io::Result<(File, bool)> {
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device);
    match direct {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => OpenOptions::new()
            .read(true)
            .open(device)
            .map(|f| (f, false)),
        Err(e) => Err(e),
    }
}

/// Up to `len` bytes at `at` (fewer where the device ends).
fn read_span((file, direct): &(File, bool), at: u64, len: usize) -> io::Result<Vec<u8>> {
    if !*direct {
        let mut buf = vec![0u8; len];
        let got = read_full(file, &mut buf, at)?;
        buf.truncate(got);
        return Ok(buf);
    }
    assert_eq!(at % ALIGN as u64, 0, "image parts start on whole MiB");
    let span = len.next_multiple_of(ALIGN);
    let mut buf = vec![0u8; span + ALIGN];
    let pad = buf.as_ptr().align_offset(ALIGN);
    let got = read_full(file, &mut buf[pad..pad + span], at)?;
    buf.drain(..pad);
    buf.truncate(got.min(len));
    Ok(buf)
}

/// Fills `buf` from `at` until it is full or the file ends; returns the count.
fn read_full(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes the kernel (and initrd) of image `name` into their places on
/// `device`, then reads them back through the host's check. Returns the
/// image as the config must now pin it. Refuses, before writing anything, a
/// part that would leave its region or overlap another image's, an initrd
/// the config does not place (or a missing one it does), and a device
/// shorter than the parts' ends.
pub fn write_image(
    c: &ClusterConfig,
    name: &str,
    device: &Path,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<LinuxImage, ImageError> {
    let i = c
        .images
        .iter()
        .position(|img| img.name == name)
        .ok_or_else(|| ImageError::UnknownImage(name.into()))?;
    let mut img = c.images[i].clone();
    match (&img.initrd, initrd) {
        (Some(_), None) => return Err(ImageError::InitrdMissing(name.into())),
        (None, Some(_)) => return Err(ImageError::InitrdUnplaced(name.into())),
        _ => {}
    }
    pin(&mut img.kernel, kernel);
    if let (Some(part), Some(bytes)) = (img.initrd.as_mut(), initrd) {
        pin(part, bytes);
    }
    let mut with = c.clone();
    with.images[i] = img.clone();
    validate::validate_unpinned(&with).map_err(|source| ImageError::Layout {
        image: name.into(),
        source,
    })?;
    let data: Vec<&[u8]> = [Some(kernel), initrd].into_iter().flatten().collect();
    let places = parts(&img)
        .into_iter()
        .zip(data)
        .map(|((part, pin), bytes)| {
            let at = part_offset(&with, &img, pin).ok_or_else(|| ImageError::UnknownRegion {
                image: name.into(),
                region: img.region.clone(),
            })?;
            Ok((part, pin, at, bytes))
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    write_parts(name, device, &places)?;
    for (part, pin, at, _) in &places {
        read_part(&format!("image {name}"), part, device, *at, pin)?;
    }
    Ok(img)
}

fn pin(part: &mut ImagePart, bytes: &[u8]) {
    part.size_bytes = bytes.len() as u64;
    part.sha256 = sha256_hex(bytes);
}

/// Checks the device is long enough for every part, then writes and syncs.
fn write_parts(
    name: &str,
    device: &Path,
    places: &[(&'static str, &ImagePart, u64, &[u8])],
) -> Result<(), ImageError> {
    let write_err = |part: &'static str| {
        move |source| ImageError::Write {
            image: name.into(),
            part,
            device: device.into(),
            source,
        }
    };
    let first = places.first().map_or("kernel", |p| p.0);
    let mut f = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(write_err(first))?;
    let len = f.seek(SeekFrom::End(0)).map_err(write_err(first))?;
    for (part, pin, at, _) in places {
        let end = at + pin.size_bytes;
        if end > len {
            return Err(ImageError::DeviceTooSmall {
                image: name.into(),
                part,
                device: device.into(),
                len,
                end,
            });
        }
    }
    for (part, _, at, bytes) in places {
        f.write_all_at(bytes, *at).map_err(write_err(part))?;
    }
    f.sync_all().map_err(write_err(first))
}

#[cfg(test)]
#[path = "shared_images_tests.rs"]
mod tests;
