//! The 8259A programmable interrupt controller pair (master at 0x20/0x21, slave
//! at 0xa0/0xa1, cascaded on master IRQ 2), as a deterministic state machine.
//!
//! Modelled on the datasheet and on QEMU's `i8259.c`: ICW1–ICW4 initialisation,
//! OCW1 (mask), OCW2 (EOI, specific EOI, rotation), OCW3 (IRR/ISR read select,
//! poll, special mask), edge-triggered inputs with rising-edge detection
//! (level mode per ELCR is honoured too), fixed and rotating priority, auto-EOI
//! and special fully nested mode. The VMM asks [`PicPair::intr`] before each
//! `KVM_RUN` and takes the vector with [`PicPair::acknowledge`] (the INTA cycle)
//! when the vCPU can accept it.

use serde::{Deserialize, Serialize};

/// One 8259A.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic {
    /// Last input levels (for edge detection).
    last_irr: u8,
    irr: u8,
    imr: u8,
    isr: u8,
    /// Lowest-priority rotation: IRQ `priority_add` has the highest priority.
    priority_add: u8,
    irq_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    /// 0: operational; 1..=3: expecting ICW2..ICW4.
    init_state: u8,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    icw4_needed: bool,
    single_mode: bool,
    /// Edge/level control: a set bit makes that input level-triggered.
    elcr: u8,
    is_master: bool,
}

/// Priority of the highest-priority set bit of `mask`, relative to the rotation
/// (0 = highest); 8 when `mask` is empty.
fn priority(mask: u8, priority_add: u8) -> u8 {
    if mask == 0 {
        return 8;
    }
    let mut p = 0;
    while mask & (1 << ((p + priority_add) & 7)) == 0 {
        p += 1;
    }
    p
}

impl Pic {
    fn new(is_master: bool) -> Self {
        Pic {
            is_master,
            ..Default::default()
        }
    }

    fn set_input(&mut self, irq: u8, level: bool) {
        let mask = 1u8 << irq;
        if self.elcr & mask != 0 {
            if level {
                self.irr |= mask;
                self.last_irr |= mask;
            } else {
                self.irr &= !mask;
                self.last_irr &= !mask;
            }
        } else if level {
            if self.last_irr & mask == 0 {
                self.irr |= mask;
            }
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    /// The IRQ (0..8) this chip would signal now, if any.
    fn pending(&self) -> Option<u8> {
        let p = priority(self.irr & !self.imr, self.priority_add);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            in_service &= !(1 << 2);
        }
        let cur = priority(in_service, self.priority_add);
        (p < cur).then_some((p + self.priority_add) & 7)
    }

    /// The INTA cycle for `irq` on this chip.
    fn intack(&mut self, irq: u8) {
        let mask = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        if self.elcr & mask == 0 {
            self.irr &= !mask;
        }
    }

    fn reset(&mut self) {
        let (elcr, is_master) = (self.elcr, self.is_master);
        *self = Pic {
            irr: self.irr & elcr,
            elcr,
            is_master,
            ..Default::default()
        };
    }

    fn write(&mut self, a0: bool, val: u8) {
        if !a0 {
            if val & 0x10 != 0 {
                // ICW1
                self.reset();
                self.init_state = 1;
                self.icw4_needed = val & 1 != 0;
                self.single_mode = val & 2 != 0;
                if val & 8 != 0 {
                    tracing::warn!("pic: level-triggered mode via ICW1 not supported, using edge");
                }
            } else if val & 0x08 != 0 {
                // OCW3
                if val & 0x04 != 0 {
                    self.poll = true;
                }
                if val & 0x02 != 0 {
                    self.read_isr = val & 1 != 0;
                }
                if val & 0x40 != 0 {
                    self.special_mask = val & 0x20 != 0;
                }
            } else {
                // OCW2
                let cmd = val >> 5;
                match cmd {
                    0 | 4 => self.rotate_on_auto_eoi = cmd == 4,
                    1 | 5 => {
                        let p = priority(self.isr, self.priority_add);
                        if p != 8 {
                            let irq = (p + self.priority_add) & 7;
                            self.isr &= !(1 << irq);
                            if cmd == 5 {
                                self.priority_add = (irq + 1) & 7;
                            }
                        }
                    }
                    3 => self.isr &= !(1 << (val & 7)),
                    6 => self.priority_add = ((val & 7) + 1) & 7,
                    7 => {
                        let irq = val & 7;
                        self.isr &= !(1 << irq);
                        self.priority_add = (irq + 1) & 7;
                    }
                    _ => {} // 2: no operation
                }
            }
        } else {
            match self.init_state {
                0 => self.imr = val,
                1 => {
                    self.irq_base = val & 0xf8;
                    self.init_state = match (self.single_mode, self.icw4_needed) {
                        (false, _) => 2,
                        (true, true) => 3,
                        (true, false) => 0,
                    };
                }
                2 => self.init_state = if self.icw4_needed { 3 } else { 0 },
                _ => {
                    self.special_fully_nested = val & 0x10 != 0;
                    self.auto_eoi = val & 0x02 != 0;
                    self.init_state = 0;
                }
            }
        }
    }

    fn read(&mut self, a0: bool) -> u8 {
        if a0 {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// Master and slave, cascaded on master input 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicPair {
    master: Pic,
    slave: Pic,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

/// I/O ports of the pair.
pub const MASTER_PORTS: [u16; 2] = [0x20, 0x21];
pub const SLAVE_PORTS: [u16; 2] = [0xa0, 0xa1];
/// Edge/level control registers (PIIX ELCR).
pub const ELCR_PORTS: [u16; 2] = [0x4d0, 0x4d1];

impl PicPair {
    pub fn new() -> Self {
        PicPair {
            master: Pic::new(true),
            slave: Pic::new(false),
        }
    }

    /// Whether `port` belongs to the pair.
    pub fn owns(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1)
    }

    fn update_cascade(&mut self) {
        let slave_irq = self.slave.pending().is_some();
        self.master.set_input(2, slave_irq);
    }

    /// Drives input `irq` (0..16) to `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 => self.master.set_input(irq, level),
            8..=15 => self.slave.set_input(irq - 8, level),
            _ => tracing::warn!(irq, "pic: no such IRQ line"),
        }
        self.update_cascade();
    }

    /// A rising then falling edge on `irq` (an edge-triggered interrupt).
    pub fn pulse(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// The INTR output to the CPU.
    pub fn intr(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The interrupt-acknowledge cycle: returns the vector the CPU receives and
    /// moves the IRQ to in-service. Without a pending IRQ it returns the
    /// spurious vector (IRQ 7 of the master), as the hardware does.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.pending() {
            Some(2) => {
                let v = match self.slave.pending() {
                    Some(irq2) => {
                        self.slave.intack(irq2);
                        self.slave.irq_base + irq2
                    }
                    None => self.slave.irq_base + 7,
                };
                self.master.intack(2);
                v
            }
            Some(irq) => {
                self.master.intack(irq);
                self.master.irq_base + irq
            }
            None => self.master.irq_base + 7,
        };
        self.update_cascade();
        vector
    }

    /// A guest port write.
    pub fn pio_write(&mut self, port: u16, val: u8) {
        match port {
            0x20 | 0x21 => self.master.write(port & 1 != 0, val),
            0xa0 | 0xa1 => self.slave.write(port & 1 != 0, val),
            // Bits 0-2 of master ELCR and 0,1 of slave (IRQ 8, 13) are reserved.
            0x4d0 => self.master.elcr = val & 0xf8,
            0x4d1 => self.slave.elcr = val & 0xde,
            _ => {}
        }
        self.update_cascade();
    }

    /// A guest port read.
    pub fn pio_read(&mut self, port: u16) -> u8 {
        let v = match port {
            0x20 | 0x21 if self.master.poll => self.poll_read(true),
            0xa0 | 0xa1 if self.slave.poll => self.poll_read(false),
            0x20 | 0x21 => self.master.read(port & 1 != 0),
            0xa0 | 0xa1 => self.slave.read(port & 1 != 0),
            0x4d0 => self.master.elcr,
            0x4d1 => self.slave.elcr,
            _ => 0xff,
        };
        self.update_cascade();
        v
    }

    /// OCW3 poll command: the read acknowledges the highest pending IRQ.
    fn poll_read(&mut self, master: bool) -> u8 {
        let chip = if master {
            &mut self.master
        } else {
            &mut self.slave
        };
        chip.poll = false;
        match chip.pending() {
            Some(irq) => {
                chip.intack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The usual Linux/BIOS initialisation: vectors 0x20.. and 0x28.., cascade on 2.
    fn init(p: &mut PicPair, auto_eoi: bool) {
        let icw4 = if auto_eoi { 0x03 } else { 0x01 };
        for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xa0, 0xa1, 0x28, 0x02)] {
            p.pio_write(cmd, 0x11);
            p.pio_write(data, base);
            p.pio_write(data, icw3);
            p.pio_write(data, icw4);
            p.pio_write(data, 0x00);
        }
    }

    #[test]
    fn edge_irq_is_delivered_with_the_programmed_vector_and_eoi_clears_isr() {
        let mut p = PicPair::new();
        init(&mut p, false);
        assert!(!p.intr());
        p.pulse(4);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x24);
        assert!(!p.intr(), "IRR bit cleared by INTA");
        p.pio_write(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(p.pio_read(0x20), 1 << 4);
        p.pio_write(0x20, 0x20); // non-specific EOI
        assert_eq!(p.pio_read(0x20), 0);
    }

    #[test]
    fn a_held_level_on_an_edge_input_interrupts_once() {
        let mut p = PicPair::new();
        init(&mut p, true);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x25);
        p.set_irq(5, true);
        assert!(!p.intr(), "no new edge while the line stays high");
        p.set_irq(5, false);
        p.set_irq(5, true);
        assert!(p.intr());
    }

    #[test]
    fn masked_irq_waits_until_unmasked() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pio_write(0x21, 0x01);
        p.pulse(0);
        assert!(!p.intr());
        assert_eq!(p.pio_read(0x20), 1, "IRR still records the request");
        p.pio_write(0x21, 0x00);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn slave_irq_cascades_through_master_irq2() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pulse(12);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x2c);
        p.pio_write(0xa0, 0x0b);
        assert_eq!(p.pio_read(0xa0), 1 << 4);
        p.pio_write(0x20, 0x0b);
        assert_eq!(p.pio_read(0x20), 1 << 2);
    }

    #[test]
    fn in_service_irq_blocks_lower_priority_until_eoi() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pulse(3);
        assert_eq!(p.acknowledge(), 0x23);
        p.pulse(6);
        assert!(!p.intr(), "IRQ 6 has lower priority than in-service IRQ 3");
        p.pulse(1);
        assert!(p.intr(), "IRQ 1 preempts");
        assert_eq!(p.acknowledge(), 0x21);
        p.pio_write(0x20, 0x20); // EOI for 1
        assert!(!p.intr());
        p.pio_write(0x20, 0x63); // specific EOI for 3
        assert_eq!(p.acknowledge(), 0x26);
    }

    #[test]
    fn spurious_vector_without_request() {
        let mut p = PicPair::new();
        init(&mut p, false);
        assert_eq!(p.acknowledge(), 0x27);
    }

    #[test]
    fn poll_mode_acknowledges_and_returns_the_irq() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pulse(5);
        p.pio_write(0x20, 0x0c); // OCW3 poll
        assert_eq!(p.pio_read(0x20), 0x85);
        assert!(!p.intr());
    }

    #[test]
    fn rotation_makes_the_serviced_irq_lowest_priority() {
        let mut p = PicPair::new();
        init(&mut p, true);
        p.pio_write(0x20, 0xc4); // set priority: IRQ 4 lowest -> 5 highest
        p.pulse(1);
        p.pulse(6);
        assert_eq!(p.acknowledge(), 0x26);
        assert_eq!(p.acknowledge(), 0x21);
    }

    proptest! {
        /// With fixed priority, auto-EOI and nothing masked, the CPU receives
        /// pending master IRQs (no cascade) lowest number first.
        #[test]
        fn fixed_priority_delivers_lowest_irq_first(set in proptest::collection::btree_set(
            prop_oneof![Just(0u8), Just(1), Just(3), Just(4), Just(5), Just(6), Just(7)], 1..7)) {
            let mut p = PicPair::new();
            init(&mut p, true);
            for &irq in set.iter().rev() {
                p.pulse(irq);
            }
            let mut got = Vec::new();
            while p.intr() {
                got.push(p.acknowledge() - 0x20);
            }
            let want: Vec<u8> = set.iter().copied().collect();
            prop_assert_eq!(got, want);
        }

        /// Any sequence of port writes/reads and pulses never panics and keeps
        /// INTR consistent with acknowledge (INTR implies a non-spurious vector
        /// unless the request vanished).
        #[test]
        fn arbitrary_guest_programming_is_harmless(ops in proptest::collection::vec(
            (0u8..4, any::<u8>(), any::<u8>()), 0..64)) {
            let mut p = PicPair::new();
            for (kind, a, b) in ops {
                match kind {
                    0 => p.pio_write([0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1][a as usize % 6], b),
                    1 => { p.pio_read([0x20, 0x21, 0xa0, 0xa1][a as usize % 4]); }
                    2 => p.pulse(a % 16),
                    _ => { if p.intr() { p.acknowledge(); } }
                }
            }
        }
    }
}
