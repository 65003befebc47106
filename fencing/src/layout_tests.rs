use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn geo(block: u32) -> Geometry {
    Geometry::new(["a", "b", "c"], ["kv", "cpu"], 4, block)
}

#[test]
fn header_round_trips_at_every_block_size_and_names_matter() {
    for block in [512, 4096, 65536] {
        let g = geo(block);
        let h = decode_header(&g.encode_header()).unwrap();
        assert_eq!((h.version, h.geometry), (VERSION, g));
        assert_eq!(g.encode_header().len(), block as usize);
    }
    let g = geo(512);
    assert_ne!(
        Geometry::new(["a", "b", "x"], ["kv", "cpu"], 4, 512).names_digest,
        g.names_digest
    );
    // Moving a name from one list to the other changes the digest.
    assert_ne!(
        Geometry::new(["a", "b"], ["c", "kv", "cpu"], 4, 512).names_digest,
        g.names_digest
    );
}

#[test]
fn a_header_of_another_block_size_or_version_says_so() {
    let big = geo(4096).encode_header();
    assert_eq!(
        decode_header(&big[..512]),
        Err(DecodeError::BlockSize {
            recorded: 4096,
            read: 512
        })
    );
    // A version 1 header: magic, version 1, then (in v1) the host count.
    let mut v1 = vec![0u8; 512];
    v1[0..8].copy_from_slice(b"FTFENCE\0");
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1[12..16].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(decode_header(&v1), Err(DecodeError::Version(1)));
    assert_eq!(decode_header(&[0u8; 4096]), Err(DecodeError::Blank));
    assert_eq!(decode_header(&[0u8; 1000]), Err(DecodeError::Length(1000)));
    let mut flipped = geo(512).encode_header();
    flipped[100] = 1;
    assert_eq!(decode_header(&flipped), Err(DecodeError::Crc));
}

#[test]
fn blocks_are_disjoint_in_range_and_each_host_writes_its_own_physical_blocks() {
    for block in [512, 4096] {
        let g = geo(block);
        // Block index -> writer (None: the header, written by whoever
        // initializes the region).
        let mut writer: BTreeMap<u64, Option<u32>> = BTreeMap::new();
        writer.insert(0, None);
        for h in 0..g.hosts {
            assert!(writer.insert(g.lease_block(h), Some(h)).is_none());
        }
        for v in 0..g.vms {
            for gen in 0..u64::from(g.ring) {
                for h in 0..g.hosts {
                    let b = g.paxos_block(v, gen, h);
                    assert!(b < g.blocks());
                    assert_eq!(g.paxos_position(b), Some((v, gen as u32, h)));
                    assert!(writer.insert(b, Some(h)).is_none(), "block {b} used twice");
                }
            }
        }
        assert_eq!(writer.len() as u64, g.blocks());
        assert_eq!(g.paxos_position(0), None);
        assert_eq!(g.paxos_position(g.lease_block(2)), None);
        assert_eq!(g.paxos_position(g.blocks()), None);
        assert_eq!(g.bytes(), g.blocks() * u64::from(block));
        // On a device with 4 KiB physical sectors, which hosts write into
        // each physical sector.
        let mut per_physical: BTreeMap<u64, BTreeSet<Option<u32>>> = BTreeMap::new();
        for (b, w) in &writer {
            per_physical
                .entry(b * u64::from(block) / 4096)
                .or_default()
                .insert(*w);
        }
        let shared = per_physical.values().filter(|w| w.len() > 1).count();
        if block >= 4096 {
            assert_eq!(shared, 0, "a 4 KiB block holds one host's record");
        } else {
            // 512-byte blocks (the packing of layout 1): most physical
            // sectors mix hosts, so one host's read-modify-write can tear
            // another's record.
            assert!(shared > g.blocks() as usize / 16, "{shared}");
        }
    }
    assert_eq!(geo(512).paxos_block(1, 7, 2), geo(512).paxos_block(1, 3, 2));
}

#[test]
fn lease_with_running_list_and_paxos_round_trip() {
    for block in [512usize, 4096] {
        let cap = LeaseRecord::capacity(block);
        assert_eq!(cap, if block == 512 { 29 } else { 253 });
        let mut l = LeaseRecord {
            host: 2,
            counter: 99,
            incarnation: 0xdead_beef,
            running: (0..cap as u32)
                .map(|i| Running {
                    vm: i,
                    generation: u64::from(i) * 3 + 1,
                })
                .collect(),
        };
        assert_eq!(LeaseRecord::decode(&l.encode(block)).unwrap(), l);
        l.running.clear();
        assert_eq!(LeaseRecord::decode(&l.encode(block)).unwrap(), l);
    }
    let p = PaxosBlock {
        host: 1,
        vm: 0,
        generation: 7,
        mbal: 12,
        bal: 9,
        inp: 3,
        owner: 3,
        inp_config: 4,
        owner_config: 4,
    };
    let s = p.encode(4096);
    assert_eq!(PaxosBlock::decode(&s).unwrap(), p);
    assert_eq!(view_paxos(&s, 1, 0, 7, 4), SlotView::Block(p));
    assert_eq!(view_paxos(&s, 1, 0, 3, 4), SlotView::Later(7));
    assert_eq!(view_paxos(&s, 1, 0, 11, 4), SlotView::Empty);
    assert!(matches!(view_paxos(&s, 2, 0, 7, 4), SlotView::Corrupt(w) if w.contains("writer")));
    assert!(matches!(view_paxos(&s, 1, 1, 7, 4), SlotView::Corrupt(w) if w.contains("vm index")));
    assert!(matches!(view_paxos(&s, 1, 0, 6, 4), SlotView::Corrupt(w) if w.contains("ring slot")));
}

#[test]
fn lease_records_that_no_writer_makes_do_not_decode() {
    let l = LeaseRecord {
        host: 0,
        counter: 1,
        incarnation: 1,
        running: vec![
            Running {
                vm: 0,
                generation: 2,
            },
            Running {
                vm: 1,
                generation: 1,
            },
        ],
    };
    let good = l.encode(512);
    let mut unsorted = good.clone();
    unsorted[32..48].copy_from_slice(&good[48..64]);
    unsorted[48..64].copy_from_slice(&good[32..48]);
    seal(&mut unsorted);
    assert!(
        matches!(LeaseRecord::decode(&unsorted), Err(DecodeError::Field(m)) if m.contains("sorted"))
    );
    let mut too_many = good.clone();
    too_many[12..16].copy_from_slice(&30u32.to_le_bytes());
    seal(&mut too_many);
    assert!(
        matches!(LeaseRecord::decode(&too_many), Err(DecodeError::Field(m)) if m.contains("holds 29"))
    );
    let mut padding = good.clone();
    padding[36] = 1;
    seal(&mut padding);
    assert_eq!(LeaseRecord::decode(&padding), Err(DecodeError::Reserved));
    let mut tail = good;
    tail[300] = 1;
    seal(&mut tail);
    assert_eq!(LeaseRecord::decode(&tail), Err(DecodeError::Reserved));
}

#[test]
fn only_blank_is_empty_damaged_and_foreign_blocks_are_corrupt() {
    for block in [512usize, 4096] {
        let p = PaxosBlock::empty(0, 0, 1).encode(block);
        for i in [0, 17, 300, block - 4, block - 1] {
            let mut bad = p.clone();
            bad[i] ^= 0x40;
            assert!(PaxosBlock::decode(&bad).is_err(), "flip at {i}");
            assert!(
                matches!(view_paxos(&bad, 0, 0, 1, 4), SlotView::Corrupt(_)),
                "flip at {i}"
            );
        }
        let zero = vec![0u8; block];
        assert_eq!(PaxosBlock::decode(&zero), Err(DecodeError::Blank));
        assert_eq!(view_paxos(&zero, 0, 0, 1, 4), SlotView::Empty);
        let mut one_bit = zero.clone();
        one_bit[block - 200] = 1;
        assert_eq!(
            view_paxos(&one_bit, 0, 0, 1, 4),
            SlotView::Corrupt("bad checksum".into())
        );
    }
    let p = PaxosBlock::empty(0, 0, 1).encode(512);
    assert_eq!(PaxosBlock::decode(&p[..100]), Err(DecodeError::Length(100)));
    let lease = LeaseRecord {
        host: 0,
        counter: 1,
        incarnation: 1,
        running: vec![],
    }
    .encode(512);
    assert_eq!(PaxosBlock::decode(&lease), Err(DecodeError::Magic));
    assert_eq!(
        view_paxos(&lease, 0, 0, 1, 4),
        SlotView::Corrupt("bad magic".into())
    );
    assert_eq!(decode_header(&lease), Err(DecodeError::Magic));
}

#[test]
fn pseudo_random_garbage_never_panics() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2000 {
        let len = if round % 2 == 0 { 512 } else { 4096 };
        let mut s = vec![0u8; len];
        for b in s.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Half the time, make the CRC right so the field checks run.
        if x & 1 == 0 {
            let magic = [PAXOS_MAGIC, LEASE_MAGIC, HEADER_MAGIC][(x >> 8) as usize % 3];
            s[..8].copy_from_slice(magic);
            seal(&mut s);
        }
        let _ = PaxosBlock::decode(&s);
        let _ = LeaseRecord::decode(&s);
        let _ = decode_header(&s);
        let _ = view_paxos(&s, 0, 0, x, 4);
    }
}
