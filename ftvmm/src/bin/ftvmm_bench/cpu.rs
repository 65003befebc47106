//! Boot time and the CPU-bound workload: boots the reference guest in CPU mode and times
//! (a) the VMM's `run_vm` call to the first serial line `guest: boot`, and (b) the guest line
//! before the computation (`guest: mem=`) to `cpu: checksum=`; then runs the same
//! `ftguest_cpuwork::run` natively in this process (median of a few calls) and checks that
//! the checksums agree.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ftvmm::runner::{run_vm, VmSpec};
use ftvmm::RunOutcome;

use crate::console::{wait_for, LineSink};
use crate::stats::median;

/// Native calls per run (their median is the run's native time).
pub const NATIVE_REPEATS: usize = 5;

/// Timings of one CPU-mode run.
pub struct CpuRun {
    pub boot: Duration,
    pub guest_work: Duration,
    pub native_work: Duration,
    pub checksum: u64,
}

pub fn run(kernel: &Path, iters: u64, echo: bool) -> Result<CpuRun> {
    let spec = VmSpec {
        kernel: kernel.to_path_buf(),
        mem_mib: 32,
        disk: None,
        tap: None,
        cmdline: format!("mode=cpu cpu_iters={iters}"),
        restore: None,
        snapshot_on_exit: None,
        stdin: false,
        bridge: None,
        cpu: Default::default(),
    };
    let (sink, lines) = LineSink::new(echo);
    let t0 = Instant::now();
    let report = run_vm(&spec, Box::new(sink), |_, _| {}).context("CPU-mode VM failed")?;
    if report.outcome != RunOutcome::DebugExit(0) {
        bail!("CPU-mode guest ended with {:?}", report.outcome);
    }
    let wait = Duration::from_secs(1);
    let boot = wait_for(&lines, "guest: boot", wait).map_err(anyhow::Error::msg)?;
    let before = wait_for(&lines, "guest: mem=", wait).map_err(anyhow::Error::msg)?;
    let done = wait_for(&lines, "cpu: checksum=", wait).map_err(anyhow::Error::msg)?;
    let checksum = parse_checksum(&done.text)?;

    // The native run is short: take the median of a few back-to-back calls so that one cold
    // cache or page fault does not decide the ratio.
    let mut native_times = Vec::with_capacity(NATIVE_REPEATS);
    for _ in 0..NATIVE_REPEATS {
        let t = Instant::now();
        let native = std::hint::black_box(ftguest_cpuwork::run(std::hint::black_box(iters)));
        native_times.push(t.elapsed().as_secs_f64());
        if native != checksum {
            bail!("checksum mismatch: guest {checksum:016x}, native {native:016x}");
        }
    }
    let native_work = Duration::from_secs_f64(median(&native_times).unwrap_or(0.0));
    Ok(CpuRun {
        boot: boot.at - t0,
        guest_work: done.at - before.at,
        native_work,
        checksum,
    })
}

/// The checksum of `cpu: checksum=<16 hex> ticks=<n> iters=<N>`.
fn parse_checksum(line: &str) -> Result<u64> {
    let hex = line
        .strip_prefix("cpu: checksum=")
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("unexpected CPU line {line:?}"))?;
    u64::from_str_radix(hex, 16).with_context(|| format!("bad checksum in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_line_is_parsed() {
        assert_eq!(
            parse_checksum("cpu: checksum=49fff6e82ffcff77 ticks=0 iters=200000").unwrap(),
            0x49ff_f6e8_2ffc_ff77
        );
        assert!(parse_checksum("cpu: checksum=zz ticks=0").is_err());
        assert!(parse_checksum("guest: boot").is_err());
    }
}
