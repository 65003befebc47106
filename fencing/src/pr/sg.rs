//! SCSI commands through the `SG_IO` ioctl of a block device (`scsi/sg.h`):
//! PERSISTENT RESERVE IN, and PERSISTENT RESERVE OUT REGISTER (see
//! [`prout_register_cdb`] for why REGISTER does not use the kernel's ioctl).
//!
//! Rules: one synchronous command per call, with a 32-byte sense buffer and
//! [`SG_TIMEOUT`]; a failure is named from the SCSI status, the sense data
//! and the host/driver status ([`failure`]). SG_IO does not retry: a UNIT
//! ATTENTION (reported once per event to each I_T nexus — reset, "reservations
//! preempted", "registrations preempted") is handed to the caller's sink and
//! the command sent again, up to [`UA_RETRIES`] times.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::prin::Sense;
use super::{Key, PrError, PrOp};

/// How long the kernel waits for one command before it gives up on it.
pub const SG_TIMEOUT: Duration = Duration::from_secs(10);

const SG_IO: u64 = 0x2285;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;
const SG_INFO_OK_MASK: u32 = 0x1;
/// How many UNIT ATTENTIONs in a row one command absorbs.
pub const UA_RETRIES: usize = 4;
/// SENSE KEY UNIT ATTENTION.
const UNIT_ATTENTION: u8 = 0x6;
/// The kernel-internal "no such ioctl" that some drivers let through.
const ENOIOCTLCMD: i32 = 515;

/// SAM status RESERVATION CONFLICT.
pub const STATUS_RESERVATION_CONFLICT: u8 = 0x18;
/// SAM status CHECK CONDITION.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// PERSISTENT RESERVE OUT service actions sent here.
pub const PROUT_REGISTER: u8 = 0x00;
pub const PROUT_REGISTER_IGNORE: u8 = 0x06;
/// The PR OUT parameter list length (SPC-4 basic parameter list).
const PROUT_PARAMS: usize = 24;

/// `struct sg_io_hdr`.
#[repr(C)]
pub struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: libc::c_int,
    duration: u32,
    info: u32,
}

/// Data direction of one command.
pub enum Data<'a> {
    /// The target writes into this buffer (PR IN).
    FromDevice(&'a mut [u8]),
    /// The target reads this buffer (PR OUT parameter list).
    ToDevice(&'a [u8]),
}

/// Runs `cdb` on `file`, again after each UNIT ATTENTION (given to
/// `attention`); returns the number of bytes transferred.
pub fn run(
    file: &File,
    device: &str,
    op: PrOp,
    cdb: &[u8],
    mut data: Data<'_>,
    attention: &mut dyn FnMut(Sense),
) -> Result<usize, PrError> {
    absorb_attentions(device, op, attention, || {
        let again = match &mut data {
            Data::FromDevice(b) => Data::FromDevice(b),
            Data::ToDevice(b) => Data::ToDevice(b),
        };
        run_once(file, device, op, cdb, again)
    })
}

/// Calls `attempt` until it gives something other than a UNIT ATTENTION,
/// handing each to `attention`, at most [`UA_RETRIES`] + 1 times.
fn absorb_attentions(
    device: &str,
    op: PrOp,
    attention: &mut dyn FnMut(Sense),
    mut attempt: impl FnMut() -> Result<Result<usize, Sense>, PrError>,
) -> Result<usize, PrError> {
    let mut last = None;
    for _ in 0..=UA_RETRIES {
        match attempt()? {
            Ok(n) => return Ok(n),
            Err(ua) => {
                attention(ua);
                last = Some(ua);
            }
        }
    }
    let last = last.expect("the loop ran at least once");
    Err(PrError::Refused {
        device: device.to_owned(),
        op,
        reason: format!(
            "{} UNIT ATTENTIONs in a row, the last: {last}",
            UA_RETRIES + 1
        ),
    })
}

/// One SG_IO: the bytes transferred, or a UNIT ATTENTION to retry after.
fn run_once(
    file: &File,
    device: &str,
    op: PrOp,
    cdb: &[u8],
    data: Data<'_>,
) -> Result<Result<usize, Sense>, PrError> {
    let (direction, ptr, len) = match data {
        Data::FromDevice(b) => (SG_DXFER_FROM_DEV, b.as_mut_ptr(), b.len()),
        // The kernel only reads a to-device buffer.
        Data::ToDevice(b) => (SG_DXFER_TO_DEV, b.as_ptr().cast_mut(), b.len()),
    };
    let mut sense = [0u8; 32];
    let mut hdr = SgIoHdr {
        interface_id: b'S' as libc::c_int,
        dxfer_direction: direction,
        cmd_len: u8::try_from(cdb.len()).expect("a CDB is at most 16 bytes"),
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: u32::try_from(len).expect("PR data fits 32 bits"),
        dxferp: ptr.cast(),
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: SG_TIMEOUT.as_millis() as u32,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: SG_IO takes a `struct sg_io_hdr` (mirrored by `SgIoHdr`,
    // repr(C), size checked in the tests); its pointers name `cdb` (cmd_len
    // bytes), the data buffer (dxfer_len bytes; written by the kernel only
    // for FromDevice, whose buffer is a unique borrow) and `sense`
    // (mx_sb_len bytes), all alive until the synchronous ioctl returns.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            SG_IO as libc::c_ulong,
            &mut hdr as *mut SgIoHdr,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(ENOIOCTLCMD) => PrError::NotScsi {
                device: device.to_owned(),
                detail: format!("{op}: SG_IO refused ({e})"),
            },
            _ => PrError::Io {
                device: device.to_owned(),
                op,
                source: e,
            },
        });
    }
    if hdr.info & SG_INFO_OK_MASK != 0 {
        let sense = &sense[..usize::from(hdr.sb_len_wr).min(sense.len())];
        if hdr.status == STATUS_CHECK_CONDITION {
            if let Some(s) = Sense::parse(sense).filter(|s| s.key == UNIT_ATTENTION) {
                return Ok(Err(s));
            }
        }
        return Err(failure(device, op, &hdr, sense));
    }
    Ok(Ok(len.saturating_sub(hdr.resid.max(0) as usize)))
}

/// The PERSISTENT RESERVE IN CDB for service action `action`.
pub fn prin_cdb(action: u8, alloc: usize) -> [u8; 10] {
    assert!(
        alloc <= u16::MAX as usize,
        "PRIN allocation length is 16 bits"
    );
    [
        0x5e,
        action,
        0,
        0,
        0,
        0,
        0,
        (alloc >> 8) as u8,
        alloc as u8,
        0,
    ]
}

/// The CDB and parameter list of PR OUT REGISTER (or REGISTER AND IGNORE
/// EXISTING KEY): `key` is the key this nexus holds (0: none), `sa_key` the
/// key it registers (0: unregister), `aptpl` asks the target to keep the
/// registrations through its own power loss.
///
/// Linux 6.1's `IOC_PR_REGISTER` always sets APTPL, and a target that cannot
/// persist through power loss (tgt: REPORT CAPABILITIES PTPL_C = 0) refuses
/// that with ILLEGAL REQUEST / INVALID FIELD IN CDB. So REGISTER goes through
/// SG_IO with APTPL set only where the target offers it.
pub fn prout_register_cdb(
    action: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> ([u8; 10], [u8; PROUT_PARAMS]) {
    let cdb = [0x5f, action, 0, 0, 0, 0, 0, 0, PROUT_PARAMS as u8, 0];
    let mut params = [0u8; PROUT_PARAMS];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    params[20] = u8::from(aptpl);
    (cdb, params)
}

/// Sends PR OUT REGISTER / REGISTER AND IGNORE EXISTING KEY.
#[allow(clippy::too_many_arguments)]
pub fn prout_register(
    file: &File,
    device: &str,
    op: PrOp,
    action: u8,
    old: Option<Key>,
    new: Option<Key>,
    aptpl: bool,
    attention: &mut dyn FnMut(Sense),
) -> Result<(), PrError> {
    let (cdb, params) = prout_register_cdb(
        action,
        old.map_or(0, Key::raw),
        new.map_or(0, Key::raw),
        aptpl,
    );
    run(file, device, op, &cdb, Data::ToDevice(&params), attention).map(drop)
}

/// Names a failed command from its status, sense data and host status.
pub fn failure(device: &str, op: PrOp, hdr: &SgIoHdr, sense: &[u8]) -> PrError {
    named(
        device,
        op,
        hdr.status,
        hdr.host_status,
        hdr.driver_status,
        sense,
    )
}

fn named(device: &str, op: PrOp, status: u8, host: u16, driver: u16, sense: &[u8]) -> PrError {
    let device = device.to_owned();
    if status == STATUS_RESERVATION_CONFLICT {
        return PrError::Conflict { device, op };
    }
    let is_prin = matches!(
        op,
        PrOp::ReadKeys | PrOp::ReadReservation | PrOp::ReportCapabilities
    );
    if status == STATUS_CHECK_CONDITION {
        return match Sense::parse(sense) {
            // A PR IN the target does not know: unsupported. For PR OUT the
            // same sense usually means a field it refuses (APTPL, a type):
            // say what it said.
            Some(s) if is_prin && s.is_unsupported_command() => PrError::Unsupported {
                device,
                op,
                reason: format!("the target does not implement it: {s}"),
            },
            Some(s) => PrError::Refused {
                device,
                op,
                reason: s.to_string(),
            },
            None => PrError::Refused {
                device,
                op,
                reason: "CHECK CONDITION without readable sense data".into(),
            },
        };
    }
    PrError::Transport {
        device,
        op,
        reason: format!(
            "SCSI status {status:#04x}, host status {host:#x}, driver status {driver:#x}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
    }

    #[test]
    fn register_parameter_list_as_sg_persist_sends_it() {
        // sg_persist --out --register --param-sark=0xaaaa --param-aptpl -vv:
        // cdb 5f 00 00 00 00 00 00 00 18 00; params: 16 bytes of keys, then
        // byte 20 = 0x01.
        let (cdb, p) = prout_register_cdb(PROUT_REGISTER, 0, 0xaaaa, true);
        assert_eq!(cdb, [0x5f, 0, 0, 0, 0, 0, 0, 0, 0x18, 0]);
        assert_eq!(&p[14..16], &[0xaa, 0xaa]);
        assert_eq!(p[20], 1);
        let (cdb, p) = prout_register_cdb(PROUT_REGISTER_IGNORE, 0, 0x4654_0001_0000_0011, false);
        assert_eq!(cdb[1], 0x06);
        assert_eq!(&p[8..16], &[0x46, 0x54, 0, 1, 0, 0, 0, 0x11]);
        assert_eq!(p[20], 0);
        assert_eq!(prin_cdb(0x01, 24), [0x5e, 1, 0, 0, 0, 0, 0, 0, 24, 0]);
    }

    #[test]
    fn unit_attentions_are_absorbed_and_reported_up_to_a_bound() {
        let preempted = Sense {
            key: 0x6,
            asc: 0x2a,
            ascq: 0x03,
        };
        let mut seen = Vec::new();
        let mut answers = vec![Ok(Ok(24)), Ok(Err(preempted))];
        let n = absorb_attentions("d", PrOp::ReadKeys, &mut |s| seen.push(s), || {
            answers.pop().unwrap()
        });
        assert_eq!(n.unwrap(), 24);
        assert_eq!(seen, [preempted]);
        // A target that never stops: bounded, named, every UA handed on.
        let mut calls = 0;
        seen.clear();
        let e = absorb_attentions("d", PrOp::ReadKeys, &mut |s| seen.push(s), || {
            calls += 1;
            Ok(Err(preempted))
        })
        .unwrap_err();
        assert_eq!(calls, UA_RETRIES + 1);
        assert_eq!(seen.len(), UA_RETRIES + 1);
        assert!(e.to_string().contains("UNIT ATTENTIONs in a row"), "{e}");
        // Other errors end at once.
        let e = absorb_attentions("d", PrOp::ReadKeys, &mut |_| {}, || {
            Err(PrError::Conflict {
                device: "d".into(),
                op: PrOp::ReadKeys,
            })
        });
        assert!(matches!(e, Err(PrError::Conflict { .. })));
    }

    #[test]
    fn failures_are_named() {
        // tgt refusing APTPL: ILLEGAL REQUEST, INVALID FIELD IN CDB.
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = 0x05;
        s[12] = 0x24;
        match named("d", PrOp::Register, STATUS_CHECK_CONDITION, 0, 0, &s) {
            PrError::Refused { reason, .. } => {
                assert!(reason.contains("invalid field in CDB"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            named(
                "d",
                PrOp::ReportCapabilities,
                STATUS_CHECK_CONDITION,
                0,
                0,
                &s
            ),
            PrError::Unsupported { .. }
        ));
        assert!(matches!(
            named("d", PrOp::ReadKeys, STATUS_RESERVATION_CONFLICT, 0, 0, &[]),
            PrError::Conflict { .. }
        ));
        assert!(matches!(
            named("d", PrOp::ReadKeys, 0, 0x0e, 0, &[]),
            PrError::Transport { .. }
        ));
    }
}
