//! Save/restore of a [`MmioTransport`]: registers, virtqueues and device state
//! into the serde [`MmioTransportState`] and back, with validation so a
//! corrupt or mismatched snapshot is refused without changing the device.

use super::mmio::{Device, MmioTransport};
use super::state::{DeviceState, MmioTransportState, QueueSnapshot, SNAPSHOT_VERSION};
use super::{VirtioError, QUEUE_MAX_SIZE};
use virtio_queue::QueueT;

impl MmioTransport {
    /// Snapshot of registers, queues and device state.
    pub fn save(&self) -> MmioTransportState {
        MmioTransportState {
            version: SNAPSHOT_VERSION,
            dev: self.dev,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(QueueSnapshot::of).collect(),
            device: match &self.device {
                Device::Block(b) => DeviceState::Block(b.save()),
                Device::Net(n) => DeviceState::Net(n.save()),
            },
        }
    }

    /// Load a snapshot taken with [`MmioTransport::save`] of a transport built
    /// the same way (same kind, `dev`, disk capacity). On error nothing changes.
    pub fn restore(&mut self, s: MmioTransportState) -> Result<(), VirtioError> {
        if s.version != SNAPSHOT_VERSION {
            return Err(VirtioError::SnapshotVersion {
                found: s.version,
                expected: SNAPSHOT_VERSION,
            });
        }
        if s.dev != self.dev {
            return Err(VirtioError::DevMismatch {
                expected: self.dev,
                found: s.dev,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(VirtioError::QueueCount {
                expected: self.queues.len(),
                found: s.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (index, qs) in s.queues.iter().enumerate() {
            if qs.max_size != QUEUE_MAX_SIZE {
                return Err(VirtioError::InvalidQueue {
                    index,
                    reason: format!("max size {} (device offers {QUEUE_MAX_SIZE})", qs.max_size),
                });
            }
            let q = qs.to_queue().map_err(|e| VirtioError::InvalidQueue {
                index,
                reason: e.to_string(),
            })?;
            queues.push(q);
        }
        let expected = self.device.kind_name();
        match (&mut self.device, s.device) {
            (Device::Block(b), DeviceState::Block(bs)) => b
                .restore(bs, queues[0].size())
                .map_err(VirtioError::Inconsistent)?,
            (Device::Net(n), DeviceState::Net(ns)) => {
                n.restore(ns).map_err(VirtioError::Inconsistent)?
            }
            (_, other) => {
                return Err(VirtioError::KindMismatch {
                    expected,
                    found: other.kind_name(),
                })
            }
        }
        self.queues = queues;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.status = s.status;
        self.interrupt_status = s.interrupt_status;
        self.config_generation = s.config_generation;
        Ok(())
    }
}
