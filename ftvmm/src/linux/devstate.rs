//! The userspace devices of a checkpoint-mode VM as one value that travels
//! in every epoch: COM1's registers and receive buffer and every virtio-mmio
//! transport (registers, queues, device state with in-flight block requests
//! resolved to guest buffers). KVM's own devices (LAPIC, IOAPIC, PIC, PIT)
//! are machine state (`checkpoint::state`), not here.
//!
//! NOTICE: [`DevicesState`] travels in every epoch; any change to it (or to
//! `virtio::state`) requires a bump of [`DEVICES_VERSION`].

use crate::devices::serial::UartState;
use crate::virtio::MmioTransportState;
use serde::{Deserialize, Serialize};

/// Version of the [`DevicesState`] encoding.
pub const DEVICES_VERSION: u32 = 1;

/// Every userspace device of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub version: u32,
    /// COM1 (the lockstep UART's serde mirror of `vm_superio`'s state).
    pub serial: UartState,
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
