//! What goes into and out of a [`super::sender::Sender`]: its policy
//! constants and configuration, the events a driver feeds it, the actions it
//! asks for, its stats, and the set of pages sent at least once.

/// Stop-and-copy when the next round is at most this (64 MiB at 1 Gbit/s
/// ≈ 0.5 s; the pause budget of a respawn).
pub const STOP_COPY_BYTES: u64 = 64 << 20;
/// Pre-copy rounds at most (round 0 included) before stopping anyway.
pub const MAX_PRECOPY_ROUNDS: u32 = 30;
/// A pre-copy round not acknowledged within this fails the transfer.
pub const ACK_TIMEOUT_MS: u64 = 10_000;
/// The guest may stay paused this long waiting for `Restored`.
pub const PAUSE_TIMEOUT_MS: u64 = 3_000;

/// The logging link the defaults are sized for: 1 Gbit/s.
pub const ASSUMED_LINK_BYTES_PER_MS: u64 = 125_000;

const _: () = assert!(MAX_PRECOPY_ROUNDS >= 1);
// The last round at the threshold takes at most half the pause budget on the
// assumed link; the other half is for the snapshot, the Switch and the restore.
const _: () = assert!(STOP_COPY_BYTES / ASSUMED_LINK_BYTES_PER_MS <= PAUSE_TIMEOUT_MS / 2);

/// What a sender is told.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Guest memory in pages (gfns `0..total_pages`).
    pub total_pages: u64,
    pub page_size: u32,
    pub stop_copy_bytes: u64,
    pub max_rounds: u32,
    pub ack_timeout_ms: u64,
    pub pause_timeout_ms: u64,
}

impl SenderConfig {
    /// The defaults above for `memory_bytes` of `page_size` pages.
    pub fn new(memory_bytes: u64, page_size: u32) -> Self {
        assert!(page_size > 0, "page size 0");
        SenderConfig {
            total_pages: memory_bytes / u64::from(page_size),
            page_size,
            stop_copy_bytes: STOP_COPY_BYTES,
            max_rounds: MAX_PRECOPY_ROUNDS,
            ack_timeout_ms: ACK_TIMEOUT_MS,
            pause_timeout_ms: PAUSE_TIMEOUT_MS,
        }
    }
}

/// Why pre-copy stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The dirty set fits in the pause budget.
    SmallEnough,
    /// The dirty set did not shrink from the previous round.
    NotShrinking,
    /// `max_rounds` pre-copy rounds are done.
    MaxRounds,
}

/// What the driver tells the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin (the driver has a connection to the new Secondary).
    Start {
        now_ms: u64,
    },
    /// The receiver accepted the Offer.
    PeerAccepted,
    /// The result of [`Action::ReadDirtyLog`]: gfns written since the last read.
    DirtyPages(Vec<u64>),
    /// The receiver acknowledged round `r`.
    RoundAcked(u32),
    /// The driver sent the Switch with this memory digest.
    SwitchSent {
        memory_sha256: [u8; 32],
    },
    /// The receiver restored from the Switch.
    PeerRestored {
        memory_sha256: [u8; 32],
    },
    PeerRefused {
        reason: String,
    },
    PeerAborted {
        reason: String,
    },
    /// The connection broke.
    LinkLost {
        detail: String,
    },
    /// The operator or the member gave up on this transfer.
    Cancel {
        reason: String,
    },
    Tick {
        now_ms: u64,
    },
}

/// What the sender asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Offer` for this VM.
    SendOffer,
    /// Start dirty logging (`Vm::start_dirty_tracking`), before round 0's
    /// pages are read.
    StartDirtyLog,
    /// After performing the actions before it, read the dirty log
    /// (`Vm::dirty_pages_since_last_call`) and feed [`Event::DirtyPages`].
    ReadDirtyLog,
    /// Read these pages now and send them as `Pages{round}` messages.
    SendPages {
        round: u32,
        gfns: Vec<u64>,
    },
    SendRoundEnd {
        round: u32,
        pages_sent: u64,
        dirty_left: u64,
    },
    /// Stop the guest's vCPUs (at an exit; its index is the log start).
    PauseVcpus {
        reason: StopReason,
    },
    /// Snapshot the vCPU + devices and send `Switch{round}` (memory digest,
    /// log start exit), then feed [`Event::SwitchSent`].
    SendSwitch {
        round: u32,
    },
    /// Send `Abort{reason}` to the receiver.
    SendAbort {
        reason: String,
    },
    ResumeVcpus,
    /// The new Secondary runs from the Switch: start lockstep logging.
    Done,
    Failed {
        reason: String,
    },
}

/// What a transfer did, for logs and the simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Rounds sent, the final (paused) one included.
    pub rounds: u32,
    pub pages_sent: u64,
    pub final_round_pages: u64,
    pub stop_reason: Option<StopReason>,
    pub paused_ms: u64,
}

/// A bit per guest page: sent at least once.
#[derive(Debug)]
pub(super) struct SentPages {
    bits: Vec<u64>,
    total: u64,
    count: u64,
}

impl SentPages {
    pub(super) fn new(total: u64) -> Self {
        SentPages {
            bits: vec![0; total.div_ceil(64) as usize],
            total,
            count: 0,
        }
    }

    pub(super) fn mark(&mut self, gfn: u64) {
        assert!(gfn < self.total, "gfn {gfn} outside {} pages", self.total);
        let (w, b) = ((gfn / 64) as usize, gfn % 64);
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.count += 1;
        }
    }

    pub(super) fn count(&self) -> u64 {
        self.count
    }

    pub(super) fn all_sent(&self) -> bool {
        self.count == self.total
    }
}
