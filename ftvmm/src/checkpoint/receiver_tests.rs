//! The Secondary's receiver: order, refusals that change nothing, the disk
//! writes kept for a take-over.

use super::delta;
use super::epoch::{encode_pieces_sized, DiskWrite, Epoch, EpochError, Page, PageData, PAGE_SIZE};
use super::receiver::{ReceiveError, Receiver};

const PAGES: usize = 4;

fn epoch(number: u64, durable_through: u64, fill: u8) -> Epoch {
    Epoch {
        number,
        generation: 2,
        durable_through,
        pages: vec![Page {
            gfn: 1,
            data: PageData::Raw(vec![fill; PAGE_SIZE]),
        }],
        machine: vec![fill; 10],
        devices: vec![fill; 3],
        writes: vec![DiskWrite {
            sector: u64::from(fill),
            data: vec![fill; 512],
        }],
    }
}

fn feed(r: &mut Receiver<Vec<u8>>, e: &Epoch) -> Result<Option<u64>, ReceiveError> {
    // As the driver does: every piece goes in, whatever came before.
    let mut first_err = None;
    let mut last = Ok(None);
    for p in encode_pieces_sized(e, 512).unwrap() {
        last = r.on_piece(&p);
        if let Err(err) = &last {
            first_err.get_or_insert(err.clone());
        }
    }
    match (last, first_err) {
        (Ok(Some(n)), _) => Ok(Some(n)),
        (_, Some(err)) => Err(err),
        (last, None) => last,
    }
}

#[test]
fn epochs_apply_in_order_and_refusals_change_nothing() {
    let mut r = Receiver::new(2, vec![0u8; PAGES * PAGE_SIZE], 0);
    assert_eq!(feed(&mut r, &epoch(1, 0, 1)), Ok(Some(1)));
    assert_eq!(r.memory()[PAGE_SIZE], 1);
    // A gap: epoch 3 before 2.
    assert_eq!(
        feed(&mut r, &epoch(3, 0, 3)),
        Err(ReceiveError::Gap {
            got: 3,
            expected: 2
        })
    );
    // Another generation.
    let mut e = epoch(2, 0, 2);
    e.generation = 1;
    assert!(matches!(
        feed(&mut r, &e),
        Err(ReceiveError::Generation { got: 1, .. })
    ));
    // A page beyond memory.
    let mut e = epoch(2, 0, 2);
    e.pages.push(Page {
        gfn: PAGES as u64,
        data: PageData::Zero,
    });
    assert!(matches!(
        feed(&mut r, &e),
        Err(ReceiveError::GfnOutOfRange { gfn: 4, .. })
    ));
    // A torn one (last piece missing, then a resend of epoch 2 from its start).
    let ps = encode_pieces_sized(&epoch(2, 0, 2), 512).unwrap();
    for p in &ps[..ps.len() - 1] {
        assert_eq!(r.on_piece(p), Ok(None));
    }
    assert_eq!(
        r.memory()[PAGE_SIZE],
        1,
        "nothing of a partial epoch applied"
    );
    // The resend's piece 0 reports the torn one and starts over; the resend
    // applies.
    let mut it = encode_pieces_sized(&epoch(2, 1, 2), 512)
        .unwrap()
        .into_iter();
    assert!(matches!(
        r.on_piece(&it.next().unwrap()),
        Err(ReceiveError::Torn(EpochError::Missing { epoch: 2, .. }))
    ));
    let last: Vec<_> = it.map(|p| r.on_piece(&p)).collect();
    assert_eq!(last.last(), Some(&Ok(Some(2))));
    assert_eq!((r.last(), r.refused), (2, 4));
    // A duplicate of an applied epoch is acknowledged again, not applied.
    assert_eq!(feed(&mut r, &epoch(1, 0, 9)), Ok(Some(2)));
    assert_eq!(r.memory()[PAGE_SIZE], 2);
}

#[test]
fn take_over_hands_back_the_last_complete_epoch_and_unfinished_writes() {
    let mut r = Receiver::new(2, vec![0u8; PAGES * PAGE_SIZE], 0);
    let old = vec![0u8; PAGE_SIZE];
    let mut new = old.clone();
    new[7] = 7;
    for n in 1..=3u8 {
        let mut e = epoch(u64::from(n), u64::from(n).saturating_sub(2), n);
        if n == 3 {
            e.pages.insert(
                0,
                Page {
                    gfn: 0,
                    data: PageData::Delta(delta::encode(&old, &new, PAGE_SIZE).unwrap()),
                },
            );
        }
        assert_eq!(feed(&mut r, &e), Ok(Some(u64::from(n))));
    }
    // Half of epoch 4 arrived.
    let ps = encode_pieces_sized(&epoch(4, 3, 4), 512).unwrap();
    r.on_piece(&ps[0]).unwrap();
    let t = r.take_over();
    assert_eq!((t.epoch, t.generation), (3, 2));
    assert_eq!((t.memory[7], t.memory[PAGE_SIZE]), (7, 3));
    assert_eq!((t.machine, t.devices), (vec![3; 10], vec![3; 3]));
    // Epoch 3 said writes of epochs <= 1 are durable: 2 and 3 remain, in order.
    let sectors: Vec<u64> = t.writes.iter().map(|w| w.sector).collect();
    assert_eq!(sectors, vec![2, 3]);
}

/// The delta probe measures raw pages against the page as held before the
/// epoch: a page with one word changed would go as a few bytes, a page
/// changed everywhere raw; at most `PER_EPOCH` pages an epoch.
#[test]
fn the_delta_probe_measures_raw_pages_against_the_held_copy() {
    use super::epoch::{Epoch, Page, PageData, PAGE_SIZE};
    use super::receiver::{DeltaProbe, Receiver};
    let mut r = Receiver::new(1, vec![0u8; 600 * PAGE_SIZE], 0);
    let mut one_word = vec![0u8; PAGE_SIZE];
    one_word[100..104].copy_from_slice(&[1, 2, 3, 4]);
    let everywhere = vec![0x5au8; PAGE_SIZE];
    let mut pages = vec![
        Page {
            gfn: 0,
            data: PageData::Raw(one_word),
        },
        Page {
            gfn: 1,
            data: PageData::Raw(everywhere),
        },
    ];
    for gfn in 2..600 {
        pages.push(Page {
            gfn,
            data: PageData::Raw(vec![0x11; PAGE_SIZE]),
        });
    }
    let e = Epoch {
        number: 1,
        generation: 1,
        pages,
        ..Epoch::default()
    };
    for piece in super::epoch::encode_pieces(&e).unwrap() {
        r.on_piece(&piece).unwrap();
    }
    assert_eq!(r.last(), 1);
    let p = r.probe;
    assert_eq!(p.pages, DeltaProbe::PER_EPOCH as u64, "bounded per epoch");
    assert_eq!(p.raw_bytes, p.pages * (PAGE_SIZE as u64 + 1));
    // Page 0: a few bytes; every other page: raw (no smaller delta).
    let raw = PAGE_SIZE as u64 + 1;
    assert!(p.delta_bytes > (p.pages - 1) * raw && p.delta_bytes < p.pages * raw - 4000);
}

/// The serve loop's order: a complete epoch comes back checked, to be
/// acknowledged, and changes staging only when applied; nothing else is
/// taken in, and no take-over happens, in between.
#[test]
fn a_checked_epoch_is_acknowledged_before_its_apply_and_applied_before_anything_else() {
    use super::receiver::Piece;
    let mut r = Receiver::new(2, vec![0u8; PAGES * PAGE_SIZE], 0);
    let pieces = encode_pieces_sized(&epoch(1, 0, 7), 512).unwrap();
    let (last, rest) = pieces.split_last().unwrap();
    for p in rest {
        assert!(matches!(r.take_piece(p), Ok(Piece::More)));
    }
    let Ok(Piece::Ready(ready)) = r.take_piece(last) else {
        panic!("the last piece completes the epoch");
    };
    assert_eq!(ready.number(), 1);
    assert_eq!(r.last(), 0, "checked, not applied yet");
    assert!(r.memory().iter().all(|&b| b == 0), "staging unchanged");
    // Taking a piece in before the apply is a bug of the caller's.
    let again = encode_pieces_sized(&epoch(1, 0, 7), 512).unwrap();
    let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = r.take_piece(&again[0]);
    }));
    assert!(taken.is_err(), "a piece taken with an epoch not applied");
    assert_eq!(r.apply_ready(ready), 1);
    assert_eq!(&r.memory()[PAGE_SIZE..2 * PAGE_SIZE], &[7u8; PAGE_SIZE][..]);
    // A resend of it is acknowledged again, not applied again.
    let mut out = None;
    for p in &again {
        out = Some(r.take_piece(p));
    }
    assert!(matches!(out, Some(Ok(Piece::Again(1)))));
    // The same order through `on_piece_acking`: one ack per complete epoch
    // (and per resend), each of the epoch it returns.
    let mut acked = Vec::new();
    let mut last = None;
    for p in encode_pieces_sized(&epoch(2, 1, 9), 512).unwrap() {
        last = Some(r.on_piece_acking(&p, |e| acked.push(e)).unwrap());
    }
    assert_eq!((last, acked), (Some(Some(2)), vec![2]));
    assert_eq!(&r.memory()[PAGE_SIZE..2 * PAGE_SIZE], &[9u8; PAGE_SIZE][..]);
}
