//! The storage-fencing agent: Disk Paxos over per-host sectors of the shared
//! block device, host-liveness leases and the watchdog (DESIGN.md §5).
//!
//! **Thin so far:** it loads the verified runtime config, finds the shared
//! device (by serial through `/sys/block/*/serial`, or by path), reports its
//! size, the fencing region and this host's slot (= host id), and answers
//! `Status` on its control socket. There is no Disk Paxos, no lease and no
//! watchdog handling yet: nothing is read from or written to the device.

pub mod device;
pub mod view;

pub use view::View;
