//! Tests of the checkpoint-mode VM on this machine's /dev/kvm (which cannot
//! boot stock Linux: the QEMU test `qemu-tests/tests/linux_vm.rs` does):
//! the zero page and e820 of a synthetic bzImage, and a 2-vCPU VM with the
//! in-kernel irqchip running a few real-mode instructions per vCPU, paused
//! and resumed, its dirty log read while paused; the guest's two ends
//! (i8042 reset, ACPI S5 power-off) as a vCPU's port writes.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vm_superio::serial::SerialState;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Deliver, LinuxBackend};
use super::boot::{self, CMDLINE_ADDR, HIMEM_START};
use super::bus::Bus;
use super::machine::{LinuxVm, Running};
use super::End;
use crate::io::BlockRequest;
use crate::virtio::GuestMemoryMmap;

/// A file that passes `BzImage::load`'s header checks: one setup sector,
/// then `payload` bytes of "protected-mode kernel".
fn fake_bzimage(payload: usize) -> tempfile::NamedTempFile {
    let mut img = vec![0u8; 2 * 512 + payload];
    img[0x1f1] = 1; // setup_sects
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    for (i, b) in img[1024..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&img).unwrap();
    f
}

#[test]
fn zero_page_holds_e820_initrd_cmdline_and_rsdp() {
    let mem_size = 128u64 << 20;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
    let kernel = fake_bzimage(8192);
    let mut initrd = tempfile::NamedTempFile::new().unwrap();
    initrd.write_all(&[0x5a; 10_000]).unwrap();
    let cmdline = boot::cmdline("console=ttyS0 reboot=k", &[(0xd000_0000, 5)]).unwrap();
    let (loaded, _) = boot::load(
        &mem,
        mem_size,
        kernel.path(),
        Some(initrd.path()),
        &cmdline,
        0xe_0000,
    )
    .unwrap();
    assert_eq!(loaded.entry, HIMEM_START + 0x200);
    assert_eq!(loaded.kernel_end, HIMEM_START + 8192);
    assert_eq!(loaded.initrd_addr, (mem_size - 10_000) & !0xfff);
    let mut k = [0u8; 4];
    mem.read_slice(&mut k, GuestAddress(HIMEM_START + 4))
        .unwrap();
    assert_eq!(k, [4, 5, 6, 7], "the protected-mode kernel is at 1 MiB");

    let p = boot::read_boot_params(&mem).unwrap();
    assert_eq!({ p.hdr.type_of_loader }, 0xff);
    assert_eq!({ p.hdr.boot_flag }, 0xaa55);
    assert_eq!({ p.hdr.header }, 0x5372_6448);
    assert_eq!({ p.hdr.cmd_line_ptr } as u64, CMDLINE_ADDR);
    assert_eq!(u64::from(p.hdr.ramdisk_image), loaded.initrd_addr);
    assert_eq!({ p.hdr.ramdisk_size }, 10_000);
    assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
    let e820: Vec<(u64, u64, u32)> = p.e820_table[..p.e820_entries as usize]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, 0x9_fc00, 1),
            (0x9_fc00, 0x400, 2),
            (0x10_0000, mem_size - 0x10_0000, 1)
        ]
    );
    let mut line = vec![0u8; { p.hdr.cmdline_size } as usize + 1];
    mem.read_slice(&mut line, GuestAddress(CMDLINE_ADDR))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&line),
        "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5\0"
    );
}

#[test]
fn an_initrd_larger_than_memory_is_refused() {
    let mem_size = 64u64 << 20;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
    let kernel = fake_bzimage(4096);
    let initrd = tempfile::NamedTempFile::new().unwrap();
    initrd.as_file().set_len(mem_size).unwrap();
    let cmdline = boot::cmdline("", &[]).unwrap();
    let err = boot::load(
        &mem,
        mem_size,
        kernel.path(),
        Some(initrd.path()),
        &cmdline,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// Console bytes, shared with the test.
#[derive(Clone, Default)]
pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) struct NoBackend;

impl LinuxBackend for NoBackend {
    fn start(&mut self, _: Deliver) -> Result<(), super::backend::BackendError> {
        Ok(())
    }
    fn submit_block(&mut self, _: BlockRequest) {}
    fn send_frame(&mut self, _: u8, _: Vec<u8>) {}
    fn stop(&mut self) {}
}

/// Real mode: print '0' + the initial APIC id (CPUID 1, EBX[31:24]) on COM1,
/// then vCPU 0 counts in the word at 0x2000 forever, the others halt.
pub(crate) const CODE: &[u8] = &[
    0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
    0x0f, 0xa2, // cpuid
    0x66, 0xc1, 0xeb, 0x18, // shr ebx, 24
    0x80, 0xc3, 0x30, // add bl, '0'
    0x88, 0xd8, // mov al, bl
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xee, // out dx, al
    0x80, 0xfb, 0x30, // cmp bl, '0'
    0x75, 0x06, // jne halt
    0xff, 0x06, 0x00, 0x20, // inc word [0x2000]
    0xeb, 0xfa, // jmp inc
    0xf4, // halt: hlt
    0xeb, 0xfd, // jmp halt
];

pub(crate) fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(20), f)
}

/// [`wait_until`] with a limit of its own.
pub(crate) fn wait_until_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn counter(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(0x2000)).unwrap()
}

#[test]
fn two_vcpus_with_the_in_kernel_irqchip_run_pause_and_resume() {
    let sink = Sink::default();
    let vm = LinuxVm::create(
        2,
        64 << 20,
        vec![],
        Box::new(sink.clone()),
        Box::new(NoBackend),
    )
    .expect("a VM with in-kernel irqchip, PIT and 2 vCPUs (is /dev/kvm there?)");
    vm.memory().write_slice(CODE, GuestAddress(0x1000)).unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    vm.enter_real_mode(1, 0x1000).unwrap();
    let mem = vm.memory().clone();
    let running = vm.start().unwrap();
    wait_until("both vCPUs printed their APIC id", || {
        sink.0.lock().unwrap().len() >= 2
    });
    let mut ids = sink.0.lock().unwrap().clone();
    ids.sort();
    assert_eq!(ids, b"01", "each vCPU sees its own APIC id in CPUID");
    wait_until("vCPU 0 counts", || counter(&mem) > 10);

    for _ in 0..3 {
        let (at_pause, dirty) = running.with_paused(|p| {
            let at = counter(p.mem);
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(counter(p.mem), at, "no vCPU runs while paused");
            assert_eq!(
                p.states_from_vcpu_threads(),
                2,
                "each running vCPU captured its own state as it parked"
            );
            let bitmap = p.vm.get_dirty_log(0, p.mem_size as usize).unwrap();
            let page = 0x2000 / 4096;
            let dirty = bitmap[page / 64] & (1 << (page % 64)) != 0;
            let regs = p.vcpus[1].get_regs().unwrap();
            assert!((0x1000..0x1000 + CODE.len() as u64).contains(&regs.rip));
            (at, dirty)
        });
        assert!(dirty, "the counter's page is in the dirty log");
        wait_until("vCPU 0 counts again after resume", || {
            counter(&mem) != at_pause
        });
    }
    assert_eq!(running.ended(), None);
    running.stop();
    let report = running.wait();
    assert_eq!(report.end, End::Stopped);
    assert_eq!(report.unowned.pio_writes, 0);
}

/// The IOAPIC's IRR bit of `pin` (the line level KVM holds for it).
fn ioapic_line(vm: &kvm_ioctls::VmFd, pin: u32) -> bool {
    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).unwrap();
    // SAFETY: chip_id IOAPIC: KVM filled the `ioapic` member of the union.
    let irr = unsafe { chip.chip.ioapic.irr };
    irr & (1 << pin) != 0
}

/// A device interrupt raised while a checkpoint pause is on reaches KVM
/// only when the pause ends (`Bus::hold_irqs`): the irqchip state read in
/// the pause is of the same instant as the device state, so a restored
/// IOAPIC never waits for an interrupt no restored LAPIC holds. Without the
/// hold the IOAPIC line is up inside the pause already.
/// And a line nobody acknowledges is reported by `Bus::lines_unanswered`.
#[test]
fn a_device_interrupt_raised_in_a_pause_reaches_kvm_only_after_it() {
    let vm = LinuxVm::create(
        1,
        64 << 20,
        vec![crate::virtio::new_net(0, [0x52, 0x54, 0, 0, 0, 1])],
        Box::new(Sink::default()),
        Box::new(NoBackend),
    )
    .expect("a VM with in-kernel irqchip (is /dev/kvm there?)");
    vm.memory().write_slice(CODE, GuestAddress(0x1000)).unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    let running = vm.start().unwrap();
    let pin = super::bus::Bus::virtio_irq(0);
    let notify = crate::devices::VIRTIO_MMIO_BASE
        + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
    running.with_paused(|p| {
        assert!(!ioapic_line(p.vm, pin), "the NIC's line starts low");
        // A notify before DRIVER_OK: the device needs a reset and raises a
        // configuration interrupt (InterruptStatus bit 1).
        p.bus.mmio_write(notify, &0u32.to_le_bytes());
        assert!(
            p.bus.virtio()[0].irq_level(),
            "the device wants its line up"
        );
        assert!(
            !ioapic_line(p.vm, pin),
            "a line raised in the pause reached the IOAPIC before the pause ended"
        );
    });
    running.with_paused(|p| {
        assert!(
            ioapic_line(p.vm, pin),
            "the held line was raised when the pause ended"
        );
    });
    // Nothing in the guest (a real-mode loop, its IOAPIC pins masked)
    // acknowledges it: the bus names the line once it is old enough.
    std::thread::sleep(Duration::from_millis(150));
    running.with_paused(|p| {
        assert_eq!(p.bus.lines_unanswered(Duration::from_secs(60)), vec![]);
        let stuck = p.bus.lines_unanswered(Duration::from_millis(100));
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!((stuck[0].slot, stuck[0].device), (0, "net"));
        assert!(stuck[0].high_for >= Duration::from_millis(100));
    });
    running.stop();
    assert_eq!(running.wait().end, End::Stopped);
}

#[test]
fn i8042_reset_ends_the_vm() {
    assert_eq!(one_vcpu_at(&RESET).wait().end, End::Reset);
}

/// A guest's `poweroff` as Linux's `acpi_hw_extended_sleep` does it: 0x80
/// (clear WAK_STS) to the sleep status register, then SLP_TYP 5 | SLP_EN
/// (0x34) to the sleep control register, both at port 0x600: the VM ends
/// with a power-off.
#[test]
fn acpi_s5_on_the_sleep_port_ends_the_vm() {
    let code = [
        0xba, 0x00, 0x06, // mov dx, 0x600
        0xb0, 0x80, // mov al, 0x80
        0xee, // out dx, al
        0xb0, 0x34, // mov al, 0x34
        0xee, // out dx, al
        0xf4, // hlt
    ];
    let running = one_vcpu_at(&code);
    // Without the power-off the vCPU halts for good: fail, do not hang.
    wait_until("the VM ends", || running.ended().is_some());
    let report = running.wait();
    assert_eq!(report.end, End::PowerOff);
    assert_eq!(report.end.to_string(), "guest power-off (ACPI S5)");
    assert_eq!(report.unowned.pio_writes, 0, "the sleep port is owned");
}

/// The bus alone: only 0x34, one byte, at port 0x600 ends the VM; other
/// values there are ignored (not unowned), reads there return 0.
#[test]
fn the_bus_ends_the_vm_only_for_s5_at_the_sleep_port() {
    let vm = Arc::new(kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap());
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut bus = Bus::new(
        vm,
        mem,
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        Box::new(Sink::default()),
        vec![],
        Box::new(NoBackend),
        SerialState::default(),
    );
    for v in [0x00, 0x80, 0x14, 0x20, 0x30, 0x35, 0xb4, 0xff] {
        assert_eq!(bus.pio_out(0x600, &[v]), None, "{v:#x}");
    }
    assert_eq!(bus.pio_out(0x600, &[0x34, 0]), None, "a 16-bit write");
    assert_eq!(
        bus.unowned.pio_writes, 0,
        "writes to the sleep port are not unowned"
    );
    assert_eq!(bus.pio_out(0x601, &[0x34]), None, "the next port");
    assert_eq!(bus.unowned.pio_writes, 1);
    let mut status = [0xaa];
    bus.pio_in(0x600, &mut status);
    assert_eq!(status, [0]);
    assert_eq!(bus.unowned.pio_reads, 0);
    assert_eq!(bus.pio_out(0x600, &[0x34]), Some(End::PowerOff));
}

/// `mov al, 0xfe; out 0x64, al; hlt`: the i8042 reset line, an end that
/// comes from a vCPU's exit as a triple fault does (KVM here does not give
/// a test a triple fault: from real mode its emulator reports an internal
/// error instead).
const RESET: [u8; 5] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4];

fn one_vcpu_at(code: &[u8]) -> Running {
    let vm = LinuxVm::create(
        1,
        64 << 20,
        vec![],
        Box::new(Sink::default()),
        Box::new(NoBackend),
    )
    .unwrap();
    vm.memory().write_slice(code, GuestAddress(0x1000)).unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    vm.start().unwrap()
}

#[test]
fn an_end_by_a_vcpu_is_noted_with_its_vcpu_before_any_pause() {
    let report = one_vcpu_at(&RESET).wait();
    assert_eq!(report.end, End::Reset);
    let note = report.note.unwrap();
    assert_eq!(note.vcpu, Some(0));
    assert!(!note.first_run_after_pause && !note.during_pause);
    assert_eq!((note.pauses, note.since_resume), (0, None));
    assert_eq!(note.to_string(), "vCPU 0, before any pause");
}

#[test]
fn an_end_in_the_first_run_after_a_pause_says_so() {
    // Spin until the byte at 0x3000 is set (no exit while spinning), then
    // reset: the pause sets it, so the reset ends the first KVM_RUN after.
    let mut code = vec![0xa0, 0x00, 0x30, 0x84, 0xc0, 0x74, 0xf9];
    code.extend_from_slice(&RESET);
    let running = one_vcpu_at(&code);
    std::thread::sleep(Duration::from_millis(50));
    running.with_paused(|p| p.mem.write_obj(1u8, GuestAddress(0x3000)).unwrap());
    let report = running.wait();
    assert_eq!(report.end, End::Reset);
    let note = report.note.unwrap();
    assert_eq!(note.vcpu, Some(0));
    assert!(note.first_run_after_pause, "{note:?}");
    assert!(!note.during_pause);
    assert_eq!(note.pauses, 1);
    assert!(note.since_resume.is_some());
    let said = note.to_string();
    assert!(
        said.starts_with("vCPU 0, ")
            && said.ends_with(" ms after pause 1 ended (its first KVM_RUN after it)"),
        "{said}"
    );
}

/// A guest in the middle of a long `rep outsb` to the serial port while
/// pauses come and go: KVM hands a string I/O to userspace a chunk at a
/// time, and the settle before a pause completes one chunk and may get the
/// next as an exit instead of `EINTR`. Every byte reaches the console, none
/// twice, whatever the pauses hit.
#[test]
fn pauses_during_a_string_io_lose_no_byte() {
    const N: u16 = 0xffff;
    let code = [
        0xb9, 0xff, 0xff, // mov cx, N
        0xbe, 0x00, 0x40, // mov si, 0x4000
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xf3, 0x6e, // rep outsb
        0xc6, 0x06, 0x00, 0x30, 0x01, // mov byte [0x3000], 1
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
    ];
    let out = Arc::new(Mutex::new(Vec::new()));
    let vm = LinuxVm::create(
        1,
        64 << 20,
        vec![],
        Box::new(Sink(Arc::clone(&out))),
        Box::new(NoBackend),
    )
    .unwrap();
    // The bytes to send, from 0x4000 on (DS 0: SI wraps at 64 KiB, so
    // they are read from 0x4000..0x10000 and then 0..0x3fff).
    let fill: Vec<u8> = (0..0x10000u32).map(|i| b'a' + (i % 26) as u8).collect();
    vm.memory().write_slice(&fill, GuestAddress(0)).unwrap();
    vm.memory()
        .write_slice(&code, GuestAddress(0x1000))
        .unwrap();
    vm.memory().write_obj(0u8, GuestAddress(0x3000)).unwrap();
    // What the guest will send: the first 64 KiB as they are now (the
    // code and the flag included, where SI wraps over them).
    let mut bytes = vec![0u8; 0x10000];
    vm.memory().read_slice(&mut bytes, GuestAddress(0)).unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    let running = vm.start().unwrap();
    let mem = running.memory();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pauses = 0;
    while mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap() == 0 {
        assert!(Instant::now() < deadline, "the string I/O never ended");
        running.with_paused(|_| ());
        pauses += 1;
        // Room for the guest between pauses: back to back, a loaded
        // machine can kick the vCPU out before it completes another chunk,
        // every time (the test ran out its 60 s so, with the cores busy).
        std::thread::sleep(Duration::from_micros(500));
    }
    running.stop();
    running.wait();
    let got = out.lock().unwrap().clone();
    let want: Vec<u8> = (0..u32::from(N))
        .map(|i| bytes[((0x4000 + i) % 0x10000) as usize])
        .collect();
    assert!(pauses > 0);
    assert_eq!(got.len(), want.len(), "{pauses} pauses");
    let first = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        first.is_none(),
        "{pauses} pauses: the bytes differ from {first:?}: got {:?}, want {:?}",
        String::from_utf8_lossy(&got[first.unwrap()..first.unwrap() + 40]),
        String::from_utf8_lossy(&want[first.unwrap()..first.unwrap() + 40])
    );
}

/// The line a checkpoint epoch summary and plain `ftvmm linux` both print
/// for a device whose interrupt the guest no longer takes.
#[test]
fn an_unanswered_line_is_said_with_its_slot_device_and_time() {
    let l = super::bus::UnansweredLine {
        slot: 1,
        device: "net",
        high_for: std::time::Duration::from_millis(12_340),
    };
    let s = l.to_string();
    assert!(
        s.starts_with("WARNING: virtio slot 1 (net): its interrupt line has been up for 12.3 s"),
        "{s}"
    );
    assert!(s.ends_with("(lost on the way in)"), "{s}");
}

/// Real mode, x2APIC, two vCPUs playing IPI ping-pong (source in the test
/// below): once vCPU 0 says it is ready (word 0x2004; a fixed IPI to a
/// software-disabled APIC is dropped), vCPU 1 sends vector 0x40 to vCPU 0
/// whenever the word at 0x2002 (sent) equals the word at 0x2000 (handled),
/// and counts it in "sent" after the ICR write; vCPU 0 idles in `hlt` with
/// interrupts on, and its handler counts "handled" before its EOI.
const IPI_PING_PONG: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x66, 0xb9, 0x1b, 0x00, 0x00, 0x00, 0x0f, 0x32, 0x66, 0x0d, 0x00,
    0x0c, 0x00, 0x00, 0x0f, 0x30, 0x66, 0xb9, 0x0f, 0x08, 0x00, 0x00, 0x66, 0xb8, 0xff, 0x01, 0x00,
    0x00, 0x66, 0x31, 0xd2, 0x0f, 0x30, 0x66, 0xb9, 0x02, 0x08, 0x00, 0x00, 0x0f, 0x32, 0x66, 0x85,
    0xc0, 0x75, 0x29, 0xc7, 0x06, 0x00, 0x01, 0x49, 0x10, 0xc7, 0x06, 0x02, 0x01, 0x00, 0x00, 0xfb,
    0xc7, 0x06, 0x04, 0x20, 0x01, 0x00, 0xf4, 0xeb, 0xfd, 0xff, 0x06, 0x00, 0x20, 0x66, 0xb9, 0x0b,
    0x08, 0x00, 0x00, 0x66, 0x31, 0xc0, 0x66, 0x31, 0xd2, 0x0f, 0x30, 0xcf, 0x83, 0x3e, 0x04, 0x20,
    0x01, 0x75, 0xf9, 0xa1, 0x00, 0x20, 0x3b, 0x06, 0x02, 0x20, 0x75, 0xf7, 0x66, 0xb9, 0x30, 0x08,
    0x00, 0x00, 0x66, 0xb8, 0x40, 0x00, 0x00, 0x00, 0x66, 0x31, 0xd2, 0x0f, 0x30, 0xff, 0x06, 0x02,
    0x20, 0xeb, 0xe0,
];

/// Whether `vector` is set in the 256-bit LAPIC register at `base` (ISR
/// 0x100, IRR 0x200: eight 32-bit words 16 bytes apart).
fn lapic_bit(lapic: &kvm_bindings::kvm_lapic_state, base: usize, vector: u8) -> bool {
    let at = base + usize::from(vector / 32) * 0x10;
    let word = u32::from_le_bytes(std::array::from_fn(|i| lapic.regs[at + i] as u8));
    word & (1 << (vector % 32)) != 0
}

/// Every pause's machine state is one instant for the interrupts between
/// vCPUs: an IPI that vCPU 1's state says it sent (its "sent" count in
/// memory, taken with every vCPU parked, is ahead of "handled") is pending
/// in vCPU 0's captured LAPIC (IRR or ISR) or being injected (its events).
/// A state without it would make a VM resumed from it wait for that IPI
/// forever (a TLB shootdown in Linux): the gap the `vcpus` module doc
/// describes.
///
/// ```text
///   cli; ds = 0; IA32_APIC_BASE |= EN | EXTD; SVR = 0x1ff
///   if x2APIC id != 0 goto sender
///   IVT[0x40] = 0000:handler; sti; [0x2004] = 1
/// idle: hlt; jmp idle
/// handler: inc [0x2000]; EOI; iret
/// sender: while [0x2004] != 1 {}
///   loop: while [0x2000] != [0x2002] {}; ICR = fixed 0x40 to 0; inc [0x2002]
/// ```
#[test]
fn every_pause_captures_an_ipi_in_flight_with_its_target() {
    let vm = LinuxVm::create(
        2,
        64 << 20,
        vec![],
        Box::new(Sink::default()),
        Box::new(NoBackend),
    )
    .expect("a VM with in-kernel irqchip and 2 vCPUs (is /dev/kvm there?)");
    vm.memory()
        .write_slice(IPI_PING_PONG, GuestAddress(0x1000))
        .unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    vm.enter_real_mode(1, 0x1000).unwrap();
    let mem = vm.memory().clone();
    let running = vm.start().unwrap();
    let handled = |m: &GuestMemoryMmap| m.read_obj::<u16>(GuestAddress(0x2000)).unwrap();
    wait_until("the ping-pong runs", || handled(&mem) > 100);
    let (mut lost, mut in_flight) = (Vec::new(), 0);
    let pauses = 30_000;
    for i in 0..pauses {
        let (h, s, pending) = running.with_paused(|p| {
            let state = p.capture().expect("capture");
            let v0 = &state.vcpus[0];
            let pending = lapic_bit(&v0.lapic, 0x200, 0x40)
                || lapic_bit(&v0.lapic, 0x100, 0x40)
                || (v0.events.interrupt.injected != 0 && v0.events.interrupt.nr == 0x40);
            let h = handled(p.mem);
            let s: u16 = p.mem.read_obj(GuestAddress(0x2002)).unwrap();
            (h, s, pending)
        });
        if s.wrapping_sub(h) == 1 {
            in_flight += 1;
            if !pending {
                lost.push((i, h, s));
            }
        }
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let after = handled(&mem);
    wait_until("the ping-pong goes on", || handled(&mem) != after);
    running.stop();
    running.wait();
    eprintln!(
        "{pauses} pauses: {in_flight} with an IPI in flight, {} lost",
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {pauses} pauses ({in_flight} with an IPI in flight) captured vCPU 1 as having \
         sent an IPI that vCPU 0's state does not hold (pause, handled, sent): {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
