//! Fuzzes the slot-area decoder: arbitrary bytes as a slot area must decode without panicking,
//! every slot sector that decodes must re-encode to exactly its 512 bytes, and a table built
//! from it must only ever hand out versions above the one it holds. Half of the inputs get
//! their CRCs fixed up first, so the field checks behind the CRC are fuzzed as well.
#![no_main]

use ftguest_kvlog::record::SECTOR_SIZE;
use ftguest_kvlog::slot::{decode_slot, encode_slot, slot_crc, SLOT_AREA_BYTES, SLOT_COUNT};
use ftguest_kvlog::slot_table::{SlotState, SlotTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small inputs stand for sector 0 with zeros after; the slot is picked by the first byte.
    let slot = usize::from(data.first().copied().unwrap_or(0)) % SLOT_COUNT;
    let _ = decode_slot(slot, data);
    let mut area = data.to_vec();
    area.resize(SLOT_AREA_BYTES, 0);
    // With the first byte odd, every sector gets a correct CRC, so that the checks behind the
    // CRC (slot number, version, length, stray bytes) and the re-encoding are reached too.
    if data.first().is_some_and(|b| b & 1 == 1) {
        for sector in area.chunks_exact_mut(SECTOR_SIZE) {
            let crc = slot_crc(sector);
            sector[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    for (i, sector) in area.chunks_exact(SECTOR_SIZE).enumerate() {
        if let Ok(Some(s)) = decode_slot(i, sector) {
            assert_eq!(&encode_slot(i, s.version, s.value)[..], sector);
        }
    }
    let mut table = SlotTable::decode(&area);
    let held = match table.get(slot) {
        SlotState::Held { version, .. } => Some(*version),
        SlotState::Empty => Some(0),
        SlotState::Damaged(_) => None,
    };
    // A slot at the last version is refused like a damaged one.
    let held = held.filter(|v| *v < u64::MAX);
    match (table.prepare(slot, b"v"), held) {
        (Ok(p), Some(v)) => assert_eq!(p.version, v + 1),
        (Err(_), None) => {}
        (r, h) => panic!("prepare gave {r:?} for a slot holding {h:?}"),
    }
});
