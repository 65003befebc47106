//! ACPI tables of a checkpoint-mode VM: RSDP, XSDT, a hardware-reduced FADT,
//! a MADT (one Local APIC per vCPU, the IOAPIC, level/active-high overrides
//! for the virtio pins) and a DSDT declaring COM1 (`PNP0501`, port 0x3f8,
//! GSI 4: see [`aml_com1_device`] for why it must be there) and each
//! virtio-mmio slot as an `LNRO0005` device with its window and interrupt,
//! as Firecracker does.
//!
//! Why ACPI next to the MP table: the pinned Debian kernel builds
//! `virtio_mmio` without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so the
//! `virtio_mmio.device=` command-line option does not exist there; x86 Linux
//! then only finds virtio-mmio devices through ACPI. With ACPI present Linux
//! takes the CPUs from the MADT; the MP table serves `acpi=off`.
//!
//! The FADT says: hardware-reduced (no PM timer, no SCI, no fixed power
//! button), no VGA, no CMOS RTC, no 8042 (the VMM's reset port at 0x64 still
//! works with `reboot=k`). Its sleep control and status registers are one
//! byte-wide I/O port, [`SLEEP_PORT`], and the DSDT names `\_S5_` (SLP_TYP
//! 5), as Cloud Hypervisor's "ACPI shutdown device" does: a guest's
//! `poweroff` writes [`S5_SLEEP_CONTROL`] there (Linux's
//! `acpi_hw_extended_sleep`) and the bus ends the VM with
//! [`super::End::PowerOff`]. A guest can end itself with `poweroff` as well
//! as with `reboot` (`reboot=k`).
//!
//! Invariant: every table's bytes sum to 0 (mod 256), the RSDP's first 20 and
//! all 36 bytes too; the tests check it.

use vm_memory::{Bytes, GuestAddress};

use super::mptable::{APIC_DEFAULT_PHYS_BASE, IO_APIC_DEFAULT_PHYS_BASE};
use crate::virtio::GuestMemoryMmap;

/// Where the RSDP goes (scanned by Linux in 0xe0000..0xfffff; also passed in
/// `boot_params.acpi_rsdp_addr`). The other tables follow it.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The tables may not go past the BIOS area.
pub const ACPI_LIMIT: u64 = 0x10_0000;

const OEM_ID: &[u8; 6] = b"FTVMM ";
const OEM_TABLE_ID: &[u8; 8] = b"FTVMMCKP";
const CREATOR_ID: &[u8; 4] = b"FTVM";
const HEADER_LEN: usize = 36;
const FADT_LEN: usize = 276;
const FADT_F_HW_REDUCED_ACPI: u32 = 1 << 20;
const FADT_F_PWR_BUTTON: u32 = 1 << 4;
const FADT_F_SLP_BUTTON: u32 = 1 << 5;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// COM1's I/O base and interrupt (`super::bus`).
const COM1_PORT: u16 = 0x3f8;
const COM1_GSI: u32 = 4;
/// MPS INTI flags: active high (01), level triggered (11 << 2).
const INTI_LEVEL_HIGH: u16 = 0b1101;
/// The I/O port of the FADT's SLEEP_CONTROL_REG and SLEEP_STATUS_REG (one
/// byte each, the same port; [`super::bus`] owns it). 0x600 as in Cloud
/// Hypervisor: no device of this VM, KVM's in-kernel PIC/PIT or a legacy
/// PC device a Linux guest probes uses it.
pub const SLEEP_PORT: u16 = 0x600;
/// `\_S5_`'s SLP_TYP, the value the sleep control register takes for S5.
const S5_SLP_TYP: u8 = 5;
/// SLEEP_CONTROL_REG: SLP_TYP in bits 2..=4, SLP_EN bit 5 (ACPI 6.5
/// §4.8.3.7).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_EN: u8 = 1 << 5;
/// What a guest entering S5 (power-off) writes to [`SLEEP_PORT`]: 0x34.
pub const S5_SLEEP_CONTROL: u8 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;
/// FADT offsets of SLEEP_CONTROL_REG and SLEEP_STATUS_REG (ACPI 5.0+).
const FADT_SLEEP_CONTROL: usize = 244;
const FADT_SLEEP_STATUS: usize = 256;
/// Generic Address Structure: address space ID of system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// Generic Address Structure: access size "byte".
const GAS_ACCESS_BYTE: u8 = 1;

/// One virtio-mmio slot as the DSDT declares it.
#[derive(Debug, Clone, Copy)]
pub struct MmioDevice {
    pub base: u32,
    pub size: u32,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables: {len} bytes from {RSDP_ADDR:#x} pass {ACPI_LIMIT:#x}")]
    TooBig { len: u64 },
    #[error("ACPI tables: guest memory write at {addr:#x} failed: {source}")]
    Memory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A system description table: header + `body`, checksummed.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_LEN + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2) for the byte-wide I/O
/// port `port`: 12 bytes.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; // register bit width
    g[2] = 0; // register bit offset
    g[3] = GAS_ACCESS_BYTE;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - HEADER_LEN];
    let at = |off: usize| off - HEADER_LEN;
    b[at(40)..at(44)].copy_from_slice(&(dsdt as u32).to_le_bytes());
    let iapc = IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT;
    b[at(109)..at(111)].copy_from_slice(&iapc.to_le_bytes());
    let flags = FADT_F_HW_REDUCED_ACPI | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON;
    b[at(112)..at(116)].copy_from_slice(&flags.to_le_bytes());
    b[at(131)] = 5; // FADT minor version: ACPI 6.5
    b[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes());
    let sleep = gas_io_byte(SLEEP_PORT);
    b[at(FADT_SLEEP_CONTROL)..at(FADT_SLEEP_CONTROL + 12)].copy_from_slice(&sleep);
    b[at(FADT_SLEEP_STATUS)..at(FADT_SLEEP_STATUS + 12)].copy_from_slice(&sleep);
    b[at(268)..at(276)].copy_from_slice(b"FTVMMKVM");
    sdt(b"FACP", 6, &b)
}

fn madt(vcpus: u8, ioapic_id: u8, level_irqs: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259 present
    for id in 0..vcpus {
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, ioapic_id, 0]);
    b.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    for &irq in level_irqs {
        b.extend_from_slice(&[2, 10, 0, irq]);
        b.extend_from_slice(&u32::from(irq).to_le_bytes());
        b.extend_from_slice(&INTI_LEVEL_HIGH.to_le_bytes());
    }
    // Local APIC NMI on LINT1 of every processor.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, &b)
}

/// AML PkgLength + `content` (ACPI 6 §20.2.4), for lengths below 4096.
fn pkg(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 2);
    let one = content.len() + 1;
    if one < 0x40 {
        out.push(one as u8);
    } else {
        let two = content.len() + 2;
        assert!(two < 0x1000, "AML package too long for two length bytes");
        out.push(0x40 | (two & 0xf) as u8);
        out.push((two >> 4) as u8);
    }
    out.extend_from_slice(content);
    out
}

fn aml_name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(seg);
    v.extend_from_slice(value);
    v
}

fn aml_string(s: &str) -> Vec<u8> {
    let mut v = vec![0x0d];
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// `Device (Vnnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed, Interrupt } }`.
fn aml_virtio_device(i: u8, d: &MmioDevice) -> Vec<u8> {
    let mut crs = vec![0x86, 9, 0, 1]; // Memory32Fixed, read-write
    crs.extend_from_slice(&d.base.to_le_bytes());
    crs.extend_from_slice(&d.size.to_le_bytes());
    // Extended interrupt: consumer, level, active high, exclusive; one IRQ.
    crs.extend_from_slice(&[0x89, 6, 0, 0x01, 1]);
    crs.extend_from_slice(&d.irq.to_le_bytes());
    crs.extend_from_slice(&[0x79, 0]); // end tag
    let mut buf = vec![0x0a, crs.len() as u8]; // BufferSize as ByteConst
    buf.extend_from_slice(&crs);
    let mut crs_obj = vec![0x11];
    crs_obj.extend_from_slice(&pkg(&buf));

    let mut body = Vec::new();
    body.extend_from_slice(format!("V{i:03}").as_bytes());
    body.extend_from_slice(&aml_name(b"_HID", &aml_string("LNRO0005")));
    body.extend_from_slice(&aml_name(b"_UID", &[0x0a, i]));
    body.extend_from_slice(&aml_name(b"_CRS", &crs_obj));
    let mut dev = vec![0x5b, 0x82];
    dev.extend_from_slice(&pkg(&body));
    dev
}

/// `Device (COM1) { _HID EISAID("PNP0501"), _UID 0, _CRS { IO (0x3f8, 8),
/// Interrupt (edge, active high, exclusive) { 4 } } }`.
///
/// Why: the FADT says hardware-reduced ACPI, and Linux then runs without a
/// legacy PIC (`acpi_reduced_hw_init`: `null_legacy_pic`, "preallocated
/// irqs: 0"), so ISA IRQ 4 has no Linux IRQ unless ACPI maps GSI 4. Without
/// this device the 8250 driver's `request_irq(4)` failed when init opened
/// `/dev/console`, the port was marked `TTY_IO_ERROR`, and every byte a
/// guest's *userspace* wrote to its console was lost (`tx:0` in
/// `/proc/tty/driver/serial`; only the kernel's polled printk got out). With
/// it, `8250_pnp` takes the port over with the IRQ ACPI mapped for GSI 4.
fn aml_com1_device() -> Vec<u8> {
    let mut crs = vec![0x47, 0x01]; // I/O port, 16-bit decode
    crs.extend_from_slice(&COM1_PORT.to_le_bytes()); // minimum
    crs.extend_from_slice(&COM1_PORT.to_le_bytes()); // maximum
    crs.extend_from_slice(&[1, 8]); // alignment, length
                                    // Extended interrupt: consumer, edge, active high, exclusive; one IRQ.
    crs.extend_from_slice(&[0x89, 6, 0, 0x03, 1]);
    crs.extend_from_slice(&COM1_GSI.to_le_bytes());
    crs.extend_from_slice(&[0x79, 0]); // end tag
    let mut buf = vec![0x0a, crs.len() as u8];
    buf.extend_from_slice(&crs);
    let mut crs_obj = vec![0x11];
    crs_obj.extend_from_slice(&pkg(&buf));

    let mut body = b"COM1".to_vec();
    // EISAID("PNP0501") as a DWordConst.
    body.extend_from_slice(&aml_name(b"_HID", &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
    body.extend_from_slice(&aml_name(b"_UID", &[0x00]));
    body.extend_from_slice(&aml_name(b"_CRS", &crs_obj));
    let mut dev = vec![0x5b, 0x82];
    dev.extend_from_slice(&pkg(&body));
    dev
}

/// `Name (_S5_, Package () { 5, 0, 0, 0 })` in the root scope: S5 (soft
/// off) with SLP_TYPa 5 (what the sleep control register takes), SLP_TYPb
/// and the reserved two 0. Without it Linux finds no S5 and its power-off
/// halts the vCPUs.
fn aml_s5() -> Vec<u8> {
    // NumElements, BytePrefix S5_SLP_TYP, then three ZeroOps.
    let elements = [4, 0x0a, S5_SLP_TYP, 0x00, 0x00, 0x00];
    let mut package = vec![0x12]; // PackageOp
    package.extend_from_slice(&pkg(&elements));
    aml_name(b"_S5_", &package)
}

fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let mut scope = b"\\_SB_".to_vec();
    scope.extend_from_slice(&aml_com1_device());
    for (i, d) in devices.iter().enumerate() {
        scope.extend_from_slice(&aml_virtio_device(i as u8, d));
    }
    let mut aml = vec![0x10];
    aml.extend_from_slice(&pkg(&scope));
    aml.extend_from_slice(&aml_s5());
    sdt(b"DSDT", 2, &aml)
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// The tables as (guest address, bytes), RSDP first.
pub fn build(
    vcpus: u8,
    ioapic_id: u8,
    devices: &[MmioDevice],
) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let level: Vec<u8> = devices.iter().map(|d| d.irq as u8).collect();
    let dsdt_t = dsdt(devices);
    let madt_t = madt(vcpus, ioapic_id, &level);
    let xsdt_addr = align16(RSDP_ADDR + 36);
    let xsdt_len = (HEADER_LEN + 16) as u64;
    let fadt_addr = align16(xsdt_addr + xsdt_len);
    let madt_addr = align16(fadt_addr + FADT_LEN as u64);
    let dsdt_addr = align16(madt_addr + madt_t.len() as u64);
    let end = dsdt_addr + dsdt_t.len() as u64;
    if end > ACPI_LIMIT {
        return Err(AcpiError::TooBig {
            len: end - RSDP_ADDR,
        });
    }
    let mut xsdt_body = fadt_addr.to_le_bytes().to_vec();
    xsdt_body.extend_from_slice(&madt_addr.to_le_bytes());
    Ok(vec![
        (RSDP_ADDR, rsdp(xsdt_addr)),
        (xsdt_addr, sdt(b"XSDT", 1, &xsdt_body)),
        (fadt_addr, fadt(dsdt_addr)),
        (madt_addr, madt_t),
        (dsdt_addr, dsdt_t),
    ])
}

/// Writes the tables; returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    ioapic_id: u8,
    devices: &[MmioDevice],
) -> Result<u64, AcpiError> {
    for (addr, bytes) in build(vcpus, ioapic_id, devices)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Memory { addr, source })?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn two_devices() -> Vec<(u64, Vec<u8>)> {
        let devs = [
            MmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        build(2, 3, &devs).unwrap()
    }

    #[test]
    fn tables_checksum_and_point_at_each_other() {
        let t = two_devices();
        let (_, rsdp) = &t[0];
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        assert_eq!(t[1].0, xsdt_addr);
        for (addr, bytes) in &t[1..] {
            assert_eq!(sum(bytes), 0, "table at {addr:#x}");
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            assert_eq!(len as usize, bytes.len());
        }
        let xsdt = &t[1].1;
        let fadt_addr = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let madt_addr = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        assert_eq!((fadt_addr, madt_addr), (t[2].0, t[3].0));
        let fadt = &t[2].1;
        assert_eq!(&fadt[..4], b"FACP");
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, t[4].0);
        let madt = &t[3].1;
        // Header, lapic addr + flags, 2 local APICs, 1 IOAPIC, 2 overrides, 1 NMI.
        assert_eq!(madt.len(), 36 + 8 + 2 * 8 + 12 + 2 * 10 + 6);
        let dsdt = &t[4].1;
        let aml = &dsdt[36..];
        assert_eq!(aml[0], 0x10, "Scope");
        let text = String::from_utf8_lossy(aml);
        assert!(text.contains("V000") && text.contains("V001") && text.contains("LNRO0005"));
        // COM1 with PNP0501's EISA id, port 0x3f8 and GSI 4, edge.
        let com1 = aml
            .windows(4)
            .position(|w| w == b"COM1")
            .expect("a COM1 device");
        assert_eq!(&aml[com1 + 9..com1 + 14], &[0x0c, 0x41, 0xd0, 0x05, 0x01]);
        let io = [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 1, 8];
        assert!(aml.windows(io.len()).any(|w| w == io), "COM1's I/O port");
        let irq = [0x89, 6, 0, 0x03, 1, 4, 0, 0, 0];
        assert!(
            aml.windows(irq.len()).any(|w| w == irq),
            "COM1's edge IRQ 4"
        );
    }

    #[test]
    fn fadt_has_the_sleep_registers_at_port_0x600() {
        let t = two_devices();
        let fadt = &t[2].1;
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(fadt.len(), 276, "up to the hypervisor vendor identity");
        assert!(
            fadt[8] >= 5,
            "FADT revision {} has no sleep registers",
            fadt[8]
        );
        assert_eq!(sum(fadt), 0);
        // SystemIO, 8 bits wide at offset 0, byte access, address 0x600.
        let gas = [1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0];
        assert_eq!(&fadt[244..256], &gas, "SLEEP_CONTROL_REG");
        assert_eq!(&fadt[256..268], &gas, "SLEEP_STATUS_REG");
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_F_HW_REDUCED_ACPI, 0, "still hardware-reduced");
        assert_eq!(&fadt[268..276], b"FTVMMKVM");
        // Linux writes (SLP_TYP << 2) | SLP_EN for S5.
        assert_eq!(S5_SLEEP_CONTROL, 0x34);
    }

    /// A PkgLength at `aml[0]`: (the length it encodes, counted from
    /// `aml[0]`; how many bytes the PkgLength itself takes).
    fn pkg_length(aml: &[u8]) -> (usize, usize) {
        let follow = (aml[0] >> 6) as usize;
        if follow == 0 {
            return ((aml[0] & 0x3f) as usize, 1);
        }
        let mut len = (aml[0] & 0x0f) as usize;
        for (i, b) in aml[1..=follow].iter().enumerate() {
            len |= (*b as usize) << (4 + 8 * i);
        }
        (len, follow + 1)
    }

    #[test]
    fn dsdt_names_s5_in_the_root_scope() {
        let t = two_devices();
        let dsdt = &t[4].1;
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        let aml = &dsdt[36..];
        // Name (_S5_, Package (4) { BytePrefix 5, Zero, Zero, Zero }).
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00,
        ];
        assert_eq!(aml_s5(), s5);
        // The top level is exactly Scope (\_SB_) { ... } then the Name: each
        // object's length ends where the next begins, the last at the end.
        let mut at = 0;
        let mut objects = Vec::new();
        while at < aml.len() {
            match aml[at] {
                0x10 => {
                    let (len, n) = pkg_length(&aml[at + 1..]);
                    objects.push(("Scope", aml[at + 1 + n..at + 1 + n + 5].to_vec()));
                    at += 1 + len;
                }
                0x08 => {
                    let name = aml[at + 1..at + 5].to_vec();
                    assert_eq!(aml[at + 5], 0x12, "a Package");
                    let (len, _) = pkg_length(&aml[at + 6..]);
                    assert_eq!(&aml[at..at + 6 + len], &s5);
                    objects.push(("Name", name));
                    at += 6 + len;
                }
                op => panic!("top-level opcode {op:#x} at {at}"),
            }
        }
        assert_eq!(at, aml.len(), "the last object ends at the table's end");
        assert_eq!(objects.len(), 2, "{objects:?}");
        assert_eq!(objects[0], ("Scope", b"\\_SB_".to_vec()));
        assert_eq!(objects[1], ("Name", b"_S5_".to_vec()));
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg(&[7; 3]), vec![4, 7, 7, 7]);
        let long = pkg(&[0; 100]);
        assert_eq!(long.len(), 102);
        let len = (long[0] & 0xf) as usize | (long[1] as usize) << 4;
        assert_eq!(len, 102);
        assert_eq!(long[0] >> 6, 1, "one extra length byte");
    }
}
