//! The VMs this ftvmm runs, as the fencing agent sees them: the host's output
//! grant (docs/design.md §2), the set of VMs it runs as Primary (fencing
//! publishes it, level-triggered) and depositions.
//!
//! Kept apart from the VM manager's lock on purpose: a grant or a hold must
//! take effect, and be confirmed to fencing, while a slow `StopVm` holds the
//! manager (fencing stops feeding the watchdog when ftvmm does not confirm).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config_schema::ctl::RunningVm;

use crate::lockstep::grant::HostGrant;
use crate::lockstep::live_affinity::LiveAffinity;
use crate::lockstep::live_timing::LiveTiming;
use crate::lockstep::member::{Event, Grant};
use crate::lockstep::spec::PairHandle;

/// How often a lapsed grant is looked for.
const LAPSE_POLL: Duration = Duration::from_millis(50);

/// The members of this host and its grant.
pub struct Members {
    grant: Arc<HostGrant>,
    /// The timing taken live from applied configs (every member reads it).
    timing: Arc<LiveTiming>,
    /// The affinity taken live from applied configs (every placement reads it).
    affinity: Arc<LiveAffinity>,
    handles: Mutex<BTreeMap<String, Arc<PairHandle>>>,
    /// Each member's fencing slot (sent with the running list: a fencing
    /// agent restarted since a VM was added live learns it there).
    slots: Mutex<BTreeMap<String, u32>>,
    /// Whether the grant was valid when last looked at (to tell members of
    /// a change once, not on every renewal).
    was_valid: Mutex<bool>,
}

impl Members {
    /// Members behind `grant` (the daemon: [`HostGrant::none`]).
    pub fn new(grant: Arc<HostGrant>) -> Arc<Self> {
        let was_valid = grant.valid();
        Arc::new(Members {
            grant,
            timing: Arc::default(),
            affinity: Arc::default(),
            handles: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(BTreeMap::new()),
            was_valid: Mutex::new(was_valid),
        })
    }

    pub fn grant(&self) -> Arc<HostGrant> {
        Arc::clone(&self.grant)
    }

    /// The timing taken live (`ConfigApplied`'s `timing`).
    pub fn timing(&self) -> Arc<LiveTiming> {
        Arc::clone(&self.timing)
    }

    /// The affinity taken live (`ConfigApplied`'s allowed hosts).
    pub fn affinity(&self) -> Arc<LiveAffinity> {
        Arc::clone(&self.affinity)
    }

    /// The handle of a VM's (newest) member, and the VM's fencing slot.
    pub fn insert(&self, vm: &str, slot: Option<u32>, h: Arc<PairHandle>) {
        if let Some(s) = slot {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.insert(vm.to_string(), s);
        }
        self.lock().insert(vm.to_string(), h);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<PairHandle>>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn each(&self, f: impl Fn(&PairHandle)) {
        let hs: Vec<Arc<PairHandle>> = self.lock().values().cloned().collect();
        for h in hs {
            f(&h);
        }
    }

    /// Fencing's `OutputGrant`. Returns once the new state is in force for
    /// every Primary here (a withdrawal: nothing leaves any more).
    pub fn on_grant(&self, ok: bool, valid_ms: u64, reason: &str) {
        if ok {
            self.grant.renew(Duration::from_millis(valid_ms));
            self.each(|h| h.kick());
        } else {
            self.grant.withdraw();
        }
        self.notice(if ok {
            Grant::Ok
        } else {
            Grant::Withdrawn {
                reason: reason.to_string(),
            }
        });
    }

    /// Looks whether the grant lapsed or came back and tells the members of
    /// a change (`explicit`: the grant fencing just stated).
    ///
    /// The members are told under the `was_valid` lock, and validity is read
    /// under it too: the grant-watch thread and fencing's thread both call
    /// this, and if one could read and post outside the lock, a lapse seen
    /// by the watch could be posted *after* the renewal that ended it (the
    /// watch reads "lapsed" and drops the lock, fencing's thread renews,
    /// posts `Ok`, then the watch posts `Lapsed`). The members would then
    /// believe the grant gone while `was_valid` says it is there, and no
    /// later change would ever tell them otherwise: a Secondary that won its
    /// go-live stayed "live but output held" for good (the respawn QEMU test,
    /// under load).
    fn notice(&self, stated: Grant) {
        let mut was = self.was_valid.lock().unwrap_or_else(|p| p.into_inner());
        let valid = self.grant.valid();
        let changed = valid != *was;
        *was = valid;
        let ev = match (&stated, valid) {
            (Grant::Withdrawn { .. }, _) => Some(stated),
            (_, true) if changed => Some(Grant::Ok),
            (_, false) if changed => Some(Grant::Lapsed),
            _ => None,
        };
        if let Some(g) = ev {
            self.each(|h| {
                h.post(Event::Grant(g.clone()));
            });
        }
        drop(was);
    }

    /// Watches the grant expire on its own (fencing gone or stuck), forever.
    pub fn watch_lapses(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("grant-watch".into())
            .spawn(move || loop {
                std::thread::sleep(LAPSE_POLL);
                me.notice(Grant::Lapsed);
            });
        if let Err(e) = spawned {
            println!("ftvmm: cannot watch the output grant: {e}");
        }
    }

    /// The VMs this host runs (or is acquiring) as Primary.
    pub fn running(&self) -> Vec<RunningVm> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.lock()
            .iter()
            .filter_map(|(vm, h)| {
                h.running_generation().map(|generation| RunningVm {
                    vm: vm.clone(),
                    generation,
                    slot: slots.get(vm).copied(),
                })
            })
            .collect()
    }

    /// Fencing's `Deposed`: the member of `vm` halts if it acts in an older
    /// generation. True if a member took it.
    pub fn deposed(&self, vm: &str, generation: u64, by: &str) -> bool {
        let h = self.lock().get(vm).cloned();
        h.is_some_and(|h| {
            h.post(Event::Deposed {
                generation,
                by: by.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn members_hear_each_grant_change_once_and_deposition_reaches_its_vm() {
        let m = Members::new(HostGrant::none());
        let h = Arc::new(PairHandle::default());
        let (tx, rx) = mpsc::channel();
        h.attach(tx);
        h.running.store(3, std::sync::atomic::Ordering::SeqCst);
        m.insert("kv", Some(4), Arc::clone(&h));
        m.on_grant(true, 60, "");
        m.on_grant(true, 60, "");
        assert_eq!(rx.try_recv(), Ok(Event::Grant(Grant::Ok)));
        assert!(rx.try_recv().is_err(), "a renewal is not news");
        std::thread::sleep(Duration::from_millis(80));
        m.notice(Grant::Lapsed);
        assert_eq!(rx.try_recv(), Ok(Event::Grant(Grant::Lapsed)));
        m.on_grant(false, 0, "lease renewal failing");
        assert_eq!(
            rx.try_recv(),
            Ok(Event::Grant(Grant::Withdrawn {
                reason: "lease renewal failing".into()
            }))
        );
        assert_eq!(
            m.running(),
            vec![RunningVm {
                vm: "kv".into(),
                generation: 3,
                slot: Some(4),
            }]
        );
        assert!(m.deposed("kv", 4, "host-b"));
        assert_eq!(
            rx.try_recv(),
            Ok(Event::Deposed {
                generation: 4,
                by: "host-b".into()
            })
        );
        assert!(!m.deposed("other", 4, "host-b"));
    }

    /// Fencing's renewals racing the lapse watch: whatever interleaving,
    /// the last grant event a member hears agrees with the grant itself
    /// (before the fix, a lapse seen just before a renewal could be posted
    /// after the renewal's `Ok`, and the member stayed "not granted" for
    /// good). Short grants make lapses and renewals interleave constantly.
    #[test]
    fn the_last_grant_event_agrees_with_the_grant_whatever_the_interleaving() {
        for round in 0..20 {
            let m = Members::new(HostGrant::none());
            let h = Arc::new(PairHandle::default());
            let (tx, rx) = mpsc::channel();
            h.attach(tx);
            m.insert("kv", None, Arc::clone(&h));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watch = {
                let (m, stop) = (Arc::clone(&m), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        m.notice(Grant::Lapsed);
                    }
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_millis(100);
            while std::time::Instant::now() < deadline {
                m.on_grant(true, 1, "");
            }
            // End with a long grant: it is valid from now on.
            m.on_grant(true, 60_000, "");
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            watch.join().unwrap();
            let last = rx.try_iter().filter_map(|e| match e {
                Event::Grant(g) => Some(g),
                _ => None,
            });
            assert_eq!(
                last.last(),
                Some(Grant::Ok),
                "round {round}: the member last heard something other than Ok"
            );
        }
    }
}
