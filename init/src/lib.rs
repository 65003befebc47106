//! The appliance's PID 1, as a library: the parts of init that need not run as
//! PID 1 (modules.dep resolution, hardware discovery by modalias, config-disk discovery and verification,
//! supervision policy, command line, network plan, power-button events) live
//! here and are unit-tested on the host; `system`, `daemons` and `main.rs`
//! wire them to the real system.

pub mod cmdline;
pub mod console;
pub mod daemons;
pub mod discover;
pub mod hardware;
pub mod iscsi;
pub mod modules;
pub mod net;
pub mod power;
pub mod supervise;
pub mod system;
pub mod verify;
