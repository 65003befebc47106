//! The channel's wire format below the Noise handshake, as pure functions and a
//! byte-fed decoder (no sockets), so the fuzz target and the tests drive exactly
//! the code the receiver runs.
//!
//! ```text
//! frame     = len:u32be  nonce:u64be  ciphertext          (len = 8 + |ciphertext|)
//! ciphertext= ChaChaPoly(key of this direction, nonce, fragment)   16 <= |ct| <= 65535
//! fragment  = flag:u8 (0 = more fragments follow, 1 = last)  data
//! message   = version:u8 (= VERSION)  postcard(Message)            |message| <= MAX_MESSAGE
//! ```
//!
//! Each direction numbers its frames 0, 1, 2, ... and the receiver accepts only
//! the next number: a frame with any other nonce is refused (replayed if lower,
//! out of order if higher, forged if it does not even authenticate under the
//! nonce it claims). A message is the concatenation of the `data` of its
//! fragments; it is decoded only once complete, and must use every byte.

use std::sync::Arc;

use snow::StatelessTransportState;

use super::{ChannelError, Message};
use crate::io::bytes::Append;

/// Version byte in front of every encoded [`Message`].
/// 2: `Batch.sent_ns`, `Ack.echo_ns`, `Diverged`, the platform in `Hello`,
/// log format 2 in batches. 3: `Transfer`. 4: `EpochPiece`, `EpochAck`
/// (checkpoint mode). 5: `Hello.replication` (the pair's mode). 6:
/// `Hello.config_digest`. 7: `Alive` (checkpoint keep-alives). A peer of
/// another version is refused.
pub const VERSION: u8 = 7;
/// Bytes of the length field.
pub const LEN_BYTES: usize = 4;
/// Bytes of the nonce field.
pub const NONCE_BYTES: usize = 8;
/// The AEAD tag that every ciphertext carries.
pub const TAG_BYTES: usize = 16;
/// Largest Noise transport message (the Noise specification's limit).
pub const MAX_CIPHERTEXT: usize = 65535;
/// Largest value of a frame's length field.
pub const MAX_FRAME_LEN: usize = NONCE_BYTES + MAX_CIPHERTEXT;
/// Largest fragment plaintext (flag byte + data).
pub const MAX_FRAGMENT: usize = MAX_CIPHERTEXT - TAG_BYTES;
/// Largest amount of message data per fragment.
pub const MAX_FRAGMENT_DATA: usize = MAX_FRAGMENT - 1;
/// Largest encoded message (version byte + postcard), 16 MiB.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Most bytes a [`Message::Batch`] adds to the records it carries: the
/// version byte, the variant tag, and postcard varints of `first_seq` (≤ 10),
/// `count` (≤ 5), the records' length (≤ 10) and `sent_ns` (≤ 10). The
/// Primary's batches are sized by it (`primary::MAX_BATCH_BYTES`);
/// `tests.rs` checks it against the worst case.
pub const BATCH_OVERHEAD: usize = 1 + 1 + 10 + 5 + 10 + 10;

const FRAG_MORE: u8 = 0;
const FRAG_LAST: u8 = 1;
/// Number of [`Message`] variants: postcard writes the variant index as a
/// varint, so a first byte at or above this is an unknown tag. (It once said
/// 5 while `Resign` was the sixth: a resignation was refused as an unknown
/// tag. `tests.rs` round-trips every variant so that cannot happen again.)
pub(crate) const MESSAGE_TAGS: u8 = 11;

/// Encodes a message: version byte + postcard. Refuses (without side effects)
/// a message larger than [`MAX_MESSAGE`].
pub fn encode_message(m: &Message) -> Result<Vec<u8>, ChannelError> {
    let bad = |e: postcard::Error| ChannelError::Malformed(format!("cannot encode message: {e}"));
    let size = postcard::experimental::serialized_size(m).map_err(bad)?;
    if 1 + size > MAX_MESSAGE {
        return Err(ChannelError::TooLarge {
            len: 1 + size as u64,
            max: MAX_MESSAGE as u64,
        });
    }
    let mut out = Vec::with_capacity(1 + size);
    out.push(VERSION);
    postcard::serialize_with_flavor(m, Append(out)).map_err(bad)
}

/// Decodes one complete encoded message (version byte + postcard). This is the
/// plaintext-level entry point the fuzz target uses.
pub fn decode_message(bytes: &[u8]) -> Result<Message, ChannelError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ChannelError::TooLarge {
            len: bytes.len() as u64,
            max: MAX_MESSAGE as u64,
        });
    }
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| ChannelError::Malformed("empty message".into()))?;
    if version != VERSION {
        return Err(ChannelError::Version { got: version });
    }
    match body.first() {
        None => return Err(ChannelError::Malformed("message without a tag".into())),
        Some(&tag) if tag >= MESSAGE_TAGS => return Err(ChannelError::UnknownTag { tag }),
        Some(_) => {}
    }
    let (m, rest) = postcard::take_from_bytes::<Message>(body)
        .map_err(|e| ChannelError::Malformed(format!("undecodable message: {e}")))?;
    if !rest.is_empty() {
        return Err(ChannelError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(m)
}

/// Encrypts an encoded message into frames, numbering them from `*next_nonce`
/// (advanced past the last frame used). Appends to `out`.
pub fn seal_message(
    state: &StatelessTransportState,
    next_nonce: &mut u64,
    message: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ChannelError> {
    if message.len() > MAX_MESSAGE {
        return Err(ChannelError::TooLarge {
            len: message.len() as u64,
            max: MAX_MESSAGE as u64,
        });
    }
    let chunks = message.len().div_ceil(MAX_FRAGMENT_DATA).max(1);
    // Check nonces for the whole message first, so a refusal writes nothing.
    next_nonce
        .checked_add(chunks as u64)
        .ok_or(ChannelError::NonceExhausted)?;
    let mut plain = Vec::with_capacity(MAX_FRAGMENT);
    for i in 0..chunks {
        let start = i * MAX_FRAGMENT_DATA;
        let end = (start + MAX_FRAGMENT_DATA).min(message.len());
        plain.clear();
        plain.push(if i + 1 == chunks {
            FRAG_LAST
        } else {
            FRAG_MORE
        });
        plain.extend_from_slice(&message[start..end]);
        seal_frame(state, *next_nonce, &plain, out)?;
        *next_nonce += 1;
    }
    Ok(())
}

/// Encrypts one fragment (flag byte + data, at most [`MAX_FRAGMENT`] bytes)
/// as frame `nonce` and appends the frame to `out`. Exposed for the fuzz
/// target and the tests, which build frames by hand.
pub fn seal_frame(
    state: &StatelessTransportState,
    nonce: u64,
    fragment: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ChannelError> {
    if fragment.len() > MAX_FRAGMENT {
        return Err(ChannelError::TooLarge {
            len: fragment.len() as u64,
            max: MAX_FRAGMENT as u64,
        });
    }
    let start = out.len();
    let head = LEN_BYTES + NONCE_BYTES;
    out.resize(start + head + fragment.len() + TAG_BYTES, 0);
    let n = match state.write_message(nonce, fragment, &mut out[start + head..]) {
        Ok(n) => n,
        Err(e) => {
            out.truncate(start);
            return Err(ChannelError::Malformed(format!("cannot encrypt: {e}")));
        }
    };
    out.truncate(start + head + n);
    out[start..start + LEN_BYTES].copy_from_slice(&((NONCE_BYTES + n) as u32).to_be_bytes());
    out[start + LEN_BYTES..start + head].copy_from_slice(&nonce.to_be_bytes());
    Ok(())
}

/// The receive side as a state machine fed with stream bytes: verifies each
/// frame's nonce and tag, reassembles fragments, decodes messages. Once it
/// has refused anything it is dead and yields nothing more.
pub struct Decoder {
    state: Arc<StatelessTransportState>,
    next_nonce: u64,
    buf: Vec<u8>,
    partial: Vec<u8>,
    plain: Vec<u8>,
    dead: bool,
}

impl Decoder {
    /// A decoder expecting frame 0 under `state`'s incoming key.
    pub fn new(state: Arc<StatelessTransportState>) -> Self {
        Decoder {
            state,
            next_nonce: 0,
            buf: Vec::new(),
            partial: Vec::new(),
            plain: vec![0u8; MAX_CIPHERTEXT],
            dead: false,
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.dead {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Kills the decoder: it yields nothing more.
    pub fn kill(&mut self) {
        self.dead = true;
        self.buf = Vec::new();
        self.partial = Vec::new();
    }

    /// Whether a refusal killed this decoder.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The nonce the next frame must carry.
    pub fn next_nonce(&self) -> u64 {
        self.next_nonce
    }

    /// Takes the next complete message out of the fed bytes: `Ok(None)` if more
    /// bytes are needed. Any error is a refusal and kills the decoder.
    pub fn poll(&mut self) -> Result<Option<Message>, ChannelError> {
        if self.dead {
            return Err(ChannelError::Dead);
        }
        match self.poll_inner() {
            Err(e) => {
                self.kill();
                Err(e)
            }
            ok => ok,
        }
    }

    /// The stream ended: `Closed` at a message boundary, otherwise
    /// `Truncated` (and the decoder is dead).
    pub fn finish(&mut self) -> ChannelError {
        if self.dead {
            return ChannelError::Dead;
        }
        if self.buf.is_empty() && self.partial.is_empty() {
            return ChannelError::Closed;
        }
        let e = ChannelError::Truncated {
            frame_bytes: self.buf.len() as u64,
            message_bytes: self.partial.len() as u64,
        };
        self.kill();
        e
    }

    /// The length field of the frame at the front of the buffer, validated.
    fn frame_len(&self) -> Result<Option<usize>, ChannelError> {
        let Some(head) = self.buf.get(..LEN_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_LEN {
            return Err(ChannelError::TooLarge {
                len: len as u64,
                max: MAX_FRAME_LEN as u64,
            });
        }
        if len < NONCE_BYTES + TAG_BYTES {
            return Err(ChannelError::Malformed(format!(
                "frame length {len} is shorter than nonce and tag"
            )));
        }
        Ok(Some(len))
    }

    fn poll_inner(&mut self) -> Result<Option<Message>, ChannelError> {
        loop {
            let Some(len) = self.frame_len()? else {
                return Ok(None);
            };
            if self.buf.len() < LEN_BYTES + len {
                return Ok(None);
            }
            let frame = &self.buf[LEN_BYTES..LEN_BYTES + len];
            let nonce = u64::from_be_bytes(frame[..NONCE_BYTES].try_into().expect("8 bytes"));
            let ct = &frame[NONCE_BYTES..];
            let expected = self.next_nonce;
            let opened = self.state.read_message(nonce, ct, &mut self.plain);
            let n = match opened {
                Ok(n) if nonce == expected => n,
                Err(_) if nonce == expected => return Err(ChannelError::Decrypt { frame: nonce }),
                // An authentic frame of this session, but not the one due.
                Ok(_) if nonce < expected => {
                    return Err(ChannelError::Replayed {
                        expected,
                        got: nonce,
                    })
                }
                Ok(_) => {
                    return Err(ChannelError::OutOfOrder {
                        expected,
                        got: nonce,
                    })
                }
                Err(_) => {
                    return Err(ChannelError::Forged {
                        expected,
                        got: nonce,
                    })
                }
            };
            self.buf.drain(..LEN_BYTES + len);
            self.next_nonce += 1;
            let (&flag, data) = self.plain[..n].split_first().ok_or_else(|| {
                ChannelError::Malformed(format!("frame {nonce} has an empty fragment"))
            })?;
            if flag != FRAG_MORE && flag != FRAG_LAST {
                return Err(ChannelError::Malformed(format!(
                    "frame {nonce}: unknown fragment flag {flag}"
                )));
            }
            let total = self.partial.len() + data.len();
            if total > MAX_MESSAGE {
                return Err(ChannelError::TooLarge {
                    len: total as u64,
                    max: MAX_MESSAGE as u64,
                });
            }
            if flag == FRAG_LAST {
                let m = if self.partial.is_empty() {
                    decode_message(data)?
                } else {
                    self.partial.extend_from_slice(data);
                    let m = decode_message(&self.partial);
                    self.partial = Vec::new();
                    m?
                };
                return Ok(Some(m));
            }
            self.partial.extend_from_slice(data);
        }
    }
}
