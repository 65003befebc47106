//! The guard: the level-triggered output grant to ftvmm and the watchdog
//! feeding policy (docs/design.md §2), as pure logic over times the caller
//! passes in.
//!
//! # Rules
//!
//! - Every grant period the daemon sends ftvmm [`Guard::grant`]:
//!   `OutputGrant { ok, valid_ms }`. `ok` only while the own lease is fresh
//!   (its last successful renewal was *issued* less than `hold_after` ago) and
//!   nothing withholds it (a detected freeze, the slot not held). An `ok`
//!   grant is never valid past the moment the lease stops being fresh:
//!   `valid_ms = min(grant_valid, last_ok + hold_after - now)`.
//! - ftvmm answers `Running` once the granted state is in force; an answer to
//!   an `ok: false` grant sent less than `confirm` ago, with no `ok` grant
//!   sent after it, confirms that ftvmm holds (level-triggered: an ftvmm that
//!   stops answering stops confirming).
//! - The watchdog is fed while the lease is fresh, or ftvmm confirms that it
//!   holds, or for `confirm` after the lease went stale (time for that
//!   confirmation). Otherwise it starves and resets the host.
//!
//! See [`crate::lease`] for why this holds or resets a host before the others
//! can judge its lease expired.

use std::time::Duration;

use config_schema::clock::BootInstant;
use serde::Serialize;

use crate::lease::LeaseTiming;

/// Where the guard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardState {
    /// No successful renewal yet: no grant, watchdog not armed.
    Starting,
    /// Lease fresh: granting, feeding.
    Normal,
    /// Lease fresh but the grant withheld (freeze, slot): feeding.
    Withheld,
    /// Renewal failing: grants say `ok: false`, no confirmation yet; still feeding.
    HoldAsked,
    /// ftvmm confirmed the hold; feeding (the host waits for storage).
    Held,
    /// No confirmation within `confirm`: not feeding, the watchdog will reset us.
    Starving,
}

/// One `OutputGrant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub ok: bool,
    pub valid_ms: u64,
    pub reason: String,
}

/// What the caller must do after [`Guard::tick`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    pub feed: bool,
    /// Console lines (state changes).
    pub say: Vec<String>,
}

/// The grant and watchdog policy of one host.
#[derive(Debug, Clone)]
pub struct Guard {
    timing: LeaseTiming,
    /// Issue time of the last successful renewal.
    last_ok: Option<BootInstant>,
    withheld: Option<String>,
    /// Send time of the last `ok` grant.
    last_ok_sent: Option<BootInstant>,
    /// Send time of the last `ok: false` grant ftvmm answered.
    hold_confirmed: Option<BootInstant>,
    /// ftvmm answered the last grant (None: none sent yet).
    answering: Option<bool>,
    /// Say "release confirmed" at the next answered `ok` grant.
    releasing: bool,
    state: GuardState,
}

impl Guard {
    pub fn new(timing: LeaseTiming) -> Self {
        Guard {
            timing,
            last_ok: None,
            withheld: None,
            last_ok_sent: None,
            hold_confirmed: None,
            answering: None,
            releasing: false,
            state: GuardState::Starting,
        }
    }

    pub fn state(&self) -> GuardState {
        self.state
    }

    /// The own lease was renewed by a write issued at `issued`.
    pub fn renewed(&mut self, issued: BootInstant) {
        self.last_ok = Some(self.last_ok.map_or(issued, |t| t.max(issued)));
    }

    /// Withholds the grant for `reason` (`None`: nothing withholds it).
    pub fn withhold(&mut self, reason: Option<String>) {
        self.withheld = reason;
    }

    pub fn withheld(&self) -> Option<&str> {
        self.withheld.as_deref()
    }

    fn fresh(&self, now: BootInstant) -> bool {
        self.last_ok
            .is_some_and(|t| now.saturating_duration_since(t) < self.timing.hold_after)
    }

    /// ftvmm confirms a hold: it answered an `ok: false` grant sent less than
    /// `confirm` ago, and no later `ok` grant lifted it.
    fn hold_confirmed(&self, now: BootInstant) -> bool {
        self.hold_confirmed.is_some_and(|h| {
            self.last_ok_sent.is_none_or(|o| o < h)
                && now.saturating_duration_since(h) < self.timing.confirm
        })
    }

    /// The grant to send now.
    pub fn grant(&self, now: BootInstant) -> Grant {
        let ms = |d: Duration| d.as_millis() as u64;
        let Some(last) = self.last_ok else {
            return Grant {
                ok: false,
                valid_ms: 0,
                reason: "fencing: no lease renewal yet".into(),
            };
        };
        let age = now.saturating_duration_since(last);
        if !self.fresh(now) {
            return Grant {
                ok: false,
                valid_ms: 0,
                reason: format!("fencing: own lease renewal failing for {} ms", ms(age)),
            };
        }
        if let Some(why) = &self.withheld {
            return Grant {
                ok: false,
                valid_ms: 0,
                reason: format!("fencing: {why}"),
            };
        }
        let left = self.timing.hold_after.saturating_sub(age);
        Grant {
            ok: true,
            valid_ms: ms(self.timing.grant_valid.min(left)).max(1),
            reason: format!("fencing: lease renewed {} ms ago", ms(age)),
        }
    }

    /// ftvmm's answer to `sent` (sent at `sent_at`): `Ok` if it answered
    /// `Running`, else what it said. Returns console lines.
    pub fn on_answer(
        &mut self,
        sent: &Grant,
        sent_at: BootInstant,
        answer: Result<(), String>,
    ) -> Vec<String> {
        let mut say = Vec::new();
        if sent.ok {
            self.last_ok_sent = Some(self.last_ok_sent.map_or(sent_at, |t| t.max(sent_at)));
        }
        match answer {
            Ok(()) => {
                if self.answering != Some(true) {
                    say.push(format!(
                        "fencing: ftvmm answers the output grant (valid {} ms, sent every {} ms)",
                        self.timing.grant_valid.as_millis(),
                        self.timing.grant_period.as_millis()
                    ));
                }
                self.answering = Some(true);
                if !sent.ok {
                    self.hold_confirmed =
                        Some(self.hold_confirmed.map_or(sent_at, |t| t.max(sent_at)));
                } else if std::mem::take(&mut self.releasing) {
                    say.push("fencing: ftvmm confirmed the output release".into());
                }
            }
            Err(e) => {
                if self.answering != Some(false) {
                    say.push(format!(
                        "fencing: ftvmm did not answer the output grant: {e}"
                    ));
                }
                self.answering = Some(false);
            }
        }
        say
    }

    /// Advances the policy to `now`: whether to feed, and what to say.
    pub fn tick(&mut self, now: BootInstant) -> Actions {
        let next = self.state_at(now);
        let mut a = Actions {
            feed: matches!(
                next,
                GuardState::Normal
                    | GuardState::Withheld
                    | GuardState::HoldAsked
                    | GuardState::Held
            ),
            say: Vec::new(),
        };
        if next != self.state {
            self.transition(next, now, &mut a.say);
        }
        a
    }

    fn state_at(&self, now: BootInstant) -> GuardState {
        let Some(last) = self.last_ok else {
            return GuardState::Starting;
        };
        if self.fresh(now) {
            return if self.withheld.is_some() {
                GuardState::Withheld
            } else {
                GuardState::Normal
            };
        }
        if self.hold_confirmed(now) {
            return GuardState::Held;
        }
        let stale_at = last + self.timing.hold_after;
        if now.saturating_duration_since(stale_at) < self.timing.confirm {
            GuardState::HoldAsked
        } else {
            GuardState::Starving
        }
    }

    fn transition(&mut self, next: GuardState, now: BootInstant, say: &mut Vec<String>) {
        use GuardState::*;
        let stale_ms = self
            .last_ok
            .map_or(0, |t| now.saturating_duration_since(t).as_millis());
        // ftvmm can confirm the hold (it saw `ok: false` in a grant) before
        // this state machine looked at the stale lease, so `Held` may come
        // straight from `Normal`: the failing line is said then too (a storage
        // test waited for it in vain, once in a few runs).
        if matches!(self.state, Starting | Normal | Withheld)
            && matches!(next, HoldAsked | Starving | Held)
        {
            say.push(format!(
                "fencing: lease renewal failing for {stale_ms} ms; asking ftvmm to hold output"
            ));
        }
        if next == Held && self.state != Held {
            say.push("fencing: ftvmm confirmed the output hold".into());
        }
        if next == Starving {
            say.push(format!(
                "fencing: ftvmm did not confirm the output hold within {} ms; \
                 no longer feeding the watchdog",
                self.timing.confirm.as_millis()
            ));
        }
        if matches!(self.state, HoldAsked | Held | Starving) && matches!(next, Normal | Withheld) {
            say.push("fencing: lease renewed again; asking ftvmm to release output".into());
            self.releasing = true;
        }
        self.state = next;
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
