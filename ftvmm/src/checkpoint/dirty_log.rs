//! How the epoch loop harvests KVM's dirty log, with a switch:
//!
//! - [`DirtyLog::Get`]: `KVM_GET_DIRTY_LOG`, which returns the bitmap and,
//!   in the same call, resets it and write-protects the pages again.
//! - [`DirtyLog::GetClear`]: with `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`
//!   enabled, `KVM_GET_DIRTY_LOG` only returns the bitmap and
//!   `KVM_CLEAR_DIRTY_LOG` resets and re-protects exactly the pages it
//!   names (kvm-ioctls 0.25 has no wrapper: the ioctl is here).
//!
//! Both run inside the pause (the epoch's pages are copied there), so an
//! epoch holds the same pages either way; `dirty_tests` measures the pause
//! both ways.
//!
//! The mode is a property of the VM: [`enable_manual_protect`] switches it
//! (once; KVM has no way back), and a harvest must then clear.

use kvm_bindings::{kvm_clear_dirty_log, kvm_enable_cap, KVMIO};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` (kvm-bindings).
const CAP_MANUAL_PROTECT2: u32 = kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
/// Its "enable" option bit.
const MANUAL_PROTECT_ENABLE: u64 = kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE as u64;

/// The harvest (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirtyLog {
    #[default]
    Get,
    GetClear,
}

/// Why the dirty log could not be read or reset.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    #[error("KVM does not offer KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (the kernel predates 5.8 or its KVM lacks it); use the plain KVM_GET_DIRTY_LOG harvest")]
    Unsupported,
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Switches `vm` to manual protection (module doc).
pub fn enable_manual_protect(vm: &VmFd) -> Result<(), DirtyLogError> {
    let offered = vm.check_extension_raw(CAP_MANUAL_PROTECT2.into());
    if offered <= 0 || (offered as u64 & MANUAL_PROTECT_ENABLE) == 0 {
        return Err(DirtyLogError::Unsupported);
    }
    let mut cap = kvm_enable_cap {
        cap: CAP_MANUAL_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = MANUAL_PROTECT_ENABLE;
    vm.enable_cap(&cap).map_err(|e| DirtyLogError::Kvm {
        what: "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })
}

/// Slot `slot`'s dirty bitmap (`mem_size` bytes of memory), reset and
/// re-protected as `mode` does it.
pub fn harvest_bitmap(
    vm: &VmFd,
    slot: u32,
    mem_size: u64,
    mode: DirtyLog,
) -> Result<Vec<u64>, DirtyLogError> {
    let mut bitmap = vm
        .get_dirty_log(slot, mem_size as usize)
        .map_err(|e| DirtyLogError::Kvm {
            what: "KVM_GET_DIRTY_LOG",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    if mode == DirtyLog::GetClear {
        clear(vm, slot, mem_size / 4096, &mut bitmap)?;
    }
    Ok(bitmap)
}

/// `KVM_CLEAR_DIRTY_LOG` of the pages set in `bitmap`, over the whole slot
/// of `pages` pages (KVM wants `first_page` and `num_pages` multiples of 64
/// or reaching the slot's end: 0 and `pages` are).
fn clear(vm: &VmFd, slot: u32, pages: u64, bitmap: &mut [u64]) -> Result<(), DirtyLogError> {
    assert!(
        bitmap.len() as u64 * 64 >= pages,
        "the bitmap covers the slot"
    );
    if bitmap.iter().all(|&w| w == 0) {
        return Ok(());
    }
    let mut arg = kvm_clear_dirty_log {
        slot,
        num_pages: u32::try_from(pages).map_err(|_| DirtyLogError::Kvm {
            what: "KVM_CLEAR_DIRTY_LOG",
            source: std::io::Error::other(format!("{pages} pages do not fit its u32")),
        })?,
        first_page: 0,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    // SAFETY: `vm` is a KVM VM fd; `arg` is a valid kvm_clear_dirty_log
    // whose bitmap pointer names `bitmap`, which holds at least `pages`
    // bits (asserted) and outlives the call; the kernel only reads it.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if ret < 0 {
        return Err(DirtyLogError::Kvm {
            what: "KVM_CLEAR_DIRTY_LOG",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
