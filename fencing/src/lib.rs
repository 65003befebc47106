//! The storage-fencing agent: Disk Paxos over per-host blocks of the shared
//! block device, host-liveness (delta) leases, the output grant to ftvmm and
//! the watchdog (docs/architecture.md §7, docs/design.md §1–§4). `README.md` of this
//! crate has the same overview with the layout and the numbers.
//!
//! - [`layout`]: the on-disk layout of the fencing region (version 2: one
//!   physical block per record), byte by byte; blank / valid / corrupt.
//! - [`io`]: whole-block I/O on the region (`O_DIRECT | O_SYNC`), the device's
//!   logical and physical block sizes, and several requests issued at once.
//! - [`paxos`]: Disk Paxos as a pure state machine driven by I/O completions,
//!   plus the synchronous driver the daemon uses ([`paxos::decide`]).
//! - [`acquire`]: `Acquire` and `Highest`; [`alarm`]: corrupt-block alarms.
//! - [`lease`]: delta leases and the timing arithmetic (renewal, grant,
//!   hold, watchdog, lease timeout).
//! - [`slot`]: taking the own lease slot as sanlock does.
//! - [`renew`]: one renewal and what rides on it: [`publish`] (what this
//!   host runs), [`depose`] (the deposition watch), [`freeze`] (freeze
//!   detection).
//! - [`guard`]: the level-triggered output grant and the watchdog policy;
//!   [`watchdog`]: `/dev/watchdog`.
//! - [`agent`]: one host's agent; [`daemon`]: its background threads.
//! - [`sim`], [`sim_lease`]: deterministic simulations of Disk Paxos (with
//!   disk faults and impostor machines) and of leases + grant + watchdog
//!   (`tests/sim.rs` runs them).
//! - [`pr`]: SCSI-3 persistent reservations on the shared device (the
//!   storage-level fence: keys, PR ioctls and SG_IO, probe, a fake target,
//!   the join/depose steps); [`storage_fence`]: the agent's use of them
//!   (join before the first write, depose before `Decided`, preemption).
//!
//! # Control requests (on `/run/fencing.sock`)
//!
//! - `Acquire { vm, generation, config_generation }` →
//!   `Decided { vm, generation, owner, won, config_generation }`: final, every
//!   later `Acquire` of the same pair by any host answers the same owner and
//!   the config generation the owner proposed it under. Before its first
//!   Paxos write the agent publishes (vm, generation) in its lease record.
//!   It blocks for at most [`agent::ACQUIRE_BOUND`] (4 s, below the 5 s read
//!   timeout of `config_schema::ctl::query`). A lone host with working storage
//!   decides within two ballots (a few block I/Os, milliseconds). When this
//!   host won and the device is reservation-fenced, the owner of the newest
//!   decided generation below is deposed at the device first if it is another
//!   host ([`storage_fence`]).
//!   Refused with `Error { message: "fencing: refusing go-live: ..." }` on a
//!   host without a watchdog that keeps real time, unless the config has
//!   `[cluster] accept_soft_watchdog = true` ([`watchdog::go_live`]).
//!   `Superseded { vm, generation, by }` when a later generation `by` already
//!   reuses the ring slot (16 generations per VM are kept). Otherwise
//!   `Error { message }`: storage unreachable or slow ("no answer from storage
//!   within 4000 ms", "storage i/o failed: ..."), a refused region, the slot
//!   not held, an unknown VM, generation 0, an alarm over a corrupt block
//!   (the alarm's console line), a win whose depose failed or that cannot be
//!   fenced yet ("storage fencing: deposing host ... failed", "storage
//!   fencing: not joined yet"), or this host preempted at the storage. The
//!   caller keeps holding output and asks again.
//! - `Highest { vm }` → `Highest { vm, generation, owner, config_generation }`:
//!   the highest generation any host's block names (0: none), its decided
//!   owner if a block records one, and the config generation recorded with it
//!   (undecided: the highest proposed with an accepted value). An alarm
//!   (`Error`) over a corrupt block: it may hide a higher generation.
//! - `Leases` → `Leases { leases }`: per host (config order) whether its
//!   counter moved within the lease timeout on this host's clock, and the VMs
//!   it publishes as running (`running`).
//! - `ResetHost { reason }` → `Ok`: the watchdog is never fed again.
//! - `Status`: the device, region state, timing, slot claim, own lease
//!   (renewals, failures, last error), what is published, freeze detection,
//!   guard state and grant, watchdog (state, feeds, timeout, and the one
//!   chosen: `device`, `identity`, `kind`, `real_time`, `go_live`), leases,
//!   `leases_expired` (hosts seen and not renewing for the lease timeout),
//!   decisions made, alarms (count, last), copies found deposed, and
//!   `storage_fence`: `active`, `state` (`probing`, `unavailable`,
//!   `joining`, `active`, `preempted`), `why` (not active / preempted),
//!   `device`, `key`, `holder`, `persists_registrations`, `keys_removed`,
//!   `last_depose`, `rejoins`, `last_check_error`.
//!
//! # Requests to ftvmm (on `/run/ftvmm.sock`, `--ftvmm-socket`)
//!
//! - `OutputGrant { ok, valid_ms, reason }` every grant period (100 ms),
//!   answered `Running { vms }` (what ftvmm runs or acquires as Primary; it
//!   becomes this host's publication). See [`guard`] and [`lease`].
//! - `Deposed { vm, generation, by }` at every renewal while a copy ftvmm
//!   runs is deposed (or, for every copy, while this host is preempted at
//!   the storage), answered `Ok`.
//!
//! # Console lines (stdout, at state changes only)
//!
//! ```text
//! fencing: serving on /run/fencing.sock
//! fencing: region on /dev/vdb at 0 MiB, 4084 blocks of 4096 bytes for 85 VM slots (device blocks: logical 512, physical 4096), O_DIRECT
//! fencing: region header upgraded from layout version 2 (1 VMs) to 3 (256 VM slots): every VM's blocks stay where they were
//! fencing: vm web: fencing slot 7 is beyond the 5 slots the fencing region holds (1 MiB in 4096-byte blocks for 3 hosts); give it a lower `slot` or enlarge storage.fencing
//! fencing: host host-b index 1 of 3; lease every 500 ms, timeout 8000 ms
//! fencing: storage fencing not active: <why>   (not SCSI, no PR, no WERO, a foreign reservation, the pr test hook...)
//! fencing: storage fencing active on /dev/sda: key 0x4654000289abcdef registered, reservation WERO held by host host-a (0x46540001...)[; the target does not persist registrations (...)]
//! fencing: storage fencing: joining failed: <error> (retrying; no generation is won until it joins)
//! fencing: deposed host host-a at the storage before answering vm kv generation 2 (it owned generation 1): removed [0x46540001...] with PREEMPT (the target refused PREEMPT AND ABORT)
//! fencing: this host was preempted at the storage (<evidence>): withdrawing the output grant, stopping every VM it runs as primary, no longer feeding the watchdog; it joins again only after a reboot
//! fencing: <device>: this host's key ... is gone and the device holds no reservation or counts registrations from 0 again (the target lost its registrations); joined again with the same key after clean deposition checks (reservation held by ...)
//! fencing: not fencing: <why> (retrying every 2 s)   (no device, region too small...)
//! fencing: watching this host's lease slot for 8000 ms before taking it (incarnation ..., counter 41, 1 running)
//! fencing: not fencing: another machine renews this host's lease slot (<before> -> <after>); is this host's config disk in the wrong machine? (watching it; taking it only after 7000 ms without a write)
//! fencing: the other machine stopped writing this host's lease slot; took it
//! fencing: lease renewed (host host-b, every 500 ms, timeout 8000 ms)
//! fencing: lease renewal failed: <error>
//! fencing: watchdog /dev/watchdog0 ("iTCO_wdt", chipset timer)   (the one chosen, at start)
//! fencing: no watchdog on this host
//! fencing: refusing go-live: no hardware watchdog, only /dev/watchdog0 ("Software Watchdog", ...): a hung host would not be reset ...; this host wins no generation (...)   (also every Acquire's error)
//! fencing: WARNING: no hardware watchdog, ...; this host takes part in go-live only because the signed config sets [cluster] accept_soft_watchdog = true (test clusters only): a hung host is not reset
//! fencing: watchdog /dev/watchdog armed, timeout 6 s
//! fencing: watchdog /dev/watchdog0 armed, timeout 3 s; it resets up to 6 s after its last feed (2 expiries), within the planned 6 s   (a TCO)
//! fencing: watchdog /dev/watchdog0 armed, but it resets up to 8 s after its last feed (timeout 4 s, 2 expiries), not within the planned 6 s: the lease arithmetic does not hold; this host wins no generation unless ...   (every Acquire is refused then)
//! fencing: no watchdog at /dev/watchdog; a hung host will not be reset
//! fencing: ftvmm answers the output grant (valid 500 ms, sent every 100 ms)
//! fencing: ftvmm did not answer the output grant: <error>
//! fencing: decided vm=kv generation=2 owner=host-b (config generation 3)
//! fencing: ALARM: corrupt Disk Paxos block of host host-c for vm kv generation 7 (block 42 of the fencing region, device byte 172032): bad checksum; nothing is decided over it
//! fencing: vm kv generation 3 is deposed: host host-c's block names generation 4; telling ftvmm to stop it
//! fencing: this host was frozen: host host-c's lease advanced 24 renewals while this host's clock advanced 501 ms (at most 3 possible); withdrawing the output grant and checking for deposition
//! fencing: clean renewal and deposition check after the freeze; granting output again
//! fencing: lease renewal failing for 1000 ms; asking ftvmm to hold output
//! fencing: ftvmm confirmed the output hold
//! fencing: ftvmm did not confirm the output hold within 500 ms; no longer feeding the watchdog
//! fencing: lease renewed again; asking ftvmm to release output
//! fencing: ftvmm confirmed the output release
//! fencing: reset requested (<reason>); no longer feeding the watchdog, the host resets within 6 s   (the watchdog's reset bound)
//! fencing: reset requested (<reason>); arming the watchdog without feeding it   (before the first renewal)
//! fencing: signal 15: watchdog disarmed, exiting
//! ```

pub mod acquire;
pub mod agent;
pub mod alarm;
pub mod daemon;
pub mod depose;
pub mod device;
pub mod freeze;
pub mod guard;
pub mod io;
pub mod layout;
pub mod lease;
pub mod paxos;
pub mod pr;
pub mod publish;
pub mod renew;
pub mod rng;
pub mod sim;
pub mod sim_lease;
pub mod slot;
pub mod storage_fence;
pub mod view;
pub mod watchdog;

pub use view::View;
