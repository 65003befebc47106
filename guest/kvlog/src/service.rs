//! Executing KV commands: the table, the log cursor, the slots and the durable writes in one place.
//!
//! `PUT` encodes a record at the log cursor, hands it to the [`LogWriter`] (which must return
//! only once the record and a flush have completed on the device), and only then updates the
//! table and answers `OK`. `SET` does the same with its slot's one sector, rewritten in place,
//! and answers `OK <version>`. `GET`, `SLOT` and `STAT` are served from memory.
//! [`KvService::put_batch`] is the group commit of several PUTs: one write of their contiguous
//! records, one flush, then all of them are applied.
//!
//! Invariant: nothing is answered `OK` or shown by `GET`/`SLOT` before the [`LogWriter`] said it
//! is durable.

use crate::command::{parse, Command, Line};
use crate::record::Record;
use crate::replay::{ReplayOutcome, SectorSource};
use crate::slot::{DiskLayout, LayoutError};
use crate::slot_table::{SlotState, SlotTable};
use crate::store::{AppendError, KvStore, LogCursor};
use alloc::format;
use alloc::vec::Vec;
use core::fmt::Display;

/// The durable side of the disk.
pub trait LogWriter {
    /// Error of the device.
    type Error: Display;
    /// Writes `bytes` (whole sectors) at sector `first` and returns once they are durable.
    fn write_durable(&mut self, first: u64, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// Why the service could not be rebuilt from the disk at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError<E: Display> {
    /// The device is too small for the log and the slot area.
    #[error("{0}")]
    Layout(#[from] LayoutError),
    /// A read failed.
    #[error("disk read failed: {0}")]
    Device(E),
}

/// The KV service state machine.
#[derive(Debug, Clone)]
pub struct KvService {
    store: KvStore,
    cursor: LogCursor,
    replayed: u64,
    layout: DiskLayout,
    slots: SlotTable,
}

impl KvService {
    /// A service whose table was rebuilt by a replay (see [`crate::replay::replay`]) of the log
    /// of `layout`, and whose slots were read from its slot area.
    pub fn new(
        store: KvStore,
        outcome: &ReplayOutcome,
        layout: DiskLayout,
        slots: SlotTable,
    ) -> Self {
        Self {
            store,
            cursor: LogCursor::after_replay(outcome, layout.log_sectors),
            replayed: outcome.records,
            layout,
            slots,
        }
    }

    /// Replays the log into a fresh table, reads the slot area, and builds the service.
    pub fn recover<S: SectorSource + ?Sized>(
        src: &mut S,
    ) -> Result<(Self, ReplayOutcome), RecoverError<S::Error>>
    where
        S::Error: Display,
    {
        let layout = DiskLayout::new(src.capacity_sectors())?;
        let mut store = KvStore::new();
        let outcome = crate::replay::replay(src, layout.log_sectors, |r: &Record<'_>| {
            store.apply_replayed(r)
        })
        .map_err(RecoverError::Device)?;
        let slots = SlotTable::read(src, &layout).map_err(RecoverError::Device)?;
        Ok((Self::new(store, &outcome, layout, slots), outcome))
    }

    /// The table.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// The log cursor.
    pub fn cursor(&self) -> &LogCursor {
        &self.cursor
    }

    /// Where log and slots sit.
    pub fn layout(&self) -> &DiskLayout {
        &self.layout
    }

    /// The slots.
    pub fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// Records applied at boot.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Handles one framed line and appends the reply (always one `\n`-terminated line) to `out`.
    pub fn handle_line<W: LogWriter + ?Sized>(
        &mut self,
        line: &Line,
        ticks: u64,
        log: &mut W,
        out: &mut Vec<u8>,
    ) {
        let line = match line {
            Line::Complete(l) => l,
            Line::TooLong => {
                out.extend_from_slice(b"ERR line too long\n");
                return;
            }
        };
        let cmd = match parse(line) {
            Ok(c) => c,
            Err(e) => {
                out.extend_from_slice(format!("ERR {e}\n").as_bytes());
                return;
            }
        };
        match cmd {
            Command::Put { key, value } => self.put(key, value, log, out),
            Command::Get { key } => match self.store.get(key) {
                Some(v) => {
                    out.extend_from_slice(b"VALUE ");
                    out.extend_from_slice(v);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(b"NOTFOUND\n"),
            },
            Command::Stat => out.extend_from_slice(
                format!(
                    "STAT keys={} puts={} gets={} ticks={}\n",
                    self.store.len(),
                    self.store.puts(),
                    self.store.gets(),
                    ticks
                )
                .as_bytes(),
            ),
            Command::Set { slot, value } => self.set(slot, value, log, out),
            Command::Slot { slot } => self.slot(slot, out),
        }
    }

    fn put<W: LogWriter + ?Sized>(
        &mut self,
        key: &[u8],
        value: &[u8],
        log: &mut W,
        out: &mut Vec<u8>,
    ) {
        match self.cursor.prepare(key, value) {
            Ok(pending) => match log.write_durable(pending.sector, &pending.bytes) {
                Ok(()) => {
                    self.cursor.commit(&pending);
                    self.store.put(key, value);
                    out.extend_from_slice(b"OK\n");
                }
                Err(e) => out.extend_from_slice(format!("ERR disk: {e}\n").as_bytes()),
            },
            Err(AppendError::LogFull) => out.extend_from_slice(b"ERR log full\n"),
            Err(e) => out.extend_from_slice(format!("ERR {e}\n").as_bytes()),
        }
    }

    /// Group commit of PUTs, with the effect of running them one after the other: each
    /// `(key, value)` is encoded at the next log position; all records (contiguous on the
    /// device) go to [`LogWriter::write_durable`] in **one** call, and only after it returned
    /// are the table and the cursor updated. Returns one reply line per PUT, in order: `OK`;
    /// `ERR log full` or a length error for that PUT alone (the others go on); `ERR disk: <e>`
    /// for every encoded PUT when the write failed (then nothing changed). The writer must
    /// take up to `MAX_RECORD_SECTORS` sectors per PUT in one write.
    pub fn put_batch<W: LogWriter + ?Sized>(
        &mut self,
        puts: &[(&[u8], &[u8])],
        log: &mut W,
    ) -> Vec<Vec<u8>> {
        let mut cursor = self.cursor;
        let mut bytes = Vec::new();
        let mut encoded = Vec::with_capacity(puts.len());
        let mut replies: Vec<Vec<u8>> = Vec::with_capacity(puts.len());
        for (key, value) in puts {
            match cursor.prepare(key, value) {
                Ok(pending) => {
                    bytes.extend_from_slice(&pending.bytes);
                    cursor.commit(&pending);
                    encoded.push(replies.len());
                    replies.push(Vec::new());
                }
                Err(AppendError::LogFull) => replies.push(b"ERR log full\n".to_vec()),
                Err(e) => replies.push(format!("ERR {e}\n").into_bytes()),
            }
        }
        if encoded.is_empty() {
            return replies;
        }
        match log.write_durable(self.cursor.next_sector, &bytes) {
            Ok(()) => {
                self.cursor = cursor;
                for &i in &encoded {
                    let (key, value) = puts[i];
                    self.store.put(key, value);
                    replies[i] = b"OK\n".to_vec();
                }
            }
            Err(e) => {
                for &i in &encoded {
                    replies[i] = format!("ERR disk: {e}\n").into_bytes();
                }
            }
        }
        replies
    }

    fn set<W: LogWriter + ?Sized>(
        &mut self,
        slot: usize,
        value: &[u8],
        log: &mut W,
        out: &mut Vec<u8>,
    ) {
        let pending = match self.slots.prepare(slot, value) {
            Ok(p) => p,
            Err(e) => {
                out.extend_from_slice(format!("ERR {e}\n").as_bytes());
                return;
            }
        };
        match log.write_durable(self.layout.slot_sector(slot), &pending.bytes) {
            Ok(()) => {
                self.slots.commit(&pending);
                out.extend_from_slice(format!("OK {}\n", pending.version).as_bytes());
            }
            Err(e) => out.extend_from_slice(format!("ERR disk: {e}\n").as_bytes()),
        }
    }

    fn slot(&self, slot: usize, out: &mut Vec<u8>) {
        match self.slots.get(slot) {
            SlotState::Empty => out.extend_from_slice(b"NONE\n"),
            SlotState::Held { version, value } => {
                out.extend_from_slice(format!("VALUE {version} ").as_bytes());
                out.extend_from_slice(value);
                out.push(b'\n');
            }
            SlotState::Damaged(reason) => {
                out.extend_from_slice(format!("ERR slot {slot} damaged ({reason})\n").as_bytes())
            }
        }
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
