//! How long a checkpoint Primary's Secondary has acknowledged nothing while
//! an epoch it was sent waits, and how much of that wait the Secondary may
//! spend applying the epoch: what the member compares with the failure
//! timeout (`Event::Tick`'s `unacked_ms` and `unacked_grace_ms`), so that a
//! Secondary that is heard (its keep-alives) but acknowledges no epoch is
//! counted lost like a silent one. Without it such a Secondary — its serve
//! loop wedged, or taking nothing in — kept the Primary holding its outputs
//! until its keep-alives stopped (`keepalive::STALL_LIMIT`, 30 s) or for
//! good.
//!
//! Pure: the caller passes the time (ms on a clock of its own); the
//! Primary's link (`driver_link.rs`) keeps one per connection.
//!
//! Rules:
//! - An epoch waits from when its last piece went out
//!   ([`AckWait::shipped`]): sending it takes as long as the link needs.
//! - Any `EpochAck` restarts the clock ([`AckWait::acked`]), a repeat of an
//!   older epoch too: while an epoch's pieces stream in, the Secondary
//!   repeats its last ack every `KEEPALIVE` (`remote::serve_heard`), so the
//!   time a large epoch spends on the wire is not counted. `Alive` does not
//!   restart it: it comes from a thread of its own and says only that the
//!   process runs.
//! - The Secondary acknowledges an epoch only once it checked and applied
//!   it whole, and meanwhile it reads and acknowledges nothing: the oldest
//!   waiting epoch gets a grace of its size at [`APPLY_FLOOR_BYTES_PER_S`]
//!   on top of the failure timeout.
//! - A new connection (a respawned Secondary's) starts with nothing
//!   waiting ([`AckWait::reset`]).

use std::collections::VecDeque;

/// The slowest a Secondary is assumed to check and apply an epoch: a
/// quarter of the slowest seen (a 32 MiB boot-time epoch took over a second
/// on a QEMU host, `driver_secondary.rs`). An epoch of `b` bytes gets
/// `b / APPLY_FLOOR_BYTES_PER_S` of grace: 4 s for 32 MiB, 125 ms for 1 MiB.
pub const APPLY_FLOOR_BYTES_PER_S: u64 = 8 << 20;

/// The grace an epoch of `bytes` gets for its apply (module doc).
pub fn apply_grace_ms(bytes: usize) -> u64 {
    (bytes as u64).saturating_mul(1000) / APPLY_FLOOR_BYTES_PER_S
}

/// One connection's epochs that wait for the Secondary's ack.
#[derive(Debug, Clone, Default)]
pub struct AckWait {
    /// Epochs shipped and not acknowledged: (number, bytes, shipped at),
    /// ascending.
    waiting: VecDeque<(u64, usize, u64)>,
    /// The highest epoch acknowledged on this connection.
    acked: u64,
    /// When the Secondary last acknowledged anything (a repeat too), or
    /// when the connection started.
    last_ack_ms: u64,
}

impl AckWait {
    /// A new connection at `now_ms`: nothing waits, nothing acknowledged.
    pub fn reset(&mut self, now_ms: u64) {
        *self = AckWait {
            last_ack_ms: now_ms,
            ..AckWait::default()
        };
    }

    /// Epoch `number`'s last piece (of `bytes` in all) went out at
    /// `now_ms`. An epoch already acknowledged (the ack overtook this
    /// call) does not wait.
    pub fn shipped(&mut self, number: u64, bytes: usize, now_ms: u64) {
        if number > self.acked && self.waiting.back().is_none_or(|w| w.0 < number) {
            self.waiting.push_back((number, bytes, now_ms));
        }
    }

    /// The Secondary acknowledged every epoch `<= epoch` at `now_ms` (a
    /// repeat of an older ack restarts the clock too: module doc).
    pub fn acked(&mut self, epoch: u64, now_ms: u64) {
        self.acked = self.acked.max(epoch);
        self.last_ack_ms = self.last_ack_ms.max(now_ms);
        while self.waiting.front().is_some_and(|w| w.0 <= self.acked) {
            self.waiting.pop_front();
        }
    }

    /// At `now_ms`: how long the Secondary has acknowledged nothing while
    /// the oldest waiting epoch waits (from the later of its shipping and
    /// the last ack), and that epoch's apply grace; `(0, 0)` when nothing
    /// waits.
    pub fn unacked(&self, now_ms: u64) -> (u64, u64) {
        match self.waiting.front() {
            Some(&(_, bytes, shipped_ms)) => (
                now_ms.saturating_sub(shipped_ms.max(self.last_ack_ms)),
                apply_grace_ms(bytes),
            ),
            None => (0, 0),
        }
    }

    /// The epochs waiting, oldest first (tests, status).
    pub fn waiting(&self) -> impl Iterator<Item = u64> + '_ {
        self.waiting.iter().map(|w| w.0)
    }
}
