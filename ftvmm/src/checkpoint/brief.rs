//! Where each vCPU was at an epoch, in a few registers: what a Primary
//! prints when its guest triple-faults (issue 11's open boot-time fault).
//!
//! On AMD, KVM re-initialises a vCPU's VMCB on a shutdown exit, so the
//! registers read after a triple fault are reset values and say nothing.
//! The last epoch's capture, at most one epoch before the fault, is the
//! closest record there is: the instruction pointer and privilege level
//! (kernel or user, which code), the paging and descriptor-table roots (a
//! corrupted IDT or page table), the stack, and any exception KVM held
//! pending or injected. It is kept as plain numbers per epoch (no string
//! work in the pause) and formatted only when the guest faulted.

use std::fmt;

use super::state::VcpuState;

/// A vCPU's registers that locate a fault (module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuBrief {
    pub mp_state: u32,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cpl: u8,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub idt: (u64, u16),
    pub gdt: (u64, u16),
    /// (injected, pending, vector) of the exception KVM held.
    pub exception: (bool, bool, u8),
    /// (injected, vector) of the interrupt KVM held.
    pub interrupt: (bool, u8),
}

impl VcpuBrief {
    pub fn of(v: &VcpuState) -> Self {
        let s = &v.sregs;
        let e = &v.events;
        VcpuBrief {
            mp_state: v.mp_state.mp_state,
            rip: v.regs.rip,
            rsp: v.regs.rsp,
            rflags: v.regs.rflags,
            cs: s.cs.selector,
            cpl: s.cs.dpl,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            idt: (s.idt.base, s.idt.limit),
            gdt: (s.gdt.base, s.gdt.limit),
            exception: (
                e.exception.injected != 0,
                e.exception.pending != 0,
                e.exception.nr,
            ),
            interrupt: (e.interrupt.injected != 0, e.interrupt.nr),
        }
    }
}

impl fmt::Display for VcpuBrief {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mp_state {} rip {:#x} cs {:#x} cpl {} rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} \
             cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{:#x} gdt {:#x}/{:#x}",
            self.mp_state,
            self.rip,
            self.cs,
            self.cpl,
            self.rsp,
            self.rflags,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            self.idt.0,
            self.idt.1,
            self.gdt.0,
            self.gdt.1
        )?;
        let (inj, pend, nr) = self.exception;
        if inj || pend {
            let how = if inj { "injected" } else { "pending" };
            write!(f, " exception {nr} {how}")?;
        }
        if self.interrupt.0 {
            write!(f, " interrupt {} injected", self.interrupt.1)?;
        }
        Ok(())
    }
}

/// The lines a Primary prints when its guest triple-faulted: one for the
/// fault, one per vCPU as the last epoch found it.
pub fn fault_report(epoch: u64, ms_before: u128, vcpus: &[VcpuBrief]) -> Vec<String> {
    let mut lines = vec![format!(
        "checkpoint: the guest triple-faulted {ms_before} ms after epoch {epoch}'s pause; \
         its vCPUs at that pause (KVM resets a vCPU's registers at a shutdown on AMD):"
    )];
    lines.extend(
        vcpus
            .iter()
            .enumerate()
            .map(|(i, b)| format!("checkpoint:   vcpu {i}: {b}")),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brief_names_the_registers_and_a_held_exception() {
        let b = VcpuBrief {
            rip: 0xffff_ffff_8100_0000,
            cs: 0x10,
            cr3: 0x1234_5000,
            idt: (0xffff_fe00_0000_0000, 0xfff),
            exception: (false, true, 14),
            ..VcpuBrief::default()
        };
        let lines = fault_report(42, 7, &[b, VcpuBrief::default()]);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("7 ms after epoch 42"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("checkpoint:   vcpu 0: "),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("rip 0xffffffff81000000 cs 0x10"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("cr3 0x12345000"), "{}", lines[1]);
        assert!(
            lines[1].contains("idt 0xfffffe0000000000/0xfff"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with(" exception 14 pending"), "{}", lines[1]);
        assert!(!lines[2].contains("exception"), "{}", lines[2]);
    }
}
