//! The Intel MultiProcessor Specification 1.4 table (floating pointer and
//! configuration table) of a checkpoint-mode VM, written like Firecracker's
//! `arch/x86_64/mptable.rs`: N processors (APIC id = index, the first is the
//! BSP), one ISA bus, one IOAPIC, an I/O interrupt entry for each IOAPIC pin
//! 0–23 (ISA IRQ i → pin i), LINT0 = ExtINT and LINT1 = NMI.
//!
//! The table lives at [`MPTABLE_START`], the last KiB of base memory, which
//! Linux scans for `_MP_` and which the e820 map leaves out of RAM. Pins that
//! carry a level-triggered device interrupt (the virtio-mmio slots) are
//! declared level/active-high so that a guest booted with `acpi=off` programs
//! the IOAPIC the way [`super::bus`] drives the lines.
//!
//! Invariant: both checksums make their structure sum to 0 (mod 256);
//! `parse` checks them and is what the unit tests read back.

use vm_memory::{Bytes, GuestAddress};

use crate::virtio::GuestMemoryMmap;

/// Start of the floating pointer: the last KiB below 640 KiB (the EBDA).
pub const MPTABLE_START: u64 = 0x9_fc00;
/// The MP table may not reach 640 KiB.
pub const MPTABLE_LIMIT: u64 = 0xa_0000;
/// Local APIC base address (all vCPUs).
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// IOAPIC base address.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// IOAPIC pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u8 = 24;
/// Most vCPUs this VMM gives a checkpoint-mode VM.
pub const MAX_VCPUS: u8 = 4;

const APIC_VERSION: u8 = 0x14;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_IRQ_SOURCE_INT: u8 = 0;
const MP_IRQ_SOURCE_NMI: u8 = 1;
const MP_IRQ_SOURCE_EXTINT: u8 = 3;
/// irqflag: active high (bits 0-1 = 01), level triggered (bits 2-3 = 11).
pub const IRQFLAG_LEVEL_HIGH: u16 = 0b1101;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("MP table: {0} vCPUs requested, 1 to {MAX_VCPUS} supported")]
    VcpuCount(u8),
    #[error("MP table: {len} bytes do not fit between {MPTABLE_START:#x} and {MPTABLE_LIMIT:#x}")]
    TooBig { len: usize },
    #[error("MP table: guest memory write at {MPTABLE_START:#x} failed: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: after the processors' APIC ids.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus + 1
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table's bytes for `vcpus` processors; `level_pins` are IOAPIC pins
/// declared level/active-high (all others conform to the ISA bus: edge/high).
pub fn build(vcpus: u8, level_pins: &[u8]) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(vcpus));
    }
    let mut entries = Vec::new();
    for id in 0..vcpus {
        entries.push(0u8); // type: processor
        entries.push(id);
        entries.push(APIC_VERSION);
        let boot = if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.push(CPU_ENABLED | boot);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id(vcpus), APIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        let flag = if level_pins.contains(&pin) {
            IRQFLAG_LEVEL_HIGH
        } else {
            0
        };
        entries.extend_from_slice(&[3, MP_IRQ_SOURCE_INT]);
        entries.extend_from_slice(&flag.to_le_bytes());
        entries.extend_from_slice(&[0, pin, ioapic_id(vcpus), pin]);
    }
    for (kind, lint) in [(MP_IRQ_SOURCE_EXTINT, 0u8), (MP_IRQ_SOURCE_NMI, 1u8)] {
        entries.extend_from_slice(&[4, kind, 0, 0, 0, 0, 0xff, lint]);
    }
    let count = vcpus as u16 + 2 + u16::from(IOAPIC_PINS) + 2;

    let table_addr = (MPTABLE_START as usize + FLOATING_LEN) as u32;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"FTVMM   ");
    header.extend_from_slice(b"CHECKPOINT  ");
    header.extend_from_slice(&0u32.to_le_bytes()); // oem table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // oem table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec 1.4
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: a configuration table is present
    fp[10] = checksum(&fp);

    let mut all = fp;
    all.extend_from_slice(&table);
    if MPTABLE_START + all.len() as u64 > MPTABLE_LIMIT {
        return Err(MpTableError::TooBig { len: all.len() });
    }
    Ok(all)
}

/// Writes the table at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, vcpus: u8, level_pins: &[u8]) -> Result<usize, MpTableError> {
    let bytes = build(vcpus, level_pins)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Memory)?;
    Ok(bytes.len())
}

/// What [`parse`] read back (tests; a debugging aid).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// (APIC id, flags) per processor entry.
    pub processors: Vec<(u8, u8)>,
    pub ioapic_ids: Vec<u8>,
    /// (source bus irq, destination pin, irqflag) per I/O interrupt entry.
    pub io_interrupts: Vec<(u8, u8, u16)>,
    /// (irq type, LINT) per local interrupt entry.
    pub local_interrupts: Vec<(u8, u8)>,
    pub buses: Vec<String>,
}

/// Parses a table made by [`build`], checking signatures, lengths and both
/// checksums; `Err` names the first problem.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let fp = bytes.get(..FLOATING_LEN).ok_or("short floating pointer")?;
    if &fp[..4] != b"_MP_" || checksum(fp) != 0 {
        return Err("floating pointer signature or checksum wrong".into());
    }
    let addr = u32::from_le_bytes([fp[4], fp[5], fp[6], fp[7]]) as usize;
    let off = addr
        .checked_sub(MPTABLE_START as usize)
        .ok_or("table pointer below the floating pointer")?;
    let hdr = bytes.get(off..off + HEADER_LEN).ok_or("short header")?;
    let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
    let count = u16::from_le_bytes([hdr[34], hdr[35]]);
    let table = bytes
        .get(off..off + len)
        .ok_or("table length past the end")?;
    if &hdr[..4] != b"PCMP" || checksum(table) != 0 {
        return Err("table signature or checksum wrong".into());
    }
    let mut p = Parsed::default();
    let mut at = HEADER_LEN;
    for _ in 0..count {
        let e = table.get(at..).ok_or("entry past the end")?;
        match e.first() {
            Some(0) if e.len() >= PROCESSOR_LEN => {
                p.processors.push((e[1], e[3]));
                at += PROCESSOR_LEN;
                continue;
            }
            Some(1) if e.len() >= SMALL_ENTRY_LEN => {
                p.buses
                    .push(String::from_utf8_lossy(&e[2..8]).trim().to_string());
            }
            Some(2) if e.len() >= SMALL_ENTRY_LEN => p.ioapic_ids.push(e[1]),
            Some(3) if e.len() >= SMALL_ENTRY_LEN => {
                p.io_interrupts
                    .push((e[5], e[7], u16::from_le_bytes([e[2], e[3]])))
            }
            Some(4) if e.len() >= SMALL_ENTRY_LEN => p.local_interrupts.push((e[1], e[7])),
            other => return Err(format!("unknown or short entry {other:?} at {at}")),
        }
        at += SMALL_ENTRY_LEN;
    }
    if at != len {
        return Err(format!("entries end at {at}, table length is {len}"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_vcpus_parse_back_with_checksums_and_counts() {
        let bytes = build(2, &[5, 6]).unwrap();
        let p = parse(&bytes).unwrap();
        assert_eq!(
            p.processors,
            vec![(0, 3), (1, 1)],
            "BSP flagged, both enabled"
        );
        assert_eq!(p.ioapic_ids, vec![3]);
        assert_eq!(p.buses, vec!["ISA".to_string()]);
        assert_eq!(p.io_interrupts.len(), 24);
        for (i, &(src, pin, flag)) in p.io_interrupts.iter().enumerate() {
            assert_eq!((src, pin), (i as u8, i as u8));
            let want = if i == 5 || i == 6 {
                IRQFLAG_LEVEL_HIGH
            } else {
                0
            };
            assert_eq!(flag, want, "pin {i}");
        }
        assert_eq!(p.local_interrupts, vec![(3, 0), (1, 1)]);
    }

    #[test]
    fn every_count_fits_and_a_flipped_byte_is_caught() {
        for n in 1..=MAX_VCPUS {
            let bytes = build(n, &[]).unwrap();
            assert_eq!(parse(&bytes).unwrap().processors.len(), n as usize);
            assert!(MPTABLE_START + bytes.len() as u64 <= MPTABLE_LIMIT);
            let mut bad = bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(parse(&bad).is_err());
        }
        assert!(build(0, &[]).is_err());
        assert!(build(MAX_VCPUS + 1, &[]).is_err());
    }
}
