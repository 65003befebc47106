//! Test harness for the appliance: boots hosts in QEMU (TCG, `-cpu max`, so
//! KVM works inside them), attaches config disks and shared storage, wires the
//! hosts' NICs through in-process L2 hubs that tests can cut, delay and make
//! lossy, joins a test client to a hub via a TAP device in a network
//! namespace, and waits on the hosts' serial consoles.
//!
//! - [`host::Host`]: one QEMU process and its console; [`throttle`] slows
//!   one down (duty-cycled `SIGSTOP`/`SIGCONT`).
//! - [`hub::Hub`]: one network (FT or VM) with per-link fault controls.
//! - [`netns::NetnsTap`]: a TAP device in a network namespace on a hub.
//! - [`storage::NbdStorage`], [`storage::StoragePath`]: shared storage over
//!   NBD with a per-host path that tests can cut or delay.
//! - [`kv`]: a client of the reference guest's KV service, and what its disk
//!   holds ([`guest_disk::GuestDisk`]: a VM's region of the shared image).
//! - [`history`]: client histories of a key/value store and a
//!   linearizability checker for them (per-key registers).
//! - [`chaos`]: seeded fault schedules, run and campaign reports and latency
//!   plots for chaos campaigns (issue 12; no QEMU in them).
//! - [`cluster::Cluster`]: config disks + shared storage + hubs + hosts of a
//!   cluster config, in a per-test directory kept on failure.

pub mod chaos;
pub mod cluster;
pub mod console;
pub mod error;
pub mod ftctl;
pub mod guest_disk;
pub mod history;
pub mod host;
pub mod hub;
pub mod netns;
pub mod paths;
pub mod qmp;
pub mod storage;
mod sys;
pub mod testbed;
pub mod throttle;
pub mod written_iso;

pub mod kv;
pub use cluster::{Cluster, ClusterSource, TestDir};
pub use console::{ConsoleLine, Mark, Pattern};
pub use error::{HarnessError, Result};
pub use host::{Boot, Host, HostSpec, Machine, Nic, StorageNic};
pub use hub::{CapturedFrame, ChannelPort, Hub, LinkParams, PortSender, PortStats};
pub use netns::NetnsTap;
pub use storage::{NbdStorage, PathMode, PathStats, StoragePath};
