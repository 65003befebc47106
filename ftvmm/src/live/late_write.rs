//! Keeping a deposed or frozen Primary's disk writes from landing after the
//! new Primary's (docs/architecture.md §7, docs/design.md §3 items 3 and 5).
//!
//! Go-live never waits for the old Primary to be dead: the Disk Paxos
//! decision alone keeps outputs consistent. What it cannot stop is a write
//! the old Primary released and that reaches storage late (a slow or cut
//! storage path, or a host frozen and thawed with requests still queued)
//! after the new Primary, replaying the same guest, wrote newer data to the
//! same sectors: the old write would land last and silently undo an
//! acknowledged one. Every time below is on `CLOCK_BOOTTIME`
//! ([`BootInstant`]), which keeps counting while the host is suspended.
//!
//! 1. **The old side bounds the age of its writes**, in two steps.
//!    - *Waiting to be submitted.* The live Outputs door stamps each block
//!      request when the Output Rule releases it. Right before the disk
//!      thread submits a write it checks how long the write has been free to
//!      go (since its release, or since the fence of rule 2 let it through);
//!      past [`IO_AGE_LIMIT_MS`] the write is never submitted and
//!      [`DiskGuard::reset_host`] runs. A host thawed with writes queued from
//!      before its freeze therefore writes none of them.
//!    - *In flight.* [`InFlight`] ages are counted from submission to
//!      storage. [`spawn_io_watch`] checks the oldest; past
//!      [`IO_AGE_LIMIT_MS`] it runs [`DiskGuard::reset_host`] too.
//!
//!    [`DiskGuard::reset_host`] stops this host acting for the VM at once —
//!    nothing more is submitted or completed, and the live Outputs door drops
//!    every further output — and asks fencing to reset the host
//!    (`Request::ResetHost`: the watchdog is no longer fed and fires within
//!    [`WATCHDOG_TIMEOUT_S`]). Submission is sequential (one disk thread), so
//!    a stuck request also stops every later one. A write free to go at `t`
//!    is submitted by `t + L` or never, and has landed by `t + 2L` or its
//!    host stops and is reset by `t + 2L + W` (plus the watch and guard
//!    periods): hence [`LATE_WRITE_BOUND_MS`] `= 2L + W + 1 s`.
//! 2. **The new Primary defers overlapping writes in their own queue.** Every
//!    write the old Primary may still have in flight is one the Secondary's
//!    replay shows as issued and not completed when it goes live; the new
//!    Primary re-issues exactly those. Each was released before the go-live.
//!    [`WriteFence`] therefore holds any *later* write that overlaps one of
//!    them until [`LATE_WRITE_BOUND_MS`] after the go-live. The held writes
//!    wait in the disk thread's queue (`live::disk_queue`), not on the
//!    thread: reads and writes to other sectors go on meanwhile, and a held
//!    write is not in flight, so it does not age for the watch of rule 1.
//!    The re-issued writes carry the same data as the old ones, so their
//!    relative order does not matter. No fence is set when fencing answered
//!    the win with `storage_cut` (rule 4 already holds for the old host: it
//!    was preempted with PREEMPT AND ABORT, which ends its commands queued
//!    in the target before it completes): later writes then go at once, and
//!    a failover under a write workload pauses for the failure timeout, not
//!    for [`LATE_WRITE_BOUND_MS`]. A plain PREEMPT (a target without the
//!    ABORT variant) keeps the fence: commands it had accepted may still run.
//! 3. **Order the guest relies on.** A request overlapping a held one is held
//!    behind it, so overlapping requests complete in release order (a read
//!    after a held write returns the write's data). A flush is held while any
//!    write released before it is held and goes after them: a completed flush
//!    covers every write released before it, held or not. That is more than
//!    virtio asks (a flush covers the writes *completed* before it), and it
//!    is what the one sequential thread gave before; a held flush delays only
//!    itself, never later requests.
//! 4. **Storage fencing.** A request the storage refuses because another host
//!    preempted this one's persistent reservation (`live::disk::classify`)
//!    means this host is deposed: the request is never completed to the
//!    guest and [`DiskGuard::reset_host`] runs.
//!
//! Assumptions, stated: a reset host's requests do not reach storage after
//! its reset; the `CLOCK_BOOTTIME`s of the two hosts advance at the same rate
//! within a few percent over seconds (the bound carries a second of slack). A
//! freeze of the whole machine stops its clocks too and is not seen here;
//! storage fencing (rule 4) closes that case.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use config_schema::clock::BootInstant;
use config_schema::ctl::{self, Request, Response};
pub use config_schema::ctl::{IO_AGE_LIMIT_MS, LATE_WRITE_BOUND_MS, WATCHDOG_TIMEOUT_S};

use super::disk::{span, Sectors};
use crate::io::{BlockOp, BlockRequest};

/// [`IO_AGE_LIMIT_MS`] as a duration.
pub const IO_AGE_LIMIT: Duration = Duration::from_millis(IO_AGE_LIMIT_MS);

/// How often the I/O watch looks at the oldest request in flight.
const WATCH_PERIOD: Duration = Duration::from_millis(100);

// Rule 1: a write lands within two limits of being free to go, or its host
// is reset within the watchdog timeout after that; one second of slack
// covers the watch period. The fence of rule 2 must outlast all of it.
const _: () =
    assert!(LATE_WRITE_BOUND_MS >= 2 * IO_AGE_LIMIT_MS + WATCHDOG_TIMEOUT_S as u64 * 1000 + 1000);

/// How long a write has waited to be submitted, if longer than
/// [`IO_AGE_LIMIT_MS`]: such a write must never be submitted (rule 1).
pub fn too_old(free_since: BootInstant, now: BootInstant) -> Option<Duration> {
    let age = now.saturating_duration_since(free_since);
    (age > IO_AGE_LIMIT).then_some(age)
}

/// Requests submitted to storage and not completed, oldest first (the disk
/// thread submits one at a time and completes them in order).
#[derive(Debug, Default)]
pub struct InFlight {
    q: VecDeque<(BootInstant, String)>,
}

impl InFlight {
    /// Age of the oldest request not completed, and what it is.
    pub fn oldest(&self, now: BootInstant) -> Option<(Duration, &str)> {
        self.q
            .front()
            .map(|(at, what)| (now.saturating_duration_since(*at), what.as_str()))
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// What the disk thread, the I/O watch and the Outputs door share.
#[derive(Default)]
struct GuardState {
    in_flight: InFlight,
    /// The disk thread returned.
    closed: bool,
    /// Why this host stopped acting for the VM, once it did (first reason).
    stopped: Option<String>,
    /// Run once when it stops (e.g. stop the VM).
    on_reset: Option<Box<dyn FnOnce() + Send>>,
}

/// The age rules and the "stop acting" switch of one VM's disk (rules 1, 4).
///
/// Invariant: once [`DiskGuard::is_stopped`] is true it stays true, and the
/// disk thread submits nothing after it.
pub struct DiskGuard {
    /// `vm NAME` in console lines, or `disk` when no VM name is known.
    label: String,
    /// Where to ask for a reset; `None`: no fencing (tests, unprotected runs),
    /// and then no age rules either (no other host can take the VM over).
    fencing: Option<PathBuf>,
    stopped: AtomicBool,
    state: Mutex<GuardState>,
}

impl DiskGuard {
    /// A guard for VM `vm` whose host is fenced through `fencing`.
    pub fn new(vm: Option<&str>, fencing: Option<PathBuf>) -> Arc<Self> {
        Arc::new(DiskGuard {
            label: vm.map_or_else(|| "disk".to_string(), |v| format!("vm {v}")),
            fencing,
            stopped: AtomicBool::new(false),
            state: Mutex::new(GuardState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the age rules apply (a fencing daemon can reset this host).
    pub fn bounds_ages(&self) -> bool {
        self.fencing.is_some()
    }

    /// The disk thread submits `what` to storage now.
    pub fn submitted(&self, what: String) {
        self.lock()
            .in_flight
            .q
            .push_back((BootInstant::now(), what));
    }

    /// The oldest submitted request completed.
    pub fn completed(&self) {
        self.lock().in_flight.q.pop_front();
    }

    /// Age and description of the oldest request in flight.
    pub fn oldest(&self) -> Option<(Duration, String)> {
        let now = BootInstant::now();
        let s = self.lock();
        s.in_flight.oldest(now).map(|(age, w)| (age, w.to_string()))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// The disk thread returned.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// This host stopped acting for the VM ([`DiskGuard::reset_host`] ran).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Why it stopped.
    pub fn stop_reason(&self) -> Option<String> {
        self.lock().stopped.clone()
    }

    /// Runs `f` once when this host stops acting (at once if it already did).
    pub fn on_reset(&self, f: Box<dyn FnOnce() + Send>) {
        let mut s = self.lock();
        if s.stopped.is_some() {
            drop(s);
            f();
        } else {
            s.on_reset = Some(f);
        }
    }

    /// This host must not act for the VM any more (`reason` says why): stop
    /// at once, say so on the console, ask fencing to reset the host, run the
    /// `on_reset` hook. Only the first call acts.
    pub fn reset_host(&self, reason: &str) {
        let hook = {
            let mut s = self.lock();
            if s.stopped.is_some() {
                tracing::debug!(reason, "already stopped");
                return;
            }
            s.stopped = Some(reason.to_string());
            self.stopped.store(true, Ordering::SeqCst);
            s.on_reset.take()
        };
        let label = &self.label;
        match &self.fencing {
            Some(path) => {
                println!("ftvmm: {label}: {reason}; asking fencing to reset this host");
                let req = Request::ResetHost {
                    reason: format!("{label}: {reason}"),
                };
                match ctl::query(path, &req) {
                    Ok(Response::Ok) => {}
                    other => println!(
                        "ftvmm: {label}: fencing did not take the reset request ({other:?})"
                    ),
                }
            }
            None => println!(
                "ftvmm: {label}: {reason}; no fencing socket to ask for a reset: \
                 this VM's disk and outputs stop here"
            ),
        }
        if let Some(f) = hook {
            f();
        }
    }
}

/// Watches `guard` until its disk thread returned with nothing in flight. A
/// request in flight longer than [`IO_AGE_LIMIT_MS`] since its submission
/// gets the host reset (rule 1).
pub fn spawn_io_watch(guard: Arc<DiskGuard>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ftvmm-io-watch".into())
        .spawn(move || loop {
            std::thread::sleep(WATCH_PERIOD);
            if guard.is_stopped() {
                return;
            }
            match guard.oldest() {
                Some((age, what)) if age > IO_AGE_LIMIT => {
                    guard.reset_host(&format!(
                        "{what} has been in flight for {} ms since its submission \
                         (limit {IO_AGE_LIMIT_MS} ms); it could land after another host \
                         took the VM over",
                        age.as_millis()
                    ));
                    return;
                }
                None if guard.is_closed() => return,
                _ => {}
            }
        })
}

/// A new Primary's hold on writes overlapping what the deposed Primary may
/// still have in flight (rule 2 of the module docs).
#[derive(Debug, Clone)]
pub struct WriteFence {
    ranges: Vec<Sectors>,
    until: BootInstant,
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
            .filter(|r| matches!(r.op, BlockOp::Write { .. }))
            .filter_map(|r| span(&r.op))
            .collect();
        (!ranges.is_empty()).then(|| WriteFence {
            exempt: ranges.len(),
            ranges,
            until: BootInstant::now() + bound,
            announced: false,
        })
    }

    /// The sector ranges held.
    pub fn ranges(&self) -> &[Sectors] {
        &self.ranges
    }

    /// When the fence lifts.
    pub fn until(&self) -> BootInstant {
        self.until
    }

    /// Whether `req`, released now, must wait for the fence to lift. Asked
    /// once for every request, in release order (the re-issued writes, first
    /// in that order, are exempt).
    pub fn holds(&mut self, req: &BlockRequest, now: BootInstant) -> bool {
        let BlockOp::Write { .. } = &req.op else {
            return false;
        };
        if self.exempt > 0 {
            self.exempt -= 1;
            return false;
        }
        if now >= self.until {
            return false;
        }
        let Some((start, end)) = span(&req.op) else {
            return false;
        };
        let Some(hit) = self.ranges.iter().find(|(a, b)| start < *b && *a < end) else {
            return false;
        };
        if !self.announced {
            self.announced = true;
            println!(
                "ftvmm: disk: write to sectors {start}..{end} waits {} ms in the fence queue: \
                 the deposed primary may still have a write to sectors {}..{} in flight \
                 (reads and other sectors go on)",
                self.until.saturating_duration_since(now).as_millis(),
                hit.0,
                hit.1
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::disk::SECTOR;

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
    fn only_later_overlapping_writes_are_held_and_only_until_the_bound() {
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
        let now = BootInstant::now();
        // The re-issued writes themselves pass.
        assert!(!f.holds(&reissued[0], now));
        assert!(!f.holds(&reissued[2], now));
        // Later: overlapping writes are held, others and reads are not.
        assert!(f.holds(&write(4, 100, 1), now));
        assert!(f.holds(&write(5, 207, 2), now));
        assert!(f.holds(&write(6, 95, 6), now));
        assert!(!f.holds(&write(7, 101, 99), now));
        assert!(!f.holds(&write(8, 208, 1), now));
        let read = BlockRequest {
            dev: 0,
            id: 9,
            op: BlockOp::Read {
                sector: 100,
                len: 512,
            },
        };
        assert!(!f.holds(&read, now));
        let late = now + Duration::from_millis(LATE_WRITE_BOUND_MS + 1);
        assert!(late >= f.until());
        assert!(!f.holds(&write(10, 100, 1), late));
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
    fn a_write_is_too_old_only_past_the_limit() {
        let now = BootInstant::now();
        let at = |ms: u64| BootInstant::from_nanos(now.as_nanos() - ms * 1_000_000);
        assert_eq!(too_old(at(0), now), None);
        assert_eq!(too_old(at(IO_AGE_LIMIT_MS), now), None);
        assert_eq!(
            too_old(at(IO_AGE_LIMIT_MS + 1), now),
            Some(Duration::from_millis(IO_AGE_LIMIT_MS + 1))
        );
        // A stamp from the future (another clock) is not old.
        assert_eq!(too_old(now + Duration::from_secs(9), now), None);
    }

    #[test]
    fn in_flight_ages_are_oldest_first_and_counted_from_submission() {
        let g = DiskGuard::new(None, None);
        assert!(g.oldest().is_none());
        g.submitted("write a".into());
        std::thread::sleep(Duration::from_millis(5));
        g.submitted("write b".into());
        let (old, what) = g.oldest().unwrap();
        assert_eq!(what, "write a");
        assert!(old >= Duration::from_millis(5));
        g.completed();
        let (_, what) = g.oldest().unwrap();
        assert_eq!(what, "write b");
        g.completed();
        assert_eq!(g.in_flight(), 0);
    }

    #[test]
    fn reset_stops_once_and_runs_the_hook_once() {
        let g = DiskGuard::new(Some("kv"), None);
        let (tx, rx) = std::sync::mpsc::channel();
        g.on_reset(Box::new(move || tx.send(()).unwrap()));
        assert!(!g.is_stopped());
        g.reset_host("first");
        g.reset_host("second");
        assert!(g.is_stopped());
        assert_eq!(g.stop_reason().as_deref(), Some("first"));
        assert_eq!(rx.try_iter().count(), 1);
        // A hook registered after the stop runs at once.
        let (tx, rx) = std::sync::mpsc::channel();
        g.on_reset(Box::new(move || tx.send(()).unwrap()));
        assert_eq!(rx.try_iter().count(), 1);
    }
}
