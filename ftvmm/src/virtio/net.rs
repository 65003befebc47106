//! virtio-net frame handling (virtio 1.x §5.1) without offloads or mergeable
//! buffers: TX chains become `OutputEvent::Frame`s, received frames fill RX
//! chains, or wait in a bounded FIFO until the driver posts buffers.
//!
//! With VIRTIO_F_VERSION_1 the `virtio_net_hdr` is always 12 bytes (it includes
//! `num_buffers`, which is 1 on every frame we deliver).

use std::collections::VecDeque;

use tracing::{debug, warn};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::Queue;

use super::chain;
use super::mmio::Env;
use super::state::NetDeviceState;
use super::DeviceStats;
use crate::io::OutputEvent;

/// Length of `struct virtio_net_hdr_v1` (VERSION_1 negotiated).
pub const NET_HDR_LEN: usize = 12;
/// Frames the device keeps for the guest while it has no RX buffer.
pub const RX_FIFO_LIMIT: usize = 256;
/// Largest frame (without header) either direction; larger ones are dropped.
pub const MAX_FRAME_LEN: usize = 65535;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

pub(crate) struct Net {
    dev: u8,
    mac: [u8; 6],
    rx_pending: VecDeque<Vec<u8>>,
    pub stats: DeviceStats,
}

impl Net {
    pub fn new(dev: u8, mac: [u8; 6]) -> Self {
        Net {
            dev,
            mac,
            rx_pending: VecDeque::new(),
            stats: DeviceStats::default(),
        }
    }

    pub fn features() -> u64 {
        (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    }

    /// `struct virtio_net_config`: mac, status (link always up).
    pub fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }

    pub fn reset(&mut self) {
        self.rx_pending.clear();
    }

    pub fn rx_pending_len(&self) -> usize {
        self.rx_pending.len()
    }

    /// TX QueueNotify: transmit every available chain.
    pub fn process_tx(&mut self, q: &mut Queue, env: &mut Env<'_>) {
        loop {
            let c = match chain::pop_chain(q, env.mem) {
                Ok(None) => return,
                Ok(Some(c)) => c,
                Err(e) => return env.fault(format!("net TX queue: {e}")),
            };
            self.stats.requests += 1;
            let readable = c.readable_len() as usize;
            let drop_reason = if c.writable().next().is_some() {
                Some("TX chain has device-writable buffers")
            } else if readable < NET_HDR_LEN {
                Some("TX chain shorter than virtio_net_hdr")
            } else if readable == NET_HDR_LEN {
                Some("TX chain carries an empty frame")
            } else if readable - NET_HDR_LEN > MAX_FRAME_LEN {
                Some("TX frame too large")
            } else {
                None
            };
            match drop_reason {
                Some(why) => {
                    warn!(
                        dev = self.dev,
                        head = c.head,
                        why,
                        "virtio-net: TX frame dropped"
                    );
                    self.stats.rejected += 1;
                }
                None => {
                    let len = readable - NET_HDR_LEN;
                    match chain::gather(env.mem, c.readable(), NET_HDR_LEN as u64, len) {
                        Ok(data) => env.out.emit(
                            env.n,
                            OutputEvent::Frame {
                                dev: self.dev,
                                data,
                            },
                        ),
                        Err(e) => return env.fault(format!("net TX buffer unreadable: {e}")),
                    }
                }
            }
            env.add_used(q, c.head, 0);
            if env.fault.is_some() {
                return;
            }
        }
    }

    /// A frame arrived from the network. `ready`: the driver is up and the RX
    /// queue usable; otherwise the frame is dropped (a NIC that is down).
    pub fn receive(&mut self, frame: Vec<u8>, ready: bool, q: &mut Queue, env: &mut Env<'_>) {
        if !ready {
            self.stats.rx_not_ready += 1;
            debug!(
                dev = self.dev,
                "virtio-net: frame dropped, driver not ready"
            );
            return;
        }
        if frame.len() > MAX_FRAME_LEN {
            self.stats.rx_too_big += 1;
            warn!(
                dev = self.dev,
                len = frame.len(),
                "virtio-net: RX frame too large, dropped"
            );
            return;
        }
        if self.rx_pending.len() >= RX_FIFO_LIMIT {
            self.rx_pending.pop_front();
            self.stats.rx_overflow += 1;
        }
        self.rx_pending.push_back(frame);
        self.fill_rx(q, env);
    }

    /// Move pending frames into available RX chains, in order.
    pub fn fill_rx(&mut self, q: &mut Queue, env: &mut Env<'_>) {
        while let Some(frame) = self.rx_pending.front() {
            let c = match chain::pop_chain(q, env.mem) {
                Ok(None) => return,
                Ok(Some(c)) => c,
                Err(e) => return env.fault(format!("net RX queue: {e}")),
            };
            if c.readable().next().is_some() {
                return env.fault(format!(
                    "RX chain at head {} has device-readable buffers",
                    c.head
                ));
            }
            let need = NET_HDR_LEN + frame.len();
            if c.writable_len() < need as u64 {
                warn!(
                    dev = self.dev,
                    len = frame.len(),
                    room = c.writable_len(),
                    "virtio-net: RX frame larger than the buffer, dropped"
                );
                self.stats.rx_too_big += 1;
                self.rx_pending.pop_front();
                chain::unpop_chain(q);
                continue;
            }
            let mut bytes = Vec::with_capacity(need);
            bytes.extend_from_slice(&[0u8; NET_HDR_LEN]);
            // num_buffers = 1 (last field of virtio_net_hdr_v1).
            bytes[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            bytes.extend_from_slice(frame);
            if let Err(e) = chain::scatter(env.mem, c.writable(), &bytes, env.dirty) {
                return env.fault(format!("net RX buffer unwritable: {e}"));
            }
            self.rx_pending.pop_front();
            self.stats.completed += 1;
            env.add_used(q, c.head, need as u32);
            if env.fault.is_some() {
                return;
            }
        }
    }

    pub fn save(&self) -> NetDeviceState {
        NetDeviceState {
            mac: self.mac,
            rx_pending: self.rx_pending.iter().cloned().collect(),
            stats: self.stats.clone(),
        }
    }

    pub fn restore(&mut self, s: NetDeviceState) -> Result<(), String> {
        if s.rx_pending.len() > RX_FIFO_LIMIT {
            return Err(format!(
                "{} pending RX frames exceed the limit",
                s.rx_pending.len()
            ));
        }
        if s.rx_pending.iter().any(|f| f.len() > MAX_FRAME_LEN) {
            return Err("pending RX frame exceeds the size limit".into());
        }
        self.mac = s.mac;
        self.rx_pending = s.rx_pending.into();
        self.stats = s.stats;
        Ok(())
    }
}
