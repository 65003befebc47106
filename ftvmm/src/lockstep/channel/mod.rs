//! The logging channel between a Primary's and a Secondary's ftvmm
//! (docs/architecture.md §3, §5): one TCP connection, mutually authenticated and
//! encrypted with the hosts' X25519 keys from the config by the Noise protocol
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s` (the `snow` crate). The Primary connects
//! knowing the Secondary's public key; the Secondary accepts only initiators
//! whose key the caller maps to an allowed host.
//!
//! After the handshake the connection splits into a [`ChannelSender`] and a
//! [`ChannelReceiver`] that two threads use at once: each direction has its own
//! key and its own frame counter, carried as the explicit nonce of every frame.
//! The receiver accepts only the next frame in sequence and refuses anything
//! else — a corrupted, forged, replayed, reordered, truncated or oversized
//! frame, an unknown message or trailing bytes — with a typed [`ChannelError`],
//! one `warn!` line `channel: refused message from <peer>: <error>`, and a dead
//! connection: nothing from or after a bad frame is delivered; the caller
//! reconnects. The wire format is in [`wire`].

pub mod fuzzing;
mod handshake;
pub mod wire;

#[cfg(test)]
mod tests;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snow::StatelessTransportState;

pub use handshake::PATTERN;
pub use wire::{decode_message, encode_message, Decoder, MAX_MESSAGE};

/// This host's identity on the channel: its X25519 static secret.
#[derive(Clone)]
pub struct Identity {
    pub private_key: [u8; 32],
}

impl Identity {
    /// The public key that the config lists for this host.
    pub fn public_key(&self) -> [u8; 32] {
        config_schema::keys::host_public_key(&self.private_key)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &hex(&self.public_key()))
            .finish_non_exhaustive()
    }
}

/// What the channel carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Primary -> Secondary, first message after the handshake.
    Hello(Hello),
    /// Secondary -> Primary: accepted (same image/config) or refused with a reason.
    HelloReply { accepted: bool, reason: String },
    /// A batch of encoded log records (opaque bytes to the channel), first
    /// record's sequence number, and the Primary's `CLOCK_BOOTTIME` send time
    /// (echoed in acks: an ack releases output only while that is fresh).
    Batch {
        first_seq: u64,
        count: u32,
        /// A byte string: the same postcard bytes as a sequence, one copy.
        #[serde(with = "crate::io::bytes")]
        bytes: Vec<u8>,
        sent_ns: u64,
    },
    /// Secondary -> Primary: received (not yet replayed) every record with a
    /// sequence number below `received`; replayed every record below
    /// `replayed`, which brought it to exit index `replayed_exit` (for lag);
    /// `echo_ns` is the `sent_ns` of the newest batch received.
    Ack {
        received: u64,
        replayed: u64,
        replayed_exit: u64,
        echo_ns: u64,
    },
    /// Secondary -> Primary: its replay diverged; it halts and must never be
    /// promoted (the Primary races for the next generation at once).
    Diverged { what: String },
    /// Either side: orderly end with a reason.
    Bye { reason: String },
    /// Primary -> Secondary: every record this Primary will ever send was
    /// sent and acknowledged; it stops its VM here and the Secondary takes
    /// over (after winning the next generation). Sent when fencing says this
    /// host can no longer reach storage.
    Resign { reason: String },
    /// Live state transfer to a new Secondary (respawn): one message of
    /// `lockstep::transfer::message`, in its own strict codec, carried
    /// before the log starts on the same channel.
    Transfer {
        #[serde(with = "crate::io::bytes")]
        bytes: Vec<u8>,
    },
    /// Checkpoint mode, Primary -> Secondary: one piece of an encoded epoch
    /// (`checkpoint::epoch`'s own strict format, opaque to the channel; at
    /// most `PIECE_HEADER_BYTES + MAX_CHUNK_BYTES`, which fits a message).
    EpochPiece {
        #[serde(with = "crate::io::bytes")]
        bytes: Vec<u8>,
    },
    /// Checkpoint mode, Secondary -> Primary: every epoch `<= epoch` is
    /// complete and applied to the staging copy (cumulative).
    EpochAck { epoch: u64 },
    /// Checkpoint mode, either way: "this side's process still runs". Sent
    /// by a keep-alive thread whenever its side sent nothing for a while
    /// (`checkpoint::keepalive`); it says nothing about epochs: it never
    /// acknowledges, completes or releases one.
    Alive,
}

impl Message {
    /// The variant's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::HelloReply { .. } => "HelloReply",
            Message::Batch { .. } => "Batch",
            Message::Ack { .. } => "Ack",
            Message::Diverged { .. } => "Diverged",
            Message::Bye { .. } => "Bye",
            Message::Resign { .. } => "Resign",
            Message::Transfer { .. } => "Transfer",
            Message::EpochPiece { .. } => "EpochPiece",
            Message::EpochAck { .. } => "EpochAck",
            Message::Alive => "Alive",
        }
    }
}

/// The Primary's proposal for a pair: the Secondary accepts it only if it runs
/// the same VM from the same image and config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub vm: String,
    pub generation: u64,
    /// The config generation both hosts booted, and the SHA-256 of its
    /// canonical bytes (`config_schema::config_id`): two hosts that booted
    /// different configs of one generation (two operators' applies, before
    /// every host converged on the higher digest) must not pair, since the
    /// VM may be defined differently on each.
    pub config_generation: u64,
    pub config_digest: [u8; 32],
    pub image_sha256: [u8; 32],
    pub mem_mib: u64,
    pub start_exit: u64,
    pub primary_host: String,
    /// How the pair replicates the VM: a Secondary running the VM in the
    /// other mode (or a checkpoint VM with other vCPUs or epochs) refuses.
    pub replication: PairMode,
    /// CPUID, MSR filter and VMM build the VM runs on
    /// (boxed: it is most of the message).
    pub platform: Box<crate::platform::Platform>,
}

/// The replication a [`Hello`] proposes (`vms[].replication` with what
/// both members must run alike).
///
/// NOTICE: part of [`Hello`] on the wire: any change to it requires a bump
/// of `wire::VERSION`, and every field must be compared in
/// `pair::hello::hello_mismatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairMode {
    /// Instruction-level replay of the reference guest.
    Lockstep,
    /// Epochs of a Linux guest with `vcpus` vCPUs every `epoch_ms`.
    Checkpoint { vcpus: u8, epoch_ms: u32 },
}

impl std::fmt::Display for PairMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairMode::Lockstep => write!(f, "lockstep"),
            PairMode::Checkpoint { vcpus, epoch_ms } => {
                write!(f, "checkpoint ({vcpus} vCPUs, {epoch_ms} ms epochs)")
            }
        }
    }
}

/// Why the channel failed or refused something. Refusals ([`Self::is_refusal`])
/// kill the connection.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The read timeout passed before a whole message arrived; not fatal, the
    /// bytes received so far are kept and `recv` may be called again.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The peer closed the connection between messages.
    #[error("connection closed by the peer")]
    Closed,
    /// An earlier error killed this connection; nothing more is delivered.
    #[error("connection is dead after an earlier error")]
    Dead,
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The initiator authenticated with a key no allowed host has.
    #[error("unknown peer key {key}")]
    UnknownPeer { key: String },
    /// The frame that was due did not authenticate: corrupted or forged.
    #[error("frame {frame} failed authentication (corrupted or forged)")]
    Decrypt { frame: u64 },
    /// An authentic frame of this connection that was already received.
    #[error("replayed frame: expected frame {expected}, got frame {got} again")]
    Replayed { expected: u64, got: u64 },
    /// An authentic frame of this connection, but a later one than due
    /// (reordered, or a frame in between was dropped).
    #[error("frame out of order: expected frame {expected}, got frame {got}")]
    OutOfOrder { expected: u64, got: u64 },
    /// A frame with the wrong number that does not authenticate either.
    #[error("forged frame: expected frame {expected}, got one claiming to be frame {got} that fails authentication")]
    Forged { expected: u64, got: u64 },
    #[error("too large: {len} bytes, at most {max}")]
    TooLarge { len: u64, max: u64 },
    /// The stream ended inside a frame or inside a multi-frame message.
    #[error("truncated: stream ended with {frame_bytes} bytes of an unfinished frame and {message_bytes} bytes of an unfinished message")]
    Truncated {
        frame_bytes: u64,
        message_bytes: u64,
    },
    #[error("unsupported message version {got} (this build speaks version {v})", v = wire::VERSION)]
    Version { got: u8 },
    #[error("unknown message tag {tag}")]
    UnknownTag { tag: u8 },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("frame counter exhausted; reconnect")]
    NonceExhausted,
}

impl ChannelError {
    /// Whether this is the receiver refusing what the peer (or someone in
    /// between) sent, as opposed to a timeout, an orderly close or a local error.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ChannelError::UnknownPeer { .. }
                | ChannelError::Decrypt { .. }
                | ChannelError::Replayed { .. }
                | ChannelError::OutOfOrder { .. }
                | ChannelError::Forged { .. }
                | ChannelError::TooLarge { .. }
                | ChannelError::Truncated { .. }
                | ChannelError::Version { .. }
                | ChannelError::UnknownTag { .. }
                | ChannelError::Malformed(_)
        )
    }
}

/// Lowercase hex of a key, for log lines and errors.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to the Secondary at `addr` as the Primary. `peer_public` is the
/// Secondary's key from the config, `peer_name` its host name (for logs).
/// `timeout` bounds the TCP connect and the handshake together.
pub fn connect(
    addr: SocketAddr,
    id: &Identity,
    peer_public: &[u8; 32],
    peer_name: &str,
    timeout: Duration,
) -> Result<Channel, ChannelError> {
    let start = std::time::Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    match handshake::initiate(&mut stream, id, peer_public, left) {
        Ok(state) => Channel::new(stream, state, peer_name.to_string()),
        Err(e) => {
            tracing::warn!("channel: handshake with {peer_name} at {addr} failed: {e}");
            let _ = stream.shutdown(Shutdown::Both);
            Err(e)
        }
    }
}

/// Runs the Secondary's side of the handshake on an accepted connection.
/// `allowed` maps the initiator's static key to a host name, or refuses it.
pub fn accept(
    mut stream: TcpStream,
    id: &Identity,
    allowed: &dyn Fn(&[u8; 32]) -> Option<String>,
    timeout: Duration,
) -> Result<Channel, ChannelError> {
    let from = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    stream.set_nodelay(true)?;
    match handshake::respond(&mut stream, id, allowed, timeout) {
        Ok((state, name)) => Channel::new(stream, state, name),
        Err(e) => {
            tracing::warn!("channel: refused connection from {from}: {e}");
            let _ = stream.shutdown(Shutdown::Both);
            Err(e)
        }
    }
}

/// An open channel; [`Channel::split`] it to send and receive from two threads.
pub struct Channel {
    tx: ChannelSender,
    rx: ChannelReceiver,
}

impl Channel {
    fn new(
        stream: TcpStream,
        state: StatelessTransportState,
        peer: String,
    ) -> Result<Self, ChannelError> {
        let state = Arc::new(state);
        let peer: Arc<str> = peer.into();
        let rx = ChannelReceiver {
            stream: stream.try_clone()?,
            decoder: Decoder::new(state.clone()),
            peer: peer.clone(),
            chunk: vec![0u8; 64 * 1024],
            frames: Arc::default(),
        };
        let tx = ChannelSender {
            stream,
            state,
            next_nonce: 0,
            peer,
            dead: false,
            out: Vec::new(),
        };
        Ok(Channel { tx, rx })
    }

    /// The peer's host name (from `allowed` on accept, `peer_name` on connect).
    pub fn peer(&self) -> &str {
        &self.tx.peer
    }

    pub fn split(self) -> (ChannelSender, ChannelReceiver) {
        (self.tx, self.rx)
    }

    pub fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        self.tx.send(m)
    }

    pub fn recv(&mut self) -> Result<Message, ChannelError> {
        self.rx.recv()
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.rx.set_read_timeout(d)
    }

    /// [`ChannelReceiver::frame_counter`].
    pub fn frame_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.rx.frame_counter()
    }

    /// A send TCP cannot take within `d` fails (a peer behind a partition
    /// must not block the sender for ever).
    pub fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.tx.set_write_timeout(d)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl std::fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSender")
            .field("peer", &self.peer)
            .field("next_frame", &self.next_nonce)
            .field("dead", &self.dead)
            .finish()
    }
}

impl std::fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReceiver")
            .field("peer", &self.peer)
            .field("next_frame", &self.decoder.next_nonce())
            .field("dead", &self.decoder.is_dead())
            .finish()
    }
}

/// The sending half.
pub struct ChannelSender {
    stream: TcpStream,
    state: Arc<StatelessTransportState>,
    next_nonce: u64,
    peer: Arc<str>,
    dead: bool,
    out: Vec<u8>,
}

impl ChannelSender {
    /// Encrypts and writes one message (split into frames if large). A write
    /// error, including a write timeout, kills the connection.
    pub fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        self.send_inner(m, true)
    }

    /// [`ChannelSender::send`] for the last message of an orderly end: the
    /// peer may already have closed its side, which is no reason to warn.
    pub fn send_last(&mut self, m: &Message) -> Result<(), ChannelError> {
        self.send_inner(m, false)
    }

    fn send_inner(&mut self, m: &Message, warn: bool) -> Result<(), ChannelError> {
        if self.dead {
            return Err(ChannelError::Dead);
        }
        let bytes = encode_message(m)?;
        self.out.clear();
        wire::seal_message(&self.state, &mut self.next_nonce, &bytes, &mut self.out)?;
        let res = self.stream.write_all(&self.out);
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::new();
        }
        if let Err(e) = res {
            self.dead = true;
            if warn {
                tracing::warn!("channel: sending to {} failed: {e}", self.peer);
            } else {
                tracing::debug!("channel: last message to {} not sent: {e}", self.peer);
            }
            let _ = self.stream.shutdown(Shutdown::Both);
            return Err(ChannelError::Io(e));
        }
        Ok(())
    }

    /// Closes the connection in both directions (also wakes a receiver
    /// blocked in `recv` on the other half).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Bounds each write; a timed-out send kills the connection.
    pub fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_write_timeout(d)
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// The receiving half.
pub struct ChannelReceiver {
    stream: TcpStream,
    decoder: Decoder,
    peer: Arc<str>,
    chunk: Vec<u8>,
    /// Authentic frames accepted so far ([`ChannelReceiver::frame_counter`]).
    frames: Arc<std::sync::atomic::AtomicU64>,
}

impl ChannelReceiver {
    /// The next message. `Timeout` (after `set_read_timeout`) is not fatal;
    /// `Closed` is an orderly end; a refusal is logged once and kills the
    /// connection, after which every call returns `Dead`.
    pub fn recv(&mut self) -> Result<Message, ChannelError> {
        loop {
            match self.poll() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(ChannelError::Dead) => return Err(ChannelError::Dead),
                Err(e) => return Err(self.refuse(e)),
            }
            match self.stream.read(&mut self.chunk) {
                Ok(0) => {
                    return match self.decoder.finish() {
                        ChannelError::Closed => {
                            tracing::debug!("channel: {} closed the connection", self.peer);
                            Err(ChannelError::Closed)
                        }
                        ChannelError::Dead => Err(ChannelError::Dead),
                        e => Err(self.refuse(e)),
                    };
                }
                Ok(n) => self.decoder.feed(&self.chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ChannelError::Timeout)
                }
                Err(e) => {
                    self.decoder.kill();
                    tracing::warn!("channel: receiving from {} failed: {e}", self.peer);
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return Err(ChannelError::Io(e));
                }
            }
        }
    }

    /// The decoder's next message, counting the authentic frames it took.
    fn poll(&mut self) -> Result<Option<Message>, ChannelError> {
        let m = self.decoder.poll();
        self.frames.store(
            self.decoder.next_nonce(),
            std::sync::atomic::Ordering::Relaxed,
        );
        m
    }

    /// How many authentic frames this side accepted so far, readable from
    /// other threads while one blocks in `recv`. It also moves in the middle
    /// of a message of many frames (an epoch piece is up to 17 of 64 KiB),
    /// so it tells that the peer is sending before the message is whole.
    /// Every frame is authenticated with the session's key and numbered in
    /// sequence: nobody but the peer can move it.
    pub fn frame_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.frames)
    }

    fn refuse(&mut self, e: ChannelError) -> ChannelError {
        tracing::warn!("channel: refused message from {}: {e}", self.peer);
        self.decoder.kill();
        let _ = self.stream.shutdown(Shutdown::Both);
        e
    }

    /// The next message if one can be had without waiting: already decoded
    /// bytes, or bytes the socket holds now (`MSG_DONTWAIT`, so the shared
    /// socket's blocking mode is untouched). `Ok(None)`: nothing more now.
    /// Errors as [`ChannelReceiver::recv`].
    pub fn try_recv(&mut self) -> Result<Option<Message>, ChannelError> {
        use std::os::unix::io::AsRawFd;
        loop {
            match self.poll() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(ChannelError::Dead) => return Err(ChannelError::Dead),
                Err(e) => return Err(self.refuse(e)),
            }
            let fd = self.stream.as_raw_fd();
            // SAFETY: `fd` is the open socket owned by `self.stream` for the
            // whole call; the buffer pointer and length describe `self.chunk`,
            // which is valid and writable.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.chunk.as_mut_ptr().cast(),
                    self.chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    return match self.decoder.finish() {
                        ChannelError::Closed => Err(ChannelError::Closed),
                        ChannelError::Dead => Err(ChannelError::Dead),
                        e => Err(self.refuse(e)),
                    }
                }
                n if n > 0 => self.decoder.feed(&self.chunk[..n as usize]),
                _ => {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        ErrorKind::Interrupted => {}
                        ErrorKind::WouldBlock => return Ok(None),
                        _ => {
                            self.decoder.kill();
                            tracing::warn!("channel: receiving from {} failed: {e}", self.peer);
                            let _ = self.stream.shutdown(Shutdown::Both);
                            return Err(ChannelError::Io(e));
                        }
                    }
                }
            }
        }
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(d)
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }
}
