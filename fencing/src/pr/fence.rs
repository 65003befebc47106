//! The fence's two steps on a [`Reservations`] device, for the agent: a host
//! joins at agent start, and the winner of a generation deposes the previous
//! owner's host.
//!
//! Rules:
//! - [`join`] runs once per agent start (one boot incarnation): REGISTER AND
//!   IGNORE EXISTING KEY with this incarnation's key (replacing the key of a
//!   previous life of this host), then RESERVE Write Exclusive – Registrants
//!   Only if nobody holds a reservation. A host whose key disappeared
//!   (preempted) must never join again in the same incarnation: its queued
//!   writes would land again. It stops acting and is reset; the next boot
//!   joins with a new key.
//! - [`depose`] removes every key of the victim host (all incarnations)
//!   with PREEMPT AND ABORT, which also aborts the victim's commands queued
//!   in the target, or plain PREEMPT where the target refuses that (tgt);
//!   when the victim held the reservation, this host now holds it. Run it
//!   before answering `Decided` to the caller.
//! - The fence is per host and per LUN: deposing a host cuts it off from
//!   the whole shared device (its leases and every VM disk region on it),
//!   like fence_scsi.

use super::{Key, PrError, PrType, Reservations};

/// The fence's reservation type.
pub const FENCE_TYPE: PrType = PrType::WriteExclusiveRegistrantsOnly;

/// What [`join`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// This host reserved the device (nobody held it).
    pub reserved: bool,
    /// The holder of the reservation after joining.
    pub holder: Key,
}

/// Registers `own` (replacing any key of an earlier incarnation of this
/// host) and reserves [`FENCE_TYPE`] if the device is not reserved.
pub fn join(dev: &dyn Reservations, own: Key) -> Result<Joined, PrError> {
    dev.register_ignore(own)?;
    match dev.read_reservation()?.held {
        Some((holder, FENCE_TYPE)) => Ok(Joined {
            reserved: false,
            holder,
        }),
        Some((holder, other)) => Err(PrError::Refused {
            device: dev.device().to_owned(),
            op: super::PrOp::Reserve,
            reason: format!(
                "the device is reserved {other} by {holder}, not {FENCE_TYPE}: another cluster or tool uses this LUN"
            ),
        }),
        None => match dev.reserve(own, FENCE_TYPE) {
            Ok(()) => Ok(Joined {
                reserved: true,
                holder: own,
            }),
            // Another host reserved it between our read and our reserve.
            Err(PrError::Conflict { .. }) => match dev.read_reservation()?.held {
                Some((holder, FENCE_TYPE)) => Ok(Joined {
                    reserved: false,
                    holder,
                }),
                _ => Err(PrError::Conflict {
                    device: dev.device().to_owned(),
                    op: super::PrOp::Reserve,
                }),
            },
            Err(e) => Err(e),
        },
    }
}

/// What [`depose`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposed {
    /// The victim's keys removed (empty if it had none).
    pub removed: Vec<Key>,
    /// True if the target took PREEMPT AND ABORT (the victim's commands
    /// queued in the target were aborted too); false if it refused it and
    /// plain PREEMPT was used (tgt 1.0.85 does not implement it).
    pub aborted: bool,
}

/// Preempts every registration of host `victim_host` other than `own`,
/// with PREEMPT AND ABORT where the target implements it, else PREEMPT.
pub fn depose(dev: &dyn Reservations, own: Key, victim_host: u16) -> Result<Deposed, PrError> {
    let mut removed: Vec<Key> = dev
        .read_keys()?
        .keys
        .into_iter()
        .filter(|k| *k != own && k.host_id() == Some(victim_host))
        .collect();
    removed.sort();
    removed.dedup();
    let mut aborted = true;
    for k in &removed {
        if aborted {
            match dev.preempt(own, *k, FENCE_TYPE, true) {
                Ok(()) => continue,
                Err(PrError::Refused { reason, .. }) => {
                    tracing::warn!(
                        device = dev.device(),
                        "PREEMPT AND ABORT refused ({reason}); using PREEMPT"
                    );
                    aborted = false;
                }
                Err(e) => return Err(e),
            }
        }
        dev.preempt(own, *k, FENCE_TYPE, false)?;
    }
    Ok(Deposed { removed, aborted })
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTarget;
    use super::*;

    #[test]
    fn first_joiner_reserves_the_others_register() {
        let t = FakeTarget::new();
        let (a, b) = (t.nexus("a"), t.nexus("b"));
        let (ka, kb) = (Key::for_host(1, 1), Key::for_host(2, 1));
        assert_eq!(
            join(&a, ka).unwrap(),
            Joined {
                reserved: true,
                holder: ka
            }
        );
        assert_eq!(
            join(&b, kb).unwrap(),
            Joined {
                reserved: false,
                holder: ka
            }
        );
        assert!(a.may_write() && b.may_write());
    }

    #[test]
    fn depose_fences_every_incarnation_of_the_victim_only() {
        let t = FakeTarget::new();
        let (a, b, c) = (t.nexus("a"), t.nexus("b"), t.nexus("c"));
        let (ka, kb, kc) = (
            Key::for_host(1, 7),
            Key::for_host(2, 1),
            Key::for_host(3, 1),
        );
        join(&a, ka).unwrap();
        join(&b, kb).unwrap();
        join(&c, kc).unwrap();
        assert_eq!(
            depose(&b, kb, 1).unwrap(),
            Deposed {
                removed: vec![ka],
                aborted: true
            }
        );
        assert!(!a.may_write() && a.may_read());
        assert!(b.may_write() && c.may_write());
        assert_eq!(b.read_reservation().unwrap().held, Some((kb, FENCE_TYPE)));
        // Nothing left of host 1: deposing again is a no-op.
        assert!(depose(&b, kb, 1).unwrap().removed.is_empty());
        // A deposed host cannot rejoin with the same key unless it
        // re-registers (new boot); then it writes again as a registrant.
        assert!(matches!(
            a.reserve(ka, FENCE_TYPE),
            Err(PrError::Conflict { .. })
        ));
        let ka2 = Key::for_host(1, 8);
        assert!(!join(&a, ka2).unwrap().reserved);
        assert!(a.may_write());
    }

    #[test]
    fn a_target_without_preempt_and_abort_gets_preempt() {
        let t = FakeTarget::new();
        t.refuse_preempt_abort(true);
        let (a, b) = (t.nexus("a"), t.nexus("b"));
        let (ka, kb) = (Key::for_host(1, 1), Key::for_host(2, 1));
        join(&a, ka).unwrap();
        join(&b, kb).unwrap();
        assert_eq!(
            depose(&b, kb, 1).unwrap(),
            Deposed {
                removed: vec![ka],
                aborted: false
            }
        );
        assert!(!a.may_write());
        assert_eq!(b.read_reservation().unwrap().held, Some((kb, FENCE_TYPE)));
    }

    #[test]
    fn a_foreign_reservation_is_refused() {
        let t = FakeTarget::new();
        let (x, a) = (t.nexus("x"), t.nexus("a"));
        let kx = Key::from_raw(0x1234).unwrap();
        x.register(None, kx).unwrap();
        x.reserve(kx, PrType::ExclusiveAccess).unwrap();
        let e = join(&a, Key::for_host(1, 1)).unwrap_err();
        assert!(e.to_string().contains("another cluster or tool"), "{e}");
    }
}
