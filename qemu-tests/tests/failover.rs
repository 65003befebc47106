//! Failover of a lockstep pair (issue 5): host-a runs VM `kv` as Primary,
//! host-b as Secondary; a client does PUT/GET over ONE TCP connection while
//! the harness kills a host (SIGKILL to its QEMU) or partitions the FT
//! network between them. The same connection must go on; every acknowledged
//! PUT must be readable afterwards; each test prints the failover pause (last
//! client response before the fault, first after) against the configured
//! failure timeout.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root;
//! FAILS with a clear message when one is missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qemu_tests::kv::{key, value, Kv, GUEST};
use qemu_tests::{Cluster, Host};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const VM: &str = "kv";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Boots host-a and host-b and waits until the pair serves.
fn pair(name: &str) -> Cluster {
    let mut cluster = Cluster::example(name).unwrap();
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }
    for h in ["host-a", "host-b"] {
        cluster
            .host(h)
            .unwrap()
            .wait_for(
                format!("appliance ready: host={h} generation=1"),
                BOOT_TIMEOUT,
            )
            .unwrap();
    }
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    b.wait_for(
        format!("ftvmm: vm {VM}: paired with primary host-a; generation 1"),
        Duration::from_secs(120),
    )
    .unwrap();
    a.wait_for(
        format!("[{VM}] kv: listening on {GUEST}"),
        Duration::from_secs(300),
    )
    .unwrap();
    cluster
}

/// What the client saw.
#[derive(Default)]
struct Seen {
    /// Time of every reply.
    replies: Vec<Instant>,
    /// Keys whose PUT was acknowledged.
    acked: Vec<usize>,
    error: Option<String>,
}

/// PUT key i, then GET key i/2, one request at a time, until `stop`.
fn workload(mut kv: Kv, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) -> Kv {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let r = kv.one(&format!("PUT {} {}", key(i), value(i)));
        let mut s = seen.lock().unwrap();
        s.replies.push(Instant::now());
        if r != "OK" {
            s.error = Some(format!("PUT {} answered {r:?}", key(i)));
            break;
        }
        s.acked.push(i);
        drop(s);
        let g = kv.one(&format!("GET {}", key(i / 2)));
        let mut s = seen.lock().unwrap();
        s.replies.push(Instant::now());
        if g != format!("VALUE {}", value(i / 2)) {
            s.error = Some(format!("GET {} answered {g:?}", key(i / 2)));
            break;
        }
        i += 1;
    }
    kv
}

/// Runs the workload, applies `fault` once it has made progress, waits for
/// `recovered` and some more replies, then checks every acknowledged PUT on
/// the same connection. Returns the pause in ms.
fn survive(cluster: &Cluster, what: &str, fault: impl FnOnce(), recovered: impl FnOnce()) -> f64 {
    let client = cluster.vm_client("client", "198.51.100.200/24").unwrap();
    let kv = Kv::connect(&client);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let worker = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || workload(kv, stop, seen))
    };
    let wait_replies = |n: usize, t: Duration| {
        let deadline = Instant::now() + t;
        loop {
            let s = seen.lock().unwrap();
            assert!(s.error.is_none(), "{what}: {}", s.error.as_ref().unwrap());
            if s.replies.len() >= n {
                return;
            }
            drop(s);
            assert!(Instant::now() < deadline, "{what}: client made no progress");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_replies(40, Duration::from_secs(120));
    let before = seen.lock().unwrap().replies.len();
    let t_fault = Instant::now();
    fault();
    recovered();
    wait_replies(before + 40, Duration::from_secs(180));
    stop.store(true, Ordering::SeqCst);
    let mut kv = worker.join().expect("client thread");
    let s = seen.lock().unwrap();
    assert!(s.error.is_none(), "{what}: {}", s.error.as_ref().unwrap());
    // The pause: the longest gap between replies from the fault on.
    let last_before = s
        .replies
        .iter()
        .rev()
        .find(|t| **t <= t_fault)
        .copied()
        .unwrap_or(t_fault);
    let mut prev = last_before;
    let mut pause = Duration::ZERO;
    for t in s.replies.iter().filter(|t| **t > t_fault) {
        pause = pause.max(*t - prev);
        prev = *t;
    }
    // Every acknowledged PUT is readable on the same connection.
    let acked = s.acked.clone();
    drop(s);
    for i in &acked {
        assert_eq!(
            kv.one(&format!("GET {}", key(*i))),
            format!("VALUE {}", value(*i)),
            "{what}: acknowledged PUT {} lost",
            key(*i)
        );
    }
    let ms = pause.as_secs_f64() * 1000.0;
    eprintln!(
        "failover: {what}: pause {ms:.0} ms (failure timeout {} ms); {} acknowledged PUTs all readable on the same connection",
        cluster.config().timing.failure_timeout_ms,
        acked.len()
    );
    ms
}

fn wait(host: &Host, line: String) -> String {
    host.wait_for(line.as_str(), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn kill_the_primary_host_connection_continues_on_the_secondary() {
    let mut cluster = pair("failover-primary");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    survive(
        &cluster,
        "primary host killed",
        || a.kill().unwrap(),
        || {
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    cluster.pass();
}

#[test]
fn kill_the_secondary_host_primary_continues_alone() {
    let mut cluster = pair("failover-secondary");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    survive(
        &cluster,
        "secondary host killed",
        || b.kill().unwrap(),
        || {
            wait(a, format!("ftvmm: vm {VM}: won generation 2"));
        },
    );
    cluster.pass();
}

#[test]
fn ft_partition_exactly_one_continues_and_outputs_never_overlap() {
    let mut cluster = pair("failover-partition");
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    cluster.vm.start_capture();
    let winner = Arc::new(Mutex::new(String::new()));
    let w2 = Arc::clone(&winner);
    survive(
        &cluster,
        "FT network partitioned",
        || cluster.ft.partition(&["host-a"], &["host-b"]).unwrap(),
        move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let a_won = a
                    .console()
                    .count(format!("ftvmm: vm {VM}: won generation 2"))
                    > 0;
                let b_won = b
                    .console()
                    .count(format!("ftvmm: vm {VM}: won generation 2"))
                    > 0;
                assert!(!(a_won && b_won), "both hosts won generation 2");
                if a_won || b_won {
                    let (w, l, lname) = if a_won {
                        ("host-a", b, "host-b")
                    } else {
                        ("host-b", a, "host-a")
                    };
                    l.wait_for(
                        format!("ftvmm: vm {VM}: lost generation 2 to {w}; halting the VM"),
                        Duration::from_secs(60),
                    )
                    .unwrap_or_else(|e| panic!("{lname} did not halt: {e}"));
                    *w2.lock().unwrap() = w.to_string();
                    return;
                }
                assert!(Instant::now() < deadline, "nobody won generation 2");
                std::thread::sleep(Duration::from_millis(100));
            }
        },
    );
    let frames = cluster.vm.stop_capture();
    let winner = winner.lock().unwrap().clone();
    let loser = if winner == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    // Guest output (frames from the guest's MAC) came from one port at a
    // time: the loser's last one precedes the winner's first one after the
    // old Primary's last, and the Secondary emitted nothing before it won.
    let guest: Vec<_> = frames
        .iter()
        .filter(|f| f.src_mac() == Some(GUEST_MAC))
        .collect();
    assert!(!guest.is_empty(), "no guest frames captured");
    if winner == "host-b" {
        let first_b = guest.iter().find(|f| f.from == "host-b").map(|f| f.at);
        let last_a = guest
            .iter()
            .rev()
            .find(|f| f.from == "host-a")
            .map(|f| f.at);
        if let (Some(fb), Some(la)) = (first_b, last_a) {
            assert!(
                la < fb,
                "host-a emitted guest output after host-b went live"
            );
        }
    } else {
        assert!(
            guest.iter().all(|f| f.from == "host-a"),
            "the secondary {loser} emitted guest output"
        );
    }
    cluster.pass();
}
