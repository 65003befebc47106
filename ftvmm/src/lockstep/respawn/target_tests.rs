//! The new Secondary's patience with a silent Primary (`silence_limit`,
//! `recv_silent`) over the real authenticated channel on TCP loopback, with
//! a relay in between that can trickle the Primary's bytes or go silent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::lockstep::channel::{self, Identity};
use crate::lockstep::transfer::message::Page;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The Primary's channel and the new Secondary's, the Primary's bytes
/// passing through a relay that forwards them `chunk` bytes every `gap`,
/// and nothing at all once `silent` is set (a Primary whose host died: no
/// FIN, no RST, just nothing).
fn relayed_pair(chunk: usize, gap: Duration, silent: Arc<AtomicBool>) -> (Channel, Channel) {
    let secondary_side = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let relay_side = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (s_addr, r_addr) = (
        secondary_side.local_addr().unwrap(),
        relay_side.local_addr().unwrap(),
    );
    let primary = Identity {
        private_key: [0x41; 32],
    };
    let secondary = Identity {
        private_key: [0x42; 32],
    };
    let (p_pub, s_pub) = (primary.public_key(), secondary.public_key());
    // The relay: Primary -> relay -> Secondary, throttled; the other way
    // straight through.
    std::thread::spawn(move || {
        let (from_p, _) = relay_side.accept().unwrap();
        let to_s = TcpStream::connect(s_addr).unwrap();
        let (mut back_from_s, mut back_to_p) =
            (to_s.try_clone().unwrap(), from_p.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_from_s, &mut back_to_p);
        });
        let (mut from_p, mut to_s) = (from_p, to_s);
        let mut buf = vec![0u8; chunk];
        loop {
            if silent.load(Ordering::SeqCst) {
                // Hold the connections open, forward nothing.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match from_p.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // Pass the close on (the other direction's clone keeps
                    // the socket open).
                    let _ = to_s.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if to_s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    std::thread::sleep(gap);
                }
            }
        }
    });
    let server = std::thread::spawn(move || {
        let (stream, _) = secondary_side.accept().unwrap();
        let allowed = move |k: &[u8; 32]| (*k == p_pub).then(|| "host-a".to_string());
        channel::accept(stream, &secondary, &allowed, TIMEOUT).unwrap()
    });
    let p = channel::connect(r_addr, &primary, &s_pub, "host-b", TIMEOUT).unwrap();
    let s = server.join().unwrap();
    (p, s)
}

fn pages(n: u64) -> Message {
    Message::Pages {
        round: 0,
        pages: (0..n)
            .map(|gfn| Page {
                gfn,
                bytes: vec![gfn as u8 | 1; PAGE_SIZE as usize],
            })
            .collect(),
    }
}

#[test]
fn the_limit_is_the_failure_timeout_plus_the_longest_pause_the_primary_can_be_in() {
    let ft = Duration::from_millis(1_000);
    // Streaming pages, or after the Accept: a dirty-log read or start.
    assert_eq!(silence_limit(ft, false), ft + VCPU_WAIT);
    // After a round's ack: the stop-and-copy's pause may come next.
    assert_eq!(
        silence_limit(ft, true),
        ft + VCPU_WAIT + Duration::from_millis(PAUSE_TIMEOUT_MS)
    );
    // It follows the failure timeout (a live change included).
    assert_eq!(
        silence_limit(Duration::from_millis(3_000), false) - silence_limit(ft, false),
        Duration::from_millis(2_000)
    );
    // And is well below the old wait of an ack plus a pause (13 s) with the
    // default failure timeout.
    assert!(silence_limit(ft, false) < Duration::from_secs(13));
}

#[test]
fn a_page_batch_trickling_in_is_not_silence_but_a_silent_primary_is_lost() {
    let silent = Arc::new(AtomicBool::new(false));
    // 64 pages (256 KiB) at 8 KiB every 25 ms: about 800 ms for the
    // message, over the 500 ms limit, never near 500 ms without a byte.
    let (mut p, mut s) = relayed_pair(8 << 10, Duration::from_millis(25), Arc::clone(&silent));
    let limit = Duration::from_millis(500);
    let sent = pages(64);
    let tx = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            p.send(&to_channel(&sent).unwrap()).unwrap();
            p
        })
    };
    let started = std::time::Instant::now();
    assert_eq!(recv_silent(&mut s, limit).unwrap(), sent);
    let took = started.elapsed();
    let mut p = tx.join().unwrap();
    println!("a 256 KiB batch took {took:?} to arrive under a {limit:?} silence limit");
    // The Primary's host dies: its next message never arrives.
    silent.store(true, Ordering::SeqCst);
    p.send(
        &to_channel(&Message::RoundEnd {
            round: 0,
            pages_sent: 64,
            dirty_left: 0,
        })
        .unwrap(),
    )
    .unwrap();
    let e = recv_silent(&mut s, limit).unwrap_err();
    assert!(e.contains("the primary sent nothing for 500 ms"), "{e}");
}

#[test]
fn a_primary_that_closes_is_not_reported_as_silent() {
    let (p, mut s) = relayed_pair(64 << 10, Duration::ZERO, Arc::new(AtomicBool::new(false)));
    drop(p);
    let e = recv_silent(&mut s, Duration::from_secs(5)).unwrap_err();
    assert!(e.starts_with("channel: "), "{e}");
    assert!(!e.contains("sent nothing"), "{e}");
}
