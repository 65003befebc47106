//! The chaos run's nemesis: applies a planned schedule (`chaos/plan.rs`)
//! at its times.
//!
//! A freeze thaws by itself after its `for_ms`. A slowdown (`Host::throttle`:
//! the host's QEMU stopped `chaos::slow_stopped_ms(factor)` of every 100 ms,
//! CPU starvation) lasts until the heal, the host's kill or the end, each of
//! which ends it cleanly (the throttle thread joined, QEMU continued) and
//! notes what it did. A reboot boots the killed host again into the running
//! cluster (`chaos/fleet.rs`): the host whose kill it follows, whatever a
//! gate renamed since.
//!
//! A gated step ([`chaos::Gate`], the second pair failure with
//! `FT_CHAOS_SEQUENTIAL=1`) is applied only once the pair is protected again
//! after the first pair failure (`chaos::pair_watch`, read from the consoles
//! of every process): either the respawn's `ftvmm: vm kv: protected:
//! secondary <host>` line came, and the step waits at least
//! [`AFTER_PROTECTED_MS`] after it, or the first pair failure cost no member
//! (a storage fault of the Secondary's host, a freeze shorter than the
//! failure timeout: no respawn, so no such line), and at its planned time
//! no console shows a pair change, no fault that can cost a member has been
//! in force for [`quiet`], and both hosts of the pair hold their output
//! grant. The step and every later one come as late as the wait made them,
//! and from there hosts are renamed to the pair found (the schedule
//! predicted who wins; a partition or freeze decides it at run time, and a
//! failure that cost no member leaves the old pair). Without either within
//! [`PROTECTED_TIMEOUT`] of the first pair failure the gated step is
//! dropped, with a note saying why, and so is the reboot of a dropped kill.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use qemu_tests::chaos::pair_watch::{PairNow, PairWatch, Seen};
use qemu_tests::chaos::{
    costs_a_member, slow_stopped_ms, Fault, Gate, Schedule, Step, SLOW_PERIOD_MS,
};
use qemu_tests::history::Recorder;

use crate::common::VM;
use crate::fleet::Fleet;

/// How long after the first pair failure a gated step waits for the pair to
/// be protected again (module doc) before it is dropped.
pub const PROTECTED_TIMEOUT: Duration = Duration::from_secs(60);
/// After the `protected:` line, a gated step waits at least this much more.
pub const AFTER_PROTECTED_MS: u64 = 2_000;
/// How often a gate looks at the consoles.
const POLL_MS: u64 = 250;

/// How long after the last fault that can cost a member ended (a heal, a
/// thaw, a kill's instant) a pair change it caused may still first show on a
/// console: two failure timeouts of the cluster's config (`[timing]`, 1 s in
/// examples/cluster.toml). A member is lost only through a silence its peer
/// suspects or a withdrawn output grant. A silence that began before the
/// fault ended is suspected at most one failure timeout after it began; a
/// withdrawn grant shows at once as fencing's hold line, and the gate waits
/// for its release anyway (`chaos::pair_watch`). So one failure timeout
/// bounds the change; the second is margin for the member's monitor tick,
/// the serial console and a loaded machine's late TCG timers. Not a proof:
/// a change later than that shows as a pair change to the verdicts like any
/// other, the second failure then only lands on a pair still settling.
/// Gated steps come `respawn_ms` (15 s) after the first pair failure anyway,
/// so the quiet time rarely delays one.
pub fn quiet(failure_timeout_ms: u64) -> Duration {
    Duration::from_millis(2 * failure_timeout_ms)
}

/// One applied step.
#[derive(Debug, Clone)]
pub struct Applied {
    /// When it was applied (ms on the recorder's clock).
    pub at_ms: u64,
    pub what: String,
    pub error: Option<String>,
}

/// A frozen host thawed: the QMP `cont` was sent at `resume_sent` and
/// returned at `thawed`.
#[derive(Debug, Clone)]
pub struct Thaw {
    pub host: String,
    pub resume_sent: Instant,
    pub thawed: Instant,
}

/// What the nemesis did.
#[derive(Debug, Default)]
pub struct Played {
    pub applied: Vec<Applied>,
    pub thaws: Vec<Thaw>,
    /// The steps as applied: at their planned times plus any wait at a gate,
    /// hosts renamed by it; a gated step given up is left out.
    pub steps: Vec<Step>,
    /// Gates passed or given up.
    pub notes: Vec<String>,
}

/// The nemesis while it plays a schedule.
struct Nemesis<'a, 'c> {
    fleet: &'a mut Fleet<'c>,
    rec: &'a Recorder,
    played: Played,
    /// Frozen hosts and when they thaw (ms on the recorder's clock).
    frozen: BTreeMap<String, u64>,
    /// Slowed hosts.
    slowed: BTreeSet<String>,
    /// Killed hosts by their schedule name: the host the kill hit (a gate
    /// may have renamed hosts since; the reboot goes to the killed one).
    killed: BTreeMap<String, String>,
    /// When the first pair failure was applied.
    first_failure: Option<Instant>,
    /// How much later than planned the steps come, after a gate's wait.
    delay_ms: u64,
    /// Schedule host names to actual ones, from a gate on.
    rename: BTreeMap<String, String>,
    /// Every host of the run (after the first pair failure any may be a
    /// member).
    hosts: Vec<String>,
    /// Faults in force that can cost a member, but kills (a freeze, a
    /// partition, a storage fault).
    member_faults: Vec<Fault>,
    /// When the last of `member_faults` ended or the last kill came: from
    /// then on nothing that can cost a member is in force.
    settled: Option<Instant>,
    /// [`quiet`] of the cluster's failure timeout.
    quiet: Duration,
    /// Hosts (schedule names) whose gated kill was dropped: their reboot is
    /// dropped too.
    dropped_kills: BTreeSet<String>,
}

/// Applies the steps of `schedule` at their times on `rec`'s clock (a freeze
/// thaws by itself after `for_ms`; a gated step waits for its `protected:`
/// line, module doc), then heals everything and returns at the schedule's
/// end (its `settle_ms` after the last heal, plus any wait at a gate).
pub fn play(fleet: &mut Fleet<'_>, schedule: &Schedule, rec: &Recorder) -> Played {
    let failure_timeout_ms = fleet.cluster().config().timing.failure_timeout_ms;
    let mut n = Nemesis {
        fleet,
        rec,
        played: Played::default(),
        frozen: BTreeMap::new(),
        slowed: BTreeSet::new(),
        killed: BTreeMap::new(),
        first_failure: None,
        delay_ms: 0,
        rename: BTreeMap::new(),
        hosts: schedule.hosts.clone(),
        member_faults: Vec::new(),
        settled: Some(Instant::now()),
        quiet: quiet(failure_timeout_ms),
        dropped_kills: BTreeSet::new(),
    };
    for step in &schedule.steps {
        if let Some(gate) = &step.gate {
            if let Err(why) = n.pass(gate, step.at_ms, &schedule.hosts) {
                let note = format!("dropped {} at {} ms: {why}", step.fault, step.at_ms);
                eprintln!("chaos: {note}");
                n.played.notes.push(note);
                if let Fault::KillHost { host } = &step.fault {
                    n.dropped_kills.insert(host.clone());
                }
                continue;
            }
        }
        if let Fault::RebootHost { host } = &step.fault {
            if !n.killed.contains_key(host) && n.dropped_kills.remove(host) {
                let note = format!(
                    "dropped {} at {} ms: its kill was dropped at the gate",
                    step.fault, step.at_ms
                );
                eprintln!("chaos: {note}");
                n.played.notes.push(note);
                continue;
            }
        }
        let at_ms = step.at_ms + n.delay_ms;
        n.wait_until(at_ms);
        let fault = match &step.fault {
            Fault::RebootHost { host } => Fault::RebootHost {
                host: n.killed.remove(host).unwrap_or_else(|| host.clone()),
            },
            f => f.renamed(|h| n.rename.get(h).cloned().unwrap_or_else(|| h.to_string())),
        };
        if let (Fault::KillHost { host: planned }, Fault::KillHost { host }) = (&step.fault, &fault)
        {
            n.killed.insert(planned.clone(), host.clone());
        }
        n.step(&fault);
        n.played.steps.push(Step {
            at_ms,
            fault,
            gate: step.gate.clone(),
        });
    }
    n.heal();
    n.wait_until(schedule.duration_ms + n.delay_ms);
    n.played
}

impl Nemesis<'_, '_> {
    fn now_ms(&self) -> u64 {
        self.rec.now() / 1_000_000
    }

    fn record(&mut self, what: String, result: Result<(), String>) {
        let at_ms = self.now_ms();
        eprintln!(
            "chaos: [{:6.1} s] {what}{}",
            at_ms as f64 / 1000.0,
            result
                .as_ref()
                .err()
                .map_or(String::new(), |e| format!(": {e}"))
        );
        self.played.applied.push(Applied {
            at_ms,
            what,
            error: result.err(),
        });
    }

    /// Sleeps until `at_ms`, thawing frozen hosts as they come due.
    fn wait_until(&mut self, at_ms: u64) {
        loop {
            let now = self.now_ms();
            let due: Vec<String> = (self.frozen.iter())
                .filter(|(_, t)| **t <= now)
                .map(|(h, _)| h.clone())
                .collect();
            for host in due {
                self.frozen.remove(&host);
                let r = thaw(self.fleet, &host, &mut self.played);
                self.thawed(&host);
                self.record(format!("thaw {host}"), r);
            }
            if now >= at_ms {
                return;
            }
            let next = self.frozen.values().copied().min().unwrap_or(u64::MAX);
            std::thread::sleep(Duration::from_millis(next.min(at_ms) - now));
        }
    }

    fn step(&mut self, fault: &Fault) {
        let r = match fault {
            Fault::Heal => {
                self.heal();
                Ok(())
            }
            Fault::KillHost { host } => {
                // The kill ends the host's freeze and slowdown (the model's
                // rule): no thaw or throttle may reach a later process.
                self.frozen.remove(host);
                self.thawed(host);
                self.end_slow(host, "its kill");
                apply(self.fleet, fault)
            }
            Fault::RebootHost { host } => self.fleet.reboot(host).map(drop),
            Fault::SlowHost { host, factor } => {
                let stopped = Duration::from_millis(slow_stopped_ms(*factor));
                let period = Duration::from_millis(SLOW_PERIOD_MS);
                let r = (self.fleet.host(host))
                    .and_then(|h| h.throttle(stopped, period).map_err(|e| e.to_string()));
                if r.is_ok() {
                    self.slowed.insert(host.clone());
                }
                r
            }
            _ => apply(self.fleet, fault),
        };
        if r.is_ok() {
            if let Fault::FreezeHost { host, for_ms } = fault {
                self.frozen.insert(host.clone(), self.now_ms() + for_ms);
            }
            if crate::plan::costs_a_member(fault) && self.first_failure.is_none() {
                self.first_failure = Some(Instant::now());
            }
            if costs_a_member(fault, &self.hosts) {
                match fault {
                    Fault::KillHost { .. } => {
                        if self.member_faults.is_empty() {
                            self.settled = Some(Instant::now());
                        }
                    }
                    f => {
                        self.member_faults.push(f.clone());
                        self.settled = None;
                    }
                }
            }
        }
        let what = match fault {
            Fault::SlowHost { factor, .. } => format!(
                "{fault} (stopped {} of every {SLOW_PERIOD_MS} ms)",
                slow_stopped_ms(*factor)
            ),
            _ => fault.to_string(),
        };
        self.record(what, r);
    }

    /// Ends `host`'s slowdown, if any, and notes what it did.
    fn end_slow(&mut self, host: &str, by: &str) {
        if !self.slowed.remove(host) {
            return;
        }
        let stats = self.fleet.host(host).ok().and_then(|h| h.unthrottle());
        let what = match stats {
            Some(s) => format!(
                "end slow {host} by {by}: {} cycles, stopped {} ms of {} ms{}",
                s.cycles,
                s.stopped.as_millis(),
                s.lasted.as_millis(),
                if s.child_exited { " (QEMU exited)" } else { "" }
            ),
            None => format!("end slow {host} by {by}: no throttle was running"),
        };
        self.record(what, Ok(()));
    }

    /// Ends every fault but kills: FT and VM links, storage paths, freezes,
    /// slowdowns.
    fn heal(&mut self) {
        let cluster = self.fleet.cluster();
        cluster.ft.heal_all();
        cluster.vm.heal_all();
        for h in &cluster.config().hosts {
            if let Ok(p) = cluster.storage_path(&h.name) {
                p.pass();
            }
        }
        for host in std::mem::take(&mut self.frozen).into_keys() {
            if let Err(e) = thaw(self.fleet, &host, &mut self.played) {
                eprintln!("chaos: thaw {host} at the heal: {e}");
            }
        }
        for host in self.slowed.clone() {
            self.end_slow(&host, "the heal");
        }
        if !self.member_faults.is_empty() {
            self.member_faults.clear();
            self.settled = Some(Instant::now());
        }
    }

    /// `host` thawed: its freeze no longer in force.
    fn thawed(&mut self, host: &str) {
        let before = self.member_faults.len();
        (self.member_faults)
            .retain(|f| !matches!(f, Fault::FreezeHost { host: h, .. } if h == host));
        if before > 0 && self.member_faults.is_empty() {
            self.settled = Some(Instant::now());
        }
    }

    /// Waits until the pair is protected again after the first pair failure
    /// (module doc, `chaos::pair_watch`); then delays the steps from the
    /// gated one (planned at `planned_ms`) as the wait made them and renames
    /// hosts to the pair found.
    fn pass(&mut self, gate: &Gate, planned_ms: u64, hosts: &[String]) -> Result<(), String> {
        let since = self
            .first_failure
            .ok_or("no pair failure was applied before it")?;
        let watch = PairWatch::new(VM);
        let mut why = String::from("not looked yet");
        loop {
            let lines = console_lines(self.fleet);
            let seen: Vec<Seen> = (lines.iter())
                .map(|(host, at, text)| Seen {
                    host,
                    at: *at,
                    text,
                })
                .collect();
            let look = watch.look(&seen, since, self.settled, Instant::now(), self.quiet);
            let now = self.now_ms();
            let found = match look {
                PairNow::Respawned { primary, secondary } => {
                    let due = (now + AFTER_PROTECTED_MS).max(planned_ms + self.delay_ms);
                    Some((primary, secondary, due, "protected again"))
                }
                // Looked at when the step is due: what it meets.
                PairNow::Intact { primary, secondary } if now >= planned_ms + self.delay_ms => {
                    Some((
                        primary,
                        secondary,
                        now,
                        "the first pair failure cost no member",
                    ))
                }
                PairNow::Intact { .. } => None,
                PairNow::Waiting(w) => {
                    why = w;
                    None
                }
            };
            if let Some((primary, secondary, due, how)) = found {
                let rename = gate.renaming(hosts, &primary, &secondary).ok_or(format!(
                    "{how}, but the pair {primary}, {secondary} is not a pair of this run"
                ))?;
                self.delay_ms = due - planned_ms;
                let note = format!(
                    "{how} by {now} ms: primary {primary}, secondary {secondary} \
                     (planned {}, {}); steps from {planned_ms} ms come {} ms late",
                    gate.primary, gate.secondary, self.delay_ms
                );
                eprintln!("chaos: {note}");
                self.played.notes.push(note);
                self.rename = rename;
                return Ok(());
            }
            if since.elapsed() >= PROTECTED_TIMEOUT {
                return Err(format!(
                    "not protected again within {PROTECTED_TIMEOUT:?} of the first pair failure: {why}"
                ));
            }
            let now = self.now_ms();
            self.wait_until(now + POLL_MS);
        }
    }
}

/// Every console line of every process (a rebooted host's too): its host,
/// when it arrived, its text.
fn console_lines(fleet: &Fleet) -> Vec<(String, Instant, String)> {
    (fleet.processes())
        .flat_map(|host| {
            (host.console().lines().into_iter())
                .map(move |l| (host.name().to_string(), host.spawned_at() + l.at, l.text))
        })
        .collect()
}

/// Applies a fault of the hubs, the storage paths or a host's QEMU (the
/// nemesis's own steps, heal, reboot and slowdown, are [`Nemesis::step`]'s).
fn apply(fleet: &Fleet, fault: &Fault) -> Result<(), String> {
    let e = |e: qemu_tests::HarnessError| e.to_string();
    let cluster = fleet.cluster();
    match fault {
        Fault::KillHost { host } => fleet.host(host)?.kill().map_err(e),
        Fault::FreezeHost { host, .. } => fleet.host(host)?.pause().map_err(e),
        Fault::PartitionFt { a, b, one_way } => if *one_way {
            cluster.ft.cut_one_way(a, b)
        } else {
            cluster.ft.cut(a, b)
        }
        .map_err(e),
        Fault::CutStorage { host } => cluster.storage_path(host).map(|p| p.cut()).map_err(e),
        Fault::SeverStorage { host } => cluster.storage_path(host).map(|p| p.sever()).map_err(e),
        Fault::DelayStorage { host, ms } => cluster
            .storage_path(host)
            .map(|p| p.delay(Duration::from_millis(*ms)))
            .map_err(e),
        Fault::CutVmNet { host } => cluster.vm.isolate(host).map_err(e),
        Fault::SlowHost { .. } | Fault::RebootHost { .. } | Fault::Heal => {
            Err(format!("{fault}: a step of the nemesis itself"))
        }
    }
}

fn thaw(fleet: &Fleet, host: &str, played: &mut Played) -> Result<(), String> {
    let h = fleet.host(host)?;
    let resume_sent = Instant::now();
    h.resume().map_err(|e| e.to_string())?;
    played.thaws.push(Thaw {
        host: host.to_string(),
        resume_sent,
        thawed: Instant::now(),
    });
    Ok(())
}
