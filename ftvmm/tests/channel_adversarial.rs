//! The logging channel over real loopback TCP: round trips of every message
//! (including a 5 MiB batch), both directions at once, key checks in the
//! handshake, and a man-in-the-middle proxy that corrupts, replays, reorders,
//! forges and truncates frames — each refused with the right error and a log
//! line, delivering exactly the messages before the bad frame.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ftvmm::lockstep::channel::fuzzing::memory_handshake;
use ftvmm::lockstep::channel::wire::{encode_message, seal_message, MAX_FRAGMENT_DATA};
use ftvmm::lockstep::channel::{accept, connect, Channel, ChannelError, Hello, Identity, Message};

const T: Duration = Duration::from_secs(10);

struct Keys {
    primary: Identity,
    secondary: Identity,
}

fn keys() -> Keys {
    let (a, _) = config_schema::keys::generate_host_key().unwrap();
    let (b, _) = config_schema::keys::generate_host_key().unwrap();
    Keys {
        primary: Identity { private_key: a },
        secondary: Identity { private_key: b },
    }
}

/// `allowed` for the Secondary: only the Primary's key, named host-a.
fn only(key: [u8; 32]) -> impl Fn(&[u8; 32]) -> Option<String> {
    move |k: &[u8; 32]| (*k == key).then(|| "host-a".to_string())
}

/// Captures tracing output of the current thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || me.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A Secondary listening on loopback; the handshake runs in a thread.
type Listening = (
    SocketAddr,
    thread::JoinHandle<Result<Channel, ChannelError>>,
);

fn listen(k: &Keys) -> Listening {
    listen_logged(k, Capture::default())
}

/// Like [`listen`], capturing the Secondary thread's log into `log`.
fn listen_logged(k: &Keys, log: Capture) -> Listening {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let id = k.secondary.clone();
    let allowed = only(k.primary.public_key());
    let h = thread::spawn(move || {
        let _g = log.install();
        let (s, _) = l.accept().unwrap();
        accept(s, &id, &allowed, T)
    });
    (addr, h)
}

fn pair() -> (Channel, Channel) {
    let k = keys();
    let (addr, h) = listen(&k);
    let p = connect(addr, &k.primary, &k.secondary.public_key(), "host-b", T).unwrap();
    let s = h.join().unwrap().unwrap();
    (p, s)
}

fn all_kinds() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            vm: "kv".into(),
            generation: 7,
            config_generation: 3,
            config_digest: [0x2b; 32],
            image_sha256: [0x5a; 32],
            mem_mib: 128,
            start_exit: 0,
            primary_host: "host-a".into(),
            replication: ftvmm::lockstep::channel::PairMode::Lockstep,
            platform: Box::new(ftvmm::platform::Platform {
                baseline: "x86-64-v1, 39-bit physical addresses".into(),
                cpuid: vec![ftvmm::cpuid::Leaf {
                    function: 1,
                    index: 0,
                    flags: 0,
                    eax: ftvmm::cpuid::SIGNATURE,
                    ebx: 0x800,
                    ecx: 0,
                    edx: 0x0789_a96d,
                }],
                cpuid_overrides: vec![],
                msrs: ftvmm::platform::MsrPolicy::Unfiltered,
                pv_features_enforced: true,
                vmm: "ftvmm test".into(),
            }),
        }),
        Message::HelloReply {
            accepted: true,
            reason: String::new(),
        },
        Message::Batch {
            first_seq: 0,
            count: 1,
            bytes: vec![9; 100],
            sent_ns: 0,
        },
        Message::Ack {
            received: 1,
            replayed: 0,
            replayed_exit: 0,
            echo_ns: 0,
        },
        Message::Bye {
            reason: "done".into(),
        },
    ]
}

fn batch(seq: u64, len: usize) -> Message {
    Message::Batch {
        first_seq: seq,
        count: 1,
        bytes: (0..len).map(|i| (i as u64 * 31 + seq) as u8).collect(),
        sent_ns: seq,
    }
}

#[test]
fn every_message_kind_and_a_5_mib_batch_round_trip_both_ways() {
    let (mut p, mut s) = pair();
    assert_eq!(s.peer(), "host-a");
    assert_eq!(p.peer(), "host-b");
    let mut msgs = all_kinds();
    msgs.insert(3, batch(1, 5 << 20));
    // Each direction in turn; the receiver runs in its own thread because a
    // 5 MiB message does not fit in the socket buffers.
    let expect = msgs.clone();
    let rx = thread::spawn(move || {
        for m in &expect {
            assert_eq!(&s.recv().unwrap(), m);
        }
        s
    });
    for m in &msgs {
        p.send(m).unwrap();
    }
    let mut s = rx.join().unwrap();
    let expect = msgs.clone();
    let rx = thread::spawn(move || {
        for m in &expect {
            assert_eq!(&p.recv().unwrap(), m);
        }
        p
    });
    for m in &msgs {
        s.send(m).unwrap();
    }
    let p = rx.join().unwrap();
    drop(p);
    assert!(matches!(s.recv(), Err(ChannelError::Closed)));
}

#[test]
fn both_directions_at_once_from_separate_threads() {
    let (p, s) = pair();
    let (mut ptx, mut prx) = p.split();
    let (mut stx, mut srx) = s.split();
    const N: u64 = 300;
    let sizes = |i: u64| [10usize, 70_000, 1000, 200_000][(i % 4) as usize];
    let t1 = thread::spawn(move || (0..N).for_each(|i| ptx.send(&batch(i, sizes(i))).unwrap()));
    let t2 = thread::spawn(move || {
        (0..N).for_each(|i| {
            stx.send(&Message::Ack {
                received: i,
                replayed: i / 2,
                replayed_exit: i * 10,
                echo_ns: 0,
            })
            .unwrap()
        })
    });
    let t3 = thread::spawn(move || {
        (0..N).for_each(|i| assert_eq!(srx.recv().unwrap(), batch(i, sizes(i))))
    });
    let t4 = thread::spawn(move || {
        (0..N).for_each(|i| {
            assert_eq!(
                prx.recv().unwrap(),
                Message::Ack {
                    received: i,
                    replayed: i / 2,
                    replayed_exit: i * 10,
                    echo_ns: 0,
                }
            )
        })
    });
    for t in [t1, t2, t3, t4] {
        t.join().unwrap();
    }
}

#[test]
fn read_timeout_is_not_fatal_and_shutdown_wakes_the_receiver() {
    let (p, s) = pair();
    let (mut ptx, _prx) = p.split();
    let (_stx, mut srx) = s.split();
    srx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    assert!(matches!(srx.recv(), Err(ChannelError::Timeout)));
    ptx.send(&Message::Bye { reason: "x".into() }).unwrap();
    srx.set_read_timeout(None).unwrap();
    assert_eq!(srx.recv().unwrap(), Message::Bye { reason: "x".into() });
    let waiter = thread::spawn(move || srx.recv());
    ptx.shutdown();
    assert!(matches!(waiter.join().unwrap(), Err(ChannelError::Closed)));
    assert!(matches!(
        ptx.send(&Message::Bye { reason: "y".into() }),
        Err(ChannelError::Io(_))
    ));
}

#[test]
fn an_initiator_whose_key_is_not_allowed_is_refused() {
    let k = keys();
    let intruder = Identity {
        private_key: config_schema::keys::generate_host_key().unwrap().0,
    };
    let log = Capture::default();
    let (addr, h) = listen_logged(&k, log.clone());
    let err = connect(addr, &intruder, &k.secondary.public_key(), "host-b", T).unwrap_err();
    assert!(matches!(err, ChannelError::Handshake(_)), "{err}");
    let err = h.join().unwrap().unwrap_err();
    let want = format!("unknown peer key {}", hex(&intruder.public_key()));
    assert!(
        matches!(&err, ChannelError::UnknownPeer { key } if want.ends_with(key.as_str())),
        "{err}"
    );
}

#[test]
fn an_initiator_expecting_the_wrong_responder_key_fails_the_handshake() {
    let k = keys();
    let (addr, h) = listen(&k);
    let wrong = config_schema::keys::generate_host_key().unwrap().1;
    let err = connect(addr, &k.primary, &wrong, "host-b", T).unwrap_err();
    assert!(matches!(err, ChannelError::Handshake(_)), "{err}");
    let err = h.join().unwrap().unwrap_err();
    assert!(
        matches!(&err, ChannelError::Handshake(s) if s.contains("did not authenticate")),
        "{err}"
    );
}

#[test]
fn a_silent_peer_times_the_handshake_out_on_both_sides() {
    let k = keys();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hold = thread::spawn(move || l.accept().unwrap().0);
    let err = connect(
        addr,
        &k.primary,
        &k.secondary.public_key(),
        "host-b",
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ChannelError::Handshake(s) if s.contains("timed out")),
        "{err}"
    );
    drop(hold.join().unwrap());

    let (addr, h) = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let id = k.secondary.clone();
        (
            addr,
            thread::spawn(move || {
                accept(
                    l.accept().unwrap().0,
                    &id,
                    &|_| Some("x".into()),
                    Duration::from_millis(100),
                )
            }),
        )
    };
    let _silent = TcpStream::connect(addr).unwrap();
    let err = h.join().unwrap().unwrap_err();
    assert!(
        matches!(&err, ChannelError::Handshake(s) if s.contains("timed out")),
        "{err}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- man in the middle ----

#[derive(Clone)]
enum Attack {
    /// XOR 0x40 into byte `at` of frame `frame` (header included: 0..4 length, 4..12 nonce).
    Flip { frame: usize, at: usize },
    /// After forwarding frame `after`, send frame `again` once more.
    Replay { after: usize, again: usize },
    /// Send frame `frame + 1` before frame `frame`.
    Swap { frame: usize },
    /// Send these bytes before frame `before`.
    Inject { before: usize, bytes: Vec<u8> },
    /// Send only `keep` bytes of frame `frame`, then close.
    Truncate { frame: usize, keep: usize },
}

fn read_n(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).ok().map(|_| b)
}

/// Forwards the Primary's handshake message, then frame by frame with the attack.
fn forward(mut from: TcpStream, mut to: TcpStream, attack: Attack) {
    let len = read_n(&mut from, 2).unwrap();
    let msg = read_n(&mut from, u16::from_be_bytes([len[0], len[1]]) as usize).unwrap();
    to.write_all(&[len, msg].concat()).unwrap();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut held = None;
    let mut send = |b: &[u8]| {
        let _ = to.write_all(b);
    };
    while let Some(head) = read_n(&mut from, 4) {
        let body = read_n(
            &mut from,
            u32::from_be_bytes(head[..].try_into().unwrap()) as usize,
        )
        .unwrap();
        let f = [head, body].concat();
        let i = frames.len();
        frames.push(f.clone());
        match &attack {
            Attack::Flip { frame, at } if i == *frame => {
                let mut f = f;
                f[*at] ^= 0x40;
                send(&f);
            }
            Attack::Replay { after, again } if i == *after => {
                send(&f);
                send(&frames[*again]);
            }
            Attack::Swap { frame } if i == *frame => held = Some(f),
            Attack::Swap { frame } if i == *frame + 1 => {
                send(&f);
                send(&held.take().unwrap());
            }
            Attack::Inject { before, bytes } if i == *before => {
                send(bytes);
                send(&f);
            }
            Attack::Truncate { frame, keep } if i == *frame => {
                send(&f[..*keep]);
                break;
            }
            _ => send(&f),
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A proxy in front of `real`; returns its address.
fn mitm(real: SocketAddr, attack: Attack) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let (client, _) = l.accept().unwrap();
        let server = TcpStream::connect(real).unwrap();
        let (mut s2, mut c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
        thread::spawn(move || {
            let _ = io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(Shutdown::Write);
        });
        forward(client, server, attack);
    });
    addr
}

/// Sends `msgs` from a Primary through a proxy running `attack`; returns what
/// the Secondary delivered, the error that ended it, and its log.
fn attacked(msgs: &[Message], attack: Attack) -> (Vec<Message>, ChannelError, String) {
    let k = keys();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let real = l.local_addr().unwrap();
    let id = k.secondary.clone();
    let allowed = only(k.primary.public_key());
    let secondary = thread::spawn(move || {
        let log = Capture::default();
        let _g = log.install();
        let mut ch = accept(l.accept().unwrap().0, &id, &allowed, T).unwrap();
        let mut got = Vec::new();
        let err = loop {
            match ch.recv() {
                Ok(m) => got.push(m),
                Err(e) => break e,
            }
        };
        if err.is_refusal() {
            assert!(
                matches!(ch.recv(), Err(ChannelError::Dead)),
                "a refused connection must stay dead"
            );
        }
        (got, err, log.text())
    });
    let mut p = connect(
        mitm(real, attack),
        &k.primary,
        &k.secondary.public_key(),
        "host-b",
        T,
    )
    .unwrap();
    for m in msgs {
        // After the Secondary refuses, the connection dies: later sends may fail.
        let _ = p.send(m);
    }
    let out = secondary.join().unwrap();
    drop(p);
    out
}

fn ten() -> Vec<Message> {
    (0..10).map(|i| batch(i, 20)).collect()
}

/// Exactly one refusal line naming the peer and the error.
fn assert_refusal_logged(log: &str, err: &ChannelError) {
    let want = format!("channel: refused message from host-a: {err}");
    assert_eq!(log.matches("channel: refused message").count(), 1, "{log}");
    assert!(log.contains(&want), "want {want:?} in {log}");
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn mitm_flipped_ciphertext_byte_is_refused() {
    let msgs = ten();
    let (got, err, log) = attacked(&msgs, Attack::Flip { frame: 4, at: 20 });
    assert!(matches!(err, ChannelError::Decrypt { frame: 4 }), "{err}");
    assert_eq!(got, msgs[..4]);
    assert_refusal_logged(&log, &err);
}

#[test]
fn mitm_flipped_nonce_byte_is_refused_as_forged() {
    let msgs = ten();
    let (got, err, log) = attacked(&msgs, Attack::Flip { frame: 2, at: 11 });
    assert!(
        matches!(
            err,
            ChannelError::Forged {
                expected: 2,
                got: 0x42
            }
        ),
        "{err}"
    );
    assert_eq!(got, msgs[..2]);
    assert_refusal_logged(&log, &err);
}

#[test]
fn mitm_flipped_length_byte_is_refused() {
    let msgs = ten();
    let (got, err, _) = attacked(&msgs, Attack::Flip { frame: 3, at: 3 });
    assert!(matches!(err, ChannelError::Decrypt { frame: 3 }), "{err}");
    assert_eq!(got, msgs[..3]);
    let (got, err, _) = attacked(&msgs, Attack::Flip { frame: 3, at: 0 });
    assert!(matches!(err, ChannelError::TooLarge { .. }), "{err}");
    assert_eq!(got, msgs[..3]);
}

#[test]
fn mitm_replayed_frame_is_refused() {
    let msgs = ten();
    let (got, err, log) = attacked(&msgs, Attack::Replay { after: 5, again: 2 });
    assert!(
        matches!(
            err,
            ChannelError::Replayed {
                expected: 6,
                got: 2
            }
        ),
        "{err}"
    );
    assert_eq!(got, msgs[..6]);
    assert_refusal_logged(&log, &err);
}

#[test]
fn mitm_swapped_frames_are_refused() {
    let msgs = ten();
    let (got, err, log) = attacked(&msgs, Attack::Swap { frame: 3 });
    assert!(
        matches!(
            err,
            ChannelError::OutOfOrder {
                expected: 3,
                got: 4
            }
        ),
        "{err}"
    );
    assert_eq!(got, msgs[..3]);
    assert_refusal_logged(&log, &err);
}

/// A frame header (length, nonce) followed by `ct`.
fn raw_frame(nonce: u64, ct: &[u8]) -> Vec<u8> {
    [
        &((8 + ct.len()) as u32).to_be_bytes()[..],
        &nonce.to_be_bytes(),
        ct,
    ]
    .concat()
}

#[test]
fn mitm_injected_random_frames_are_refused() {
    let msgs = ten();
    let junk: Vec<u8> = (0..48u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (got, err, log) = attacked(
        &msgs,
        Attack::Inject {
            before: 5,
            bytes: raw_frame(5, &junk),
        },
    );
    assert!(matches!(err, ChannelError::Decrypt { frame: 5 }), "{err}");
    assert_eq!(got, msgs[..5]);
    assert_refusal_logged(&log, &err);
    let (got, err, _) = attacked(
        &msgs,
        Attack::Inject {
            before: 5,
            bytes: raw_frame(1 << 40, &junk),
        },
    );
    assert!(
        matches!(err, ChannelError::Forged { expected: 5, got } if got == 1 << 40),
        "{err}"
    );
    assert_eq!(got, msgs[..5]);
}

#[test]
fn mitm_injected_frame_of_another_session_is_refused() {
    let msgs = ten();
    // A genuine frame, but sealed by a session the attacker ran with its own keys.
    let (other, _) = memory_handshake(&[1; 32], &[2; 32]);
    let forged = |nonce: u64| {
        let mut n = nonce;
        let mut out = Vec::new();
        seal_message(
            &other,
            &mut n,
            &encode_message(&batch(99, 20)).unwrap(),
            &mut out,
        )
        .unwrap();
        out
    };
    let (got, err, log) = attacked(
        &msgs,
        Attack::Inject {
            before: 7,
            bytes: forged(7),
        },
    );
    assert!(matches!(err, ChannelError::Decrypt { frame: 7 }), "{err}");
    assert_eq!(got, msgs[..7]);
    assert_refusal_logged(&log, &err);
    let (got, err, _) = attacked(
        &msgs,
        Attack::Inject {
            before: 7,
            bytes: forged(3),
        },
    );
    assert!(
        matches!(
            err,
            ChannelError::Forged {
                expected: 7,
                got: 3
            }
        ),
        "{err}"
    );
    assert_eq!(got, msgs[..7]);
}

#[test]
fn mitm_truncated_frame_then_close_is_refused() {
    let msgs = ten();
    let (got, err, log) = attacked(&msgs, Attack::Truncate { frame: 6, keep: 30 });
    assert!(
        matches!(
            err,
            ChannelError::Truncated {
                frame_bytes: 30,
                message_bytes: 0
            }
        ),
        "{err}"
    );
    assert_eq!(got, msgs[..6]);
    assert_refusal_logged(&log, &err);
}

#[test]
fn mitm_attack_inside_a_multi_frame_message_delivers_none_of_it() {
    let big = batch(100, 3 * MAX_FRAGMENT_DATA + 10); // four frames: 1..=4
    let msgs = vec![batch(0, 5), big, batch(1, 5)];
    let (got, err, log) = attacked(&msgs, Attack::Flip { frame: 3, at: 100 });
    assert!(matches!(err, ChannelError::Decrypt { frame: 3 }), "{err}");
    assert_eq!(got, msgs[..1]);
    assert_refusal_logged(&log, &err);
    let (got, err, _) = attacked(&msgs, Attack::Truncate { frame: 4, keep: 4 });
    assert!(
        matches!(err, ChannelError::Truncated { frame_bytes: 4, message_bytes } if message_bytes == 3 * MAX_FRAGMENT_DATA as u64),
        "{err}"
    );
    assert_eq!(got, msgs[..1]);
}

#[test]
fn garbage_after_the_handshake_is_refused_without_delivering_anything() {
    let msgs = ten();
    for seed in 0..20u32 {
        let junk: Vec<u8> = (0..2000u32)
            .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let (got, err, _) = attacked(
            &msgs,
            Attack::Inject {
                before: 0,
                bytes: junk,
            },
        );
        assert!(got.is_empty(), "seed {seed}: {got:?}");
        assert!(err.is_refusal(), "seed {seed}: {err}");
    }
}
