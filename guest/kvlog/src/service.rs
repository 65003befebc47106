//! Executing KV commands: the table, the log cursor and the durable write in one place.
//!
//! `PUT` encodes a record at the log cursor, hands it to the [`LogWriter`] (which must return
//! only once the record and a flush have completed on the device), and only then updates the
//! table and answers `OK`. `GET` and `STAT` are served from memory.

use crate::command::{parse, Command, Line};
use crate::record::Record;
use crate::replay::ReplayOutcome;
use crate::store::{AppendError, KvStore, LogCursor};
use alloc::format;
use alloc::vec::Vec;
use core::fmt::Display;

/// The durable side of the log.
pub trait LogWriter {
    /// Error of the device.
    type Error: Display;
    /// Writes `bytes` (whole sectors) at sector `first` and returns once they are durable.
    fn write_durable(&mut self, first: u64, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// The KV service state machine.
#[derive(Debug, Clone)]
pub struct KvService {
    store: KvStore,
    cursor: LogCursor,
    replayed: u64,
}

impl KvService {
    /// A service whose table was rebuilt by a replay (see [`crate::replay::replay`]).
    pub fn new(store: KvStore, outcome: &ReplayOutcome, capacity: u64) -> Self {
        Self {
            store,
            cursor: LogCursor::after_replay(outcome, capacity),
            replayed: outcome.records,
        }
    }

    /// Replays with `replay` into a fresh table and builds the service from the result.
    pub fn recover<S: crate::replay::SectorSource + ?Sized>(
        src: &mut S,
    ) -> Result<(Self, ReplayOutcome), S::Error> {
        let mut store = KvStore::new();
        let outcome = crate::replay::replay(src, |r: &Record<'_>| store.apply_replayed(r))?;
        let capacity = src.capacity_sectors();
        Ok((Self::new(store, &outcome, capacity), outcome))
    }

    /// The table.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// The log cursor.
    pub fn cursor(&self) -> &LogCursor {
        &self.cursor
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
            Command::Put { key, value } => match self.cursor.prepare(key, value) {
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
            },
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{LogEnd, MemDisk, TailReason};
    use alloc::string::String;
    use alloc::vec;

    fn run(svc: &mut KvService, disk: &mut MemDisk, line: &str) -> String {
        let mut out = Vec::new();
        svc.handle_line(
            &Line::Complete(line.as_bytes().to_vec()),
            42,
            disk,
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn put_get_stat_and_recover_after_restart() {
        let mut disk = MemDisk::new(64);
        let (mut svc, out) = KvService::recover(&mut disk).unwrap();
        assert_eq!(out.end, LogEnd::Clean);
        assert_eq!(run(&mut svc, &mut disk, "PUT a 1"), "OK\n");
        assert_eq!(run(&mut svc, &mut disk, "PUT b 2"), "OK\n");
        assert_eq!(run(&mut svc, &mut disk, "PUT a 3"), "OK\n");
        assert_eq!(run(&mut svc, &mut disk, "GET a"), "VALUE 3\n");
        assert_eq!(run(&mut svc, &mut disk, "GET zz"), "NOTFOUND\n");
        assert_eq!(
            run(&mut svc, &mut disk, "STAT"),
            "STAT keys=2 puts=3 gets=2 ticks=42\n"
        );
        assert_eq!(run(&mut svc, &mut disk, "FOO"), "ERR unknown command\n");

        // "Reboot": rebuild from the disk alone.
        let (mut svc2, out) = KvService::recover(&mut disk).unwrap();
        assert_eq!(out.records, 3);
        assert_eq!(svc2.replayed(), 3);
        assert_eq!(svc2.store().len(), 2);
        assert_eq!(run(&mut svc2, &mut disk, "GET a"), "VALUE 3\n");
        assert_eq!(run(&mut svc2, &mut disk, "PUT c 4"), "OK\n");
        let (svc3, _) = KvService::recover(&mut disk).unwrap();
        assert_eq!(svc3.replayed(), 4);
    }

    #[test]
    fn torn_tail_is_overwritten_by_next_put() {
        let mut disk = MemDisk::new(64);
        let (mut svc, _) = KvService::recover(&mut disk).unwrap();
        run(&mut svc, &mut disk, "PUT a 1");
        let tail = svc.cursor().next_sector as usize;
        run(&mut svc, &mut disk, "PUT b 2");
        // Tear record 2: flip a byte of its key.
        disk.bytes[tail * 512 + 24] ^= 1;
        let (mut svc, out) = KvService::recover(&mut disk).unwrap();
        assert_eq!(out.records, 1);
        assert!(matches!(out.end, LogEnd::Torn(TailReason::Decode(_))));
        assert_eq!(svc.cursor().next_sector as usize, tail);
        assert_eq!(run(&mut svc, &mut disk, "PUT c 3"), "OK\n");
        let (mut svc, out) = KvService::recover(&mut disk).unwrap();
        assert_eq!(out.records, 2);
        assert_eq!(run(&mut svc, &mut disk, "GET b"), "NOTFOUND\n");
        assert_eq!(run(&mut svc, &mut disk, "GET c"), "VALUE 3\n");
    }

    #[test]
    fn failed_write_is_not_acknowledged_nor_applied() {
        struct Broken;
        impl LogWriter for Broken {
            type Error = &'static str;
            fn write_durable(&mut self, _: u64, _: &[u8]) -> Result<(), &'static str> {
                Err("media error")
            }
        }
        let mut disk = MemDisk::new(8);
        let (mut svc, _) = KvService::recover(&mut disk).unwrap();
        let mut out = Vec::new();
        svc.handle_line(
            &Line::Complete(b"PUT a 1".to_vec()),
            0,
            &mut Broken,
            &mut out,
        );
        assert_eq!(out, b"ERR disk: media error\n");
        assert_eq!(svc.store().len(), 0);
        assert_eq!(svc.cursor().next_seq, 1);
    }

    #[test]
    fn log_full_and_too_long() {
        let mut disk = MemDisk::new(1);
        let (mut svc, _) = KvService::recover(&mut disk).unwrap();
        assert_eq!(run(&mut svc, &mut disk, "PUT a 1"), "OK\n");
        assert_eq!(run(&mut svc, &mut disk, "PUT b 2"), "ERR log full\n");
        let mut out = Vec::new();
        svc.handle_line(&Line::TooLong, 0, &mut disk, &mut out);
        assert_eq!(out, b"ERR line too long\n");
        let big = String::from_utf8(vec![b'v'; 1024]).unwrap();
        let mut disk = MemDisk::new(8);
        let (mut svc, _) = KvService::recover(&mut disk).unwrap();
        assert_eq!(
            run(&mut svc, &mut disk, &alloc::format!("PUT k {big}")),
            "OK\n"
        );
        assert_eq!(
            run(&mut svc, &mut disk, "GET k"),
            alloc::format!("VALUE {big}\n")
        );
    }
}
