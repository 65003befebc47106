use super::*;
use crate::io::{BlockIo, RegionIo};
use std::sync::Arc;
use std::time::Duration;

use config_schema::clock::BootInstant;

fn geo(n: usize) -> Geometry {
    let names: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
    Geometry::new(names.iter().map(String::as_str), ["kv"], 4, 512)
}

fn region(g: &Geometry) -> (tempfile::TempDir, Arc<RegionIo>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev");
    std::fs::write(&p, vec![0u8; g.bytes() as usize]).unwrap();
    let dev = crate::io::Device::open(&p).unwrap();
    let io = RegionIo::new(dev, 0, g.block, g.blocks()).unwrap();
    (dir, Arc::new(io))
}

fn ask(geo: Geometry, me: u32, generation: u64, config_generation: u64) -> Ask {
    Ask {
        geo,
        me,
        vm: 0,
        generation,
        config_generation,
    }
}

fn blank() -> Block {
    vec![0u8; 512].into_boxed_slice()
}

fn far() -> BootInstant {
    BootInstant::now() + Duration::from_secs(30)
}

#[test]
fn lone_host_decides_itself_and_others_learn_it() {
    let g = geo(3);
    let (_d, io) = region(&g);
    let o = decide(&*io, ask(g, 1, 5, 11), far(), Duration::from_millis(5)).unwrap();
    assert_eq!(
        o,
        Outcome::Decided {
            owner: 1,
            config_generation: 11
        }
    );
    for me in [0, 2] {
        let o = decide(
            &*io,
            ask(g, me, 5, 10 + u64::from(me)),
            far(),
            Duration::from_millis(5),
        )
        .unwrap();
        assert_eq!(
            o,
            Outcome::Decided {
                owner: 1,
                config_generation: 11
            }
        );
    }
    // Generation 9 shares the ring slot of 5 (ring of 4 is 1): a new
    // decision, after which 5 is superseded for a host whose block moved on,
    // while a host whose block still holds the decision of 5 answers it.
    let o = decide(&*io, ask(g, 2, 9, 12), far(), Duration::from_millis(5)).unwrap();
    assert_eq!(
        o,
        Outcome::Decided {
            owner: 2,
            config_generation: 12
        }
    );
    let o = decide(&*io, ask(g, 2, 5, 12), far(), Duration::from_millis(5)).unwrap();
    assert_eq!(o, Outcome::Superseded { by: 9 });
    let o = decide(&*io, ask(g, 0, 5, 10), far(), Duration::from_millis(5)).unwrap();
    assert_eq!(
        o,
        Outcome::Decided {
            owner: 1,
            config_generation: 11
        }
    );
}

#[test]
fn three_hosts_in_threads_agree_on_one_owner() {
    let g = geo(3);
    let (_d, io) = region(&g);
    for generation in 1..=6u64 {
        let handles: Vec<_> = (0..3)
            .map(|me| {
                let io = Arc::clone(&io);
                std::thread::spawn(move || {
                    decide(
                        &*io,
                        ask(g, me, generation, 10 + u64::from(me)),
                        far(),
                        Duration::from_millis(3),
                    )
                    .unwrap()
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let Outcome::Decided {
            owner,
            config_generation,
        } = outcomes[0]
        else {
            panic!("not decided: {outcomes:?}");
        };
        // The value is the winner's own (owner, config generation) pair.
        assert_eq!(config_generation, 10 + u64::from(owner));
        assert!(outcomes.iter().all(|o| *o
            == Outcome::Decided {
                owner,
                config_generation
            }));
    }
}

#[test]
fn a_damaged_block_holding_a_decision_is_never_decided_over() {
    let g = geo(3);
    let (_d, io) = region(&g);
    let o = decide(&*io, ask(g, 1, 5, 11), far(), Duration::from_millis(5)).unwrap();
    assert_eq!(
        o,
        Outcome::Decided {
            owner: 1,
            config_generation: 11
        }
    );
    // Host 1's block (the only record of the decision: hosts 0 and 2
    // never wrote) loses a bit.
    let at = g.paxos_block(0, 5, 1);
    let mut s = io.read(at).unwrap();
    s[300] ^= 0x04;
    io.write(at, &s).unwrap();
    for me in [0, 2] {
        let o = decide(
            &*io,
            ask(g, me, 5, 10 + u64::from(me)),
            far(),
            Duration::from_millis(5),
        )
        .unwrap();
        assert_eq!(
            o,
            Outcome::Corrupt(CorruptBlock {
                host: 1,
                block: at,
                reason: "bad checksum".into()
            }),
            "host {me} must not decide over host 1's damaged block"
        );
    }
    // The damaged block was not written over (only its host writes it).
    assert_eq!(io.read(at).unwrap(), s);
}

#[test]
fn a_corrupt_read_is_read_again_before_it_counts() {
    let g = geo(2);
    let (mut p, reqs) = Proposer::new(g, 0, 0, 1, 1);
    let garbage: Block = vec![0x5au8; 512].into_boxed_slice();
    let Poll::Io(again) = p.complete(reqs[0].token, IoResult::Read(garbage.clone())) else {
        panic!("a corrupt own block is read again")
    };
    let Poll::Io(w) = p.complete(again[0].token, IoResult::Read(blank())) else {
        panic!("the reread found it blank: ballot starts")
    };
    assert!(matches!(w[0].op, Op::Write { .. }));
    let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
        panic!()
    };
    let mut tok = r[0].token;
    for _ in 0..CORRUPT_REREADS {
        let Poll::Io(again) = p.complete(tok, IoResult::Read(garbage.clone())) else {
            panic!("read again")
        };
        tok = again[0].token;
    }
    let Poll::Done(Outcome::Corrupt(c)) = p.complete(tok, IoResult::Read(garbage.clone())) else {
        panic!("stays corrupt: the run ends")
    };
    assert_eq!((c.host, c.reason.as_str()), (1, "bad checksum"));
    assert_eq!(p.decided(), None);
}

#[test]
fn a_higher_ballot_on_disk_makes_the_proposer_retry_higher() {
    let g = geo(2);
    let (p, reqs) = Proposer::new(g, 0, 0, 1, 1);
    let mut p = p;
    assert_eq!(reqs.len(), 1);
    let Poll::Io(w) = p.complete(reqs[0].token, IoResult::Read(blank())) else {
        panic!()
    };
    let Op::Write { data, .. } = &w[0].op else {
        panic!()
    };
    let mine = PaxosBlock::decode(data).unwrap();
    assert_eq!(mine.mbal, 3); // round 1 * 2 hosts + index 0 + 1
    let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
        panic!()
    };
    let other = PaxosBlock {
        mbal: 8,
        ..PaxosBlock::empty(1, 0, 1)
    };
    assert_eq!(
        p.complete(r[0].token, IoResult::Read(other.encode(512))),
        Poll::Retry
    );
    let w = p.retry();
    let Op::Write { data, .. } = &w[0].op else {
        panic!()
    };
    assert_eq!(PaxosBlock::decode(data).unwrap().mbal, 11);
    // A block no correct host writes (a ballot number of another host,
    // here equal to ours, or one near overflow) neither panics nor wins:
    // after the rereads the run ends as corrupt.
    for bad in [11, u64::MAX - 1] {
        let (mut p, reqs) = Proposer::new(g, 0, 0, 1, 1);
        let Poll::Io(w) = p.complete(reqs[0].token, IoResult::Read(blank())) else {
            panic!()
        };
        let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
            panic!()
        };
        let twin = PaxosBlock {
            mbal: bad,
            ..PaxosBlock::empty(1, 0, 1)
        };
        let mut tok = r[0].token;
        let outcome = loop {
            match p.complete(tok, IoResult::Read(twin.encode(512))) {
                Poll::Io(again) => tok = again[0].token,
                Poll::Done(o) => break o,
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(outcome, Outcome::Corrupt(_)), "{bad}: {outcome:?}");
    }
    let Poll::Io(r) = p.complete(w[0].token, IoResult::Written) else {
        panic!()
    };
    let Poll::Io(w) = p.complete(r[0].token, IoResult::Read(blank())) else {
        panic!("phase 2 follows")
    };
    // A failed I/O ends the run; late completions are ignored.
    assert_eq!(
        p.complete(w[0].token, IoResult::Failed),
        Poll::Done(Outcome::IoFailed)
    );
    assert_eq!(
        p.complete(w[0].token, IoResult::Written),
        Poll::Done(Outcome::IoFailed)
    );
}

#[test]
fn the_backoff_window_doubles_with_each_abort_in_a_row_up_to_a_cap() {
    let base = Duration::from_millis(50);
    let almost = 0.999;
    let window = |aborts| super::backoff_wait(base, aborts, almost);
    assert!(window(1) < base && window(1) > base * 99 / 100);
    assert!(window(2) > base && window(2) < base * 2);
    let cap = base * (1 << super::BACKOFF_DOUBLINGS);
    assert!(window(5) < cap && window(5) > cap * 99 / 100);
    assert_eq!(window(5), window(50), "the window stops growing");
    assert_eq!(super::backoff_wait(base, 3, 0.0), Duration::ZERO);
}
