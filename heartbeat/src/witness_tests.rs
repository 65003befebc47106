//! The witness's echo check and state, on packets built here the way a
//! router's kernel answers.

use super::*;
use etherparse::PacketBuilder;

const W: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ID: u16 = 0x4242;
const NONCE: u64 = 0x0123_4567_89ab_cdef;

/// An IPv4 echo reply from `from` with `id`, `seq` and `body`.
fn reply(from: Ipv4Addr, id: u16, seq: u16, body: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(from.octets(), ME.octets(), 64).icmpv4_echo_reply(id, seq);
    let mut out = Vec::new();
    b.write(&mut out, body).unwrap();
    out
}

/// What a router sends back for our request `req` (type 0, same rest).
fn answer_to(req: &[u8]) -> Vec<u8> {
    let (h, body) = Icmpv4Header::from_slice(req).unwrap();
    let Icmpv4Type::EchoRequest(e) = h.icmp_type else {
        panic!("not a request: {h:?}")
    };
    reply(W, e.id, e.seq, body)
}

#[test]
fn a_request_is_a_valid_echo_request_with_our_payload() {
    let req = echo_request(ID, 7, NONCE);
    let (h, body) = Icmpv4Header::from_slice(&req).unwrap();
    assert_eq!(
        h.icmp_type,
        Icmpv4Type::EchoRequest(IcmpEchoHeader { id: ID, seq: 7 })
    );
    assert_eq!(body, payload(NONCE));
    assert_eq!(
        h.checksum,
        Icmpv4Header::with_checksum(h.icmp_type.clone(), body).checksum
    );
}

#[test]
fn the_witness_answer_to_our_request_is_accepted_with_its_seq() {
    let r = answer_to(&echo_request(ID, 9, NONCE));
    assert_eq!(parse_reply(&r, W, ID, NONCE), Ok(9));
}

#[test]
fn everything_else_is_refused_and_says_why() {
    let good = reply(W, ID, 1, &payload(NONCE));
    assert_eq!(
        parse_reply(&reply(ME, ID, 1, &payload(NONCE)), W, ID, NONCE),
        Err(ReplyError::NotWitness(ME))
    );
    assert_eq!(
        parse_reply(&reply(W, ID + 1, 1, &payload(NONCE)), W, ID, NONCE),
        Err(ReplyError::OtherId(ID + 1))
    );
    assert_eq!(
        parse_reply(&reply(W, ID, 1, &payload(NONCE + 1)), W, ID, NONCE),
        Err(ReplyError::Payload)
    );
    assert_eq!(
        parse_reply(&reply(W, ID, 1, b"short"), W, ID, NONCE),
        Err(ReplyError::Payload)
    );
    // Someone pinging this host: a request, not a reply.
    let mut req = Vec::new();
    PacketBuilder::ipv4(W.octets(), ME.octets(), 64)
        .icmpv4_echo_request(ID, 1)
        .write(&mut req, &payload(NONCE))
        .unwrap();
    assert_eq!(
        parse_reply(&req, W, ID, NONCE),
        Err(ReplyError::NotEchoReply(8))
    );
    // A flipped bit in the payload: the checksum no longer holds.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(parse_reply(&bad, W, ID, NONCE), Err(ReplyError::Checksum));
    // Torn, empty, not IPv4, not ICMP.
    for cut in [0, 1, 19, 20, 27] {
        assert!(
            matches!(
                parse_reply(&good[..cut], W, ID, NONCE),
                Err(ReplyError::Malformed(_))
            ),
            "cut at {cut}"
        );
    }
    let mut udp = Vec::new();
    PacketBuilder::ipv4(W.octets(), ME.octets(), 64)
        .udp(1, 2)
        .write(&mut udp, b"x")
        .unwrap();
    assert!(matches!(
        parse_reply(&udp, W, ID, NONCE),
        Err(ReplyError::Malformed(m)) if m.contains("not ICMP")
    ));
}

#[test]
fn a_reply_counts_once_for_an_outstanding_probe_and_times_the_round_trip() {
    let mut w = Witness::new(W, ID, NONCE);
    let p0 = w.next_probe(1_000);
    w.sent_ok();
    let p1 = w.next_probe(1_100);
    w.sent_ok();
    assert!(!w.heard(1_100, 500));
    w.on_datagram(&answer_to(&p1), 1_130).unwrap();
    assert_eq!((w.replies, w.last_rtt_ms, w.bad), (1, Some(30), 0));
    assert!(w.heard(1_630, 500) && !w.heard(1_631, 500));
    // p0 was older than p1's answer: forgotten with it, so its late
    // answer, and p1's duplicate, count as bad, not as hearing.
    w.on_datagram(&answer_to(&p0), 1_200).unwrap();
    w.on_datagram(&answer_to(&p1), 1_200).unwrap();
    assert_eq!((w.replies, w.bad, w.last_reply_ms), (1, 2, Some(1_130)));
    // Foreign traffic is not bad; a forged payload is.
    let other = reply(W, ID + 1, 0, &payload(NONCE));
    assert!(w.on_datagram(&other, 1_300).is_err());
    assert_eq!(w.bad, 2);
    let forged = reply(W, ID, 2, &payload(NONCE ^ 1));
    assert!(w.on_datagram(&forged, 1_300).is_err());
    assert_eq!(w.bad, 3);
    assert_eq!(w.sent, 2);
}

#[test]
fn only_the_last_probes_are_remembered() {
    let mut w = Witness::new(W, ID, NONCE);
    let first = w.next_probe(0);
    for t in 1..=OUTSTANDING as u64 {
        w.next_probe(t);
    }
    w.on_datagram(&answer_to(&first), 100).unwrap();
    assert_eq!((w.replies, w.bad), (0, 1));
}

#[test]
fn the_sequence_wraps_and_still_matches() {
    let mut w = Witness::new(W, ID, NONCE);
    let mut last = Vec::new();
    for t in 0..=u64::from(u16::MAX) + 2 {
        last = w.next_probe(t);
    }
    let (h, _) = Icmpv4Header::from_slice(&last).unwrap();
    assert_eq!(
        h.icmp_type,
        Icmpv4Type::EchoRequest(IcmpEchoHeader { id: ID, seq: 1 })
    );
    w.on_datagram(&answer_to(&last), 70_000).unwrap();
    assert_eq!(w.replies, 1);
}

#[test]
fn console_lines_say_each_change_once_and_a_witness_that_never_answered() {
    let mut w = Witness::new(W, ID, NONCE);
    assert_eq!(w.transition(0, 500), None, "nothing sent yet");
    let p = w.next_probe(0);
    assert_eq!(w.transition(400, 500), None);
    let line = w.transition(600, 500).unwrap();
    assert!(
        line.ends_with("not heard on the VM network (never answered in 600 ms)"),
        "{line}"
    );
    assert_eq!(w.transition(700, 500), None, "said once");
    w.on_datagram(&answer_to(&p), 700).unwrap();
    let line = w.transition(700, 500).unwrap();
    assert_eq!(
        line,
        "heartbeat: witness 198.51.100.254 answers on the VM network (round trip 700 ms)"
    );
    assert_eq!(w.transition(1_200, 500), None);
    let line = w.transition(1_201, 500).unwrap();
    assert!(
        line.ends_with("not heard on the VM network (silent 501 ms)"),
        "{line}"
    );
    let s = w.status(1_201, 500);
    assert_eq!(s["heard"], false);
    assert_eq!(s["last_reply_ms_ago"], 501);
    assert_eq!(s["addr"], "198.51.100.254");
}
