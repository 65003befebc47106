//! Work done on the vCPU thread between two exits: the only thread that may
//! touch a running [`Vm`] (registers, device models, KVM's dirty log) is the
//! one running it, so another thread that needs it — live state transfer
//! reading the dirty log or taking the final snapshot (respawn, §11 of
//! docs/design.md) — hands it a closure here.
//!
//! [`PausePoint::run`] queues the closure, makes the vCPU loop return at
//! its next exit (the recording input door answers `pause_at` with "now",
//! and a kick ends a `KVM_RUN` in progress), and waits for the result. The
//! run thread calls [`PausePoint::serve`] when its loop returned
//! `ExitLimit`, then resumes the guest. The guest is paused exactly while
//! the closures run. A run that ends without serving drops the queued
//! closures, so waiters get an error instead of hanging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use crate::vm::{Vm, VmHandle};

type Work = (u64, Box<dyn FnOnce(&mut Vm) + Send>);

/// Why work could not be done on the vCPU thread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is not running here")]
    NotRunning,
    #[error("the VM stopped before the work ran")]
    Dropped,
    #[error("the vCPU did not reach an exit within {0:?}")]
    Timeout(Duration),
}

/// A queue of work for the vCPU thread of one VM (see the module docs).
#[derive(Default)]
pub struct PausePoint {
    requested: AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
    work: Mutex<Vec<Work>>,
    /// The running VM's handle (kicks); `None` while no vCPU loop serves.
    vm: Mutex<Option<VmHandle>>,
}

impl PausePoint {
    /// The run thread serves this point from now on (its VM's handle).
    pub fn attach(&self, vm: VmHandle) {
        *self.vm.lock().unwrap_or_else(|p| p.into_inner()) = Some(vm);
    }

    /// The run thread stops serving: queued work is dropped (its waiters
    /// get [`PauseError::Dropped`]).
    pub fn detach(&self) {
        *self.vm.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.work.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.requested.store(false, Ordering::SeqCst);
    }

    /// Whether the vCPU loop must return at its next exit.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Runs `f` on the vCPU thread at its next exit and returns its result;
    /// waits at most `timeout` for the vCPU to get there.
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Vm) -> T + Send + 'static,
    ) -> Result<T, PauseError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        {
            let vm = self.vm.lock().unwrap_or_else(|p| p.into_inner());
            let Some(vm) = vm.as_ref() else {
                return Err(PauseError::NotRunning);
            };
            let work: Box<dyn FnOnce(&mut Vm) + Send> = Box::new(move |vm: &mut Vm| {
                let _ = tx.send(f(vm));
            });
            self.work
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id, work));
            self.requested.store(true, Ordering::SeqCst);
            vm.kick();
        }
        match rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(PauseError::Dropped),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Withdrawn if it has not started: work that gave up must
                // never run later (a stale stop-and-copy, say). If the vCPU
                // took it meanwhile, it is running: wait for its end.
                let mut q = self.work.lock().unwrap_or_else(|p| p.into_inner());
                let before = q.len();
                q.retain(|(i, _)| *i != id);
                if q.len() < before {
                    return Err(PauseError::Timeout(timeout));
                }
                drop(q);
                rx.recv().map_err(|_| PauseError::Dropped)
            }
        }
    }

    /// Run thread, between exits: runs every queued closure. True if there
    /// was any (the caller resumes the guest afterwards).
    pub fn serve(&self, vm: &mut Vm) -> bool {
        let work = std::mem::take(&mut *self.work.lock().unwrap_or_else(|p| p.into_inner()));
        self.requested.store(false, Ordering::SeqCst);
        let any = !work.is_empty();
        for (_, w) in work {
            w(vm);
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn work_without_a_serving_vcpu_fails_instead_of_hanging() {
        let p = Arc::new(PausePoint::default());
        assert_eq!(
            p.run(Duration::from_secs(5), |_vm: &mut Vm| ()),
            Err(PauseError::NotRunning)
        );
        p.attach(VmHandle::standalone());
        // Nobody serves: the wait times out and the work is withdrawn (it
        // must never run later).
        assert_eq!(
            p.run(Duration::from_millis(20), |_vm: &mut Vm| ()),
            Err(PauseError::Timeout(Duration::from_millis(20)))
        );
        assert!(p.work.lock().unwrap().is_empty());
        // The run thread ends without serving: waiters learn at once.
        let p2 = Arc::clone(&p);
        let t = std::thread::spawn(move || p2.run(Duration::from_secs(30), |_vm: &mut Vm| 7));
        while p.work.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        p.detach();
        assert_eq!(t.join().unwrap(), Err(PauseError::Dropped));
        assert!(!p.requested());
    }
}
