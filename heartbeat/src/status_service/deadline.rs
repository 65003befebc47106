//! A TCP stream with one deadline for the whole exchange: each read and write
//! may wait only for what is left of it, so a peer that accepts and then
//! dribbles bytes cannot hold a gathering thread longer than the deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Deadline {
    stream: TcpStream,
    until: Instant,
}

impl Deadline {
    pub fn new(stream: TcpStream, budget: Duration) -> Self {
        Deadline {
            stream,
            until: Instant::now() + budget,
        }
    }

    /// Sets the socket's timeouts to what is left; an error once nothing is.
    fn arm(&self) -> std::io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within the deadline",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_silent_peer_is_given_up_on_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _peer = l.accept().unwrap();
        let mut d = Deadline::new(s, Duration::from_millis(200));
        let t = Instant::now();
        let mut b = [0u8; 1];
        assert!(d.read(&mut b).is_err());
        assert!(d.read(&mut b).is_err());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
