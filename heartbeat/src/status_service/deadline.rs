//! A TCP stream with one deadline for the whole exchange: each read and write
//! may wait only for what is left of it, so a peer that accepts and then
//! dribbles bytes cannot hold a gathering thread longer than the deadline.
//! It remembers whether the deadline ended an exchange ([`Deadline::expired`]),
//! so the caller can say "no answer within N ms" rather than how the socket
//! put it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

pub struct Deadline {
    stream: TcpStream,
    until: Instant,
    expired: bool,
}

impl Deadline {
    pub fn until(stream: TcpStream, until: Instant) -> Self {
        Deadline {
            stream,
            until,
            expired: false,
        }
    }

    /// Moves the deadline (to give the rest of an exchange its own).
    pub fn set_until(&mut self, until: Instant) {
        self.until = until;
    }

    /// Whether a read or write failed because the deadline passed.
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// Sets the socket's timeouts to what is left; an error once nothing is.
    fn arm(&mut self) -> std::io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.expired = true;
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "no answer within the deadline",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }

    /// `r`, noting a socket timeout (`EAGAIN` under `SO_RCVTIMEO`) as the
    /// deadline passing: the timeouts are only ever what was left of it.
    fn noted<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                self.expired = true;
            }
        }
        r
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        let r = self.stream.read(buf);
        self.noted(r)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        let r = self.stream.write(buf);
        self.noted(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn a_silent_peer_is_given_up_on_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _peer = l.accept().unwrap();
        let mut d = Deadline::until(s, Instant::now() + Duration::from_millis(200));
        let t = Instant::now();
        let mut b = [0u8; 1];
        assert!(!d.expired());
        assert!(d.read(&mut b).is_err());
        assert!(d.read(&mut b).is_err());
        assert!(d.expired());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn a_peer_that_hangs_up_is_no_expired_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        drop(l.accept().unwrap());
        let mut d = Deadline::until(s, Instant::now() + Duration::from_secs(600));
        let mut b = [0u8; 1];
        assert_eq!(d.read(&mut b).unwrap(), 0, "end of stream");
        assert!(!d.expired());
        // A deadline already past fails the next read at once.
        d.set_until(Instant::now());
        assert_eq!(d.read(&mut b).unwrap_err().kind(), ErrorKind::TimedOut);
        assert!(d.expired());
    }
}
