//! The userspace devices of a checkpoint-mode VM as one value that travels
//! in every epoch: COM1's registers and receive buffer and every virtio-mmio
//! transport (registers, queues, device state with in-flight block requests
//! resolved to guest buffers). KVM's own devices (LAPIC, IOAPIC, PIC, PIT)
//! are machine state (`checkpoint::state`), not here.
//!
//! NOTICE: [`DevicesState`] travels in every epoch; any change to it (or to
//! `virtio::state`) requires a bump of [`DEVICES_VERSION`].

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use crate::virtio::MmioTransportState;

/// Version of the [`DevicesState`] encoding.
pub const DEVICES_VERSION: u32 = 1;

/// COM1 (mirror of `vm_superio`'s `SerialState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnap {
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

impl From<SerialState> for SerialSnap {
    fn from(s: SerialState) -> Self {
        SerialSnap {
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

impl From<SerialSnap> for SerialState {
    fn from(s: SerialSnap) -> Self {
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

/// Every userspace device of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub version: u32,
    pub serial: SerialSnap,
    /// In slot order.
    pub virtio: Vec<MmioTransportState>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevStateError {
    #[error("device state version {found}, this build reads {DEVICES_VERSION}")]
    Version { found: u32 },
    #[error("device state cannot be encoded or decoded: {0}")]
    Codec(#[from] postcard::Error),
    #[error("device state has {found} virtio devices, this VM {expected}")]
    Slots { expected: usize, found: usize },
    #[error("virtio slot {slot}: {source}")]
    Virtio {
        slot: usize,
        source: crate::virtio::VirtioError,
    },
}

impl DevicesState {
    /// The postcard encoding (what an epoch carries as its device blob).
    pub fn encode(&self) -> Result<Vec<u8>, DevStateError> {
        Ok(postcard::to_allocvec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DevStateError> {
        let s: DevicesState = postcard::from_bytes(bytes)?;
        if s.version != DEVICES_VERSION {
            return Err(DevStateError::Version { found: s.version });
        }
        Ok(s)
    }
}
