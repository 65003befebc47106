//! Taking this host's lease slot as sanlock takes a delta lease, so that two
//! machines that believe they are the same host (a config disk moved into
//! the wrong machine, a cloned VM) never both write its blocks.
//!
//! # Rules
//!
//! - Before its first write, a host reads its own lease block. Blank (never
//!   written): it writes at once. Otherwise it watches the block for the lease
//!   timeout `T`; if the bytes change, another machine writes the slot: it
//!   refuses (says so once, keeps watching) and takes the slot only once the
//!   block has stayed unchanged for `T` — longer than a live holder goes
//!   without renewing.
//! - After writing its own record it waits `settle` and reads the block
//!   again: a machine that claimed the slot at the same moment and wrote
//!   after it shows up here, and the earlier writer backs off.
//! - Holding the slot, every renewal first reads the own block and compares it
//!   with the last record written (or the one whose write failed, which may
//!   have landed): anything else means another machine wrote it, and the host
//!   stops using the slot and claims it again from the start.
//!
//! [`SlotClaim`] is a pure state machine over reads and writes the agent
//! performs; the Disk Paxos simulation drives the same code.

use std::time::Duration;

use crate::layout::LeaseRecord;
use config_schema::clock::BootInstant;

/// What the caller does after a step of the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAction {
    /// Nothing yet; read the own block again at the next renewal.
    Wait,
    /// Write the own record now, then report it with [`SlotClaim::on_written`].
    Write,
    /// The slot is this host's.
    Held,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Start,
    Watching { seen: Vec<u8>, since: BootInstant },
    Written { mine: Vec<u8>, at: BootInstant },
    Held,
}

/// The claim of one host's lease slot.
#[derive(Debug, Clone)]
pub struct SlotClaim {
    timeout: Duration,
    settle: Duration,
    state: State,
    /// Why the slot is refused (another machine writes it), while it is.
    refused: Option<String>,
    /// Console lines not yet taken.
    say: Vec<String>,
}

impl SlotClaim {
    /// A claim that watches for `timeout` and checks `settle` after writing.
    pub fn new(timeout: Duration, settle: Duration) -> Self {
        SlotClaim {
            timeout,
            settle,
            state: State::Start,
            refused: None,
            say: Vec::new(),
        }
    }

    pub fn held(&self) -> bool {
        self.state == State::Held
    }

    /// Why the slot is refused, while another machine writes it.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Console lines produced since the last call.
    pub fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.say)
    }

    /// The own lease block read `bytes` (read issued at `now`).
    pub fn on_read(&mut self, bytes: &[u8], now: BootInstant) -> ClaimAction {
        match std::mem::replace(&mut self.state, State::Start) {
            State::Start if bytes.iter().all(|&b| b == 0) => ClaimAction::Write,
            State::Start => {
                self.state = State::Watching {
                    seen: bytes.to_vec(),
                    since: now,
                };
                self.say.push(format!(
                    "fencing: watching this host's lease slot for {} ms before taking it ({})",
                    self.timeout.as_millis(),
                    describe(bytes)
                ));
                ClaimAction::Wait
            }
            State::Watching { seen, .. } if seen != bytes => {
                self.refuse(&seen, bytes, "renews");
                self.state = State::Watching {
                    seen: bytes.to_vec(),
                    since: now,
                };
                ClaimAction::Wait
            }
            State::Watching { seen, since } => {
                if now.saturating_duration_since(since) >= self.timeout {
                    ClaimAction::Write
                } else {
                    self.state = State::Watching { seen, since };
                    ClaimAction::Wait
                }
            }
            State::Written { mine, at } if now.saturating_duration_since(at) < self.settle => {
                self.state = State::Written { mine, at };
                ClaimAction::Wait
            }
            State::Written { mine, .. } if mine == bytes => {
                self.state = State::Held;
                if self.refused.take().is_some() {
                    self.say
                        .push("fencing: the other machine stopped writing this host's lease slot; took it".into());
                }
                ClaimAction::Held
            }
            State::Written { mine, .. } => {
                self.refuse(&mine, bytes, "wrote");
                self.state = State::Watching {
                    seen: bytes.to_vec(),
                    since: now,
                };
                ClaimAction::Wait
            }
            State::Held => {
                self.state = State::Held;
                ClaimAction::Held
            }
        }
    }

    /// The own record `bytes` was written (write completed at `now`).
    pub fn on_written(&mut self, bytes: &[u8], now: BootInstant) {
        assert!(
            !matches!(self.state, State::Held | State::Written { .. }),
            "a claim writes once, from Start or Watching"
        );
        self.state = State::Written {
            mine: bytes.to_vec(),
            at: now,
        };
    }

    /// Holding the slot, a renewal read `bytes` where it expected one of
    /// `expected`: another machine writes the slot. Back to watching.
    pub fn on_taken(&mut self, expected: &[u8], bytes: &[u8], now: BootInstant) {
        assert!(self.held(), "only a held slot can be taken");
        self.refuse(expected, bytes, "wrote");
        self.state = State::Watching {
            seen: bytes.to_vec(),
            since: now,
        };
    }

    fn refuse(&mut self, before: &[u8], now: &[u8], verb: &str) {
        let why = format!(
            "another machine {verb} this host's lease slot ({} -> {}); is this host's config disk \
             in the wrong machine?",
            describe(before),
            describe(now)
        );
        if self.refused.is_none() {
            self.say.push(format!(
                "fencing: not fencing: {why} (watching it; taking it only after {} ms without a write)",
                self.timeout.as_millis()
            ));
        }
        self.refused = Some(why);
    }

    /// The `Status` fields.
    pub fn status(&self) -> serde_json::Value {
        let state = match &self.state {
            State::Start => "unread",
            State::Watching { .. } => "watching",
            State::Written { .. } => "written, checking",
            State::Held => "held",
        };
        serde_json::json!({ "state": state, "refused": self.refused })
    }
}

/// A short description of a lease block for operator messages.
pub fn describe(bytes: &[u8]) -> String {
    if bytes.iter().all(|&b| b == 0) {
        return "blank".into();
    }
    match LeaseRecord::decode(bytes) {
        Ok(r) => format!(
            "incarnation {:016x}, counter {}, {} running",
            r.incarnation,
            r.counter,
            r.running.len()
        ),
        Err(e) => format!("unreadable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rec(incarnation: u64, counter: u64) -> Vec<u8> {
        LeaseRecord {
            host: 1,
            counter,
            incarnation,
            running: vec![],
        }
        .encode(512)
        .to_vec()
    }

    fn t(ms: u64) -> BootInstant {
        BootInstant::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    #[test]
    fn a_blank_slot_is_written_at_once_and_held_after_the_check() {
        let mut c = SlotClaim::new(7000 * MS, 1000 * MS);
        assert_eq!(c.on_read(&[0u8; 512], t(0)), ClaimAction::Write);
        let mine = rec(9, 1);
        c.on_written(&mine, t(10));
        assert_eq!(c.on_read(&mine, t(500)), ClaimAction::Wait, "settling");
        assert_eq!(c.on_read(&mine, t(1010)), ClaimAction::Held);
        assert!(c.held() && c.refused().is_none());
        assert!(c.take_lines().is_empty());
    }

    #[test]
    fn a_slot_in_use_is_refused_while_it_moves_and_taken_once_it_is_still() {
        let mut c = SlotClaim::new(7000 * MS, 1000 * MS);
        assert_eq!(c.on_read(&rec(5, 40), t(0)), ClaimAction::Wait);
        assert!(c.take_lines()[0].contains("watching this host's lease slot for 7000 ms"));
        // The other machine renews: refused, said once.
        assert_eq!(c.on_read(&rec(5, 41), t(500)), ClaimAction::Wait);
        assert_eq!(c.on_read(&rec(5, 42), t(1000)), ClaimAction::Wait);
        let lines = c.take_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("fencing: not fencing: another machine renews this host's lease slot (incarnation 0000000000000005, counter 40"));
        assert!(c.refused().unwrap().contains("wrong machine"));
        // It stops; 7 s later (from the last change) the slot is taken.
        assert_eq!(c.on_read(&rec(5, 42), t(7999)), ClaimAction::Wait);
        assert_eq!(c.on_read(&rec(5, 42), t(8000)), ClaimAction::Write);
        let mine = rec(6, 1);
        c.on_written(&mine, t(8001));
        assert_eq!(c.on_read(&mine, t(9001)), ClaimAction::Held);
        assert!(c.take_lines()[0].contains("took it"));
        assert!(c.refused().is_none());
    }

    #[test]
    fn of_two_machines_claiming_at_once_the_earlier_writer_backs_off() {
        let mut a = SlotClaim::new(7000 * MS, 1000 * MS);
        let mut b = SlotClaim::new(7000 * MS, 1000 * MS);
        assert_eq!(a.on_read(&[0; 512], t(0)), ClaimAction::Write);
        assert_eq!(b.on_read(&[0; 512], t(1)), ClaimAction::Write);
        a.on_written(&rec(1, 1), t(5));
        b.on_written(&rec(2, 1), t(6));
        // The block now holds b's record.
        assert_eq!(a.on_read(&rec(2, 1), t(1005)), ClaimAction::Wait);
        assert!(!a.held() && a.refused().is_some());
        assert_eq!(b.on_read(&rec(2, 1), t(1006)), ClaimAction::Held);
    }

    #[test]
    fn a_held_slot_written_by_someone_else_is_given_up() {
        let mut c = SlotClaim::new(7000 * MS, 1000 * MS);
        c.on_read(&[0; 512], t(0));
        c.on_written(&rec(1, 1), t(0));
        c.on_read(&rec(1, 1), t(1000));
        c.on_taken(&rec(1, 5), &rec(7, 1), t(3000));
        assert!(!c.held());
        assert!(c.take_lines()[0].contains("another machine wrote this host's lease slot"));
        assert_eq!(c.on_read(&rec(7, 2), t(3500)), ClaimAction::Wait);
    }
}
