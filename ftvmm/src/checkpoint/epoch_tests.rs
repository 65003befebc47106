//! The epoch wire format: round trips, every torn-epoch refusal by name,
//! fuzzing of pieces and bodies, and the measurement of page deltas.

use proptest::prelude::*;

use super::assemble::Assembler;
use super::delta;
use super::epoch::*;

fn page(b: u8) -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| b.wrapping_add(i as u8)).collect()
}

fn sample(number: u64) -> Epoch {
    let old = page(1);
    let mut new = old.clone();
    new[100] ^= 0x55;
    new[4000..4008].copy_from_slice(&number.to_le_bytes());
    Epoch {
        number,
        generation: 3,
        durable_through: number - 1,
        pages: vec![
            Page {
                gfn: 0,
                data: PageData::Zero,
            },
            Page {
                gfn: 7,
                data: PageData::Raw(page(9)),
            },
            Page {
                gfn: 8,
                data: PageData::Delta(delta::encode(&old, &new, PAGE_SIZE).unwrap()),
            },
        ],
        machine: vec![0xaa; 3000],
        devices: vec![0xbb; 50],
        writes: vec![
            DiskWrite {
                sector: 10,
                data: vec![1; 1024],
            },
            DiskWrite {
                sector: 11,
                data: vec![2; 512],
            },
        ],
    }
}

fn assemble(pieces: &[Vec<u8>]) -> Result<Option<Epoch>, EpochError> {
    let mut a = Assembler::new();
    let mut last = None;
    for p in pieces {
        last = a.on_piece(p)?;
    }
    Ok(last)
}

#[test]
fn an_epoch_round_trips_through_pieces() {
    let e = sample(5);
    let one = encode_pieces(&e).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(assemble(&one), Ok(Some(e.clone())));
    let many = encode_pieces_sized(&e, 1000).unwrap();
    assert!(many.len() > 5);
    assert!(many.iter().all(|p| p.len() <= PIECE_HEADER_BYTES + 1000));
    assert_eq!(assemble(&many), Ok(Some(e)));
    // Two epochs back to back through one assembler.
    let mut a = Assembler::new();
    for n in [6, 7] {
        let ps = encode_pieces_sized(&sample(n), 700).unwrap();
        let (last, init) = ps.split_last().unwrap();
        for p in init {
            assert_eq!(a.on_piece(p), Ok(None));
        }
        assert_eq!(a.on_piece(last).unwrap().unwrap().number, n);
    }
}

#[test]
fn torn_epochs_are_refused_by_name() {
    let e = sample(5);
    let ps = encode_pieces_sized(&e, 1000).unwrap();
    let n = ps.len();
    // A missing piece in the middle: the next one is out of order.
    let mut v = ps.clone();
    v.remove(2);
    assert_eq!(
        assemble(&v),
        Err(EpochError::OutOfOrder {
            epoch: 5,
            expected: 2,
            got: 3
        })
    );
    // Missing tail, then the next epoch starts: this one is torn.
    let mut v = ps[..n - 1].to_vec();
    v.extend(encode_pieces_sized(&sample(6), 1000).unwrap());
    match assemble(&v) {
        Err(EpochError::Missing {
            epoch: 5,
            have,
            total,
            ..
        }) => {
            assert_eq!((have as usize, total as usize), (n - 1, n))
        }
        other => panic!("{other:?}"),
    }
    // Swapped pieces.
    let mut v = ps.clone();
    v.swap(1, 2);
    assert!(matches!(
        assemble(&v),
        Err(EpochError::OutOfOrder {
            expected: 1,
            got: 2,
            ..
        })
    ));
    // A duplicated piece.
    let mut v = ps.clone();
    v.insert(2, ps[1].clone());
    assert!(matches!(
        assemble(&v),
        Err(EpochError::OutOfOrder {
            expected: 2,
            got: 1,
            ..
        })
    ));
    // A piece that starts in the middle.
    assert!(matches!(
        assemble(&ps[1..]),
        Err(EpochError::OutOfOrder { expected: 0, .. })
    ));
    // A wrong total in one piece.
    let mut v: Vec<Piece> = ps.iter().map(|b| decode_piece(b).unwrap()).collect();
    v[3].total += 1;
    let enc: Vec<Vec<u8>> = v.iter().map(encode_piece).collect();
    assert!(matches!(
        assemble(&enc),
        Err(EpochError::Disagrees { field: "total", .. })
    ));
    // A piece of another generation.
    let mut v: Vec<Piece> = ps.iter().map(|b| decode_piece(b).unwrap()).collect();
    v[1].generation = 4;
    let enc: Vec<Vec<u8>> = v.iter().map(encode_piece).collect();
    assert!(matches!(
        assemble(&enc),
        Err(EpochError::Disagrees {
            field: "generation",
            ..
        })
    ));
    // A flipped byte in a chunk: the digest catches it.
    let mut v: Vec<Piece> = ps.iter().map(|b| decode_piece(b).unwrap()).collect();
    v[2].chunk[10] ^= 1;
    let enc: Vec<Vec<u8>> = v.iter().map(encode_piece).collect();
    assert_eq!(assemble(&enc), Err(EpochError::Checksum { epoch: 5 }));
    // A short chunk: the length is wrong.
    let mut v: Vec<Piece> = ps.iter().map(|b| decode_piece(b).unwrap()).collect();
    v[2].chunk.pop();
    let enc: Vec<Vec<u8>> = v.iter().map(encode_piece).collect();
    assert!(matches!(
        assemble(&enc),
        Err(EpochError::Length { epoch: 5, .. })
    ));
    // Pieces that say epoch 5 around a body of epoch 6 (digest recomputed).
    let body = encode_body(&sample(6)).unwrap();
    let p = Piece {
        generation: 3,
        epoch: 5,
        index: 0,
        total: 1,
        body_len: body.len() as u64,
        body_sha256: sha256(&body),
        chunk: body,
    };
    assert!(matches!(
        assemble(&[encode_piece(&p)]),
        Err(EpochError::Identity {
            epoch: 5,
            body_epoch: 6,
            ..
        })
    ));
    // A truncated piece and another version.
    let short = &ps[0][..ps[0].len() - 1];
    assert!(matches!(
        assemble(&[short.to_vec()]),
        Err(EpochError::Truncated { .. })
    ));
    let mut v2 = ps[0].clone();
    v2[0] = 9;
    assert_eq!(assemble(&[v2]), Err(EpochError::Version { got: 9 }));
}

#[test]
fn invalid_bodies_are_refused_when_encoding_and_decoding() {
    let mut e = sample(1);
    e.pages.swap(0, 1);
    assert!(matches!(
        encode_body(&e),
        Err(EpochError::GfnOrder { index: 1, .. })
    ));
    let mut e = sample(1);
    e.writes[0].data.pop();
    assert!(matches!(
        encode_body(&e),
        Err(EpochError::Invalid {
            what: "disk write",
            ..
        })
    ));
    let mut e = sample(1);
    e.pages[1].data = PageData::Raw(vec![0; 100]);
    assert!(matches!(
        encode_body(&e),
        Err(EpochError::Invalid { what: "page", .. })
    ));
    let mut e = sample(1);
    e.pages[2].data = PageData::Delta(vec![0, 0, 5, 0]);
    assert!(matches!(
        encode_body(&e),
        Err(EpochError::Invalid {
            what: "page delta",
            ..
        })
    ));
    // A lying page count is refused before anything is reserved.
    let mut b = encode_body(&Epoch::default()).unwrap();
    b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_body(&b),
        Err(EpochError::Truncated {
            what: "page count",
            ..
        })
    ));
}

#[test]
fn deltas_apply_exactly_and_refuse_bad_runs() {
    let old = page(3);
    let mut new = old.clone();
    for i in [0, 1, 2, 9, 4095] {
        new[i] ^= 0xff;
    }
    let d = delta::encode(&old, &new, PAGE_SIZE).unwrap();
    let mut p = old.clone();
    delta::apply(&mut p, &d).unwrap();
    assert_eq!(p, new);
    // Unchanged page: one run of zeros.
    let d = delta::encode(&old, &old, PAGE_SIZE).unwrap();
    assert_eq!(d.len(), 4);
    // Random page: no delta pays.
    let rnd: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7919 % 251) as u8).collect();
    assert_eq!(delta::encode(&old, &rnd, PAGE_SIZE), None);
    let mut p = old.clone();
    assert!(delta::apply(&mut p, &[0, 0, 1]).is_err());
    assert!(delta::apply(&mut p, &[0, 16, 1, 0, 7]).is_err());
    assert!(matches!(
        delta::apply(&mut p, &[10, 0, 0, 0]),
        Err(delta::DeltaError::Uncovered { covered: 10, .. })
    ));
    assert_eq!(p, old, "a refused delta changes nothing");
}

/// Whether delta-encoding pages pays, in bytes on the wire, for patterns a
/// guest's dirty pages show (the decision and timings: `mod.rs`).
#[test]
fn measure_page_deltas() {
    let mut seed = 0x1234_5678_u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pages = 256;
    let old: Vec<Vec<u8>> = (0..pages)
        .map(|_| (0..PAGE_SIZE).map(|_| rnd() as u8).collect())
        .collect();
    type Change = fn(&mut dyn FnMut() -> u64, &mut [u8]);
    let patterns: [(&str, Change); 4] = [
        ("8 words changed", |r, p| {
            for _ in 0..8 {
                let w = (r() % 512) as usize * 8;
                p[w..w + 8].copy_from_slice(&r().to_le_bytes());
            }
        }),
        ("64 counters +1", |r, p| {
            let base = (r() % 8) as usize * 512;
            for k in 0..64 {
                let w = base + k * 8;
                let v = u64::from_le_bytes(p[w..w + 8].try_into().unwrap()).wrapping_add(1);
                p[w..w + 8].copy_from_slice(&v.to_le_bytes());
            }
        }),
        ("1 KiB rewritten", |r, p| {
            let s = (r() % 3) as usize * 1024;
            for b in &mut p[s..s + 1024] {
                *b = r() as u8;
            }
        }),
        ("page rewritten", |r, p| {
            p.iter_mut().for_each(|b| *b = r() as u8)
        }),
    ];
    for (name, change) in patterns {
        let mut bytes = 0;
        for o in &old {
            let mut n = o.clone();
            change(&mut rnd, &mut n);
            let d = delta::encode(o, &n, PAGE_SIZE);
            bytes += d.as_ref().map_or(PAGE_SIZE, Vec::len);
            if let Some(d) = d {
                let mut c = o.clone();
                delta::apply(&mut c, &d).unwrap();
                assert_eq!(c, n);
            }
        }
        let per_page = bytes / pages;
        eprintln!(
            "{name:16} {per_page:5} bytes/page ({:.1}% of raw)",
            100.0 * per_page as f64 / PAGE_SIZE as f64
        );
        match name {
            "8 words changed" => assert!(per_page < 200),
            "64 counters +1" => assert!(per_page < 600),
            "page rewritten" => assert_eq!(per_page, PAGE_SIZE),
            _ => {}
        }
    }
}

proptest! {
    #[test]
    fn fuzz_body_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz(&bytes);
    }

    /// Mutations of valid pieces and bodies: decode, re-encode, never panic.
    #[test]
    fn fuzz_body_never_panics_on_mutations(at in 0usize..5000, val in any::<u8>(), cut in 0usize..5000) {
        let e = sample(2);
        let body = encode_body(&e).unwrap();
        let piece = encode_pieces(&e).unwrap().remove(0);
        for mut b in [body, piece] {
            let i = at % b.len();
            b[i] = val;
            fuzz(&b);
            b.truncate(cut % (b.len() + 1));
            fuzz(&b);
        }
    }
}
