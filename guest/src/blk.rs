//! A small virtio-blk driver on `virtio_drivers`' virtqueue that waits for completions with
//! `sti; hlt` instead of spinning on memory.
//!
//! virtio-drivers' own `VirtIOBlk::flush` (and its blocking read/write) busy-polls the used ring.
//! Under ftvmm that would be a loop without VM exits in which a completion held back by the
//! Output Rule could never be delivered deterministically, so every request here sleeps until an
//! interrupt and re-checks.

use crate::hal::GuestHal;
use crate::interrupts::wait_until;
use ftguest_kvlog::{LogWriter, SectorSource, SECTOR_SIZE};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

const QUEUE_SIZE: usize = 16;
const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
const STATUS_OK: u8 = 0;

bitflags::bitflags! {
    /// The virtio-blk feature bits this driver knows.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Features: u64 {
        const RO = 1 << 5;
        const FLUSH = 1 << 9;
        const VERSION_1 = 1 << 32;
    }
}

/// Errors of the block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// The virtqueue layer failed.
    Queue(virtio_drivers::Error),
    /// The device answered with a status other than OK.
    Status(u8),
    /// Write to a read-only device.
    ReadOnly,
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlkError::Queue(e) => write!(f, "virtqueue: {e}"),
            BlkError::Status(s) => write!(f, "device status {s}"),
            BlkError::ReadOnly => write!(f, "device is read-only"),
        }
    }
}

impl From<virtio_drivers::Error> for BlkError {
    fn from(e: virtio_drivers::Error) -> Self {
        BlkError::Queue(e)
    }
}

/// One virtio-blk disk.
pub struct Disk<T: Transport> {
    transport: T,
    queue: VirtQueue<GuestHal, QUEUE_SIZE>,
    capacity: u64,
    features: Features,
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

impl<T: Transport> Disk<T> {
    /// Negotiates features (VERSION_1, FLUSH, RO) and sets up the request queue.
    pub fn new(mut transport: T) -> Result<Self, BlkError> {
        let features = transport.begin_init(Features::RO | Features::FLUSH | Features::VERSION_1);
        let low: u32 = transport.read_config_space(0)?;
        let high: u32 = transport.read_config_space(4)?;
        let queue = VirtQueue::new(&mut transport, 0, false, false)?;
        transport.finish_init();
        Ok(Self {
            transport,
            queue,
            capacity: u64::from(low) | (u64::from(high) << 32),
            features,
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True when the device offered VIRTIO_BLK_F_FLUSH.
    pub fn has_flush(&self) -> bool {
        self.features.contains(Features::FLUSH)
    }

    /// True when the device is read-only.
    pub fn read_only(&self) -> bool {
        self.features.contains(Features::RO)
    }

    fn submit_and_wait<'a>(
        &mut self,
        inputs: &'a [&'a [u8]],
        outputs: &'a mut [&'a mut [u8]],
    ) -> Result<(), BlkError> {
        // SAFETY: the buffers stay borrowed (and untouched) until `pop_used` below returns: we
        // only leave this function after the request completed.
        let token = unsafe { self.queue.add(inputs, &mut *outputs)? };
        if self.queue.should_notify() {
            self.transport.notify(0);
        }
        let queue = &self.queue;
        wait_until(|| queue.can_pop());
        // SAFETY: same buffers as passed to `add` for this token.
        unsafe { self.queue.pop_used(token, inputs, outputs)? };
        Ok(())
    }

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        debug_assert!(!buf.is_empty() && buf.len().is_multiple_of(SECTOR_SIZE));
        let hdr = header(REQ_IN, sector);
        let mut status = [0xffu8];
        self.submit_and_wait(&[&hdr], &mut [buf, &mut status])?;
        check(status[0])
    }

    /// Writes whole sectors from `buf` starting at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        debug_assert!(!buf.is_empty() && buf.len().is_multiple_of(SECTOR_SIZE));
        if self.read_only() {
            return Err(BlkError::ReadOnly);
        }
        let hdr = header(REQ_OUT, sector);
        let mut status = [0xffu8];
        self.submit_and_wait(&[&hdr, buf], &mut [&mut status])?;
        check(status[0])
    }

    /// Flushes the device's write cache (no-op when the device does not offer FLUSH).
    pub fn flush(&mut self) -> Result<(), BlkError> {
        if !self.has_flush() {
            return Ok(());
        }
        let hdr = header(REQ_FLUSH, 0);
        let mut status = [0xffu8];
        self.submit_and_wait(&[&hdr], &mut [&mut status])?;
        check(status[0])
    }
}

fn check(status: u8) -> Result<(), BlkError> {
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(BlkError::Status(status))
    }
}

impl<T: Transport> SectorSource for Disk<T> {
    type Error = BlkError;

    fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.read(first, buf)
    }
}

impl<T: Transport> LogWriter for Disk<T> {
    type Error = BlkError;

    fn write_durable(&mut self, first: u64, bytes: &[u8]) -> Result<(), BlkError> {
        self.write(first, bytes)?;
        self.flush()
    }
}
