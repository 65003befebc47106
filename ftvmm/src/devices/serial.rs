//! COM1: a 16550A UART at 0x3f8 (IRQ 4) on top of `vm-superio`'s `Serial`.
//!
//! Transmitted bytes collect in an in-memory sink and leave through
//! [`crate::io::Outputs`] as `OutputEvent::Console` at the exit that wrote them;
//! received bytes (console input) arrive as `InputEvent::ConsoleIn`. The UART's
//! interrupt requests are latched into a flag that the VMM turns into an edge
//! on PIC input 4.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

/// Base port and IRQ of COM1.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;

/// Latches the UART's interrupt requests.
#[derive(Debug, Clone, Default)]
pub struct IrqLatch(Arc<AtomicBool>);

impl IrqLatch {
    /// Returns and clears the latched request.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

impl Trigger for IrqLatch {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Serializable mirror of `vm_superio::serial::SerialState` (which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

/// The COM1 device.
pub struct Uart {
    serial: Serial<IrqLatch, NoEvents, Vec<u8>>,
    irq: IrqLatch,
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart {
    pub fn new() -> Self {
        let irq = IrqLatch::default();
        Uart {
            serial: Serial::new(irq.clone(), Vec::new()),
            irq,
        }
    }

    /// Whether `port` is one of COM1's eight registers.
    pub fn owns(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + 8).contains(&port)
    }

    pub fn pio_read(&mut self, port: u16) -> u8 {
        self.serial.read((port - COM1_BASE) as u8)
    }

    pub fn pio_write(&mut self, port: u16, val: u8) {
        if let Err(e) = self.serial.write((port - COM1_BASE) as u8, val) {
            // The only failures are sink write errors; a Vec sink cannot fail.
            tracing::warn!("serial: write failed: {e:?}");
        }
    }

    /// Bytes transmitted since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(self.serial.writer_mut())
    }

    /// Console input; bytes beyond the 64-byte receive FIFO are dropped (and
    /// logged), as on a real UART without flow control.
    pub fn receive(&mut self, bytes: &[u8]) {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) if n < bytes.len() => {
                tracing::debug!(dropped = bytes.len() - n, "serial: receive FIFO full")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("serial: input dropped: {e:?}"),
        }
    }

    /// Whether the UART requested an interrupt since the last call.
    pub fn take_irq(&self) -> bool {
        self.irq.take()
    }

    pub fn save(&self) -> UartState {
        self.serial.state().into()
    }

    /// Rebuilds the UART from saved state (pending transmit output is empty).
    pub fn restore(s: &UartState) -> Result<Self, String> {
        let state = SerialState::from(s.clone());
        let irq = IrqLatch::default();
        let serial = Serial::from_state(&state, irq.clone(), NoEvents, Vec::new())
            .map_err(|e| format!("{e:?}"))?;
        Ok(Uart { serial, irq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmitted_bytes_reach_the_sink_and_raise_thre_interrupt() {
        let mut u = Uart::new();
        u.pio_write(COM1_BASE + 1, 0x02); // IER: THR empty
        assert!(
            u.take_irq(),
            "enabling THRE with an empty THR interrupts at once"
        );
        assert_eq!(u.pio_read(COM1_BASE + 2) & 0x0f, 0x02, "IIR says THR empty");
        for b in b"hi\n" {
            u.pio_write(COM1_BASE, *b);
        }
        assert_eq!(u.take_output(), b"hi\n");
        assert!(u.take_output().is_empty());
        assert!(u.take_irq());
        assert!(!u.take_irq(), "latch cleared");
    }

    #[test]
    fn received_bytes_are_readable_and_line_status_says_so() {
        let mut u = Uart::new();
        u.pio_write(COM1_BASE + 1, 0x01); // IER: data available
        u.receive(b"ab");
        assert!(u.take_irq());
        assert_eq!(u.pio_read(COM1_BASE + 5) & 1, 1);
        assert_eq!(u.pio_read(COM1_BASE), b'a');
        assert_eq!(u.pio_read(COM1_BASE), b'b');
        assert_eq!(u.pio_read(COM1_BASE + 5) & 1, 0);
    }

    #[test]
    fn state_round_trips() {
        let mut u = Uart::new();
        u.pio_write(COM1_BASE + 3, 0x83); // DLAB
        u.pio_write(COM1_BASE, 0x01);
        u.pio_write(COM1_BASE + 3, 0x03);
        u.pio_write(COM1_BASE + 7, 0x5a);
        u.receive(b"x");
        let s = u.save();
        let mut v = Uart::restore(&s).unwrap();
        assert_eq!(v.save(), s);
        assert_eq!(v.pio_read(COM1_BASE + 7), 0x5a);
        assert_eq!(v.pio_read(COM1_BASE), b'x');
    }

    #[test]
    fn hostile_register_access_is_harmless() {
        let mut u = Uart::new();
        for port in COM1_BASE..COM1_BASE + 8 {
            for v in [0u8, 0xff, 0x80, 0x7f] {
                u.pio_write(port, v);
                u.pio_read(port);
            }
        }
        u.receive(&[0u8; 1000]);
    }
}
