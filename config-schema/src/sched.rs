//! Real-time scheduling for the failure-detection daemons' threads.
//!
//! On an appliance host the guests' vCPU threads (and, on a Secondary, the
//! replay) keep every core busy under the normal scheduler (`SCHED_OTHER`).
//! A heartbeat round, the reading of a peer's heartbeats, or a lease renewal
//! delayed behind them by more than the failure timeout makes a healthy host
//! look dead — a false failover — or makes it fence itself. So heartbeat's
//! send and receive threads and the fencing agent run under `SCHED_RR` at a
//! low real-time priority, above every normal thread and below the kernel's
//! own real-time threads (as corosync and sanlock run). They sleep almost
//! always; the kernel's real-time throttling (`sched_rt_runtime_us`, 95 % by
//! default) still bounds a runaway loop. Memory is not locked: the appliance
//! has no swap, and its binaries live in the initramfs (RAM).

/// heartbeat's threads.
pub const HEARTBEAT_PRIORITY: i32 = 10;
/// The fencing agent (its lease renewals and watchdog feed come first).
pub const FENCING_PRIORITY: i32 = 11;
/// ftvmm answering fencing's output grants: a hold fencing asked for must
/// be confirmed within 500 ms or fencing stops feeding the watchdog, and a
/// host whose guests keep every core busy (a take-over's first seconds)
/// did not get ftvmm's control thread scheduled in time (stop 29: the lone
/// survivor of a checkpoint pair fenced itself that way).
pub const FTVMM_GRANT_PRIORITY: i32 = 9;
/// ftvmm's replication-link threads (`ftvmm::priority`): lockstep's
/// sender, ack, receiver and progress threads, each checkpoint side's
/// keep-alive thread and the checkpoint Primary's ack reader. Starved
/// behind the guests' vCPU threads, a healthy peer goes unheard for a
/// failure timeout (a false suspicion, a needless failover) and held
/// outputs wait longer than the link does. They sleep almost always.
/// Below the grant answer: a hold must be confirmed first. Set with
/// [`realtime_thread_alone`], so nothing they start inherits it.
pub const FTVMM_LINK_PRIORITY: i32 = 8;

/// Moves the calling thread to `SCHED_RR` at `priority`; threads it starts
/// afterwards inherit the policy. Fails without `CAP_SYS_NICE` (not root),
/// or where real-time scheduling is not allowed (a cgroup without a
/// real-time budget): callers go on at normal priority and say so.
pub fn realtime_thread(priority: i32) -> std::io::Result<()> {
    set_scheduler(libc::SCHED_RR, priority)
}

/// Like [`realtime_thread`], but threads the caller starts afterwards
/// begin at the normal policy (`SCHED_RESET_ON_FORK`): for a thread of a
/// process whose other threads (a VMM's vCPUs) must never run real-time.
pub fn realtime_thread_alone(priority: i32) -> std::io::Result<()> {
    set_scheduler(libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, priority)
}

/// Moves the calling thread back to the normal policy (`SCHED_OTHER`),
/// e.g. a connection thread that inherited a real-time accept loop's
/// policy and serves a request that may start threads of its own.
pub fn normal_thread() -> std::io::Result<()> {
    set_scheduler(libc::SCHED_OTHER, 0)
}

fn set_scheduler(policy: i32, priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a live, initialized sched_param the call only
    // reads; pid 0 is the calling thread; `policy` is a policy constant,
    // with `SCHED_RESET_ON_FORK` or-ed in where the caller wants it.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's policy and priority, as `SCHED_RR 10` or
/// `SCHED_OTHER` (status and console lines).
pub fn describe_thread() -> String {
    // SAFETY: pid 0 is the calling thread; both calls only return values or
    // fill `param`, a live local.
    let (policy, prio) = unsafe {
        let mut param = libc::sched_param { sched_priority: 0 };
        let policy = libc::sched_getscheduler(0);
        libc::sched_getparam(0, &mut param);
        (policy, param.sched_priority)
    };
    // `realtime_thread_alone`'s flag is reported inside the policy.
    match policy & !libc::SCHED_RESET_ON_FORK {
        libc::SCHED_RR => format!("SCHED_RR {prio}"),
        libc::SCHED_FIFO => format!("SCHED_FIFO {prio}"),
        libc::SCHED_OTHER => "SCHED_OTHER".into(),
        other => format!("policy {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_goes_real_time_or_says_why_not() {
        // Root (CAP_SYS_NICE) gets SCHED_RR; anyone else an error, and the
        // thread keeps the normal policy. Either way in a thread of its own,
        // so the test harness's threads are not changed.
        std::thread::spawn(|| {
            let before = describe_thread();
            assert_eq!(before, "SCHED_OTHER");
            match realtime_thread(HEARTBEAT_PRIORITY) {
                Ok(()) => {
                    assert_eq!(describe_thread(), "SCHED_RR 10");
                    // Inherited by a thread started afterwards.
                    let child = std::thread::spawn(describe_thread).join().unwrap();
                    assert_eq!(child, "SCHED_RR 10");
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                    assert_eq!(describe_thread(), "SCHED_OTHER");
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_real_time_alone_starts_its_threads_at_normal_priority() {
        std::thread::spawn(|| match realtime_thread_alone(FTVMM_LINK_PRIORITY) {
            Ok(()) => {
                assert_eq!(describe_thread(), "SCHED_RR 8");
                // Not inherited: a vCPU thread started from here runs normal.
                let child = std::thread::spawn(describe_thread).join().unwrap();
                assert_eq!(child, "SCHED_OTHER");
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                assert_eq!(describe_thread(), "SCHED_OTHER");
            }
        })
        .join()
        .unwrap();
    }
}
