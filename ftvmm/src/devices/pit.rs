//! The 8254 programmable interval timer (ports 0x40–0x43, plus the channel-2
//! gate/output bits of port 0x61), as a deterministic state machine.
//!
//! Counters are computed from elapsed time, as in QEMU's `i8254.c`: a channel
//! remembers the host time at which its count was loaded, and a read computes
//! the current count from `now`. `now` is never read by the PIT itself: the
//! caller passes a clock closure that goes through `Inputs::time_read`, so the
//! PIT asks for the time only when the guest observes it (count load, latch,
//! read-back, port 0x61 output bit) and each such read is one recorded input.
//!
//! Channel 0's interrupt (IRQ 0) is not derived from time here: the live timer
//! produces `InputEvent::TimerTick` at the programmed period ([`Pit::timer_program`]),
//! and [`Pit::tick`] says whether that tick raises IRQ 0. Modes 0 (interrupt on
//! terminal count, one shot), 2 (rate generator) and 3 (square wave) are
//! modelled fully; 1, 4 and 5 count but only raise IRQ 0 once, like mode 0.

use serde::{Deserialize, Serialize};

use crate::io::TimerProgram;

/// Input clock of the 8254.
pub const PIT_HZ: u64 = 1_193_182;
const NS_PER_S: u64 = 1_000_000_000;

/// Access modes (control word bits 5-4) and the read/write toggles.
const RW_LSB: u8 = 1;
const RW_MSB: u8 = 2;
const RW_WORD0: u8 = 3;
const RW_WORD1: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Reload value; 0x10000 when 0 was written.
    count: u32,
    /// Host time (ns) at which `count` was loaded.
    load_time: u64,
    latched_count: u16,
    /// Which byte(s) of `latched_count` are still to be read (RW_* or 0).
    count_latched: u8,
    status_latched: bool,
    status: u8,
    read_state: u8,
    write_state: u8,
    write_latch: u8,
    rw_mode: u8,
    mode: u8,
    bcd: bool,
    gate: bool,
    /// The count register was written but not yet loaded (status bit 6).
    null_count: bool,
    /// A one-shot mode already raised its interrupt for this count.
    fired: bool,
    /// A count has been programmed since reset.
    armed: bool,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            count: 0x10000,
            load_time: 0,
            latched_count: 0,
            count_latched: 0,
            status_latched: false,
            status: 0,
            read_state: RW_LSB,
            write_state: RW_LSB,
            write_latch: 0,
            rw_mode: RW_LSB,
            mode: 0,
            bcd: false,
            gate,
            null_count: true,
            fired: false,
            armed: false,
        }
    }

    /// Input-clock ticks elapsed since the count was loaded.
    fn elapsed(&self, now: u64) -> u64 {
        let dt = now.saturating_sub(self.load_time) as u128;
        (dt * PIT_HZ as u128 / NS_PER_S as u128) as u64
    }

    fn current_count(&self, now: u64) -> u16 {
        let d = self.elapsed(now);
        let c = self.count as u64;
        let v = match self.mode {
            0 | 1 | 4 | 5 => c.wrapping_sub(d) & 0xffff,
            3 => c - ((2 * d) % c),
            _ => c - (d % c),
        };
        v as u16
    }

    fn output(&self, now: u64) -> bool {
        let d = self.elapsed(now);
        let c = self.count as u64;
        match self.mode {
            0 => d >= c,
            1 => d < c,
            2 => !d.is_multiple_of(c) || d == 0,
            3 => d % c < c.div_ceil(2),
            _ => d == c,
        }
    }

    fn load(&mut self, val: u32, now: u64) {
        self.count = if val == 0 { 0x10000 } else { val };
        self.load_time = now;
        self.null_count = false;
        self.fired = false;
        self.armed = true;
    }

    fn latch_count(&mut self, now: u64) {
        if self.count_latched == 0 {
            self.latched_count = self.current_count(now);
            self.count_latched = self.rw_mode;
        }
    }

    fn latch_status(&mut self, now: u64) {
        if !self.status_latched {
            self.status = (u8::from(self.output(now)) << 7)
                | (u8::from(self.null_count) << 6)
                | (self.rw_mode << 4)
                | (self.mode << 1)
                | u8::from(self.bcd);
            self.status_latched = true;
        }
    }

    fn read(&mut self, clock: &mut dyn FnMut() -> u64) -> u8 {
        if self.status_latched {
            self.status_latched = false;
            return self.status;
        }
        if self.count_latched != 0 {
            let v = self.latched_count;
            return match self.count_latched {
                RW_LSB => {
                    self.count_latched = 0;
                    v as u8
                }
                RW_MSB => {
                    self.count_latched = 0;
                    (v >> 8) as u8
                }
                _ => {
                    self.count_latched = RW_MSB;
                    v as u8
                }
            };
        }
        let c = self.current_count(clock());
        match self.read_state {
            RW_LSB => c as u8,
            RW_MSB => (c >> 8) as u8,
            RW_WORD0 => {
                self.read_state = RW_WORD1;
                c as u8
            }
            _ => {
                self.read_state = RW_WORD0;
                (c >> 8) as u8
            }
        }
    }

    /// Returns true when the write completed a count load.
    fn write(&mut self, val: u8, clock: &mut dyn FnMut() -> u64) -> bool {
        match self.write_state {
            RW_LSB => {
                self.load(val as u32, clock());
                true
            }
            RW_MSB => {
                self.load((val as u32) << 8, clock());
                true
            }
            RW_WORD0 => {
                self.write_latch = val;
                self.write_state = RW_WORD1;
                self.null_count = true;
                false
            }
            _ => {
                self.load(self.write_latch as u32 | ((val as u32) << 8), clock());
                self.write_state = RW_WORD0;
                true
            }
        }
    }
}

/// The three channels and the port-0x61 bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bit 1 (speaker data enable); bit 0 is channel 2's gate.
    speaker_data: bool,
    /// Port 0x61 bit 4 toggles on every read (refresh request), deterministically.
    refresh_toggle: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

/// What a guest port write changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PitEffect {
    None,
    /// Channel 0 was (re)programmed: tell the timer backend.
    Reprogrammed(TimerProgram),
}

impl Pit {
    pub fn new() -> Self {
        Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            speaker_data: false,
            refresh_toggle: false,
        }
    }

    /// Whether `port` belongs to the PIT (including port 0x61).
    pub fn owns(port: u16) -> bool {
        matches!(port, 0x40..=0x43 | 0x61)
    }

    /// Channel 0's current program, for the live timer.
    pub fn timer_program(&self) -> TimerProgram {
        let ch = &self.channels[0];
        if !ch.armed {
            return TimerProgram::Off;
        }
        let period_ns = (ch.count as u128 * NS_PER_S as u128 / PIT_HZ as u128) as u64;
        match ch.mode {
            2 | 3 => TimerProgram::Periodic { period_ns },
            _ if ch.fired => TimerProgram::Off,
            _ => TimerProgram::OneShot {
                after_ns: period_ns,
            },
        }
    }

    /// A timer tick arrived: whether it raises IRQ 0.
    pub fn tick(&mut self) -> bool {
        let ch = &mut self.channels[0];
        if !ch.armed {
            return false;
        }
        match ch.mode {
            2 | 3 => true,
            _ if ch.fired => false,
            _ => {
                ch.fired = true;
                true
            }
        }
    }

    /// A guest port read. `clock` returns host monotonic ns (a recorded input).
    pub fn pio_read(&mut self, port: u16, clock: &mut dyn FnMut() -> u64) -> u8 {
        match port {
            0x40..=0x42 => self.channels[(port - 0x40) as usize].read(clock),
            0x61 => {
                self.refresh_toggle = !self.refresh_toggle;
                let ch2 = &self.channels[2];
                let out2 = ch2.armed && ch2.output(clock());
                u8::from(ch2.gate)
                    | (u8::from(self.speaker_data) << 1)
                    | (u8::from(self.refresh_toggle) << 4)
                    | (u8::from(out2) << 5)
            }
            _ => 0xff, // 0x43 is write-only
        }
    }

    /// A guest port write.
    pub fn pio_write(&mut self, port: u16, val: u8, clock: &mut dyn FnMut() -> u64) -> PitEffect {
        match port {
            0x40..=0x42 => {
                let idx = (port - 0x40) as usize;
                if self.channels[idx].write(val, clock) && idx == 0 {
                    return PitEffect::Reprogrammed(self.timer_program());
                }
                PitEffect::None
            }
            0x43 => self.control(val, clock),
            0x61 => {
                let ch2 = &mut self.channels[2];
                let gate = val & 1 != 0;
                if gate && !ch2.gate && ch2.armed {
                    // A rising gate restarts the count in modes 1, 2, 3, 5.
                    if matches!(ch2.mode, 1 | 2 | 3 | 5) {
                        ch2.load_time = clock();
                    }
                }
                ch2.gate = gate;
                self.speaker_data = val & 2 != 0;
                PitEffect::None
            }
            _ => PitEffect::None,
        }
    }

    fn control(&mut self, val: u8, clock: &mut dyn FnMut() -> u64) -> PitEffect {
        let sel = val >> 6;
        if sel == 3 {
            // Read-back: bit 5 clear = latch count, bit 4 clear = latch status.
            let mut now = None;
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if val & (2 << i) == 0 {
                    continue;
                }
                let t = *now.get_or_insert_with(&mut *clock);
                if val & 0x20 == 0 {
                    ch.latch_count(t);
                }
                if val & 0x10 == 0 {
                    ch.latch_status(t);
                }
            }
            return PitEffect::None;
        }
        let ch = &mut self.channels[sel as usize];
        let access = (val >> 4) & 3;
        if access == 0 {
            ch.latch_count(clock());
            return PitEffect::None;
        }
        let mut mode = (val >> 1) & 7;
        if mode > 5 {
            mode -= 4; // 6 and 7 alias 2 and 3
        }
        ch.rw_mode = access;
        ch.read_state = access;
        ch.write_state = access;
        ch.mode = mode;
        ch.bcd = val & 1 != 0;
        ch.null_count = true;
        ch.armed = false;
        ch.count_latched = 0;
        if sel == 0 {
            PitEffect::Reprogrammed(TimerProgram::Off)
        } else {
            PitEffect::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn program(p: &mut Pit, ch: u8, mode: u8, count: u16, now: u64) -> PitEffect {
        let mut clock = || now;
        p.pio_write(0x43, (ch << 6) | (3 << 4) | (mode << 1), &mut clock);
        p.pio_write(0x40 + ch as u16, count as u8, &mut clock);
        p.pio_write(0x40 + ch as u16, (count >> 8) as u8, &mut clock)
    }

    fn latch_read(p: &mut Pit, ch: u8, now: u64) -> u16 {
        let mut clock = || now;
        p.pio_write(0x43, ch << 6, &mut clock);
        let lo = p.pio_read(0x40 + ch as u16, &mut clock) as u16;
        let hi = p.pio_read(0x40 + ch as u16, &mut clock) as u16;
        lo | (hi << 8)
    }

    /// ns after which `ticks` input-clock periods have elapsed.
    fn ns_for(ticks: u64) -> u64 {
        (ticks * NS_PER_S).div_ceil(PIT_HZ)
    }

    #[test]
    fn linux_100hz_rate_generator_programs_a_periodic_timer() {
        let mut p = Pit::new();
        let eff = program(&mut p, 0, 2, 11932, 0);
        assert_eq!(
            eff,
            PitEffect::Reprogrammed(TimerProgram::Periodic {
                period_ns: 11932 * NS_PER_S / PIT_HZ
            })
        );
        assert!(p.tick() && p.tick(), "every tick raises IRQ 0 in mode 2");
    }

    #[test]
    fn mode0_fires_once_and_counts_down() {
        let mut p = Pit::new();
        let eff = program(&mut p, 0, 0, 1000, 5_000);
        assert!(matches!(
            eff,
            PitEffect::Reprogrammed(TimerProgram::OneShot { .. })
        ));
        assert_eq!(latch_read(&mut p, 0, 5_000 + ns_for(10)), 990);
        assert!(p.tick());
        assert!(!p.tick(), "one shot");
        assert_eq!(p.timer_program(), TimerProgram::Off);
    }

    #[test]
    fn unprogrammed_channel0_never_interrupts() {
        let mut p = Pit::new();
        assert!(!p.tick());
        assert_eq!(p.timer_program(), TimerProgram::Off);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut p = Pit::new();
        program(&mut p, 2, 0, 0x1234, 0);
        let mut clock = || 0u64;
        // Read-back, latch count and status of channel 2.
        p.pio_write(0x43, 0b1100_1000, &mut clock);
        let status = p.pio_read(0x42, &mut clock);
        assert_eq!(status & 0x3f, 3 << 4, "LSB+MSB access, mode 0");
        assert_eq!(p.pio_read(0x42, &mut clock), 0x34);
        assert_eq!(p.pio_read(0x42, &mut clock), 0x12);
    }

    #[test]
    fn port61_reports_channel2_output_and_gate() {
        let mut p = Pit::new();
        let mut clock = || 0u64;
        p.pio_write(0x61, 1, &mut clock);
        program(&mut p, 2, 0, 100, 0);
        assert_eq!(p.pio_read(0x61, &mut || ns_for(50)) & 0x21, 0x01);
        assert_eq!(p.pio_read(0x61, &mut || ns_for(100)) & 0x21, 0x21);
    }

    #[test]
    fn lsb_only_access_reads_one_byte() {
        let mut p = Pit::new();
        let mut clock = || 0u64;
        p.pio_write(0x43, (1 << 6) | (1 << 4) | (2 << 1), &mut clock);
        p.pio_write(0x41, 200, &mut clock);
        assert_eq!(p.pio_read(0x41, &mut || ns_for(50)), 150);
    }

    proptest! {
        /// Mode 2 counts from `count` down to 1 and reloads; mode 3 counts down
        /// by two; mode 0 wraps below zero. A latched value always matches the model.
        #[test]
        fn latched_counter_matches_the_model(mode in prop_oneof![Just(0u8), Just(2), Just(3)],
                                              count in 2u16..=u16::MAX, elapsed in 0u64..10_000_000) {
            let mut p = Pit::new();
            program(&mut p, 0, mode, count, 1_000);
            let t = 1_000 + ns_for(elapsed);
            let got = latch_read(&mut p, 0, t) as u64;
            let c = count as u64;
            let want = match mode {
                0 => c.wrapping_sub(elapsed) & 0xffff,
                2 => c - elapsed % c,
                _ => c - (2 * elapsed) % c,
            };
            prop_assert_eq!(got, want);
        }

        /// Counts read in periodic modes are always in 1..=count.
        #[test]
        fn periodic_counts_stay_in_range(count in 2u16..=u16::MAX, elapsed in 0u64..100_000_000) {
            let mut p = Pit::new();
            program(&mut p, 0, 2, count, 0);
            let got = latch_read(&mut p, 0, ns_for(elapsed));
            prop_assert!(got >= 1 && got <= count);
        }

        /// Arbitrary guest programming never panics.
        #[test]
        fn arbitrary_writes_are_harmless(ops in proptest::collection::vec((0u16..5, any::<u8>(), any::<u32>()), 0..64)) {
            let mut p = Pit::new();
            for (port, val, t) in ops {
                let port = if port == 4 { 0x61 } else { 0x40 + port };
                let mut clock = || t as u64;
                p.pio_write(port, val, &mut clock);
                p.pio_read(port, &mut clock);
                p.tick();
            }
        }
    }
}
