//! Save and restore of a whole VM in a versioned file.
//!
//! Format (all integers little-endian):
//!
//! ```text
//! magic    8 bytes  "FTVMSNAP"
//! version  u32      SNAPSHOT_VERSION
//! state    u64 length + postcard-encoded VmState (vCPU, devices, counters)
//! memory   u64 length + raw guest memory from GPA 0
//! crc32c   u32      over every byte before it
//! ```
//!
//! Saving first re-enters the vCPU once with `immediate_exit` set, so that a
//! port or MMIO read the guest is in the middle of completes inside KVM and the
//! saved registers are those after the instruction (as Cloud Hypervisor does).
//! That entry runs no guest instruction and does not count as an exit.
//! A snapshot restored into a fresh [`Vm`] continues exactly: same exit index,
//! same registers, same device state; the caller re-arms its live timer from
//! `Devices::timer_program()`.

use std::io::{Read, Write};

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::{DeviceRestoreError, DevicesState};
use crate::io::ExitIndex;
use crate::stats::ExitStats;
use crate::virtio::MmioTransport;
use crate::vm::{kvm_err, Vm, VmError};

pub const MAGIC: &[u8; 8] = b"FTVMSNAP";
pub const SNAPSHOT_VERSION: u32 = 1;
/// The decoded state may not exceed this (memory is separate).
pub const MAX_STATE_LEN: u64 = 64 << 20;

/// MSRs saved: long mode, SYSCALL/SYSENTER, segment bases, PAT, TSC, misc.
pub const SAVED_MSRS: &[u32] = &[
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x277,       // PAT
    0x10,        // TSC
    0x1a0,       // MISC_ENABLE
];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot version {found} is not supported (this build reads {SNAPSHOT_VERSION})")]
    Version { found: u32 },
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot state section of {0} bytes is too large")]
    StateTooLarge(u64),
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("snapshot state cannot be decoded: {0}")]
    Decode(postcard::Error),
    #[error("snapshot memory is {found} bytes but its state says {expected}")]
    MemSize { expected: u64, found: u64 },
    #[error("trailing bytes after the snapshot checksum")]
    Trailing,
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Devices(#[from] DeviceRestoreError),
    #[error("KVM_SET_MSRS set {set} of {total} MSRs")]
    Msrs { set: usize, total: usize },
    #[error("unexpected vCPU exit while quiescing for a snapshot: {0}")]
    Quiesce(String),
}

/// vCPU state.
#[derive(Serialize, Deserialize)]
pub struct CpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    pub mp_state: kvm_mp_state,
}

/// Everything but memory.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub mem_size: u64,
    pub exit_index: ExitIndex,
    pub halted: bool,
    /// Whether the VM stopped right after a deterministic exit (see `vcpu.rs`).
    pub at_deterministic_point: bool,
    pub stats: ExitStats,
    pub cpu: CpuState,
    pub devices: DevicesState,
}

/// Writes through while computing the checksum.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.inner.write_all(b)
    }
}

struct CrcReader<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> CrcReader<R> {
    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
            _ => SnapshotError::Io(e),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

impl Vm {
    /// Completes a pending I/O instruction without running the guest further
    /// and refreshes `kvm_run.if_flag`/`ready_for_interrupt_injection`.
    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let res = match self.vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(SnapshotError::Vm(VmError::Kvm {
                what: "KVM_RUN (immediate exit)",
                source: e,
            })),
            Ok(exit) => Err(SnapshotError::Quiesce(format!("{exit:?}"))),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        res
    }

    /// Captures the VM's state (not its memory). Call between runs.
    pub fn save_state(&mut self) -> Result<VmState, SnapshotError> {
        self.quiesce()?;
        let v = &self.vcpu;
        let supported = self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
        let wanted: Vec<kvm_msr_entry> = SAVED_MSRS
            .iter()
            .filter(|i| supported.as_slice().contains(i))
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&wanted).expect("a handful of MSRs fits");
        let got = v.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        let msrs = msrs.as_slice()[..got]
            .iter()
            .map(|e| (e.index, e.data))
            .collect();
        let cpu = CpuState {
            regs: v.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: v.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            xsave: v.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?,
            xcrs: v.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            msrs,
            events: v
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
            debugregs: v.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            mp_state: v.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
        };
        Ok(VmState {
            mem_size: self.mem_size,
            exit_index: self.n,
            halted: self.halted,
            at_deterministic_point: self.at_deterministic_point,
            stats: self.stats.clone(),
            cpu,
            devices: self.devices.save(),
        })
    }

    /// Writes a complete snapshot to `w`.
    pub fn save_snapshot<W: Write>(&mut self, w: W) -> Result<(), SnapshotError> {
        let state = self.save_state()?;
        let encoded = postcard::to_allocvec(&state).map_err(SnapshotError::Decode)?;
        let mut cw = CrcWriter { inner: w, crc: 0 };
        cw.put(MAGIC)?;
        cw.put(&SNAPSHOT_VERSION.to_le_bytes())?;
        cw.put(&(encoded.len() as u64).to_le_bytes())?;
        cw.put(&encoded)?;
        cw.put(&self.mem_size.to_le_bytes())?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut addr = 0u64;
        while addr < self.mem_size {
            let len = chunk.len().min((self.mem_size - addr) as usize);
            self.mem
                .read_slice(&mut chunk[..len], GuestAddress(addr))
                .map_err(|e| VmError::Memory(e.to_string()))?;
            cw.put(&chunk[..len])?;
            addr += len as u64;
        }
        let crc = cw.crc;
        cw.inner.write_all(&crc.to_le_bytes())?;
        cw.inner.flush()?;
        Ok(())
    }

    /// Reads a snapshot and builds a VM from it. `virtio` must be the same
    /// device configuration (kinds, order) as the saved VM's.
    pub fn restore_snapshot<R: Read>(
        r: R,
        virtio: Vec<MmioTransport>,
    ) -> Result<Vm, SnapshotError> {
        let mut cr = CrcReader { inner: r, crc: 0 };
        let mut magic = [0u8; 8];
        cr.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = cr.u32()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        let state_len = cr.u64()?;
        if state_len > MAX_STATE_LEN {
            return Err(SnapshotError::StateTooLarge(state_len));
        }
        let mut encoded = vec![0u8; state_len as usize];
        cr.take(&mut encoded)?;
        let state: VmState = postcard::from_bytes(&encoded).map_err(SnapshotError::Decode)?;
        let mem_len = cr.u64()?;
        if mem_len != state.mem_size {
            return Err(SnapshotError::MemSize {
                expected: state.mem_size,
                found: mem_len,
            });
        }
        let mut vm = Vm::new(state.mem_size, virtio)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut addr = 0u64;
        while addr < mem_len {
            let len = chunk.len().min((mem_len - addr) as usize);
            cr.take(&mut chunk[..len])?;
            vm.mem
                .write_slice(&chunk[..len], GuestAddress(addr))
                .map_err(|e| VmError::Memory(e.to_string()))?;
            addr += len as u64;
        }
        let computed = cr.crc;
        let mut stored = [0u8; 4];
        cr.inner
            .read_exact(&mut stored)
            .map_err(|_| SnapshotError::Truncated)?;
        let stored = u32::from_le_bytes(stored);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let mut extra = [0u8; 1];
        if cr.inner.read(&mut extra)? != 0 {
            return Err(SnapshotError::Trailing);
        }
        vm.load_state(state)?;
        Ok(vm)
    }

    /// Applies a saved state (memory must already hold the saved contents).
    pub fn load_state(&mut self, state: VmState) -> Result<(), SnapshotError> {
        if state.mem_size != self.mem_size {
            return Err(SnapshotError::MemSize {
                expected: self.mem_size,
                found: state.mem_size,
            });
        }
        self.devices.restore(state.devices)?;
        let v = &self.vcpu;
        let c = &state.cpu;
        v.set_mp_state(c.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        v.set_sregs(&c.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        v.set_regs(&c.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        // SAFETY: `c.xsave` is a complete kvm_xsave as returned by KVM_GET_XSAVE
        // (4 KiB legacy layout, no trailing FAM data is read by KVM_SET_XSAVE).
        unsafe { v.set_xsave(&c.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        v.set_xcrs(&c.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        v.set_debug_regs(&c.debugregs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        let entries: Vec<kvm_msr_entry> = c
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Msrs {
            set: 0,
            total: entries.len(),
        })?;
        let set = v.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(SnapshotError::Msrs {
                set,
                total: entries.len(),
            });
        }
        v.set_vcpu_events(&c.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        self.n = state.exit_index;
        self.halted = state.halted;
        self.at_deterministic_point = state.at_deterministic_point;
        self.stats = state.stats;
        // Fill kvm_run's interrupt flags from the restored state, as the
        // uninterrupted VM had them after its last exit.
        self.quiesce()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(version: u32, state_len: u64, body: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&state_len.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn header_errors_are_typed() {
        let r = Vm::restore_snapshot(&b"NOTASNAPxxxxxxxx"[..], vec![]);
        assert!(matches!(r, Err(SnapshotError::BadMagic)));
        let r = Vm::restore_snapshot(&header(7, 0, &[])[..], vec![]);
        assert!(matches!(r, Err(SnapshotError::Version { found: 7 })));
        let r = Vm::restore_snapshot(&header(SNAPSHOT_VERSION, u64::MAX, &[])[..], vec![]);
        assert!(matches!(r, Err(SnapshotError::StateTooLarge(_))));
        let r = Vm::restore_snapshot(&header(SNAPSHOT_VERSION, 100, &[1, 2, 3])[..], vec![]);
        assert!(matches!(r, Err(SnapshotError::Truncated)));
        let r = Vm::restore_snapshot(&MAGIC[..4], vec![]);
        assert!(matches!(r, Err(SnapshotError::Truncated)));
    }

    proptest! {
        /// Garbage after a valid header is an error, never a panic.
        #[test]
        fn garbage_state_is_an_error(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let bytes = header(SNAPSHOT_VERSION, body.len() as u64, &body);
            prop_assert!(Vm::restore_snapshot(&bytes[..], vec![]).is_err());
        }

        #[test]
        fn arbitrary_bytes_are_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(Vm::restore_snapshot(&bytes[..], vec![]).is_err());
        }
    }
}
