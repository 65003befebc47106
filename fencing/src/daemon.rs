//! The daemon's background threads: the lease renewer, the guard loop
//! (watchdog feeding) and the granter (the level-triggered `OutputGrant` to
//! ftvmm, answered with `Running`). `main.rs` starts them; tests run them
//! against a failing block I/O and a fake ftvmm.
//!
//! # Rules
//!
//! - Grants are sent one at a time (`Shared::grant_lock`), each computed from
//!   the guard's state right before it is sent: a grant withdrawn by the
//!   renewer (a freeze) can never be overtaken by an older `ok` one.
//! - Nothing that talks to ftvmm runs on the renewer's thread: a hung ftvmm
//!   must not stop the lease renewals.
//! - The renewer, the guard loop and the granter never wait for the console
//!   (`config_schema::console::say`): a slow serial console held them up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use config_schema::clock::BootInstant;
use config_schema::console::say;
use config_schema::ctl::{self, Request, Response};

use crate::agent::Agent;
use crate::guard::Guard;
use crate::lease::WATCHDOG_TIMEOUT_S;
use crate::renew::Deposed;
use crate::watchdog::{DevWatchdog, Watchdog};

/// The watchdog as opened (or not) by the guard loop.
#[derive(Default)]
pub struct WatchdogSlot {
    pub dev: Option<Box<dyn Watchdog>>,
    pub state: String,
    pub feeds: u64,
    pub timeout_s: Option<u32>,
    /// The latest the watchdog resets the host after its last feed (the
    /// timeout times the expiries it takes, `config_schema::watchdog`).
    pub reset_bound_s: Option<u32>,
    /// The armed watchdog resets later than the planned `W` (the reason):
    /// the lease arithmetic does not hold, so `Acquire` is refused unless the
    /// config accepts it (`fencing::watchdog::slow_refusal`).
    pub over_plan: Option<String>,
    /// ftvmm asked for a reset (`Request::ResetHost`): never fed again.
    pub reset_requested: Option<String>,
}

/// The watchdog slot's state before the guard loop opened it.
const NOT_OPENED: &str = "not opened yet";

/// `Request::ResetHost`: from now on the watchdog is never fed, so the host
/// resets within its timeout. Without a watchdog nothing can reset the host;
/// that is said loudly (the output hold stays ftvmm's business).
pub fn request_reset(shared: &Shared, reason: &str) {
    let mut w = shared.watchdog.lock().expect("lock");
    if w.reset_requested.is_none() {
        match w.reset_bound_s {
            Some(t) => println!(
                "fencing: reset requested ({reason}); no longer feeding the watchdog, the host resets within {t} s"
            ),
            None if w.dev.is_some() => println!(
                "fencing: reset requested ({reason}); no longer feeding the watchdog"
            ),
            None if w.state == NOT_OPENED => println!(
                "fencing: reset requested ({reason}); arming the watchdog without feeding it"
            ),
            None => println!(
                "fencing: reset requested ({reason}) but there is no watchdog to reset this host"
            ),
        }
        w.reset_requested = Some(reason.to_string());
        config_schema::events::record(
            config_schema::events::EventKind::Fencing,
            None,
            None,
            &format!("fencing: reset of this host requested ({reason})"),
        );
    }
}

/// State shared by the daemon's threads.
pub struct Shared {
    /// The agent, or why there is none yet (no device, region too small...).
    pub agent: Mutex<Result<Arc<Agent>, String>>,
    pub guard: Mutex<Guard>,
    pub watchdog: Mutex<WatchdogSlot>,
    /// Held while one grant is computed, sent and answered; how slowly
    /// ftvmm answered lately.
    pub grant_lock: Mutex<AnswerTimes>,
}

/// ftvmm's slow answers to grants, said at most every [`AnswerTimes::EVERY`]:
/// a hold must be confirmed within `confirm` of a grant's sending, so answers
/// that take half of that are the first sign of a host about to be reset by
/// its own watchdog (chaos seed 111: a host slowed to a quarter).
#[derive(Debug, Default)]
pub struct AnswerTimes {
    worst: std::time::Duration,
    said_at: Option<BootInstant>,
}

impl AnswerTimes {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    /// An answer that took `took`, at `now`; the line to say, if any.
    pub fn note(
        &mut self,
        took: std::time::Duration,
        now: BootInstant,
        confirm: std::time::Duration,
    ) -> Option<String> {
        if took < confirm / 2 {
            return None;
        }
        self.worst = self.worst.max(took);
        if self
            .said_at
            .is_some_and(|t| now.saturating_duration_since(t) < Self::EVERY)
        {
            return None;
        }
        self.said_at = Some(now);
        let worst = std::mem::take(&mut self.worst);
        Some(format!(
            "fencing: ftvmm took {} ms to answer an output grant (the slowest in {} s; a hold \
             must be confirmed within {} ms)",
            worst.as_millis(),
            Self::EVERY.as_secs(),
            confirm.as_millis()
        ))
    }
}

impl Shared {
    pub fn new(guard: Guard) -> Self {
        Shared {
            agent: Mutex::new(Err("starting".into())),
            guard: Mutex::new(guard),
            watchdog: Mutex::new(WatchdogSlot {
                state: NOT_OPENED.into(),
                ..WatchdogSlot::default()
            }),
            grant_lock: Mutex::new(AnswerTimes::default()),
        }
    }
}

/// Renews the own lease every `renew` interval, forever.
pub fn renewer(agent: Arc<Agent>, shared: Arc<Shared>, ftvmm: PathBuf) {
    // When the last renewal's own steps ended, and when the next was due.
    let mut last: Option<(BootInstant, BootInstant)> = None;
    loop {
        let issued = BootInstant::now();
        // Time between renewals that no renewal's own steps account for
        // (`renew_once` says those): this thread held up elsewhere (the
        // guard's lock, the console, the scheduler).
        if let Some((done, due)) = last {
            let late = issued.saturating_duration_since(due.max(done));
            if late >= agent.timing.timeout / 4 {
                say(format!(
                    "fencing: lease renewal started {} ms late, held up outside the renewal",
                    late.as_millis()
                ));
            }
        }
        let r = agent.renew_once(issued);
        last = Some((BootInstant::now(), issued + agent.timing.renew));
        for l in r.lines.iter().cloned() {
            say(l);
        }
        {
            let mut g = shared.guard.lock().expect("lock");
            if r.result.is_ok() {
                g.renewed(issued);
            }
            g.withhold(r.withhold.clone());
        }
        if let Some(why) = &r.preempted {
            // docs/design.md §3 item 5: a host preempted at the storage
            // must reboot to join again with a new key.
            request_reset(
                &shared,
                &format!("this host was preempted at the storage: {why}"),
            );
        }
        if r.frozen || r.newly_preempted {
            // Withdraw at once, not at the next grant period.
            let (a, s, f) = (Arc::clone(&agent), Arc::clone(&shared), ftvmm.clone());
            std::thread::spawn(move || send_grant(&a, &s, &f));
        }
        for d in r.deposed {
            let f = ftvmm.clone();
            std::thread::spawn(move || send_deposed(&f, d));
        }
        let next = issued + agent.timing.renew;
        std::thread::sleep(next.saturating_duration_since(BootInstant::now()));
    }
}

/// Sends one `OutputGrant` computed now, and takes ftvmm's answer.
pub fn send_grant(agent: &Agent, shared: &Shared, ftvmm: &Path) {
    let mut one_at_a_time = shared.grant_lock.lock().expect("lock");
    let sent_at = BootInstant::now();
    let grant = shared.guard.lock().expect("lock").grant(sent_at);
    let epoch = agent.grant_sent();
    let req = Request::OutputGrant {
        ok: grant.ok,
        valid_ms: grant.valid_ms,
        reason: grant.reason.clone(),
    };
    let answer = match ctl::query(ftvmm, &req) {
        Ok(Response::Running { vms }) => {
            if let Some(l) = agent.on_running(&vms, epoch) {
                tracing::warn!("{l}");
            }
            Ok(())
        }
        Ok(other) => Err(format!("answered {other:?}")),
        Err(e) => Err(e.to_string()),
    };
    let now = BootInstant::now();
    if answer.is_ok() {
        let took = now.saturating_duration_since(sent_at);
        if let Some(l) = one_at_a_time.note(took, now, agent.timing.confirm) {
            say(l);
        }
    }
    let lines = shared
        .guard
        .lock()
        .expect("lock")
        .on_answer(&grant, sent_at, answer);
    for l in lines {
        say(l);
    }
}

/// Sends grants every grant period, forever.
pub fn granter(agent: Arc<Agent>, shared: Arc<Shared>, ftvmm: PathBuf) {
    loop {
        let started = BootInstant::now();
        send_grant(&agent, &shared, &ftvmm);
        let next = started + agent.timing.grant_period;
        std::thread::sleep(next.saturating_duration_since(BootInstant::now()));
    }
}

fn send_deposed(ftvmm: &Path, d: Deposed) {
    let req = Request::Deposed {
        vm: d.vm.clone(),
        generation: d.generation,
        by: d.by.clone(),
    };
    match ctl::query(ftvmm, &req) {
        Ok(Response::Ok) => {}
        other => tracing::warn!(
            "fencing: ftvmm did not take Deposed for vm {} (generation {} by {}): {other:?}",
            d.vm,
            d.generation,
            d.by
        ),
    }
}

fn open_watchdog(path: &Path, slot: &mut WatchdogSlot) {
    if !path.exists() {
        slot.state = format!("absent ({})", path.display());
        println!(
            "fencing: no watchdog at {}; a hung host will not be reset",
            path.display()
        );
        return;
    }
    // A TCO resets at the second expiry of its timer (config_schema's
    // `expiries_to_reset`): ask for the timeout whose last expiry still
    // falls within the planned W, and say plainly when none does.
    let identity = config_schema::watchdog::identity_of(Path::new("/"), path).unwrap_or_default();
    let expiries = config_schema::watchdog::expiries_to_reset(&identity);
    let requests = config_schema::watchdog::timeout_requests(WATCHDOG_TIMEOUT_S, expiries);
    match DevWatchdog::open_asking(path, &requests) {
        Ok(w) => {
            slot.timeout_s = w.timeout_s;
            slot.state = "armed".into();
            match w.timeout_s {
                Some(t) => {
                    let bound = config_schema::watchdog::reset_bound_s(t, expiries);
                    slot.reset_bound_s = Some(bound);
                    println!("{}", armed_line(path, t, expiries));
                    if bound > WATCHDOG_TIMEOUT_S {
                        slot.state = format!(
                            "armed; resets up to {bound} s after the last feed, plan {WATCHDOG_TIMEOUT_S} s"
                        );
                        slot.over_plan = Some(format!(
                            "the watchdog {} resets up to {bound} s after its last feed \
                             (timeout {t} s, {expiries} expiries), later than the planned \
                             {WATCHDOG_TIMEOUT_S} s the lease timeout counts on",
                            path.display()
                        ));
                    }
                }
                None => println!(
                    "fencing: watchdog {} armed; it refused WDIOC_SETTIMEOUT, its own timeout applies",
                    path.display()
                ),
            }
            slot.dev = Some(Box::new(w));
        }
        Err(e) => {
            slot.state = format!("cannot open: {e}");
            println!("fencing: cannot open watchdog {}: {e}", path.display());
        }
    }
}

/// The console line of an armed watchdog: its timeout and, when it takes
/// more than one expiry, the latest reset that implies (`resets up to N s`,
/// which the server-hardware test reads), and whether that fits the plan.
fn armed_line(path: &Path, timeout_s: u32, expiries: u32) -> String {
    let bound = config_schema::watchdog::reset_bound_s(timeout_s, expiries);
    let dev = path.display();
    if bound > WATCHDOG_TIMEOUT_S {
        format!(
            "fencing: watchdog {dev} armed, but it resets up to {bound} s after its last feed \
             (timeout {timeout_s} s, {expiries} expiries), not within the planned \
             {WATCHDOG_TIMEOUT_S} s: the lease arithmetic does not hold; this host wins no \
             generation unless the signed config sets [cluster] accept_soft_watchdog = true"
        )
    } else if expiries > 1 {
        format!(
            "fencing: watchdog {dev} armed, timeout {timeout_s} s; it resets up to {bound} s after \
             its last feed ({expiries} expiries), within the planned {WATCHDOG_TIMEOUT_S} s"
        )
    } else {
        format!("fencing: watchdog {dev} armed, timeout {timeout_s} s")
    }
}

/// Ticks the guard every grant period: opens the watchdog after the first
/// renewal and feeds it while the guard says so, forever.
pub fn guard_loop(agent: Arc<Agent>, shared: Arc<Shared>, watchdog: PathBuf) {
    let mut opened = false;
    loop {
        std::thread::sleep(agent.timing.grant_period);
        let reset = shared
            .watchdog
            .lock()
            .expect("lock")
            .reset_requested
            .is_some();
        if !opened && (agent.renewals() > 0 || reset) {
            // Armed only once the own lease works: a host without storage at
            // boot keeps running (holding nothing) instead of reset-looping;
            // or to carry out a reset asked for before that.
            opened = true;
            open_watchdog(&watchdog, &mut shared.watchdog.lock().expect("lock"));
        }
        let actions = shared.guard.lock().expect("lock").tick(BootInstant::now());
        // Never wait for the console before feeding the watchdog.
        for l in actions.say.iter().cloned() {
            say(l);
        }
        let mut w = shared.watchdog.lock().expect("lock");
        let feed = actions.feed && w.reset_requested.is_none();
        if let (true, Some(dev)) = (feed, w.dev.as_mut()) {
            match dev.feed() {
                Ok(()) => w.feeds += 1,
                Err(e) => tracing::warn!("fencing: feeding the watchdog failed: {e}"),
            }
        }
        if w.dev.is_some() {
            w.state = if feed { "fed" } else { "starving" }.into();
        }
    }
}

/// Starts the renewer, the granter and the guard loop for `agent`.
pub fn start(agent: Arc<Agent>, shared: Arc<Shared>, watchdog: PathBuf, ftvmm: PathBuf) {
    let (a, s, f) = (Arc::clone(&agent), Arc::clone(&shared), ftvmm.clone());
    std::thread::spawn(move || renewer(a, s, f));
    let (a, s) = (Arc::clone(&agent), Arc::clone(&shared));
    std::thread::spawn(move || granter(a, s, ftvmm));
    std::thread::spawn(move || guard_loop(agent, shared, watchdog));
}

#[cfg(test)]
mod tests {
    #[test]
    fn slow_grant_answers_are_said_at_most_every_five_seconds_with_the_worst() {
        use super::AnswerTimes;
        use config_schema::clock::BootInstant;
        use std::time::Duration;
        let ms = Duration::from_millis;
        let t0 = BootInstant::now();
        let confirm = ms(500);
        let mut a = AnswerTimes::default();
        assert_eq!(a.note(ms(249), t0, confirm), None, "under half of confirm");
        let first = a.note(ms(260), t0, confirm).unwrap();
        assert!(
            first.starts_with("fencing: ftvmm took 260 ms to answer"),
            "{first}"
        );
        assert!(
            first.ends_with("must be confirmed within 500 ms)"),
            "{first}"
        );
        assert_eq!(a.note(ms(700), t0 + ms(1_000), confirm), None);
        assert_eq!(a.note(ms(300), t0 + ms(4_000), confirm), None);
        let next = a.note(ms(280), t0 + ms(5_000), confirm).unwrap();
        assert!(
            next.starts_with("fencing: ftvmm took 700 ms"),
            "the worst: {next}"
        );
        assert_eq!(a.note(ms(100), t0 + ms(20_000), confirm), None);
    }

    use super::*;

    fn bound_in(line: &str) -> Option<u32> {
        line.split("resets up to ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    #[test]
    fn the_armed_line_announces_the_reset_a_tco_really_gives() {
        let dev = Path::new("/dev/watchdog0");
        // i6300esb / softdog: one expiry, the planned W itself.
        let one = armed_line(dev, WATCHDOG_TIMEOUT_S, 1);
        assert_eq!(
            one,
            format!("fencing: watchdog /dev/watchdog0 armed, timeout {WATCHDOG_TIMEOUT_S} s")
        );
        // A TCO at W/2 resets at its second expiry: within the plan, said so.
        let tco = armed_line(dev, WATCHDOG_TIMEOUT_S / 2, 2);
        assert_eq!(bound_in(&tco), Some(WATCHDOG_TIMEOUT_S / 2 * 2), "{tco}");
        assert!(tco.contains("within the planned"), "{tco}");
        // A TCO that refused W/2 and took more: over the plan, go-live refused.
        let slow = armed_line(dev, WATCHDOG_TIMEOUT_S / 2 + 1, 2);
        assert_eq!(
            bound_in(&slow),
            Some((WATCHDOG_TIMEOUT_S / 2 + 1) * 2),
            "{slow}"
        );
        assert!(
            slow.contains("the lease arithmetic does not hold"),
            "{slow}"
        );
        assert!(slow.contains("wins no generation"), "{slow}");
    }
}
