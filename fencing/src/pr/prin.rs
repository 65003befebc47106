//! PERSISTENT RESERVE IN answers and SCSI sense data, parsed from the bytes a
//! target returns (SPC-4 §6.16, §4.5).
//!
//! Rules: every parser takes the bytes actually transferred (the target's
//! answer may be cut short by the allocation length, or be garbage) and
//! either returns a typed value or a [`PrinError`] naming the field and the
//! value; none panics on any input (fuzzed). A list longer than the buffer
//! is reported as `truncated` with the target's full count, so the caller
//! can ask again with a bigger buffer. The `encode_*` functions write the
//! target's side of the format, for the fake target and tests; parsing what
//! they wrote gives back the same value.

use super::{Key, PrType};

/// The header of READ KEYS / READ RESERVATION: generation + additional length.
const HEADER: usize = 8;
/// One reservation descriptor in READ RESERVATION.
const RESERVATION_DESCRIPTOR: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrinError {
    #[error("answer is {got} bytes, shorter than its {need}-byte header")]
    Short { got: usize, need: usize },
    #[error("additional length {0} is not a multiple of 8 (READ KEYS lists 8-byte keys)")]
    KeyListLength(u32),
    #[error("READ KEYS lists key 0 at index {index} (a registered key is never 0)")]
    ZeroKey { index: usize },
    #[error("READ RESERVATION additional length {0}: expected 0 (none) or 16 (one reservation)")]
    ReservationLength(u32),
    #[error("READ RESERVATION: descriptor cut short ({got} of 16 bytes)")]
    ReservationCut { got: usize },
    #[error("READ RESERVATION: reservation key is 0")]
    ReservationZeroKey,
    #[error("READ RESERVATION: unknown type code {0:#x}")]
    ReservationType(u8),
    #[error("READ RESERVATION: scope {0:#x} is not LU_SCOPE (0)")]
    ReservationScope(u8),
    #[error("REPORT CAPABILITIES length field {0}: expected 8")]
    CapabilitiesLength(u16),
}

/// READ KEYS: the PR generation and the registered keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Bumped by the target on every successful PR OUT that changes state.
    pub generation: u32,
    /// The keys in the answer, in the target's order (one per registered
    /// I_T nexus; the same key may appear more than once).
    pub keys: Vec<Key>,
    /// True if the target has more keys than the buffer held.
    pub truncated: bool,
}

impl Keys {
    pub fn contains(&self, key: Key) -> bool {
        self.keys.contains(&key)
    }
}

/// READ RESERVATION: the PR generation and the reservation, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub generation: u32,
    /// The reservation key of the holder and the type; `None` when the
    /// device is not reserved.
    pub held: Option<(Key, PrType)>,
}

/// REPORT CAPABILITIES: which reservation types the device implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeMask {
    /// TYPE MASK VALID: when false the mask says nothing.
    pub valid: bool,
    /// The raw 16-bit PERSISTENT RESERVATION TYPE MASK.
    pub mask: u16,
    /// Persist through power loss capable (the target can keep
    /// registrations across its own restart when asked to).
    pub ptpl_capable: bool,
}

impl TypeMask {
    /// Whether `kind` is implemented, if the mask is valid.
    pub fn supports(&self, kind: PrType) -> Option<bool> {
        let bit = match kind {
            PrType::WriteExclusiveAllRegistrants => 0x8000,
            PrType::ExclusiveAccessRegistrantsOnly => 0x4000,
            PrType::WriteExclusiveRegistrantsOnly => 0x2000,
            PrType::ExclusiveAccess => 0x0800,
            PrType::WriteExclusive => 0x0200,
            PrType::ExclusiveAccessAllRegistrants => 0x0001,
        };
        self.valid.then_some(self.mask & bit != 0)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn header(b: &[u8]) -> Result<(u32, u32), PrinError> {
    if b.len() < HEADER {
        return Err(PrinError::Short {
            got: b.len(),
            need: HEADER,
        });
    }
    Ok((be32(b, 0), be32(b, 4)))
}

/// Parses a READ KEYS answer (`b` = the bytes transferred).
pub fn parse_read_keys(b: &[u8]) -> Result<Keys, PrinError> {
    let (generation, additional) = header(b)?;
    if additional % 8 != 0 {
        return Err(PrinError::KeyListLength(additional));
    }
    let listed = additional as usize / 8;
    let present = ((b.len() - HEADER) / 8).min(listed);
    let mut keys = Vec::with_capacity(present);
    for index in 0..present {
        let raw = be64(b, HEADER + index * 8);
        keys.push(Key::from_raw(raw).ok_or(PrinError::ZeroKey { index })?);
    }
    Ok(Keys {
        generation,
        keys,
        truncated: present < listed,
    })
}

/// Parses a READ RESERVATION answer.
pub fn parse_read_reservation(b: &[u8]) -> Result<Reservation, PrinError> {
    let (generation, additional) = header(b)?;
    match additional as usize {
        0 => Ok(Reservation {
            generation,
            held: None,
        }),
        RESERVATION_DESCRIPTOR => {
            let d = &b[HEADER..];
            if d.len() < RESERVATION_DESCRIPTOR {
                return Err(PrinError::ReservationCut { got: d.len() });
            }
            let key = Key::from_raw(be64(d, 0)).ok_or(PrinError::ReservationZeroKey)?;
            let scope = d[13] >> 4;
            if scope != 0 {
                return Err(PrinError::ReservationScope(scope));
            }
            let code = d[13] & 0x0f;
            let kind = PrType::from_scsi_code(code).ok_or(PrinError::ReservationType(code))?;
            Ok(Reservation {
                generation,
                held: Some((key, kind)),
            })
        }
        _ => Err(PrinError::ReservationLength(additional)),
    }
}

/// Parses a REPORT CAPABILITIES answer (8 bytes).
pub fn parse_report_capabilities(b: &[u8]) -> Result<TypeMask, PrinError> {
    if b.len() < 8 {
        return Err(PrinError::Short {
            got: b.len(),
            need: 8,
        });
    }
    let length = u16::from_be_bytes([b[0], b[1]]);
    if length != 8 {
        return Err(PrinError::CapabilitiesLength(length));
    }
    Ok(TypeMask {
        valid: b[3] & 0x80 != 0,
        mask: u16::from_be_bytes([b[4], b[5]]),
        ptpl_capable: b[2] & 0x01 != 0,
    })
}

/// The target's READ KEYS answer, cut to `alloc` bytes like a real one.
pub fn encode_read_keys(generation: u32, keys: &[Key], alloc: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + keys.len() * 8);
    v.extend_from_slice(&generation.to_be_bytes());
    v.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
    for k in keys {
        v.extend_from_slice(&k.raw().to_be_bytes());
    }
    v.truncate(alloc);
    v
}

/// The target's READ RESERVATION answer.
pub fn encode_read_reservation(r: &Reservation) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + RESERVATION_DESCRIPTOR);
    v.extend_from_slice(&r.generation.to_be_bytes());
    match r.held {
        None => v.extend_from_slice(&0u32.to_be_bytes()),
        Some((key, kind)) => {
            v.extend_from_slice(&(RESERVATION_DESCRIPTOR as u32).to_be_bytes());
            v.extend_from_slice(&key.raw().to_be_bytes());
            v.extend_from_slice(&[0; 5]); // obsolete, reserved
            v.push(kind.scsi_code()); // scope 0 (LU_SCOPE) in the high nibble
            v.extend_from_slice(&[0; 2]); // obsolete
        }
    }
    v
}

/// SCSI sense data, reduced to what names a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

/// SENSE KEY ILLEGAL REQUEST.
pub const ILLEGAL_REQUEST: u8 = 0x5;

impl Sense {
    /// Parses fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data;
    /// `None` when `b` is neither or too short to hold the key and codes.
    pub fn parse(b: &[u8]) -> Option<Sense> {
        match b.first()? & 0x7f {
            0x70 | 0x71 if b.len() >= 14 => Some(Sense {
                key: b[2] & 0x0f,
                asc: b[12],
                ascq: b[13],
            }),
            0x72 | 0x73 if b.len() >= 4 => Some(Sense {
                key: b[1] & 0x0f,
                asc: b[2],
                ascq: b[3],
            }),
            _ => None,
        }
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE or INVALID FIELD IN
    /// CDB: the target does not implement this command or service action.
    pub fn is_unsupported_command(&self) -> bool {
        self.key == ILLEGAL_REQUEST && (self.asc == 0x20 || (self.asc == 0x24 && self.ascq == 0))
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self.key {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0xb => "ABORTED COMMAND",
            _ => "sense key",
        };
        let what = match (self.asc, self.ascq) {
            (0x20, 0x00) => " (invalid command operation code)",
            (0x24, 0x00) => " (invalid field in CDB)",
            (0x26, 0x00) => " (invalid field in parameter list)",
            (0x29, _) => " (power on, reset or I_T nexus loss)",
            (0x2a, 0x03) => " (reservations preempted)",
            (0x2a, 0x04) => " (reservations released)",
            (0x2a, 0x05) => " (registrations preempted)",
            _ => "",
        };
        write!(
            f,
            "{key} {:#x}, ASC/ASCQ {:#04x}/{:#04x}{what}",
            self.key, self.asc, self.ascq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(raw: u64) -> Key {
        Key::from_raw(raw).unwrap()
    }

    #[test]
    fn read_keys_as_tgt_answers() {
        // Bytes as sg_persist -k -H showed them from tgt 1.0.85: generation
        // 2, two keys.
        let b = [
            0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0xbb, 0xbb,
        ];
        let keys = parse_read_keys(&b).unwrap();
        assert_eq!(keys.generation, 2);
        assert_eq!(keys.keys, [k(0xaaaa), k(0xbbbb)]);
        assert!(!keys.truncated);
        // Cut by the allocation length: the first key only, flagged.
        let cut = parse_read_keys(&b[..20]).unwrap();
        assert_eq!(cut.keys, [k(0xaaaa)]);
        assert!(cut.truncated);
        // No keys.
        let none = parse_read_keys(&[0, 0, 0, 7, 0, 0, 0, 0]).unwrap();
        assert_eq!((none.generation, none.keys.len()), (7, 0));
    }

    #[test]
    fn read_keys_refuses_what_a_target_cannot_mean() {
        assert_eq!(
            parse_read_keys(&[0; 5]),
            Err(PrinError::Short { got: 5, need: 8 })
        );
        assert_eq!(
            parse_read_keys(&[0, 0, 0, 1, 0, 0, 0, 12]),
            Err(PrinError::KeyListLength(12))
        );
        let mut zero = vec![0, 0, 0, 1, 0, 0, 0, 8];
        zero.extend_from_slice(&[0; 8]);
        assert_eq!(parse_read_keys(&zero), Err(PrinError::ZeroKey { index: 0 }));
    }

    #[test]
    fn read_reservation_none_one_and_bad() {
        let none = parse_read_reservation(&[0, 0, 0, 3, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            none,
            Reservation {
                generation: 3,
                held: None
            }
        );
        let wero = Reservation {
            generation: 9,
            held: Some((Key::for_host(1, 5), PrType::WriteExclusiveRegistrantsOnly)),
        };
        let b = encode_read_reservation(&wero);
        assert_eq!(b.len(), 24);
        assert_eq!(b[21], 0x05);
        assert_eq!(parse_read_reservation(&b).unwrap(), wero);
        let mut bad = b.clone();
        bad[21] = 0x02;
        assert_eq!(
            parse_read_reservation(&bad),
            Err(PrinError::ReservationType(2))
        );
        bad[21] = 0x15;
        assert_eq!(
            parse_read_reservation(&bad),
            Err(PrinError::ReservationScope(1))
        );
        assert_eq!(
            parse_read_reservation(&b[..20]),
            Err(PrinError::ReservationCut { got: 12 })
        );
        let mut len = b.clone();
        len[7] = 8;
        assert_eq!(
            parse_read_reservation(&len),
            Err(PrinError::ReservationLength(8))
        );
        let mut zero = b;
        zero[8..16].fill(0);
        assert_eq!(
            parse_read_reservation(&zero),
            Err(PrinError::ReservationZeroKey)
        );
    }

    #[test]
    fn capabilities_mask() {
        // TMV set; WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX, EX_AC_AR.
        let b = [0, 8, 0x01, 0x80, 0xea, 0x01, 0, 0];
        let m = parse_report_capabilities(&b).unwrap();
        assert!(m.valid && m.ptpl_capable);
        for t in PrType::ALL {
            assert_eq!(m.supports(t), Some(true), "{t}");
        }
        let only_we = parse_report_capabilities(&[0, 8, 0, 0x80, 0x02, 0, 0, 0]).unwrap();
        assert_eq!(
            only_we.supports(PrType::WriteExclusiveRegistrantsOnly),
            Some(false)
        );
        let invalid = parse_report_capabilities(&[0, 8, 0, 0, 0xff, 0xff, 0, 0]).unwrap();
        assert_eq!(invalid.supports(PrType::WriteExclusive), None);
        assert_eq!(
            parse_report_capabilities(&[0, 9, 0, 0, 0, 0, 0, 0]),
            Err(PrinError::CapabilitiesLength(9))
        );
    }

    #[test]
    fn keys_encode_then_parse() {
        let keys = [Key::for_host(1, 1), Key::for_host(2, 7)];
        let b = encode_read_keys(4, &keys, 4096);
        let p = parse_read_keys(&b).unwrap();
        assert_eq!(
            (p.generation, &p.keys[..], p.truncated),
            (4, &keys[..], false)
        );
        let cut = parse_read_keys(&encode_read_keys(4, &keys, 16)).unwrap();
        assert!(cut.truncated && cut.keys == keys[..1]);
    }

    #[test]
    fn sense_fixed_and_descriptor() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x05;
        fixed[12] = 0x20;
        let s = Sense::parse(&fixed).unwrap();
        assert!(s.is_unsupported_command());
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST 0x5, ASC/ASCQ 0x20/0x00 (invalid command operation code)"
        );
        let desc = Sense::parse(&[0x72, 0x06, 0x2a, 0x05]).unwrap();
        assert_eq!((desc.key, desc.asc, desc.ascq), (6, 0x2a, 5));
        assert!(!desc.is_unsupported_command());
        assert_eq!(Sense::parse(&[0x70, 0, 5]), None);
        assert_eq!(Sense::parse(&[0x12; 20]), None);
        assert_eq!(Sense::parse(&[]), None);
    }
}
