//! Failures of the test bed, not of what runs on it, that a QEMU test may
//! retry: L1 is QEMU TCG emulating AMD SVM (NESTED-KVM.md), whose emulation
//! now and then corrupts L1's own kernel around VMRUN/#VMEXIT. A userspace
//! VMM cannot legitimately crash or freeze its host's kernel, so a test that
//! sees it retries with fresh hosts (once, or up to a measured number of
//! attempts), says so, and fails on the last one or on anything else
//! (`linux_vm.rs`, `checkpoint_pair.rs`, `respawn.rs`).

use std::io::Write;

use crate::console::Console;

/// Whether `console` shows L1's kernel dying inside kvm_amd's VM entry/exit
/// ("Kernel panic" with `svm_vcpu_run` or `svm_vcpu_enter_exit` in the
/// trace). Seen in CI at stop 25 and here at stop 29, both times
/// `exc_page_fault` recursing in a vCPU thread until the stack guard page.
pub fn l1_svm_crashed(console: &Console) -> bool {
    console.count("Kernel panic - not syncing") > 0
        && (console.count("svm_vcpu_run") > 0 || console.count("svm_vcpu_enter_exit") > 0)
}

/// Whether `console` (an L1 running `ftvmm linux`) says L1's own kernel
/// died or hung in any way: an oops, panic or warning dump naming L1's
/// emulated board, or a soft lockup of one of ftvmm's vCPU threads (the
/// emulated VMRUN never came back to L1). The guest's console lines reach
/// L1's console too, so only lines no guest of `ftvmm linux` prints count
/// (it gives its guest no SMBIOS, so a guest's dump names no board). Wider
/// than [`l1_svm_crashed`]: stop 37 saw the stack guard page hit by
/// `exc_page_fault` recursing in a vCPU thread with no `svm_vcpu_run` left
/// in the trace.
pub fn l1_kernel_died(console: &Console) -> bool {
    console.lines().iter().any(|l| {
        l.text.contains("Hardware name: QEMU Standard PC")
            || (l.text.contains("soft lockup - CPU#") && l.text.contains("[vcpu"))
    })
}

/// Runs `body`, and once more if it panicked with a message containing one
/// of `markers` (the retry is printed with the message); any other panic,
/// or a second marked one, fails the test.
pub fn retry_once_on<T>(name: &str, markers: &[&str], body: impl Fn() -> T) -> T {
    retry_on(name, markers, 2, body)
}

/// [`retry_once_on`] with up to `attempts` runs in all, for a test whose
/// measured test-bed failure rate makes two in a row too likely for a test
/// CI runs once (`linux_vm.rs` has the numbers).
pub fn retry_on<T>(name: &str, markers: &[&str], attempts: u32, body: impl Fn() -> T) -> T {
    let mut attempt = 1;
    loop {
        let payload = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body)) {
            Ok(v) => return v,
            Err(p) => p,
        };
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        if attempt >= attempts || !markers.iter().any(|m| msg.contains(m)) {
            std::panic::resume_unwind(payload);
        }
        attempt += 1;
        // Straight to the process's stderr, past the test harness's capture
        // (it takes only the print macros): a test that passed on a retry
        // says so in CI's log too.
        let _ = writeln!(
            std::io::stderr(),
            "{name}: {msg}\n{name}: a failure the test bed makes on its own (the marker says \
             which); retrying (attempt {attempt} of {attempts})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::retry_on;
    use std::cell::Cell;

    #[test]
    fn marked_failures_are_retried_up_to_the_attempts_and_others_are_not() {
        let runs = Cell::new(0);
        let flaky = || {
            runs.set(runs.get() + 1);
            if runs.get() < 3 {
                panic!("TEST BED: run {}", runs.get());
            }
            runs.get()
        };
        assert_eq!(retry_on("t", &["TEST BED"], 3, flaky), 3);
        for (marker, attempts, want_runs) in [("OTHER", 3, 1), ("TEST BED", 2, 2)] {
            runs.set(0);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                retry_on("t", &[marker], attempts, flaky)
            }));
            assert!(r.is_err(), "{marker}: the failure is not swallowed");
            assert_eq!(runs.get(), want_runs, "{marker}");
        }
    }
}
