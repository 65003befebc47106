//! The VM's device bus: legacy port-I/O devices (PIC pair, PIT, COM1, the
//! debug-exit port) and the virtio-mmio window, wired to the PIC's inputs.
//!
//! Every method takes the exit index `n` of the deterministic exit it runs at
//! and reaches the outside world only through [`Inputs`] (time reads) and
//! [`Outputs`] (console bytes, frames, block requests).

pub mod pic;
pub mod pit;
pub mod serial;

use serde::{Deserialize, Serialize};

use crate::io::{
    BlockRequest, ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource, TimerProgram,
};
use crate::virtio::{GuestMemoryMmap, MmioTransport, MmioTransportState, VirtioError};
use pic::PicPair;
use pit::{Pit, PitEffect};
use serial::{Uart, UartState, COM1_IRQ};

/// `out 0x501, al` stops the VM with status `al` (like QEMU's isa-debug-exit).
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// virtio-mmio device `i` lives at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`, IRQ `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_IRQ_BASE: u8 = 5;
/// virtio DeviceIDs.
const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_ID_BLOCK: u32 = 2;

/// Accesses that hit no device, by kind (counted, answered with all ones / ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnhandledCounts {
    pub pio_reads: u64,
    pub pio_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Events for a device the VM does not have.
    pub events: u64,
}

/// All devices of one VM.
pub struct Devices {
    pub pic: PicPair,
    pub pit: Pit,
    pub uart: Uart,
    /// virtio-mmio slot `i` (blk at 0, net at 1 by the boot protocol).
    pub virtio: Vec<MmioTransport>,
    pub unhandled: UnhandledCounts,
}

/// Serializable device state for snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicesState {
    pub pic: PicPair,
    pub pit: Pit,
    pub uart: UartState,
    pub virtio: Vec<MmioTransportState>,
    pub unhandled: UnhandledCounts,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceRestoreError {
    #[error("serial state rejected: {0}")]
    Serial(String),
    #[error("snapshot has {found} virtio devices, this VM has {expected}")]
    VirtioCount { expected: usize, found: usize },
    #[error("virtio device {slot}: {source}")]
    Virtio { slot: usize, source: VirtioError },
}

impl Devices {
    /// Legacy devices plus the given virtio transports in slot order.
    pub fn new(virtio: Vec<MmioTransport>) -> Self {
        Devices {
            pic: PicPair::new(),
            pit: Pit::new(),
            uart: Uart::new(),
            virtio,
            unhandled: UnhandledCounts::default(),
        }
    }

    /// A guest `in` from `port`: `data` holds one or more (`rep ins`)
    /// accesses of `size` bytes; byte `i` of an access is port + i.
    pub fn pio_in(
        &mut self,
        n: ExitIndex,
        port: u16,
        size: usize,
        data: &mut [u8],
        inputs: &mut dyn Inputs,
    ) {
        let size = size.max(1);
        for (j, b) in data.iter_mut().enumerate() {
            let i = j % size;
            let p = port.wrapping_add(i as u16);
            *b = if PicPair::owns(p) {
                self.pic.pio_read(p)
            } else if Pit::owns(p) {
                let mut clock = || inputs.time_read(n, TimeSource::MonotonicNs);
                self.pit.pio_read(p, &mut clock)
            } else if Uart::owns(p) {
                self.uart.pio_read(p)
            } else {
                self.unhandled.pio_reads += 1;
                tracing::trace!(port = p, "unhandled port read");
                0xff
            };
        }
        self.sync_irqs();
    }

    /// A guest `out` to `port` (`data` as in [`Devices::pio_in`]). Returns
    /// `Some(code)` for a write to the debug-exit port.
    pub fn pio_out(
        &mut self,
        n: ExitIndex,
        port: u16,
        size: usize,
        data: &[u8],
        inputs: &mut dyn Inputs,
        out: &mut dyn Outputs,
    ) -> Option<u8> {
        if port == DEBUG_EXIT_PORT {
            return Some(data.first().copied().unwrap_or(0));
        }
        let size = size.max(1);
        for (j, &b) in data.iter().enumerate() {
            let i = j % size;
            let p = port.wrapping_add(i as u16);
            if PicPair::owns(p) {
                self.pic.pio_write(p, b);
            } else if Pit::owns(p) {
                let mut clock = || inputs.time_read(n, TimeSource::MonotonicNs);
                if let PitEffect::Reprogrammed(prog) = self.pit.pio_write(p, b, &mut clock) {
                    inputs.program_timer(n, prog);
                }
            } else if Uart::owns(p) {
                self.uart.pio_write(p, b);
            } else if p != 0x80 {
                // Port 0x80 is the POST/delay port: writes are expected and ignored.
                self.unhandled.pio_writes += 1;
                tracing::trace!(port = p, val = b, "unhandled port write");
            }
        }
        self.flush_console(n, out);
        self.sync_irqs();
        None
    }

    fn virtio_slot(&self, addr: u64) -> Option<(usize, u64)> {
        let rel = addr.checked_sub(VIRTIO_MMIO_BASE)?;
        let slot = (rel / VIRTIO_MMIO_SIZE) as usize;
        (slot < self.virtio.len()).then_some((slot, rel % VIRTIO_MMIO_SIZE))
    }

    pub fn mmio_read(&mut self, _n: ExitIndex, addr: u64, data: &mut [u8]) {
        match self.virtio_slot(addr) {
            Some((slot, off)) => self.virtio[slot].mmio_read(off, data),
            None => {
                self.unhandled.mmio_reads += 1;
                tracing::debug!(addr, "unhandled MMIO read");
                data.fill(0xff);
            }
        }
        self.sync_irqs();
    }

    pub fn mmio_write(
        &mut self,
        n: ExitIndex,
        mem: &GuestMemoryMmap,
        addr: u64,
        data: &[u8],
        out: &mut dyn Outputs,
    ) {
        match self.virtio_slot(addr) {
            Some((slot, off)) => self.virtio[slot].mmio_write(n, mem, off, data, out),
            None => {
                self.unhandled.mmio_writes += 1;
                tracing::debug!(addr, "unhandled MMIO write");
            }
        }
        self.sync_irqs();
    }

    /// Delivers one asynchronous input event at exit `n`.
    pub fn deliver(
        &mut self,
        n: ExitIndex,
        mem: &GuestMemoryMmap,
        ev: InputEvent,
        out: &mut dyn Outputs,
    ) {
        match ev {
            InputEvent::TimerTick => {
                if self.pit.tick() {
                    self.pic.pulse(0);
                }
            }
            InputEvent::ConsoleIn(bytes) => self.uart.receive(&bytes),
            InputEvent::Frame { dev, .. } => match self.find_virtio(VIRTIO_ID_NET, dev) {
                Some(slot) => self.virtio[slot].deliver(n, mem, ev, out),
                None => self.unhandled.events += 1,
            },
            InputEvent::BlockDone { dev, .. } => match self.find_virtio(VIRTIO_ID_BLOCK, dev) {
                Some(slot) => self.virtio[slot].deliver(n, mem, ev, out),
                None => self.unhandled.events += 1,
            },
        }
        self.sync_irqs();
    }

    fn find_virtio(&self, device_id: u32, dev: u8) -> Option<usize> {
        self.virtio
            .iter()
            .position(|t| t.device_id() == device_id && t.dev() == dev)
    }

    fn flush_console(&mut self, n: ExitIndex, out: &mut dyn Outputs) {
        let bytes = self.uart.take_output();
        if !bytes.is_empty() {
            out.emit(n, OutputEvent::Console(bytes));
        }
    }

    /// Propagates device interrupt requests to the PIC inputs.
    fn sync_irqs(&mut self) {
        if self.uart.take_irq() {
            self.pic.pulse(COM1_IRQ);
        }
        for (i, t) in self.virtio.iter().enumerate() {
            self.pic.set_irq(VIRTIO_IRQ_BASE + i as u8, t.irq_level());
        }
    }

    /// Block requests the devices issued and never saw complete, in slot and
    /// id order: to be issued again after a restore or on go-live.
    pub fn in_flight_block_requests(&self, mem: &GuestMemoryMmap) -> Vec<BlockRequest> {
        self.virtio
            .iter()
            .flat_map(|t| t.in_flight_requests(mem))
            .collect()
    }

    /// Channel 0's current program (to re-arm a live timer after restore).
    pub fn timer_program(&self) -> TimerProgram {
        self.pit.timer_program()
    }

    pub fn save(&self) -> DevicesState {
        DevicesState {
            pic: self.pic.clone(),
            pit: self.pit.clone(),
            uart: self.uart.save(),
            virtio: self.virtio.iter().map(|t| t.save()).collect(),
            unhandled: self.unhandled.clone(),
        }
    }

    /// Restores into devices built with the same virtio configuration.
    pub fn restore(&mut self, s: DevicesState) -> Result<(), DeviceRestoreError> {
        if s.virtio.len() != self.virtio.len() {
            return Err(DeviceRestoreError::VirtioCount {
                expected: self.virtio.len(),
                found: s.virtio.len(),
            });
        }
        let uart = Uart::restore(&s.uart).map_err(DeviceRestoreError::Serial)?;
        for (slot, (t, st)) in self.virtio.iter_mut().zip(s.virtio).enumerate() {
            t.restore(st)
                .map_err(|source| DeviceRestoreError::Virtio { slot, source })?;
        }
        self.pic = s.pic;
        self.pit = s.pit;
        self.uart = uart;
        self.unhandled = s.unhandled;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{OutputEvent, TimeSource};

    struct NoInputs;
    impl Inputs for NoInputs {
        fn events_at(&mut self, _: ExitIndex, _: &mut Vec<InputEvent>) {}
        fn time_read(&mut self, n: ExitIndex, _: TimeSource) -> u64 {
            n
        }
    }
    #[derive(Default)]
    struct Sink(Vec<OutputEvent>);
    impl Outputs for Sink {
        fn emit(&mut self, _: ExitIndex, e: OutputEvent) {
            self.0.push(e);
        }
    }

    #[test]
    fn rep_outsb_to_com1_writes_every_byte_to_the_same_port() {
        let mut d = Devices::new(vec![]);
        let mut sink = Sink::default();
        let r = d.pio_out(1, 0x3f8, 1, b"hello", &mut NoInputs, &mut sink);
        assert_eq!(r, None);
        assert_eq!(sink.0, vec![OutputEvent::Console(b"hello".to_vec())]);
    }

    #[test]
    fn debug_exit_port_returns_the_code_and_unknown_ports_read_all_ones() {
        let mut d = Devices::new(vec![]);
        let mut sink = Sink::default();
        assert_eq!(
            d.pio_out(1, DEBUG_EXIT_PORT, 1, &[42], &mut NoInputs, &mut sink),
            Some(42)
        );
        let mut buf = [0u8; 4];
        d.pio_in(2, 0x1234, 4, &mut buf, &mut NoInputs);
        assert_eq!(buf, [0xff; 4]);
        assert_eq!(d.unhandled.pio_reads, 4);
        let mut m = [0u8; 4];
        d.mmio_read(3, 0xd000_0000, &mut m);
        assert_eq!(m, [0xff; 4], "no virtio devices: the window is empty");
    }

    #[test]
    fn timer_tick_reaches_the_cpu_only_once_pit_and_pic_are_programmed() {
        let mut d = Devices::new(vec![]);
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 4096)]).unwrap();
        let mut sink = Sink::default();
        d.deliver(1, &mem, InputEvent::TimerTick, &mut sink);
        assert!(!d.pic.intr(), "PIT not programmed");
        for (p, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xfe),
        ] {
            d.pio_out(2, p, 1, &[v], &mut NoInputs, &mut sink);
        }
        for (p, v) in [(0x43, 0x34), (0x40, 0x9c), (0x40, 0x2e)] {
            d.pio_out(3, p, 1, &[v], &mut NoInputs, &mut sink);
        }
        d.deliver(4, &mem, InputEvent::TimerTick, &mut sink);
        assert!(d.pic.intr());
        assert_eq!(d.pic.acknowledge(), 0x20);
    }
}
