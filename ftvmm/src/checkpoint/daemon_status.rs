//! A checkpoint member's figures for the daemon's status (`vms[].checkpoint`):
//! the epoch the guest runs in, what the Secondary acknowledged, what is
//! durable on the shared device and what left, the epochs' pauses and how
//! long their outputs waited after they closed (`latency.rs`); on a
//! Secondary the last complete epoch it holds. Set by the member's run as its parts appear;
//! read by status without touching the member.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::driver::Live;
use super::gated::GatedOutputs;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What status shows of a checkpoint member.
#[derive(Default)]
pub struct Figures {
    epoch_ms: AtomicU64,
    vcpus: AtomicU64,
    /// A Primary's outputs (paired or alone).
    primary: Mutex<Option<Arc<GatedOutputs>>>,
    /// A Secondary's last applied epoch.
    applied: Mutex<Option<Arc<AtomicU64>>>,
    /// A Secondary's resumed VM, once it took over.
    live: Mutex<Option<Arc<Mutex<Option<Live>>>>>,
    /// A Primary's guest memory (tests watch its guest).
    memory: Mutex<Option<crate::virtio::GuestMemoryMmap>>,
}

impl Figures {
    pub fn new(epoch: Duration, vcpus: u8) -> Arc<Self> {
        let f = Figures::default();
        f.epoch_ms
            .store(epoch.as_millis() as u64, Ordering::Relaxed);
        f.vcpus.store(u64::from(vcpus), Ordering::Relaxed);
        Arc::new(f)
    }

    pub fn set_primary(&self, outputs: Arc<GatedOutputs>, memory: crate::virtio::GuestMemoryMmap) {
        *lock(&self.primary) = Some(outputs);
        *lock(&self.memory) = Some(memory);
    }

    /// The memory of a Primary's guest (tests watch it).
    #[cfg(test)]
    pub(crate) fn primary_memory(&self) -> Option<crate::virtio::GuestMemoryMmap> {
        lock(&self.memory).clone()
    }

    pub fn set_secondary(&self, applied: Arc<AtomicU64>, live: Arc<Mutex<Option<Live>>>) {
        *lock(&self.applied) = Some(applied);
        *lock(&self.live) = Some(live);
    }

    /// A new run of the member starts: nothing of the last one is shown.
    pub fn reset(&self) {
        *lock(&self.primary) = None;
        *lock(&self.applied) = None;
        *lock(&self.live) = None;
        *lock(&self.memory) = None;
    }

    /// The outputs acting now: a Primary's, or a Secondary's resumed VM's.
    fn outputs(&self) -> Option<Arc<GatedOutputs>> {
        if let Some(o) = lock(&self.primary).clone() {
            return Some(o);
        }
        let live = lock(&self.live).clone()?;
        let l = lock(&live);
        l.as_ref().map(|l| Arc::clone(&l.outputs))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "epoch_ms": self.epoch_ms.load(Ordering::Relaxed),
            "vcpus": self.vcpus.load(Ordering::Relaxed),
        });
        if let Some(o) = self.outputs() {
            let (acked, submitted, durable) = o.progress();
            v["epoch"] = o.current().into();
            v["acknowledged"] = acked.into();
            v["submitted"] = submitted.into();
            v["durable"] = durable.into();
            v["frames_held"] = o.frames_held().into();
            v["frames_released"] = o.stats.frames_released.load(Ordering::Relaxed).into();
            v["bytes_written"] = o.stats.bytes_written.load(Ordering::Relaxed).into();
            let st = &o.stats;
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            v["epochs"] = n(&st.epochs).into();
            v["pause_us_last"] = n(&st.pause_us_last).into();
            v["pause_us_max"] = n(&st.pause_us_max).into();
            v["pause_us_total"] = n(&st.pause_us_total).into();
            v["epoch_bytes_total"] = n(&st.epoch_bytes_total).into();
            v["epoch_pages_total"] = n(&st.epoch_pages_total).into();
            v["epoch_delta_pages_total"] = n(&st.epoch_delta_pages_total).into();
            st.latency.put_json(&mut v);
            v["outputs_stopped"] = o.failed().into();
        }
        if let Some(a) = lock(&self.applied).as_ref() {
            v["applied"] = a.load(Ordering::Relaxed).into();
        }
        if let Some(live) = lock(&self.live).as_ref() {
            if let Some(l) = lock(live).as_ref() {
                v["resumed_from_epoch"] = l.epoch.into();
            }
        }
        v
    }

    /// The memory of the VM a Secondary resumed (tests watch its guest).
    #[cfg(test)]
    pub(crate) fn resumed_memory(&self) -> Option<crate::virtio::GuestMemoryMmap> {
        let live = lock(&self.live).clone()?;
        let l = lock(&live);
        l.as_ref().map(|l| l.running.memory())
    }
}
