//! The body of the `channel_frame` fuzz target (ftvmm/fuzz), here so the
//! crate's own tests run the same code on random inputs.
//!
//! A fixed session pair comes from a real `IK` handshake in memory. Input byte
//! 0 picks the mode: even — the rest is the raw TCP stream the Secondary
//! receives (framing, nonce and tag checks); odd — the rest is a list of
//! `len:u16le flag-and-data` fragments that are sealed as frames with correct
//! nonces (one bit of the length may skew a nonce), so reassembly and the
//! message decoder see arbitrary authentic plaintext; with bit 1 also set,
//! each `len:u16le bytes` item is a checkpoint epoch piece, sent as a whole
//! [`Message::EpochPiece`], and with bit 2 also set each piece is followed by
//! a [`Message::Alive`] (a keep-alive between the pieces of an epoch, as the
//! keep-alive thread interleaves them). Every decoded message then goes to a checkpoint
//! Secondary's handler (`checkpoint::remote::on_message`, a staging copy of
//! 16 pages), as on a real link, until it ends the link. Oracles: no panic; a
//! decoder that refused something yields only `Dead` afterwards; every decoded
//! message re-encodes to bytes that decode to the same message; the
//! Secondary acknowledges only epochs it applied, in order; keep-alives
//! between the pieces change nothing it applies or acknowledges.

use std::sync::{Arc, OnceLock};

use snow::{Builder, StatelessTransportState};

use super::wire::{self, Decoder, MAX_FRAGMENT};
use super::{handshake::PATTERN, ChannelError, Message};

/// An (initiator, responder) transport pair from an in-memory handshake with
/// fixed keys; the same every call.
pub fn session_pair() -> &'static (Arc<StatelessTransportState>, Arc<StatelessTransportState>) {
    static PAIR: OnceLock<(Arc<StatelessTransportState>, Arc<StatelessTransportState>)> =
        OnceLock::new();
    PAIR.get_or_init(|| {
        let (i, r) = memory_handshake(&[7u8; 32], &[9u8; 32]);
        (Arc::new(i), Arc::new(r))
    })
}

/// Runs a full `IK` handshake between two keys without sockets.
pub fn memory_handshake(
    initiator_key: &[u8; 32],
    responder_key: &[u8; 32],
) -> (StatelessTransportState, StatelessTransportState) {
    let responder_pub = config_schema::keys::host_public_key(responder_key);
    let params = || PATTERN.parse().expect("valid Noise pattern");
    let mut i = Builder::new(params())
        .local_private_key(initiator_key)
        .remote_public_key(&responder_pub)
        .prologue(b"ftvmm logging channel v1")
        .build_initiator()
        .expect("initiator");
    let mut r = Builder::new(params())
        .local_private_key(responder_key)
        .prologue(b"ftvmm logging channel v1")
        .build_responder()
        .expect("responder");
    let (mut m, mut p) = ([0u8; 1024], [0u8; 1024]);
    let n = i.write_message(&[], &mut m).expect("msg 1");
    r.read_message(&m[..n], &mut p).expect("read msg 1");
    let n = r.write_message(&[], &mut m).expect("msg 2");
    i.read_message(&m[..n], &mut p).expect("read msg 2");
    (
        i.into_stateless_transport_mode()
            .expect("initiator transport"),
        r.into_stateless_transport_mode()
            .expect("responder transport"),
    )
}

/// What one fuzz input produced.
#[derive(Debug)]
pub struct Outcome {
    pub messages: Vec<Message>,
    /// The error that ended decoding (`Closed` if the input ended cleanly).
    pub end: ChannelError,
}

/// Feeds the stream to a fresh Secondary-side decoder, in pieces of `step`
/// bytes, until it refuses something or the stream ends.
pub fn decode_stream(stream: &[u8], step: usize) -> Outcome {
    let (_, responder) = session_pair();
    let mut d = Decoder::new(responder.clone());
    let mut messages = Vec::new();
    for piece in stream.chunks(step.max(1)) {
        d.feed(piece);
        loop {
            match d.poll() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(end) => {
                    assert!(
                        matches!(d.poll(), Err(ChannelError::Dead)),
                        "a refusing decoder must stay dead"
                    );
                    return Outcome { messages, end };
                }
            }
        }
    }
    let end = d.finish();
    Outcome { messages, end }
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stream = if mode % 2 == 0 {
        rest.to_vec()
    } else if mode & 2 != 0 {
        let alive = mode & 4 != 0;
        if alive {
            // The same pieces without the keep-alives end the same way.
            let plain = decode_stream(&epoch_pieces(rest, false), 4096);
            let with = decode_stream(&epoch_pieces(rest, true), 4096);
            let pieces = |o: Outcome| -> Vec<Message> {
                o.messages
                    .into_iter()
                    .filter(|m| *m != Message::Alive)
                    .collect()
            };
            let (a, b) = (pieces(plain), pieces(with));
            assert_eq!(a, b, "keep-alives change the pieces");
            assert_eq!(
                checkpoint_secondary(a),
                checkpoint_secondary(b),
                "keep-alives change what is applied"
            );
        }
        epoch_pieces(rest, alive)
    } else {
        let (initiator, _) = session_pair();
        let mut out = Vec::new();
        let mut nonce = 0u64;
        let mut input = rest;
        while input.len() >= 2 {
            let raw = u16::from_le_bytes([input[0], input[1]]);
            let len = (raw & 0x7fff) as usize % (MAX_FRAGMENT + 1);
            let take = len.min(input.len() - 2);
            let frame_nonce = if raw & 0x8000 != 0 { nonce ^ 1 } else { nonce };
            wire::seal_frame(initiator, frame_nonce, &input[2..2 + take], &mut out)
                .expect("sealable fragment");
            nonce += 1;
            input = &input[2 + take..];
        }
        out
    };
    let outcome = decode_stream(&stream, 1 + (mode as usize >> 1) * 7);
    for m in &outcome.messages {
        let bytes = wire::encode_message(m).expect("a decoded message re-encodes");
        assert_eq!(
            &wire::decode_message(&bytes).expect("re-encoded message decodes"),
            m
        );
    }
    let _ = checkpoint_secondary(outcome.messages);
    // The plaintext decoder alone on the same bytes.
    let _ = wire::decode_message(rest);
}

/// `len:u16le bytes` items, each sealed as one `EpochPiece` message (with
/// `alive`, each followed by an `Alive`).
pub fn epoch_pieces(mut input: &[u8], alive: bool) -> Vec<u8> {
    let (initiator, _) = session_pair();
    let mut out = Vec::new();
    let mut nonce = 0u64;
    while input.len() >= 2 {
        let len = u16::from_le_bytes([input[0], input[1]]) as usize;
        let take = len.min(input.len() - 2);
        let m = Message::EpochPiece {
            bytes: input[2..2 + take].to_vec(),
        };
        let bytes = wire::encode_message(&m).expect("a small piece encodes");
        wire::seal_message(initiator, &mut nonce, &bytes, &mut out).expect("sealable");
        if alive {
            let bytes = wire::encode_message(&Message::Alive).expect("encodes");
            wire::seal_message(initiator, &mut nonce, &bytes, &mut out).expect("sealable");
        }
        input = &input[2 + take..];
    }
    out
}

/// The messages into a checkpoint Secondary, as `remote::serve` does;
/// returns its last complete epoch.
pub fn checkpoint_secondary(messages: Vec<Message>) -> u64 {
    use crate::checkpoint::receiver::{Piece, Receiver};
    use crate::checkpoint::remote::on_message;
    let mut r = Receiver::new(1, vec![0u8; 16 * 4096], 0);
    for m in messages {
        let before = r.last();
        match on_message(&mut r, m) {
            Ok(Piece::Ready(ready)) => {
                let n = ready.number();
                assert_eq!(n, before + 1, "a checked epoch follows the last");
                assert_eq!(r.apply_ready(ready), n);
            }
            Ok(Piece::Again(e)) => assert!(
                e == r.last() && e >= before,
                "acks name the last applied epoch"
            ),
            Ok(Piece::More) => assert_eq!(r.last(), before, "no epoch applied without its ack"),
            Err(_) => {
                assert_eq!(r.last(), before, "a refusal applies nothing");
                return r.last();
            }
        }
    }
    r.last()
}
