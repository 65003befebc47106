//! Two TAP clients in two network namespaces, joined by a hub, talk TCP; a
//! cut on the hub stops them and a heal restores them. Needs root: fails (does
//! not skip) otherwise.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use qemu_tests::{netns, Hub, NetnsTap};

const CONNECT: Duration = Duration::from_secs(5);

fn require_root() {
    assert!(
        netns::is_root(),
        "this test creates network namespaces and TAP devices: run it as root"
    );
}

/// Opens a connection from `client` to `addr`, sends a line, expects it echoed.
fn round_trip(client: &NetnsTap, addr: SocketAddr, listener: &std::net::TcpListener) {
    let mut c = client.tcp_connect(addr, CONNECT).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"ping over the hub\n").unwrap();
    let mut buf = [0u8; 18];
    s.read_exact(&mut buf).unwrap();
    s.write_all(&buf).unwrap();
    let mut back = [0u8; 18];
    c.set_read_timeout(Some(CONNECT)).unwrap();
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping over the hub\n");
}

#[test]
fn tcp_between_two_namespaces_through_the_hub_and_a_cut_stops_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new("vm", dir.path()).unwrap();
    let pid = std::process::id();
    let a = NetnsTap::attach(
        &hub,
        "client-a",
        &format!("ftt-a-{pid}"),
        "198.51.100.200/24",
        Some("52:54:00:aa:00:01"),
    )
    .unwrap();
    let b = NetnsTap::attach(
        &hub,
        "client-b",
        &format!("ftt-b-{pid}"),
        "198.51.100.201/24",
        Some("52:54:00:aa:00:02"),
    )
    .unwrap();
    let addr: SocketAddr = "198.51.100.201:7777".parse().unwrap();
    let listener = b.tcp_listen(addr).unwrap();

    round_trip(&a, addr, &listener);
    let sa = hub.stats("client-a").unwrap();
    let sb = hub.stats("client-b").unwrap();
    assert!(sa.rx_frames >= 3 && sb.rx_frames >= 3, "{sa:?} {sb:?}");
    assert!(sa.tx_frames >= 3 && sb.tx_frames >= 3, "{sa:?} {sb:?}");

    hub.cut("client-a", "client-b").unwrap();
    let err = a
        .tcp_connect(addr, Duration::from_secs(1))
        .expect_err("connect must fail while the link is cut");
    assert!(err.to_string().contains("198.51.100.201"), "{err}");
    assert!(hub.stats("client-b").unwrap().dropped > 0);

    hub.heal("client-a", "client-b").unwrap();
    round_trip(&a, addr, &listener);
}

#[test]
fn capture_sees_frames_from_the_namespace_client() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new("vm", dir.path()).unwrap();
    let pid = std::process::id();
    let mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x03];
    let a = NetnsTap::attach(
        &hub,
        "client",
        &format!("ftt-c-{pid}"),
        "198.51.100.202/24",
        Some("52:54:00:aa:00:03"),
    )
    .unwrap();
    hub.start_capture();
    // Nobody has this address: the client ARPs for it, and the ARP request
    // is what the capture must show.
    let _ = a.tcp_connect(
        "198.51.100.99:80".parse().unwrap(),
        Duration::from_millis(1500),
    );
    let frames = hub.stop_capture();
    assert!(
        frames.iter().any(|f| f.from == "client"
            && f.src_mac() == Some(mac)
            && f.ethertype() == Some(0x0806)),
        "no ARP request from the client among {} captured frames",
        frames.len()
    );
}
