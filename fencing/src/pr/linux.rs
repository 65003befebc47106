//! Persistent reservations on a Linux block device: RESERVE, RELEASE,
//! PREEMPT (AND ABORT) and CLEAR through the block layer's ioctls
//! (`IOC_PR_*`, `linux/pr.h`); REGISTER and PR IN through `SG_IO`
//! ([`super::sg`]; 6.1's `IOC_PR_REGISTER` always asks for APTPL, which
//! targets without persist-through-power-loss refuse).
//!
//! Rules: one [`BlockDevice`] is one open file of the device node; every
//! command goes down the host's own path to the target (its I_T nexus), so
//! registrations are per host. The PR ioctls need `CAP_SYS_ADMIN` (the fencing
//! agent runs as root). On 6.1 an ioctl answers a failed command with the
//! positive SCSI result (status byte in bits 0..8, host byte in bits 16..24);
//! newer kernels answer `PR_STS_*`, whose values were chosen to match
//! (`0x18` RESERVATION CONFLICT, `0x2` I/O error, `0x10000`.. path failures).
//! Both decode through [`out_result`].

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::prin::{self, Keys, Reservation, Sense, TypeMask};
use super::sg::{self, Data, STATUS_CHECK_CONDITION, STATUS_RESERVATION_CONFLICT};
use super::{Key, PrError, PrOp, PrType, Reservations};

/// The largest READ KEYS answer asked for (the CDB's 16-bit allocation length).
const MAX_ALLOC: usize = 0xfff8;
/// First READ KEYS buffer: 64 keys.
const FIRST_ALLOC: usize = 8 + 64 * 8;

// linux/pr.h
/// `struct pr_registration` (only its size is used: REGISTER goes through
/// SG_IO, see [`sg::prout_register_cdb`]).
#[repr(C)]
struct PrRegistration {
    _old_key: u64,
    _new_key: u64,
    _flags: u32,
    _pad: u32,
}

#[repr(C)]
struct PrReservation {
    key: u64,
    kind: u32,
    flags: u32,
}

#[repr(C)]
struct PrPreempt {
    old_key: u64,
    new_key: u64,
    kind: u32,
    flags: u32,
}

#[repr(C)]
struct PrClear {
    key: u64,
    flags: u32,
    pad: u32,
}

/// `_IOW('p', nr, T)`.
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | ((b'p' as u64) << 8) | nr
}

pub const IOC_PR_REGISTER: u64 = iow(200, std::mem::size_of::<PrRegistration>());
pub const IOC_PR_RESERVE: u64 = iow(201, std::mem::size_of::<PrReservation>());
pub const IOC_PR_RELEASE: u64 = iow(202, std::mem::size_of::<PrReservation>());
pub const IOC_PR_PREEMPT: u64 = iow(203, std::mem::size_of::<PrPreempt>());
pub const IOC_PR_PREEMPT_ABORT: u64 = iow(204, std::mem::size_of::<PrPreempt>());
pub const IOC_PR_CLEAR: u64 = iow(205, std::mem::size_of::<PrClear>());

/// PERSISTENT RESERVE IN service actions.
const PRIN_READ_KEYS: u8 = 0x00;
const PRIN_READ_RESERVATION: u8 = 0x01;
const PRIN_REPORT_CAPABILITIES: u8 = 0x02;

/// True if `e` is what a read or write gets from the kernel when the target
/// answered RESERVATION CONFLICT (`BLK_STS_NEXUS` → `EBADE`, logged by the
/// kernel as "critical nexus error"): this host was fenced at the device.
pub fn is_reservation_conflict(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADE)
}

/// A block device opened for persistent reservations.
#[derive(Debug)]
pub struct BlockDevice {
    file: File,
    path: PathBuf,
    name: String,
    /// Register with APTPL (the target's PTPL_C), once known.
    aptpl: OnceLock<bool>,
    /// UNIT ATTENTIONs absorbed by SG_IO commands, oldest first, until
    /// [`BlockDevice::take_unit_attentions`].
    attentions: Mutex<Vec<Sense>>,
}

impl BlockDevice {
    /// Opens the block device `path` read-write (the PR ioctls want it).
    pub fn open(path: &Path) -> Result<BlockDevice, PrError> {
        let name = path.display().to_string();
        let io = |source| PrError::Io {
            device: name.clone(),
            op: PrOp::ReadKeys,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        if !file.metadata().map_err(io)?.file_type().is_block_device() {
            return Err(PrError::NotScsi {
                device: name,
                detail: "not a block device".into(),
            });
        }
        Ok(BlockDevice {
            file,
            path: path.to_owned(),
            name,
            aptpl: OnceLock::new(),
            attentions: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The UNIT ATTENTIONs the target reported to this host since the last
    /// call (SG_IO commands absorb and retry them). `2a/03` "reservations
    /// preempted" or `2a/05` "registrations preempted" mean another host
    /// removed this host's key: it was fenced.
    pub fn take_unit_attentions(&self) -> Vec<Sense> {
        std::mem::take(&mut *self.attentions.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn note(&self) -> impl FnMut(Sense) + '_ {
        move |s| {
            tracing::info!(device = %self.name, "unit attention: {s}");
            self.attentions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
        }
    }

    /// Runs one PR OUT ioctl with argument `arg`.
    fn out<T>(&self, op: PrOp, request: u64, arg: &T) -> Result<(), PrError> {
        // SAFETY: `request` is one of the IOC_PR_* numbers, each defined with
        // the size of the `#[repr(C)]` struct `T` passed for it (checked in
        // the tests against linux/pr.h); the kernel only reads `*arg`, which
        // lives across the call; the fd is open.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                request as libc::c_ulong,
                arg as *const T,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                    PrError::NotScsi {
                        device: self.name.clone(),
                        detail: format!("{op}: the kernel has no PR operations for it ({e})"),
                    }
                }
                _ => PrError::Io {
                    device: self.name.clone(),
                    op,
                    source: e,
                },
            });
        }
        out_result(&self.name, op, rc as u32)
    }

    /// Sends PERSISTENT RESERVE IN `action` with an `alloc`-byte buffer and
    /// returns the bytes transferred.
    fn prin(&self, op: PrOp, action: u8, alloc: usize) -> Result<Vec<u8>, PrError> {
        let mut data = vec![0u8; alloc];
        let cdb = sg::prin_cdb(action, alloc);
        let got = sg::run(
            &self.file,
            &self.name,
            op,
            &cdb,
            Data::FromDevice(&mut data),
            &mut self.note(),
        )?;
        data.truncate(got);
        Ok(data)
    }

    /// Whether to ask for APTPL when registering: only if the target says
    /// it can persist through power loss (asked once per open device).
    fn aptpl(&self) -> Result<bool, PrError> {
        if let Some(a) = self.aptpl.get() {
            return Ok(*a);
        }
        let a = self.report_capabilities()?.is_some_and(|m| m.ptpl_capable);
        Ok(*self.aptpl.get_or_init(|| a))
    }

    fn register_raw(&self, op: PrOp, old: Option<Key>, new: Option<Key>) -> Result<(), PrError> {
        let action = match op {
            PrOp::RegisterIgnore => sg::PROUT_REGISTER_IGNORE,
            _ => sg::PROUT_REGISTER,
        };
        let aptpl = self.aptpl()?;
        sg::prout_register(
            &self.file,
            &self.name,
            op,
            action,
            old,
            new,
            aptpl,
            &mut self.note(),
        )
    }

    /// REPORT CAPABILITIES (optional in SPC-3: `Ok(None)` when the target
    /// does not implement it).
    pub fn report_capabilities(&self) -> Result<Option<TypeMask>, PrError> {
        let op = PrOp::ReportCapabilities;
        match self.prin(op, PRIN_REPORT_CAPABILITIES, 8) {
            Ok(b) => prin::parse_report_capabilities(&b)
                .map(Some)
                .map_err(|source| self.malformed(op, source)),
            Err(PrError::Unsupported { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn malformed(&self, op: PrOp, source: prin::PrinError) -> PrError {
        PrError::Malformed {
            device: self.name.clone(),
            op,
            source,
        }
    }
}

/// Decodes the positive result of a PR OUT ioctl.
fn out_result(device: &str, op: PrOp, rc: u32) -> Result<(), PrError> {
    let device = device.to_owned();
    let status = (rc & 0xff) as u8;
    let host = (rc >> 16) & 0xff;
    match (rc, status) {
        (0, _) => Ok(()),
        (_, STATUS_RESERVATION_CONFLICT) => Err(PrError::Conflict { device, op }),
        (_, STATUS_CHECK_CONDITION) => Err(PrError::Refused {
            device,
            op,
            reason: "CHECK CONDITION (the kernel log has the sense data)".into(),
        }),
        _ if host != 0 => Err(PrError::Transport {
            device,
            op,
            reason: format!("host status {host:#x} (SCSI result {rc:#x})"),
        }),
        _ => Err(PrError::Refused {
            device,
            op,
            reason: format!("SCSI result {rc:#x}"),
        }),
    }
}

impl Reservations for BlockDevice {
    fn device(&self) -> &str {
        &self.name
    }

    fn register(&self, old: Option<Key>, new: Key) -> Result<(), PrError> {
        self.register_raw(PrOp::Register, old, Some(new))
    }

    fn register_ignore(&self, new: Key) -> Result<(), PrError> {
        self.register_raw(PrOp::RegisterIgnore, None, Some(new))
    }

    fn unregister(&self, own: Key) -> Result<(), PrError> {
        self.register_raw(PrOp::Register, Some(own), None)
    }

    fn reserve(&self, own: Key, kind: PrType) -> Result<(), PrError> {
        let arg = PrReservation {
            key: own.raw(),
            kind: kind.kernel_code(),
            flags: 0,
        };
        self.out(PrOp::Reserve, IOC_PR_RESERVE, &arg)
    }

    fn release(&self, own: Key, kind: PrType) -> Result<(), PrError> {
        let arg = PrReservation {
            key: own.raw(),
            kind: kind.kernel_code(),
            flags: 0,
        };
        self.out(PrOp::Release, IOC_PR_RELEASE, &arg)
    }

    fn preempt(&self, own: Key, victim: Key, kind: PrType, abort: bool) -> Result<(), PrError> {
        // The kernel passes old_key as the RESERVATION KEY (ours) and new_key
        // as the SERVICE ACTION RESERVATION KEY (the one preempted).
        let arg = PrPreempt {
            old_key: own.raw(),
            new_key: victim.raw(),
            kind: kind.kernel_code(),
            flags: 0,
        };
        let (op, request) = if abort {
            (PrOp::PreemptAbort, IOC_PR_PREEMPT_ABORT)
        } else {
            (PrOp::Preempt, IOC_PR_PREEMPT)
        };
        self.out(op, request, &arg)
    }

    fn clear(&self, own: Key) -> Result<(), PrError> {
        let arg = PrClear {
            key: own.raw(),
            flags: 0,
            pad: 0,
        };
        self.out(PrOp::Clear, IOC_PR_CLEAR, &arg)
    }

    fn read_keys(&self) -> Result<Keys, PrError> {
        let op = PrOp::ReadKeys;
        let mut alloc = FIRST_ALLOC;
        loop {
            let b = self.prin(op, PRIN_READ_KEYS, alloc)?;
            let keys = prin::parse_read_keys(&b).map_err(|e| self.malformed(op, e))?;
            if !keys.truncated || alloc == MAX_ALLOC {
                return Ok(keys);
            }
            let listed = b
                .get(4..8)
                .map_or(0, |l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
            alloc = (8 + listed).min(MAX_ALLOC);
        }
    }

    fn read_reservation(&self) -> Result<Reservation, PrError> {
        let op = PrOp::ReadReservation;
        let b = self.prin(op, PRIN_READ_RESERVATION, 24)?;
        prin::parse_read_reservation(&b).map_err(|e| self.malformed(op, e))
    }

    fn take_unit_attentions(&self) -> Vec<Sense> {
        BlockDevice::take_unit_attentions(self)
    }
}

/// What [`probe`] found on a device that offers the fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// REPORT CAPABILITIES, when the target implements it.
    pub types: Option<TypeMask>,
    pub keys: Keys,
    pub reservation: Reservation,
}

/// Why a device does not offer persistent reservations.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{device} is not a SCSI device (a file, virtio-blk, NVMe without SCSI translation): {detail}")]
    NotScsi { device: String, detail: String },
    #[error("{device}: the target does not implement persistent reservations: {detail}")]
    TargetRefuses { device: String, detail: String },
    #[error("{device}: the target does not offer Write Exclusive - Registrants Only (type mask {mask:#06x})")]
    NoWriteExclusiveRegistrantsOnly { device: String, mask: u16 },
    #[error("{0}")]
    Failed(PrError),
}

/// Checks, without changing anything on the target, that `path` can be fenced
/// with persistent reservations: a SCSI device whose target answers READ
/// KEYS and READ RESERVATION and, if it reports its capabilities, offers
/// Write Exclusive – Registrants Only.
pub fn probe(path: &Path) -> Result<(BlockDevice, Capabilities), ProbeError> {
    let dev = BlockDevice::open(path).map_err(|e| classify(path, e))?;
    let keys = dev.read_keys().map_err(|e| classify(path, e))?;
    let reservation = dev.read_reservation().map_err(|e| classify(path, e))?;
    let types = dev.report_capabilities().map_err(|e| classify(path, e))?;
    if let Some(m) = types {
        if m.supports(PrType::WriteExclusiveRegistrantsOnly) == Some(false) {
            return Err(ProbeError::NoWriteExclusiveRegistrantsOnly {
                device: path.display().to_string(),
                mask: m.mask,
            });
        }
    }
    Ok((
        dev,
        Capabilities {
            types,
            keys,
            reservation,
        },
    ))
}

fn classify(path: &Path, e: PrError) -> ProbeError {
    let device = path.display().to_string();
    match e {
        PrError::NotScsi { detail, .. } => ProbeError::NotScsi { device, detail },
        PrError::Unsupported { reason, .. } => ProbeError::TargetRefuses {
            device,
            detail: reason,
        },
        other => ProbeError::Failed(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_pr_h() {
        // From the kernel headers: _IOW('p', 200..205, ...).
        assert_eq!(IOC_PR_REGISTER, 0x4018_70c8);
        assert_eq!(IOC_PR_RESERVE, 0x4010_70c9);
        assert_eq!(IOC_PR_RELEASE, 0x4010_70ca);
        assert_eq!(IOC_PR_PREEMPT, 0x4018_70cb);
        assert_eq!(IOC_PR_PREEMPT_ABORT, 0x4018_70cc);
        assert_eq!(IOC_PR_CLEAR, 0x4010_70cd);
    }

    #[test]
    fn out_results_are_named() {
        assert!(out_result("d", PrOp::Reserve, 0).is_ok());
        assert!(matches!(
            out_result("d", PrOp::Reserve, 0x18),
            Err(PrError::Conflict { .. })
        ));
        assert!(matches!(
            out_result("d", PrOp::Reserve, 0x2),
            Err(PrError::Refused { .. })
        ));
        // DID_TRANSPORT_DISRUPTED (0xe) in the host byte; PR_STS_PATH_FAILED.
        for rc in [0x000e_0000, 0x0001_0000] {
            assert!(matches!(
                out_result("d", PrOp::Preempt, rc),
                Err(PrError::Transport { .. })
            ));
        }
        let e = out_result("/dev/sda", PrOp::Preempt, 0x18).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/dev/sda: PR OUT PREEMPT: reservation conflict"),
            "{e}"
        );
    }

    #[test]
    fn a_regular_file_is_not_a_device_for_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        match probe(&p) {
            Err(ProbeError::NotScsi { detail, .. }) => {
                assert_eq!(detail, "not a block device")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conflict_errno_is_ebade() {
        assert!(is_reservation_conflict(&std::io::Error::from_raw_os_error(
            libc::EBADE
        )));
        assert!(!is_reservation_conflict(
            &std::io::Error::from_raw_os_error(libc::EIO)
        ));
    }
}
