//! The virtio-mmio (version 2) register file of virtio 1.x §4.2.2 and the glue
//! between register accesses, the virtqueues and the blk/net devices.

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_NET};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::block::Block;
use super::chain::{self, DirtyPages};
use super::net::{Net, RX_QUEUE, TX_QUEUE};
use super::{DeviceStats, GuestMemoryMmap, QUEUE_MAX_SIZE};
use crate::io::{BlockRequest, ExitIndex, InputEvent, Outputs};

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("FTVM").
pub const VENDOR_ID: u32 = 0x4d56_5446;

/// What a device handler needs from the transport while it runs: where it is
/// (exit `n`), guest memory, the output door, and where to report effects.
pub(crate) struct Env<'a> {
    pub n: ExitIndex,
    pub mem: &'a GuestMemoryMmap,
    pub out: &'a mut dyn Outputs,
    pub dirty: &'a mut DirtyPages,
    /// A used buffer wants an interrupt.
    pub used_irq: bool,
    /// The device must enter DEVICE_NEEDS_RESET, with the reason.
    pub fault: Option<String>,
}

impl Env<'_> {
    pub fn fault(&mut self, reason: String) {
        if self.fault.is_none() {
            self.fault = Some(reason);
        }
    }

    pub fn add_used(&mut self, q: &mut Queue, head: u16, len: u32) {
        match chain::add_used(q, self.mem, head, len, self.dirty) {
            Ok(irq) => self.used_irq |= irq,
            Err(e) => self.fault(format!("used ring unwritable: {e}")),
        }
    }
}

pub(super) enum Device {
    Block(Block),
    Net(Net),
}

impl Device {
    fn id(&self) -> u32 {
        match self {
            Device::Block(_) => VIRTIO_ID_BLOCK,
            Device::Net(_) => VIRTIO_ID_NET,
        }
    }

    pub(super) fn kind_name(&self) -> &'static str {
        match self {
            Device::Block(_) => "block",
            Device::Net(_) => "net",
        }
    }

    fn stats(&self) -> &DeviceStats {
        match self {
            Device::Block(b) => &b.stats,
            Device::Net(n) => &n.stats,
        }
    }

    fn stats_mut(&mut self) -> &mut DeviceStats {
        match self {
            Device::Block(b) => &mut b.stats,
            Device::Net(n) => &mut n.stats,
        }
    }
}

/// One virtio-mmio device window (4 KiB) wrapping a block or network device.
pub struct MmioTransport {
    pub(super) dev: u8,
    pub(super) device: Device,
    pub(super) device_features: u64,
    pub(super) queues: Vec<Queue>,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) driver_features: u64,
    pub(super) queue_sel: u32,
    pub(super) status: u32,
    pub(super) interrupt_status: u32,
    pub(super) config_generation: u32,
    pub(super) dirty: DirtyPages,
}

/// A virtio-blk device (DeviceID 2) of `capacity_sectors` 512-byte sectors;
/// `dev` is its index in `BlockRequest::dev` / `InputEvent::BlockDone::dev`.
pub fn new_block(dev: u8, capacity_sectors: u64) -> MmioTransport {
    MmioTransport::new(dev, Device::Block(Block::new(dev, capacity_sectors)), 1)
}

/// A virtio-net device (DeviceID 1) with MAC `mac`; `dev` is its index in
/// `OutputEvent::Frame::dev` / `InputEvent::Frame::dev`.
pub fn new_net(dev: u8, mac: [u8; 6]) -> MmioTransport {
    MmioTransport::new(dev, Device::Net(Net::new(dev, mac)), 2)
}

fn new_queue() -> Queue {
    // QUEUE_MAX_SIZE is a non-zero power of two <= 32768, which `Queue::new`
    // accepts; a failure would be a bug in this constant.
    Queue::new(QUEUE_MAX_SIZE).expect("QUEUE_MAX_SIZE is a valid virtqueue size")
}

impl MmioTransport {
    fn new(dev: u8, device: Device, nqueues: usize) -> Self {
        let device_features = (1u64 << VIRTIO_F_VERSION_1)
            | match &device {
                Device::Block(_) => Block::features(),
                Device::Net(_) => Net::features(),
            };
        MmioTransport {
            dev,
            device,
            device_features,
            queues: (0..nqueues).map(|_| new_queue()).collect(),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            dirty: DirtyPages::default(),
        }
    }

    /// The device index given at construction.
    pub fn dev(&self) -> u8 {
        self.dev
    }

    /// virtio DeviceID (2 = blk, 1 = net).
    pub fn device_id(&self) -> u32 {
        self.device.id()
    }

    /// The device status register (bit 0x40 = DEVICE_NEEDS_RESET).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Interrupt line level: InterruptStatus != 0.
    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    pub fn stats(&self) -> &DeviceStats {
        self.device.stats()
    }

    /// Ids of block requests emitted and not yet completed (empty for net).
    pub fn pending_block_ids(&self) -> Vec<u64> {
        match &self.device {
            Device::Block(b) => b.pending_ids().collect(),
            Device::Net(_) => Vec::new(),
        }
    }

    /// The backend requests of every block request still in flight, in id
    /// order (empty for net). After restoring a snapshot into a fresh VMM, or
    /// when a Secondary goes live, these must be issued again (same ids):
    /// their completions never arrived.
    pub fn in_flight_requests(&self, mem: &GuestMemoryMmap) -> Vec<BlockRequest> {
        match &self.device {
            Device::Block(b) => b.in_flight(mem),
            Device::Net(_) => Vec::new(),
        }
    }

    /// Received frames waiting for an RX buffer (0 for blk).
    pub fn rx_pending_frames(&self) -> usize {
        match &self.device {
            Device::Block(_) => 0,
            Device::Net(n) => n.rx_pending_len(),
        }
    }

    /// Guest page frame numbers (GPA / 4096) this device wrote since the last
    /// call. KVM's dirty log does not see writes made by the VMM process, so
    /// live migration must merge these in.
    pub fn take_dirty_pages(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dirty.0).into_iter().collect()
    }

    /// A guest read of `data.len()` bytes at `offset` within the 4 KiB window.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let cfg = match &self.device {
                Device::Block(b) => b.config(),
                Device::Net(n) => n.config(),
            };
            let base = offset - u64::from(VIRTIO_MMIO_CONFIG);
            for (i, byte) in data.iter_mut().enumerate() {
                let idx = base.saturating_add(i as u64);
                *byte = usize::try_from(idx)
                    .ok()
                    .and_then(|i| cfg.get(i).copied())
                    .unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn!(
                dev = self.dev,
                offset,
                len = data.len(),
                "virtio-mmio: unaligned register read"
            );
            return;
        }
        let v = self.read_reg(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_reg(&self, reg: u32) -> u32 {
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.id(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_NUM => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.selected_queue().map_or(0, |q| q.desc_table() as u32)
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.desc_table() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.selected_queue().map_or(0, |q| q.avail_ring() as u32)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.avail_ring() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.selected_queue().map_or(0, |q| q.used_ring() as u32),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.used_ring() >> 32) as u32),
            // No shared memory regions: length reads as all ones (§4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    dev = self.dev,
                    reg, "virtio-mmio: read of unknown/write-only register"
                );
                0
            }
        }
    }

    /// A guest write of `data` at `offset` within the window, at exit `n`.
    pub fn mmio_write(
        &mut self,
        n: ExitIndex,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &[u8],
        out: &mut dyn Outputs,
    ) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // Neither device has writable configuration fields.
            debug!(
                dev = self.dev,
                offset, "virtio-mmio: config space write ignored"
            );
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                dev = self.dev,
                offset,
                len = data.len(),
                "virtio-mmio: register write not 32-bit, ignored"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn!(
                dev = self.dev,
                offset, "virtio-mmio: unaligned register write ignored"
            );
            return;
        }
        let v = u32::from_le_bytes(bytes);
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => self.config_queue("QueueNum", |q| {
                if v == 0 {
                    // Drivers tearing a queue down (virtio-drivers' queue_unset)
                    // write 0: the queue goes back to its reset state.
                    q.reset();
                    return Ok(());
                }
                let size = u16::try_from(v).map_err(|_| format!("queue size {v} too large"))?;
                q.try_set_size(size).map_err(|_| {
                    format!("queue size {v} invalid (power of two <= {QUEUE_MAX_SIZE})")
                })
            }),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(mem, v),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(n, mem, v, out),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => self.write_status(n, mem, v, out),
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                let high = offset as u32 == VIRTIO_MMIO_QUEUE_DESC_HIGH;
                self.config_queue("QueueDesc", |q| {
                    let a = splice(q.desc_table(), v, high);
                    q.try_set_desc_table_address(GuestAddress(a))
                        .map_err(|e| format!("descriptor table {a:#x}: {e}"))
                })
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                let high = offset as u32 == VIRTIO_MMIO_QUEUE_AVAIL_HIGH;
                self.config_queue("QueueDriver", |q| {
                    let a = splice(q.avail_ring(), v, high);
                    q.try_set_avail_ring_address(GuestAddress(a))
                        .map_err(|e| format!("available ring {a:#x}: {e}"))
                })
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let high = offset as u32 == VIRTIO_MMIO_QUEUE_USED_HIGH;
                self.config_queue("QueueDevice", |q| {
                    let a = splice(q.used_ring(), v, high);
                    q.try_set_used_ring_address(GuestAddress(a))
                        .map_err(|e| format!("used ring {a:#x}: {e}"))
                })
            }
            VIRTIO_MMIO_SHM_SEL => {}
            reg => warn!(
                dev = self.dev,
                reg,
                value = v,
                "virtio-mmio: write to unknown/read-only register ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            warn!(
                dev = self.dev,
                "virtio-mmio: DriverFeatures written after FEATURES_OK, ignored"
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            sel => warn!(
                dev = self.dev,
                sel, "virtio-mmio: DriverFeatures with invalid selector"
            ),
        }
    }

    /// Apply a configuration change to the selected queue. Changing a queue
    /// that is live is ignored; an invalid value is a driver bug → NEEDS_RESET.
    fn config_queue(&mut self, what: &str, f: impl FnOnce(&mut Queue) -> Result<(), String>) {
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            warn!(
                dev = self.dev,
                sel, what, "virtio-mmio: queue config for a queue that does not exist, ignored"
            );
            return;
        };
        if q.ready() {
            warn!(
                dev = self.dev,
                sel, what, "virtio-mmio: queue config while queue ready, ignored"
            );
            return;
        }
        let result = f(q);
        if let Err(reason) = result {
            self.set_needs_reset(format!("queue {sel} {what}: {reason}"));
        }
    }

    fn write_queue_ready(&mut self, mem: &GuestMemoryMmap, v: u32) {
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            warn!(
                dev = self.dev,
                sel, "virtio-mmio: QueueReady for a queue that does not exist, ignored"
            );
            return;
        };
        if v == 0 {
            q.set_ready(false);
            return;
        }
        q.set_ready(true);
        // `is_valid` checks that the rings, at this size, lie in guest memory.
        // virtio-queue takes an available ring at GPA 0 for "not configured".
        let problem = if !q.is_valid(mem) {
            Some("rings outside guest memory")
        } else if q.avail_ring() == 0 {
            Some("available ring at GPA 0 is not supported")
        } else {
            None
        };
        if let Some(what) = problem {
            q.set_ready(false);
            let reason = format!(
                "queue {sel} enabled with {what} (desc {:#x}, avail {:#x}, used {:#x}, size {})",
                q.desc_table(),
                q.avail_ring(),
                q.used_ring(),
                q.size()
            );
            self.set_needs_reset(reason);
        }
    }

    fn write_status(&mut self, n: ExitIndex, mem: &GuestMemoryMmap, v: u32, out: &mut dyn Outputs) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = (v & !VIRTIO_CONFIG_S_NEEDS_RESET) | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && old & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.device_features;
            let v1 = self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if unknown != 0 || !v1 {
                warn!(
                    dev = self.dev,
                    driver_features = self.driver_features,
                    "virtio-mmio: feature negotiation refused (unknown features or no VERSION_1)"
                );
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        self.status = new;
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && old & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            if new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                self.set_needs_reset("DRIVER_OK without FEATURES_OK".into());
                return;
            }
            // Normally nothing is queued here (frames are dropped while the
            // driver is down), but hand over anything that is.
            let mut effects = None;
            if let Device::Net(net) = &mut self.device {
                if self.queues[RX_QUEUE].ready() && net.rx_pending_len() > 0 {
                    let mut env = Env::new(n, mem, out, &mut self.dirty);
                    net.fill_rx(&mut self.queues[RX_QUEUE], &mut env);
                    effects = Some((env.used_irq, env.fault));
                }
            }
            if let Some((irq, fault)) = effects {
                self.apply(irq, fault);
            }
        }
    }

    /// Device reset (Status written with 0).
    fn reset(&mut self) {
        debug!(dev = self.dev, "virtio-mmio: device reset");
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        match &mut self.device {
            Device::Block(b) => b.reset(),
            Device::Net(n) => n.reset(),
        }
    }

    fn set_needs_reset(&mut self, reason: String) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            debug!(
                dev = self.dev,
                reason, "virtio-mmio: further fault while needing reset"
            );
            return;
        }
        warn!(
            dev = self.dev,
            kind = self.device.kind_name(),
            reason,
            "virtio-mmio: device needs reset"
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
        self.device.stats_mut().needs_reset += 1;
    }

    fn apply(&mut self, used_irq: bool, fault: Option<String>) {
        if used_irq {
            self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
        }
        if let Some(reason) = fault {
            self.set_needs_reset(reason);
        }
    }

    fn notify(&mut self, n: ExitIndex, mem: &GuestMemoryMmap, qidx: u32, out: &mut dyn Outputs) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            debug!(
                dev = self.dev,
                qidx, "virtio-mmio: notify ignored, device needs reset"
            );
            return;
        }
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            return self.set_needs_reset(format!("notify of queue {qidx} before DRIVER_OK"));
        }
        let Some(q) = self.queues.get_mut(qidx as usize) else {
            return self.set_needs_reset(format!("notify of nonexistent queue {qidx}"));
        };
        if !q.ready() {
            return self.set_needs_reset(format!("notify of queue {qidx} that is not ready"));
        }
        let mut env = Env::new(n, mem, out, &mut self.dirty);
        match &mut self.device {
            Device::Block(b) => b.process_queue(q, &mut env),
            Device::Net(net) if qidx as usize == TX_QUEUE => net.process_tx(q, &mut env),
            Device::Net(net) => net.fill_rx(q, &mut env),
        }
        let (irq, fault) = (env.used_irq, env.fault);
        self.apply(irq, fault);
    }

    /// Deliver an asynchronous input for this device (`InputEvent::Frame` for a
    /// net device, `InputEvent::BlockDone` for a block device) at exit `n`.
    pub fn deliver(
        &mut self,
        n: ExitIndex,
        mem: &GuestMemoryMmap,
        ev: InputEvent,
        out: &mut dyn Outputs,
    ) {
        let ready = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0;
        let mut env = Env::new(n, mem, out, &mut self.dirty);
        match (&mut self.device, ev) {
            (
                Device::Block(b),
                InputEvent::BlockDone {
                    dev,
                    id,
                    status,
                    data,
                },
            ) if dev == self.dev => {
                b.complete(id, status, &data, &mut self.queues[0], &mut env);
            }
            (Device::Net(net), InputEvent::Frame { dev, data }) if dev == self.dev => {
                let rxq = &mut self.queues[RX_QUEUE];
                let ready = ready && rxq.ready();
                net.receive(data, ready, rxq, &mut env);
            }
            (_, ev) => {
                warn!(dev = self.dev, event = ?std::mem::discriminant(&ev), "virtio-mmio: event not for this device, ignored");
            }
        }
        let (irq, fault) = (env.used_irq, env.fault);
        self.apply(irq, fault);
    }
}

impl<'a> Env<'a> {
    fn new(
        n: ExitIndex,
        mem: &'a GuestMemoryMmap,
        out: &'a mut dyn Outputs,
        dirty: &'a mut DirtyPages,
    ) -> Self {
        Env {
            n,
            mem,
            out,
            dirty,
            used_irq: false,
            fault: None,
        }
    }
}

/// Replace the low or high 32 bits of `cur` with `v`.
fn splice(cur: u64, v: u32, high: bool) -> u64 {
    if high {
        (cur & 0xffff_ffff) | (u64::from(v) << 32)
    } else {
        (cur & !0xffff_ffff) | u64::from(v)
    }
}
