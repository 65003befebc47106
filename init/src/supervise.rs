//! Supervision policy as a pure state machine: which daemon to (re)start when,
//! with exponential back-off. Time is passed in, so the policy is tested
//! without clocks; init's main loop feeds it real `Instant`s.

use std::time::{Duration, Instant};

/// Back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Delay before the first restart after a quick failure.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// A daemon that ran at least this long is considered healthy again: the
    /// next delay starts over at `initial`.
    pub reset_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet: due at once.
    Pending,
    Running {
        pid: i32,
        since: Instant,
    },
    /// Exited; restart at `at`.
    Backoff {
        at: Instant,
    },
    /// Shutting down: never restart.
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub name: String,
    pub phase: Phase,
    /// Restarts so far (the `#k` on the console).
    pub restarts: u32,
    /// Consecutive quick failures; sets the delay.
    streak: u32,
}

/// What the console reports when a daemon exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPlan {
    pub name: String,
    /// Restart number (1 for the first restart).
    pub restart: u32,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    policy: Policy,
    daemons: Vec<Daemon>,
}

impl Supervisor {
    /// Daemons in start order.
    pub fn new(policy: Policy, names: &[&str]) -> Self {
        let daemons = names
            .iter()
            .map(|n| Daemon {
                name: n.to_string(),
                phase: Phase::Pending,
                restarts: 0,
                streak: 0,
            })
            .collect();
        Supervisor { policy, daemons }
    }

    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// Names of daemons that should be started now.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.daemons
            .iter()
            .filter(|d| match d.phase {
                Phase::Pending => true,
                Phase::Backoff { at } => at <= now,
                _ => false,
            })
            .map(|d| d.name.clone())
            .collect()
    }

    /// The earliest pending restart, for the main loop's sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.daemons
            .iter()
            .filter_map(|d| match d.phase {
                Phase::Backoff { at } => Some(at),
                _ => None,
            })
            .min()
    }

    pub fn started(&mut self, name: &str, pid: i32, now: Instant) {
        if let Some(d) = self.daemons.iter_mut().find(|d| d.name == name) {
            d.phase = Phase::Running { pid, since: now };
        }
    }

    /// A spawn attempt failed: treat it like an instant exit.
    pub fn spawn_failed(&mut self, name: &str, now: Instant) -> Option<ExitPlan> {
        let policy = self.policy;
        let d = self.daemons.iter_mut().find(|d| d.name == name)?;
        if d.phase == Phase::Stopped {
            return None;
        }
        Some(plan_restart(d, policy, now, Duration::ZERO))
    }

    /// Which daemon runs as `pid`.
    pub fn name_of(&self, pid: i32) -> Option<&str> {
        self.daemons.iter().find_map(|d| match d.phase {
            Phase::Running { pid: p, .. } if p == pid => Some(d.name.as_str()),
            _ => None,
        })
    }

    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.daemons.iter().find_map(|d| match d.phase {
            Phase::Running { pid, .. } if d.name == name && pid > 0 => Some(pid),
            _ => None,
        })
    }

    /// A process exited. Returns the restart plan if it was one of ours and we
    /// are not shutting down.
    pub fn exited(&mut self, pid: i32, now: Instant) -> Option<ExitPlan> {
        let policy = self.policy;
        let d = self
            .daemons
            .iter_mut()
            .find(|d| matches!(d.phase, Phase::Running { pid: p, .. } if p == pid))?;
        let Phase::Running { since, .. } = d.phase else {
            return None;
        };
        Some(plan_restart(
            d,
            policy,
            now,
            now.saturating_duration_since(since),
        ))
    }

    /// Stop restarting anything (shutdown). Returns the running pids in start order.
    pub fn stop_all(&mut self) -> Vec<(String, i32)> {
        let mut running = Vec::new();
        for d in &mut self.daemons {
            if let Phase::Running { pid, .. } = d.phase {
                if pid > 0 {
                    running.push((d.name.clone(), pid));
                }
            }
            d.phase = Phase::Stopped;
        }
        running
    }
}

fn plan_restart(d: &mut Daemon, policy: Policy, now: Instant, ran: Duration) -> ExitPlan {
    if ran >= policy.reset_after {
        d.streak = 0;
    }
    let factor = 1u32.checked_shl(d.streak).unwrap_or(u32::MAX);
    let delay = policy
        .initial
        .checked_mul(factor)
        .unwrap_or(policy.max)
        .min(policy.max);
    d.streak = d.streak.saturating_add(1);
    d.restarts = d.restarts.saturating_add(1);
    d.phase = Phase::Backoff { at: now + delay };
    ExitPlan {
        name: d.name.clone(),
        restart: d.restarts,
        delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn all_daemons_are_due_at_start_and_not_after_starting() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Policy::default(), &["ftvmm", "heartbeat", "fencing"]);
        assert_eq!(s.due(t0), ["ftvmm", "heartbeat", "fencing"]);
        s.started("ftvmm", 10, t0);
        s.started("heartbeat", 11, t0);
        assert_eq!(s.due(t0), ["fencing"]);
        assert_eq!(s.name_of(11), Some("heartbeat"));
        assert_eq!(s.pid_of("ftvmm"), Some(10));
    }

    #[test]
    fn quick_failures_double_the_delay_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Policy::default(), &["fencing"]);
        let mut now = t0;
        let mut delays = Vec::new();
        for pid in 1..=10 {
            s.started("fencing", pid, now);
            now += ms(5);
            let plan = s.exited(pid, now).unwrap();
            assert_eq!(plan.restart, pid as u32);
            delays.push(plan.delay.as_millis());
            assert!(s.due(now + plan.delay - ms(1)).is_empty());
            now += plan.delay;
            assert_eq!(s.due(now), ["fencing"]);
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
    }

    #[test]
    fn a_long_run_resets_the_backoff_but_not_the_restart_count() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Policy::default(), &["heartbeat"]);
        s.started("heartbeat", 1, t0);
        assert_eq!(s.exited(1, t0 + ms(1)).unwrap().delay, ms(100));
        s.started("heartbeat", 2, t0 + ms(200));
        assert_eq!(s.exited(2, t0 + ms(300)).unwrap().delay, ms(200));
        s.started("heartbeat", 3, t0 + ms(600));
        let plan = s.exited(3, t0 + ms(600) + Duration::from_secs(61)).unwrap();
        assert_eq!(plan.delay, ms(100));
        assert_eq!(plan.restart, 3);
    }

    #[test]
    fn unknown_pids_and_stopped_daemons_are_not_restarted() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Policy::default(), &["ftvmm", "fencing"]);
        s.started("ftvmm", 7, t0);
        s.started("fencing", 8, t0);
        assert_eq!(s.exited(99, t0), None, "an orphan is not ours");
        assert_eq!(
            s.stop_all(),
            [("ftvmm".to_string(), 7), ("fencing".to_string(), 8)]
        );
        assert_eq!(s.exited(7, t0), None);
        assert!(s.due(t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_failed_spawn_is_retried_with_backoff() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Policy::default(), &["ftvmm"]);
        let plan = s.spawn_failed("ftvmm", t0).unwrap();
        assert_eq!(plan.delay, ms(100));
        assert_eq!(s.next_deadline(), Some(t0 + ms(100)));
    }
}
