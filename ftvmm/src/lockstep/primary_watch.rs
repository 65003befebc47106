//! What acts on a running Primary from outside its vCPU loop (DESIGN §4,
//! §5): the monitor that suspects its Secondary and races for g+1, and the
//! fencing watch that hands the VM over when this host loses storage, or
//! re-wins the generation when a Primary running alone gets storage back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::golive::{race, Monitor, Raced};
use super::link;
use super::pair::{PairHandle, PairSpec};
use super::primary::PrimaryLog;
use crate::vm::VmHandle;

/// The Primary stopped at exit `n` because fencing holds its output while
/// the Secondary is healthy: make sure the Secondary has every record, tell
/// it to take over, and halt here. What this Primary still holds is never
/// released: the Secondary re-executes the same outputs from the same log.
pub(super) fn hand_over(
    spec: &PairSpec,
    link: link::Link,
    log: &PrimaryLog,
    handle: &PairHandle,
    n: u64,
    reason: &str,
) {
    let vm = &spec.hello.vm;
    let deadline = Instant::now() + HAND_OVER_ACKS;
    while !log.all_acked() && log.fence_state().paired && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.set_role("halted (handed over)");
    let handed = if log.all_acked() && log.fence_state().paired {
        link.hand_over(reason)
    } else {
        link.stop(reason);
        false
    };
    if handed {
        println!(
            "ftvmm: vm {vm}: {reason}; handed the VM over to secondary {} at exit {n}; halting here",
            spec.peer
        );
    } else {
        // The Secondary finds the channel dead and races for g+1 itself.
        println!(
            "ftvmm: vm {vm}: {reason}; could not hand over to secondary {} (log not fully \
             acknowledged or channel down); halting here",
            spec.peer
        );
    }
}

/// How a Primary's race for a new generation ends the line said while
/// storage does not answer.
const HOLDING: &str = "holding output and waiting";

/// How long a resigning Primary waits for the Secondary to acknowledge the
/// rest of the log.
const HAND_OVER_ACKS: Duration = Duration::from_secs(3);

/// Acts on fencing's output hold for a Primary (DESIGN §5): with a healthy
/// Secondary the Primary stops its VM and hands it over (its host cannot
/// reach storage, the Secondary's can); running alone it waits, and when
/// fencing releases the hold it re-wins the next generation before output
/// flows again (lost: halt).
pub(super) struct FenceWatch {
    stop: Arc<AtomicBool>,
    resign: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FenceWatch {
    pub(super) fn start(
        spec: &PairSpec,
        log: &Arc<PrimaryLog>,
        handle: &Arc<PairHandle>,
        cancel: &Arc<AtomicBool>,
        vmh: VmHandle,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let resign = Arc::new(Mutex::new(None));
        let (log, handle, cancel) = (Arc::clone(log), Arc::clone(handle), Arc::clone(cancel));
        let (st, rs) = (Arc::clone(&stop), Arc::clone(&resign));
        let vm = spec.hello.vm.clone();
        let fencing = spec.fencing_socket.clone();
        let thread = std::thread::Builder::new()
            .name("ftvmm-fence-watch".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) && !cancel.load(Ordering::SeqCst) {
                    let f = log.fence_state();
                    if f.fenced && f.paired {
                        *rs.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some("storage lost (fencing holds output)".to_string());
                        vmh.stop();
                        return;
                    }
                    if f.recheck && !f.fenced {
                        let next = handle.generation.load(Ordering::SeqCst) + 1;
                        println!(
                            "ftvmm: vm {vm}: storage is back; re-winning generation {next} before output flows"
                        );
                        match race(&handle, &fencing, &vm, next, &cancel, HOLDING) {
                            Raced::Won => {
                                log.rechecked();
                                println!("ftvmm: vm {vm}: won generation {next}; output flows again");
                            }
                            Raced::Lost => {
                                vmh.stop();
                                return;
                            }
                            Raced::Cancelled => return,
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .expect("spawn fence watch");
        FenceWatch {
            stop,
            resign,
            thread: Some(thread),
        }
    }

    /// Ends the watch; `Some(reason)` if it stopped the VM to hand it over.
    pub(super) fn finish(mut self) -> Option<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.resign.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Watches the Secondary; on suspicion holds output and races for g+1.
pub(super) fn primary_monitor(
    spec: &PairSpec,
    link: &link::Link,
    log: &Arc<PrimaryLog>,
    handle: &Arc<PairHandle>,
    cancel: &Arc<AtomicBool>,
    vmh: VmHandle,
) -> Monitor {
    let vm = spec.hello.vm.clone();
    let next = spec.hello.generation + 1;
    let (log, handle, cancel) = (Arc::clone(log), Arc::clone(handle), Arc::clone(cancel));
    let fencing = spec.fencing_socket.clone();
    Monitor::start(
        spec.peer.clone(),
        spec.failure_timeout,
        spec.heartbeat_socket.clone(),
        link.silence_probe(),
        move |why| {
            log.lose_secondary(&why);
            println!(
                "ftvmm: vm {vm}: secondary suspected ({why}); holding output, asking for generation {next}"
            );
            let t = Instant::now();
            match race(&handle, &fencing, &vm, next, &cancel, HOLDING) {
                Raced::Won => {
                    handle.set_role("primary (unprotected)");
                    log.go_solo();
                    println!(
                        "ftvmm: vm {vm}: won generation {next} in {} ms; primary continues without secondary",
                        t.elapsed().as_millis()
                    );
                }
                Raced::Lost => vmh.stop(),
                Raced::Cancelled => {}
            }
        },
    )
}
