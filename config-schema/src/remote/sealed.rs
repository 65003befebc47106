//! Replies an operator can trust: a Noise `NK_25519_ChaChaPoly_BLAKE2s`
//! exchange (snow) from the operator's tool to the host, keyed by the host's
//! X25519 key from the cluster config the operator holds, and the transport
//! framing every Noise exchange of the status service uses (also the
//! host-to-host one, `heartbeat::status_service::noise`).
//!
//! ```text
//! client -> server   ClientMsg::Operator { .., noise: NK message 1 (empty payload) }
//!                    (the operator's signature covers message 1 too)
//! server -> client   Reply::Sealed { noise: NK message 2 (empty payload) }
//!                  | Reply::Refused   (before authentication: not trusted)
//! server -> client   transport messages: [length u32 BE], then chunks of the
//!                    JSON of a `Reply` (for an apply: SendConfig, then the result)
//! ```
//!
//! Why: the operator's signature proves the query to the host; this proves
//! the answer to the operator. Only the holder of the host's static key can
//! complete message 2 against the client's ephemeral key, so a machine in the
//! middle cannot show an operator a "protected" that is not, nor an apply
//! result no host gave. The prologue binds the exchange to the connection's
//! hello (cluster, host, nonce): message 1 of one connection is refused on
//! another. The answers are encrypted to the client's ephemeral key too.
//! A refusal before authentication stays plain and is only ever shown as
//! a refusal (someone in the middle can always drop a connection).

use std::io::{Read, Write};

use snow::{Builder, HandshakeState, TransportState};

use super::wire::{read_raw, write_raw, ServerHello, WireError};
use super::MAX_REPLY_FRAME;

const PATTERN: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";
/// Plaintext per transport message (Noise messages are at most 65535 bytes,
/// 16 of them the tag).
pub const CHUNK: usize = 65_000;
/// Largest Noise message.
pub const MAX_NOISE: usize = 65_535;

/// Why a sealed exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Protocol(String),
}

fn prologue(hello: &ServerHello) -> Vec<u8> {
    format!(
        "ftappliance operator reply v1\0{}\0{}\0{}",
        hello.cluster, hello.host, hello.nonce
    )
    .into_bytes()
}

/// The operator's side, between message 1 and the host's message 2.
pub struct ClientSeal {
    hs: HandshakeState,
}

impl ClientSeal {
    /// Message 1 to the host that sent `hello`, whose static key (from the
    /// operator's config) is `host_key`.
    pub fn start(hello: &ServerHello, host_key: &[u8; 32]) -> Result<(Self, Vec<u8>), SealError> {
        let mut hs = Builder::new(PATTERN.parse()?)
            .prologue(&prologue(hello))
            .remote_public_key(host_key)
            .build_initiator()?;
        let mut buf = vec![0u8; MAX_NOISE];
        let n = hs.write_message(&[], &mut buf)?;
        buf.truncate(n);
        Ok((ClientSeal { hs }, buf))
    }

    /// Reads the host's message 2: from now on its replies are sealed.
    pub fn finish(mut self, m2: &[u8]) -> Result<Sealed, SealError> {
        let mut buf = vec![0u8; MAX_NOISE];
        self.hs.read_message(m2, &mut buf)?;
        Ok(Sealed {
            t: self.hs.into_transport_mode()?,
            buf,
        })
    }
}

/// The host's side: checks message 1 against the connection's hello and
/// returns message 2 with the sealed channel.
pub fn respond(
    hello: &ServerHello,
    my_key: &[u8; 32],
    m1: &[u8],
) -> Result<(Sealed, Vec<u8>), SealError> {
    let mut hs = Builder::new(PATTERN.parse()?)
        .prologue(&prologue(hello))
        .local_private_key(my_key)
        .build_responder()?;
    let mut buf = vec![0u8; MAX_NOISE];
    let n = hs.read_message(m1, &mut buf)?;
    if n != 0 {
        return Err(SealError::Protocol(format!(
            "message 1 carries {n} bytes; it carries none"
        )));
    }
    let n = hs.write_message(&[], &mut buf)?;
    let m2 = buf[..n].to_vec();
    Ok((
        Sealed {
            t: hs.into_transport_mode()?,
            buf,
        },
        m2,
    ))
}

/// One direction's Noise transport with its buffer.
pub struct Sealed {
    t: TransportState,
    buf: Vec<u8>,
}

impl Sealed {
    pub fn from_transport(t: TransportState) -> Self {
        Sealed {
            t,
            buf: vec![0u8; MAX_NOISE],
        }
    }

    /// Sends `body` as transport messages: its length, then chunks.
    pub fn send<W: Write>(&mut self, w: &mut W, body: &[u8]) -> Result<(), SealError> {
        if body.len() > MAX_REPLY_FRAME {
            return Err(SealError::Protocol(format!(
                "message of {} bytes exceeds {MAX_REPLY_FRAME}",
                body.len()
            )));
        }
        let n = self
            .t
            .write_message(&(body.len() as u32).to_be_bytes(), &mut self.buf)?;
        write_raw(w, &self.buf[..n])?;
        for c in body.chunks(CHUNK) {
            let n = self.t.write_message(c, &mut self.buf)?;
            write_raw(w, &self.buf[..n])?;
        }
        Ok(())
    }

    /// Receives what [`Sealed::send`] sent, refusing more than `cap` bytes.
    pub fn recv<R: Read>(&mut self, r: &mut R, cap: usize) -> Result<Vec<u8>, SealError> {
        let len = self.read_chunk(r)?;
        let total = u32::from_be_bytes(
            len.as_slice()
                .try_into()
                .map_err(|_| SealError::Protocol("bad length message".into()))?,
        ) as usize;
        if total > cap {
            return Err(SealError::Protocol(format!(
                "message of {total} bytes exceeds {cap}"
            )));
        }
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            out.extend(self.read_chunk(r)?);
        }
        if out.len() != total {
            return Err(SealError::Protocol("message longer than announced".into()));
        }
        Ok(out)
    }

    fn read_chunk<R: Read>(&mut self, r: &mut R) -> Result<Vec<u8>, SealError> {
        let c = read_raw(r, MAX_NOISE)?;
        let n = self.t.read_message(&c, &mut self.buf)?;
        Ok(self.buf[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> ([u8; 32], [u8; 32]) {
        let k = Builder::new(PATTERN.parse().unwrap())
            .generate_keypair()
            .unwrap();
        (k.private.try_into().unwrap(), k.public.try_into().unwrap())
    }

    fn hello(nonce: &str) -> ServerHello {
        ServerHello {
            version: super::super::VERSION,
            cluster: "c".into(),
            host: "host-a".into(),
            nonce: nonce.into(),
        }
    }

    #[test]
    fn a_reply_sealed_by_the_host_opens_and_a_long_one_comes_whole() {
        let (private, public) = keypair();
        let h = hello("00");
        let (client, m1) = ClientSeal::start(&h, &public).unwrap();
        let (mut server, m2) = respond(&h, &private, &m1).unwrap();
        let mut client = client.finish(&m2).unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        server.send(&mut wire, &body).unwrap();
        assert_eq!(
            client.recv(&mut wire.as_slice(), MAX_REPLY_FRAME).unwrap(),
            body
        );
    }

    #[test]
    fn a_host_without_the_configured_key_cannot_answer() {
        let (_, public) = keypair();
        let (impostor, _) = keypair();
        let h = hello("00");
        let (_, m1) = ClientSeal::start(&h, &public).unwrap();
        assert!(
            respond(&h, &impostor, &m1).is_err(),
            "message 1 opens only with the host's key"
        );
    }

    #[test]
    fn a_forged_message_2_or_reply_is_refused() {
        let (private, public) = keypair();
        let h = hello("00");
        // An impostor answering message 1 with its own static key: the
        // client's es does not match, so message 2 fails to open.
        let (client, m1) = ClientSeal::start(&h, &public).unwrap();
        let (_, m2) = respond(&h, &private, &m1).unwrap();
        let mut bad = m2.clone();
        bad[40] ^= 1;
        assert!(
            ClientSeal::start(&h, &public)
                .unwrap()
                .0
                .finish(&m2)
                .is_err(),
            "another exchange's message 2"
        );
        assert!(client.finish(&bad).is_err(), "a changed message 2");
        // A changed byte of a sealed reply.
        let (client, m1) = ClientSeal::start(&h, &public).unwrap();
        let (mut server, m2) = respond(&h, &private, &m1).unwrap();
        let mut client = client.finish(&m2).unwrap();
        let mut wire = Vec::new();
        server.send(&mut wire, b"{\"result\":\"cluster\"}").unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(client.recv(&mut wire.as_slice(), MAX_REPLY_FRAME).is_err());
    }

    #[test]
    fn message_1_of_one_connection_is_refused_on_another() {
        let (private, public) = keypair();
        let (_, m1) = ClientSeal::start(&hello("00"), &public).unwrap();
        assert!(respond(&hello("01"), &private, &m1).is_err());
    }

    #[test]
    fn a_sealed_reply_longer_than_the_cap_is_refused() {
        let (private, public) = keypair();
        let h = hello("00");
        let (client, m1) = ClientSeal::start(&h, &public).unwrap();
        let (mut server, m2) = respond(&h, &private, &m1).unwrap();
        let mut client = client.finish(&m2).unwrap();
        let mut wire = Vec::new();
        server.send(&mut wire, &[7u8; 1000]).unwrap();
        let e = client.recv(&mut wire.as_slice(), 999).unwrap_err();
        assert!(e.to_string().contains("exceeds 999"), "{e}");
    }
}
