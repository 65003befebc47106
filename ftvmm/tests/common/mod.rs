//! Shared pieces of the /dev/kvm tests: tiny 64-bit guests written in
//! position-independent assembly (copied out of this test binary into guest
//! memory), scripted inputs and collected outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;

use ftvmm::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource, TimerProgram};
use ftvmm::virtio::MmioTransport;
use ftvmm::Vm;

/// Where tiny guests are loaded and entered.
pub const CODE_ADDR: u64 = 0x10_0000;

macro_rules! guest {
    ($name:ident, $start:literal, $end:literal, $($asm:literal),+ $(,)?) => {
        core::arch::global_asm!(
            concat!(".pushsection .rodata.", $start, ",\"a\""),
            concat!(".global ", $start),
            concat!($start, ":"),
            $($asm),+,
            concat!(".global ", $end),
            concat!($end, ":"),
            ".popsection",
        );
        pub fn $name() -> &'static [u8] {
            extern "C" {
                #[link_name = $start]
                static START: u8;
                #[link_name = $end]
                static END: u8;
            }
            // SAFETY: both symbols delimit one contiguous read-only blob emitted above.
            unsafe {
                let s = &raw const START;
                let e = &raw const END;
                std::slice::from_raw_parts(s, e as usize - s as usize)
            }
        }
    };
}

// Writes "AB" to COM1, then exits with status 7.
guest!(
    guest_serial_exit,
    "ftvmm_g_serial_start",
    "ftvmm_g_serial_end",
    "mov dx, 0x3f8",
    "mov al, 0x41",
    "out dx, al",
    "mov al, 0x42",
    "out dx, al",
    "mov dx, 0x501",
    "mov al, 7",
    "out dx, al",
    "hlt",
);

// Counts rcx from 1 to 300: each step writes rcx to port 0x80 and to the page
// 0x300000 + (rcx % 8) * 4096, then exits with status 0.
guest!(
    guest_count,
    "ftvmm_g_count_start",
    "ftvmm_g_count_end",
    "xor ecx, ecx",
    "2:",
    "inc rcx",
    "mov rax, rcx",
    "out 0x80, al",
    "mov rbx, rcx",
    "and rbx, 7",
    "shl rbx, 12",
    "add rbx, 0x300000",
    "mov [rbx], rcx",
    "add r8, rcx",
    "imul r9, rcx, 3",
    "cmp rcx, 300",
    "jne 2b",
    "mov dx, 0x501",
    "mov al, 0",
    "out dx, al",
    "hlt",
);

// Installs an IDT with a handler for vector 0x20 (PIT IRQ 0) that counts in
// r15 and sends EOI; initialises the PIC (vectors 0x20/0x28, only IRQ 0
// unmasked) and the PIT (channel 0, mode 2, 100 Hz); then `sti; hlt` until 5
// ticks arrived and exits with the tick count.
guest!(
    guest_ticks,
    "ftvmm_g_ticks_start",
    "ftvmm_g_ticks_end",
    "lea rax, [rip + 8f]",
    "mov rdi, 0x1200",
    "mov word ptr [rdi], ax",
    "mov word ptr [rdi + 2], 0x08",
    "mov word ptr [rdi + 4], 0x8e00",
    "shr rax, 16",
    "mov word ptr [rdi + 6], ax",
    "shr rax, 16",
    "mov dword ptr [rdi + 8], eax",
    "mov dword ptr [rdi + 12], 0",
    "lidt [rip + 9f]",
    // PIC: ICW1..ICW4, then masks.
    "mov al, 0x11",
    "out 0x20, al",
    "out 0xa0, al",
    "mov al, 0x20",
    "out 0x21, al",
    "mov al, 0x28",
    "out 0xa1, al",
    "mov al, 0x04",
    "out 0x21, al",
    "mov al, 0x02",
    "out 0xa1, al",
    "mov al, 0x01",
    "out 0x21, al",
    "out 0xa1, al",
    "mov al, 0xfe",
    "out 0x21, al",
    "mov al, 0xff",
    "out 0xa1, al",
    // PIT channel 0, lobyte/hibyte, mode 2, count 11932.
    "mov al, 0x34",
    "out 0x43, al",
    "mov al, 0x9c",
    "out 0x40, al",
    "mov al, 0x2e",
    "out 0x40, al",
    "xor r15, r15",
    "3:",
    "sti",
    "hlt",
    "cli",
    "cmp r15, 5",
    "jb 3b",
    "mov rax, r15",
    "mov dx, 0x501",
    "out dx, al",
    "hlt",
    "8:",
    "inc r15",
    "push rax",
    "mov al, 0x20",
    "out 0x20, al",
    "pop rax",
    "iretq",
    "9:",
    ".word 0xfff",
    ".quad 0x1000",
);

// Same IDT/PIC/PIT setup as guest_ticks, but keeps interrupts disabled while
// doing 20 port writes, then executes `sti`, a 200,000-iteration loop without
// exits, and port writes: a tick delivered while IF=0 must wait for the
// next exit with IF=1 (the VMM requests no interrupt window). Exits with r15
// (the number of interrupts taken) after the second batch.
guest!(
    guest_window,
    "ftvmm_g_window_start",
    "ftvmm_g_window_end",
    "lea rax, [rip + 8f]",
    "mov rdi, 0x1200",
    "mov word ptr [rdi], ax",
    "mov word ptr [rdi + 2], 0x08",
    "mov word ptr [rdi + 4], 0x8e00",
    "shr rax, 16",
    "mov word ptr [rdi + 6], ax",
    "shr rax, 16",
    "mov dword ptr [rdi + 8], eax",
    "mov dword ptr [rdi + 12], 0",
    "lidt [rip + 9f]",
    "mov al, 0x11",
    "out 0x20, al",
    "out 0xa0, al",
    "mov al, 0x20",
    "out 0x21, al",
    "mov al, 0x28",
    "out 0xa1, al",
    "mov al, 0x04",
    "out 0x21, al",
    "mov al, 0x02",
    "out 0xa1, al",
    "mov al, 0x01",
    "out 0x21, al",
    "out 0xa1, al",
    "mov al, 0xfe",
    "out 0x21, al",
    "mov al, 0xff",
    "out 0xa1, al",
    "mov al, 0x34",
    "out 0x43, al",
    "mov al, 0x9c",
    "out 0x40, al",
    "mov al, 0x2e",
    "out 0x40, al",
    "xor r15, r15",
    "mov ecx, 20",
    "4:",
    "out 0x80, al",
    "loop 4b",
    "sti",
    "mov ecx, 200000",
    "5:",
    "nop",
    "add r14, 1",
    "loop 5b",
    "mov ecx, 5",
    "6:",
    "out 0x80, al",
    "loop 6b",
    "cli",
    "mov rax, r15",
    "mov dx, 0x501",
    "out dx, al",
    "hlt",
    "8:",
    "inc r15",
    "push rax",
    "mov al, 0x20",
    "out 0x20, al",
    "pop rax",
    "iretq",
    "9:",
    ".word 0xfff",
    ".quad 0x1000",
);

// The IDT/PIC/PIT setup of guest_ticks, but the master PIC in auto-EOI mode
// (the handler makes no exit: `inc r15; iretq`). Then 3000 times: `cli`, a
// port write (exit; the inputs deliver a tick there, so an interrupt is
// pending while IF=0), `sti; hlt` (the HLT sits in the STI shadow and must
// exit as a HLT, where the tick is injected). Exits with r15 (interrupts
// taken) mod 256.
guest!(
    guest_sti_hlt,
    "ftvmm_g_sti_hlt_start",
    "ftvmm_g_sti_hlt_end",
    "lea rax, [rip + 8f]",
    "mov rdi, 0x1200",
    "mov word ptr [rdi], ax",
    "mov word ptr [rdi + 2], 0x08",
    "mov word ptr [rdi + 4], 0x8e00",
    "shr rax, 16",
    "mov word ptr [rdi + 6], ax",
    "shr rax, 16",
    "mov dword ptr [rdi + 8], eax",
    "mov dword ptr [rdi + 12], 0",
    "lidt [rip + 9f]",
    "mov al, 0x11",
    "out 0x20, al",
    "out 0xa0, al",
    "mov al, 0x20",
    "out 0x21, al",
    "mov al, 0x28",
    "out 0xa1, al",
    "mov al, 0x04",
    "out 0x21, al",
    "mov al, 0x02",
    "out 0xa1, al",
    "mov al, 0x03",
    "out 0x21, al",
    "mov al, 0x01",
    "out 0xa1, al",
    "mov al, 0xfe",
    "out 0x21, al",
    "mov al, 0xff",
    "out 0xa1, al",
    "mov al, 0x34",
    "out 0x43, al",
    "mov al, 0x9c",
    "out 0x40, al",
    "mov al, 0x2e",
    "out 0x40, al",
    "xor r15, r15",
    "xor r14, r14",
    "3:",
    "cli",
    "out 0x80, al",
    "sti",
    "hlt",
    "inc r14",
    "cmp r14, 3000",
    "jb 3b",
    "cli",
    "mov rax, r15",
    "mov dx, 0x501",
    "out dx, al",
    "hlt",
    "8:",
    "inc r15",
    "iretq",
    "9:",
    ".word 0xfff",
    ".quad 0x1000",
);

// Reads virtio-mmio MagicValue, Version and DeviceID of device 0 and writes
// them to port 0x80 as dwords; exits 0.
guest!(
    guest_mmio,
    "ftvmm_g_mmio_start",
    "ftvmm_g_mmio_end",
    "mov rbx, 0xd0000000",
    "mov eax, [rbx]",
    "mov dx, 0x80",
    "out dx, eax",
    "mov eax, [rbx + 4]",
    "out dx, eax",
    "mov eax, [rbx + 8]",
    "out dx, eax",
    "mov dword ptr [rbx + 0x70], 0",
    "mov dx, 0x501",
    "mov al, 0",
    "out dx, al",
    "hlt",
);

/// Events scripted by exit index; while halted, one timer tick per call.
#[derive(Default)]
pub struct ScriptedInputs {
    pub at: BTreeMap<ExitIndex, Vec<InputEvent>>,
    pub tick_on_halt: bool,
    pub programs: Vec<(ExitIndex, TimerProgram)>,
    pub halt_calls: u64,
}

impl Inputs for ScriptedInputs {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if let Some(evs) = self.at.remove(&n) {
            out.extend(evs);
        }
    }
    fn time_read(&mut self, n: ExitIndex, _source: TimeSource) -> u64 {
        n * 1_000
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.halt_calls += 1;
        assert!(self.halt_calls < 10_000, "guest halted forever at exit {n}");
        self.events_at(n, out);
        if self.tick_on_halt {
            out.push(InputEvent::TimerTick);
        }
    }
    fn program_timer(&mut self, n: ExitIndex, program: TimerProgram) {
        self.programs.push((n, program));
    }
}

/// A timer tick at every deterministic exit (for guests whose handler makes
/// no exit, e.g. [`guest_sti_hlt`]).
pub struct TickEveryExit;

impl Inputs for TickEveryExit {
    fn events_at(&mut self, _n: ExitIndex, out: &mut Vec<InputEvent>) {
        out.push(InputEvent::TimerTick);
    }
    fn time_read(&mut self, n: ExitIndex, _source: TimeSource) -> u64 {
        n * 1_000
    }
}

/// Outputs collected with their exit index.
#[derive(Default)]
pub struct Collected(pub Vec<(ExitIndex, OutputEvent)>);

impl Outputs for Collected {
    fn emit(&mut self, n: ExitIndex, event: OutputEvent) {
        self.0.push((n, event));
    }
}

impl Collected {
    pub fn console(&self) -> Vec<u8> {
        self.0
            .iter()
            .filter_map(|(_, e)| match e {
                OutputEvent::Console(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// The reference guest ELF: `FTGUEST_ELF`, or the release build under
/// `guest/target`; fails with how to build it when missing.
pub fn guest_elf() -> std::path::PathBuf {
    let p = std::env::var_os("FTGUEST_ELF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../guest/target/x86_64-unknown-none/release/ftguest")
        });
    assert!(
        p.exists(),
        "reference guest {} missing: build it with `cd guest && cargo build --release` or set FTGUEST_ELF",
        p.display()
    );
    p
}

/// A VM with `mib` MiB running `code` (fails loudly without /dev/kvm).
pub fn tiny_vm(code: &[u8], mib: u64, virtio: Vec<MmioTransport>) -> Vm {
    let mut vm = Vm::new(mib << 20, virtio)
        .unwrap_or_else(|e| panic!("this test needs a working /dev/kvm: {e}"));
    vm.boot_flat(code, CODE_ADDR, "test")
        .expect("boot tiny guest");
    vm
}

// The lockstep tests' VM (tests/lockstep.rs, tests/pair_loopback.rs).

pub const KV_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const KV_CMDLINE: &str =
    "virtio_mmio=0xd0000000@5,0xd0001000@6 mac=52:54:00:12:34:56 mode=kv ip=10.0.0.2/24";
pub const KV_DISK_SECTORS: u64 = 8192;
pub const KV_MEM_MIB: u64 = 32;

/// The reference guest in KV mode with a block and a net device, traced:
/// the VM both sides of the lockstep tests build.
pub fn boot_kv_guest() -> Vm {
    let devs = vec![
        ftvmm::virtio::new_block(0, KV_DISK_SECTORS),
        ftvmm::virtio::new_net(0, KV_MAC),
    ];
    let mut vm = Vm::new(KV_MEM_MIB << 20, devs)
        .unwrap_or_else(|e| panic!("this test needs a working /dev/kvm: {e}"));
    vm.boot_elf(&guest_elf(), KV_CMDLINE)
        .expect("boot the guest");
    vm.enable_trace();
    vm
}

/// An ARP request "who has 10.0.0.2" from 10.0.0.1.
pub fn arp_request(k: u8) -> Vec<u8> {
    let src = [0x02, 0, 0, 0, 0, k];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 0, 2]);
    f
}

#[derive(Clone, Default)]
pub struct SharedConsole(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
impl std::io::Write for SharedConsole {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Primary side of the lockstep tests: the KV guest booted and its live
/// backends started on a fresh temporary disk, console captured.
pub struct LiveKv {
    /// Keeps the disk file alive as long as the VM runs.
    pub disk_file: tempfile::NamedTempFile,
    pub vm: Vm,
    pub console: SharedConsole,
    pub live: ftvmm::live::Live,
}

pub fn live_kv_guest() -> LiveKv {
    use ftvmm::live::{self, DiskBackend, LiveConfig};
    let disk_file = tempfile::NamedTempFile::new().unwrap();
    disk_file.as_file().set_len(KV_DISK_SECTORS * 512).unwrap();
    let disk = DiskBackend::open(&disk_file.path().to_str().unwrap().parse().unwrap(), 0).unwrap();
    let vm = boot_kv_guest();
    let console = SharedConsole::default();
    let live = live::start(
        LiveConfig {
            io_watch: None,
            disk: Some(disk),
            tap: None,
            console: Box::new(console.clone()),
            stdin: false,
        },
        vm.handle().kicker(),
    )
    .unwrap();
    LiveKv {
        disk_file,
        vm,
        console,
        live,
    }
}
