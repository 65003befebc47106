//! Host-testable core of the reference guest (`ftguest`).
//!
//! Everything here is `no_std` + `alloc` and free of I/O so it runs both inside the unikernel and
//! in ordinary host unit tests:
//! - [`record`]: the on-disk log record format (sector-aligned, CRC-32C protected),
//! - [`replay`]: rebuilding state from the log at boot, tolerating a torn tail,
//! - [`store`]: the in-memory table and the append cursor of the log,
//! - [`slot`]: the on-disk format of the in-place slots and the disk layout (log, then slots),
//! - [`slot_table`]: the in-memory slots and the in-place update of one,
//! - [`command`]: the text line protocol of the KV service (parser and line framing),
//! - [`service`]: executing one command line against the store and the durable log,
//! - [`bootargs`]: the kernel command line handed over by ftvmm.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bootargs;
pub mod command;
pub mod record;
pub mod replay;
pub mod service;
pub mod slot;
pub mod slot_table;
pub mod store;

pub use bootargs::{BootArgs, BootArgsError, Mode, VirtioMmio};
pub use command::{Command, Line, LineBuffer, ParseError};
pub use record::{DecodeError, EncodeError, EncodedRecord, Record, RecordHeader, SECTOR_SIZE};
pub use replay::{replay, LogEnd, ReplayOutcome, SectorSource, TailReason};
pub use service::{KvService, LogWriter, RecoverError};
pub use slot::{
    decode_slot, encode_slot, DiskLayout, LayoutError, SlotDecodeError, SlotSector,
    MAX_SLOT_VALUE_LEN, SLOT_COUNT,
};
pub use slot_table::{PendingSlot, SlotError, SlotState, SlotTable};
pub use store::{AppendError, KvStore, LogCursor, PendingAppend};
