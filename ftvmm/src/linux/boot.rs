//! Loading a stock Linux kernel by the Linux x86 boot protocol: the bzImage
//! (`linux-loader`'s `BzImage`), the initrd high below the top of low
//! memory, the command line (`linux_loader::cmdline::Cmdline`), and the zero
//! page (`boot_params`: the kernel's own setup header, e820 map, initrd,
//! command line, RSDP address) written with `LinuxBootConfigurator`.
//!
//! Guest physical layout (below 1 MiB, as Firecracker's):
//! `0x500` GDT, `0x7000` zero page, `0x8ff0` boot stack, `0x9000..0xf000`
//! identity page tables ([`crate::boot::write_tables`]), `0x2_0000` command
//! line, `0x9_fc00` MP table (EBDA), `0xe_0000` ACPI tables; the kernel from
//! 1 MiB; the initrd at the top of memory. The e820 map lists RAM below the
//! MP table and RAM from 1 MiB to the end of memory (which never reaches
//! the virtio-mmio window at `0xd000_0000`, see [`crate::vm::MAX_MEM_SIZE`]).

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::mptable::MPTABLE_START;
use crate::virtio::GuestMemoryMmap;

pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// x86 Linux's COMMAND_LINE_SIZE.
pub const CMDLINE_CAPACITY: usize = 2048;
pub const HIMEM_START: u64 = 0x10_0000;
/// The 64-bit entry point is this far into the protected-mode kernel.
pub const STARTUP_64_OFFSET: u64 = 0x200;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;

#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load bzImage {path}: {source}")]
    Kernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("bzImage {0} has no setup header (not a bzImage?)")]
    NoSetupHeader(String),
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel (ends at {kernel_end:#x}, memory {mem_size:#x})")]
    InitrdTooBig {
        path: String,
        size: u64,
        kernel_end: u64,
        mem_size: u64,
    },
    #[error("cannot read initrd {path} into guest memory: {source}")]
    Initrd {
        path: String,
        source: vm_memory::GuestMemoryError,
    },
    #[error("command line {what}: {source}")]
    Cmdline {
        what: String,
        source: linux_loader::cmdline::Error,
    },
    #[error("command line does not fit in guest memory: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    #[error("cannot write the boot page tables or GDT: {0}")]
    Tables(#[from] crate::boot::BootError),
    #[error("cannot write boot_params at {ZERO_PAGE_ADDR:#x}: {0}")]
    BootParams(linux_loader::configurator::Error),
}

/// Where things went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The 64-bit entry (`startup_64`).
    pub entry: u64,
    pub kernel_end: u64,
    pub initrd_addr: u64,
    pub initrd_size: u64,
}

/// The command line: `user`, then the virtio-mmio slots announced as
/// Firecracker does (`virtio_mmio.device=4K@0xd0000000:5`; ignored by kernels
/// without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, which find them through the
/// ACPI DSDT instead).
pub fn cmdline(user: &str, virtio: &[(u64, u32)]) -> Result<Cmdline, LinuxBootError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source| LinuxBootError::Cmdline { what, source }
    };
    let mut c = Cmdline::new(CMDLINE_CAPACITY).map_err(err("capacity"))?;
    if !user.trim().is_empty() {
        c.insert_str(user.trim()).map_err(err(user))?;
    }
    for &(base, irq) in virtio {
        let dev = format!("virtio_mmio.device=4K@{base:#x}:{irq}");
        c.insert_str(&dev).map_err(err(&dev))?;
    }
    Ok(c)
}

/// The e820 map for `mem_size` bytes of guest memory.
pub fn e820(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, r#type: u32| boot_e820_entry { addr, size, r#type };
    vec![
        entry(0, MPTABLE_START, E820_RAM),
        entry(MPTABLE_START, 0xa_0000 - MPTABLE_START, E820_RESERVED),
        entry(HIMEM_START, mem_size - HIMEM_START, E820_RAM),
    ]
}

fn open(what: &'static str, path: &Path) -> Result<File, LinuxBootError> {
    File::open(path).map_err(|source| LinuxBootError::Open {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Loads kernel and initrd, writes command line, GDT, page tables and the
/// zero page. `rsdp`: where the ACPI RSDP is (0: none).
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
    rsdp: u64,
) -> Result<(Loaded, boot_params), LinuxBootError> {
    let kpath = kernel.display().to_string();
    let mut kf = open("kernel", kernel)?;
    let res =
        BzImage::load(mem, None, &mut kf, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            LinuxBootError::Kernel {
                path: kpath.clone(),
                source,
            }
        })?;
    let hdr = res
        .setup_header
        .ok_or(LinuxBootError::NoSetupHeader(kpath))?;
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    let (initrd_addr, initrd_size) = match initrd {
        Some(p) => load_initrd(mem, mem_size, res.kernel_end, &hdr, p)?,
        None => (0, 0),
    };
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(LinuxBootError::CmdlineLoad)?;
    crate::boot::write_tables(mem)?;

    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.ramdisk_image = initrd_addr as u32;
    params.hdr.ramdisk_size = initrd_size as u32;
    params.acpi_rsdp_addr = rsdp;
    let map = e820(mem_size);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(LinuxBootError::BootParams)?;
    let loaded = Loaded {
        entry: res.kernel_load.0 + STARTUP_64_OFFSET,
        kernel_end: res.kernel_end,
        initrd_addr,
        initrd_size,
    };
    tracing::debug!(?loaded, "linux: kernel loaded");
    Ok((loaded, params))
}

/// Reads the initrd to the highest page-aligned address that ends below both
/// the end of memory and the kernel's `initrd_addr_max`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    hdr: &linux_loader::loader::bootparam::setup_header,
    path: &Path,
) -> Result<(u64, u64), LinuxBootError> {
    let mut f = open("initrd", path)?;
    let size = f
        .metadata()
        .map_err(|source| LinuxBootError::Open {
            what: "initrd",
            path: path.display().to_string(),
            source,
        })?
        .len();
    let max = if hdr.initrd_addr_max == 0 {
        0x37ff_ffff
    } else {
        u64::from(hdr.initrd_addr_max)
    };
    let top = mem_size.min(max + 1);
    let too_big = || LinuxBootError::InitrdTooBig {
        path: path.display().to_string(),
        size,
        kernel_end,
        mem_size,
    };
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|source| LinuxBootError::Initrd {
            path: path.display().to_string(),
            source,
        })?;
    Ok((addr, size))
}

/// The zero page as the guest will read it (tests).
pub fn read_boot_params(mem: &GuestMemoryMmap) -> Result<boot_params, vm_memory::GuestMemoryError> {
    mem.read_obj(GuestAddress(ZERO_PAGE_ADDR))
}
