//! Optional second entry point for testing the guest under QEMU's `microvm` machine, which boots
//! ELF kernels through the Xen PVH protocol (32-bit protected mode, paging off, EBX = address of
//! `hvm_start_info`). Only built with the `qemu-pvh` feature: the artifact ftvmm loads carries no
//! PVH note and is entered at `_start` as README.md's boot protocol says.
//!
//! The 32-bit stub builds identity page tables for the first 4 GiB (2 MiB pages, in .data so the
//! .bss clearing of `_start` leaves them alone), loads its own GDT (0x08 = 64-bit code, 0x10 =
//! data, as ftvmm's), enables long mode, translates `hvm_start_info` into the ftvmm register
//! convention (RDI = command line, RSI = RAM size) and jumps to `_start`.

use core::arch::global_asm;

const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// RDI/RSI for `_start`, returned in RAX:RDX.
#[repr(C)]
pub struct BootRegs {
    cmdline: u64,
    mem_size: u64,
}

/// Reads a `T` at physical address `addr`.
///
/// # Safety
/// `addr` must be identity-mapped readable memory holding a `T`.
unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// QEMU's local APIC comes out of reset with LINT0 masked, which blocks the 8259's interrupts
/// (firmware normally sets up "virtual wire" mode). Software-enable the APIC and route LINT0 as
/// ExtINT so the PIC reaches the CPU as under ftvmm, which has no local APIC at all.
fn pic_virtual_wire() {
    const LAPIC: u64 = 0xfee0_0000;
    // SAFETY: the local APIC's registers are at their architectural default base, identity
    // mapped by our page tables; SVR (0xf0) and LVT LINT0 (0x350) are 32-bit registers.
    unsafe {
        core::ptr::write_volatile((LAPIC + 0xf0) as *mut u32, 0x1ff);
        core::ptr::write_volatile((LAPIC + 0x350) as *mut u32, 0x700);
    }
}

/// Extracts the command line and the top of RAM from PVH's `hvm_start_info`. Runs before .bss is
/// cleared, so it touches no statics.
extern "C" fn pvh_boot_args(start_info: u64) -> BootRegs {
    pic_virtual_wire();
    // SAFETY: the PVH loader passes the address of a valid `hvm_start_info` (layout from Xen's
    // public/arch-x86/hvm/start_info.h) in EBX; its memory map entries are 24 bytes each.
    unsafe {
        if read::<u32>(start_info) != PVH_MAGIC {
            return BootRegs {
                cmdline: 0,
                mem_size: 0,
            };
        }
        let cmdline = read::<u64>(start_info + 24);
        let version = read::<u32>(start_info + 4);
        let mut mem_size = 0;
        if version >= 1 {
            let map = read::<u64>(start_info + 40);
            let entries = read::<u32>(start_info + 48);
            for i in 0..u64::from(entries.min(128)) {
                let e = map + i * 24;
                let (base, len, kind) = (read::<u64>(e), read::<u64>(e + 8), read::<u32>(e + 16));
                // Only the RAM range that contains the kernel counts: the heap must be contiguous.
                if kind == E820_RAM && base <= 0x20_0000 && base + len > 0x20_0000 {
                    mem_size = base + len;
                }
            }
        }
        BootRegs { cmdline, mem_size }
    }
}

global_asm!(
    ".section .note.pvh, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18", // XEN_ELFNOTE_PHYS32_ENTRY
    ".asciz \"Xen\"",
    ".long _start_pvh",
    ".section .data.pvh_tables, \"aw\", @progbits",
    ".balign 4096",
    "pvh_pml4: .fill 4096, 1, 0",
    "pvh_pdpt: .fill 4096, 1, 0",
    "pvh_pd: .fill 4 * 4096, 1, 0",
    ".section .rodata.pvh, \"a\"",
    ".balign 16",
    "pvh_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "pvh_gdt_ptr:",
    ".word pvh_gdt_ptr - pvh_gdt - 1",
    ".long pvh_gdt",
    ".section .text.pvh, \"ax\"",
    ".code32",
    ".global _start_pvh",
    "_start_pvh:",
    "cli",
    "cld",
    "mov esi, ebx",
    // PML4[0] -> PDPT
    "mov edi, offset pvh_pml4",
    "mov eax, offset pvh_pdpt",
    "or eax, 3",
    "mov dword ptr [edi], eax",
    // PDPT[0..4] -> PD 0..3
    "mov edi, offset pvh_pdpt",
    "mov eax, offset pvh_pd",
    "or eax, 3",
    "mov ecx, 4",
    "1:",
    "mov dword ptr [edi], eax",
    "add eax, 4096",
    "add edi, 8",
    "dec ecx",
    "jnz 1b",
    // 2048 PD entries: 2 MiB pages, present | writable | PS
    "mov edi, offset pvh_pd",
    "mov eax, 0x83",
    "mov ecx, 2048",
    "2:",
    "mov dword ptr [edi], eax",
    "add eax, 0x200000",
    "add edi, 8",
    "dec ecx",
    "jnz 2b",
    "lgdt [pvh_gdt_ptr]",
    "mov eax, cr4",
    "or eax, 0x620", // PAE | OSFXSR | OSXMMEXCPT
    "mov cr4, eax",
    "mov eax, offset pvh_pml4",
    "mov cr3, eax",
    "mov ecx, 0xc0000080", // EFER
    "rdmsr",
    "or eax, 0x100", // LME
    "wrmsr",
    "mov eax, cr0",
    "or eax, 0x80010001", // PG | WP | PE
    "mov cr0, eax",
    // ljmp 0x08:pvh_long
    ".byte 0xea",
    ".long pvh_long",
    ".word 0x08",
    ".code64",
    "pvh_long:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov fs, ax",
    "mov gs, ax",
    "mov edi, esi",
    // Temporary stack: the top of the boot stack, which `_start` then clears and reuses.
    "lea rsp, [rip + {stack} + {stack_size}]",
    "call {args}",
    "mov rdi, rax",
    "mov rsi, rdx",
    "jmp _start",
    ".text",
    stack = sym crate::boot::BOOT_STACK,
    stack_size = const crate::boot::STACK_SIZE,
    args = sym pvh_boot_args,
);
