//! Storage path behaviour against a fake NBD server that records what
//! arrives on each upstream connection (no qemu-nbd needed).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use super::{PathStats, StoragePath};

const PATIENCE: Duration = Duration::from_secs(20);

/// What the fake server saw: bytes on upstream connection `n`, or its end.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Bytes(usize, Vec<u8>),
    Eof(usize),
}

fn fake_server(socket: &Path) -> Receiver<Seen> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let (tx, mut conn) = (tx.clone(), conn.unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(len @ 1..) = conn.read(&mut buf) {
                    let _ = tx.send(Seen::Bytes(n, buf[..len].to_vec()));
                }
                let _ = tx.send(Seen::Eof(n));
            });
        }
    });
    rx
}

/// Collects bytes of connection `conn` until `len` arrived.
fn collect(rx: &Receiver<Seen>, conn: usize, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match rx
            .recv_timeout(PATIENCE)
            .expect("fake server heard nothing")
        {
            Seen::Bytes(n, b) if n == conn => got.extend(b),
            other => panic!("unexpected {other:?} after {got:?}"),
        }
    }
    got
}

fn wait_stats(path: &StoragePath, cond: impl Fn(&PathStats) -> bool) {
    let start = Instant::now();
    while !cond(&path.stats()) {
        assert!(start.elapsed() < PATIENCE, "{:?}", path.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn setup() -> (tempfile::TempDir, StoragePath, Receiver<Seen>) {
    let dir = tempfile::tempdir().unwrap();
    let rx = fake_server(&dir.path().join("up.sock"));
    let path = StoragePath::start(
        "t",
        &dir.path().join("down.sock"),
        &dir.path().join("up.sock"),
    )
    .unwrap();
    (dir, path, rx)
}

#[test]
fn chunks_sent_after_a_delay_ends_queue_behind_the_delayed_ones() {
    let (_dir, path, rx) = setup();
    let mut host = UnixStream::connect(path.socket()).unwrap();
    path.delay(Duration::from_millis(200));
    host.write_all(b"one").unwrap();
    wait_stats(&path, |s| s.delayed_chunks == 1);
    path.pass();
    host.write_all(b"two").unwrap();
    assert_eq!(collect(&rx, 0, 6), b"onetwo");
    wait_stats(&path, |s| s.to_storage == 6);
}

#[test]
fn a_cut_drops_the_hosts_bytes_and_restore_closes_its_connection() {
    let (_dir, path, rx) = setup();
    let mut host = UnixStream::connect(path.socket()).unwrap();
    host.write_all(b"before").unwrap();
    assert_eq!(collect(&rx, 0, 6), b"before");
    path.cut();
    // The upstream connection ends; the host's stays open.
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), Seen::Eof(0));
    host.write_all(b"during").unwrap();
    wait_stats(&path, |s| s.discarded == 6);
    // A connection made during the cut is accepted but not forwarded.
    let mut late = UnixStream::connect(path.socket()).unwrap();
    late.write_all(b"late").unwrap();
    wait_stats(&path, |s| s.discarded == 10 && s.connections == 2);
    path.restore();
    let mut buf = [0u8; 8];
    assert_eq!(
        host.read(&mut buf).unwrap(),
        0,
        "host connection not closed"
    );
    assert_eq!(
        late.read(&mut buf).unwrap(),
        0,
        "late connection not closed"
    );
    let mut again = UnixStream::connect(path.socket()).unwrap();
    again.write_all(b"after").unwrap();
    assert_eq!(collect(&rx, 1, 5), b"after");
    wait_stats(&path, |s| s.to_storage == 11);
}

#[test]
fn replies_reach_the_host_and_a_server_end_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("up.sock")).unwrap();
    let path = StoragePath::start(
        "t",
        &dir.path().join("down.sock"),
        &dir.path().join("up.sock"),
    )
    .unwrap();
    let mut host = UnixStream::connect(path.socket()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(b"reply").unwrap();
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    drop(server);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    wait_stats(&path, |s| s.to_host == 5);
}

#[test]
fn a_severed_path_closes_the_hosts_connections_old_and_new() {
    let (_dir, path, rx) = setup();
    let mut host = UnixStream::connect(path.socket()).unwrap();
    host.write_all(b"before").unwrap();
    assert_eq!(collect(&rx, 0, 6), b"before");
    path.sever();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), Seen::Eof(0));
    host.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0, "old connection not closed");
    let mut late = UnixStream::connect(path.socket()).unwrap();
    late.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(late.read(&mut buf).unwrap(), 0, "new connection not closed");
    // Nothing reached storage after the sever.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

/// A TCP path (iSCSI) forwards both ways to a TCP server, and a cut stops
/// the host's bytes at the path like on a Unix path.
#[test]
fn a_tcp_path_forwards_and_cuts_like_a_unix_one() {
    use std::net::{TcpListener, TcpStream};
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        let mut buf = [0u8; 64];
        while let Ok(len @ 1..) = conn.read(&mut buf) {
            let _ = tx.send(buf[..len].to_vec());
            let _ = conn.write_all(b"ack");
        }
    });
    let path = StoragePath::start_tcp("t", upstream).unwrap();
    let addr = path.tcp_addr().expect("a TCP path has a TCP address");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let mut host = TcpStream::connect(addr).unwrap();
    host.set_read_timeout(Some(PATIENCE)).unwrap();
    host.write_all(b"login").unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"login");
    let mut ack = [0u8; 3];
    host.read_exact(&mut ack).unwrap();
    assert_eq!(&ack, b"ack");
    path.cut();
    host.write_all(b"late").unwrap();
    wait_stats(&path, |s| s.discarded == 4);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(path.stats().to_storage, 5);
}

#[test]
#[should_panic(expected = "listens on TCP")]
fn a_tcp_path_has_no_unix_socket() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = StoragePath::start_tcp("t", server.local_addr().unwrap()).unwrap();
    let _ = path.socket();
}
