//! The device bus of a checkpoint-mode VM, shared by its vCPU threads and
//! its backend threads under one `Mutex`: COM1 (a `vm-superio` 16550 at
//! 0x3f8, IRQ 4, output to a writer), the i8042 reset port, the ACPI sleep
//! control/status port (0x600, power-off), the virtio-mmio slots, and
//! "nobody" (ports and addresses no device owns: reads return all
//! ones, writes are ignored; both counted).
//!
//! Interrupts. The virtio slots are level-triggered IOAPIC pins (declared so
//! in the MP table and the ACPI MADT): after every access or event the bus
//! sets the pin to `MmioTransport::irq_level()` with `KVM_IRQ_LINE` when it
//! changed. Level, not an irqfd edge, because the line must stay up while
//! `InterruptStatus` is non-zero: the in-kernel IOAPIC then re-delivers after
//! the guest's EOI if the driver acknowledged only part of the status, and
//! nothing is lost between the driver reading and acknowledging it. (irqfd
//! with a resample fd would do the same from another thread; KVM_IRQ_LINE
//! under the bus lock keeps the level and the device state in one order.)
//! COM1's interrupt is an edge (the 8250 driver's IRQ 4 is ISA edge): its
//! `vm-superio` trigger writes an eventfd registered as an irqfd on GSI 4.
//!
//! The guest ends the VM by writing 0xfe to port 0x64 (`reboot=k`), which
//! the bus reports as [`super::End::Reset`], or by powering off: a guest's
//! `poweroff` writes [`S5_SLEEP_CONTROL`] (SLP_TYP 5 | SLP_EN) to the ACPI
//! sleep control register at [`SLEEP_PORT`] (the FADT's, see
//! [`super::acpi`]), which the bus reports as [`super::End::PowerOff`]. Other
//! writes there (Linux first clears the sleep status's WAK_STS with 0x80)
//! are ignored; reads return 0 (sleep status: nothing set).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::acpi::{S5_SLEEP_CONTROL, SLEEP_PORT};
use super::backend::LinuxBackend;
use super::devstate::{DevStateError, DevicesState, DEVICES_VERSION};
use super::End;
use crate::devices::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::io::{BlockRequest, ExitIndex, InputEvent, OutputEvent, Outputs};
use crate::virtio::{GuestMemoryMmap, MmioTransport, MmioTransportState};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// Bytes COM1's receive FIFO holds.
const SERIAL_FIFO: usize = 64;
const I8042_DATA: u16 = 0x60;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// The devices here run no lockstep: every call is at "exit" 0.
const NO_EXIT_INDEX: ExitIndex = 0;

/// COM1's interrupt: an eventfd KVM turns into an edge on GSI 4 (irqfd),
/// held back while the bus holds its interrupts ([`Bus::hold_irqs`]).
pub struct IrqEvt {
    fd: EventFd,
    hold: Arc<EdgeHold>,
}

/// A held edge: raised while held, it fires when the hold ends.
#[derive(Default)]
struct EdgeHold {
    held: AtomicBool,
    pending: AtomicBool,
}

impl Trigger for IrqEvt {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        if self.hold.held.load(Ordering::SeqCst) {
            self.hold.pending.store(true, Ordering::SeqCst);
            return Ok(());
        }
        self.fd.write(1)
    }
}

/// Accesses nobody owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unowned {
    pub pio_reads: u64,
    pub pio_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
}

pub type Console = Box<dyn Write + Send>;

pub struct Bus {
    serial: Serial<IrqEvt, NoEvents, Console>,
    /// COM1's edge held while `irqs_held` (it only reads the flag there).
    serial_hold: Arc<EdgeHold>,
    /// The fd COM1's held edge fires on when the hold ends.
    serial_fd: Option<EventFd>,
    virtio: Vec<MmioTransport>,
    /// The level KVM has for each virtio slot's line.
    levels: Vec<bool>,
    /// [`Bus::hold_irqs`]: line changes wait in the devices' state.
    irqs_held: bool,
    /// Since when KVM has had each virtio slot's line up.
    raised_at: Vec<Option<Instant>>,
    vm: std::sync::Arc<VmFd>,
    mem: GuestMemoryMmap,
    /// Taken out when the VM ends (its threads are joined without the lock).
    backend: Option<Box<dyn LinuxBackend>>,
    pub unowned: Unowned,
    pub irq_errors: u64,
}

/// The devices' output door: block requests and frames to the backend.
struct Door<'a>(Option<&'a mut Box<dyn LinuxBackend>>);

impl Outputs for Door<'_> {
    fn emit(&mut self, _: ExitIndex, event: OutputEvent) {
        let Some(b) = self.0.as_mut() else {
            return;
        };
        match event {
            OutputEvent::Block(req) => b.submit_block(req),
            OutputEvent::Frame { dev, data } => b.send_frame(dev, data),
            OutputEvent::Console(_) => {}
        }
    }
}

impl Bus {
    pub fn new(
        vm: std::sync::Arc<VmFd>,
        mem: GuestMemoryMmap,
        serial_irq: EventFd,
        console: Console,
        virtio: Vec<MmioTransport>,
        backend: Box<dyn LinuxBackend>,
        serial: SerialState,
    ) -> Self {
        let levels = vec![false; virtio.len()];
        let n_virtio = virtio.len();
        let mut serial = serial;
        // The 16550's FIFO holds 64 bytes; a longer buffer is refused.
        serial.in_buffer.truncate(SERIAL_FIFO);
        let serial_hold = Arc::new(EdgeHold::default());
        let serial_fd = serial_irq.try_clone().ok();
        let evt = |fd: EventFd| IrqEvt {
            fd,
            hold: Arc::clone(&serial_hold),
        };
        // Restoring signals an interrupt the state says is pending; if that
        // eventfd write fails the device is built anyway, its interrupt lost
        // (the guest's driver polls again on its next transmit).
        let serial = match serial_irq.try_clone() {
            Ok(dup) => match Serial::from_state(&serial, evt(dup), NoEvents, console) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("COM1 restore: {e:?}; its output is lost");
                    Serial::new(evt(serial_irq), Box::new(std::io::sink()) as Console)
                }
            },
            Err(e) => {
                tracing::warn!("COM1: cannot duplicate its eventfd ({e}); COM1 starts reset");
                Serial::new(evt(serial_irq), console)
            }
        };
        Bus {
            serial,
            serial_hold,
            serial_fd,
            virtio,
            levels,
            irqs_held: false,
            raised_at: vec![None; n_virtio],
            vm,
            mem,
            backend: Some(backend),
            unowned: Unowned::default(),
            irq_errors: 0,
        }
    }

    /// The IOAPIC pin of virtio slot `i`.
    pub fn virtio_irq(i: usize) -> u32 {
        u32::from(VIRTIO_IRQ_BASE) + i as u32
    }

    /// (base, irq) of every virtio slot.
    pub fn virtio_slots(n: usize) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| {
                (
                    VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE,
                    Self::virtio_irq(i),
                )
            })
            .collect()
    }

    pub fn take_backend(&mut self) -> Option<Box<dyn LinuxBackend>> {
        self.backend.take()
    }

    pub fn put_backend(&mut self, backend: Box<dyn LinuxBackend>) {
        self.backend = Some(backend);
    }

    pub fn pio_in(&mut self, port: u16, data: &mut [u8]) {
        if (COM1_BASE..COM1_BASE + 8).contains(&port) && data.len() == 1 {
            data[0] = self.serial.read((port - COM1_BASE) as u8);
        } else if port == I8042_COMMAND || port == I8042_DATA {
            // Status 0: no data, input buffer empty (a reset write goes through).
            data.fill(0);
        } else if port == SLEEP_PORT {
            // Sleep status 0: no wake event.
            data.fill(0);
        } else {
            self.unowned.pio_reads += 1;
            data.fill(0xff);
        }
    }

    /// Returns `Some(End::Reset)` for the i8042 reset command and
    /// `Some(End::PowerOff)` for S5 written to the sleep control register.
    pub fn pio_out(&mut self, port: u16, data: &[u8]) -> Option<End> {
        if (COM1_BASE..COM1_BASE + 8).contains(&port) && data.len() == 1 {
            if let Err(e) = self.serial.write((port - COM1_BASE) as u8, data[0]) {
                tracing::debug!("COM1 write: {e:?}");
            }
        } else if port == I8042_COMMAND && data.first() == Some(&I8042_RESET) {
            return Some(End::Reset);
        } else if port == SLEEP_PORT {
            if data == [S5_SLEEP_CONTROL] {
                return Some(End::PowerOff);
            }
            tracing::debug!(?data, "ACPI sleep register write ignored (not S5)");
        } else if port != 0x80 && port != I8042_COMMAND && port != I8042_DATA {
            self.unowned.pio_writes += 1;
        }
        None
    }

    fn slot(&self, addr: u64) -> Option<(usize, u64)> {
        let rel = addr.checked_sub(VIRTIO_MMIO_BASE)?;
        let slot = (rel / VIRTIO_MMIO_SIZE) as usize;
        (slot < self.virtio.len()).then_some((slot, rel % VIRTIO_MMIO_SIZE))
    }

    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match self.slot(addr) {
            Some((i, off)) => {
                self.virtio[i].mmio_read(off, data);
                self.sync_irq(i);
            }
            None => {
                self.unowned.mmio_reads += 1;
                data.fill(0xff);
            }
        }
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        match self.slot(addr) {
            Some((i, off)) => {
                let mut door = Door(self.backend.as_mut());
                self.virtio[i].mmio_write(NO_EXIT_INDEX, &self.mem, off, data, &mut door);
                self.sync_irq(i);
            }
            None => self.unowned.mmio_writes += 1,
        }
    }

    /// A completion or frame from the backend.
    pub fn deliver(&mut self, ev: InputEvent) {
        let (want_block, dev) = match &ev {
            InputEvent::BlockDone { dev, .. } => (true, *dev),
            InputEvent::Frame { dev, .. } => (false, *dev),
            InputEvent::ConsoleIn(bytes) => return self.console_in(bytes),
            InputEvent::TimerTick => return,
        };
        let slot = self
            .virtio
            .iter()
            .position(|t| t.dev() == dev && (t.device_id() == VIRTIO_ID_BLOCK) == want_block);
        let Some(i) = slot else {
            tracing::debug!(dev, "linux bus: event for a device this VM does not have");
            return;
        };
        let mut door = Door(self.backend.as_mut());
        self.virtio[i].deliver(NO_EXIT_INDEX, &self.mem, ev, &mut door);
        self.sync_irq(i);
    }

    /// Bytes typed on the console.
    pub fn console_in(&mut self, bytes: &[u8]) {
        if let Err(e) = self.serial.enqueue_raw_bytes(bytes) {
            tracing::debug!("COM1 input: {e:?}");
        }
    }

    /// Holds every device interrupt line where KVM has it: changes stay in
    /// the devices' state (virtio `InterruptStatus`, COM1's pending edge)
    /// until [`Bus::release_irqs`]. A checkpoint pause holds them from
    /// before its vCPUs stop until its capture is done, so the machine
    /// state (LAPICs, IOAPIC, PIC) and the device state are of one instant:
    /// a line raised in between, after a vCPU's LAPIC was read but before
    /// the IOAPIC, would leave a restored IOAPIC waiting (remote IRR) for
    /// an EOI of an interrupt no restored LAPIC holds — that device's line
    /// dead for good. The restored devices raise their lines from their
    /// state ([`Bus::restore_virtio`]), so nothing held is lost there.
    pub fn hold_irqs(&mut self) {
        self.irqs_held = true;
        self.serial_hold.held.store(true, Ordering::SeqCst);
    }

    /// Ends [`Bus::hold_irqs`]: every line to its device's level now, and
    /// COM1's edge if one was raised meanwhile.
    pub fn release_irqs(&mut self) {
        self.irqs_held = false;
        for i in 0..self.virtio.len() {
            self.sync_irq(i);
        }
        self.serial_hold.held.store(false, Ordering::SeqCst);
        if self.serial_hold.pending.swap(false, Ordering::SeqCst) {
            if let Some(fd) = &self.serial_fd {
                if let Err(e) = fd.write(1) {
                    self.irq_errors += 1;
                    tracing::warn!("COM1 interrupt after a hold: {e}");
                }
            }
        }
    }

    fn sync_irq(&mut self, i: usize) {
        let level = self.virtio[i].irq_level();
        if self.levels[i] == level || self.irqs_held {
            return;
        }
        self.levels[i] = level;
        self.raised_at[i] = level.then(Instant::now);
        if let Err(e) = self.vm.set_irq_line(Self::virtio_irq(i), level) {
            self.irq_errors += 1;
            tracing::warn!(slot = i, level, "KVM_IRQ_LINE: {e}");
        }
    }

    /// The virtio slots whose line KVM has had up for at least `min`
    /// without the guest acknowledging it (a driver acknowledges within
    /// milliseconds). Such a device is dead to the guest: its interrupt
    /// was lost on the way (e.g. an in-service bit never EOI'd blocks its
    /// vector) — worth one console line, it explains a guest that runs but
    /// no longer answers on its NIC.
    pub fn lines_unanswered(&self, min: Duration) -> Vec<UnansweredLine> {
        self.raised_at
            .iter()
            .enumerate()
            .filter_map(|(slot, at)| {
                let high_for = at.map(|t| t.elapsed()).filter(|d| *d >= min)?;
                let device = match self.virtio[slot].device_id() {
                    VIRTIO_ID_NET => "net",
                    VIRTIO_ID_BLOCK => "block",
                    _ => "virtio",
                };
                Some(UnansweredLine {
                    slot,
                    device,
                    high_for,
                })
            })
            .collect()
    }

    pub fn virtio(&self) -> &[MmioTransport] {
        &self.virtio
    }

    /// Pages the devices wrote since the last call (KVM's dirty log misses
    /// the VMM's own writes).
    pub fn take_dirty_pages(&mut self) -> Vec<u64> {
        self.virtio
            .iter_mut()
            .flat_map(|t| t.take_dirty_pages())
            .collect()
    }

    /// COM1 and every virtio transport (checkpoint epochs; call with the
    /// vCPUs paused).
    pub fn save_devices(&self) -> DevicesState {
        DevicesState {
            version: DEVICES_VERSION,
            serial: self.serial.state().into(),
            virtio: self.virtio.iter().map(MmioTransport::save).collect(),
        }
    }

    /// Loads the virtio transports of `s` (COM1 is restored at [`Bus::new`])
    /// and raises each slot's interrupt line to its restored level: KVM's
    /// per-source line level is not part of the IOAPIC state.
    pub fn restore_virtio(&mut self, s: Vec<MmioTransportState>) -> Result<(), DevStateError> {
        if s.len() != self.virtio.len() {
            return Err(DevStateError::Slots {
                expected: self.virtio.len(),
                found: s.len(),
            });
        }
        for (slot, (t, st)) in self.virtio.iter_mut().zip(s).enumerate() {
            t.restore(st)
                .map_err(|source| DevStateError::Virtio { slot, source })?;
        }
        for i in 0..self.virtio.len() {
            self.levels[i] = !self.virtio[i].irq_level();
            self.sync_irq(i);
        }
        Ok(())
    }

    /// Hands the block requests the restored devices hold in flight to the
    /// backend again (they were in flight when the epoch was taken; their
    /// completions never reached the guest). Returns how many.
    pub fn resubmit_in_flight(&mut self) -> usize {
        let reqs: Vec<BlockRequest> = self
            .virtio
            .iter()
            .flat_map(|t| t.in_flight_requests(&self.mem))
            .collect();
        let n = reqs.len();
        if let Some(b) = self.backend.as_mut() {
            for r in reqs {
                b.submit_block(r);
            }
        }
        n
    }

    pub fn console_flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_ID_BLOCK: u32 = 2;

/// How long a device's interrupt line may stay up unanswered before the
/// console says the guest no longer takes that interrupt (a driver answers
/// in milliseconds; a boot-time checkpoint epoch pauses the guest ~1 s).
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(5);

/// A device line up without the guest answering ([`Bus::lines_unanswered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnansweredLine {
    pub slot: usize,
    /// "net" or "block".
    pub device: &'static str,
    pub high_for: Duration,
}

impl std::fmt::Display for UnansweredLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WARNING: virtio slot {} ({}): its interrupt line has been up for {:.1} s and the \
             guest has not acknowledged it: the guest no longer takes that device's interrupts \
             (lost on the way in)",
            self.slot,
            self.device,
            self.high_for.as_secs_f64()
        )
    }
}
