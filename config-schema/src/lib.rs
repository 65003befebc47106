//! The cluster config: typed schema, validation, canonical encoding, Ed25519
//! signing and the on-disk format of the per-host config disk; plus the small
//! runtime pieces every daemon shares (the verified runtime config init hands
//! over, and the control protocol on the daemons' Unix sockets).
//! [`watchdog`]: which watchdog a host has and which one fencing uses.
//!
//! See `config-schema/README.md` for the config file reference, the canonical
//! encoding and the config-disk layout.

pub mod canonical;
pub mod changes;
pub mod clock;
pub mod config_id;
pub mod console;
pub mod ctl;
pub mod ctl_server;
pub mod disk;
pub mod events;
pub mod hooks;
pub mod images;
pub mod iscsi_block;
pub mod keys;
pub mod live_add;
pub mod model;
pub mod peer;
pub mod persist;
pub mod remote;
pub mod runtime;
pub mod sched;
pub mod shared_images;
pub mod signed;
pub mod slots;
pub mod timing_live;
pub mod validate;
pub mod watchdog;

pub use model::*;
pub use validate::{parse, validate, ConfigError, Validated, Warning};
