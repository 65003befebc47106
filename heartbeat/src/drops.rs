//! Why a received datagram was dropped, and the counters by reason that
//! `Status` shows (in total and per peer). Every reason has one stable name
//! (`as_str`), used in status, in console lines and in the README's table.

/// Why a received packet was dropped. The first six are decided before any
/// X25519 operation (from the clear header and the source address); the
/// others after the Noise open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Too short/long, bad magic, or an authentic payload that does not decode.
    Malformed,
    /// Unknown wire or payload version.
    BadVersion,
    /// The header names a host that is not a peer in the config.
    UnknownSender,
    /// The header names a peer, but the datagram does not come from that
    /// peer's FT address and heartbeat port.
    WrongSource,
    /// The header names another receiver.
    NotForUs,
    /// The source sent more than its rate limit allows (see [`crate::gate`]).
    RateLimited,
    /// The Noise message does not authenticate with the claimed sender's key.
    Forged,
    /// Authentic, but the payload names another sender than the header.
    SenderMismatch,
    /// Not newer than what was seen of its (sender, boot id), or a boot id
    /// that was replaced.
    Replayed,
    /// Authentic, from a boot id not confirmed yet, and no recent echo of ours.
    UnconfirmedBoot,
    /// Authentic and new, from the confirmed boot, but echoes none of our
    /// heartbeats of the last failure timeout: delayed or withheld, it proves
    /// nothing about the present. Its seq and echo are kept; liveness is not.
    Stale,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Malformed,
        DropReason::BadVersion,
        DropReason::UnknownSender,
        DropReason::WrongSource,
        DropReason::NotForUs,
        DropReason::RateLimited,
        DropReason::Forged,
        DropReason::SenderMismatch,
        DropReason::Replayed,
        DropReason::UnconfirmedBoot,
        DropReason::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadVersion => "bad_version",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::WrongSource => "wrong_source",
            DropReason::NotForUs => "not_for_us",
            DropReason::RateLimited => "rate_limited",
            DropReason::Forged => "forged",
            DropReason::SenderMismatch => "sender_mismatch",
            DropReason::Replayed => "replayed",
            DropReason::UnconfirmedBoot => "unconfirmed_boot",
            DropReason::Stale => "stale",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

/// Drop counters, one per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn add(&mut self, r: DropReason) {
        self.add_n(r, 1);
    }
    pub fn add_n(&mut self, r: DropReason, n: u64) {
        self.0[r.index()] += n;
    }
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn to_json(&self) -> serde_json::Value {
        let m: serde_json::Map<_, _> = DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), self.get(*r).into()))
            .collect();
        m.into()
    }
}
