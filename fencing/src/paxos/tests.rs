use super::*;
use crate::io::{BlockIo, RegionIo};
use std::sync::Arc;
use std::time::Duration;

use config_schema::clock::BootInstant;

fn geo(n: usize) -> Geometry {
    let names: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
    Geometry::new(names.iter().map(String::as_str), 1, 4, 512)
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

/// A block I/O that takes `delay` per request and counts how many were in
/// flight at once (a slow storage path).
struct Slow {
    inner: Arc<RegionIo>,
    delay: Duration,
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    requests: std::sync::atomic::AtomicUsize,
}

impl Slow {
    fn new(inner: Arc<RegionIo>, delay: Duration) -> Slow {
        Slow {
            inner,
            delay,
            in_flight: 0.into(),
            most: 0.into(),
            requests: 0.into(),
        }
    }

    fn around<T>(&self, f: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        self.requests.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        std::thread::sleep(self.delay);
        let r = f();
        self.in_flight.fetch_sub(1, SeqCst);
        r
    }
}

impl BlockIo for Slow {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn read(&self, index: u64) -> std::io::Result<Block> {
        self.around(|| self.inner.read(index))
    }
    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        self.around(|| self.inner.write(index, data))
    }
}

#[test]
fn a_phase_reads_every_other_block_at_once_and_contenders_still_agree() {
    use std::sync::atomic::Ordering::SeqCst;
    let g = geo(5);
    let (_d, io) = region(&g);
    // 50 ms per request: the four reads overlap even on a loaded machine.
    let slow = Slow::new(Arc::clone(&io), Duration::from_millis(50));
    let o = decide(&slow, ask(g, 1, 5, 11), far(), Duration::from_millis(5)).unwrap();
    assert!(matches!(o, Outcome::Decided { owner: 1, .. }), "{o:?}");
    // A lone proposer's phases read the four other blocks together.
    assert_eq!(slow.most.load(SeqCst), 4);
    // One at a time, as before.
    let seq = Slow::new(Arc::clone(&io), Duration::from_millis(2));
    let o = decide_with(
        &seq,
        ask(g, 2, 6, 12),
        far(),
        Duration::from_millis(5),
        Exec::Sequential,
    )
    .unwrap();
    assert!(matches!(o, Outcome::Decided { owner: 2, .. }), "{o:?}");
    assert_eq!(seq.most.load(SeqCst), 1);
    // Five batched proposers on a slow path, several generations: one owner
    // each, the same for all.
    let slow = Arc::new(Slow::new(io, Duration::from_millis(1)));
    for generation in 7..=9u64 {
        let outcomes: Vec<Outcome> = (0..5)
            .map(|me| {
                let slow = Arc::clone(&slow);
                std::thread::spawn(move || {
                    decide(
                        &*slow,
                        ask(g, me, generation, 10 + u64::from(me)),
                        far(),
                        Duration::from_millis(3),
                    )
                    .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(
            matches!(outcomes[0], Outcome::Decided { .. })
                && outcomes.iter().all(|o| *o == outcomes[0]),
            "generation {generation}: {outcomes:?}"
        );
    }
}

/// `make bench`: one uncontended decision's time with every request taking
/// `delay` (a storage round trip), one at a time against batched, side by
/// side. Run: `cargo test --release -p fencing --lib decide_bench --
/// --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: make bench"]
fn decide_bench() {
    println!("decide_bench: one uncontended Disk Paxos decision, every request taking <delay>");
    println!(
        "{:>5} {:>9} | {:>14} {:>8} | {:>14} {:>8} | {:>6}",
        "hosts", "delay ms", "sequential ms", "requests", "batched ms", "rounds", "ratio"
    );
    for hosts in [3usize, 8] {
        for delay_ms in [1u64, 5, 20] {
            let g = geo(hosts);
            let (_d, io) = region(&g);
            let time = |exec: Exec, generation: u64| {
                let slow = Slow::new(Arc::clone(&io), Duration::from_millis(delay_ms));
                let t = std::time::Instant::now();
                let o = decide_with(
                    &slow,
                    ask(g, 0, generation, 1),
                    far(),
                    Duration::from_millis(5),
                    exec,
                )
                .unwrap();
                assert!(matches!(o, Outcome::Decided { owner: 0, .. }));
                (
                    t.elapsed(),
                    slow.requests.load(std::sync::atomic::Ordering::SeqCst),
                )
            };
            // Alternate, three each, medians (the machine is shared).
            let mut seq = Vec::new();
            let mut bat = Vec::new();
            for i in 0..3u64 {
                seq.push(time(Exec::Sequential, 10 + 2 * i));
                bat.push(time(Exec::Batched, 11 + 2 * i));
            }
            seq.sort();
            bat.sort();
            let (s, b) = (seq[1], bat[1]);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{:>5} {:>9} | {:>14.1} {:>8} | {:>14.1} {:>8.1} | {:>6.2}",
                hosts,
                delay_ms,
                ms(s.0),
                s.1,
                ms(b.0),
                ms(b.0) / delay_ms as f64,
                ms(b.0) / ms(s.0)
            );
        }
    }
}
