//! Hub behaviour with in-process ports and fake QEMU stream clients.

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn hub() -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Hub::new("t", dir.path()).unwrap(), dir)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn read_framed(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn wait_connected(hub: &Hub, port: &str) {
    let deadline = Instant::now() + WAIT;
    while !hub.is_connected(port).unwrap() {
        assert!(Instant::now() < deadline, "{port} never connected");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forwards_to_every_other_port_and_counts() {
    let (hub, _d) = hub();
    let a = hub.add_channel_port("a").unwrap();
    let b = hub.add_channel_port("b").unwrap();
    let c = hub.add_channel_port("c").unwrap();
    a.send(b"frame-1");
    assert_eq!(b.recv_timeout(WAIT).unwrap(), b"frame-1");
    assert_eq!(c.recv_timeout(WAIT).unwrap(), b"frame-1");
    assert!(a.recv_timeout(Duration::from_millis(50)).is_none());
    let sa = hub.stats("a").unwrap();
    assert_eq!((sa.rx_frames, sa.rx_bytes, sa.tx_frames), (1, 7, 0));
    assert_eq!(hub.stats("b").unwrap().tx_frames, 1);
    assert!(matches!(
        hub.stats("zz"),
        Err(HarnessError::UnknownPort { .. })
    ));
    assert!(matches!(
        hub.add_channel_port("a"),
        Err(HarnessError::DuplicatePort { .. })
    ));
}

#[test]
fn stream_port_speaks_length_prefixed_frames_and_accepts_reconnects() {
    let (hub, _d) = hub();
    let path = hub.add_stream_port("host-a").unwrap();
    let local = hub.add_channel_port("client").unwrap();
    for round in 0..2u8 {
        let mut qemu = UnixStream::connect(&path).unwrap();
        wait_connected(&hub, "host-a");
        qemu.write_all(&framed(&[round, 1, 2, 3])).unwrap();
        assert_eq!(local.recv_timeout(WAIT).unwrap(), [round, 1, 2, 3]);
        local.send(b"reply");
        assert_eq!(read_framed(&mut qemu), b"reply");
        drop(qemu);
        let deadline = Instant::now() + WAIT;
        while hub.is_connected("host-a").unwrap() {
            assert!(Instant::now() < deadline, "disconnect not noticed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Nobody connected: frames for host-a are counted as dropped.
    local.send(b"lost");
    let deadline = Instant::now() + WAIT;
    while hub.stats("host-a").unwrap().dropped == 0 {
        assert!(Instant::now() < deadline, "drop not counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(hub.stats("host-a").unwrap().rx_frames, 2);
}

#[test]
fn oversized_length_closes_the_connection() {
    let (hub, _d) = hub();
    let path = hub.add_stream_port("h").unwrap();
    let mut qemu = UnixStream::connect(&path).unwrap();
    wait_connected(&hub, "h");
    qemu.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .unwrap();
    qemu.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        qemu.read(&mut buf).unwrap(),
        0,
        "hub should close the connection"
    );
}

#[test]
fn cut_heal_partition_and_one_way() {
    let (hub, _d) = hub();
    let a = hub.add_channel_port("a").unwrap();
    let b = hub.add_channel_port("b").unwrap();
    let c = hub.add_channel_port("c").unwrap();
    let quiet = Duration::from_millis(100);

    hub.cut("a", "b").unwrap();
    a.send(b"1");
    assert_eq!(c.recv_timeout(WAIT).unwrap(), b"1");
    assert!(b.recv_timeout(quiet).is_none());
    b.send(b"2");
    assert!(a.recv_timeout(quiet).is_none());
    assert_eq!(c.recv_timeout(WAIT).unwrap(), b"2");
    assert_eq!(hub.stats("b").unwrap().dropped, 1);

    hub.heal("a", "b").unwrap();
    a.send(b"3");
    assert_eq!(b.recv_timeout(WAIT).unwrap(), b"3");
    assert_eq!(c.recv_timeout(WAIT).unwrap(), b"3");

    hub.partition(&["a"], &["b", "c"]).unwrap();
    b.send(b"4");
    assert_eq!(c.recv_timeout(WAIT).unwrap(), b"4");
    assert!(a.recv_timeout(quiet).is_none());
    hub.heal_all();

    hub.cut_one_way("a", "b").unwrap();
    assert!(hub.link("a", "b").unwrap().cut);
    assert!(!hub.link("b", "a").unwrap().cut);
    a.send(b"5");
    b.send(b"6");
    assert_eq!(a.recv_timeout(WAIT).unwrap(), b"6");
    assert!(b.recv_timeout(quiet).is_none());
    c.recv_timeout(WAIT).unwrap();
    c.recv_timeout(WAIT).unwrap();

    hub.heal_all();
    hub.isolate("c").unwrap();
    a.send(b"7");
    assert_eq!(b.recv_timeout(WAIT).unwrap(), b"7");
    assert!(c.recv_timeout(quiet).is_none());
}

#[test]
fn drop_probability_drops_all_none_or_some() {
    let (hub, _d) = hub();
    let a = hub.add_channel_port("a").unwrap();
    let b = hub.add_channel_port("b").unwrap();
    hub.seed(42);
    let count = |n: usize| {
        for _ in 0..n {
            a.send(b"x");
        }
        let mut got = 0;
        while b.recv_timeout(Duration::from_millis(200)).is_some() {
            got += 1;
        }
        got
    };
    hub.set_drop_probability("a", "b", 1.0).unwrap();
    assert_eq!(count(100), 0);
    hub.set_drop_probability("a", "b", 0.5).unwrap();
    let some = count(1000);
    assert!((300..700).contains(&some), "{some} of 1000 passed at p=0.5");
    hub.set_drop_probability("a", "b", 0.0).unwrap();
    assert_eq!(count(100), 100);
    assert_eq!(hub.stats("b").unwrap().dropped, 100 + (1000 - some as u64));
}

#[test]
fn delay_holds_frames_back() {
    let (hub, _d) = hub();
    let a = hub.add_channel_port("a").unwrap();
    let b = hub.add_channel_port("b").unwrap();
    hub.set_delay("a", "b", Duration::from_millis(300)).unwrap();
    let sent = Instant::now();
    a.send(b"late");
    assert_eq!(b.recv_timeout(WAIT).unwrap(), b"late");
    assert!(sent.elapsed() >= Duration::from_millis(300));
}

#[test]
fn capture_records_every_frame_entering_even_if_dropped() {
    let (hub, _d) = hub();
    let a = hub.add_channel_port("a").unwrap();
    let b = hub.add_channel_port("b").unwrap();
    a.send(b"before capture");
    hub.start_capture();
    hub.isolate("a").unwrap();
    let mut eth = vec![0xff; 6];
    eth.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00]);
    a.send(&eth);
    b.send(b"from b");
    let got = hub.stop_capture();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].from, "a");
    assert_eq!(got[0].src_mac(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    assert_eq!(got[0].dst_mac(), Some([0xff; 6]));
    assert_eq!(got[0].ethertype(), Some(0x0800));
    assert_eq!(got[1].from, "b");
    assert_eq!(got[1].src_mac(), None);
    assert!(hub.captured().is_empty());
}

#[test]
fn dropping_the_hub_with_a_connected_client_returns() {
    let (hub, _d) = hub();
    let path = hub.add_stream_port("h").unwrap();
    let _other = hub.add_channel_port("o").unwrap();
    let mut qemu = UnixStream::connect(&path).unwrap();
    wait_connected(&hub, "h");
    drop(hub);
    qemu.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(qemu.read(&mut buf).unwrap(), 0);
}
