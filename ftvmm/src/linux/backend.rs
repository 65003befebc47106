//! The narrow door between a checkpoint-mode VM's virtio devices and the
//! world: [`LinuxBackend`] takes block requests and transmitted frames; what
//! comes back (block completions, received frames) is handed to a
//! [`Deliver`] callback as [`InputEvent`]s. A checkpoint epoch gate can sit in
//! between later (hold frames until their epoch is acknowledged, complete
//! writes at once and write them after the ack) without the devices knowing.
//!
//! Rule: a backend never calls `Deliver` from inside `submit_block` or
//! `send_frame` (those run with the device bus locked, and `Deliver` locks
//! it): completions come from the backend's own threads.
//!
//! [`DirectBackend`] is the unreplicated one: a disk thread over
//! [`crate::live::DiskBackend`] (a file or a region of a block device,
//! `O_DIRECT` where the file system allows it) and a TAP ([`crate::live::Tap`])
//! with a reader thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::io::{BlockRequest, BlockStatus, InputEvent};
use crate::live::{DiskBackend, Tap};

/// Where completions and received frames go (the VM's device bus).
pub type Deliver = Arc<dyn Fn(InputEvent) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the virtio devices need from the world.
pub trait LinuxBackend: Send {
    /// Starts whatever threads produce completions and frames, which go to
    /// `deliver`. Called once, before the vCPUs run.
    fn start(&mut self, deliver: Deliver) -> Result<(), BackendError>;
    /// A block request of block device `req.dev`; its completion is an
    /// `InputEvent::BlockDone` with the same `dev` and `id`.
    fn submit_block(&mut self, req: BlockRequest);
    /// A frame the guest transmitted on NIC `dev`.
    fn send_frame(&mut self, dev: u8, frame: Vec<u8>);
    /// Stops the threads (the VM ended); pending requests are dropped.
    fn stop(&mut self);
}

/// Disk and TAP, straight through.
pub struct DirectBackend {
    disk: Option<DiskBackend>,
    tap: Option<Arc<Tap>>,
    /// `dev` of the NIC the TAP serves.
    net_dev: u8,
    disk_tx: Option<Sender<BlockRequest>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    tx_errors: u64,
}

impl DirectBackend {
    pub fn new(disk: Option<DiskBackend>, tap: Option<Tap>, net_dev: u8) -> Self {
        DirectBackend {
            disk,
            tap: tap.map(Arc::new),
            net_dev,
            disk_tx: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            tx_errors: 0,
        }
    }
}

fn spawn(
    name: &str,
    what: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, BackendError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| BackendError::Thread { what, source })
}

impl LinuxBackend for DirectBackend {
    fn start(&mut self, deliver: Deliver) -> Result<(), BackendError> {
        if let Some(mut disk) = self.disk.take() {
            let (tx, rx) = mpsc::channel::<BlockRequest>();
            let d = Arc::clone(&deliver);
            self.threads.push(spawn("linux-disk", "disk", move || {
                for req in rx {
                    let (status, data) = match disk.execute(&req) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(id = req.id, "linux disk: storage refused: {e:?}");
                            (BlockStatus::IoError, Vec::new())
                        }
                    };
                    d(InputEvent::BlockDone {
                        dev: req.dev,
                        id: req.id,
                        status,
                        data,
                    });
                }
            })?);
            self.disk_tx = Some(tx);
        }
        if let Some(tap) = self.tap.clone() {
            let stop = Arc::clone(&self.stop);
            let dev = self.net_dev;
            self.threads.push(spawn("linux-tap", "TAP reader", move || {
                tap.receive_loop(&stop, |data| deliver(InputEvent::Frame { dev, data }));
            })?);
        }
        Ok(())
    }

    fn submit_block(&mut self, req: BlockRequest) {
        match &self.disk_tx {
            Some(tx) => {
                if tx.send(req).is_err() {
                    tracing::warn!("linux disk: the disk thread is gone; request dropped");
                }
            }
            None => tracing::warn!(dev = req.dev, "linux disk: block request without a disk"),
        }
    }

    fn send_frame(&mut self, dev: u8, frame: Vec<u8>) {
        if let Some(tap) = &self.tap {
            if let Err(e) = tap.send(&frame) {
                self.tx_errors += 1;
                if self.tx_errors.is_power_of_two() {
                    tracing::warn!(dev, errors = self.tx_errors, "linux TAP send: {e}");
                }
            }
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.disk_tx = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::warn!("linux backend: a thread panicked");
            }
        }
    }
}
