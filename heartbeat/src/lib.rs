//! The heartbeat daemon: authenticated heartbeats between hosts, failure
//! suspicion and the membership view placement uses (DESIGN.md §3, §4).
//!
//! **Thin so far:** it loads the verified runtime config, works out this host's
//! FT address, its peers and the timing, logs them, and answers `Status` on
//! its control socket. It sends and receives no heartbeat packets yet, so
//! every peer's state is reported as `"unknown"`.

pub mod view;

pub use view::View;
