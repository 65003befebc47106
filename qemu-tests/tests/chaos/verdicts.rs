//! The chaos run's verdicts: linearizability of the recorded history (the
//! final GETs are ops in it, so a lost acknowledged PUT shows there), the
//! final values against the guest's on-disk log, guest output from one host
//! at a time (the emitting host switches at most once per go-live), no
//! lockstep divergence on any console, no rebooted host winning a
//! generation already won before it booted, protection again at the end,
//! and the client-visible pause and time to recovery after each fault (and
//! after each reboot, while the host rejoins).
//!
//! Consoles are read from every QEMU process of the run (`chaos/fleet.rs`):
//! a host killed and booted again has two, and a go-live or a divergence on
//! the dead one still counts. Guest frames are captured by hub port, one per
//! host name, so the emitting host is the same across its processes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use qemu_tests::chaos::{self, FaultKind, OpPoint, Schedule};
use qemu_tests::history::{self, CheckOptions, History, Outcome};
use qemu_tests::hub::CapturedFrame;
use qemu_tests::{Cluster, Host};

use crate::common::{guest_frames, in_thaw_window, VM};
use crate::fleet::Fleet;
use crate::nemesis::Thaw;

/// The checker's verdict as a report verdict.
pub fn linearizability(h: &History) -> chaos::Verdict {
    match history::check(h, &CheckOptions::default()) {
        Ok(history::Verdict::Linearizable) => chaos::Verdict::Linearizable,
        Ok(history::Verdict::NotLinearizable { key, explanation }) => {
            chaos::Verdict::NotLinearizable {
                why: format!("key {key}: {explanation}"),
            }
        }
        Ok(v @ history::Verdict::TimedOut { .. }) => chaos::Verdict::Unknown { why: v.to_string() },
        Err(e) => chaos::Verdict::Unknown {
            why: format!("history not checkable: {e}"),
        },
    }
}

/// The plot's points (ms from the run's start).
pub fn points(h: &History) -> Vec<OpPoint> {
    h.ops
        .iter()
        .map(|o| {
            let end = o.complete.unwrap_or(o.invoke);
            OpPoint {
                invoke_ms: o.invoke / 1_000_000,
                latency_ms: end.saturating_sub(o.invoke) / 1_000_000,
                outcome: match o.outcome {
                    Outcome::Written | Outcome::Read(_) => chaos::Outcome::Ok,
                    Outcome::Fail => chaos::Outcome::Fail,
                    Outcome::Unknown | Outcome::Pending => chaos::Outcome::Unknown,
                },
            }
        })
        .collect()
}

/// Console findings, `host [s] text`: go-live lines (a Secondary taking
/// over: the emitting host may switch), divergence lines, and the other
/// generation and handover lines (a Primary going on solo or handing over,
/// a loser halting) for the notes.
pub struct Consoles {
    pub golives: Vec<String>,
    /// `won generation <g> to start` after the first start (g > 1): the VM
    /// booted again from its disk. The line for people, and as parsed.
    pub cold_starts: Vec<(String, chaos::cold::ColdStart)>,
    pub divergences: Vec<String>,
    pub generations: Vec<String>,
    /// The generation lines by host name on the run's clock, for judging a
    /// cold start ([`chaos::cold::judge`]).
    pub said: Vec<chaos::cold::Said>,
}

/// The consoles' findings; `t0` is the run clock's zero (the recorder's
/// start), to place console lines among the schedule's steps.
pub fn consoles(fleet: &Fleet, t0: Instant) -> Consoles {
    let live = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: won generation \d+; live as primary"
    ))
    .expect("a valid regex");
    let generation = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: .*(won generation|lost generation|superseded|deposed|halting|handing|handed|suspected|deferring the race|racing for|asking for generation)|ftvmm: lockstep: primary .* hands over"
    ))
    .expect("a valid regex");
    let mut c = Consoles {
        golives: Vec::new(),
        cold_starts: Vec::new(),
        divergences: Vec::new(),
        generations: Vec::new(),
        said: Vec::new(),
    };
    for host in fleet.processes() {
        let name = fleet.label(host);
        for l in host.console().lines() {
            let line = format!("{name} [{:.3}] {}", l.at.as_secs_f64(), l.text);
            let at_ms = (host.spawned_at() + l.at)
                .saturating_duration_since(t0)
                .as_millis() as u64;
            if let Some(cold) = chaos::cold::parse(host.name(), at_ms, VM, &l.text)
                .filter(|cold| cold.generation > 1)
            {
                c.cold_starts.push((line.clone(), cold));
            }
            if live.is_match(&l.text) {
                c.golives.push(line);
            } else if l.text.contains("lockstep divergence") {
                c.divergences.push(line);
            } else if generation.is_match(&l.text) {
                c.said.push(chaos::cold::Said {
                    host: host.name().to_string(),
                    at_ms,
                    text: l.text.clone(),
                });
                c.generations.push(line);
            }
        }
    }
    c
}

/// Switches of the host emitting guest frames, leaving out the frames a
/// thawed host's NIC held at its freeze (they leave within
/// `common::THAW_WINDOW` of the QMP `cont`; `common::no_overlap_but_queued`
/// explains why they are allowed). Returns (switches, frames left out).
pub fn guest_switches(frames: &[CapturedFrame], thaws: &[Thaw]) -> (usize, usize) {
    let held = |f: &CapturedFrame| {
        thaws
            .iter()
            .any(|t| f.from == t.host && in_thaw_window(f.at, t.resume_sent, t.thawed))
    };
    let guest = guest_frames(frames);
    let kept: Vec<&str> = guest
        .iter()
        .filter(|f| !held(f))
        .map(|f| f.from.as_str())
        .collect();
    let switches = kept.windows(2).filter(|w| w[0] != w[1]).count();
    (switches, guest.len() - kept.len())
}

/// Final values that the on-disk log does not hold, and final GETs that got
/// no answer (the VM no longer serves: listed as lost, since whatever was
/// acknowledged is no longer readable).
pub fn final_values_on_disk(
    cluster: &Cluster,
    finals: &[(String, Result<Option<String>, String>)],
) -> Vec<String> {
    let mut lost = Vec::new();
    let (table, end): (BTreeMap<String, String>, String) =
        match qemu_tests::kv::on_disk(cluster.shared_storage(), cluster.config(), VM) {
            Ok(t) => t,
            Err(e) => return vec![format!("cannot read the on-disk log: {e}")],
        };
    for (key, got) in finals {
        match got {
            Err(e) => lost.push(format!("final GET {key}: {e}")),
            Ok(v) if table.get(key) != v.as_ref() => lost.push(format!(
                "{key}: final GET {v:?}, on-disk log {:?} ({end})",
                table.get(key)
            )),
            Ok(_) => {}
        }
    }
    lost
}

/// Durations by fault kind, as the report holds them.
pub type ByKind = Vec<(FaultKind, u64)>;

/// A gap between replies shorter than this is service, not an outage (the
/// configured failure timeout of examples/cluster.toml).
pub const OUTAGE_MS: u64 = 1_000;

/// Per injected fault (and per reboot, over `Schedule::reboot_windows`,
/// counting only gaps that open after it: a rejoin's stop-and-copy, not the
/// outage of the kill before):
/// the pause, the longest gap between replies (any
/// client) from the last reply before the fault until its window's end
/// (`Schedule::windows`) plus [`OUTAGE_MS`], cut at the next fault's start
/// (if no reply came by then, until the first reply after); and the time to
/// recovery, from the fault to the reply that ended that gap, when the gap
/// was an outage (>= [`OUTAGE_MS`]), else 0 (served throughout).
pub fn pauses(h: &History, schedule: &Schedule) -> (ByKind, ByKind) {
    let mut replies: Vec<u64> = h
        .ops
        .iter()
        .filter(|o| {
            matches!(
                o.outcome,
                Outcome::Written | Outcome::Read(_) | Outcome::Fail
            )
        })
        .filter_map(|o| o.complete.map(|c| c / 1_000_000))
        .collect();
    replies.sort_unstable();
    let mut windows = schedule.windows();
    windows.extend(schedule.reboot_windows());
    let mut starts: Vec<u64> = windows.iter().map(|w| w.start_ms).collect();
    starts.sort_unstable();
    let (mut pauses, mut recoveries) = (Vec::new(), Vec::new());
    for w in &windows {
        let start = w.start_ms;
        let next = starts
            .iter()
            .copied()
            .find(|t| *t > start)
            .unwrap_or(u64::MAX);
        let until = next.min(w.end_ms.max(start) + OUTAGE_MS);
        // A reboot pauses nothing when it comes: a gap already open then
        // belongs to the fault before, so its gaps count from its first
        // reply on.
        let rejoin = w.fault.kind() == FaultKind::RebootHost;
        let after: Vec<u64> = replies.iter().copied().filter(|r| *r > start).collect();
        let mut prev = match rejoin {
            true => after.first().copied().unwrap_or(start),
            false => (replies.iter().rev().copied())
                .find(|r| *r <= start)
                .unwrap_or(start),
        };
        let mut best: Option<(u64, u64)> = None;
        for r in after.iter().copied().skip(usize::from(rejoin)) {
            if r > until && best.is_some() {
                break;
            }
            let gap = r - prev;
            if best.is_none_or(|(g, _)| gap > g) {
                best = Some((gap, r));
            }
            prev = r;
        }
        if let Some((gap, at)) = best {
            let kind = w.fault.kind();
            pauses.push((kind, gap));
            recoveries.push((kind, if gap >= OUTAGE_MS { at - start } else { 0 }));
        }
    }
    (pauses, recoveries)
}

/// The generations `process` printed `won generation N` for, with when.
fn wins(process: &Host) -> Vec<(u64, std::time::Instant)> {
    let won = regex::Regex::new(&format!(r"ftvmm: vm {VM}: won generation (\d+)"))
        .expect("a valid regex");
    (process.console().lines().iter())
        .filter_map(|l| {
            let g = won.captures(&l.text)?[1].parse::<u64>().ok()?;
            Some((g, process.spawned_at() + l.at))
        })
        .collect()
}

/// A rebooted host must never win a generation that some process had
/// already won before it booted (it would go live beside that generation's
/// owner, or with a stale history): like `common::respawn::never_won_up_to`,
/// for every reboot of the run. Each finding is a dual-live.
pub fn stale_wins(fleet: &Fleet) -> Vec<String> {
    let all: Vec<(u64, std::time::Instant)> = fleet.processes().flat_map(wins).collect();
    let mut found = Vec::new();
    for r in fleet.reboots() {
        let booted = r.host.spawned_at();
        let before = (all.iter())
            .filter(|(_, at)| *at < booted)
            .map(|(g, _)| *g)
            .max()
            .unwrap_or(0);
        for (g, _) in wins(&r.host).into_iter().filter(|(g, _)| *g <= before) {
            found.push(format!(
                "{} won generation {g}, but generation {before} was won before it booted",
                fleet.label(&r.host)
            ));
        }
    }
    found
}

/// Protection after the heal (issue 12, with respawn): when at least two
/// hosts run, the owner of the highest generation won (by the `won
/// generation` lines of every process) must be protected again: a
/// `protected:` line of its keeper, or the power-on pairing of generation 1,
/// after its win and not undone by a later `not protected:` line, within `wait` of the later of now (the end) and the first
/// `appliance ready` of another running host (a host rebooted late boots
/// first: it gets `boot` for that from its spawn). `None` when it is, or
/// when fewer than two hosts run (no host is eligible); else why not.
pub fn unprotected_at_end(fleet: &Fleet, wait: Duration, boot: Duration) -> Option<String> {
    let start = Instant::now();
    let ready = |p: &Host| {
        let line = format!("appliance ready: host={}", p.name());
        (p.console().lines().iter())
            .find(|l| l.text.contains(&line))
            .map(|l| p.spawned_at() + l.at)
    };
    loop {
        let running: Vec<&Host> = (fleet.current().into_iter())
            .filter(|h| h.is_running())
            .collect();
        if running.len() < 2 {
            return None;
        }
        let owner = (fleet.processes())
            .flat_map(|p| wins(p).into_iter().map(move |(g, at)| (g, at, p)))
            .max_by_key(|(g, at, _)| (*g, *at));
        let Some((g, won_at, owner)) = owner else {
            return Some("no host ever won a generation".into());
        };
        let name = fleet.label(owner);
        // The last word after the win counts: a `not protected:` line (a
        // Secondary whose host cannot renew its storage lease could not take
        // over) undoes an earlier `protected:`.
        let mut protected = false;
        for l in owner.console().lines() {
            if owner.spawned_at() + l.at < won_at {
                continue;
            }
            if l.text
                .contains(&format!("ftvmm: vm {VM}: protected: secondary "))
                || (g == 1
                    && l.text
                        .contains(&format!("ftvmm: vm {VM}: paired with secondary")))
            {
                protected = true;
            } else if l.text.contains(&format!("ftvmm: vm {VM}: not protected: ")) {
                protected = false;
            }
        }
        if protected {
            return None;
        }
        let others: Vec<&Host> = (running.iter().copied())
            .filter(|h| !std::ptr::eq(*h, owner))
            .collect();
        let first_ready = others.iter().filter_map(|h| ready(h)).min();
        let deadline = match first_ready {
            Some(t) => (start + wait).max(t + wait),
            // Still booting: the last to spawn gets `boot` to be ready.
            None => (others.iter().map(|h| h.spawned_at()).max())
                .map_or(start, |t| t + boot + wait)
                .max(start + wait),
        };
        if !owner.is_running() || Instant::now() >= deadline {
            let why = match first_ready {
                Some(_) => format!("no protected: line after its win within {wait:?} of the end or of another host's ready line"),
                None => format!("no other running host became ready within {boot:?} of its boot"),
            };
            return Some(format!(
                "{name} owns generation {g} with {} hosts running{}; {why}",
                running.len(),
                if owner.is_running() {
                    ""
                } else {
                    " (its QEMU is gone)"
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
