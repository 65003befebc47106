//! The disk I/O thread: takes released block requests in order, holds what
//! the late-write fence holds ([`DiskQueue`]), re-checks each write's age
//! right before submitting it, submits one request at a time and completes it
//! to the guest — or stops this host's disk for good (`late_write` rules).
//!
//! Rules: a write that waited longer than `IO_AGE_LIMIT_MS` to be submitted
//! is never submitted (when the age rules apply, [`DiskGuard::bounds_ages`]);
//! a request the storage refuses ([`Refused`]) is never completed; either
//! stops the guard, after which nothing more is submitted or completed.
//!
//! Invariants: every request submitted is in the guard's in-flight list
//! exactly while it is with the storage; nothing completes once the guard
//! stopped (not even a request that was with the storage then); the guard is
//! closed when `serve` returns.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use config_schema::clock::BootInstant;

use super::disk::{describe, DiskBackend, Refused};
use super::disk_queue::{DiskQueue, Ready, Released};
use super::late_write::{self, DiskGuard, IO_AGE_LIMIT_MS};
use crate::io::{BlockOp, InputEvent};

/// Serves requests until the sender is dropped or the guard stopped; each
/// completion goes to `done`.
pub fn serve(
    mut disk: DiskBackend,
    rx: Receiver<Released>,
    guard: Arc<DiskGuard>,
    mut done: impl FnMut(InputEvent),
) {
    let mut queue = DiskQueue::new(disk.take_fence());
    let mut ready = Vec::new();
    while !guard.is_stopped() {
        let Some(next) = next(&rx, &queue) else {
            break;
        };
        let now = BootInstant::now();
        match next {
            Some(r) => queue.on_request(r, now, &mut ready),
            None => queue.on_tick(now, &mut ready),
        }
        for r in ready.drain(..) {
            if guard.is_stopped() {
                break;
            }
            submit(&mut disk, r, &guard, &mut done);
        }
    }
    let abandoned = queue.abandon();
    if !abandoned.is_empty() {
        println!(
            "ftvmm: disk: {} request(s) held by the late-write fence given up: the VM stopped \
             before the fence lifted",
            abandoned.len()
        );
    }
    guard.close();
}

/// The next released request; `Some(None)` when held requests are due to
/// go; `None` when the sender is gone.
fn next(rx: &Receiver<Released>, queue: &DiskQueue) -> Option<Option<Released>> {
    let Some(lift) = queue.lifts_at() else {
        return rx.recv().ok().map(Some);
    };
    // `recv_timeout` sleeps on CLOCK_MONOTONIC, which can only fall behind
    // CLOCK_BOOTTIME: at worst the fence is re-checked late, never early.
    match rx.recv_timeout(lift.saturating_duration_since(BootInstant::now())) {
        Ok(r) => Some(Some(r)),
        Err(RecvTimeoutError::Timeout) => Some(None),
        Err(RecvTimeoutError::Disconnected) => None,
    }
}

/// Checks and submits one request and completes it, or stops the guard.
fn submit(disk: &mut DiskBackend, r: Ready, guard: &DiskGuard, done: &mut impl FnMut(InputEvent)) {
    let what = describe(&r.req.op);
    if guard.bounds_ages() && matches!(r.req.op, BlockOp::Write { .. }) {
        if let Some(age) = late_write::too_old(r.free_since, BootInstant::now()) {
            guard.reset_host(&format!(
                "{what} has waited {} ms to be submitted (limit {IO_AGE_LIMIT_MS} ms; was this \
                 host frozen?): not submitted, another host may have taken the VM over",
                age.as_millis()
            ));
            return;
        }
    }
    guard.submitted(what);
    let result = disk.execute(&r.req);
    guard.completed();
    if guard.is_stopped() {
        // The I/O watch gave up on it while it was with the storage.
        return;
    }
    match result {
        Ok((status, data)) => done(InputEvent::BlockDone {
            dev: r.req.dev,
            id: r.req.id,
            status,
            data,
        }),
        Err(Refused { what, source }) => guard.reset_host(&format!(
            "storage refused the {what} ({source}): this host was deposed (persistent \
             reservation preempted); the request is not completed"
        )),
    }
}
