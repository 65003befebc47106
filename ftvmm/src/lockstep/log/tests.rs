use super::*;
use crate::io::{BlockStatus, TimeSource};
use proptest::prelude::*;

fn samples() -> Vec<Record> {
    let bodies = vec![
        Body::Events(vec![
            InputEvent::TimerTick,
            InputEvent::Frame {
                dev: 0,
                data: vec![1, 2, 3],
            },
            InputEvent::BlockDone {
                dev: 0,
                id: 7,
                status: BlockStatus::Ok,
                data: vec![9; 512],
            },
            InputEvent::ConsoleIn(b"x".to_vec()),
        ]),
        Body::Time(TimeRead {
            source: TimeSource::MonotonicNs,
            value: 123_456_789,
        }),
        Body::Check {
            rip: 0x20_1000,
            gpr_hash: 0xdead_beef,
        },
        Body::Outputs {
            count: 3,
            digest: 42,
        },
        Body::MemoryDigest { at: 1_000_000 },
        Body::End,
        Body::Mark,
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Record {
            seq: 10 + i as u64,
            n: 100 * i as u64,
            body,
        })
        .collect()
}

fn batch() -> Vec<u8> {
    let mut buf = Vec::new();
    for r in samples() {
        assert_eq!(encode(&r, &mut buf), Ok(1));
    }
    buf
}

/// A block read completion of `len` bytes of a recognisable pattern.
fn read_done(id: u64, len: usize) -> InputEvent {
    InputEvent::BlockDone {
        dev: 0,
        id,
        status: BlockStatus::Ok,
        data: {
            let mut d = vec![id as u8; len];
            for (i, b) in d.iter_mut().enumerate().step_by(4093) {
                *b = (i / 4093) as u8;
            }
            d
        },
    }
}

/// A record built by hand (any kind, flags and payload), CRC correct.
fn raw(kind: u8, flags: u8, seq: u64, n: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![MAGIC, VERSION, kind, flags];
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn every_kind_round_trips_in_a_batch() {
    assert_eq!(decode_batch(&batch(), 10).unwrap(), samples());
}

#[test]
fn a_gap_or_wrong_first_seq_is_refused() {
    assert!(matches!(
        decode_batch(&batch(), 11),
        Err(LogError::Sequence {
            expected: 11,
            got: 10,
            ..
        })
    ));
}

#[test]
fn each_header_field_is_checked() {
    let mut one = Vec::new();
    encode(&samples()[2], &mut one).unwrap();
    let mut m = one.clone();
    m[0] = 0;
    assert!(matches!(decode_piece(&m, 0), Err(LogError::Magic { .. })));
    let mut v = one.clone();
    v[1] = 1;
    assert!(matches!(
        decode_piece(&v, 0),
        Err(LogError::Version { got: 1, .. })
    ));
    let mut k = one.clone();
    k[2] = 9;
    assert!(matches!(
        decode_piece(&k, 0),
        Err(LogError::Kind { got: 9, .. })
    ));
    let mut r = one.clone();
    r[3] = 2;
    assert!(matches!(
        decode_piece(&r, 0),
        Err(LogError::Flags { got: 2, .. })
    ));
    let mut l = one.clone();
    l[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode_piece(&l, 0), Err(LogError::TooLong { .. })));
    let mut c = one.clone();
    c[30] ^= 1;
    assert!(matches!(
        decode_piece(&c, 0),
        Err(LogError::Checksum { .. })
    ));
}

#[test]
fn a_truncated_batch_yields_nothing() {
    let b = batch();
    for cut in [1, 10, 24, b.len() - 1] {
        let err = decode_batch(&b[..cut], 10).unwrap_err();
        assert!(
            matches!(err, LogError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn a_payload_that_lies_about_its_kind_is_refused_with_a_valid_crc() {
    // A Check record whose payload is one byte short, CRC recomputed.
    let buf = raw(3, 0, 0, 0, &[0; 15]);
    let err = decode_batch(&buf, 0).unwrap_err();
    assert!(err.to_string().contains("malformed check payload"), "{err}");
}

#[test]
fn the_worst_event_framing_is_within_event_framing_max() {
    for ev in [
        InputEvent::BlockDone {
            dev: u8::MAX,
            id: u64::MAX,
            status: BlockStatus::Unsupported,
            data: vec![0; 1 << 21],
        },
        InputEvent::Frame {
            dev: u8::MAX,
            data: vec![0; 1 << 21],
        },
        InputEvent::ConsoleIn(vec![0; 1 << 21]),
    ] {
        let size = postcard::to_allocvec(&vec![ev]).unwrap().len();
        assert!(size <= (1 << 21) + EVENT_FRAMING_MAX, "{size}");
    }
}

/// The case of issue 14: one virtio-blk read of the device maximum (16 MiB)
/// is one event larger than a record. Version 1 asserted (and aborted the
/// VMM); now it is split and comes back whole.
#[test]
fn a_16_mib_read_is_split_into_pieces_and_read_back_whole() {
    let rec = Record {
        seq: 5,
        n: 77,
        body: Body::Events(vec![read_done(3, 16 << 20), InputEvent::TimerTick]),
    };
    let mut buf = Vec::new();
    let pieces = encode(&rec, &mut buf).unwrap();
    assert_eq!(pieces, 17, "16 MiB of data plus framing is 17 pieces");
    // Every record is within the limit and all but the first are `More`.
    let mut off = 0;
    let mut kinds = Vec::new();
    while off < buf.len() {
        let (p, len) = decode_piece(&buf[off..], off).unwrap();
        assert!(len <= MAX_RECORD_LEN);
        assert_eq!(p.n, 77);
        kinds.push((p.kind, p.more));
        off += len;
    }
    assert_eq!(kinds[0], (1, true));
    assert!(kinds[1..16].iter().all(|k| *k == (KIND_MORE, true)));
    assert_eq!(kinds[16], (KIND_MORE, false));
    assert_eq!(decode_batch(&buf, 5).unwrap(), vec![rec.clone()]);
    // Re-encoding gives the same bytes (one encoding per body).
    let mut again = Vec::new();
    encode(&rec, &mut again).unwrap();
    assert_eq!(again, buf);
}

#[test]
fn a_split_body_is_put_together_across_batches_cut_anywhere() {
    let recs = [
        Record {
            seq: 0,
            n: 1,
            body: Body::Mark,
        },
        Record {
            seq: 1,
            n: 2,
            body: Body::Events((0..5).map(|i| read_done(i, 1 << 20)).collect()),
        },
        Record {
            seq: 7,
            n: 3,
            body: Body::End,
        },
    ];
    let mut records = Vec::new();
    for r in &recs {
        let mut one = Vec::new();
        let k = encode(r, &mut one).unwrap();
        let mut off = 0;
        for _ in 0..k {
            let (_, len) = decode_piece(&one[off..], off).unwrap();
            records.push(one[off..off + len].to_vec());
            off += len;
        }
    }
    assert_eq!(records.len(), 8, "mark, 6 pieces, end");
    // Cut into batches of every size from 1 to 8 records.
    for per in 1..=records.len() {
        let mut reader = Reader::new(0);
        let mut got = Vec::new();
        for (i, chunk) in records.chunks(per).enumerate() {
            let bytes: Vec<u8> = chunk.concat();
            let first = (i * per) as u64;
            got.extend(
                reader
                    .read_batch(&bytes, first, chunk.len() as u32)
                    .unwrap(),
            );
        }
        let ends: Vec<u64> = got.iter().map(|w| w.end_seq).collect();
        assert_eq!(ends, vec![1, 7, 8], "{per} records per batch");
        let bodies: Vec<Record> = got.into_iter().map(|w| w.rec).collect();
        assert_eq!(bodies, recs.to_vec(), "{per} records per batch");
        assert_eq!(reader.unfinished(), None);
    }
}

#[test]
fn pieces_that_break_the_rules_are_refused_and_break_the_reader() {
    let full = vec![7u8; MAX_PAYLOAD as usize];
    let head = raw(1, FLAG_MORE, 0, 4, &full);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("continues no body", raw(KIND_MORE, 0, 0, 4, &[1])),
        ("not 1048576", raw(1, FLAG_MORE, 0, 4, &[1, 2])),
        ("interrupts", [head.clone(), raw(6, 0, 1, 4, &[])].concat()),
        (
            "at exit 5",
            [head.clone(), raw(KIND_MORE, 0, 1, 5, &[1])].concat(),
        ),
        (
            "piece of 0 bytes",
            [head.clone(), raw(KIND_MORE, 0, 1, 4, &[])].concat(),
        ),
        (
            "with more to come",
            [head.clone(), raw(KIND_MORE, FLAG_MORE, 1, 4, &[1])].concat(),
        ),
    ];
    for (want, bytes) in cases {
        let count = if bytes.len() > MAX_RECORD_LEN { 2 } else { 1 };
        let mut r = Reader::new(0);
        let err = r.read_batch(&bytes, 0, count).unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
        assert_eq!(r.read_batch(&[], 0, 0), Err(LogError::Broken));
    }
}

#[test]
fn a_body_growing_past_max_body_is_refused() {
    let full = vec![0u8; MAX_PAYLOAD as usize];
    let mut r = Reader::new(0);
    let mut seq = 0;
    let mut batch = raw(1, FLAG_MORE, 0, 0, &full);
    seq += 1;
    let err = loop {
        batch.extend(raw(KIND_MORE, FLAG_MORE, seq, 0, &full));
        seq += 1;
        if seq % 4 == 0 {
            if let Err(e) = r.read_batch(&batch, seq - 4, 4) {
                break e;
            }
            batch.clear();
        }
        assert!(seq < 2 * MAX_BODY_PIECES, "never refused");
    };
    assert!(err.to_string().contains("grows past"), "{err}");
}

#[test]
fn a_count_or_start_that_does_not_match_is_refused() {
    let b = batch();
    let mut r = Reader::new(10);
    assert_eq!(
        r.read_batch(&b, 10, 6),
        Err(LogError::Count { said: 6, holds: 7 })
    );
    let mut r = Reader::new(10);
    assert_eq!(
        r.read_batch(&b, 9, 7),
        Err(LogError::Start {
            expected: 10,
            got: 9
        })
    );
    let mut r = Reader::new(10);
    assert_eq!(r.read_batch(&b, 10, 7).unwrap().len(), 7);
    assert_eq!(r.next_seq(), 17);
}

#[test]
fn a_batch_ending_inside_a_body_is_unfinished_for_decode_batch() {
    let rec = Record {
        seq: 0,
        n: 0,
        body: Body::Events(vec![read_done(0, 3 << 20)]),
    };
    let mut buf = Vec::new();
    encode(&rec, &mut buf).unwrap();
    let (_, first) = decode_piece(&buf, 0).unwrap();
    assert_eq!(
        decode_batch(&buf[..first], 0),
        Err(LogError::Unfinished { seq: 0 })
    );
}

#[test]
fn a_body_longer_than_max_body_is_an_error_not_a_panic() {
    let huge = Body::Events(vec![read_done(0, MAX_BODY)]);
    let err = Encoded::new(9, &huge).err().expect("refused");
    assert!(
        matches!(err, LogError::BodyTooLong { n: 9, len, .. } if len > MAX_BODY),
        "{err}"
    );
    let mut out = Vec::new();
    assert!(encode(
        &Record {
            seq: 0,
            n: 9,
            body: huge
        },
        &mut out
    )
    .is_err());
    assert!(out.is_empty(), "nothing written");
}

#[test]
fn events_that_fit_fills_a_body_and_takes_at_least_one() {
    let evs: Vec<InputEvent> = (0..40).map(|i| read_done(i, 1 << 20)).collect();
    let k = events_that_fit(&evs);
    assert!(k > 20 && k < 32, "{k}");
    assert!(Encoded::events(0, &evs[..k]).is_ok());
    assert!(Encoded::events(0, &evs[..k + 1]).is_err());
    let big = [read_done(0, MAX_BODY + 1), InputEvent::TimerTick];
    assert_eq!(events_that_fit(&big), 1);
    assert_eq!(events_that_fit(&[]), 0);
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), seq in any::<u64>()) {
        let _ = decode_batch(&bytes, seq);
    }

    #[test]
    fn any_single_bit_flip_is_caught(pos in 0usize..400, bit in 0u8..8) {
        let b = batch();
        let pos = pos % b.len();
        let mut m = b.clone();
        m[pos] ^= 1 << bit;
        prop_assert!(decode_batch(&m, 10).is_err());
    }
}
