//! Rebuilding the KV table from the on-disk log at boot.
//!
//! The log is sectors `0..log_sectors` of the device (the slot area follows it, see
//! [`crate::slot::DiskLayout`]); replay never reads past `log_sectors`. Records are read one after the other; replay stops at the first
//! sector that is all zeros (clean end), at the end of the device, or at the first record that is
//! damaged or out of order (a torn tail: bad magic, bad lengths, bad CRC, wrong sequence number or
//! broken CRC chain). Everything before the stopping point is applied; appending continues at it.

use crate::record::{
    decode_record, parse_header, DecodeError, Record, MAX_RECORD_SECTORS, SECTOR_SIZE,
};
use alloc::vec;

/// Random access to whole sectors of the log device.
pub trait SectorSource {
    /// Error of the underlying device.
    type Error;
    /// Size of the device in sectors.
    fn capacity_sectors(&self) -> u64;
    /// Reads `buf.len() / SECTOR_SIZE` sectors starting at `first` into `buf`.
    fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

/// Why replay stopped at a record that was not all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TailReason {
    /// The bytes do not decode as a record.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A valid record with an unexpected sequence number.
    #[error("sequence {found}, expected {expected}")]
    Sequence { expected: u64, found: u64 },
    /// A valid record whose `prev_crc` does not match the previous record.
    #[error("crc chain {found:#010x}, expected {expected:#010x}")]
    Chain { expected: u32, found: u32 },
    /// The header claims more sectors than the device has left.
    #[error("record of {sectors} sectors runs past the end of the device")]
    PastEnd { sectors: usize },
}

/// How the log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// An all-zero sector: the never-written part of the device.
    Clean,
    /// The last record ended exactly at the end of the device.
    EndOfDevice,
    /// A damaged or stale record at [`ReplayOutcome::next_sector`] was ignored.
    Torn(TailReason),
}

/// Result of a replay: where to append next and what was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Number of valid records applied.
    pub records: u64,
    /// First sector after the last valid record.
    pub next_sector: u64,
    /// Sequence number for the next record.
    pub next_seq: u64,
    /// CRC of the last valid record (0 when there is none).
    pub last_crc: u32,
    /// Why replay stopped.
    pub end: LogEnd,
}

/// Replays the log in sectors `0..log_sectors` of `src`, calling `apply` for every valid record
/// in order. "The end of the device" below means `log_sectors`.
///
/// Device errors abort the replay; damaged data never does. Panics if `log_sectors` is past the
/// end of `src`.
pub fn replay<S, F>(src: &mut S, log_sectors: u64, mut apply: F) -> Result<ReplayOutcome, S::Error>
where
    S: SectorSource + ?Sized,
    F: FnMut(&Record<'_>),
{
    assert!(
        log_sectors <= src.capacity_sectors(),
        "log of {log_sectors} sectors on a device of {}",
        src.capacity_sectors()
    );
    let capacity = log_sectors;
    let mut buf = vec![0u8; MAX_RECORD_SECTORS * SECTOR_SIZE];
    let mut out = ReplayOutcome {
        records: 0,
        next_sector: 0,
        next_seq: 1,
        last_crc: 0,
        end: LogEnd::EndOfDevice,
    };
    while out.next_sector < capacity {
        let sector = out.next_sector;
        src.read_sectors(sector, &mut buf[..SECTOR_SIZE])?;
        if buf[..SECTOR_SIZE].iter().all(|&b| b == 0) {
            out.end = LogEnd::Clean;
            return Ok(out);
        }
        let header = match parse_header(&buf[..SECTOR_SIZE]) {
            Ok(h) => h,
            Err(e) => {
                out.end = LogEnd::Torn(e.into());
                return Ok(out);
            }
        };
        let sectors = header.sectors();
        if sector + sectors as u64 > capacity {
            out.end = LogEnd::Torn(TailReason::PastEnd { sectors });
            return Ok(out);
        }
        if sectors > 1 {
            src.read_sectors(sector + 1, &mut buf[SECTOR_SIZE..sectors * SECTOR_SIZE])?;
        }
        let record = match decode_record(&buf[..sectors * SECTOR_SIZE]) {
            Ok(r) => r,
            Err(e) => {
                out.end = LogEnd::Torn(e.into());
                return Ok(out);
            }
        };
        if record.header.seq != out.next_seq {
            out.end = LogEnd::Torn(TailReason::Sequence {
                expected: out.next_seq,
                found: record.header.seq,
            });
            return Ok(out);
        }
        if record.header.prev_crc != out.last_crc {
            out.end = LogEnd::Torn(TailReason::Chain {
                expected: out.last_crc,
                found: record.header.prev_crc,
            });
            return Ok(out);
        }
        apply(&record);
        out.records += 1;
        out.next_seq += 1;
        out.last_crc = record.header.crc;
        out.next_sector = sector + sectors as u64;
    }
    out.end = LogEnd::EndOfDevice;
    Ok(out)
}

/// An in-memory disk, used by the tests of this crate and handy for host-side tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    /// The raw bytes; the length is a multiple of [`SECTOR_SIZE`].
    pub bytes: alloc::vec::Vec<u8>,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors.
    pub fn new(sectors: usize) -> Self {
        Self {
            bytes: vec![0; sectors * SECTOR_SIZE],
        }
    }
}

/// Error of [`MemDisk`]: access outside the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sector {0} out of range")]
pub struct OutOfRange(pub u64);

impl SectorSource for MemDisk {
    type Error = OutOfRange;

    fn capacity_sectors(&self) -> u64 {
        (self.bytes.len() / SECTOR_SIZE) as u64
    }

    fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let start = usize::try_from(first).map_err(|_| OutOfRange(first))? * SECTOR_SIZE;
        let src = self
            .bytes
            .get(start..start + buf.len())
            .ok_or(OutOfRange(first))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl crate::service::LogWriter for MemDisk {
    type Error = OutOfRange;

    fn write_durable(&mut self, first: u64, bytes: &[u8]) -> Result<(), OutOfRange> {
        let start = usize::try_from(first).map_err(|_| OutOfRange(first))? * SECTOR_SIZE;
        let dst = self
            .bytes
            .get_mut(start..start + bytes.len())
            .ok_or(OutOfRange(first))?;
        dst.copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_record, HEADER_LEN};
    use alloc::vec::Vec;

    /// Writes `n` records key{i}=value{i} (value i has i*100 bytes to vary sizes) and returns
    /// the disk and the start sector of each record.
    fn log_with(n: u64, sectors: usize) -> (MemDisk, Vec<u64>) {
        let mut disk = MemDisk::new(sectors);
        let mut at = 0u64;
        let mut prev = 0;
        let mut starts = Vec::new();
        for i in 1..=n {
            let key = alloc::format!("key{i}");
            let value = vec![b'a' + (i % 26) as u8; (i as usize * 100) % 1025];
            let enc = encode_record(i, prev, key.as_bytes(), &value).unwrap();
            let start = at as usize * SECTOR_SIZE;
            disk.bytes[start..start + enc.bytes.len()].copy_from_slice(&enc.bytes);
            starts.push(at);
            at += (enc.bytes.len() / SECTOR_SIZE) as u64;
            prev = enc.crc;
        }
        (disk, starts)
    }

    fn count(disk: &mut MemDisk) -> ReplayOutcome {
        let cap = disk.capacity_sectors();
        replay(disk, cap, |_| {}).unwrap()
    }

    #[test]
    fn empty_disk_is_clean() {
        let out = count(&mut MemDisk::new(8));
        assert_eq!(out.records, 0);
        assert_eq!(out.next_sector, 0);
        assert_eq!(out.next_seq, 1);
        assert_eq!(out.end, LogEnd::Clean);
    }

    #[test]
    fn full_log_replays_in_order() {
        let (mut disk, starts) = log_with(12, 64);
        let mut keys = Vec::new();
        let out = replay(&mut disk, 64, |r| keys.push(r.key.to_vec())).unwrap();
        assert_eq!(out.records, 12);
        assert_eq!(out.next_seq, 13);
        assert_eq!(out.end, LogEnd::Clean);
        assert!(out.next_sector > *starts.last().unwrap());
        assert_eq!(keys[0], b"key1");
        assert_eq!(keys[11], b"key12");
    }

    #[test]
    fn torn_last_record_is_ignored() {
        let (mut disk, starts) = log_with(10, 64);
        // Record 10 has 1000 bytes of value: 3 sectors. Lose its last sector (torn write).
        let last = starts[9] as usize;
        let full = count(&mut disk.clone());
        let end = full.next_sector as usize;
        assert_eq!(end - last, 3);
        disk.bytes[(end - 1) * SECTOR_SIZE..end * SECTOR_SIZE].fill(0);
        let out = count(&mut disk);
        assert_eq!(out.records, 9);
        assert_eq!(out.next_sector, starts[9]);
        assert_eq!(out.next_seq, 10);
        assert!(matches!(
            out.end,
            LogEnd::Torn(TailReason::Decode(DecodeError::BadCrc { .. }))
        ));
    }

    #[test]
    fn garbage_header_stops_replay() {
        let (mut disk, starts) = log_with(3, 64);
        let s = starts[2] as usize * SECTOR_SIZE;
        disk.bytes[s] = b'X';
        let out = count(&mut disk);
        assert_eq!(out.records, 2);
        assert!(matches!(
            out.end,
            LogEnd::Torn(TailReason::Decode(DecodeError::BadMagic { .. }))
        ));
    }

    #[test]
    fn sequence_gap_stops_replay() {
        let (mut disk, starts) = log_with(3, 64);
        // Replace record 3 by a valid record with sequence 5 (a gap).
        let prev_crc = count(&mut log_with(2, 64).0).last_crc;
        let enc = encode_record(5, prev_crc, b"late", b"x").unwrap();
        let s = starts[2] as usize * SECTOR_SIZE;
        disk.bytes[s..s + enc.bytes.len()].copy_from_slice(&enc.bytes);
        let out = count(&mut disk);
        assert_eq!(out.records, 2);
        assert_eq!(
            out.end,
            LogEnd::Torn(TailReason::Sequence {
                expected: 3,
                found: 5
            })
        );
    }

    #[test]
    fn broken_chain_stops_replay() {
        let (mut disk, starts) = log_with(3, 64);
        let enc = encode_record(3, 0x1234_5678, b"stale", b"x").unwrap();
        let s = starts[2] as usize * SECTOR_SIZE;
        disk.bytes[s..s + enc.bytes.len()].copy_from_slice(&enc.bytes);
        let out = count(&mut disk);
        assert_eq!(out.records, 2);
        assert!(matches!(out.end, LogEnd::Torn(TailReason::Chain { .. })));
    }

    #[test]
    fn record_running_past_device_end() {
        let enc = encode_record(1, 0, b"k", &[b'v'; 1000]).unwrap();
        let mut disk = MemDisk::new(2);
        disk.bytes[..HEADER_LEN].copy_from_slice(&enc.bytes[..HEADER_LEN]);
        let out = count(&mut disk);
        assert_eq!(out.records, 0);
        assert_eq!(out.end, LogEnd::Torn(TailReason::PastEnd { sectors: 3 }));
    }

    #[test]
    fn log_filling_the_device_ends_at_device_end() {
        let enc = encode_record(1, 0, b"k", b"v").unwrap();
        let mut disk = MemDisk::new(1);
        disk.bytes.copy_from_slice(&enc.bytes);
        let out = count(&mut disk);
        assert_eq!(out.records, 1);
        assert_eq!(out.next_sector, 1);
        assert_eq!(out.end, LogEnd::EndOfDevice);
    }

    #[test]
    fn replay_stops_at_the_log_bound() {
        // Records in sectors 0 and 1; the log is only 1 sector long: the second is never read
        // (it stands for the slot area after the log).
        let (mut disk, starts) = log_with(2, 4);
        assert_eq!(starts, [0, 1]);
        let mut reads = Vec::new();
        struct Spy<'a>(&'a mut MemDisk, &'a mut Vec<u64>);
        impl SectorSource for Spy<'_> {
            type Error = OutOfRange;
            fn capacity_sectors(&self) -> u64 {
                self.0.capacity_sectors()
            }
            fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
                self.1.push(first);
                self.0.read_sectors(first, buf)
            }
        }
        let out = replay(&mut Spy(&mut disk, &mut reads), 1, |_| {}).unwrap();
        assert_eq!((out.records, out.next_sector), (1, 1));
        assert_eq!(out.end, LogEnd::EndOfDevice);
        assert_eq!(reads, [0]);
    }

    #[test]
    #[should_panic(expected = "log of 9 sectors on a device of 8")]
    fn a_log_bound_past_the_device_panics() {
        let _ = replay(&mut MemDisk::new(8), 9, |_| {});
    }

    #[test]
    fn device_error_is_reported() {
        struct Failing;
        impl SectorSource for Failing {
            type Error = &'static str;
            fn capacity_sectors(&self) -> u64 {
                4
            }
            fn read_sectors(&mut self, _: u64, _: &mut [u8]) -> Result<(), &'static str> {
                Err("io")
            }
        }
        assert_eq!(replay(&mut Failing, 4, |_| {}), Err("io"));
    }

    proptest::proptest! {
        #[test]
        fn random_disk_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let mut disk = MemDisk { bytes };
            let len = disk.bytes.len() / SECTOR_SIZE * SECTOR_SIZE;
            disk.bytes.truncate(len);
            let cap = disk.capacity_sectors();
            let out = replay(&mut disk, cap, |_| {}).unwrap();
            proptest::prop_assert!(out.next_sector <= disk.capacity_sectors());
        }

        #[test]
        fn random_bytes_after_valid_header_never_panic(
            key_len in 0u16..200, value_len in 0u16..2000,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)
        ) {
            let mut bytes = alloc::vec::Vec::from(&b"FTKV"[..]);
            bytes.extend_from_slice(&[0; 16]);
            bytes.extend_from_slice(&key_len.to_le_bytes());
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(&tail);
            let _ = decode_record(&bytes);
            let len = bytes.len().div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
            bytes.resize(len, 0);
            let mut disk = MemDisk { bytes };
            let cap = disk.capacity_sectors();
            let _ = replay(&mut disk, cap, |_| {}).unwrap();
        }
    }
}
