//! The KV service over TCP: the log replayed at start, one owner thread for the state and the
//! disk, a thread per connection.
//!
//! Rules:
//! - The owner thread alone holds the `KvService` and the disk; connection threads send it
//!   their lines and wait for the replies (STYLE.md: one owner, others send events). It takes
//!   requests in arrival order, so every connection's replies come back in its own order.
//! - Group commit: the PUTs that queued up while the previous write was in flight, taken in
//!   order up to the next other command and at most [`MAX_BATCH`], are written as one log write
//!   and one `fdatasync` (`KvService::put_batch`). Any other command first waits for that batch:
//!   a `GET` never sees a value before it is durable, and an `OK` is sent only after the
//!   write + `fdatasync` returned (the invariant of `ftguest_kvlog::service`).
//! - A connection reads what the client sent, answers every complete line, writes the replies
//!   of that read in one go, and closes when the client has closed its side. At most
//!   [`MAX_CLIENTS`] connections are served at once; one more is closed at accept.
//! - Console lines are the reference guest's (guest/README.md, "Console lines").

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use ftguest_kvlog::record::MAX_RECORD_SECTORS;
use ftguest_kvlog::{
    command, Command, KvService, Line, LineBuffer, LogEnd, RecoverError, SECTOR_SIZE, SLOT_COUNT,
};

use crate::disk::{Disk, DiskError, MAX_TRANSFER};

/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// PUTs in one group commit.
pub const MAX_BATCH: usize = 32;
const _: () = assert!(MAX_BATCH * MAX_RECORD_SECTORS * SECTOR_SIZE <= MAX_TRANSFER);
const READ_CHUNK: usize = 16 * 1024;

/// One line of a connection and where its reply goes.
struct Request {
    line: Line,
    reply: Sender<Vec<u8>>,
}

/// The recovered service before it is started.
pub struct Service {
    svc: KvService,
    disk: Disk,
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
        Ok(Self { svc, disk })
    }

    /// Keys held and records replayed at start (for the listening line).
    pub fn summary(&self) -> (usize, u64) {
        (self.svc.store().len(), self.svc.replayed())
    }
}

/// Starts the owner thread, then accepts connections forever, one thread each.
pub fn serve(listener: TcpListener, service: Service) -> std::io::Result<()> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("kv-owner".into())
        .spawn(move || owner(service, rx))?;
    let clients = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = listener.accept()?;
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let (tx, count) = (tx.clone(), Arc::clone(&clients));
        let spawned = std::thread::Builder::new()
            .name("kv-conn".into())
            .spawn(move || {
                // A client that vanishes (reset, timeout) ends its connection, nothing else.
                let _ = connection(stream, &tx);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            say!("kv: cannot start a connection thread: {e}");
            clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The owner loop: takes what has queued up, answers it in order, PUTs in group commits.
fn owner(mut service: Service, rx: Receiver<Request>) {
    let started = Instant::now();
    let mut queue = Vec::new();
    while let Ok(first) = rx.recv() {
        queue.push(first);
        queue.extend(rx.try_iter().take(4 * MAX_BATCH));
        let ticks = (started.elapsed().as_millis() / 10) as u64;
        let mut batch: Vec<Request> = Vec::new();
        for req in queue.drain(..) {
            let is_put = matches!(&req.line, Line::Complete(l) if matches!(command::parse(l), Ok(Command::Put { .. })));
            if !is_put || batch.len() == MAX_BATCH {
                commit(&mut service, &mut batch);
            }
            if is_put {
                batch.push(req);
                continue;
            }
            let mut out = Vec::new();
            service
                .svc
                .handle_line(&req.line, ticks, &mut service.disk, &mut out);
            // A connection that went away does not need its reply.
            let _ = req.reply.send(out);
        }
        commit(&mut service, &mut batch);
    }
}

/// Writes the batched PUTs as one group commit and sends their replies.
fn commit(service: &mut Service, batch: &mut Vec<Request>) {
    if batch.is_empty() {
        return;
    }
    let puts: Vec<(&[u8], &[u8])> = batch
        .iter()
        .filter_map(|r| match &r.line {
            Line::Complete(l) => match command::parse(l) {
                Ok(Command::Put { key, value }) => Some((key, value)),
                _ => None,
            },
            Line::TooLong => None,
        })
        .collect();
    assert_eq!(puts.len(), batch.len(), "only PUT lines are batched");
    let replies = service.svc.put_batch(&puts, &mut service.disk);
    drop(puts);
    for (req, reply) in batch.drain(..).zip(replies) {
        let _ = req.reply.send(reply);
    }
}

fn connection(mut stream: TcpStream, owner: &Sender<Request>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (reply_tx, replies) = channel();
    let mut lines = LineBuffer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        lines.push(&buf[..n]);
        let mut sent = 0;
        while let Some(line) = lines.pop_line() {
            let reply = reply_tx.clone();
            if owner.send(Request { line, reply }).is_err() {
                return Ok(());
            }
            sent += 1;
        }
        for _ in 0..sent {
            match replies.recv() {
                Ok(r) => out.extend_from_slice(&r),
                Err(_) => return Ok(()),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}
