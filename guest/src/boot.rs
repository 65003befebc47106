//! Entry point: ftvmm jumps to `_start` in 64-bit mode (see README.md, boot protocol) with
//! RDI = command line address and RSI = RAM size. The stub zeroes .bss, switches to its own stack
//! and calls `rust_main`.

/// Size of the boot stack.
pub const STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(16))]
pub struct Stack([u8; STACK_SIZE]);

// Only ever touched by the entry stub (as the stack); lives in .bss.
#[used]
pub static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "cli",
    "cld",
    // Keep the boot arguments in callee-saved registers while .bss is cleared.
    "mov r12, rdi",
    "mov r13, rsi",
    "lea rdi, [rip + __bss_start]",
    "lea rcx, [rip + _end]",
    "sub rcx, rdi",
    // Clear in 8-byte words (.bss starts 16-byte aligned; up to 7 bytes past `_end` are cleared
    // too, which is free RAM below the 4 KiB-aligned heap start).
    "add rcx, 7",
    "shr rcx, 3",
    "xor eax, eax",
    "rep stosq",
    "lea rsp, [rip + {stack} + {stack_size}]",
    "xor ebp, ebp",
    "mov rdi, r12",
    "mov rsi, r13",
    "call {main}",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    stack = sym BOOT_STACK,
    stack_size = const STACK_SIZE,
    main = sym crate::rust_main,
);
