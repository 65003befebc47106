//! Building blocks of the reproducible appliance image.
//!
//! - [`bootcfg`]: the locked ISOLINUX and GRUB configs (no prompt, no
//!   editing, no boot-loader command line) and their checks.
//! - [`archive`]: an in-memory description of the initramfs tree and its
//!   deterministic cpio "newc" encoding (sorted, fixed mtime, owners 0:0).
//! - [`manifest`]: the inputs of an archive: a staging directory and/or a
//!   manifest file in the style of the kernel's `gen_init_cpio`.
//! - [`gzip`]: gzip with a fixed header (no name, mtime 0, fixed OS byte).
//! - [`drivers`]: the driver table, the firmware pin and the cost of each group.
//! - [`debpin`]: programs pinned by Debian package version and `.deb`
//!   sha256 (`image/iscsi.lock`).
//! - [`elfdeps`]: those programs' loader and shared-library closure, found
//!   only in the unpacked pinned packages.
//! - [`kmod`]: the closure of wanted kernel modules over their dependencies,
//!   written out as a filtered `modules.dep` tree.
//!
//! The shell side (`image/build.sh`) fetches the pinned kernel and drives the
//! ISO tools; everything whose bytes we control is written here.

pub mod archive;
pub mod bootcfg;
pub mod debpin;
pub mod drivers;
pub mod elfdeps;
pub mod gzip;
pub mod kmod;
pub mod manifest;

pub use archive::{Archive, ArchiveError, Node};
