//! The per-request timeline: for a sample of guest I/O, where the time goes
//! between the moments the Primary sees (issue 17).
//!
//! - a received frame: taken from the live door and recorded → the batch
//!   holding its record sent → that record freshly acknowledged; and
//!   recorded → the guest's next frame or disk request (for a request, the
//!   guest's own work until its first answer: a disk access or the reply;
//!   console bytes do not count). With several clients at once the next
//!   output may answer another request: the figure is meant for one
//!   sequential client, as the bench's cost model uses it;
//! - a disk write and a transmitted frame (a reply): produced by the guest →
//!   covered by an `Outputs` digest record → that record sent → freshly
//!   acknowledged → released by the Output Rule → completed by the disk (a
//!   write) or handed to the TAP (a frame).
//!
//! One in [`Timeline::every`] of each kind is traced (`0` turns it off; the
//! default is [`DEFAULT_EVERY`], `FTVMM_TIMELINE_EVERY` overrides it). At most
//! [`MAX_OPEN`] traces are open at once (more are not sampled; one open longer
//! than [`ABANDON_AFTER`] then makes room), and each
//! segment keeps its last [`KEEP`] durations; a report gives their count,
//! median and p99. The recorder is a plain value: [`super::PrimaryLog`] keeps
//! one under its lock and calls it where the moments happen; the benchmark
//! uses another around the plain live doors (FT off), where an output is
//! released the moment it is produced.
//!
//! Observation only: nothing here decides anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::io::{BlockOp, InputEvent, OutputEvent};

/// Traces one in this many of each kind unless told otherwise.
pub const DEFAULT_EVERY: u64 = 16;
/// At most this many traces are open at once.
pub const MAX_OPEN: usize = 64;
/// Each segment keeps this many recent durations.
pub const KEEP: usize = 4096;
/// A trace open this long when the open ones are full is dropped (a write
/// whose completion never came, a VM that stopped): sampling never stops.
pub const ABANDON_AFTER: Duration = Duration::from_secs(60);

/// What a trace follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    FrameIn,
    Write,
    Reply,
}

/// A segment of a trace, between two moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    InRecordedToNextOutput,
    InRecordedToSent,
    InSentToAcked,
    WriteProducedToCovered,
    WriteCoveredToSent,
    WriteSentToAcked,
    WriteAckedToReleased,
    WriteHeld,
    WriteReleasedToCompleted,
    ReplyProducedToCovered,
    ReplyCoveredToSent,
    ReplySentToAcked,
    ReplyAckedToReleased,
    ReplyHeld,
    ReplyReleasedToWire,
}

impl Segment {
    pub const ALL: [Segment; 15] = [
        Segment::InRecordedToNextOutput,
        Segment::InRecordedToSent,
        Segment::InSentToAcked,
        Segment::WriteProducedToCovered,
        Segment::WriteCoveredToSent,
        Segment::WriteSentToAcked,
        Segment::WriteAckedToReleased,
        Segment::WriteHeld,
        Segment::WriteReleasedToCompleted,
        Segment::ReplyProducedToCovered,
        Segment::ReplyCoveredToSent,
        Segment::ReplySentToAcked,
        Segment::ReplyAckedToReleased,
        Segment::ReplyHeld,
        Segment::ReplyReleasedToWire,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Segment::InRecordedToNextOutput => "frame in: recorded -> next output produced",
            Segment::InRecordedToSent => "frame in: recorded -> record sent",
            Segment::InSentToAcked => "frame in: record sent -> acked",
            Segment::WriteProducedToCovered => "disk write: produced -> digest record",
            Segment::WriteCoveredToSent => "disk write: digest record -> sent",
            Segment::WriteSentToAcked => "disk write: sent -> acked",
            Segment::WriteAckedToReleased => "disk write: acked -> released",
            Segment::WriteHeld => "disk write: produced -> released (held)",
            Segment::WriteReleasedToCompleted => "disk write: released -> completed",
            Segment::ReplyProducedToCovered => "frame out: produced -> digest record",
            Segment::ReplyCoveredToSent => "frame out: digest record -> sent",
            Segment::ReplySentToAcked => "frame out: sent -> acked",
            Segment::ReplyAckedToReleased => "frame out: acked -> released",
            Segment::ReplyHeld => "frame out: produced -> released (held)",
            Segment::ReplyReleasedToWire => "frame out: released -> on the wire",
        }
    }
}

/// One segment's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmentReport {
    pub segment: &'static str,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// One open trace: the moments seen so far.
#[derive(Debug, Clone)]
struct Trace {
    id: u64,
    kind: Kind,
    start: Instant,
    /// Records `< need` must be acknowledged (the frame's own record, or the
    /// output's covering digest record).
    need: Option<u64>,
    covered: Option<Instant>,
    sent: Option<Instant>,
    acked: Option<Instant>,
    released: Option<Instant>,
    /// The write's block request.
    block: Option<(u8, u64)>,
}

/// The recorder (module docs).
#[derive(Debug)]
pub struct Timeline {
    every: u64,
    seen: [u64; 3],
    /// Received frames seen, for the next-output sample (counted apart from
    /// `seen`: it samples also when nothing is recorded, FT off).
    requests: u64,
    /// A sampled received frame waiting for the guest's next output.
    awaiting_output: Option<Instant>,
    next_id: u64,
    open: Vec<Trace>,
    kept: Vec<VecDeque<u32>>,
    counts: Vec<u64>,
}

impl Default for Timeline {
    fn default() -> Self {
        let every = std::env::var("FTVMM_TIMELINE_EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_EVERY);
        Timeline::new(every)
    }
}

impl Timeline {
    /// Traces one in `every` of each kind (`0`: none).
    pub fn new(every: u64) -> Self {
        Timeline {
            every,
            seen: [0; 3],
            requests: 0,
            awaiting_output: None,
            next_id: 1,
            open: Vec::new(),
            kept: vec![VecDeque::new(); Segment::ALL.len()],
            counts: vec![0; Segment::ALL.len()],
        }
    }

    pub fn every(&self) -> u64 {
        self.every
    }

    pub fn set_every(&mut self, every: u64) {
        self.every = every;
    }

    fn sample(&mut self, kind: Kind, now: Instant) -> bool {
        if self.every == 0 {
            return false;
        }
        if self.open.len() >= MAX_OPEN {
            self.open
                .retain(|t| now.saturating_duration_since(t.start) < ABANDON_AFTER);
            if self.open.len() >= MAX_OPEN {
                return false;
            }
        }
        let seen = &mut self.seen[kind as usize];
        *seen += 1;
        (*seen - 1).is_multiple_of(self.every)
    }

    fn open_trace(&mut self, kind: Kind, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.open.push(Trace {
            id,
            kind,
            start: now,
            need: None,
            covered: None,
            sent: None,
            acked: None,
            released: None,
            block: None,
        });
        id
    }

    /// An output produced now: a trace id if it is traced (writes and frames
    /// only).
    pub fn on_output(&mut self, ev: &OutputEvent, now: Instant) -> Option<u64> {
        if matches!(ev, OutputEvent::Frame { .. } | OutputEvent::Block(_)) {
            if let Some(at) = self.awaiting_output.take() {
                self.add(Segment::InRecordedToNextOutput, at, Some(now));
            }
        }
        let (kind, block) = match ev {
            OutputEvent::Frame { .. } => (Kind::Reply, None),
            OutputEvent::Block(r) if matches!(r.op, BlockOp::Write { .. }) => {
                (Kind::Write, Some((r.dev, r.id)))
            }
            _ => return None,
        };
        if !self.sample(kind, now) {
            return None;
        }
        let id = self.open_trace(kind, now);
        self.trace(id).expect("just opened").block = block;
        Some(id)
    }

    /// Events recorded now in records `< end_seq` (`None`: nothing was
    /// recorded, running alone): traces a sampled frame; completes traced
    /// writes.
    pub fn on_inputs(&mut self, evs: &[InputEvent], end_seq: Option<u64>, now: Instant) {
        for ev in evs {
            match ev {
                InputEvent::Frame { .. } => {
                    self.requests += 1;
                    if self.every != 0
                        && self.awaiting_output.is_none()
                        && (self.requests - 1).is_multiple_of(self.every)
                    {
                        self.awaiting_output = Some(now);
                    }
                    if let Some(end) = end_seq {
                        if self.sample(Kind::FrameIn, now) {
                            let id = self.open_trace(Kind::FrameIn, now);
                            self.trace(id).expect("just opened").need = Some(end);
                        }
                    }
                }
                InputEvent::BlockDone { dev, id, .. } => self.on_block_done(*dev, *id, now),
                _ => {}
            }
        }
    }

    fn on_block_done(&mut self, dev: u8, id: u64, now: Instant) {
        let Some(i) = self
            .open
            .iter()
            .position(|t| t.block == Some((dev, id)) && t.released.is_some())
        else {
            return;
        };
        let t = self.open.swap_remove(i);
        self.close_output(&t, now);
    }

    /// Output trace `id` is covered by the digest record ending at `need`.
    pub fn on_covered(&mut self, id: u64, need: u64, now: Instant) {
        if let Some(t) = self.trace(id) {
            t.need = Some(need);
            t.covered = Some(now);
        }
    }

    /// A batch of the records `< end_seq` was taken for sending.
    pub fn on_batch(&mut self, end_seq: u64, now: Instant) {
        for t in &mut self.open {
            if t.sent.is_none() && t.need.is_some_and(|n| n <= end_seq) {
                t.sent = Some(now);
            }
        }
    }

    /// Every record `< fresh_acked` is freshly acknowledged.
    pub fn on_fresh_ack(&mut self, fresh_acked: u64, now: Instant) {
        let mut i = 0;
        while i < self.open.len() {
            let t = &mut self.open[i];
            if t.acked.is_none() && t.need.is_some_and(|n| n <= fresh_acked) {
                t.acked = Some(now);
                if t.kind == Kind::FrameIn {
                    let t = self.open.swap_remove(i);
                    self.add(Segment::InRecordedToSent, t.start, t.sent);
                    self.add_between(Segment::InSentToAcked, t.sent, t.acked);
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Output trace `id` was released now (handed to the backend).
    pub fn on_released(&mut self, id: u64, now: Instant) {
        if let Some(t) = self.trace(id) {
            t.released = Some(now);
        }
    }

    /// Output trace `id` was handed over and the backend returned: a frame is
    /// on the wire then (the TAP took it); a write waits for its completion.
    pub fn on_wire(&mut self, id: u64, now: Instant) {
        if let Some(i) = self
            .open
            .iter()
            .position(|t| t.id == id && t.kind == Kind::Reply)
        {
            let t = self.open.swap_remove(i);
            self.close_output(&t, now);
        }
    }

    /// Forgets open traces (the log restarted or the VM stops).
    pub fn drop_open(&mut self) {
        self.open.clear();
        self.awaiting_output = None;
    }

    fn trace(&mut self, id: u64) -> Option<&mut Trace> {
        self.open.iter_mut().find(|t| t.id == id)
    }

    fn close_output(&mut self, t: &Trace, done: Instant) {
        use Segment as S;
        let s = if t.kind == Kind::Write {
            [
                S::WriteProducedToCovered,
                S::WriteCoveredToSent,
                S::WriteSentToAcked,
                S::WriteAckedToReleased,
                S::WriteHeld,
                S::WriteReleasedToCompleted,
            ]
        } else {
            [
                S::ReplyProducedToCovered,
                S::ReplyCoveredToSent,
                S::ReplySentToAcked,
                S::ReplyAckedToReleased,
                S::ReplyHeld,
                S::ReplyReleasedToWire,
            ]
        };
        self.add(s[0], t.start, t.covered);
        self.add_between(s[1], t.covered, t.sent);
        self.add_between(s[2], t.sent, t.acked);
        self.add_between(s[3], t.acked, t.released);
        self.add(s[4], t.start, t.released);
        self.add_between(s[5], t.released, Some(done));
    }

    fn add_between(&mut self, seg: Segment, from: Option<Instant>, to: Option<Instant>) {
        if let Some(from) = from {
            self.add(seg, from, to);
        }
    }

    fn add(&mut self, seg: Segment, from: Instant, to: Option<Instant>) {
        let Some(to) = to else { return };
        let us = to.saturating_duration_since(from).as_micros();
        let kept = &mut self.kept[seg as usize];
        if kept.len() == KEEP {
            kept.pop_front();
        }
        kept.push_back(u32::try_from(us).unwrap_or(u32::MAX));
        self.counts[seg as usize] += 1;
    }

    /// The recent durations of `seg`, in microseconds.
    pub fn samples(&self, seg: Segment) -> Vec<u32> {
        self.kept[seg as usize].iter().copied().collect()
    }

    /// Every segment with at least one sample: count (all time), median and
    /// p99 of the recent ones.
    pub fn report(&self) -> Vec<SegmentReport> {
        Segment::ALL
            .iter()
            .filter(|s| self.counts[**s as usize] > 0)
            .map(|&s| {
                let mut v = self.samples(s);
                v.sort_unstable();
                let at = |q: f64| {
                    let i = ((v.len() - 1) as f64 * q).round() as usize;
                    u64::from(v[i])
                };
                SegmentReport {
                    segment: s.name(),
                    count: self.counts[s as usize],
                    p50_us: at(0.5),
                    p99_us: at(0.99),
                }
            })
            .collect()
    }

    /// How long `seg`'s median is (tests, tables).
    pub fn median(&self, seg: Segment) -> Option<Duration> {
        let mut v = self.samples(seg);
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(Duration::from_micros(u64::from(v[v.len() / 2])))
    }
}
