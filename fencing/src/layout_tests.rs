use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn geo(block: u32) -> Geometry {
    Geometry::new(["a", "b", "c"], 2, 4, block)
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
        Geometry::new(["a", "b", "x"], 2, 4, 512).names_digest,
        g.names_digest
    );
    assert_ne!(
        Geometry::new(["b", "a", "c"], 2, 4, 512),
        g,
        "host order matters"
    );
    // The VMs are not in the header: only how many slots the region holds.
    assert_eq!(
        Geometry::new(["a", "b", "c"], 9, 4, 512).names_digest,
        g.names_digest
    );
}

/// `examples/cluster.toml` (hosts a, b, c; VM kv; a 16 MiB region) with
/// `vms` extra VMs after kv.
fn example(vms: usize) -> config_schema::ClusterConfig {
    let mut c = config_schema::parse(include_str!("../../examples/cluster.toml"))
        .unwrap()
        .config;
    for i in 0..vms {
        let mut v = c.vms[0].clone();
        v.name = format!("vm{i}");
        c.vms.push(v);
    }
    c
}

#[test]
fn the_slots_are_what_the_region_holds_whatever_the_vms() {
    let (one, three) = (example(0), example(2));
    for block in [512, 4096] {
        assert_eq!(
            Geometry::of_config(&one, block),
            Geometry::of_config(&three, block)
        );
    }
    // 16 MiB: 32768 blocks of 512 bytes, 16 * 3 per slot after 4: capped.
    assert_eq!(Geometry::of_config(&one, 512).vms, MAX_SLOTS);
    // 4096 blocks of 4 KiB: (4096 - 4) / 48 = 85 slots.
    assert_eq!(Geometry::of_config(&one, 4096).vms, 85);
    assert!(Geometry::of_config(&one, 4096).bytes() <= 16 << 20);
    let mut tiny = one.clone();
    tiny.storage.fencing.size_mib = 0;
    assert_eq!(Geometry::of_config(&tiny, 512).vms, 0);
}

/// The version 2 geometry of a config: its VM count, and the digest of
/// its host names, `0x01`, its VM names.
fn v2_of(c: &config_schema::ClusterConfig, block: u32) -> Geometry {
    let mut bytes = Vec::new();
    for n in c.hosts.iter().map(|h| &h.name) {
        bytes.extend_from_slice(n.as_bytes());
        bytes.push(0);
    }
    bytes.push(1);
    for n in c.vms.iter().map(|v| &v.name) {
        bytes.extend_from_slice(n.as_bytes());
        bytes.push(0);
    }
    Geometry {
        block,
        hosts: c.hosts.len() as u32,
        vms: c.vms.len() as u32,
        ring: DEFAULT_RING,
        names_digest: crc32c::crc32c(&bytes),
    }
}

#[test]
fn a_version_2_header_upgrades_only_for_its_own_vms_in_their_positions() {
    let c = example(1);
    let g = Geometry::of_config(&c, 512);
    let v2 = v2_of(&c, 512);
    assert!(g.upgrades_v2(&c, &v2));
    // Its blocks are where version 3 puts them.
    for v in 0..v2.vms {
        for h in 0..v2.hosts {
            assert_eq!(v2.paxos_block(v, 5, h), g.paxos_block(v, 5, h));
        }
    }
    assert_eq!(v2.lease_block(2), g.lease_block(2));
    // Another VM list (one added, renamed, reordered), another slot, block
    // size or ring: no.
    assert!(!g.upgrades_v2(&example(2), &v2));
    let mut renamed = c.clone();
    renamed.vms[1].name = "other".into();
    assert!(!g.upgrades_v2(&renamed, &v2));
    let mut swapped = c.clone();
    swapped.vms.swap(0, 1);
    assert!(!g.upgrades_v2(&swapped, &v2));
    let mut slotted = c.clone();
    slotted.vms[1].slot = Some(7);
    assert!(!g.upgrades_v2(&slotted, &v2));
    assert!(!Geometry::of_config(&c, 4096).upgrades_v2(&c, &v2));
    assert!(!g.upgrades_v2(&c, &Geometry { ring: 8, ..v2 }));
    // An explicit slot equal to the position is the same layout.
    let mut same = c.clone();
    same.vms[1].slot = Some(1);
    assert!(g.upgrades_v2(&same, &v2));
    // The header of version 2 decodes as such.
    let mut h = v2.encode_header();
    h[8..12].copy_from_slice(&VERSION_2.to_le_bytes());
    seal(&mut h);
    assert_eq!(
        decode_header(&h),
        Ok(Header {
            version: VERSION_2,
            geometry: v2
        })
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
