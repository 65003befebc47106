//! Which of ftvmm's threads run real-time, and the one call that puts a
//! replication link's thread there.
//!
//! Everything in ftvmm runs under the normal scheduler (`SCHED_OTHER`)
//! except two kinds of thread, both of which sleep almost always:
//! - the answer to fencing's output grants, `SCHED_RR 9` (`daemon.rs`,
//!   `ctl_server::serve_urgent`): a hold must be confirmed within 500 ms;
//! - a replication link's liveness and acknowledgement threads,
//!   `SCHED_RR 8` ([`link_thread`]): lockstep's sender, ack, receiver and
//!   progress threads (`lockstep/link.rs`), a checkpoint link's keep-alive
//!   threads and the Primary's ack reader (`checkpoint/keepalive.rs`,
//!   `driver_link.rs`). Starved behind the guests' vCPU threads (a
//!   Secondary's replay, a Primary's busy guest), a healthy peer goes
//!   unheard for a failure timeout — a needless failover — and every held
//!   output waits for its acknowledgement longer than the link takes.
//!
//! Neither passes it on: the grant thread's request threads drop back to
//! the normal policy before handling anything else, and a link thread is
//! set with [`sched::realtime_thread_alone`] (`SCHED_RESET_ON_FORK`), so no
//! thread it starts — never a vCPU — inherits it. The kernel's real-time
//! throttling (95 % by default) bounds a runaway loop.
//!
//! [`sched::realtime_thread_alone`]: config_schema::sched::realtime_thread_alone

use config_schema::sched;

/// Moves the calling replication-link thread to `SCHED_RR`
/// [`sched::FTVMM_LINK_PRIORITY`], not inherited by threads it starts
/// (module doc). Without the right (not root, no real-time budget) it goes
/// on at normal priority; either outcome is said once per process.
pub fn link_thread() {
    static SAID: std::sync::Once = std::sync::Once::new();
    let got = sched::realtime_thread_alone(sched::FTVMM_LINK_PRIORITY);
    SAID.call_once(|| match &got {
        Ok(()) => tracing::info!(
            "ftvmm: replication link threads (keep-alives, acks, log) at {}",
            sched::describe_thread()
        ),
        Err(e) => tracing::warn!("ftvmm: replication link threads at normal priority: {e}"),
    });
}
