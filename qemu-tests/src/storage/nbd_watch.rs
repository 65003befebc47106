//! Watching what a host's storage path delivers to storage: every NBD write
//! request, with the time its bytes were handed to the NBD server. A test
//! reads the log to show *when* a host's writes landed (e.g. that a frozen
//! Primary wrote nothing after the new Primary's first write).
//!
//! The parser follows the client's side of the NBD protocol
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>):
//! the 4-byte client flags, options (`IHAVEOPT`, option, length, data) until
//! the transmission phase, then requests — compact (magic `0x25609513`,
//! 28 bytes) or extended (magic `0x21e41c71`, 32 bytes) — with the payload
//! of a WRITE skipped. Bytes it cannot make sense of stop the watch of that
//! connection and are counted, so a test notices instead of trusting a
//! half-read stream.

use std::time::Instant;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const EXTENDED_MAGIC: u32 = 0x21e4_1c71;
const CMD_WRITE: u16 = 1;
const CMD_WRITE_ZEROES: u16 = 6;

/// One write a host's path delivered to storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandedWrite {
    pub offset: u64,
    pub len: u64,
    /// When its last byte was written to the NBD server.
    pub at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    OptionHeader,
    OptionData(u64),
    /// Next: an option (`IHAVEOPT`) or the first request.
    OptionOrRequest,
    RequestHeader,
    /// Skipping the payload of a write at `offset` of `len` bytes.
    Payload {
        offset: u64,
        len: u64,
        left: u64,
    },
    /// Lost sync: nothing more is parsed on this connection.
    Lost,
}

/// The parser of one connection's client → server bytes.
#[derive(Debug)]
pub struct NbdWatch {
    phase: Phase,
    buf: Vec<u8>,
}

impl Default for NbdWatch {
    fn default() -> Self {
        NbdWatch {
            phase: Phase::ClientFlags,
            buf: Vec::new(),
        }
    }
}

impl NbdWatch {
    /// Whether the stream made sense so far.
    pub fn in_sync(&self) -> bool {
        self.phase != Phase::Lost
    }

    /// Feeds bytes that were just delivered to storage at `at`; returns the
    /// writes whose payload was completed by them.
    pub fn feed(&mut self, mut bytes: &[u8], at: Instant) -> Vec<LandedWrite> {
        let mut landed = Vec::new();
        while !bytes.is_empty() && self.phase != Phase::Lost {
            if let Phase::Payload { offset, len, left } = self.phase {
                let take = left.min(bytes.len() as u64);
                bytes = &bytes[take as usize..];
                let left = left - take;
                if left == 0 {
                    landed.push(LandedWrite { offset, len, at });
                    self.phase = Phase::RequestHeader;
                } else {
                    self.phase = Phase::Payload { offset, len, left };
                }
                continue;
            }
            let need = self.need();
            let take = (need - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == need {
                let unit = std::mem::take(&mut self.buf);
                if let Some(w) = self.unit(&unit, at) {
                    landed.push(w);
                }
            }
        }
        landed
    }

    /// Bytes the current phase needs before it can be decided.
    fn need(&self) -> usize {
        match self.phase {
            Phase::ClientFlags | Phase::OptionOrRequest => 4,
            Phase::OptionHeader => 16,
            Phase::OptionData(n) => n as usize,
            Phase::RequestHeader => match self.buf.get(..4) {
                Some(m) if u32::from_be_bytes(m.try_into().expect("4 bytes")) == EXTENDED_MAGIC => {
                    32
                }
                Some(_) => 28,
                None => 4,
            },
            Phase::Payload { .. } | Phase::Lost => 0,
        }
    }

    fn unit(&mut self, u: &[u8], at: Instant) -> Option<LandedWrite> {
        let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().expect("4 bytes"));
        let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        match self.phase {
            Phase::ClientFlags => self.phase = Phase::OptionHeader,
            Phase::OptionOrRequest => {
                if u == &IHAVEOPT.to_be_bytes()[..4] {
                    self.buf = u.to_vec();
                    self.phase = Phase::OptionHeader;
                } else {
                    self.buf = u.to_vec();
                    self.phase = Phase::RequestHeader;
                }
            }
            Phase::OptionHeader => {
                if be64(u) != IHAVEOPT {
                    self.phase = Phase::Lost;
                    return None;
                }
                let option = be32(&u[8..]);
                let len = u64::from(be32(&u[12..]));
                // EXPORT_NAME (1) and GO (7) may end the negotiation; ABORT (2) ends it.
                self.phase = match (len, option) {
                    (0, 1 | 7) => Phase::OptionOrRequest,
                    (0, _) => Phase::OptionOrRequest,
                    (n, _) => Phase::OptionData(n),
                };
            }
            Phase::OptionData(_) => self.phase = Phase::OptionOrRequest,
            Phase::RequestHeader if u.len() == 4 => {
                // Only the magic so far: read the rest of the header.
                self.buf = u.to_vec();
            }
            Phase::RequestHeader => {
                let magic = be32(u);
                let kind = u16::from_be_bytes([u[6], u[7]]);
                let (offset, len) = match magic {
                    REQUEST_MAGIC => (be64(&u[16..]), u64::from(be32(&u[24..]))),
                    EXTENDED_MAGIC => (be64(&u[16..]), be64(&u[24..])),
                    _ => {
                        self.phase = Phase::Lost;
                        return None;
                    }
                };
                match kind {
                    CMD_WRITE if len > 0 => {
                        self.phase = Phase::Payload {
                            offset,
                            len,
                            left: len,
                        }
                    }
                    CMD_WRITE | CMD_WRITE_ZEROES => {
                        return Some(LandedWrite { offset, len, at });
                    }
                    _ => {}
                }
            }
            Phase::Payload { .. } | Phase::Lost => unreachable!("handled by feed"),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u16, offset: u64, len: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&7u64.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    }

    fn option(code: u32, data: &[u8]) -> Vec<u8> {
        let mut o = IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&code.to_be_bytes());
        o.extend_from_slice(&(data.len() as u32).to_be_bytes());
        o.extend_from_slice(data);
        o
    }

    #[test]
    fn writes_are_found_through_negotiation_and_any_chunking() {
        let mut stream = vec![0, 0, 0, 3]; // client flags
        stream.extend(option(8, b"x")); // STRUCTURED_REPLY-ish with data
        stream.extend(option(7, b"\0\0\0\x06shared\0\0")); // GO
        stream.extend(request(0, 4096, 512)); // read
        stream.extend(request(CMD_WRITE, 8192, 1024));
        // A payload that contains the request magic must not confuse it.
        let mut payload = vec![0u8; 1024];
        payload[100..104].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        stream.extend(&payload);
        stream.extend(request(3, 0, 0)); // flush
        stream.extend(request(CMD_WRITE, 0, 512));
        stream.extend(vec![1u8; 512]);
        for step in [1, 3, 7, 64, stream.len()] {
            let mut w = NbdWatch::default();
            let t = Instant::now();
            let mut got = Vec::new();
            for c in stream.chunks(step) {
                got.extend(w.feed(c, t).into_iter().map(|x| (x.offset, x.len)));
            }
            assert_eq!(got, vec![(8192, 1024), (0, 512)], "step {step}");
            assert!(w.in_sync());
        }
    }

    #[test]
    fn garbage_loses_sync_instead_of_inventing_writes() {
        let mut w = NbdWatch::default();
        let mut s = vec![0, 0, 0, 0];
        s.extend(b"not an option header at all");
        assert!(w.feed(&s, Instant::now()).is_empty());
        assert!(!w.in_sync());
    }
}
