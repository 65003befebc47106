//! The threads of one proxied connection: host → queue → storage (the queue
//! holds chunks for a delay), storage → host, or a silent sink while the
//! path is cut.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::nbd_watch::NbdWatch;
use super::path::{Counters, PathMode, Shared};
use super::stream::Stream;

const BUF: usize = 64 * 1024;
/// Longest sleep of a writer waiting for a delayed chunk's time, so a cut
/// or close is noticed promptly.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// One host connection and (unless opened during a cut) its upstream twin.
pub(super) struct Conn {
    down: Stream,
    up: Option<Stream>,
    cut: AtomicBool,
    live_threads: AtomicUsize,
}

impl Conn {
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Nothing more reaches storage or the host; the host side stays open.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Some(up) = &self.up {
            let _ = up.shutdown(Shutdown::Both);
        }
    }

    /// Cuts and also closes the host side, so every thread of it ends.
    pub fn close(&self) {
        self.cut();
        let _ = self.down.shutdown(Shutdown::Both);
    }

    pub fn finished(&self) -> bool {
        self.live_threads.load(Ordering::SeqCst) == 0
    }
}

struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
}

/// Takes over a freshly accepted host connection: connects upstream unless
/// the path is cut, registers the connection and starts its threads.
pub(super) fn open(shared: &Arc<Shared>, down: Stream) {
    let mut st = shared.lock();
    Counters::add(&shared.counters.connections, 1);
    if st.mode == PathMode::Severed {
        // Closed at once: the host's NBD client sees the path fail.
        drop(down);
        return;
    }
    let cut = st.mode == PathMode::Cut;
    let up = if cut {
        None
    } else {
        match shared.upstream.connect() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %shared.name, "connect {}: {e}", shared.upstream);
                return;
            }
        }
    };
    let clones = (|| -> std::io::Result<_> {
        let up_clones = match &up {
            Some(u) => Some((u.try_clone()?, u.try_clone()?)),
            None => None,
        };
        Ok((down.try_clone()?, down.try_clone()?, up_clones))
    })();
    let (down_ctl, down_rx, up_clones) = match clones {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %shared.name, "clone connection: {e}");
            return;
        }
    };
    let conn = Arc::new(Conn {
        down: down_ctl,
        up,
        cut: AtomicBool::new(cut),
        live_threads: AtomicUsize::new(0),
    });
    let mut handles = Vec::new();
    let mut spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
        let conn2 = Arc::clone(&conn);
        conn.live_threads.fetch_add(1, Ordering::SeqCst);
        let r = std::thread::Builder::new()
            .name(format!("storage-{}-{what}", shared.name))
            .spawn(move || {
                f();
                conn2.live_threads.fetch_sub(1, Ordering::SeqCst);
            });
        match r {
            Ok(h) => handles.push(h),
            Err(e) => {
                conn.live_threads.fetch_sub(1, Ordering::SeqCst);
                conn.close();
                tracing::warn!("spawn storage path thread: {e}");
            }
        }
    };
    let tx = match up_clones {
        Some((up_w, up_r)) => {
            let (tx, rx) = channel();
            let (s, c) = (Arc::clone(shared), Arc::clone(&conn));
            spawn("wr", Box::new(move || write_upstream(&s, &c, up_w, rx)));
            let (s, c) = (Arc::clone(shared), Arc::clone(&conn));
            spawn("rx", Box::new(move || to_host(&s, &c, up_r, down_rx)));
            Some(tx)
        }
        None => None,
    };
    let (s, c) = (Arc::clone(shared), Arc::clone(&conn));
    spawn("tx", Box::new(move || from_host(&s, &c, down, tx)));
    st.conns.retain(|c| !c.finished());
    st.conns.push(conn);
    st.threads.retain(|t| !t.is_finished());
    st.threads.extend(handles);
}

/// Reads what the host sends and queues it for storage (due now, or later
/// under a delay), or drops it while the connection is cut.
fn from_host(shared: &Shared, conn: &Conn, mut down: Stream, tx: Option<Sender<Chunk>>) {
    let counters = &shared.counters;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let read_at = Instant::now();
        // The mode is read under the lock that cut() takes, so a chunk is
        // either queued before the cut (and dropped by the writer) or
        // dropped here.
        let st = shared.lock();
        let tx = match &tx {
            Some(tx) if !conn.is_cut() => tx,
            _ => {
                Counters::add(&counters.discarded, n);
                continue;
            }
        };
        let due = match st.mode {
            PathMode::Delay(d) => {
                Counters::add(&counters.delayed_chunks, 1);
                read_at + d
            }
            _ => read_at,
        };
        let chunk = Chunk {
            due,
            bytes: buf[..n].to_vec(),
        };
        if tx.send(chunk).is_err() {
            Counters::add(&counters.discarded, n);
        }
    }
}

/// Writes queued chunks to storage at their due time, in order; on the
/// host's end of stream, half-closes the upstream connection.
fn write_upstream(shared: &Shared, conn: &Conn, mut up: Stream, rx: Receiver<Chunk>) {
    let counters = &shared.counters;
    let mut watch = NbdWatch::default();
    for chunk in rx {
        loop {
            let left = chunk.due.saturating_duration_since(Instant::now());
            if left.is_zero() || conn.is_cut() {
                break;
            }
            std::thread::sleep(left.min(WAIT_SLICE));
        }
        let n = chunk.bytes.len();
        // After cut() shut the socket down, write_all fails: nothing queued
        // before the cut reaches storage after it.
        if conn.is_cut() || up.write_all(&chunk.bytes).is_err() {
            Counters::add(&counters.discarded, n);
        } else {
            Counters::add(&counters.to_storage, n);
            if shared.speaks_nbd() {
                let was = watch.in_sync();
                let landed = watch.feed(&chunk.bytes, Instant::now());
                shared.landed(landed, was && !watch.in_sync());
            }
        }
    }
    let _ = up.shutdown(Shutdown::Write);
}

/// Copies storage's replies to the host until either side ends. A cut ends
/// it silently; otherwise the end is passed on to the host.
fn to_host(shared: &Shared, conn: &Conn, mut up: Stream, mut down: Stream) {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if conn.is_cut() || down.write_all(&buf[..n]).is_err() {
            break;
        }
        Counters::add(&shared.counters.to_host, n);
    }
    if !conn.is_cut() {
        let _ = down.shutdown(Shutdown::Both);
    }
}
