//! An in-process L2 hub: one per network (FT, VM). Every frame that enters
//! through a port is offered to every other port, subject to per-link rules
//! (cut, drop probability, delay) that tests change while hosts run.
//!
//! Ports are either QEMU `-netdev stream` Unix sockets (frames as a 4-byte
//! big-endian length plus payload; the hub listens, QEMU connects, and a
//! restarted QEMU may connect again) or in-process channels (used to attach a
//! TAP device, see `netns`, and by unit tests).
//!
//! Links are directional: `(from, to)` rules apply to frames from `from` to
//! `to`. Each port has an egress thread that sleeps until a frame's due time,
//! so a slow or stopped QEMU never blocks the others. With different delays on
//! links into one port, a frame may wait behind an earlier one with a longer
//! delay (delivery to a port stays in arrival order).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::sys::poll_readable;

/// Largest frame accepted on a stream port; a bigger length closes the connection.
pub const MAX_FRAME: usize = 128 * 1024;

/// How often an idle accept loop checks whether the hub is shutting down.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Rules for frames travelling from one port to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// Nothing passes.
    pub cut: bool,
    /// Each frame is dropped with this probability (0.0..=1.0).
    pub drop_probability: f64,
    /// Each frame is delivered this long after it entered the hub.
    pub delay: Duration,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            cut: false,
            drop_probability: 0.0,
            delay: Duration::ZERO,
        }
    }
}

/// Frame counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the endpoint sent into the hub.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames the hub delivered to the endpoint.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames meant for this port that a link rule dropped or that found no
    /// connected endpoint.
    pub dropped: u64,
}

/// One frame as it entered the hub, recorded while capture is on.
#[derive(Debug, Clone)]
pub struct CapturedFrame {
    pub at: Instant,
    /// Name of the port it came from.
    pub from: String,
    pub data: Vec<u8>,
}

impl CapturedFrame {
    /// Destination MAC (first 6 bytes), if the frame is long enough.
    pub fn dst_mac(&self) -> Option<[u8; 6]> {
        self.data.get(0..6).and_then(|b| b.try_into().ok())
    }

    /// Source MAC (bytes 6..12), if the frame is long enough.
    pub fn src_mac(&self) -> Option<[u8; 6]> {
        self.data.get(6..12).and_then(|b| b.try_into().ok())
    }

    /// EtherType (bytes 12..14), if the frame is long enough.
    pub fn ethertype(&self) -> Option<u16> {
        self.data
            .get(12..14)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[derive(Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> PortStats {
        PortStats {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

struct Delivery {
    due: Instant,
    frame: Arc<[u8]>,
}

/// The current connection of a stream port (none until QEMU connects).
#[derive(Default)]
struct StreamConn {
    conn: Mutex<Option<UnixStream>>,
}

impl StreamConn {
    fn lock(&self) -> MutexGuard<'_, Option<UnixStream>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Sink {
    Stream(Arc<StreamConn>),
    Channel(mpsc::Sender<Vec<u8>>),
}

struct PortEntry {
    name: String,
    queue: mpsc::Sender<Delivery>,
    counters: Arc<Counters>,
    stream: Option<(Arc<StreamConn>, PathBuf)>,
}

struct Inner {
    name: String,
    dir: PathBuf,
    ports: RwLock<Vec<PortEntry>>,
    links: Mutex<HashMap<(usize, usize), LinkParams>>,
    rng: Mutex<u64>,
    capture: Mutex<Option<Vec<CapturedFrame>>>,
    shutdown: AtomicBool,
}

impl Inner {
    fn ports(&self) -> std::sync::RwLockReadGuard<'_, Vec<PortEntry>> {
        self.ports.read().unwrap_or_else(|e| e.into_inner())
    }

    fn links(&self) -> MutexGuard<'_, HashMap<(usize, usize), LinkParams>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uniform in [0, 1), xorshift64* (reproducible with [`Hub::seed`]).
    fn random(&self) -> f64 {
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A frame entered through port `from`: offer it to every other port.
    fn ingress(&self, from: usize, frame: Vec<u8>) {
        if self.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let ports = self.ports();
        let Some(src) = ports.get(from) else { return };
        src.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
        src.counters
            .rx_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if let Some(cap) = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            cap.push(CapturedFrame {
                at: now,
                from: src.name.clone(),
                data: frame.clone(),
            });
        }
        let frame: Arc<[u8]> = frame.into();
        let links = self.links();
        for (to, dst) in ports.iter().enumerate() {
            if to == from {
                continue;
            }
            let link = links.get(&(from, to)).copied().unwrap_or_default();
            let dropped =
                link.cut || (link.drop_probability > 0.0 && self.random() < link.drop_probability);
            if dropped {
                dst.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let delivery = Delivery {
                due: now + link.delay,
                frame: Arc::clone(&frame),
            };
            if dst.queue.send(delivery).is_err() {
                dst.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An L2 hub. Dropping it closes every port and stops its threads.
pub struct Hub {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Hub {
    /// A hub whose stream sockets live in `dir` (created if needed). Keep
    /// `dir` short: Unix socket paths are limited to 107 bytes.
    pub fn new(name: &str, dir: &Path) -> Result<Hub> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        Ok(Hub {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                dir: dir.to_owned(),
                ports: RwLock::new(Vec::new()),
                links: Mutex::new(HashMap::new()),
                rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
                capture: Mutex::new(None),
                shutdown: AtomicBool::new(false),
            }),
            threads: Mutex::new(Vec::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn unknown(&self, port: &str) -> HarnessError {
        HarnessError::UnknownPort {
            hub: self.inner.name.clone(),
            port: port.to_owned(),
        }
    }

    fn index(&self, port: &str) -> Result<usize> {
        self.inner
            .ports()
            .iter()
            .position(|p| p.name == port)
            .ok_or_else(|| self.unknown(port))
    }

    fn track(&self, handle: JoinHandle<()>) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// Registers a port and starts its egress thread; returns its index.
    fn add_port(
        &self,
        name: &str,
        sink: Sink,
        stream: Option<(Arc<StreamConn>, PathBuf)>,
    ) -> Result<usize> {
        let mut ports = self.inner.ports.write().unwrap_or_else(|e| e.into_inner());
        if ports.iter().any(|p| p.name == name) {
            return Err(HarnessError::DuplicatePort {
                hub: self.inner.name.clone(),
                port: name.to_owned(),
            });
        }
        let (queue, rx) = mpsc::channel::<Delivery>();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let handle = std::thread::Builder::new()
            .name(format!("hub-{}-{name}-out", self.inner.name))
            .spawn(move || egress_loop(rx, sink, &thread_counters))
            .map_err(|e| HarnessError::io("spawn hub egress thread", e))?;
        self.track(handle);
        ports.push(PortEntry {
            name: name.to_owned(),
            queue,
            counters,
            stream,
        });
        Ok(ports.len() - 1)
    }

    /// Adds a port QEMU connects to with
    /// `-netdev stream,server=off,addr.type=unix,addr.path=<returned path>`.
    pub fn add_stream_port(&self, name: &str) -> Result<PathBuf> {
        let path = self.inner.dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| HarnessError::io(format!("bind {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("make the hub listener non-blocking", e))?;
        let conn = Arc::new(StreamConn::default());
        let index = self.add_port(
            name,
            Sink::Stream(Arc::clone(&conn)),
            Some((Arc::clone(&conn), path.clone())),
        )?;
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new()
            .name(format!("hub-{}-{name}-in", self.inner.name))
            .spawn(move || accept_loop(&inner, index, &listener, &conn))
            .map_err(|e| HarnessError::io("spawn hub accept thread", e))?;
        self.track(handle);
        Ok(path)
    }

    /// Adds an in-process port: frames sent on the returned handle enter the
    /// hub; frames for this port arrive on its receiver.
    pub fn add_channel_port(&self, name: &str) -> Result<ChannelPort> {
        let (tx, rx) = mpsc::channel();
        let index = self.add_port(name, Sink::Channel(tx), None)?;
        Ok(ChannelPort {
            inner: Arc::clone(&self.inner),
            index,
            name: name.to_owned(),
            rx,
        })
    }

    /// Names of all ports, in the order they were added.
    pub fn port_names(&self) -> Vec<String> {
        self.inner.ports().iter().map(|p| p.name.clone()).collect()
    }

    /// The socket path of a stream port.
    pub fn socket_path(&self, port: &str) -> Result<PathBuf> {
        self.inner
            .ports()
            .iter()
            .find(|p| p.name == port)
            .and_then(|p| p.stream.as_ref().map(|(_, path)| path.clone()))
            .ok_or_else(|| self.unknown(port))
    }

    /// True while a QEMU is connected to the stream port (channel ports: always).
    pub fn is_connected(&self, port: &str) -> Result<bool> {
        let ports = self.inner.ports();
        let p = ports
            .iter()
            .find(|p| p.name == port)
            .ok_or_else(|| self.unknown(port))?;
        Ok(match &p.stream {
            Some((conn, _)) => conn.lock().is_some(),
            None => true,
        })
    }

    /// Counters of one port.
    pub fn stats(&self, port: &str) -> Result<PortStats> {
        let i = self.index(port)?;
        Ok(self.inner.ports()[i].counters.snapshot())
    }

    /// Counters of every port, by name.
    pub fn all_stats(&self) -> Vec<(String, PortStats)> {
        self.inner
            .ports()
            .iter()
            .map(|p| (p.name.clone(), p.counters.snapshot()))
            .collect()
    }

    /// The rules for frames from `from` to `to`.
    pub fn link(&self, from: &str, to: &str) -> Result<LinkParams> {
        let key = (self.index(from)?, self.index(to)?);
        Ok(self.inner.links().get(&key).copied().unwrap_or_default())
    }

    /// Changes the rules for frames from `from` to `to` (one direction).
    pub fn update_link_one_way(
        &self,
        from: &str,
        to: &str,
        change: impl Fn(&mut LinkParams),
    ) -> Result<()> {
        let key = (self.index(from)?, self.index(to)?);
        let mut links = self.inner.links();
        change(links.entry(key).or_default());
        Ok(())
    }

    /// Changes the rules between `a` and `b`, both directions.
    pub fn update_link(&self, a: &str, b: &str, change: impl Fn(&mut LinkParams)) -> Result<()> {
        self.update_link_one_way(a, b, &change)?;
        self.update_link_one_way(b, a, &change)
    }

    /// Nothing passes between `a` and `b` (both directions).
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        self.update_link(a, b, |l| l.cut = true)
    }

    /// Frames from `from` no longer reach `to`; the other direction is untouched.
    pub fn cut_one_way(&self, from: &str, to: &str) -> Result<()> {
        self.update_link_one_way(from, to, |l| l.cut = true)
    }

    /// Undoes [`Hub::cut`] between `a` and `b` (drop and delay settings stay).
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        self.update_link(a, b, |l| l.cut = false)
    }

    /// Cuts every link between a port in `side_a` and a port in `side_b`.
    pub fn partition(&self, side_a: &[&str], side_b: &[&str]) -> Result<()> {
        for a in side_a {
            for b in side_b {
                self.cut(a, b)?;
            }
        }
        Ok(())
    }

    /// Cuts `port` off from every other port.
    pub fn isolate(&self, port: &str) -> Result<()> {
        for other in self.port_names() {
            if other != port {
                self.cut(port, &other)?;
            }
        }
        Ok(())
    }

    /// Resets every link to the default: connected, no loss, no delay.
    pub fn heal_all(&self) {
        self.inner.links().clear();
    }

    /// Frames between `a` and `b` are dropped with probability `p` (both directions).
    pub fn set_drop_probability(&self, a: &str, b: &str, p: f64) -> Result<()> {
        let p = p.clamp(0.0, 1.0);
        self.update_link(a, b, |l| l.drop_probability = p)
    }

    /// Frames between `a` and `b` are delayed by `delay` (both directions).
    pub fn set_delay(&self, a: &str, b: &str, delay: Duration) -> Result<()> {
        self.update_link(a, b, |l| l.delay = delay)
    }

    /// Reseeds the random drops (the default seed is fixed).
    pub fn seed(&self, seed: u64) {
        *self.inner.rng.lock().unwrap_or_else(|e| e.into_inner()) = seed.max(1);
    }

    /// Starts recording every frame that enters the hub (clears older records).
    pub fn start_capture(&self) {
        *self.inner.capture.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Whether frames are being recorded.
    pub fn capturing(&self) -> bool {
        self.inner
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The frames recorded so far (empty if capture is off).
    pub fn captured(&self) -> Vec<CapturedFrame> {
        self.inner
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Stops recording and returns what was recorded.
    pub fn stop_capture(&self) -> Vec<CapturedFrame> {
        self.inner
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        let ports: Vec<PortEntry> =
            std::mem::take(&mut *self.inner.ports.write().unwrap_or_else(|e| e.into_inner()));
        for p in &ports {
            if let Some((conn, path)) = &p.stream {
                if let Some(c) = conn.lock().as_ref() {
                    // Wakes the reader and any writer blocked on a full socket.
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                let _ = std::fs::remove_file(path);
            }
        }
        // Dropping the entries closes the egress queues, ending those threads.
        drop(ports);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// An in-process hub port.
pub struct ChannelPort {
    inner: Arc<Inner>,
    index: usize,
    name: String,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl ChannelPort {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a frame into the hub as if the endpoint had transmitted it.
    pub fn send(&self, frame: &[u8]) {
        self.inner.ingress(self.index, frame.to_vec());
    }

    /// A handle that sends into the hub through this port, for another thread.
    pub fn sender(&self) -> PortSender {
        PortSender {
            inner: Arc::clone(&self.inner),
            index: self.index,
        }
    }

    /// The next frame the hub delivered to this port, if one comes in time.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// A frame already delivered, without waiting.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        self.rx.try_recv().ok()
    }
}

/// The sending half of a [`ChannelPort`]; cheap to clone.
#[derive(Clone)]
pub struct PortSender {
    inner: Arc<Inner>,
    index: usize,
}

impl PortSender {
    /// Sends a frame into the hub through the port this sender belongs to.
    pub fn send(&self, frame: Vec<u8>) {
        self.inner.ingress(self.index, frame);
    }
}

fn egress_loop(rx: mpsc::Receiver<Delivery>, sink: Sink, counters: &Counters) {
    while let Ok(d) = rx.recv() {
        let now = Instant::now();
        if d.due > now {
            std::thread::sleep(d.due - now);
        }
        let delivered = match &sink {
            Sink::Channel(tx) => tx.send(d.frame.to_vec()).is_ok(),
            Sink::Stream(conn) => {
                let mut guard = conn.lock();
                match guard.as_mut() {
                    Some(stream) => {
                        let mut buf = Vec::with_capacity(4 + d.frame.len());
                        buf.extend_from_slice(&(d.frame.len() as u32).to_be_bytes());
                        buf.extend_from_slice(&d.frame);
                        stream.write_all(&buf).is_ok()
                    }
                    None => false,
                }
            }
        };
        if delivered {
            counters.tx_frames.fetch_add(1, Ordering::Relaxed);
            counters
                .tx_bytes
                .fetch_add(d.frame.len() as u64, Ordering::Relaxed);
        } else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Accepts one connection at a time (a restarted QEMU reconnects) and reads
/// its frames. The listener is non-blocking and polled, so the loop notices
/// the hub's shutdown flag even if the socket file is gone by then.
fn accept_loop(inner: &Inner, index: usize, listener: &UnixListener, conn: &StreamConn) {
    loop {
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        if !poll_readable(listener, SHUTDOWN_POLL) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(hub = %inner.name, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(hub = %inner.name, "set connection blocking: {e}");
            continue;
        }
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(hub = %inner.name, "clone connection: {e}");
                continue;
            }
        };
        *conn.lock() = Some(stream);
        read_frames(inner, index, reader);
        *conn.lock() = None;
    }
}

/// Reads length-prefixed frames until EOF, an error or hub shutdown.
fn read_frames(inner: &Inner, index: usize, mut stream: UnixStream) {
    if let Err(e) = stream.set_read_timeout(Some(SHUTDOWN_POLL)) {
        tracing::warn!(hub = %inner.name, "set read timeout: {e}");
        return;
    }
    let mut len = [0u8; 4];
    loop {
        if !read_full(inner, &mut stream, &mut len) {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            tracing::warn!(hub = %inner.name, "frame of {n} bytes: closing the connection");
            return;
        }
        let mut frame = vec![0u8; n];
        if !read_full(inner, &mut stream, &mut frame) {
            return;
        }
        inner.ingress(index, frame);
    }
}

/// Fills `buf`, riding out read timeouts until the hub shuts down. False on
/// EOF, error or shutdown.
fn read_full(inner: &Inner, stream: &mut UnixStream, buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if inner.shutdown.load(Ordering::SeqCst) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

pub mod frames;

#[cfg(test)]
mod tests;
