//! Fuzzes the on-disk log decoder: arbitrary bytes as a disk image must replay without panicking,
//! never move past the device end, and every replayed record must re-encode to the same bytes.
#![no_main]

use ftguest_kvlog::record::{decode_record, encode_record, SECTOR_SIZE};
use ftguest_kvlog::replay::{replay, MemDisk};
use ftguest_kvlog::SectorSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_record(data);
    let mut bytes = data.to_vec();
    bytes.resize(data.len().div_ceil(SECTOR_SIZE) * SECTOR_SIZE, 0);
    let mut disk = MemDisk { bytes };
    let image = disk.bytes.clone();
    let mut offset = 0usize;
    let sectors = disk.capacity_sectors();
    let out = replay(&mut disk, sectors, |r| {
        let enc = encode_record(r.header.seq, r.header.prev_crc, r.key, r.value)
            .expect("a decoded record re-encodes");
        assert_eq!(enc.crc, r.header.crc);
        let data_len = 24 + r.key.len() + r.value.len();
        assert_eq!(&enc.bytes[..data_len], &image[offset..offset + data_len]);
        offset += enc.bytes.len();
    })
    .expect("in-memory disk never fails");
    assert!(out.next_sector <= disk.capacity_sectors());
    assert_eq!(out.next_sector as usize * SECTOR_SIZE, offset);
});
