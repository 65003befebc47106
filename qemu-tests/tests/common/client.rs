//! The KV client of the failover and respawn tests: PUT/GET over ONE TCP
//! connection from its own network namespace, in a thread, through any
//! number of faults. The test waits for progress between faults; at the end
//! every acknowledged PUT is read back on the same connection, and the pause
//! the client saw after each fault is the longest gap between its replies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qemu_tests::kv::{key, value, Kv};
use qemu_tests::{Cluster, NetnsTap};

/// What the client saw.
#[derive(Default)]
pub struct Seen {
    /// Time of every reply.
    pub replies: Vec<Instant>,
    /// Keys whose PUT was acknowledged.
    pub acked: Vec<usize>,
    pub error: Option<String>,
}

/// PUT key i, then GET key i/2, one request at a time, until `stop`.
pub fn workload(mut kv: Kv, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) -> Kv {
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

/// A running [`workload`] on one connection to the guest.
pub struct Client {
    what: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    worker: JoinHandle<Kv>,
    // Last: the namespace goes after the connection's thread ended.
    _tap: NetnsTap,
}

/// What the client saw, after [`Client::finish`] read every acknowledged PUT back.
pub struct Finished {
    pub replies: Vec<Instant>,
    pub acked: Vec<usize>,
}

impl Client {
    /// Joins the VM network as `198.51.100.200`, connects and starts the workload.
    pub fn start(cluster: &Cluster, what: &str) -> Client {
        let tap = cluster.vm_client("client", "198.51.100.200/24").unwrap();
        let kv = Kv::connect(&tap);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let worker = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || workload(kv, stop, seen))
        };
        Client {
            what: what.to_owned(),
            stop,
            seen,
            worker,
            _tap: tap,
        }
    }

    /// Replies so far.
    pub fn replies(&self) -> usize {
        self.seen.lock().unwrap().replies.len()
    }

    /// Waits until the client has `n` replies; panics on a client error or timeout.
    pub fn wait_replies(&self, n: usize, timeout: Duration) {
        if let Err(e) = self.try_wait_replies(n, timeout) {
            panic!("{e}");
        }
    }

    /// Waits until the client has `n` replies; a client error or the
    /// timeout is the message.
    pub fn try_wait_replies(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let what = &self.what;
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.seen.lock().unwrap();
            if let Some(e) = &s.error {
                return Err(format!("{what}: {e}"));
            }
            if s.replies.len() >= n {
                return Ok(());
            }
            let got = s.replies.len();
            drop(s);
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what}: client made no progress ({got} of {n} replies after {timeout:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `more` replies than the client has now.
    pub fn goes_on(&self, more: usize, timeout: Duration) {
        self.wait_replies(self.replies() + more, timeout);
    }

    /// Stops the workload, then checks every acknowledged PUT is readable on
    /// the same connection.
    pub fn finish(self) -> Finished {
        let what = self.what;
        self.stop.store(true, Ordering::SeqCst);
        let mut kv = self.worker.join().expect("client thread");
        let s = self.seen.lock().unwrap();
        assert!(s.error.is_none(), "{what}: {}", s.error.as_ref().unwrap());
        let (replies, acked) = (s.replies.clone(), s.acked.clone());
        drop(s);
        read_back(&mut kv, &acked, &what);
        Finished { replies, acked }
    }
}

/// Reads every PUT of `acked` back over `kv`; panics naming the first one
/// whose value is not there (`what`: the test's words for when, e.g.
/// "across the power-off").
pub fn read_back(kv: &mut Kv, acked: &[usize], what: &str) {
    for i in acked {
        assert_eq!(
            kv.one(&format!("GET {}", key(*i))),
            format!("VALUE {}", value(*i)),
            "{what}: acknowledged PUT {} lost",
            key(*i)
        );
    }
}

impl Finished {
    /// The pause after a fault at `from`: the longest gap between replies
    /// from the last one before `from` on, up to `to` (the next fault) if given.
    pub fn pause(&self, from: Instant, to: Option<Instant>) -> Duration {
        let mut prev = self
            .replies
            .iter()
            .rev()
            .find(|t| **t <= from)
            .copied()
            .unwrap_or(from);
        let mut pause = Duration::ZERO;
        let within = |t: &&Instant| **t > from && to.is_none_or(|to| **t <= to);
        for t in self.replies.iter().filter(within) {
            pause = pause.max(*t - prev);
            prev = *t;
        }
        pause
    }
}
