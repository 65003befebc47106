//! The in-memory KV table and the append cursor of the on-disk log.

use crate::record::{encode_record, EncodeError, Record, SECTOR_SIZE};
use crate::replay::ReplayOutcome;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// The table served by GET/STAT, with request counters.
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    puts: u64,
    gets: u64,
}

impl KvStore {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a record found during replay (does not count as a PUT).
    pub fn apply_replayed(&mut self, record: &Record<'_>) {
        self.map.insert(record.key.to_vec(), record.value.to_vec());
    }

    /// Stores a value after its record became durable; counts one PUT.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.puts += 1;
        self.map.insert(key.to_vec(), value.to_vec());
    }

    /// Looks a key up; counts one GET.
    pub fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        self.gets += 1;
        self.map.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// PUTs served since boot.
    pub fn puts(&self) -> u64 {
        self.puts
    }

    /// GETs served since boot.
    pub fn gets(&self) -> u64 {
        self.gets
    }
}

/// Why a record cannot be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The record does not fit in the remaining sectors.
    #[error("log full")]
    LogFull,
    /// Key or value out of range.
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// A record encoded for the next free position of the log, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAppend {
    /// First sector to write.
    pub sector: u64,
    /// Sector-padded record bytes.
    pub bytes: Vec<u8>,
    /// Sequence number of the record.
    pub seq: u64,
    /// CRC of the record.
    pub crc: u32,
}

/// Where the next record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    /// First free sector.
    pub next_sector: u64,
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// CRC of the last record written.
    pub last_crc: u32,
    /// Device size in sectors.
    pub capacity: u64,
}

impl LogCursor {
    /// The cursor right after a replay.
    pub fn after_replay(outcome: &ReplayOutcome, capacity: u64) -> Self {
        Self {
            next_sector: outcome.next_sector,
            next_seq: outcome.next_seq,
            last_crc: outcome.last_crc,
            capacity,
        }
    }

    /// Encodes the record for `key`/`value` at the cursor without moving it.
    pub fn prepare(&self, key: &[u8], value: &[u8]) -> Result<PendingAppend, AppendError> {
        let enc = encode_record(self.next_seq, self.last_crc, key, value)?;
        let sectors = (enc.bytes.len() / SECTOR_SIZE) as u64;
        if self.next_sector + sectors > self.capacity {
            return Err(AppendError::LogFull);
        }
        Ok(PendingAppend {
            sector: self.next_sector,
            bytes: enc.bytes,
            seq: self.next_seq,
            crc: enc.crc,
        })
    }

    /// Moves the cursor past `pending` once it is durable.
    pub fn commit(&mut self, pending: &PendingAppend) {
        self.next_sector = pending.sector + (pending.bytes.len() / SECTOR_SIZE) as u64;
        self.next_seq = pending.seq + 1;
        self.last_crc = pending.crc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_advances_only_on_commit() {
        let mut c = LogCursor {
            next_sector: 0,
            next_seq: 1,
            last_crc: 0,
            capacity: 10,
        };
        let p = c.prepare(b"k", &[b'v'; 600]).unwrap();
        assert_eq!((p.sector, p.seq), (0, 1));
        assert_eq!(c.next_sector, 0);
        c.commit(&p);
        assert_eq!((c.next_sector, c.next_seq, c.last_crc), (2, 2, p.crc));
    }

    #[test]
    fn log_full() {
        let c = LogCursor {
            next_sector: 8,
            next_seq: 1,
            last_crc: 0,
            capacity: 10,
        };
        assert!(c.prepare(b"k", &[b'v'; 600]).is_ok());
        assert_eq!(c.prepare(b"k", &[b'v'; 1024]), Err(AppendError::LogFull));
    }

    #[test]
    fn counters() {
        let mut s = KvStore::new();
        s.put(b"a", b"1");
        s.put(b"a", b"2");
        assert_eq!(s.get(b"a"), Some(&b"2"[..]));
        assert_eq!(s.get(b"b"), None);
        assert_eq!((s.len(), s.puts(), s.gets()), (1, 2, 2));
    }
}
