//! A client of the reference guest's KV service (guest/README.md): one TCP
//! connection from a test client's network namespace, line requests sent in
//! windows and one line reply each.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::NetnsTap;

/// The guest's KV address in `examples/cluster.toml`.
pub const GUEST: &str = "198.51.100.10:7000";
/// One reply of the guest (a PUT waits for its disk write and flush).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests sent before their replies are read (one connection, pipelined).
pub const WINDOW: usize = 25;

/// One KV connection with line replies.
pub struct Kv {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Kv {
    /// Connects from `client` to [`GUEST`] (panics with the reason if it can't).
    /// A refused connection is retried for up to 10 s and reported on stderr:
    /// once (1 run in ~10) the first SYN to a pair's freshly listening guest
    /// was answered with a reset, because the guest announced `listening`
    /// before its sockets listened (fixed in guest/src/kv.rs). The retry
    /// stays as a guard, visible if it ever fires again.
    pub fn connect(client: &NetnsTap) -> Kv {
        let addr: SocketAddr = GUEST.parse().expect("valid address");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut refused = 0;
        let stream = loop {
            match client.tcp_connect(addr, Duration::from_secs(60)) {
                Ok(s) => break s,
                Err(e)
                    if e.to_string().contains("refused")
                        && std::time::Instant::now() < deadline =>
                {
                    refused += 1;
                    eprintln!(
                        "kv client: connection to {GUEST} refused ({refused}); retrying: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("cannot connect to the guest at {GUEST}: {e}"),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Kv {
            writer: stream,
            reader,
        }
    }

    /// Sends `requests` in windows of [`WINDOW`] and returns one reply per request.
    pub fn exchange(&mut self, requests: &[String]) -> Vec<String> {
        let mut replies = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(WINDOW) {
            let mut batch = String::new();
            for r in chunk {
                batch.push_str(r);
                batch.push('\n');
            }
            self.writer
                .write_all(batch.as_bytes())
                .unwrap_or_else(|e| panic!("send to the guest failed: {e}"));
            for r in chunk {
                let mut line = String::new();
                match self.reader.read_line(&mut line) {
                    Ok(0) => panic!("the guest closed the connection; request {r:?}"),
                    Ok(_) => replies.push(line.trim_end().to_string()),
                    Err(e) => panic!("no reply to {r:?} within {REPLY_TIMEOUT:?}: {e}"),
                }
            }
        }
        replies
    }

    pub fn one(&mut self, request: &str) -> String {
        self.exchange(&[request.to_string()]).remove(0)
    }
}

pub fn key(i: usize) -> String {
    format!("key-{i:05}")
}

pub fn value(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(i % 50))
}

/// PUTs keys `0..keys` and checks every reply is `OK`.
pub fn put_all(kv: &mut Kv, keys: usize) {
    let puts: Vec<String> = (0..keys)
        .map(|i| format!("PUT {} {}", key(i), value(i)))
        .collect();
    for (i, r) in kv.exchange(&puts).iter().enumerate() {
        assert_eq!(r, "OK", "reply to PUT {}", key(i));
    }
}

/// GETs keys `0..keys` and checks every value.
pub fn get_all(kv: &mut Kv, keys: usize) {
    let gets: Vec<String> = (0..keys).map(|i| format!("GET {}", key(i))).collect();
    for (i, r) in kv.exchange(&gets).iter().enumerate() {
        assert_eq!(*r, format!("VALUE {}", value(i)), "reply to GET {}", key(i));
    }
}

/// The KV table as the guest's on-disk log holds it: the VM's disk region
/// of the shared storage file, replayed with the guest's own code
/// (`ftguest-kvlog`), plus how the log ended.
pub fn on_disk(
    shared: &std::path::Path,
    config: &config_schema::ClusterConfig,
    vm: &str,
) -> std::io::Result<(std::collections::BTreeMap<String, String>, String)> {
    use std::os::unix::fs::FileExt;
    let v = config
        .vms
        .iter()
        .find(|v| v.name == vm)
        .ok_or_else(|| std::io::Error::other(format!("no vm {vm} in the config")))?;
    let r = config
        .storage
        .regions
        .iter()
        .find(|r| r.name == v.disk_region)
        .ok_or_else(|| std::io::Error::other(format!("no region {}", v.disk_region)))?;
    struct Region {
        file: std::fs::File,
        offset: u64,
        sectors: u64,
    }
    impl ftguest_kvlog::SectorSource for Region {
        type Error = std::io::Error;
        fn capacity_sectors(&self) -> u64 {
            self.sectors
        }
        fn read_sectors(&mut self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let at = self.offset + first * ftguest_kvlog::SECTOR_SIZE as u64;
            self.file.read_exact_at(buf, at)
        }
    }
    let mut src = Region {
        file: std::fs::File::open(shared)?,
        offset: r.offset_mib << 20,
        sectors: (r.size_mib << 20) / ftguest_kvlog::SECTOR_SIZE as u64,
    };
    let mut table = std::collections::BTreeMap::new();
    let outcome = ftguest_kvlog::replay(&mut src, |rec| {
        table.insert(
            String::from_utf8_lossy(rec.key).into_owned(),
            String::from_utf8_lossy(rec.value).into_owned(),
        );
    })?;
    let end = format!(
        "{} records, next sector {}, end {:?}",
        outcome.records, outcome.next_sector, outcome.end
    );
    Ok((table, end))
}
