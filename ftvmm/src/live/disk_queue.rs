//! The disk thread's queue: which released block requests go to storage now,
//! and which wait for the late-write fence to lift (`late_write` rules 2, 3).
//!
//! Rules, for a request released while the fence is up:
//! - a write the fence holds (it overlaps a re-issued write) is held;
//! - a read or write overlapping any held request is held behind it;
//! - a flush is held while any write released before it is held;
//! - everything else goes at once, in release order.
//!
//! When the fence lifts, every held request goes, in release order, before
//! anything released later. Pure: no threads, sockets or sleeps; time comes
//! in as `now`.
//!
//! Invariants: requests leave in release order among those that overlap, and
//! a flush leaves after every write released before it; nothing is held once
//! the fence lifted (`held` is empty whenever `fence` is `None`).

use std::collections::VecDeque;

use config_schema::clock::BootInstant;

use super::disk::{span, Sectors};
use super::late_write::WriteFence;
use crate::io::{BlockOp, BlockRequest};

/// A block request as the live Outputs door received it from the Output Rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// When it was released (`CLOCK_BOOTTIME`).
    pub at: BootInstant,
    pub req: BlockRequest,
}

/// A request free to go to storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub req: BlockRequest,
    /// Since when it has been free to go: its release, or the lifting of the
    /// fence that held it. A write's age for `late_write::too_old`.
    pub free_since: BootInstant,
}

/// Released requests, some held by the fence.
#[derive(Debug, Default)]
pub struct DiskQueue {
    fence: Option<WriteFence>,
    held: VecDeque<(Released, Option<Sectors>)>,
}

impl DiskQueue {
    pub fn new(fence: Option<WriteFence>) -> Self {
        DiskQueue {
            fence,
            held: VecDeque::new(),
        }
    }

    /// When the disk thread must wake to let held requests go.
    pub fn lifts_at(&self) -> Option<BootInstant> {
        if self.held.is_empty() {
            return None;
        }
        self.fence.as_ref().map(WriteFence::until)
    }

    /// Requests held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes `r`, released now; appends to `out` what may go to storage, in
    /// order.
    pub fn on_request(&mut self, r: Released, now: BootInstant, out: &mut Vec<Ready>) {
        self.on_tick(now, out);
        let span = span(&r.req.op);
        if self.must_hold(&r.req, span, now) {
            self.held.push_back((r, span));
        } else {
            out.push(Ready {
                req: r.req,
                free_since: r.at,
            });
        }
    }

    /// Lets every held request go if the fence lifted by `now`.
    pub fn on_tick(&mut self, now: BootInstant, out: &mut Vec<Ready>) {
        let Some(until) = self.fence.as_ref().map(WriteFence::until) else {
            return;
        };
        if now < until {
            return;
        }
        self.fence = None;
        out.extend(self.held.drain(..).map(|(r, _)| Ready {
            req: r.req,
            free_since: r.at.max(until),
        }));
    }

    /// The held requests, given up (the VM stopped before the fence lifted).
    pub fn abandon(&mut self) -> Vec<Released> {
        self.held.drain(..).map(|(r, _)| r).collect()
    }

    fn must_hold(&mut self, req: &BlockRequest, span: Option<Sectors>, now: BootInstant) -> bool {
        let Some(fence) = self.fence.as_mut() else {
            assert!(self.held.is_empty(), "requests held without a fence");
            return false;
        };
        // Asked first and for every request: it counts the exempt ones.
        if fence.holds(req, now) {
            return true;
        }
        match span {
            Some((a, b)) => self
                .held
                .iter()
                .any(|(_, s)| s.is_some_and(|(c, d)| a < d && c < b)),
            None => self
                .held
                .iter()
                .any(|(r, _)| matches!(r.req.op, BlockOp::Write { .. })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::disk::SECTOR;
    use std::time::Duration;

    fn write(id: u64, sector: u64) -> BlockRequest {
        BlockRequest {
            dev: 0,
            id,
            op: BlockOp::Write {
                sector,
                data: vec![id as u8; SECTOR as usize],
            },
        }
    }

    fn read(id: u64, sector: u64) -> BlockRequest {
        BlockRequest {
            dev: 0,
            id,
            op: BlockOp::Read {
                sector,
                len: SECTOR as u32,
            },
        }
    }

    fn flush(id: u64) -> BlockRequest {
        BlockRequest {
            dev: 0,
            id,
            op: BlockOp::Flush,
        }
    }

    fn ids(out: &mut Vec<Ready>) -> Vec<u64> {
        out.drain(..).map(|r| r.req.id).collect()
    }

    #[test]
    fn held_writes_and_what_overlaps_them_wait_others_go_then_all_in_order() {
        let reissued = write(1, 10);
        let fence = WriteFence::with_bound(std::slice::from_ref(&reissued), Duration::from_secs(8))
            .unwrap();
        let lift = fence.until();
        let mut q = DiskQueue::new(Some(fence));
        assert_eq!(q.lifts_at(), None, "nothing held yet");
        let t0 = BootInstant::now();
        let mut out = Vec::new();
        let put = |q: &mut DiskQueue, req: BlockRequest, out: &mut Vec<Ready>| {
            q.on_request(Released { at: t0, req }, t0, out)
        };
        put(&mut q, reissued, &mut out); // exempt
        put(&mut q, write(2, 10), &mut out); // held by the fence
        put(&mut q, read(3, 20), &mut out); // other sector: goes
        put(&mut q, write(4, 30), &mut out); // other sector: goes
        put(&mut q, read(5, 10), &mut out); // overlaps held write 2: behind it
        put(&mut q, flush(6), &mut out); // a write before it is held
        put(&mut q, write(7, 40), &mut out); // after the held flush: goes
        put(&mut q, read(8, 10), &mut out); // overlaps held 2 and 5
        assert_eq!(ids(&mut out), vec![1, 3, 4, 7]);
        assert_eq!(q.held(), 4);
        assert_eq!(q.lifts_at(), Some(lift));
        // Not yet.
        q.on_tick(t0, &mut out);
        assert!(out.is_empty());
        // Lifted: held ones first, in release order, then the new one; the
        // held ones count their age from the lift.
        let later = lift + Duration::from_millis(1);
        q.on_request(
            Released {
                at: later,
                req: write(9, 10),
            },
            later,
            &mut out,
        );
        assert!(out[..4].iter().all(|r| r.free_since == lift));
        assert_eq!(out[4].free_since, later);
        assert_eq!(ids(&mut out), vec![2, 5, 6, 8, 9]);
        assert_eq!((q.held(), q.lifts_at()), (0, None));
    }

    #[test]
    fn a_flush_with_no_held_write_before_it_goes_at_once() {
        let reissued = write(1, 10);
        let fence = WriteFence::with_bound(std::slice::from_ref(&reissued), Duration::from_secs(8))
            .unwrap();
        let mut q = DiskQueue::new(Some(fence));
        let now = BootInstant::now();
        let mut out = Vec::new();
        for req in [reissued, read(2, 10), flush(3), write(4, 11)] {
            q.on_request(Released { at: now, req }, now, &mut out);
        }
        assert_eq!(ids(&mut out), vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_vm_stopping_abandons_what_is_held() {
        let fence = WriteFence::with_bound(&[write(1, 10)], Duration::from_secs(8)).unwrap();
        let mut q = DiskQueue::new(Some(fence));
        let now = BootInstant::now();
        let mut out = Vec::new();
        for req in [write(1, 10), write(2, 10)] {
            q.on_request(Released { at: now, req }, now, &mut out);
        }
        assert_eq!(ids(&mut out), vec![1]);
        let gone = q.abandon();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].req.id, 2);
    }

    #[test]
    fn without_a_fence_everything_goes_in_order() {
        let mut q = DiskQueue::new(None);
        let now = BootInstant::now();
        let mut out = Vec::new();
        for req in [write(1, 10), read(2, 10), flush(3), write(4, 10)] {
            q.on_request(Released { at: now, req }, now, &mut out);
        }
        assert_eq!(ids(&mut out), vec![1, 2, 3, 4]);
        assert!(out.is_empty());
        assert_eq!(q.lifts_at(), None);
    }
}
