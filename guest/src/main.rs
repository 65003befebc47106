//! `ftguest`: the reference guest unikernel that ftvmm protects.
//!
//! Booted directly in 64-bit mode by ftvmm (boot protocol in README.md). It brings up the serial
//! console, interrupts (PIC + 100 Hz PIT), a heap over the rest of RAM, parses the command line,
//! then runs the durable KV service over virtio-blk + virtio-net/smoltcp, the CPU-bound
//! benchmark computation, or the memory-dirtying mode of the live-transfer benchmark.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod blk;
mod boot;
mod cpu;
mod dirty;
mod hal;
mod heap;
mod interrupts;
mod kv;
mod net;
mod port;
#[cfg(feature = "qemu-pvh")]
mod pvh;
mod serial;

use alloc::string::String;
use core::ptr::NonNull;
use ftguest_kvlog::{BootArgs, Mode};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

/// Size of one virtio-mmio register window.
const MMIO_WINDOW: usize = 0x1000;
/// Longest command line read from the boot protocol's 4 KiB slot.
const CMDLINE_MAX: usize = 4096;

/// Exit code for a panic (exceptions use 0xEE).
const EXIT_PANIC: u8 = 0xef;
/// Exit code for unusable boot parameters or devices.
const EXIT_CONFIG: u8 = 0xec;

/// Reads the NUL-terminated command line at `ptr`.
///
/// # Safety
/// `ptr` must be null or point to readable memory of at least [`CMDLINE_MAX`] bytes or up to
/// a NUL byte.
unsafe fn read_cmdline(ptr: *const u8) -> String {
    if ptr.is_null() {
        return String::new();
    }
    let mut bytes = alloc::vec::Vec::new();
    for i in 0..CMDLINE_MAX {
        // SAFETY: within the range the caller vouches for; stops at the first NUL.
        let b = unsafe { ptr.add(i).read_volatile() };
        if b == 0 {
            break;
        }
        bytes.push(b);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Called by the entry stub in `boot.rs`.
///
/// # Safety
/// Only the entry stub may call this, once, with the boot protocol's registers: `cmdline` null
/// or a NUL-terminated string of at most 4 KiB, `mem_size` the RAM size.
pub unsafe extern "C" fn rust_main(cmdline: *const u8, mem_size: u64) -> ! {
    serial::init();
    println!("guest: boot");
    interrupts::init();
    let Some((heap_start, heap_size)) = heap::init(mem_size) else {
        println!(
            "guest: {mem_size} bytes of RAM, need at least {}",
            heap::MIN_MEM
        );
        port::exit(EXIT_CONFIG)
    };
    // SAFETY: the boot protocol puts a NUL-terminated string of at most 4 KiB at RDI.
    let cmdline = unsafe { read_cmdline(cmdline) };
    println!(
        "guest: mem={}MiB heap={:#x}+{}KiB cmdline=\"{}\"",
        mem_size >> 20,
        heap_start,
        heap_size >> 10,
        cmdline
    );
    let args = match BootArgs::parse(&cmdline) {
        Ok(a) => a,
        Err(e) => {
            println!("guest: {e}");
            port::exit(EXIT_CONFIG)
        }
    };
    for word in &args.unknown {
        println!("guest: ignoring unknown parameter {word}");
    }
    match args.mode {
        Mode::Cpu => cpu::run(args.cpu_iters, args.cpu_yield),
        Mode::Dirty => dirty::run(args.dirty_mib, args.dirty_rate, EXIT_CONFIG),
        Mode::Kv => run_kv(&args),
    }
}

fn run_kv(args: &BootArgs) -> ! {
    let mut disk = None;
    let mut net = None;
    for dev in &args.virtio_mmio {
        let Some(header) = NonNull::new(dev.base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the boot protocol maps a 4 KiB virtio-mmio register window at each address
        // listed in `virtio_mmio=`; identity mapped and used by this transport alone.
        let transport = match unsafe { MmioTransport::new(header, MMIO_WINDOW) } {
            Ok(t) => t,
            Err(e) => {
                println!("guest: no virtio device at {:#x}: {e}", dev.base);
                continue;
            }
        };
        match transport.device_type() {
            DeviceType::Block if disk.is_none() => match blk::Disk::new(transport) {
                Ok(d) => {
                    interrupts::register_virtio_irq(dev.irq, dev.base);
                    disk = Some(d);
                }
                Err(e) => println!("guest: virtio-blk at {:#x}: {e}", dev.base),
            },
            DeviceType::Network if net.is_none() => match net::NetDevice::new(transport) {
                Ok(n) => {
                    interrupts::register_virtio_irq(dev.irq, dev.base);
                    net = Some(n);
                }
                Err(e) => println!("guest: virtio-net at {:#x}: {e}", dev.base),
            },
            other => println!("guest: ignoring virtio {other:?} at {:#x}", dev.base),
        }
    }
    let (Some(disk), Some(net)) = (disk, net) else {
        println!("guest: kv mode needs one virtio-blk and one virtio-net device");
        port::exit(EXIT_CONFIG)
    };
    kv::run(args, disk, net)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    port::cli();
    println!("guest: panic: {info}");
    port::exit(EXIT_PANIC)
}
