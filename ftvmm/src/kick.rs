//! Making `KVM_RUN` return from another thread.
//!
//! A backend thread that produced an input event (or a stop request) sends the
//! vCPU thread a real-time signal. The handler sets `kvm_run.immediate_exit` of
//! the vCPU running on that thread, so a signal that lands just *before*
//! `KVM_RUN` is entered is not lost: KVM then returns `EINTR` at once. Such
//! returns are host-caused exits; they never advance the exit index.

use std::cell::Cell;
use std::sync::{Mutex, Once};

use kvm_ioctls::VcpuFd;

thread_local! {
    /// `&mut kvm_run.immediate_exit` of the vCPU running on this thread.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is set by `Kicker::enter` on this very thread to
            // the mmap'ed kvm_run of a vCPU that outlives the guard which clears
            // it; a volatile byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(ptr, 1) };
        }
    });
}

fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
    });
    res
}

/// Sends kicks to whichever thread currently runs the vCPU.
#[derive(Debug, Default)]
pub struct Kicker {
    thread: Mutex<Option<libc::pthread_t>>,
}

/// While alive, kicks reach the thread that created it.
pub struct KickGuard<'a> {
    kicker: &'a Kicker,
}

impl Kicker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the calling thread as the vCPU thread of `vcpu`.
    pub fn enter<'a>(
        &'a self,
        vcpu: &mut VcpuFd,
    ) -> Result<KickGuard<'a>, vmm_sys_util::errno::Error> {
        install_handler()?;
        let ptr: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(ptr));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
        Ok(KickGuard { kicker: self })
    }

    /// Makes the vCPU thread's current or next `KVM_RUN` return.
    pub fn kick(&self) {
        let guard = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = *guard {
            // SAFETY: `t` is a live thread: the guard clears it (under this lock)
            // before that thread leaves the run loop.
            let rc = unsafe { libc::pthread_kill(t, kick_signal()) };
            if rc != 0 {
                tracing::warn!(rc, "kick: pthread_kill failed");
            }
        }
    }
}

impl Drop for KickGuard<'_> {
    fn drop(&mut self) {
        *self.kicker.thread.lock().unwrap_or_else(|p| p.into_inner()) = None;
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}
