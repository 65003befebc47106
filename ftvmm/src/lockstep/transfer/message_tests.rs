//! Codec tests: every variant round-trips; each refusal names its field;
//! caps are enforced on both sides; arbitrary bytes never panic.

use proptest::prelude::*;

use super::message::*;

fn every_variant() -> Vec<Message> {
    vec![
        Message::Offer {
            vm: "web-1".into(),
            generation: 7,
            memory_bytes: 1 << 30,
            page_size: 4096,
            platform_sha256: [0xab; 32],
        },
        Message::Accept,
        Message::Refuse {
            reason: "page size 8192, expected 4096".into(),
        },
        Message::Pages {
            round: 3,
            pages: vec![
                Page {
                    gfn: 1,
                    bytes: vec![1; 16],
                },
                Page {
                    gfn: 9,
                    bytes: vec![2; 16],
                },
            ],
        },
        Message::RoundEnd {
            round: 3,
            pages_sent: 2,
            dirty_left: 5,
        },
        Message::RoundAck { round: 3 },
        Message::Switch {
            round: 4,
            state: vec![7; 100],
            memory_sha256: [1; 32],
            log_start_exit: 123_456,
        },
        Message::Restored {
            memory_sha256: [1; 32],
        },
        Message::Abort {
            reason: "memory digest mismatch".into(),
        },
        Message::Paired { generation: 3 },
    ]
}

#[test]
fn every_variant_round_trips() {
    let all = every_variant();
    assert_eq!(all.len(), 10, "a new variant needs a case here");
    for m in all {
        let bytes = encode(&m).unwrap();
        assert_eq!(decode(&bytes).unwrap(), m);
        fuzz(&bytes);
        // Every proper prefix is refused as truncated, never a panic.
        for n in 0..bytes.len() {
            let e = decode(&bytes[..n]).unwrap_err();
            assert!(
                matches!(e, TransferError::Truncated { .. }),
                "{m:?} at {n}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(TransferError::Trailing { extra: 1, .. })
        ));
    }
}

#[test]
fn header_refusals() {
    assert_eq!(decode(&[1, 1]), Err(TransferError::Version { got: 1 }));
    assert_eq!(
        decode(&[VERSION, 10]),
        Err(TransferError::UnknownTag { tag: 10, at: 1 })
    );
    assert!(matches!(
        decode(&[]),
        Err(TransferError::Truncated {
            what: "version",
            ..
        })
    ));
}

#[test]
fn pages_refusals_name_the_page() {
    let pages = |gfns: &[u64], len: usize| Message::Pages {
        round: 0,
        pages: gfns
            .iter()
            .map(|&gfn| Page {
                gfn,
                bytes: vec![0; len],
            })
            .collect(),
    };
    let e = encode(&pages(&[3, 3], 8)).unwrap_err();
    assert!(
        matches!(
            e,
            TransferError::GfnOrder {
                index: 1,
                prev: 3,
                gfn: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        encode(&pages(&[], 8)),
        Err(TransferError::Empty { .. })
    ));
    // A page of no bytes is a zero page, and round-trips.
    let zero = pages(&[1], 0);
    assert_eq!(decode(&encode(&zero).unwrap()), Ok(zero));
    let e = encode(&pages(&[1], MAX_PAGE_BYTES + 1)).unwrap_err();
    assert!(
        matches!(e, TransferError::TooLong { what: "page", .. }),
        "{e}"
    );
    // Over the per-message data cap.
    let n = MAX_PAGES_DATA_BYTES / MAX_PAGE_BYTES + 1;
    let gfns: Vec<u64> = (0..n as u64).collect();
    let e = encode(&pages(&gfns, MAX_PAGE_BYTES)).unwrap_err();
    assert!(
        matches!(
            e,
            TransferError::TooLong {
                what: "page data",
                ..
            }
        ),
        "{e}"
    );
    // The same refusals on the decode side, from hand-made bytes.
    let mut b = encode(&pages(&[5, 6], 4)).unwrap();
    b[2 + 4 + 4 + 16..2 + 4 + 4 + 24].copy_from_slice(&5u64.to_le_bytes());
    let e = decode(&b).unwrap_err();
    assert!(
        matches!(
            e,
            TransferError::GfnOrder {
                index: 1,
                prev: 5,
                gfn: 5,
                at: 26
            }
        ),
        "{e}"
    );
    // A huge count in a short message is refused before allocating.
    let mut b = vec![VERSION, 3, 0, 0, 0, 0];
    b.extend_from_slice(&(MAX_PAGES_PER_MESSAGE as u32).to_le_bytes());
    assert!(matches!(
        decode(&b),
        Err(TransferError::Truncated {
            what: "page entries",
            ..
        })
    ));
    b[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&b),
        Err(TransferError::TooLong {
            what: "page count",
            ..
        })
    ));
}

#[test]
fn text_and_state_caps() {
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    let e = encode(&Message::Abort { reason: long }).unwrap_err();
    assert!(matches!(
        e,
        TransferError::TooLong {
            what: "abort reason",
            ..
        }
    ));
    let e = encode(&Message::Switch {
        round: 0,
        state: vec![0; MAX_STATE_BYTES + 1],
        memory_sha256: [0; 32],
        log_start_exit: 0,
    })
    .unwrap_err();
    assert!(matches!(
        e,
        TransferError::TooLong {
            what: "switch state",
            ..
        }
    ));
    // A Switch at its cap encodes.
    let m = Message::Switch {
        round: 0,
        state: vec![0; MAX_STATE_BYTES],
        memory_sha256: [0; 32],
        log_start_exit: 0,
    };
    assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
    let mut b = vec![VERSION, 8, 2, 0, 0xff, 0xfe];
    assert!(matches!(
        decode(&b),
        Err(TransferError::NotUtf8 {
            what: "abort reason",
            at: 2
        })
    ));
    b.truncate(2);
    b.extend_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(decode(&b), Err(TransferError::TooLong { .. })));
    assert!(matches!(
        decode(&vec![VERSION; MAX_MESSAGE_BYTES + 1]),
        Err(TransferError::MessageTooLarge { .. })
    ));
}

#[test]
fn a_full_pages_message_at_the_cap_encodes() {
    let per = pages_per_message(4096);
    assert_eq!(per, 1024);
    assert_eq!(pages_per_message(1), MAX_PAGES_PER_MESSAGE);
    let m = Message::Pages {
        round: 1,
        pages: (0..per as u64)
            .map(|gfn| Page {
                gfn,
                bytes: vec![gfn as u8; 4096],
            })
            .collect(),
    };
    let b = encode(&m).unwrap();
    assert!(b.len() <= MAX_MESSAGE_BYTES);
    assert_eq!(decode(&b).unwrap(), m);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz(&data);
    }

    #[test]
    fn mutated_valid_messages_never_panic(i in 0usize..9, at in any::<usize>(), byte in any::<u8>()) {
        let mut b = encode(&every_variant()[i]).unwrap();
        let at = at % b.len();
        b[at] = byte;
        fuzz(&b);
    }
}
