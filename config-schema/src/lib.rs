//! The cluster config: typed schema, validation, canonical encoding, Ed25519
//! signing and the on-disk format of the per-host config disk; plus the small
//! runtime pieces every daemon shares (the verified runtime config init hands
//! over, and the control protocol on the daemons' Unix sockets).

pub mod ctl;
pub mod model;
pub mod runtime;

pub use model::*;
