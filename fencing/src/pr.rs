//! SCSI-3 persistent reservations on the shared device: the storage-level fence
//! of docs/design.md §3 item 5.
//!
//! Each host registers a [`Key`] (tag, host id, boot incarnation) through its
//! own I_T nexus; one host reserves the device *Write Exclusive – Registrants
//! Only* ([`PrType::WriteExclusiveRegistrantsOnly`]); the winner of generation
//! `g + 1` preempts the previous owner's key, after which every write the old
//! owner sends fails at the device with RESERVATION CONFLICT (the kernel's
//! `EBADE`, see [`is_reservation_conflict`]) whatever its clocks say. Reads stay
//! open to everyone.
//!
//! - [`Reservations`]: the operations, as a trait so the agent and the
//!   simulations can run on [`fake::FakeTarget`].
//! - [`linux::BlockDevice`]: the real device. RESERVE, RELEASE, PREEMPT
//!   (AND ABORT) and CLEAR go through the block layer's PR ioctls
//!   (`linux/pr.h`); PERSISTENT RESERVE IN (READ KEYS, READ RESERVATION,
//!   REPORT CAPABILITIES) through `SG_IO` ([`sg`]), since Debian 12's 6.1
//!   kernel has no ioctl for reading them; and REGISTER through `SG_IO` too,
//!   because 6.1's `IOC_PR_REGISTER` always sets APTPL (persist through power
//!   loss), which a target without that capability — tgt — refuses.
//! - [`linux::probe`]: whether a device offers what the fence needs, and why not.
//! - [`fence`]: the fence's two steps for the agent, [`fence::join`] at agent
//!   start and [`fence::depose`] by the winner of a generation.
//! - [`prin`]: the PERSISTENT RESERVE IN and sense-data parsers (pure; fuzzed
//!   by `fuzz/fuzz_targets/prin.rs`).
//!
//! Rules: keys this appliance makes always carry [`KEY_TAG`] in their top 16
//! bits, so a key is never zero (zero means "no key" to the target) and keys of
//! other software on the same LUN are told apart. A key is per boot: a rebooted
//! host registers a new incarnation with REGISTER AND IGNORE EXISTING KEY, so a
//! preempt aimed at the key of its previous life does not fence its new one.

pub mod fake;
pub mod fence;
pub mod linux;
pub mod prin;
pub mod sg;

use std::fmt;
use std::num::NonZeroU64;

pub use linux::{is_reservation_conflict, probe, BlockDevice, Capabilities, ProbeError};
pub use prin::{Keys, PrinError, Reservation, Sense, TypeMask};

/// The top 16 bits of every key this appliance registers: `"FT"`.
pub const KEY_TAG: u16 = 0x4654;

/// A persistent-reservation key (8 bytes, big-endian on the wire; never zero).
///
/// Keys this appliance makes ([`Key::for_host`]) are laid out as
///
/// | bits    | field |
/// |---------|-------|
/// | 63..48  | [`KEY_TAG`] `0x4654` ("FT") |
/// | 47..32  | host id (`hosts[].id` of the config, 1..=255) |
/// | 31..0   | boot incarnation: the low 32 bits of the fencing agent's random per-start incarnation |
///
/// so `sg_persist -k` on the target shows e.g. `0x4654000289abcdef` for host 2.
/// Keys read from the device may be anything ([`Key::from_raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(NonZeroU64);

impl Key {
    /// This appliance's key for `host_id` in boot `incarnation`.
    pub fn for_host(host_id: u16, incarnation: u64) -> Key {
        let raw =
            (u64::from(KEY_TAG) << 48) | (u64::from(host_id) << 32) | (incarnation & 0xffff_ffff);
        Key(NonZeroU64::new(raw).expect("the tag makes every appliance key non-zero"))
    }

    /// A key as read from the device; `None` for zero ("no key").
    pub fn from_raw(raw: u64) -> Option<Key> {
        NonZeroU64::new(raw).map(Key)
    }

    pub fn raw(self) -> u64 {
        self.0.get()
    }

    /// The host id of an appliance key; `None` for a key without [`KEY_TAG`].
    pub fn host_id(self) -> Option<u16> {
        ((self.raw() >> 48) as u16 == KEY_TAG).then_some((self.raw() >> 32) as u16)
    }

    /// The boot incarnation bits of an appliance key.
    pub fn incarnation(self) -> Option<u32> {
        self.host_id().map(|_| self.raw() as u32)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.raw())
    }
}

/// Reservation types (SPC-4 table "Persistent reservation type codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE code in a SCSI CDB or PRIN response.
    pub fn scsi_code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    pub fn from_scsi_code(code: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| t.scsi_code() == code)
    }

    /// The `enum pr_type` value of `linux/pr.h` (not the SCSI code).
    pub fn kernel_code(self) -> u32 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 2,
            PrType::WriteExclusiveRegistrantsOnly => 3,
            PrType::ExclusiveAccessRegistrantsOnly => 4,
            PrType::WriteExclusiveAllRegistrants => 5,
            PrType::ExclusiveAccessAllRegistrants => 6,
        }
    }

    /// Whether a registered initiator that does not hold the reservation may
    /// write (the "registrants" types).
    pub fn registrants_may_write(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
                | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Whether an initiator without the right to write may still read.
    pub fn others_may_read(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }

    /// Short name as sg_persist prints it.
    pub fn short_name(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "WE",
            PrType::ExclusiveAccess => "EA",
            PrType::WriteExclusiveRegistrantsOnly => "WERO",
            PrType::ExclusiveAccessRegistrantsOnly => "EARO",
            PrType::WriteExclusiveAllRegistrants => "WEAR",
            PrType::ExclusiveAccessAllRegistrants => "EAAR",
        }
    }
}

impl fmt::Display for PrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// The PERSISTENT RESERVE OUT / IN operation an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrOp {
    Register,
    RegisterIgnore,
    Reserve,
    Release,
    Preempt,
    PreemptAbort,
    Clear,
    ReadKeys,
    ReadReservation,
    ReportCapabilities,
}

impl fmt::Display for PrOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrOp::Register => "PR OUT REGISTER",
            PrOp::RegisterIgnore => "PR OUT REGISTER AND IGNORE EXISTING KEY",
            PrOp::Reserve => "PR OUT RESERVE",
            PrOp::Release => "PR OUT RELEASE",
            PrOp::Preempt => "PR OUT PREEMPT",
            PrOp::PreemptAbort => "PR OUT PREEMPT AND ABORT",
            PrOp::Clear => "PR OUT CLEAR",
            PrOp::ReadKeys => "PR IN READ KEYS",
            PrOp::ReadReservation => "PR IN READ RESERVATION",
            PrOp::ReportCapabilities => "PR IN REPORT CAPABILITIES",
        })
    }
}

/// Why a persistent-reservation command failed.
#[derive(Debug, thiserror::Error)]
pub enum PrError {
    /// RESERVATION CONFLICT: the key given is not this host's registered key,
    /// this host is not registered (it was preempted), or another host holds
    /// a reservation that excludes this one. The fence working as meant when
    /// this host was deposed.
    #[error("{device}: {op}: reservation conflict (this host's key is not registered with the device, or another host's reservation excludes it)")]
    Conflict { device: String, op: PrOp },
    /// Not a SCSI block device (a file, virtio-blk, a loop device): no
    /// SG_IO and no PR operations in its driver.
    #[error("{device} is not a SCSI device (a file, virtio-blk, NVMe without SCSI translation): {detail}")]
    NotScsi { device: String, detail: String },
    /// The kernel or the target does not implement this command.
    #[error("{device}: {op}: not supported: {reason}")]
    Unsupported {
        device: String,
        op: PrOp,
        reason: String,
    },
    /// The target answered CHECK CONDITION.
    #[error("{device}: {op}: the target refused the command: {reason}")]
    Refused {
        device: String,
        op: PrOp,
        reason: String,
    },
    /// The command did not reach the target or got no answer (path down,
    /// transport error, timeout).
    #[error("{device}: {op}: transport failure: {reason} (is the storage path up?)")]
    Transport {
        device: String,
        op: PrOp,
        reason: String,
    },
    /// A PERSISTENT RESERVE IN answer that does not parse.
    #[error("{device}: {op}: malformed answer from the target: {source}")]
    Malformed {
        device: String,
        op: PrOp,
        source: PrinError,
    },
    #[error("{device}: {op}: {source}")]
    Io {
        device: String,
        op: PrOp,
        source: std::io::Error,
    },
}

/// Persistent reservations through one I_T nexus (one host's path to the
/// device). Every method is one command to the target; none retries.
pub trait Reservations: Send + Sync {
    /// The device, for messages.
    fn device(&self) -> &str;
    /// REGISTER: `old` is the key this nexus holds now (`None` when it holds
    /// none); conflicts if that is not so.
    fn register(&self, old: Option<Key>, new: Key) -> Result<(), PrError>;
    /// REGISTER AND IGNORE EXISTING KEY: `new` replaces whatever this nexus
    /// held (a rebooted host whose previous key is still registered).
    fn register_ignore(&self, new: Key) -> Result<(), PrError>;
    /// REGISTER with a zero service-action key: removes this nexus's `own`
    /// registration (and a reservation it held, unless all-registrants).
    fn unregister(&self, own: Key) -> Result<(), PrError>;
    /// RESERVE with this nexus's registered key.
    fn reserve(&self, own: Key, kind: PrType) -> Result<(), PrError>;
    /// RELEASE a reservation this nexus holds (no effect if it holds none).
    fn release(&self, own: Key, kind: PrType) -> Result<(), PrError>;
    /// PREEMPT (or PREEMPT AND ABORT, which also aborts the victim's queued
    /// commands): removes every registration with key `victim`; if the victim
    /// held the reservation, this nexus now holds it with type `kind`.
    fn preempt(&self, own: Key, victim: Key, kind: PrType, abort: bool) -> Result<(), PrError>;
    /// CLEAR: removes every registration and the reservation.
    fn clear(&self, own: Key) -> Result<(), PrError>;
    /// READ KEYS: the registered keys (one per registered nexus).
    fn read_keys(&self) -> Result<Keys, PrError>;
    /// READ RESERVATION.
    fn read_reservation(&self) -> Result<Reservation, PrError>;
    /// The UNIT ATTENTIONs the target reported to this nexus since the last
    /// call, oldest first (commands absorb and retry them). `2a/03`
    /// "reservations preempted" or `2a/05` "registrations preempted": another
    /// host removed this nexus's key. A path that cannot see them returns none.
    fn take_unit_attentions(&self) -> Vec<Sense> {
        Vec::new()
    }
}

impl Sense {
    /// `2a/03` RESERVATIONS PREEMPTED or `2a/05` REGISTRATIONS PREEMPTED:
    /// another initiator removed this nexus's registration or reservation.
    pub fn is_preemption(&self) -> bool {
        self.key == 0x6 && self.asc == 0x2a && matches!(self.ascq, 0x03 | 0x05)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appliance_keys_carry_tag_host_and_incarnation() {
        let k = Key::for_host(2, 0x1234_5678_89ab_cdef);
        assert_eq!(k.raw(), 0x4654_0002_89ab_cdef);
        assert_eq!(k.host_id(), Some(2));
        assert_eq!(k.incarnation(), Some(0x89ab_cdef));
        assert_eq!(k.to_string(), "0x4654000289abcdef");
        // Zero incarnation and host still give a non-zero key.
        assert_eq!(Key::for_host(0, 0).raw(), 0x4654_0000_0000_0000);
        let foreign = Key::from_raw(0xaaaa).unwrap();
        assert_eq!(foreign.host_id(), None);
        assert_eq!(foreign.incarnation(), None);
        assert_eq!(Key::from_raw(0), None);
    }

    #[test]
    fn type_codes_match_spc_and_linux_pr_h() {
        let scsi: Vec<u8> = PrType::ALL.iter().map(|t| t.scsi_code()).collect();
        assert_eq!(scsi, [1, 3, 5, 6, 7, 8]);
        let kernel: Vec<u32> = PrType::ALL.iter().map(|t| t.kernel_code()).collect();
        assert_eq!(kernel, [1, 2, 3, 4, 5, 6]);
        for t in PrType::ALL {
            assert_eq!(PrType::from_scsi_code(t.scsi_code()), Some(t));
        }
        assert_eq!(PrType::from_scsi_code(2), None);
        let wero = PrType::WriteExclusiveRegistrantsOnly;
        assert!(wero.registrants_may_write() && wero.others_may_read());
        assert!(!PrType::ExclusiveAccess.others_may_read());
    }
}
