//! virtio-mmio devices (blk, net) as deterministic state machines.
//!
//! One [`MmioTransport`] is one virtio-mmio (version 2, "modern") device window
//! wrapping either a block device ([`new_block`]) or a network device
//! ([`new_net`]). The vCPU loop forwards MMIO exits to [`MmioTransport::mmio_read`]
//! / [`MmioTransport::mmio_write`] and asynchronous completions (received frames,
//! block I/O results) to [`MmioTransport::deliver`]. The devices never touch a
//! backend: everything they want done leaves through [`crate::io::Outputs`] and
//! everything they learn arrives as an [`crate::io::InputEvent`], so the same
//! sequence of calls yields the same guest-visible effects (docs/architecture.md §4).
//!
//! Hostile guest input (descriptors outside guest memory, chain loops, bad queue
//! configuration, protocol violations) never panics: a malformed request gets an
//! error status where the protocol has one, otherwise the device enters
//! `DEVICE_NEEDS_RESET` (status bit 0x40 plus a configuration-change interrupt)
//! and logs a `tracing::warn!` line.

mod block;
mod chain;
mod mmio;
mod net;
mod persist;
mod state;

#[cfg(test)]
mod tests;

pub use block::{block_id, BLOCK_ID, MAX_REQUEST_BYTES, SECTOR_SIZE};
pub use mmio::{new_block, new_net, MmioTransport};
pub use net::{MAX_FRAME_LEN, NET_HDR_LEN, RX_FIFO_LIMIT, RX_QUEUE, TX_QUEUE};
pub use state::{
    BlockDeviceState, DeviceState, MmioTransportState, NetDeviceState, PendingBlockKind,
    PendingBlockState, QueueSnapshot, SNAPSHOT_VERSION,
};

/// Guest memory as the devices see it. The VMM owns the mapping; the devices
/// only read and write it through `vm-memory`'s bounds-checked accessors.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Largest queue size the devices offer (QueueNumMax).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Size of the guest page unit used by [`MmioTransport::take_dirty_pages`].
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// Errors of the virtio layer that reach the VMM (guest misbehaviour never
/// does: it is absorbed as an error status or `DEVICE_NEEDS_RESET`).
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("snapshot version {found} is not supported (this build reads {expected})")]
    SnapshotVersion { found: u32, expected: u32 },
    #[error("snapshot is of a {found} device but this transport wraps a {expected} device")]
    KindMismatch {
        expected: &'static str,
        found: &'static str,
    },
    #[error("snapshot is of device index {found} but this transport is device {expected}")]
    DevMismatch { expected: u8, found: u8 },
    #[error("snapshot has {found} queues, the device has {expected}")]
    QueueCount { expected: usize, found: usize },
    #[error("snapshot queue {index} is invalid: {reason}")]
    InvalidQueue { index: usize, reason: String },
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// Counters a device keeps about what it did and what it refused. They are part
/// of the device state (deterministic), so Primary and Secondary agree on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStats {
    /// Requests (blk) or frames (net TX) taken from the guest.
    pub requests: u64,
    /// Requests answered with IOERR/UNSUPP by the device itself (malformed).
    pub rejected: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub needs_reset: u64,
    /// Block completions / RX frames written to the guest.
    pub completed: u64,
    /// Net: frames dropped because no RX buffer was big enough.
    pub rx_too_big: u64,
    /// Net: frames dropped because the pending RX FIFO overflowed (oldest dropped).
    pub rx_overflow: u64,
    /// Net: frames dropped because the driver was not ready (no DRIVER_OK).
    pub rx_not_ready: u64,
    /// Completions that matched no pending request (e.g. after a device reset).
    pub stale_completions: u64,
}
