//! Exit round trips: a 13-byte flat guest writes port 0x80 `count` times (each write is one
//! guest-caused `KVM_RUN` return handled by ftvmm's device bus), then stops through the debug
//! exit port 0x501 with status 0.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ftvmm::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource};
use ftvmm::{RunOutcome, Vm};

const CODE_ADDR: u64 = 0x10_0000;

/// `mov ecx, count; 1: out 0x80, al; dec ecx; jnz 1b; mov dx, 0x501; xor eax, eax; out dx, al; hlt`
fn pio_loop(count: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&count.to_le_bytes());
    code.extend_from_slice(&[
        0xe6, 0x80, // out 0x80, al
        0xff, 0xc9, // dec ecx
        0x75, 0xfa, // jnz -6 (back to the out)
        0x66, 0xba, 0x01, 0x05, // mov dx, 0x501
        0x31, 0xc0, // xor eax, eax
        0xee, // out dx, al
        0xf4, // hlt
    ]);
    code
}

/// No asynchronous inputs; time reads are never made by this guest.
pub struct NoInputs;

impl Inputs for NoInputs {
    fn events_at(&mut self, _n: ExitIndex, _out: &mut Vec<InputEvent>) {}
    fn time_read(&mut self, n: ExitIndex, _source: TimeSource) -> u64 {
        n
    }
}

struct Discard;

impl Outputs for Discard {
    fn emit(&mut self, _n: ExitIndex, _event: OutputEvent) {}
}

/// Guest exits and the wall time of `vm.run`.
pub fn run(count: u32) -> Result<(u64, Duration)> {
    if count == 0 {
        bail!("the exit loop needs at least one iteration");
    }
    let mut vm = Vm::new(2 << 20, vec![]).context("cannot create the VM (is /dev/kvm usable?)")?;
    vm.boot_flat(&pio_loop(count), CODE_ADDR, "")
        .context("cannot load the exit-loop guest")?;
    let t = Instant::now();
    let outcome = vm.run(&mut NoInputs, &mut Discard, None)?;
    let secs = t.elapsed();
    if outcome != RunOutcome::DebugExit(0) {
        bail!("exit-loop guest ended with {outcome:?}");
    }
    Ok((vm.exit_index(), secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_encoding_jumps_back_to_the_out() {
        let c = pio_loop(0x0102_0304);
        assert_eq!(&c[..5], &[0xb9, 0x04, 0x03, 0x02, 0x01]);
        // jnz's rel8 is relative to the end of the jnz (offset 11) and must land on `out` (5).
        assert_eq!(11 + (c[10] as i8) as isize, 5);
        assert_eq!(c[5], 0xe6);
        assert_eq!(c.len(), 19);
    }
}
