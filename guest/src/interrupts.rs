//! IDT, exception stubs, the 8259 PIC, the 8254 PIT tick and interrupt-driven waiting.
//!
//! The tick is the guest's only clock ([`now_ms`]) and, in lockstep, its main cost when idle:
//! every tick is a VM entry, a `hlt` exit and a wake-up of the vCPU thread on the Primary and
//! again on the Secondary's replay. A KV guest that has had nothing to do for a moment slows the
//! PIT from [`TICK_HZ`] to [`IDLE_TICK_HZ`] ([`set_idle`]; measured in `scale-bench`'s idle
//! phase, issue 17). The clock then advances by each tick's period. A switch restarts the PIT's
//! count (the elapsed part of the current period is not counted) and an IRQ 0 already pending at
//! the switch belongs to the old period, so the first tick after a switch advances the clock by
//! the shorter of the two periods: the clock may fall behind by up to one slow period per switch,
//! never run ahead. Only smoltcp's timers read it, and they tolerate a clock that runs late.
//!
//! Exceptions print their vector, error code, RIP and CR2 and stop the VM with exit code 0xEE.
//! IRQ handlers only count ticks, acknowledge virtio-mmio interrupts and bump an event counter;
//! all real work happens in the main loop, which sleeps with `sti; hlt` until the next interrupt.

use crate::port::{cli, inb, outb, sti_hlt};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// First vector of the remapped master PIC (IRQ 0 = vector 0x20).
pub const IRQ_BASE: u8 = 0x20;
/// Timer frequency programmed into PIT channel 0.
pub const TICK_HZ: u32 = 100;
/// The rate of an idle KV guest ([`set_idle`]); 18.2 Hz is the PIT's slowest.
pub const IDLE_TICK_HZ: u32 = 20;
const PIT_INPUT_HZ: u32 = 1_193_182;

static TICKS: AtomicU64 = AtomicU64::new(0);
/// The guest's clock: milliseconds the ticks so far stand for.
static CLOCK_MS: AtomicU64 = AtomicU64::new(0);
/// What the next tick adds to [`CLOCK_MS`], and what the ones after it add.
static PERIOD_MS: AtomicU64 = AtomicU64::new(1000 / TICK_HZ as u64);
static NEXT_PERIOD_MS: AtomicU64 = AtomicU64::new(1000 / TICK_HZ as u64);
static EVENTS: AtomicU64 = AtomicU64::new(0);
/// Interrupts handled other than the tick's.
static DEVICE_EVENTS: AtomicU64 = AtomicU64::new(0);
/// Per IRQ line: base address of a virtio-mmio device to acknowledge, or 0.
static VIRTIO_BASE: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// Bit mask of unmasked IRQ lines (bit 2, the cascade, always set).
static IRQ_ENABLED: AtomicU32 = AtomicU32::new(0b101);

/// Timer ticks since the PIT was started (10 ms each unless the guest [`set_idle`]).
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// The guest's clock in milliseconds (module docs: it may run late, never early).
pub fn now_ms() -> u64 {
    CLOCK_MS.load(Ordering::Relaxed)
}

/// Ticks at [`IDLE_TICK_HZ`] (`true`) or [`TICK_HZ`]; a no-op when already so.
pub fn set_idle(idle: bool) {
    let new = 1000 / u64::from(if idle { IDLE_TICK_HZ } else { TICK_HZ });
    if NEXT_PERIOD_MS.load(Ordering::Relaxed) == new {
        return;
    }
    cli();
    let old = NEXT_PERIOD_MS.swap(new, Ordering::Relaxed);
    PERIOD_MS.store(old.min(new), Ordering::Relaxed);
    program_pit(if idle { IDLE_TICK_HZ } else { TICK_HZ });
    crate::port::sti();
}

/// PIT channel 0, lobyte/hibyte, mode 2 (rate generator) at `hz`; the count restarts at once.
fn program_pit(hz: u32) {
    let divisor = (PIT_INPUT_HZ + hz / 2) / hz;
    debug_assert!(divisor <= 0xffff, "{hz} Hz is below the PIT's slowest rate");
    outb(0x43, 0x34);
    outb(0x40, divisor as u8);
    outb(0x40, (divisor >> 8) as u8);
}

/// Count of interrupts handled so far (any source).
pub fn events() -> u64 {
    EVENTS.load(Ordering::Acquire)
}

/// Count of interrupts handled so far other than IRQ 0 (the tick).
pub fn device_events() -> u64 {
    DEVICE_EVENTS.load(Ordering::Acquire)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl IdtEntry {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn gate(handler: u64) -> Self {
        Self {
            offset_low: handler as u16,
            selector: 0x08,
            ist: 0,
            type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate (clears IF)
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

static mut IDT: [IdtEntry; 256] = [IdtEntry::MISSING; 256];

unsafe extern "C" {
    static exception_stubs: [u64; 32];
    static irq_stubs: [u64; 16];
}

// Exception stubs push a dummy error code where the CPU pushes none, then the vector, and jump to
// a common path that calls `exception_handler(vector, error, rip, cr2)`, which never returns.
// IRQ stubs save the caller-saved registers (9 pushes keep RSP 16-byte aligned after the 5-word
// interrupt frame), call `irq_handler(irq)` and return with `iretq`. The target has no SSE, so no
// vector registers need saving.
global_asm!(
    ".macro EXC_NOERR n",
    "exc_stub_\\n:",
    "push 0",
    "push \\n",
    "jmp exc_common",
    ".endm",
    ".macro EXC_ERR n",
    "exc_stub_\\n:",
    "push \\n",
    "jmp exc_common",
    ".endm",
    ".macro IRQ n",
    "irq_stub_\\n:",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "cld",
    "mov edi, \\n",
    "call {irq}",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    ".endm",
    ".section .text.interrupt_stubs, \"ax\"",
    ".irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "EXC_NOERR \\n",
    ".endr",
    ".irp n, 8,10,11,12,13,14,17,21,29,30",
    "EXC_ERR \\n",
    ".endr",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "IRQ \\n",
    ".endr",
    "exc_common:",
    "cld",
    "mov rdi, [rsp]",
    "mov rsi, [rsp + 8]",
    "mov rdx, [rsp + 16]",
    "mov rcx, cr2",
    "and rsp, -16",
    "call {exc}",
    "ud2",
    ".section .rodata.interrupt_stubs, \"a\"",
    ".balign 8",
    ".global exception_stubs",
    "exception_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad exc_stub_\\n",
    ".endr",
    ".global irq_stubs",
    "irq_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    ".quad irq_stub_\\n",
    ".endr",
    ".text",
    irq = sym irq_handler,
    exc = sym exception_handler,
);

extern "C" fn exception_handler(vector: u64, error: u64, rip: u64, cr2: u64) -> ! {
    crate::println!("guest: exception vector={vector} error={error:#x} rip={rip:#x} cr2={cr2:#x}");
    crate::port::exit(0xee)
}

extern "C" fn irq_handler(irq: u32) {
    let irq = irq as usize;
    if irq == 7 || irq == 15 {
        // Spurious interrupts set no in-service bit and must not be acknowledged.
        let (cmd, cascade) = if irq == 7 {
            (0x20, false)
        } else {
            (0xa0, true)
        };
        outb(cmd, 0x0b);
        if inb(cmd) & 0x80 == 0 {
            if cascade {
                outb(0x20, 0x20);
            }
            return;
        }
    }
    if irq == 0 {
        TICKS.fetch_add(1, Ordering::Relaxed);
        let period = PERIOD_MS.load(Ordering::Relaxed);
        CLOCK_MS.fetch_add(period, Ordering::Relaxed);
        PERIOD_MS.store(NEXT_PERIOD_MS.load(Ordering::Relaxed), Ordering::Relaxed);
    } else {
        DEVICE_EVENTS.fetch_add(1, Ordering::Release);
    }
    let base = VIRTIO_BASE[irq].load(Ordering::Relaxed);
    if base != 0 {
        let status = base + 0x60;
        let ack = base + 0x64;
        // SAFETY: `base` was registered by `register_virtio_irq` as the identity-mapped register
        // window of a virtio-mmio device; InterruptStatus (0x60) and InterruptACK (0x64) are
        // 32-bit registers that are safe to access at any time.
        unsafe {
            let pending = core::ptr::read_volatile(status as *const u32);
            core::ptr::write_volatile(ack as *mut u32, pending);
        }
    }
    EVENTS.fetch_add(1, Ordering::Release);
    if irq >= 8 {
        outb(0xa0, 0x20);
    }
    outb(0x20, 0x20);
}

fn write_pic_masks() {
    let enabled = IRQ_ENABLED.load(Ordering::Relaxed);
    outb(0x21, !(enabled as u8));
    outb(0xa1, !((enabled >> 8) as u8));
}

/// Loads the IDT, remaps the PIC to vectors 0x20..0x2f (only the timer unmasked) and starts
/// PIT channel 0 at [`TICK_HZ`]. Interrupts stay disabled until the first wait.
pub fn init() {
    cli();
    // SAFETY: interrupts are disabled and nothing else references IDT yet; the stub tables are
    // defined in the global_asm above.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, stub) in exception_stubs.iter().enumerate() {
            idt[v] = IdtEntry::gate(*stub);
        }
        for (i, stub) in irq_stubs.iter().enumerate() {
            idt[usize::from(IRQ_BASE) + i] = IdtEntry::gate(*stub);
        }
        let ptr = IdtPointer {
            limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }

    // ICW1..ICW4: edge triggered, cascade, vector offsets 0x20/0x28, 8086 mode.
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, IRQ_BASE);
    outb(0xa1, IRQ_BASE + 8);
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    IRQ_ENABLED.store(0b101, Ordering::Relaxed);
    write_pic_masks();

    program_pit(TICK_HZ);
}

/// Routes `irq` to acknowledging the virtio-mmio device at `base` and unmasks it.
pub fn register_virtio_irq(irq: u8, base: u64) {
    let irq = usize::from(irq & 0x0f);
    VIRTIO_BASE[irq].store(base, Ordering::Relaxed);
    let mut enabled = IRQ_ENABLED.load(Ordering::Relaxed) | (1 << irq);
    if irq >= 8 {
        enabled |= 1 << 2;
    }
    IRQ_ENABLED.store(enabled, Ordering::Relaxed);
    write_pic_masks();
}

/// Sleeps until an interrupt arrives unless one was handled since `seen` (from [`events`]).
/// Returns the new event count. Race-free: the check runs with interrupts off and `sti; hlt`
/// cannot lose an interrupt that arrives after it.
pub fn wait_for_event(seen: u64) -> u64 {
    cli();
    if events() == seen {
        sti_hlt();
    } else {
        crate::port::sti();
    }
    events()
}

/// Sleeps (interrupt by interrupt) until `done()` holds.
pub fn wait_until(mut done: impl FnMut() -> bool) {
    loop {
        cli();
        if done() {
            crate::port::sti();
            return;
        }
        sti_hlt();
    }
}
