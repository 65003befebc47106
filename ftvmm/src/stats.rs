//! Counters of what the vCPU loop did, shown by `ftvmm run` and the daemon.

use serde::{Deserialize, Serialize};

/// Exit counts by kind. `deterministic()` is the exit index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStats {
    pub pio_in: u64,
    pub pio_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub irq_window: u64,
    pub debug: u64,
    pub shutdown: u64,
    /// Host-caused returns (signals, `KVM_EXIT_INTR`): not deterministic, not counted in `n`.
    pub host: u64,
    /// Interrupts injected with `KVM_INTERRUPT`.
    pub injected: u64,
    /// Input events delivered to devices.
    pub events: u64,
    /// Synchronous time reads (PIT).
    pub time_reads: u64,
}

impl ExitStats {
    /// Guest-caused exits; equals the exit index of a VM started from scratch.
    pub fn deterministic(&self) -> u64 {
        self.pio_in
            + self.pio_out
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.irq_window
            + self.debug
            + self.shutdown
    }

    /// One human-readable block, `secs` being the wall time the VM ran.
    pub fn report(&self, exit_index: u64, secs: f64) -> String {
        let rate = if secs > 0.0 {
            exit_index as f64 / secs
        } else {
            0.0
        };
        format!(
            "ftvmm: exit index {exit_index} in {secs:.3} s ({rate:.0} exits/s)\n\
             ftvmm: exits pio_in={} pio_out={} mmio_read={} mmio_write={} hlt={} irq_window={} debug={} shutdown={}\n\
             ftvmm: host_exits={} injected={} events={} time_reads={}",
            self.pio_in,
            self.pio_out,
            self.mmio_read,
            self.mmio_write,
            self.hlt,
            self.irq_window,
            self.debug,
            self.shutdown,
            self.host,
            self.injected,
            self.events,
            self.time_reads
        )
    }
}
