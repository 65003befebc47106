//! A console sink that timestamps each complete guest serial line and hands it to the
//! benchmark thread over a channel (the vCPU thread writes console bytes synchronously at the
//! exit that produced them, so the timestamp is when the VMM saw the line's newline).

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// One guest console line and when its newline reached the VMM.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// Splits the byte stream into lines; sends each one (without `\r\n`).
pub struct LineSink {
    buf: Vec<u8>,
    tx: Sender<Line>,
    echo: bool,
}

impl LineSink {
    /// A sink and the receiving end; with `echo`, lines are also printed to stderr.
    pub fn new(echo: bool) -> (LineSink, Receiver<Line>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            LineSink {
                buf: Vec::new(),
                tx,
                echo,
            },
            rx,
        )
    }
}

impl Write for LineSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        for &b in bytes {
            if b == b'\n' {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&self.buf).trim_end().to_string();
                self.buf.clear();
                if self.echo {
                    eprintln!("  guest| {text}");
                }
                // The benchmark may have stopped listening (VM being torn down): not an error.
                let _ = self.tx.send(Line { at, text });
            } else {
                self.buf.push(b);
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits for the first line starting with `prefix`, up to `timeout`.
pub fn wait_for(rx: &Receiver<Line>, prefix: &str, timeout: Duration) -> Result<Line, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.text.starts_with(prefix) => return Ok(line),
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("no guest line {prefix:?} within {timeout:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("the VM ended before printing {prefix:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_writes_and_found_by_prefix() {
        let (mut sink, rx) = LineSink::new(false);
        sink.write_all(b"guest: bo").unwrap();
        sink.write_all(b"ot\r\ncpu: checksum=00ff ticks=0\nrest")
            .unwrap();
        let first = wait_for(&rx, "guest: boot", Duration::from_secs(1)).unwrap();
        assert_eq!(first.text, "guest: boot");
        let cpu = wait_for(&rx, "cpu:", Duration::from_secs(1)).unwrap();
        assert_eq!(cpu.text, "cpu: checksum=00ff ticks=0");
        assert!(wait_for(&rx, "rest", Duration::from_millis(10)).is_err());
        drop(sink);
        assert!(wait_for(&rx, "x", Duration::from_secs(1))
            .unwrap_err()
            .contains("ended"));
    }
}
