//! Serializable snapshot of a virtio-mmio transport and its device.
//!
//! `virtio-queue`'s `QueueState` has no serde derive, so [`QueueSnapshot`]
//! mirrors it field by field. Pending block requests are stored with the guest
//! buffers already resolved, so a restored device completes them without
//! re-reading the (guest-owned) descriptor table.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::DeviceStats;

/// Version of [`MmioTransportState`]; bump on any incompatible change.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Mirror of `virtio_queue::QueueState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        QueueSnapshot {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueSnapshot {
    pub fn of(q: &Queue) -> Self {
        q.state().into()
    }

    /// Rebuild a queue; `virtio-queue` validates sizes and alignments.
    pub fn to_queue(self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState::from(self))
    }
}

/// What a pending block request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingBlockKind {
    Read,
    Write,
    Flush,
}

/// A block request handed to the backend and not yet completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBlockState {
    pub id: u64,
    /// Head descriptor index to put in the used ring.
    pub head: u16,
    pub kind: PendingBlockKind,
    /// First sector (reads and writes).
    pub sector: u64,
    /// Guest address of the status byte.
    pub status_addr: u64,
    /// Data buffers as (guest address, length): where a read's data goes, or
    /// where a write's data came from (to re-issue it after restore/go-live).
    pub data_segs: Vec<(u64, u32)>,
    /// Data bytes of the request.
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDeviceState {
    pub capacity_sectors: u64,
    /// Next request id; never reused, also not across device resets.
    pub next_id: u64,
    pub pending: Vec<PendingBlockState>,
    pub stats: DeviceStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDeviceState {
    pub mac: [u8; 6],
    /// Received frames waiting for an RX buffer, oldest first.
    pub rx_pending: Vec<Vec<u8>>,
    pub stats: DeviceStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockDeviceState),
    Net(NetDeviceState),
}

impl DeviceState {
    pub fn kind_name(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "block",
            DeviceState::Net(_) => "net",
        }
    }
}

/// Complete state of one virtio-mmio device (register file, queues, device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub version: u32,
    pub dev: u8,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueSnapshot>,
    pub device: DeviceState,
}
