//! Keeping a deposed Primary's disk writes from landing after the new
//! Primary's (DESIGN §5, "the one hole").
//!
//! Go-live never waits for the old Primary to be dead: the Disk Paxos
//! decision alone keeps outputs consistent. What it cannot stop is a write
//! the old Primary had already released to storage and that is still on its
//! way (a slow or cut storage path) when the new Primary, replaying the same
//! guest, writes newer data to the same sectors: the old write would land
//! last and silently undo an acknowledged one. Two rules close it:
//!
//! 1. **The old side bounds the age of its writes.** [`InFlight`] records when
//!    each disk request was released to the I/O thread. [`spawn_io_watch`]
//!    checks the oldest; past [`IO_AGE_LIMIT_MS`] it asks fencing to reset the
//!    host (`Request::ResetHost`: the watchdog is no longer fed and fires
//!    within [`WATCHDOG_TIMEOUT_S`]). Releases stop on their own: the I/O
//!    thread is sequential and the stuck request blocks it. So a write
//!    released at `t` has landed, or its host is reset, by
//!    `t + IO_AGE_LIMIT + W` (plus the watch and guard periods).
//! 2. **The new Primary defers overlapping writes.** Every write the old
//!    Primary may still have in flight is one the Secondary's replay shows as
//!    issued and not completed when it goes live; the new Primary re-issues
//!    exactly those. Each was released before the go-live (after the
//!    Secondary acknowledged the records before it, and the Secondary goes
//!    live only after the channel ended). [`WriteFence`] therefore holds any
//!    *later* write that overlaps one of them until
//!    [`LATE_WRITE_BOUND_MS`] after the go-live. The re-issued writes carry the
//!    same data as the old ones, so their relative order does not matter,
//!    and reads need no fence.
//!
//! Assumptions, stated: a reset host's requests do not reach storage after
//! its reset; monotonic clocks of the two hosts advance at the same rate
//! within a few percent over seconds (the bound carries a second of slack).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};
pub use config_schema::ctl::{IO_AGE_LIMIT_MS, LATE_WRITE_BOUND_MS, WATCHDOG_TIMEOUT_S};

use crate::io::{BlockOp, BlockRequest};

use super::disk::SECTOR;

/// Release times of the disk requests not yet completed, oldest first (the
/// I/O thread completes them in order).
#[derive(Debug, Default)]
pub struct InFlight {
    q: Mutex<VecDeque<Instant>>,
}

impl InFlight {
    pub fn new() -> Arc<Self> {
        Arc::new(InFlight::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request was handed to the I/O thread.
    pub fn released(&self) {
        self.lock().push_back(Instant::now());
    }

    /// The oldest request completed.
    pub fn completed(&self) {
        self.lock().pop_front();
    }

    /// Age of the oldest request not completed.
    pub fn oldest(&self) -> Option<Duration> {
        self.lock().front().map(Instant::elapsed)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Watches `inflight` until `stopped` and nothing is in flight. A request
/// older than [`IO_AGE_LIMIT_MS`] gets the host reset through fencing.
pub fn spawn_io_watch(
    inflight: Arc<InFlight>,
    stopped: Arc<AtomicBool>,
    vm: String,
    fencing: PathBuf,
) -> std::io::Result<()> {
    let limit = Duration::from_millis(IO_AGE_LIMIT_MS);
    std::thread::Builder::new()
        .name("ftvmm-io-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            match inflight.oldest() {
                Some(age) if age > limit => {
                    let reason = format!(
                        "vm {vm}: a disk request has been in flight for {} ms (limit {IO_AGE_LIMIT_MS} ms); \
                         it could land after another host took the VM over",
                        age.as_millis()
                    );
                    println!("ftvmm: {reason}; asking fencing to reset this host");
                    let req = Request::ResetHost { reason };
                    match ctl::query(&fencing, &req) {
                        Ok(Response::Ok) => {}
                        other => println!(
                            "ftvmm: vm {vm}: fencing did not take the reset request ({other:?})"
                        ),
                    }
                    return;
                }
                None if stopped.load(Ordering::SeqCst) => return,
                _ => {}
            }
        })
        .map(|_| ())
}

/// Half-open sector range `[start, end)`.
type Sectors = (u64, u64);

/// A new Primary's hold on writes overlapping what the deposed Primary may
/// still have in flight (rule 2 of the module docs).
#[derive(Debug, Clone)]
pub struct WriteFence {
    ranges: Vec<Sectors>,
    until: Instant,
    /// The first writes served are the re-issued ones: they pass.
    exempt: usize,
    announced: bool,
}

impl WriteFence {
    /// A fence over the sectors of the writes among `reissued` (to be served
    /// first, exempt), lasting [`LATE_WRITE_BOUND_MS`] from now. `None` if
    /// none of them is a write.
    pub fn for_reissued(reissued: &[BlockRequest]) -> Option<WriteFence> {
        Self::with_bound(reissued, Duration::from_millis(LATE_WRITE_BOUND_MS))
    }

    /// [`WriteFence::for_reissued`] with another bound (tests).
    pub fn with_bound(reissued: &[BlockRequest], bound: Duration) -> Option<WriteFence> {
        let ranges: Vec<Sectors> = reissued
            .iter()
            .filter_map(|r| match &r.op {
                BlockOp::Write { sector, data } => {
                    Some((*sector, sector + (data.len() as u64).div_ceil(SECTOR)))
                }
                _ => None,
            })
            .collect();
        (!ranges.is_empty()).then(|| WriteFence {
            exempt: ranges.len(),
            ranges,
            until: Instant::now() + bound,
            announced: false,
        })
    }

    /// The sector ranges held.
    pub fn ranges(&self) -> &[Sectors] {
        &self.ranges
    }

    /// How long `req` must wait before it is executed at `now` (`None`: go).
    pub fn wait_for(&mut self, req: &BlockRequest, now: Instant) -> Option<Duration> {
        let BlockOp::Write { sector, data } = &req.op else {
            return None;
        };
        if self.exempt > 0 {
            self.exempt -= 1;
            return None;
        }
        if now >= self.until {
            return None;
        }
        let end = sector + (data.len() as u64).div_ceil(SECTOR);
        let hit = self.ranges.iter().find(|(a, b)| *sector < *b && *a < end)?;
        if !self.announced {
            self.announced = true;
            println!(
                "ftvmm: disk: write to sectors {sector}..{end} waits {} ms: the deposed primary may still \
                 have a write to sectors {}..{} in flight",
                (self.until - now).as_millis(),
                hit.0,
                hit.1
            );
        }
        Some(self.until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u64, sector: u64, sectors: usize) -> BlockRequest {
        BlockRequest {
            dev: 0,
            id,
            op: BlockOp::Write {
                sector,
                data: vec![7; sectors * SECTOR as usize],
            },
        }
    }

    #[test]
    fn only_later_overlapping_writes_wait_and_only_until_the_bound() {
        let reissued = [
            write(1, 100, 1),
            BlockRequest {
                dev: 0,
                id: 2,
                op: BlockOp::Flush,
            },
            write(3, 200, 8),
        ];
        let mut f = WriteFence::for_reissued(&reissued).unwrap();
        assert_eq!(f.ranges(), &[(100, 101), (200, 208)]);
        let now = Instant::now();
        // The re-issued writes themselves pass.
        assert_eq!(f.wait_for(&reissued[0], now), None);
        assert_eq!(f.wait_for(&reissued[2], now), None);
        // Later: overlapping writes wait, others and reads do not.
        assert!(f.wait_for(&write(4, 100, 1), now).is_some());
        assert!(f.wait_for(&write(5, 207, 2), now).is_some());
        assert!(f.wait_for(&write(6, 95, 6), now).is_some());
        assert_eq!(f.wait_for(&write(7, 101, 99), now), None);
        assert_eq!(f.wait_for(&write(8, 208, 1), now), None);
        let read = BlockRequest {
            dev: 0,
            id: 9,
            op: BlockOp::Read {
                sector: 100,
                len: 512,
            },
        };
        assert_eq!(f.wait_for(&read, now), None);
        let late = now + Duration::from_millis(LATE_WRITE_BOUND_MS + 1);
        assert_eq!(f.wait_for(&write(10, 100, 1), late), None);
    }

    /// The hole itself, on a real file: the deposed Primary's write lands
    /// 300 ms late; the new Primary's newer write to the same sector must
    /// still be what the disk holds at the end.
    #[test]
    fn a_late_write_of_the_deposed_primary_does_not_undo_a_newer_one() {
        use crate::io::InputEvent;
        use crate::live::disk::{DiskBackend, DiskSpec};
        use std::os::unix::fs::FileExt;

        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * SECTOR).unwrap();
        let spec: DiskSpec = file.path().to_str().unwrap().parse().unwrap();
        let old = write(1, 10, 1); // what the old Primary had in flight
        let mut disk = DiskBackend::open(&spec, 0).unwrap();
        disk.fence_writes(
            WriteFence::with_bound(std::slice::from_ref(&old), Duration::from_secs(3)).unwrap(),
        );
        let late = {
            let f = file.reopen().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                f.write_all_at(&[0xee; SECTOR as usize], 10 * SECTOR)
                    .unwrap();
                f.sync_data().unwrap();
            })
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            disk.serve(rx, None, |ev| {
                if let InputEvent::BlockDone { id, .. } = ev {
                    done_tx.send(id).unwrap();
                }
            })
        });
        tx.send(old).unwrap(); // re-issued: passes at once
        let newer = BlockRequest {
            dev: 0,
            id: 2,
            op: BlockOp::Write {
                sector: 10,
                data: vec![0x42; SECTOR as usize],
            },
        };
        tx.send(newer).unwrap();
        assert_eq!(done_rx.recv().unwrap(), 1);
        assert_eq!(done_rx.recv().unwrap(), 2);
        drop(tx);
        server.join().unwrap();
        late.join().unwrap();
        let mut got = [0u8; SECTOR as usize];
        file.as_file().read_exact_at(&mut got, 10 * SECTOR).unwrap();
        assert_eq!(
            got, [0x42; SECTOR as usize],
            "the late write undid the newer one"
        );
    }

    #[test]
    fn no_reissued_write_no_fence() {
        let flush = BlockRequest {
            dev: 0,
            id: 1,
            op: BlockOp::Flush,
        };
        assert!(WriteFence::for_reissued(&[flush]).is_none());
    }

    #[test]
    fn in_flight_ages_are_oldest_first() {
        let f = InFlight::new();
        assert!(f.oldest().is_none());
        f.released();
        std::thread::sleep(Duration::from_millis(5));
        f.released();
        let old = f.oldest().unwrap();
        assert!(old >= Duration::from_millis(5));
        f.completed();
        assert!(f.oldest().unwrap() < old);
        f.completed();
        assert!(f.is_empty());
    }
}
