//! Checkpoint replication (design §4b): the Primary runs any guest with the
//! in-kernel irqchip and several vCPUs; at the end of every epoch it pauses,
//! copies what changed, resumes, and ships the epoch to the Secondary, which
//! does not execute but holds the last complete epoch to resume from.
//!
//! - [`state`]: machine state (vCPUs, irqchips, PIT, clock) capture/restore.
//! - [`epoch`]: the epoch wire format (body, pieces, digest); [`assemble`]
//!   puts pieces back together and refuses a torn epoch; [`delta`] encodes
//!   a page against its previous version.
//! - [`gate`]: the Output Rule for epochs (Primary side), with the
//!   [`overlay`] that serves reads of writes not yet on the device;
//!   [`ack_wait`] how long the Secondary has acknowledged no epoch while
//!   one waits (a Secondary heard but acknowledging nothing is lost).
//! - [`receiver`]: the Secondary's side: reassemble, verify, apply in
//!   order to a staging copy, acknowledge; [`receiver::Receiver::take_over`].
//!
//! On a real VM (`linux/`): [`primary`] is the epoch loop (pause, harvest,
//! close, resume, ship), [`gated`] the backend that puts the gate between the
//! devices and the disk/TAP ([`latency`]: where its epochs' outputs wait
//! after they close), [`secondary`] the staging memory the take-over
//! VM runs on and the take-over itself; [`local`] a pair inside one process
//! (`ftvmm linux --local-secondary`) for tests where one host runs;
//! [`remote`] epochs and acks over the authenticated channel between hosts
//! ([`keepalive`]: each side says it is alive from a thread of its own, so
//! a long epoch step is not taken for a dead peer) and [`hosts`] the
//! two-process pair (`--checkpoint-primary` /
//! `--checkpoint-secondary`); [`dirty_log`] the harvest switch
//! (`KVM_GET_DIRTY_LOG` alone or with `KVM_CLEAR_DIRTY_LOG`).
//!
//! Page deltas pay, so the format has them (`delta.rs`; measured in
//! `epoch_tests::measure_page_deltas`, times with `rustc -O` on the loaded
//! 2-core dev machine, noisy): a page with 8 changed words ships 98 bytes
//! (2.4% of raw), 64 incremented counters 324 bytes (7.9%), a rewritten
//! KiB 1032 bytes (25%), a rewritten page goes raw (no delta is tried past
//! half a page). Encoding ran at 200-1000 MB/s per core against a plain
//! copy's ~1 GB/s here, off the pause (the guest runs while the sender
//! encodes); applying a delta is cheaper than copying the page. The price
//! is the Primary's copy of each page as last shipped (the delta base),
//! which [`delta_base`] keeps for a bounded set of recently shipped pages.
//!
//! Checked: `state_tests` (on /dev/kvm), `epoch_tests` (format, torn
//! epochs, fuzz, delta measurement), `gate_tests`, `receiver_tests`, and a
//! seeded simulation (`sim_tests`: crashes, failover, a bad link, joins of
//! a new Secondary to a lone Primary with their own faults, `sim_join.rs`).
//!
//! Also checked: `keepalive_tests`, `remote_tests` and `hosts_tests` (a Primary and a Secondary
//! over TCP loopback with the real channel, on /dev/kvm), `dirty_tests`
//! (the pause with either harvest, `--ignored`).
//!
//! [`driver`] runs lockstep's member state machine on a checkpoint pair
//! (failure detection, the race for g+1 through fencing, resuming from the
//! last complete epoch, hand-over on storage loss), checked by
//! `driver_tests` on /dev/kvm with in-process fencing; `gated`'s
//! `grant_tests` check that the gate obeys the host's output grant, its
//! `latency_tests` that each wait is stamped for the right epochs.
//!
//! The daemon runs checkpoint VMs (`manager_checkpoint.rs`): [`daemon_spec`]
//! builds what a member runs from (the pair's `Hello` with mode, vCPUs,
//! epoch and the [`boot_image`] digest: kernel and initrd read from the
//! shared device, checked against the config's pins, booted from sealed
//! memory), [`daemon_member`] runs this host's member by lockstep's
//! placement and pair start with the [`driver`], [`daemon_status`] is what
//! status shows; [`late_fence`] holds a take-over's later overlapping
//! epochs (checked by `manager_checkpoint_tests`, two daemons in one
//! process on /dev/kvm, and `gated`'s `fence_tests`).
//!
//! [`respawn`]: a Primary running alone (after a take-over, after its
//! Secondary was lost, or alone at power-on) gets a new Secondary through
//! lockstep's keeper (placement, Hello, back-off, protection line); the
//! first full checkpoint is the state transfer, and the gate pairs at that
//! epoch (the Output Rule across a join is argued in its module doc). The
//! new Secondary is streamed up to date while the Primary runs alone, and
//! the pair forms at a later, small epoch; both sides judge the join by
//! keep-alives, not by how long the bulk takes. Checked by `gate_tests`,
//! `respawn_tests` (a join over a 2 MiB/s link, its full epoch several
//! failure timeouts long) and `manager_checkpoint_respawn_tests` (three
//! daemons in one process on /dev/kvm).
//!
//! Not here yet: resending from the first unacked epoch after a reconnect.

pub mod ack_wait;
pub mod assemble;
pub mod boot_image;
pub mod brief;
pub mod daemon_member;
pub mod daemon_spec;
pub mod daemon_status;
pub mod delta;
pub mod delta_base;
pub mod dirty_log;
pub mod driver;
pub mod epoch;
mod epoch_decode;
pub mod gate;
pub mod gated;
pub mod hosts;
pub mod keepalive;
pub mod late_fence;
pub mod latency;
pub mod local;
pub mod overlay;
pub mod primary;
pub mod receiver;
pub mod remote;
pub mod resident;
pub mod respawn;
pub mod secondary;
pub mod stall;
pub mod state;

#[cfg(test)]
mod ack_wait_tests;
#[cfg(test)]
mod cpu_bench;
#[cfg(test)]
mod delta_base_bench;
#[cfg(test)]
mod dirty_tests;
#[cfg(test)]
mod epoch_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod hosts_tests;
#[cfg(test)]
mod keepalive_tests;
#[cfg(test)]
mod receiver_tests;
#[cfg(test)]
mod remote_tests;
#[cfg(test)]
mod respawn_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod sim_world;

#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod vm_tests;
