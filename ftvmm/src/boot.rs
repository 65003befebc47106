//! The 64-bit entry state of BOOT-PROTOCOL.md: ELF loading, command line, GDT,
//! identity page tables, and the vCPU registers at entry.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::GuestMemoryMmap;

pub const GDT_ADDR: u64 = 0x500;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 4096;
pub const STACK_TOP: u64 = 0x8_0000;
/// Lowest address a kernel may be loaded at (everything below is ours).
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load kernel ELF: {0}")]
    Load(#[from] linux_loader::loader::Error),
    #[error("kernel entry {0:#x} is below {KERNEL_MIN_ADDR:#x} (would overlap boot structures)")]
    EntryTooLow(u64),
    #[error("command line is {0} bytes, at most 4095 allowed")]
    CmdlineTooLong(usize),
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    #[error("guest memory write failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Loads an ELF kernel's PT_LOAD segments; returns the entry point.
pub fn load_elf(mem: &GuestMemoryMmap, path: &std::path::Path) -> Result<u64, BootError> {
    let mut f = std::fs::File::open(path).map_err(|source| BootError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let res = Elf::load(mem, None, &mut f, Some(GuestAddress(KERNEL_MIN_ADDR)))?;
    let entry = res.kernel_load.raw_value();
    if entry < KERNEL_MIN_ADDR {
        return Err(BootError::EntryTooLow(entry));
    }
    Ok(entry)
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))?;
    Ok(())
}

/// GDT (null, 64-bit code 0x08, data 0x10) and identity page tables for 4 GiB.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))?;
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 0x1000;
        mem.write_obj(pd | 0x3, GuestAddress(PDPT_ADDR + i * 8))?;
        for j in 0..512u64 {
            let phys = (i * 512 + j) << 21;
            // Present | writable | 2 MiB page.
            mem.write_obj(phys | 0x83, GuestAddress(pd + j * 8))?;
        }
    }
    Ok(())
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Long-mode special registers per the boot protocol, on top of KVM's defaults.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = segment(0x08, true);
    let data = segment(0x10, false);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = 3 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PML4_ADDR;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA | EFER_SCE;
    s
}

/// General registers at entry.
pub fn entry_regs(entry: u64, mem_size: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: STACK_TOP,
        rbp: STACK_TOP,
        rflags: 0x2,
        rdi: CMDLINE_ADDR,
        rsi: mem_size,
        ..Default::default()
    }
}

/// Size of the guest memory, for the checks above.
pub fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    mem.last_addr().raw_value() + 1
}
