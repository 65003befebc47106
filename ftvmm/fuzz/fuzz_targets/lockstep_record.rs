//! Fuzz target: the Primary's recording path under hostile guest I/O
//! (`ftvmm::lockstep::recording_sim`). The input is a script: bursts of
//! block completions up to the device's largest read (16 MiB), of frames up
//! to the largest frame, console bytes and ticks, offered between input calls
//! at arbitrary exits, halted calls, time reads, register checks, outputs,
//! and shipping points. Everything goes through `PrimaryInputs` →
//! `PrimaryLog` (append, take_batch) → channel message, sealed and decoded
//! under a real Noise session → `ReplayQueue` → `SecondaryInputs`.
//! Oracles: no panic; every batch is one channel message; the Secondary's
//! vCPU gets exactly what the Primary's got at every call, and the replay
//! ends where the Primary ended; the Primary's vCPU got every offered event,
//! in order.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvmm::lockstep::recording_sim::fuzz(data);
});
