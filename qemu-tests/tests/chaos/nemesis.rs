//! The chaos run's nemesis: applies a planned schedule (`chaos/plan.rs`)
//! at its times.
//!
//! A freeze thaws by itself after its `for_ms`. A slowdown (`Host::throttle`:
//! the host's QEMU stopped `chaos::slow_stopped_ms(factor)` of every 100 ms,
//! CPU starvation) lasts until the heal, the host's kill or the end, each of
//! which ends it cleanly (the throttle thread joined, QEMU continued) and
//! notes what it did. A reboot boots the killed host again into the running
//! cluster (`chaos/fleet.rs`): the host whose kill it follows, whatever a
//! gate renamed since. A gated step
//! ([`chaos::Gate`], the second pair failure with `FT_CHAOS_SEQUENTIAL=1`)
//! is applied only after the nemesis has seen the respawn's `ftvmm: vm kv:
//! protected: secondary <host>` line on a console after the first pair
//! failure, at least [`AFTER_PROTECTED_MS`] after it: that step and every
//! later one come as late as the wait made them, and from there hosts are
//! renamed to the pair the line names (the schedule predicted who wins; a
//! partition or freeze decides it at run time). Without the line within
//! [`PROTECTED_TIMEOUT`] of the first pair failure the gated step is
//! dropped, with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use qemu_tests::chaos::{slow_stopped_ms, Fault, Gate, Schedule, Step, SLOW_PERIOD_MS};
use qemu_tests::history::Recorder;

use crate::common::VM;
use crate::fleet::Fleet;
use crate::plan::costs_a_member;

/// How long after the first pair failure a gated step waits for the
/// `protected:` line of the respawn before it is dropped.
pub const PROTECTED_TIMEOUT: Duration = Duration::from_secs(60);
/// After the `protected:` line, a gated step waits at least this much more.
pub const AFTER_PROTECTED_MS: u64 = 2_000;
/// How often a gate looks at the consoles.
const POLL_MS: u64 = 250;

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
}

/// Applies the steps of `schedule` at their times on `rec`'s clock (a freeze
/// thaws by itself after `for_ms`; a gated step waits for its `protected:`
/// line, module doc), then heals everything and returns at the schedule's
/// end (its `settle_ms` after the last heal, plus any wait at a gate).
pub fn play(fleet: &mut Fleet<'_>, schedule: &Schedule, rec: &Recorder) -> Played {
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
    };
    for step in &schedule.steps {
        if let Some(gate) = &step.gate {
            if let Err(why) = n.pass(gate, step.at_ms, &schedule.hosts) {
                let note = format!("dropped {} at {} ms: {why}", step.fault, step.at_ms);
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
            if costs_a_member(fault) && self.first_failure.is_none() {
                self.first_failure = Some(Instant::now());
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
    }

    /// Waits for the `protected:` line after the first pair failure (module
    /// doc); on it, delays the steps from the gated one (planned at
    /// `planned_ms`) and renames hosts to the pair it names.
    fn pass(&mut self, gate: &Gate, planned_ms: u64, hosts: &[String]) -> Result<(), String> {
        let since = self
            .first_failure
            .ok_or("no pair failure was applied before it")?;
        let line = regex::Regex::new(&format!(r"ftvmm: vm {VM}: protected: secondary ([\w.-]+)"))
            .expect("a valid regex");
        loop {
            if let Some((primary, secondary)) = protected_after(self.fleet, &line, since) {
                let rename = gate.renaming(hosts, &primary, &secondary).ok_or(format!(
                    "the protected: line names {primary} and {secondary}, not a pair of this run"
                ))?;
                let seen = self.now_ms();
                let due = (seen + AFTER_PROTECTED_MS).max(planned_ms + self.delay_ms);
                self.delay_ms = due - planned_ms;
                let note = format!(
                    "protected again by {seen} ms: primary {primary}, secondary {secondary} \
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
                    "no protected: line within {PROTECTED_TIMEOUT:?} of the first pair failure"
                ));
            }
            let now = self.now_ms();
            self.wait_until(now + POLL_MS);
        }
    }
}

/// The pair of the last `protected:` line (`re`, capturing the Secondary's
/// host) that arrived after `since` on any console: the host it is on (the
/// Primary's) and the host it names. Every process's console: a rebooted
/// host's too.
fn protected_after(fleet: &Fleet, re: &regex::Regex, since: Instant) -> Option<(String, String)> {
    let mut last: Option<(Instant, String, String)> = None;
    for host in fleet.processes() {
        for l in host.console().lines() {
            let at = host.spawned_at() + l.at;
            let Some(c) = re.captures(&l.text).filter(|_| at > since) else {
                continue;
            };
            if last.as_ref().is_none_or(|(t, _, _)| at > *t) {
                let secondary = c[1].trim_end_matches('.').to_string();
                last = Some((at, host.name().to_string(), secondary));
            }
        }
    }
    last.map(|(_, p, s)| (p, s))
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
