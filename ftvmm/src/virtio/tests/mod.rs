//! Unit tests of the virtio-mmio devices, driven by a small guest-side driver
//! model ([`driver`]) that lays out split virtqueues in a test `GuestMemoryMmap`
//! and programs the transport through its MMIO registers.

mod blk;
mod driver;
mod hostile;
mod lockstep_read;
mod mmio;
mod net;
mod prop;
mod snapshot;
mod suppress;
