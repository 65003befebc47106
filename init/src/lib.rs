//! The appliance's PID 1, as a library: the parts of init that need not run as
//! PID 1 (modules.dep resolution, config-disk discovery, supervision policy,
//! command line) live here and are unit-tested on the host; `main.rs` wires
//! them to the real system.

pub mod cmdline;
pub mod discover;
pub mod modules;
pub mod net;
pub mod supervise;
