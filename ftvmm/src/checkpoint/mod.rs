//! Checkpoint replication (design §4b): the Primary runs any guest with the
//! in-kernel irqchip and several vCPUs; at the end of every epoch it pauses,
//! copies what changed, resumes, and ships the epoch to the Secondary, which
//! does not execute but holds the last complete epoch to resume from.
//!
//! - [`state`]: machine state (vCPUs, irqchips, PIT, clock) capture/restore.
//!
//! Deliberately not here: the VM that boots Linux (`linux/`), the threads
//! that pause vCPUs and carry epochs over the channel, and the member /
//! fencing wiring (go-live for g+1 works as in lockstep).

pub mod state;

#[cfg(test)]
mod state_tests;
