//! [`StoragePath`]: one host's way to the storage server, a proxy (Unix
//! socket for NBD, loopback TCP for iSCSI) whose forwarding the test switches
//! between pass, cut and delay.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::forward::{self, Conn};
use super::nbd_watch::LandedWrite;
use super::stream::{Endpoint, Listener};
use crate::error::{HarnessError, Result};
use crate::sys::poll_readable;

/// How often the idle accept loop checks whether the path is shutting down.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// What a storage path does with the bytes a host sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    /// Forward both ways at once.
    Pass,
    /// Dead fabric: the host's bytes are dropped, nothing goes back, its
    /// connections stay open and silent.
    Cut,
    /// Every chunk from the host goes to storage this long after it was
    /// read, in order; replies are not delayed.
    Delay(Duration),
    /// The path is gone and says so: the host's connections are closed and
    /// new ones are closed at once, so its NBD client fails its requests
    /// with EIO once its reconnect delay has passed (like a multipath device
    /// after `fast_io_fail_tmo`). Nothing sent after the cut reaches storage.
    Severed,
}

/// Counters of one storage path since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Bytes written to the NBD server (host → storage).
    pub to_storage: u64,
    /// Bytes written back to the host (storage → host).
    pub to_host: u64,
    /// Bytes from the host that never reached storage (cut, or queued for a
    /// delay when the path was cut or closed).
    pub discarded: u64,
    /// Chunks from the host that were held back by a delay.
    pub delayed_chunks: u64,
    /// Connections the host opened.
    pub connections: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub to_storage: AtomicU64,
    pub to_host: AtomicU64,
    pub discarded: AtomicU64,
    pub delayed_chunks: AtomicU64,
    pub connections: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

pub(super) struct State {
    pub mode: PathMode,
    pub conns: Vec<Arc<Conn>>,
    pub threads: Vec<JoinHandle<()>>,
}

/// What the accept loop, the forwarding threads and the control share.
pub(super) struct Shared {
    pub name: String,
    pub upstream: Endpoint,
    pub counters: Counters,
    pub state: Mutex<State>,
    /// Every write delivered to storage, in delivery order.
    writes: Mutex<Vec<LandedWrite>>,
    /// Connections whose NBD stream the watch could not follow.
    unwatched: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Unix-socket path leads to `qemu-nbd` (TCP paths carry iSCSI).
    pub fn speaks_nbd(&self) -> bool {
        matches!(self.upstream, Endpoint::Unix(_))
    }

    /// Writes that just reached storage; `lost_sync` if the watch of their
    /// connection stopped following the stream.
    pub fn landed(&self, w: Vec<LandedWrite>, lost_sync: bool) {
        if lost_sync {
            self.unwatched.fetch_add(1, Ordering::SeqCst);
        }
        if !w.is_empty() {
            self.writes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(w);
        }
    }
}

/// A host's storage path: listens on its own Unix socket (or loopback TCP
/// port) and forwards every connection to the storage server on a connection
/// of its own. Dropping it closes all connections and joins its threads.
pub struct StoragePath {
    shared: Arc<Shared>,
    listen: Endpoint,
    accept: Option<JoinHandle<()>>,
}

impl StoragePath {
    /// Listens on `socket` (replacing a stale file) and forwards to the NBD
    /// server listening on `upstream`. Starts in [`PathMode::Pass`].
    pub fn start(name: &str, socket: &Path, upstream: &Path) -> Result<StoragePath> {
        StoragePath::start_at(
            name,
            &Endpoint::Unix(socket.to_owned()),
            Endpoint::Unix(upstream.to_owned()),
        )
    }

    /// Listens on a free loopback TCP port and forwards to the TCP server at
    /// `upstream` (the iSCSI target). Starts in [`PathMode::Pass`].
    pub fn start_tcp(name: &str, upstream: SocketAddr) -> Result<StoragePath> {
        let any = Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
        StoragePath::start_at(name, &any, Endpoint::Tcp(upstream))
    }

    fn start_at(name: &str, at: &Endpoint, upstream: Endpoint) -> Result<StoragePath> {
        let (listener, listen) =
            Listener::bind(at).map_err(|e| HarnessError::io(format!("bind {at}"), e))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            upstream,
            counters: Counters::default(),
            state: Mutex::new(State {
                mode: PathMode::Pass,
                conns: Vec::new(),
                threads: Vec::new(),
            }),
            writes: Mutex::new(Vec::new()),
            unwatched: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("storage-{name}"))
                .spawn(move || accept_loop(&shared, &listener))
                .map_err(|e| HarnessError::io("spawn storage path thread", e))?
        };
        Ok(StoragePath {
            shared,
            listen,
            accept: Some(accept),
        })
    }

    /// Every NBD write this path delivered to storage, in order, with the
    /// time it landed. `Err` if the watch lost track of a connection's
    /// stream (then the list may be incomplete).
    pub fn landed_writes(&self) -> Result<Vec<LandedWrite>> {
        if !self.shared.speaks_nbd() {
            return Err(HarnessError::StorageWatch {
                path: self.shared.name.clone(),
                reason: "writes are watched on NBD paths only (this one carries iSCSI)".into(),
            });
        }
        let lost = self.shared.unwatched.load(Ordering::SeqCst);
        if lost > 0 {
            return Err(HarnessError::StorageWatch {
                path: self.shared.name.clone(),
                reason: format!("the NBD watch lost track of {lost} connection(s)"),
            });
        }
        Ok(self
            .shared
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// The socket the host connects to.
    /// The Unix socket the host connects to (an NBD path).
    ///
    /// # Panics
    /// On a TCP path ([`StoragePath::start_tcp`]): use [`StoragePath::tcp_addr`].
    pub fn socket(&self) -> &Path {
        match &self.listen {
            Endpoint::Unix(p) => p,
            Endpoint::Tcp(a) => panic!(
                "storage path {} listens on TCP {a}, not a Unix socket",
                self.name()
            ),
        }
    }

    /// The loopback address the host connects to (a TCP path), else `None`.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.listen {
            Endpoint::Tcp(a) => Some(*a),
            Endpoint::Unix(_) => None,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn mode(&self) -> PathMode {
        self.shared.lock().mode
    }

    pub fn stats(&self) -> PathStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PathStats {
            to_storage: get(&c.to_storage),
            to_host: get(&c.to_host),
            discarded: get(&c.discarded),
            delayed_chunks: get(&c.delayed_chunks),
            connections: get(&c.connections),
        }
    }

    /// Normal forwarding. Chunks already held by a delay still go out in
    /// order at their time. Leaving a cut does what [`StoragePath::restore`]
    /// says.
    pub fn pass(&self) {
        self.set_mode(PathMode::Pass);
    }

    /// Cuts the path: from now on nothing the host sends reaches storage
    /// (chunks held by a delay are dropped too, and the upstream connections
    /// are closed), nothing goes back, and the host's connections, old and
    /// new, stay open and silent, so its I/O hangs.
    pub fn cut(&self) {
        self.set_mode(PathMode::Cut);
    }

    /// Ends a cut: closes the host's connections that lived through it (their
    /// NBD streams are out of step), so the host's NBD client reconnects and
    /// new connections are forwarded normally. Same as [`StoragePath::pass`].
    pub fn restore(&self) {
        self.set_mode(PathMode::Pass);
    }

    /// Severs the path ([`PathMode::Severed`]): the host's I/O fails after
    /// its NBD reconnect delay instead of hanging for ever.
    pub fn sever(&self) {
        self.set_mode(PathMode::Severed);
    }

    /// Delivers every chunk the host sends from now on `d` late, in order.
    pub fn delay(&self, d: Duration) {
        self.set_mode(PathMode::Delay(d));
    }

    fn set_mode(&self, mode: PathMode) {
        let mut st = self.shared.lock();
        tracing::info!(path = %self.shared.name, "storage path: {:?} -> {mode:?}", st.mode);
        for c in &st.conns {
            match mode {
                PathMode::Cut => c.cut(),
                PathMode::Severed => c.close(),
                _ if c.is_cut() => c.close(),
                _ => {}
            }
        }
        st.mode = mode;
        st.conns.retain(|c| !c.finished());
    }
}

impl Drop for StoragePath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = {
            let mut st = self.shared.lock();
            for c in &st.conns {
                c.close();
            }
            std::mem::take(&mut st.threads)
        };
        for t in threads {
            let _ = t.join();
        }
        if let Endpoint::Unix(p) = &self.listen {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &Listener) {
    while !shared.stop.load(Ordering::Relaxed) {
        if !poll_readable(listener, ACCEPT_POLL) {
            continue;
        }
        match listener.accept() {
            Ok(down) => forward::open(shared, down),
            Err(e) => tracing::warn!(path = %shared.name, "storage path accept: {e}"),
        }
    }
}
