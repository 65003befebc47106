//! The KV service over TCP: the log replayed at start, then a thread per connection.
//!
//! Rules:
//! - One [`Mutex`] holds the service state and the disk; a command runs entirely under it, so
//!   writes to the log are serialized in the order their commands took the lock, and a PUT's
//!   `OK` (and any `GET` that sees its value) comes only after `write_durable` returned, i.e.
//!   after write + `fdatasync` (the invariant of `ftguest_kvlog::service`).
//! - A connection reads what the client sent, answers every complete line in order, writes the
//!   replies in one go (pipelined clients get one write per batch), and closes when the client
//!   has closed its side. At most [`MAX_CLIENTS`] connections are served at once; one more is
//!   closed at accept.
//! - Console lines are the reference guest's (guest/README.md, "Console lines").

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ftguest_kvlog::{KvService, LineBuffer, LogEnd, RecoverError, SLOT_COUNT};

use crate::disk::{Disk, DiskError};

/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;
const READ_CHUNK: usize = 16 * 1024;

struct Inner {
    svc: KvService,
    disk: Disk,
}

/// The recovered service, shared by the connection threads.
pub struct Service {
    inner: Mutex<Inner>,
    started: Instant,
    clients: AtomicUsize,
}

impl Service {
    /// Replays the log and reads the slots of `disk`, printing the reference guest's lines.
    pub fn recover(mut disk: Disk) -> Result<Self, RecoverError<DiskError>> {
        say!(
            "kv: disk {} sectors flush=true ro=false direct={}",
            disk.sectors(),
            disk.direct()
        );
        let (svc, outcome) = KvService::recover(&mut disk)?;
        if let LogEnd::Torn(reason) = outcome.end {
            say!(
                "kv: log tail at sector {} ignored ({reason})",
                outcome.next_sector
            );
        }
        say!(
            "kv: slots {} at sector {} held={}",
            SLOT_COUNT,
            svc.layout().slot_area_start(),
            svc.slots().held()
        );
        for (slot, reason) in svc.slots().damaged() {
            say!("kv: slot {slot} damaged ({reason}); SET and SLOT refuse it");
        }
        Ok(Self {
            inner: Mutex::new(Inner { svc, disk }),
            started: Instant::now(),
            clients: AtomicUsize::new(0),
        })
    }

    /// Keys held and records replayed at start (for the listening line).
    pub fn summary(&self) -> Option<(usize, u64)> {
        let inner = self.inner.lock().ok()?;
        Some((inner.svc.store().len(), inner.svc.replayed()))
    }

    /// 10 ms ticks since the service started (the reference guest's PIT ticks, for `STAT`).
    fn ticks(&self) -> u64 {
        (self.started.elapsed().as_millis() / 10) as u64
    }

    /// Answers one line into `out`; false when the state is unusable (a thread died holding it).
    fn handle(&self, line: &ftguest_kvlog::Line, out: &mut Vec<u8>) -> bool {
        let ticks = self.ticks();
        let Ok(mut guard) = self.inner.lock() else {
            return false;
        };
        let Inner { svc, disk } = &mut *guard;
        svc.handle_line(line, ticks, disk, out);
        true
    }
}

/// Accepts connections forever, one thread each.
pub fn serve(listener: TcpListener, service: Arc<Service>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept()?;
        if service.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            service.clients.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let svc = Arc::clone(&service);
        let spawned = std::thread::Builder::new()
            .name("kv-conn".into())
            .spawn(move || {
                // A client that vanishes (reset, timeout) ends its connection, nothing else.
                let _ = connection(stream, &svc);
                svc.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            say!("kv: cannot start a connection thread: {e}");
            service.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn connection(mut stream: TcpStream, service: &Service) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut lines = LineBuffer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        lines.push(&buf[..n]);
        while let Some(line) = lines.pop_line() {
            if !service.handle(&line, &mut out) {
                return Ok(());
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}
