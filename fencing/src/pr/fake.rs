//! An in-memory SCSI target with SPC-4 persistent-reservation semantics, for
//! the agent's tests and the simulations: one [`FakeTarget`] is the LUN, each
//! [`FakeNexus`] one host's I_T nexus to it.
//!
//! Rules (SPC-4 §5.14, the parts the fence uses): a nexus has at most one
//! registration; REGISTER checks the key it replaces (RESERVATION CONFLICT
//! otherwise); RESERVE, RELEASE, PREEMPT and CLEAR need the caller's
//! registered key; PREEMPT removes every registration with the victim's key
//! and, if the victim held the reservation, gives it to the caller;
//! [`FakeNexus::may_write`] / [`FakeNexus::may_read`] say what the
//! reservation allows that nexus. The generation grows on every state change.
//! PR IN answers go through the real byte format and parsers ([`super::prin`]).
//! A preempted nexus gets the UNIT ATTENTION `2a/05` (registrations
//! preempted), the other registrants of a CLEAR `2a/03` (reservations
//! preempted), every nexus of a restarted target `29/00` (power on);
//! [`FakeTarget::restart`] loses every registration, as a target that does not
//! persist them does. [`GatedIo`] puts the fencing region's block I/O behind a
//! nexus: a write the reservation does not allow fails with `EBADE`, as the
//! kernel fails it.
//!
//! Invariants: the reservation holder, if any, is registered; every
//! registered key is non-zero (`Key` cannot be zero).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::prin::{self, Keys, Reservation, Sense};
use super::{Key, PrError, PrOp, PrType, Reservations};
use crate::io::BlockIo;
use crate::layout::Block;

type NexusId = u32;

#[derive(Debug, Default)]
struct State {
    generation: u32,
    /// Registered key per nexus.
    registered: BTreeMap<NexusId, Key>,
    /// Holder and type.
    reservation: Option<(NexusId, PrType)>,
    next_nexus: NexusId,
    /// When true every command fails as if the path were down.
    offline: bool,
    /// When true PREEMPT AND ABORT is refused (ILLEGAL REQUEST), as tgt does.
    no_preempt_abort: bool,
    /// UNIT ATTENTIONs not yet reported, per nexus.
    attentions: BTreeMap<NexusId, Vec<Sense>>,
}

/// UNIT ATTENTION with `asc`/`ascq`.
fn ua(asc: u8, ascq: u8) -> Sense {
    Sense {
        key: 0x6,
        asc,
        ascq,
    }
}

impl State {
    fn check(&self) {
        if let Some((holder, _)) = self.reservation {
            assert!(
                self.registered.contains_key(&holder),
                "the reservation holder must be registered"
            );
        }
    }
}

/// The LUN. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FakeTarget {
    state: Arc<Mutex<State>>,
}

impl FakeTarget {
    pub fn new() -> FakeTarget {
        FakeTarget::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new I_T nexus (a host logging in), named `name` in messages.
    pub fn nexus(&self, name: &str) -> FakeNexus {
        let mut st = self.lock();
        let id = st.next_nexus;
        st.next_nexus += 1;
        FakeNexus {
            target: self.clone(),
            id: Arc::new(AtomicU32::new(id)),
            name: name.to_owned(),
        }
    }

    /// Makes PREEMPT AND ABORT fail with ILLEGAL REQUEST (`true`), as
    /// tgt 1.0.85 answers it.
    pub fn refuse_preempt_abort(&self, refuse: bool) {
        self.lock().no_preempt_abort = refuse;
    }

    /// Makes every command of every nexus fail with a transport error
    /// (`true`) or work again (`false`).
    pub fn set_offline(&self, offline: bool) {
        self.lock().offline = offline;
    }

    /// A restart of a target that does not persist registrations: every
    /// registration and the reservation are gone, the PR generation starts
    /// again at 0, and every nexus gets a `29/00` UNIT ATTENTION.
    pub fn restart(&self) {
        let mut st = self.lock();
        st.registered.clear();
        st.reservation = None;
        st.generation = 0;
        for n in 0..st.next_nexus {
            st.attentions.insert(n, vec![ua(0x29, 0x00)]);
        }
    }
}

/// One host's I_T nexus to a [`FakeTarget`].
#[derive(Debug, Clone)]
pub struct FakeNexus {
    target: FakeTarget,
    /// Shared by the clones: [`FakeNexus::log_in_again`] changes it for all.
    id: Arc<AtomicU32>,
    name: String,
}

impl FakeNexus {
    fn id(&self) -> NexusId {
        self.id.load(Ordering::SeqCst)
    }

    /// The host's session logged in again, at a target that ties
    /// registrations to the session (tgt 1.0.85: its I_T nexus includes the
    /// session's TSIH): from now on this host is a new, unregistered nexus,
    /// while the old nexus's registration (and reservation, if it held it)
    /// stays, so READ KEYS still lists the host's key.
    pub fn log_in_again(&self) {
        let mut st = self.target.lock();
        let id = st.next_nexus;
        st.next_nexus += 1;
        self.id.store(id, Ordering::SeqCst);
    }

    /// Whether a write from this nexus would be executed now.
    pub fn may_write(&self) -> bool {
        let st = self.target.lock();
        match st.reservation {
            None => true,
            Some((holder, _)) if holder == self.id() => true,
            Some((_, kind)) => {
                kind.registrants_may_write() && st.registered.contains_key(&self.id())
            }
        }
    }

    /// Whether a read from this nexus would be executed now.
    pub fn may_read(&self) -> bool {
        let st = self.target.lock();
        match st.reservation {
            Some((holder, kind)) if holder != self.id() && !kind.others_may_read() => {
                kind.registrants_may_write() && st.registered.contains_key(&self.id())
            }
            _ => true,
        }
    }

    /// Runs `f` on the target state as PR OUT `op` of this nexus; the
    /// generation grows when `f` returns `Ok(true)` (it changed something).
    fn out(
        &self,
        op: PrOp,
        f: impl FnOnce(&mut State, NexusId) -> Result<bool, Fail>,
    ) -> Result<(), PrError> {
        let mut st = self.target.lock();
        if st.offline {
            return Err(self.fail(op, Fail::Offline));
        }
        let changed = f(&mut st, self.id()).map_err(|e| self.fail(op, e))?;
        if changed {
            st.generation = st.generation.wrapping_add(1);
        }
        st.check();
        Ok(())
    }

    fn fail(&self, op: PrOp, f: Fail) -> PrError {
        let device = self.name.clone();
        match f {
            Fail::Conflict => PrError::Conflict { device, op },
            Fail::Illegal(reason) => PrError::Refused {
                device,
                op,
                reason: reason.into(),
            },
            Fail::Offline => PrError::Transport {
                device,
                op,
                reason: "fake target offline".into(),
            },
        }
    }
}

enum Fail {
    Conflict,
    Illegal(&'static str),
    Offline,
}

/// The caller's registration must be `own`.
fn registered_as(st: &State, me: NexusId, own: Key) -> Result<(), Fail> {
    match st.registered.get(&me) {
        Some(k) if *k == own => Ok(()),
        _ => Err(Fail::Conflict),
    }
}

/// Removes `me`'s registration and the reservation it held, unless the
/// reservation is of an all-registrants type and others remain registered.
fn drop_registration(st: &mut State, me: NexusId) {
    st.registered.remove(&me);
    if let Some((holder, kind)) = st.reservation {
        let all = matches!(
            kind,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        );
        if holder == me {
            st.reservation = match st.registered.keys().next() {
                Some(&other) if all => Some((other, kind)),
                _ => None,
            };
        }
    }
}

fn register(st: &mut State, me: NexusId, old: Option<Key>, new: Option<Key>) -> Result<bool, Fail> {
    if st.registered.get(&me).copied() != old {
        return Err(Fail::Conflict);
    }
    match (old, new) {
        (None, None) => Ok(false),
        (_, None) => {
            drop_registration(st, me);
            Ok(true)
        }
        (_, Some(k)) => {
            st.registered.insert(me, k);
            Ok(true)
        }
    }
}

impl Reservations for FakeNexus {
    fn device(&self) -> &str {
        &self.name
    }

    fn register(&self, old: Option<Key>, new: Key) -> Result<(), PrError> {
        self.out(PrOp::Register, |st, me| register(st, me, old, Some(new)))
    }

    fn register_ignore(&self, new: Key) -> Result<(), PrError> {
        self.out(PrOp::RegisterIgnore, |st, me| {
            let old = st.registered.get(&me).copied();
            register(st, me, old, Some(new))
        })
    }

    fn unregister(&self, own: Key) -> Result<(), PrError> {
        self.out(PrOp::Register, |st, me| register(st, me, Some(own), None))
    }

    fn reserve(&self, own: Key, kind: PrType) -> Result<(), PrError> {
        self.out(PrOp::Reserve, |st, me| {
            registered_as(st, me, own)?;
            match st.reservation {
                None => {
                    st.reservation = Some((me, kind));
                    Ok(true)
                }
                Some((holder, k)) if holder == me && k == kind => Ok(false),
                Some(_) => Err(Fail::Conflict),
            }
        })
    }

    fn release(&self, own: Key, kind: PrType) -> Result<(), PrError> {
        self.out(PrOp::Release, |st, me| {
            registered_as(st, me, own)?;
            match st.reservation {
                Some((holder, k)) if holder == me => {
                    if k != kind {
                        return Err(Fail::Illegal(
                            "invalid release of persistent reservation (type differs)",
                        ));
                    }
                    st.reservation = None;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn preempt(&self, own: Key, victim: Key, kind: PrType, abort: bool) -> Result<(), PrError> {
        let op = if abort {
            PrOp::PreemptAbort
        } else {
            PrOp::Preempt
        };
        self.out(op, |st, me| {
            if abort && st.no_preempt_abort {
                return Err(Fail::Illegal(
                    "invalid field in CDB (PREEMPT AND ABORT not implemented)",
                ));
            }
            registered_as(st, me, own)?;
            let holder_key = st
                .reservation
                .and_then(|(h, _)| st.registered.get(&h).copied());
            let victims: Vec<NexusId> = st
                .registered
                .iter()
                .filter(|(n, k)| **k == victim && **n != me)
                .map(|(n, _)| *n)
                .collect();
            let takes_reservation = holder_key == Some(victim);
            if victims.is_empty() && !takes_reservation {
                return Err(Fail::Conflict);
            }
            for n in victims {
                st.registered.remove(&n);
                st.attentions.entry(n).or_default().push(ua(0x2a, 0x05));
            }
            if takes_reservation {
                st.reservation = Some((me, kind));
            }
            Ok(true)
        })
    }

    fn clear(&self, own: Key) -> Result<(), PrError> {
        self.out(PrOp::Clear, |st, me| {
            registered_as(st, me, own)?;
            let others: Vec<NexusId> = st
                .registered
                .keys()
                .filter(|n| **n != me)
                .copied()
                .collect();
            for n in others {
                st.attentions.entry(n).or_default().push(ua(0x2a, 0x03));
            }
            st.registered.clear();
            st.reservation = None;
            Ok(true)
        })
    }

    fn read_keys(&self) -> Result<Keys, PrError> {
        let st = self.target.lock();
        if st.offline {
            return Err(self.fail(PrOp::ReadKeys, Fail::Offline));
        }
        let keys: Vec<Key> = st.registered.values().copied().collect();
        let bytes = prin::encode_read_keys(st.generation, &keys, usize::MAX);
        prin::parse_read_keys(&bytes).map_err(|source| PrError::Malformed {
            device: self.name.clone(),
            op: PrOp::ReadKeys,
            source,
        })
    }

    fn read_reservation(&self) -> Result<Reservation, PrError> {
        let st = self.target.lock();
        if st.offline {
            return Err(self.fail(PrOp::ReadReservation, Fail::Offline));
        }
        let r = Reservation {
            generation: st.generation,
            held: st.reservation.map(|(h, kind)| (st.registered[&h], kind)),
        };
        prin::parse_read_reservation(&prin::encode_read_reservation(&r)).map_err(|source| {
            PrError::Malformed {
                device: self.name.clone(),
                op: PrOp::ReadReservation,
                source,
            }
        })
    }

    fn take_unit_attentions(&self) -> Vec<Sense> {
        self.target
            .lock()
            .attentions
            .remove(&self.id())
            .unwrap_or_default()
    }
}

/// The fencing region's block I/O seen through one nexus of a
/// [`FakeTarget`]: a write the reservation does not allow this nexus (a read,
/// under an exclusive-access type) fails with `EBADE`, as Linux fails I/O the
/// target answered with RESERVATION CONFLICT; everything else goes to `inner`.
pub struct GatedIo {
    inner: Arc<dyn BlockIo>,
    nexus: FakeNexus,
}

impl GatedIo {
    pub fn new(inner: Arc<dyn BlockIo>, nexus: FakeNexus) -> GatedIo {
        GatedIo { inner, nexus }
    }
}

fn conflict_error() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EBADE)
}

impl BlockIo for GatedIo {
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }

    fn read(&self, index: u64) -> std::io::Result<Block> {
        if !self.nexus.may_read() {
            return Err(conflict_error());
        }
        self.inner.read(index)
    }

    fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        if !self.nexus.may_write() {
            return Err(conflict_error());
        }
        self.inner.write(index, data)
    }

    fn device_offset(&self, index: u64) -> u64 {
        self.inner.device_offset(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WERO: PrType = PrType::WriteExclusiveRegistrantsOnly;

    fn conflict(r: Result<(), PrError>) -> bool {
        matches!(r, Err(PrError::Conflict { .. }))
    }

    /// The fence of docs/design.md §3 item 5, step by step.
    #[test]
    fn preempt_fences_the_old_owner_and_keeps_reads() {
        let t = FakeTarget::new();
        let (a, b, c) = (t.nexus("a"), t.nexus("b"), t.nexus("c"));
        let (ka, kb) = (Key::for_host(1, 10), Key::for_host(2, 20));
        a.register(None, ka).unwrap();
        b.register(None, kb).unwrap();
        a.reserve(ka, WERO).unwrap();
        assert!(a.may_write() && b.may_write() && !c.may_write() && c.may_read());
        let keys = a.read_keys().unwrap();
        assert_eq!(keys.keys, [ka, kb]);
        assert_eq!(b.read_reservation().unwrap().held, Some((ka, WERO)));

        b.preempt(kb, ka, WERO, false).unwrap();
        assert!(!a.may_write() && a.may_read());
        assert!(b.may_write() && b.may_read());
        assert_eq!(a.read_keys().unwrap().keys, [kb]);
        assert_eq!(a.read_reservation().unwrap().held, Some((kb, WERO)));
        // The deposed host can neither reserve, nor preempt back, nor
        // re-register with its old key.
        assert!(conflict(a.reserve(ka, WERO)));
        assert!(conflict(a.preempt(ka, kb, WERO, false)));
        assert!(conflict(a.register(Some(ka), Key::for_host(1, 11))));
        // It may come back only as a new registration (after a reboot), and
        // then writes again as a registrant.
        a.register_ignore(Key::for_host(1, 11)).unwrap();
        assert!(a.may_write());
    }

    #[test]
    fn register_checks_the_replaced_key_and_generation_counts_changes() {
        let t = FakeTarget::new();
        let a = t.nexus("a");
        let k1 = Key::for_host(1, 1);
        let g0 = a.read_keys().unwrap().generation;
        assert!(conflict(a.register(Some(k1), k1)));
        a.register(None, k1).unwrap();
        assert!(conflict(a.register(None, k1)));
        a.reserve(k1, WERO).unwrap();
        a.reserve(k1, WERO).unwrap(); // same holder, same type: no change
        assert_eq!(a.read_keys().unwrap().generation, g0 + 2);
        assert!(conflict(a.reserve(Key::for_host(1, 2), WERO)));
        assert!(matches!(
            a.release(k1, PrType::WriteExclusive),
            Err(PrError::Refused { .. })
        ));
        a.unregister(k1).unwrap();
        assert_eq!(a.read_reservation().unwrap().held, None);
        assert!(a.read_keys().unwrap().keys.is_empty());
    }

    #[test]
    fn preempt_of_an_unknown_key_conflicts_and_clear_empties() {
        let t = FakeTarget::new();
        let (a, b) = (t.nexus("a"), t.nexus("b"));
        let (ka, kb) = (Key::for_host(1, 1), Key::for_host(2, 2));
        a.register(None, ka).unwrap();
        b.register(None, kb).unwrap();
        assert!(conflict(b.preempt(kb, Key::for_host(3, 3), WERO, true)));
        // Preempting a registrant that holds no reservation only removes it.
        b.preempt(kb, ka, WERO, true).unwrap();
        assert_eq!(b.read_reservation().unwrap().held, None);
        assert_eq!(b.read_keys().unwrap().keys, [kb]);
        b.clear(kb).unwrap();
        assert!(b.read_keys().unwrap().keys.is_empty());
        t.set_offline(true);
        assert!(matches!(b.read_keys(), Err(PrError::Transport { .. })));
    }

    #[test]
    fn preempted_and_restarted_nexuses_get_unit_attentions() {
        let t = FakeTarget::new();
        let (a, b, c) = (t.nexus("a"), t.nexus("b"), t.nexus("c"));
        let (ka, kb, kc) = (
            Key::for_host(1, 1),
            Key::for_host(2, 2),
            Key::for_host(3, 3),
        );
        a.register(None, ka).unwrap();
        b.register(None, kb).unwrap();
        c.register(None, kc).unwrap();
        a.reserve(ka, WERO).unwrap();
        b.preempt(kb, ka, WERO, false).unwrap();
        let got = a.take_unit_attentions();
        assert_eq!(got.len(), 1);
        assert!(got[0].is_preemption() && got[0].ascq == 0x05, "{}", got[0]);
        assert!(a.take_unit_attentions().is_empty(), "reported once");
        assert!(b.take_unit_attentions().is_empty() && c.take_unit_attentions().is_empty());
        b.clear(kb).unwrap();
        let got = c.take_unit_attentions();
        assert!(got.len() == 1 && got[0].ascq == 0x03, "{got:?}");
        assert!(b.take_unit_attentions().is_empty());
        b.register(None, kb).unwrap();
        b.reserve(kb, WERO).unwrap();
        t.restart();
        assert_eq!(
            a.read_keys().unwrap(),
            Keys {
                generation: 0,
                keys: vec![],
                truncated: false
            }
        );
        assert_eq!(a.read_reservation().unwrap().held, None);
        let got = b.take_unit_attentions();
        assert!(got.len() == 1 && got[0].asc == 0x29 && !got[0].is_preemption());
    }

    #[test]
    fn gated_io_refuses_writes_the_reservation_does_not_allow() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared");
        std::fs::write(&p, vec![0u8; 1 << 16]).unwrap();
        let dev = crate::io::Device::open(&p).unwrap();
        let region: Arc<dyn BlockIo> = Arc::new(crate::io::RegionIo::new(dev, 0, 512, 8).unwrap());
        let t = FakeTarget::new();
        let (a, b) = (t.nexus("a"), t.nexus("b"));
        let io = GatedIo::new(Arc::clone(&region), a.clone());
        io.write(1, &[7u8; 512]).unwrap();
        let (ka, kb) = (Key::for_host(1, 1), Key::for_host(2, 2));
        a.register(None, ka).unwrap();
        b.register(None, kb).unwrap();
        b.reserve(kb, WERO).unwrap();
        io.write(1, &[8u8; 512]).unwrap();
        b.preempt(kb, ka, WERO, false).unwrap();
        let e = io.write(1, &[9u8; 512]).unwrap_err();
        assert!(super::super::is_reservation_conflict(&e), "{e}");
        assert_eq!(
            io.read(1).unwrap()[0],
            8,
            "the refused write did not land; reads go on"
        );
    }

    #[test]
    fn exclusive_access_blocks_reads_of_others() {
        let t = FakeTarget::new();
        let (a, b) = (t.nexus("a"), t.nexus("b"));
        let ka = Key::for_host(1, 1);
        a.register(None, ka).unwrap();
        a.reserve(ka, PrType::ExclusiveAccess).unwrap();
        assert!(a.may_read() && !b.may_read() && !b.may_write());
    }
}
