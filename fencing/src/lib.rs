//! The storage-fencing agent: Disk Paxos over per-host sectors of the shared
//! block device, host-liveness (delta) leases and the watchdog (DESIGN.md §5).
//!
//! - [`layout`]: the on-disk layout of the fencing region, byte by byte.
//! - [`io`]: single-sector I/O on the region (`O_DIRECT | O_SYNC`).
//! - [`paxos`]: Disk Paxos as a pure state machine driven by I/O completions,
//!   plus the synchronous driver the daemon uses ([`paxos::decide`]).
//! - [`lease`]: delta leases and the timing arithmetic (renewal, hold,
//!   watchdog, lease timeout).
//! - [`watchdog`]: `/dev/watchdog` and the guard policy (hold output, then
//!   stop feeding).
//! - [`agent`]: one host's agent (region header, renewals, `Acquire`, status);
//!   [`daemon`]: its background threads.
//! - [`sim`], [`sim_lease`]: deterministic simulations of Disk Paxos and of
//!   leases + guard + watchdog (`tests/sim.rs` runs them).
//!
//! # Control requests (on `/run/fencing.sock`)
//!
//! - `Acquire { vm, generation }` → `Decided { vm, generation, owner, won }`:
//!   final, every later `Acquire` of the same pair by any host answers the same
//!   owner. It blocks for at most [`agent::ACQUIRE_BOUND`] (4 s, below the 5 s
//!   read timeout of `config_schema::ctl::query`). A lone host with working
//!   storage decides within two ballots (a few sector I/Os, milliseconds).
//!   Otherwise `Error { message }`: storage unreachable or slow ("no answer from
//!   storage within 4000 ms", "storage i/o failed: ..."), a refused region, an
//!   unknown VM, or "... is superseded by generation G" when a later
//!   generation already reuses the ring slot (16 generations per VM are kept).
//!   The caller keeps holding output and asks again.
//! - `Leases` → `Leases { leases }`: per host (config order) whether its
//!   counter moved within the lease timeout on this host's clock.
//! - `Status`: the device, region state, timing, own lease (renewals,
//!   failures, last error), guard state, watchdog (state, feeds, timeout),
//!   leases, `leases_expired` (hosts seen and not renewing for the lease
//!   timeout) and decisions made.
//!
//! The agent sends `HoldOutput { hold, reason }` to ftvmm (`/run/ftvmm.sock`)
//! and takes `Ok` as confirmation that the hold (or its release) is in force.
//!
//! # Console lines (stdout, at state changes only)
//!
//! ```text
//! fencing: region on /dev/vdb at 0 MiB, 52 sectors, O_DIRECT
//! fencing: host host-b index 1 of 3; lease every 500 ms, timeout 7000 ms
//! fencing: not fencing: <why> (retrying every 2 s)   (no device, region too small...)
//! fencing: serving on /run/fencing.sock
//! fencing: lease renewed (host host-b, every 500 ms, timeout 7000 ms)
//! fencing: lease renewal failed: <error>
//! fencing: watchdog /dev/watchdog armed, timeout 5 s
//! fencing: no watchdog at /dev/watchdog; a hung host will not be reset
//! fencing: decided vm=kv generation=2 owner=host-b
//! fencing: lease renewal failing for 1000 ms; asking ftvmm to hold output
//! fencing: ftvmm confirmed the output hold
//! fencing: ftvmm did not confirm the output hold within 500 ms; no longer feeding the watchdog
//! fencing: lease renewed again; asking ftvmm to release output
//! fencing: ftvmm confirmed the output release
//! fencing: signal 15: watchdog disarmed, exiting
//! ```

pub mod agent;
pub mod daemon;
pub mod device;
pub mod io;
pub mod layout;
pub mod lease;
pub mod paxos;
pub mod rng;
pub mod sim;
pub mod sim_lease;
pub mod view;
pub mod watchdog;

pub use view::View;
