//! Validation of what a VM runs and how it is replicated (`vms[].image`,
//! `replication`, `vcpus`, `epoch_ms`, `delta_cache_mib`, `memory_mib`), and of the operator's
//! Linux images on the shared device (`[[images]]`).
//!
//! What each mode allows:
//!
//! | `replication`          | `vcpus` | `image`                           | `epoch_ms`            | `delta_cache_mib`           |
//! |------------------------|---------|-----------------------------------|-----------------------|-----------------------------|
//! | `lockstep` (default)   | 1       | the reference guest (`kv-guest`)  | not allowed           | not allowed                 |
//! | `checkpoint`           | 1..=4   | a Linux image (`[[images]]`)      | 5..=1000, default 20  | 0..=memory_mib, default 64  |
//!
//! Lockstep replays the Primary instruction for instruction, which only the
//! reference guest allows (Linux reads the TSC, which KVM cannot trap). A
//! Linux VM gets at least [`LINUX_MIN_MEMORY_MIB`] plus its kernel and initrd.
//!
//! Images: `region` is a `storage.regions` entry no VM uses as its disk, so
//! an image never overlaps the fencing area or a VM disk (regions never
//! overlap each other); every part lies inside its region; parts of two
//! images overlap only if they are the same file (same offset, length and
//! hash); a config to sign pins every part (length and SHA-256).

use std::collections::HashMap;
use std::ops::RangeInclusive;

use super::{check_name, ConfigError};
use crate::images::{self, GuestImage, GuestKind, LINUX_MIN_MEMORY_MIB};
use crate::model::{ClusterConfig, GuestMode, ImagePart, LinuxImage, Replication, Vm};

/// Most vCPUs a checkpoint VM may have.
pub const MAX_CHECKPOINT_VCPUS: u32 = 4;
/// The checkpoint intervals allowed, in milliseconds.
pub const EPOCH_MS: RangeInclusive<u32> = 5..=1000;

/// Whether every image part must be pinned (a config to sign) or may still
/// be blank (a config `ftctl image write` is about to fill in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pins {
    Required,
    Optional,
}

/// What a VM's `image` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRef<'a> {
    /// An image this release ships.
    Shipped(&'static GuestImage),
    /// An operator's Linux image on the shared device.
    Shared(&'a LinuxImage),
}

impl ImageRef<'_> {
    /// What the image is.
    pub fn kind(&self) -> GuestKind {
        match self {
            ImageRef::Shipped(i) => i.kind,
            ImageRef::Shared(_) => GuestKind::Linux,
        }
    }
}

/// The image `name` refers to in config `c`, if any.
pub fn resolve_image<'a>(c: &'a ClusterConfig, name: &str) -> Option<ImageRef<'a>> {
    if let Some(i) = images::shipped(name) {
        return Some(ImageRef::Shipped(i));
    }
    c.images
        .iter()
        .find(|i| i.name == name)
        .map(ImageRef::Shared)
}

/// `vms[i]`: its image exists, and its replication allows that image, its
/// vCPUs, epoch and memory.
pub(super) fn check_vm_runtime(c: &ClusterConfig, p: &str, vm: &Vm) -> Result<(), ConfigError> {
    let ip = format!("{p}.image");
    check_name(&ip, &vm.image)?;
    let Some(img) = resolve_image(c, &vm.image) else {
        let defined = match c.images.len() {
            0 => String::new(),
            _ => {
                let names: Vec<String> = c.images.iter().map(|i| format!("{:?}", i.name)).collect();
                format!(", the config's [[images]] define {}", names.join(", "))
            }
        };
        return Err(ConfigError::at(
            ip,
            format!(
                "unknown guest image {:?}: this release ships {}{defined}",
                vm.image,
                images::shipped_names()
            ),
        ));
    };
    let who = format!("VM {:?}", vm.name);
    match vm.replication {
        Replication::Lockstep => check_lockstep(p, &who, vm, img)?,
        Replication::Checkpoint => check_checkpoint(p, &who, vm, img)?,
    }
    check_memory(p, &who, vm, img)
}

fn check_lockstep(p: &str, who: &str, vm: &Vm, img: ImageRef) -> Result<(), ConfigError> {
    if img.kind() != GuestKind::Reference {
        return Err(ConfigError::at(
            format!("{p}.image"),
            format!(
                "{who}: lockstep replays only the reference guest ({}); Linux image {:?} \
                 needs replication = \"checkpoint\"",
                images::shipped_names(),
                vm.image
            ),
        ));
    }
    if vm.vcpus != 1 {
        return Err(ConfigError::at(
            format!("{p}.vcpus"),
            format!(
                "{who}: lockstep runs 1 vCPU, not {} (replication = \"checkpoint\" runs \
                 1..={MAX_CHECKPOINT_VCPUS} vCPUs of a Linux image)",
                vm.vcpus
            ),
        ));
    }
    for (field, value) in [
        ("epoch_ms", vm.epoch_ms),
        ("delta_cache_mib", vm.delta_cache_mib),
    ] {
        if let Some(v) = value {
            return Err(ConfigError::at(
                format!("{p}.{field}"),
                format!(
                    "{who}: {field} = {v} applies to replication = \"checkpoint\" only; \
                     this VM is lockstep"
                ),
            ));
        }
    }
    Ok(())
}

fn check_checkpoint(p: &str, who: &str, vm: &Vm, img: ImageRef) -> Result<(), ConfigError> {
    if img.kind() != GuestKind::Linux {
        return Err(ConfigError::at(
            format!("{p}.image"),
            format!(
                "{who}: checkpoint mode boots a Linux image (define it in [[images]]); {:?} \
                 is the reference guest, which runs in lockstep",
                vm.image
            ),
        ));
    }
    if vm.mode != GuestMode::Kv {
        return Err(ConfigError::at(
            format!("{p}.mode"),
            format!("{who}: mode selects the reference guest's workload; a Linux image has none"),
        ));
    }
    if vm.vcpus == 0 || vm.vcpus > MAX_CHECKPOINT_VCPUS {
        return Err(ConfigError::at(
            format!("{p}.vcpus"),
            format!(
                "{who}: checkpoint runs 1..={MAX_CHECKPOINT_VCPUS} vCPUs, not {}",
                vm.vcpus
            ),
        ));
    }
    let epoch = vm.epoch_ms_or_default();
    if !EPOCH_MS.contains(&epoch) {
        return Err(ConfigError::at(
            format!("{p}.epoch_ms"),
            format!(
                "{who}: epoch_ms = {epoch} is outside {}..={} (each epoch pauses the VM and \
                 holds its output until the Secondary has it)",
                EPOCH_MS.start(),
                EPOCH_MS.end()
            ),
        ));
    }
    if let Some(m) = vm.delta_cache_mib.filter(|&m| m > vm.memory_mib) {
        return Err(ConfigError::at(
            format!("{p}.delta_cache_mib"),
            format!(
                "{who}: delta_cache_mib = {m} is more than the VM's memory_mib = {} (a copy of \
                 every page takes that much; 0 sends every dirty page whole)",
                vm.memory_mib
            ),
        ));
    }
    Ok(())
}

/// `memory_mib` is at least what the image needs (the range itself is
/// checked by the caller).
fn check_memory(p: &str, who: &str, vm: &Vm, img: ImageRef) -> Result<(), ConfigError> {
    let (need, why) = match img {
        ImageRef::Shipped(i) => (u64::from(i.min_memory_mib), String::new()),
        ImageRef::Shared(l) => {
            let parts = l.kernel.size_bytes + l.initrd.as_ref().map_or(0, |i| i.size_bytes);
            (
                u64::from(LINUX_MIN_MEMORY_MIB) + parts.div_ceil(1 << 20),
                format!(" ({LINUX_MIN_MEMORY_MIB} MiB plus its kernel and initrd)"),
            )
        }
    };
    if u64::from(vm.memory_mib) < need {
        let head = match img {
            ImageRef::Shipped(_) => String::new(),
            ImageRef::Shared(_) => format!("{who}: "),
        };
        return Err(ConfigError::at(
            format!("{p}.memory_mib"),
            format!(
                "{head}{} MiB is too little for image {:?}: it needs at least {need} MiB{why}",
                vm.memory_mib, vm.image
            ),
        ));
    }
    Ok(())
}

/// A part's place on the device: its region's path and bytes from the
/// region's start.
struct Placed<'a> {
    path: String,
    start: u64,
    end: u64,
    part: &'a ImagePart,
}

/// `[[images]]`: names, regions, pins, and no overlaps.
pub(super) fn check_images(c: &ClusterConfig, pins: Pins) -> Result<(), ConfigError> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut placed: HashMap<&str, Vec<Placed>> = HashMap::new();
    for (i, img) in c.images.iter().enumerate() {
        let p = format!("images[{i}]");
        check_name(&format!("{p}.name"), &img.name)?;
        if images::shipped(&img.name).is_some() {
            return Err(ConfigError::at(
                format!("{p}.name"),
                format!("{:?} is the name of an image this release ships", img.name),
            ));
        }
        if let Some(j) = names.insert(img.name.as_str(), i) {
            return Err(ConfigError::at(
                format!("{p}.name"),
                format!("{:?} is already used by images[{j}]", img.name),
            ));
        }
        let region_mib = check_region(c, &p, img)?;
        if img.cmdline.contains('\0') || img.cmdline.len() > MAX_CMDLINE {
            return Err(ConfigError::at(
                format!("{p}.cmdline"),
                format!("must be at most {MAX_CMDLINE} bytes without NUL"),
            ));
        }
        let mut parts = vec![("kernel", &img.kernel)];
        parts.extend(img.initrd.as_ref().map(|i| ("initrd", i)));
        for (what, part) in parts {
            let pp = format!("{p}.{what}");
            check_part(&pp, part, region_mib, pins)?;
            let list = placed.entry(img.region.as_str()).or_default();
            place(list, pp, part)?;
        }
    }
    Ok(())
}

/// Longest kernel command line of the Linux boot protocol we allow (the
/// kernel's own `COMMAND_LINE_SIZE` on x86-64 is 2048, ftvmm appends to it).
pub const MAX_CMDLINE: usize = 1024;

/// The image's region exists and is no VM's disk; returns its size in MiB.
fn check_region(c: &ClusterConfig, p: &str, img: &LinuxImage) -> Result<u64, ConfigError> {
    let rp = format!("{p}.region");
    let Some(r) = c.storage.regions.iter().find(|r| r.name == img.region) else {
        return Err(ConfigError::at(
            rp,
            format!("unknown storage region {:?}", img.region),
        ));
    };
    if let Some(vm) = c.vms.iter().find(|vm| vm.disk_region == img.region) {
        return Err(ConfigError::at(
            rp,
            format!(
                "storage region {:?} is the disk of VM {:?}: its guest could overwrite the \
                 image; give images a region of their own",
                img.region, vm.name
            ),
        ));
    }
    Ok(r.size_mib)
}

/// One part: pinned (or blank where allowed), and inside its region.
fn check_part(pp: &str, part: &ImagePart, region_mib: u64, pins: Pins) -> Result<(), ConfigError> {
    if !part.is_pinned() {
        if pins == Pins::Required {
            return Err(ConfigError::at(
                format!("{pp}.sha256"),
                "is not pinned: write the file with `ftctl image write` and put the \
                 size_bytes and sha256 it prints here",
            ));
        }
    } else {
        if part.size_bytes == 0 {
            return Err(ConfigError::at(
                format!("{pp}.size_bytes"),
                "must be greater than 0",
            ));
        }
        let hex_ok = part.sha256.len() == 64
            && part
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(ConfigError::at(
                format!("{pp}.sha256"),
                format!("{:?} is not 64 lowercase hex digits", part.sha256),
            ));
        }
    }
    let region_bytes = region_mib << 20;
    let end = (part.offset_mib.checked_mul(1 << 20))
        .and_then(|s| s.checked_add(part.size_bytes.max(1)))
        .filter(|&e| e <= region_bytes);
    if end.is_none() {
        return Err(ConfigError::at(
            pp,
            format!(
                "offset {} MiB + {} bytes runs past its region ({region_mib} MiB)",
                part.offset_mib, part.size_bytes
            ),
        ));
    }
    Ok(())
}

/// Adds a part to its region's list, refusing an overlap with another part
/// unless both are the same file.
fn place<'a>(
    list: &mut Vec<Placed<'a>>,
    path: String,
    part: &'a ImagePart,
) -> Result<(), ConfigError> {
    let start = part.offset_mib << 20;
    let end = start + part.size_bytes.max(1);
    for o in list.iter() {
        if start < o.end && o.start < end && !(part.is_pinned() && part == o.part) {
            return Err(ConfigError::at(
                path,
                format!(
                    "bytes [{start:#x}, {end:#x}) of its region overlap {} [{:#x}, {:#x})",
                    o.path, o.start, o.end
                ),
            ));
        }
    }
    list.push(Placed {
        path,
        start,
        end,
        part,
    });
    Ok(())
}

#[cfg(test)]
#[path = "validate_vm_tests.rs"]
mod tests;
