//! Unit tests of the wire format and decoder (no sockets).

use std::sync::Arc;

use super::fuzzing::{decode_stream, memory_handshake, session_pair};
use super::wire::{
    self, seal_frame, seal_message, Decoder, MAX_FRAGMENT_DATA, MAX_FRAME_LEN, MAX_MESSAGE,
};
use super::{ChannelError, Hello, Message};

fn all_kinds() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            vm: "kv".into(),
            generation: 3,
            config_generation: 17,
            config_digest: [0x5a; 32],
            image_sha256: [0xab; 32],
            mem_mib: 64,
            start_exit: 0,
            primary_host: "host-a".into(),
            replication: super::PairMode::Lockstep,
            platform: Box::new(crate::platform::Platform {
                baseline: "x86-64-v1, 39-bit physical addresses".into(),
                cpuid: vec![crate::cpuid::Leaf {
                    function: 1,
                    index: 0,
                    flags: 0,
                    eax: crate::cpuid::SIGNATURE,
                    ebx: 0x800,
                    ecx: 0,
                    edx: 0x0789_a96d,
                }],
                cpuid_overrides: vec![],
                msrs: crate::platform::MsrPolicy::Unfiltered,
                pv_features_enforced: true,
                vmm: "ftvmm test".into(),
            }),
        }),
        Message::HelloReply {
            accepted: false,
            reason: "image differs".into(),
        },
        Message::Batch {
            first_seq: 42,
            count: 3,
            bytes: vec![1, 2, 3, 4, 5],
            sent_ns: 0,
        },
        Message::Ack {
            received: 45,
            replayed: 40,
            replayed_exit: 123_456,
            echo_ns: 0,
        },
        Message::Resign {
            reason: "storage lost".into(),
        },
        Message::Diverged {
            what: "at exit 526".into(),
        },
        Message::Bye {
            reason: "stopping".into(),
        },
        Message::Transfer {
            bytes: vec![1, 5, 0, 0, 0, 0],
        },
        Message::EpochPiece {
            bytes: vec![1, 0, 0, 0, 0, 0, 0, 0, 1],
        },
        Message::EpochAck { epoch: 7 },
        Message::Alive,
    ]
}

/// Seals `msgs` from the initiator with nonces from 0.
fn sealed(msgs: &[Message]) -> Vec<u8> {
    let (initiator, _) = session_pair();
    let mut out = Vec::new();
    let mut nonce = 0;
    for m in msgs {
        let bytes = wire::encode_message(m).unwrap();
        seal_message(initiator, &mut nonce, &bytes, &mut out).unwrap();
    }
    out
}

#[test]
fn every_kind_round_trips_through_the_decoder_in_any_piece_size() {
    let msgs = all_kinds();
    assert_eq!(
        msgs.len(),
        usize::from(super::wire::MESSAGE_TAGS),
        "all_kinds() must hold every Message variant"
    );
    let stream = sealed(&msgs);
    for step in [1, 3, 17, 4096, stream.len()] {
        let out = decode_stream(&stream, step);
        assert_eq!(out.messages, msgs, "step {step}");
        assert!(
            matches!(out.end, ChannelError::Closed),
            "step {step}: {:?}",
            out.end
        );
    }
}

#[test]
fn a_large_batch_is_split_into_frames_and_reassembled() {
    let big = Message::Batch {
        first_seq: 1,
        count: 9,
        bytes: (0..3 * MAX_FRAGMENT_DATA + 5).map(|i| i as u8).collect(),
        sent_ns: 0,
    };
    let msgs = vec![big, Message::Bye { reason: "x".into() }];
    let stream = sealed(&msgs);
    let out = decode_stream(&stream, 10_000);
    assert_eq!(out.messages, msgs);
}

#[test]
fn an_oversized_message_is_refused_before_anything_is_written() {
    let (initiator, _) = session_pair();
    let m = Message::Batch {
        first_seq: 0,
        count: 1,
        bytes: vec![0; MAX_MESSAGE],
        sent_ns: 0,
    };
    assert!(matches!(
        wire::encode_message(&m),
        Err(ChannelError::TooLarge { .. })
    ));
    let mut nonce = 5;
    let mut out = Vec::new();
    let err =
        seal_message(initiator, &mut nonce, &vec![0u8; MAX_MESSAGE + 1], &mut out).unwrap_err();
    assert!(matches!(err, ChannelError::TooLarge { .. }));
    assert_eq!((nonce, out.len()), (5, 0));
}

#[test]
fn reassembly_beyond_the_message_limit_is_refused() {
    let (initiator, responder) = session_pair();
    let mut d = Decoder::new(responder.clone());
    let mut frag = vec![0u8; MAX_FRAGMENT_DATA + 1]; // flag 0 = more follows
    frag[0] = 0;
    let frames_needed = MAX_MESSAGE / MAX_FRAGMENT_DATA + 2;
    for nonce in 0..frames_needed as u64 {
        let mut out = Vec::new();
        seal_frame(initiator, nonce, &frag, &mut out).unwrap();
        d.feed(&out);
        match d.poll() {
            Ok(None) => {}
            Err(ChannelError::TooLarge { max, .. }) => {
                assert_eq!(max, MAX_MESSAGE as u64);
                return;
            }
            other => panic!("frame {nonce}: {other:?}"),
        }
    }
    panic!("reassembly was never refused");
}

#[test]
fn bad_length_fields_are_refused() {
    let (_, responder) = session_pair();
    let mut d = Decoder::new(responder.clone());
    d.feed(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
    assert!(matches!(d.poll(), Err(ChannelError::TooLarge { .. })));
    assert!(matches!(d.poll(), Err(ChannelError::Dead)));
    let mut d = Decoder::new(responder.clone());
    d.feed(&10u32.to_be_bytes());
    assert!(matches!(d.poll(), Err(ChannelError::Malformed(_))));
}

fn frame_of(fragment: &[u8]) -> Vec<u8> {
    let (initiator, _) = session_pair();
    let mut out = Vec::new();
    seal_frame(initiator, 0, fragment, &mut out).unwrap();
    out
}

#[test]
fn authentic_but_malformed_plaintext_is_refused_by_kind() {
    let ack = wire::encode_message(&Message::Ack {
        received: 1,
        replayed: 0,
        replayed_exit: 0,
        echo_ns: 0,
    })
    .unwrap();
    type Case = (Vec<u8>, fn(&ChannelError) -> bool);
    let cases: Vec<Case> = vec![
        (vec![], |e| matches!(e, ChannelError::Malformed(_))),
        (vec![7, 1, 0], |e| matches!(e, ChannelError::Malformed(_))), // unknown fragment flag
        // A peer of the previous wire version.
        (
            vec![1, wire::VERSION - 1, 3],
            |e| matches!(e, ChannelError::Version { got } if *got == wire::VERSION - 1),
        ),
        (
            vec![1, wire::VERSION, wire::MESSAGE_TAGS],
            |e| matches!(e, ChannelError::UnknownTag { tag } if *tag == wire::MESSAGE_TAGS),
        ),
        (vec![1, wire::VERSION], |e| {
            matches!(e, ChannelError::Malformed(_))
        }),
        (
            [&[1][..], &ack, &[0]].concat(),
            |e| matches!(e, ChannelError::Malformed(s) if s.contains("trailing")),
        ),
        ([&[1][..], &ack[..ack.len() - 1]].concat(), |e| {
            matches!(e, ChannelError::Malformed(_))
        }),
    ];
    for (fragment, ok) in cases {
        let out = decode_stream(&frame_of(&fragment), 7);
        assert!(out.messages.is_empty());
        assert!(ok(&out.end), "fragment {fragment:?}: {:?}", out.end);
        assert!(out.end.is_refusal());
    }
}

#[test]
fn frames_of_another_session_or_direction_do_not_authenticate() {
    let (other_initiator, _) = memory_handshake(&[7u8; 32], &[9u8; 32]);
    let (_, responder) = session_pair();
    let msg = wire::encode_message(&Message::Bye { reason: "x".into() }).unwrap();
    let mut frame = Vec::new();
    let mut n = 0;
    seal_message(&other_initiator, &mut n, &msg, &mut frame).unwrap();
    let mut d = Decoder::new(responder.clone());
    d.feed(&frame);
    assert!(matches!(d.poll(), Err(ChannelError::Decrypt { frame: 0 })));
    // The responder's own outgoing frame reflected back at it.
    let mut reflected = Vec::new();
    let mut n = 0;
    seal_message(responder, &mut n, &msg, &mut reflected).unwrap();
    let mut d = Decoder::new(Arc::clone(responder));
    d.feed(&reflected);
    assert!(matches!(d.poll(), Err(ChannelError::Decrypt { frame: 0 })));
}

#[test]
fn stream_ending_inside_a_frame_or_message_is_truncated() {
    let stream = sealed(&all_kinds());
    let out = decode_stream(&stream[..stream.len() - 3], 64);
    assert_eq!(out.messages.len(), all_kinds().len() - 1);
    assert!(
        matches!(
            out.end,
            ChannelError::Truncated {
                message_bytes: 0,
                ..
            }
        ),
        "{:?}",
        out.end
    );
    let big = sealed(&[Message::Batch {
        first_seq: 0,
        count: 1,
        bytes: vec![1; 2 * MAX_FRAGMENT_DATA],
        sent_ns: 0,
    }]);
    let one_frame = 12 + u32::from_be_bytes(big[..4].try_into().unwrap()) as usize - 8;
    let out = decode_stream(&big[..one_frame], 1000);
    assert!(
        matches!(out.end, ChannelError::Truncated { frame_bytes: 0, message_bytes } if message_bytes > 0),
        "{:?}",
        out.end
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    #[test]
    fn random_input_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)) {
        super::fuzzing::run(&data);
    }

    #[test]
    fn random_tails_after_valid_frames_deliver_exactly_the_valid_prefix(
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
    ) {
        let msgs = all_kinds();
        let mut stream = sealed(&msgs);
        stream.extend_from_slice(&tail);
        let out = decode_stream(&stream, 50);
        proptest::prop_assert_eq!(out.messages, msgs);
        proptest::prop_assert!(out.end.is_refusal(), "{:?}", out.end);
    }
}

/// `BATCH_OVERHEAD` bounds what a batch message adds to its records, with
/// every header field at its largest; so a batch of the Primary's largest
/// size is one message (the sizes are tied at compile time in `primary`).
#[test]
fn the_largest_batch_fits_one_message() {
    let max = crate::lockstep::primary::MAX_BATCH_BYTES;
    let m = Message::Batch {
        first_seq: u64::MAX,
        count: u32::MAX,
        bytes: vec![0xa5; max],
        sent_ns: u64::MAX,
    };
    let bytes = wire::encode_message(&m).unwrap();
    assert!(
        bytes.len() <= max + wire::BATCH_OVERHEAD,
        "{} > {max} + {}",
        bytes.len(),
        wire::BATCH_OVERHEAD
    );
    // And it crosses the wire whole.
    let (_, responder) = session_pair();
    let mut d = Decoder::new(Arc::clone(responder));
    d.feed(&sealed(std::slice::from_ref(&m)));
    assert_eq!(d.poll().unwrap(), Some(m));
}

/// `Batch.bytes` is a byte string (`io::bytes`): the same bytes on the wire
/// as the `Vec<u8>` sequence it was.
#[test]
fn a_batch_encodes_as_before_its_bytes_became_a_byte_string() {
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let m = Message::Batch {
        first_seq: 1 << 40,
        count: 77,
        bytes: bytes.clone(),
        sent_ns: 123_456_789_012,
    };
    // Variant 2 of `Message`, then the fields as a sequence-of-u8 tuple.
    let mut want = vec![wire::VERSION, 2];
    want.extend(postcard::to_allocvec(&(1u64 << 40, 77u32, bytes, 123_456_789_012u64)).unwrap());
    assert_eq!(wire::encode_message(&m).unwrap(), want);
    assert_eq!(wire::decode_message(&want).unwrap(), m);
}

/// The fuzz body's epoch mode reaches the checkpoint Secondary: a real
/// epoch in pieces is applied, the same with one byte changed is not.
#[test]
fn the_fuzz_body_carries_epoch_pieces_to_a_checkpoint_secondary() {
    use crate::checkpoint::epoch::{encode_pieces_sized, Epoch, Page, PageData};
    let e = Epoch {
        number: 1,
        generation: 1,
        pages: vec![Page {
            gfn: 3,
            data: PageData::Raw(vec![7; 4096]),
        }],
        machine: vec![1, 2],
        ..Epoch::default()
    };
    let pieces = encode_pieces_sized(&e, 1000).unwrap();
    assert!(pieces.len() > 2);
    let mut input = vec![3u8];
    for p in &pieces {
        input.extend((p.len() as u16).to_le_bytes());
        input.extend(p);
    }
    super::fuzzing::run(&input);
    let out = decode_stream(&super::fuzzing::epoch_pieces(&input[1..], false), 7);
    assert_eq!(out.messages.len(), pieces.len());
    assert_eq!(super::fuzzing::checkpoint_secondary(out.messages), 1);
    // Mode bit 2: a keep-alive after every piece; the epoch still applies.
    input[0] = 7;
    super::fuzzing::run(&input);
    let out = decode_stream(&super::fuzzing::epoch_pieces(&input[1..], true), 7);
    assert_eq!(out.messages.len(), 2 * pieces.len());
    assert_eq!(
        out.messages
            .iter()
            .filter(|m| **m == Message::Alive)
            .count(),
        pieces.len()
    );
    assert_eq!(super::fuzzing::checkpoint_secondary(out.messages), 1);
    input[0] = 3;
    let last = input.len() - 1;
    input[last] ^= 1;
    super::fuzzing::run(&input);
    let out = decode_stream(&super::fuzzing::epoch_pieces(&input[1..], false), 7);
    assert_eq!(super::fuzzing::checkpoint_secondary(out.messages), 0);
}
