//! Starting `ftguest-linux-kv --serve` on a disk file and talking to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ftguest_kvlog::SECTOR_SIZE;

/// A running server and its console.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Console lines up to and including the listening line.
    pub lines: Vec<String>,
}

impl Server {
    /// SIGKILL, no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A zeroed disk file of `sectors` sectors in `dir`.
pub fn disk(dir: &Path, sectors: usize) -> PathBuf {
    let path = dir.join("vda.img");
    std::fs::write(&path, vec![0u8; sectors * SECTOR_SIZE]).unwrap();
    path
}

/// Starts the server and waits for `kv: listening on 127.0.0.1:<port> ...`.
pub fn start(disk: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_ftguest-linux-kv"))
        .args(["--serve", "--disk"])
        .arg(disk)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Owned by a Server at once, so a failed wait below still kills and reaps it.
    let mut server = Server {
        child,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        lines: Vec::new(),
    };
    let stdout = server.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no listening line ({e}); got {:?}", server.lines));
        server.lines.push(line.clone());
        if let Some(rest) = line.strip_prefix("kv: listening on ") {
            server.addr = rest.split(' ').next().unwrap().parse().unwrap();
            return server;
        }
    }
}

/// A line-protocol client.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream: BufReader::new(s),
        })
    }

    /// Sends `lines` in one write and reads one reply line per line.
    pub fn pipeline(&mut self, lines: &[String]) -> std::io::Result<Vec<String>> {
        let all: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.stream.get_mut().write_all(all.as_bytes())?;
        let mut replies = Vec::new();
        for _ in lines {
            let mut reply = String::new();
            if self.stream.read_line(&mut reply)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            replies.push(reply.trim_end_matches('\n').to_string());
        }
        Ok(replies)
    }

    /// Sends one line and reads one reply line (without `\n`).
    pub fn call(&mut self, line: &str) -> std::io::Result<String> {
        self.stream
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.stream.read_line(&mut reply)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(reply.trim_end_matches('\n').to_string())
    }
}

/// The value of `key=<n>` in a console or STAT line.
pub fn field(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
