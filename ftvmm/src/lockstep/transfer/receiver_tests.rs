//! Receiver tests: offer checks, refusals of bad pages and rounds, digest
//! check on Switch, finality.

use super::message::{Message, Page};
use super::receiver::*;

const PS: u32 = 16;

fn expected() -> Expected {
    Expected {
        vm: "web-1".into(),
        memory_bytes: 4 * u64::from(PS),
        page_size: PS,
        platform_sha256: [7; 32],
    }
}

fn offer() -> Message {
    let e = expected();
    Message::Offer {
        vm: e.vm,
        generation: 3,
        memory_bytes: e.memory_bytes,
        page_size: e.page_size,
        platform_sha256: e.platform_sha256,
    }
}

fn accepted() -> Receiver<VecMemory> {
    let mut r = Receiver::new(expected(), VecMemory::new(4 * u64::from(PS), PS));
    assert_eq!(r.on_message(offer()), vec![RxAction::Send(Message::Accept)]);
    r
}

fn pages(round: u32, gfns: &[u64], fill: u8) -> Message {
    Message::Pages {
        round,
        pages: gfns
            .iter()
            .map(|&gfn| Page {
                gfn,
                bytes: vec![fill; PS as usize],
            })
            .collect(),
    }
}

fn is_abort(a: &[RxAction], needle: &str) -> bool {
    matches!(a, [RxAction::Send(Message::Abort { reason }), RxAction::Failed(_)] if reason.contains(needle))
}

#[test]
fn a_whole_transfer() {
    let mut r = accepted();
    assert!(r.on_message(pages(0, &[0, 1, 2, 3], 1)).is_empty());
    let end = |round, n| Message::RoundEnd {
        round,
        pages_sent: n,
        dirty_left: 1,
    };
    assert_eq!(
        r.on_message(end(0, 4)),
        vec![RxAction::Send(Message::RoundAck { round: 0 })]
    );
    assert!(r.on_message(pages(1, &[2], 9)).is_empty());
    let mut want = VecMemory::new(64, PS);
    want.bytes.fill(1);
    want.bytes[32..48].fill(9);
    let sha = want.sha256();
    let a = r.on_message(Message::Switch {
        round: 1,
        state: vec![42],
        memory_sha256: sha,
        log_start_exit: 1000,
    });
    assert_eq!(
        a,
        vec![
            RxAction::Restore {
                generation: 3,
                state: vec![42],
                log_start_exit: 1000
            },
            RxAction::Send(Message::Restored { memory_sha256: sha }),
            RxAction::Done,
        ]
    );
    assert!(r.is_done());
    assert_eq!(r.memory(), &want);
    // Pages after the Switch are rejected and change nothing.
    let a = r.on_message(pages(1, &[0], 5));
    assert!(matches!(a.as_slice(), [RxAction::Rejected(_)]), "{a:?}");
    assert!(r.is_done());
    assert_eq!(r.memory(), &want);
    assert!(r.on_cut("late").is_empty());
}

#[test]
fn offers_that_do_not_match_are_refused_with_the_reason() {
    type Change = Box<dyn Fn(&mut Message)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|m| {
                if let Message::Offer { vm, .. } = m {
                    *vm = "db".into()
                }
            }),
            "vm \"db\"",
        ),
        (
            Box::new(|m| {
                if let Message::Offer { memory_bytes, .. } = m {
                    *memory_bytes = 1
                }
            }),
            "memory 1 bytes",
        ),
        (
            Box::new(|m| {
                if let Message::Offer { page_size, .. } = m {
                    *page_size = 4096
                }
            }),
            "page size 4096",
        ),
        (
            Box::new(|m| {
                if let Message::Offer {
                    platform_sha256, ..
                } = m
                {
                    platform_sha256[0] = 0
                }
            }),
            "platform",
        ),
    ];
    for (change, needle) in cases {
        let mut o = offer();
        change(&mut o);
        let mut r = Receiver::new(expected(), VecMemory::new(64, PS));
        let a = r.on_message(o);
        assert!(
            matches!(&a[..], [RxAction::Send(Message::Refuse { reason }), RxAction::Failed(ReceiveError::Offer(_))] if reason.contains(needle)),
            "{needle}: {a:?}"
        );
        assert!(r.is_failed());
    }
}

#[test]
fn bad_pages_and_rounds_abort() {
    let mut r = accepted();
    assert!(is_abort(
        &r.on_message(pages(0, &[4], 1)),
        "outside guest memory"
    ));
    let mut r = accepted();
    assert!(is_abort(
        &r.on_message(pages(1, &[0], 1)),
        "Pages of round 1 in round 0"
    ));
    let mut r = accepted();
    let short = Message::Pages {
        round: 0,
        pages: vec![Page {
            gfn: 0,
            bytes: vec![0; 8],
        }],
    };
    assert!(is_abort(&r.on_message(short), "is 8 bytes"));
    let mut r = accepted();
    r.on_message(pages(0, &[0, 1], 1));
    let end = Message::RoundEnd {
        round: 0,
        pages_sent: 3,
        dirty_left: 0,
    };
    assert!(is_abort(&r.on_message(end), "3 pages, 2 were received"));
    let mut r = Receiver::new(expected(), VecMemory::new(64, PS));
    assert!(is_abort(
        &r.on_message(pages(0, &[0], 1)),
        "Pages in AwaitOffer"
    ));
    let mut r = accepted();
    assert!(is_abort(&r.on_message(offer()), "Offer in round 0"));
}

#[test]
fn digest_mismatch_aborts() {
    let mut r = accepted();
    r.on_message(pages(0, &[0, 1, 2, 3], 1));
    let a = r.on_message(Message::Switch {
        round: 0,
        state: vec![],
        memory_sha256: [0; 32],
        log_start_exit: 0,
    });
    assert_eq!(
        a,
        vec![
            RxAction::Send(Message::Abort {
                reason: "memory digest mismatch".into()
            }),
            RxAction::Failed(ReceiveError::DigestMismatch),
        ]
    );
    assert!(r.is_failed());
}

#[test]
fn abort_and_cut_fail_without_answer() {
    let mut r = accepted();
    let a = r.on_message(Message::Abort {
        reason: "cancelled".into(),
    });
    assert_eq!(
        a,
        vec![RxAction::Failed(ReceiveError::PeerAborted(
            "cancelled".into()
        ))]
    );
    let mut r = accepted();
    assert_eq!(
        r.on_cut("eof"),
        vec![RxAction::Failed(ReceiveError::LinkLost("eof".into()))]
    );
    assert!(r.on_cut("again").is_empty());
}

mod any_sequence {
    use proptest::prelude::*;

    use super::*;

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            Just(offer()),
            (
                0u32..3,
                proptest::collection::btree_set(0u64..6, 1..4),
                any::<u8>()
            )
                .prop_map(|(round, gfns, fill)| pages(
                    round,
                    &gfns.into_iter().collect::<Vec<_>>(),
                    fill
                )),
            (0u32..3, 0u64..6).prop_map(|(round, pages_sent)| Message::RoundEnd {
                round,
                pages_sent,
                dirty_left: 0
            }),
            (0u32..3, any::<bool>()).prop_map(|(round, zero)| Message::Switch {
                round,
                state: vec![1],
                memory_sha256: if zero {
                    [0; 32]
                } else {
                    VecMemory::new(64, PS).sha256()
                },
                log_start_exit: 0,
            }),
            Just(Message::Accept),
            Just(Message::RoundAck { round: 0 }),
            Just(Message::Abort { reason: "x".into() }),
        ]
    }

    proptest! {
        /// Any sequence of messages: no panic, Done and Failed final, at most
        /// one Restore, and a Restore only with memory matching the digest.
        #[test]
        fn any_message_sequence_keeps_the_receiver_sound(ms in proptest::collection::vec(message(), 0..12)) {
            let mut r = Receiver::new(expected(), VecMemory::new(64, PS));
            let mut restores = 0;
            for m in ms {
                let (done, failed) = (r.is_done(), r.is_failed());
                let digest = r.memory().sha256();
                for a in r.on_message(m.clone()) {
                    if let RxAction::Restore { .. } = a {
                        restores += 1;
                        let Message::Switch { memory_sha256, .. } = m else { panic!("Restore without Switch") };
                        prop_assert_eq!(memory_sha256, digest);
                    }
                }
                if done { prop_assert!(r.is_done()); }
                if failed { prop_assert!(r.is_failed()); }
            }
            prop_assert!(restores <= 1);
        }
    }
}
