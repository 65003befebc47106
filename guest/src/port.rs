//! x86 port I/O and a few privileged instructions.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the guest owns all legacy ports.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading a legacy device register has no memory effects.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Disables maskable interrupts.
pub fn cli() {
    // SAFETY: clearing IF only delays interrupt delivery.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enables maskable interrupts.
pub fn sti() {
    // SAFETY: the IDT and PIC are set up before anything calls this (see `interrupts::init`).
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Enables interrupts and halts until the next one, with no window in between: `sti` only takes
/// effect after the following instruction, so an interrupt that became pending before this call
/// wakes the `hlt` instead of being lost.
pub fn sti_hlt() {
    // SAFETY: as for `sti`; `hlt` just waits for an interrupt.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) }
}

/// Stops the VM through ftvmm's debug exit port 0x501 with `code` as the exit status.
pub fn exit(code: u8) -> ! {
    outb(0x501, code);
    // Not under ftvmm (or the port is ignored): stop here forever.
    loop {
        cli();
        // SAFETY: halting with interrupts disabled parks the CPU.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}
