//! smoltcp `Device` over virtio-net (`VirtIONetRaw`), fully non-blocking.
//!
//! Every receive descriptor holds its own heap buffer; a received buffer is handed to smoltcp and
//! a fresh one is posted in its place. Transmit buffers stay owned by the driver until the device
//! reports them used; `transmit()` refuses when the queue has no room.

use crate::hal::GuestHal;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::Transport;

/// Virtqueue size used for both directions.
pub const QUEUE_SIZE: usize = 16;
const RX_BUF_LEN: usize = 2048;
/// Largest Ethernet frame handed to the device (without the virtio-net header).
const MTU: usize = 1514;

/// The NIC as a smoltcp device.
pub struct NetDevice<T: Transport> {
    raw: VirtIONetRaw<GuestHal, T, QUEUE_SIZE>,
    /// Receive buffers owned by the device, indexed by descriptor token.
    rx: Vec<Option<Box<[u8]>>>,
    /// Transmit buffers owned by the device, indexed by descriptor token.
    tx: Vec<Option<Box<[u8]>>>,
    /// Frames dropped because the device queue was full or returned an error.
    pub dropped: u64,
}

impl<T: Transport> NetDevice<T> {
    /// Sets the device up and fills the receive queue.
    pub fn new(transport: T) -> Result<Self, virtio_drivers::Error> {
        let raw = VirtIONetRaw::new(transport)?;
        let mut dev = Self {
            raw,
            rx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx: (0..QUEUE_SIZE).map(|_| None).collect(),
            dropped: 0,
        };
        for _ in 0..QUEUE_SIZE {
            dev.post_rx_buffer()?;
        }
        Ok(dev)
    }

    /// The MAC address the device reports.
    pub fn mac(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    fn post_rx_buffer(&mut self) -> Result<(), virtio_drivers::Error> {
        let mut buf = vec![0u8; RX_BUF_LEN].into_boxed_slice();
        // SAFETY: the buffer is moved into `self.rx` right away and not touched until the
        // device returns it through `poll_receive`/`receive_complete`; moving a Box does not
        // move its heap allocation.
        let token = unsafe { self.raw.receive_begin(&mut buf)? };
        self.rx[usize::from(token)] = Some(buf);
        Ok(())
    }

    /// Frees transmit buffers the device has finished with.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(buf) = self.tx.get_mut(usize::from(token)).and_then(Option::take) else {
                // Unknown token: nothing we can pass back; stop rather than loop forever.
                self.dropped += 1;
                return;
            };
            // SAFETY: `buf` is the buffer passed to `transmit_begin` for this token.
            if unsafe { self.raw.transmit_complete(token, &buf) }.is_err() {
                self.dropped += 1;
            }
        }
    }

    fn send_frame(&mut self, frame: Box<[u8]>) {
        // SAFETY: on success the buffer is stored in `self.tx` until `reclaim_tx` completes it.
        match unsafe { self.raw.transmit_begin(&frame) } {
            Ok(token) => self.tx[usize::from(token)] = Some(frame),
            Err(_) => self.dropped += 1,
        }
    }
}

/// A received frame (owns its buffer).
pub struct NetRxToken {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
}

impl RxToken for NetRxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.buf[self.start..self.start + self.len])
    }
}

/// Permission to send one frame.
pub struct NetTxToken<'a, T: Transport> {
    dev: &'a mut NetDevice<T>,
}

impl<T: Transport> TxToken for NetTxToken<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // The virtio-net header (10 or 12 bytes, depending on the negotiated features) is
        // written in place in front of the frame.
        let mut hdr_buf = [0u8; 16];
        let hdr = self.dev.raw.fill_buffer_header(&mut hdr_buf).unwrap_or(0);
        let mut frame = vec![0u8; hdr + len].into_boxed_slice();
        frame[..hdr].copy_from_slice(&hdr_buf[..hdr]);
        let result = f(&mut frame[hdr..]);
        self.dev.send_frame(frame);
        result
    }
}

impl<T: Transport> Device for NetDevice<T> {
    type RxToken<'a>
        = NetRxToken
    where
        Self: 'a;
    type TxToken<'a>
        = NetTxToken<'a, T>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.reclaim_tx();
        let token = self.raw.poll_receive()?;
        let mut buf = self.rx.get_mut(usize::from(token)).and_then(Option::take)?;
        // SAFETY: `buf` is the buffer passed to `receive_begin` for this token.
        let res = unsafe { self.raw.receive_complete(token, &mut buf) };
        if self.post_rx_buffer().is_err() {
            self.dropped += 1;
        }
        match res {
            Ok((start, len)) if start + len <= buf.len() => {
                Some((NetRxToken { buf, start, len }, NetTxToken { dev: self }))
            }
            _ => {
                self.dropped += 1;
                None
            }
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        self.reclaim_tx();
        self.raw.can_send().then_some(NetTxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(QUEUE_SIZE / 2);
        caps
    }
}
