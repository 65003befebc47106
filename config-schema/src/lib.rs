//! The cluster config: typed schema, validation, canonical encoding, Ed25519
//! signing and the on-disk format of the per-host config disk.

pub mod model;

pub use model::*;
