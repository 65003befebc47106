//! What the [`Gate`](super::Gate) of a second pair failure reads on the
//! consoles (`FT_CHAOS_SEQUENTIAL=1`): is the pair protected again after the
//! first pair failure?
//!
//! A *pair failure* ([`super::costs_a_member`]) is a fault that **can** cost
//! the pair a member, not one that always does. A storage fault of the
//! Secondary's host costs nothing: a Secondary ignores its host's output
//! grant (`ftvmm/src/lockstep/member.rs`, `on_grant`), keeps following, and
//! the Primary never notices; a freeze shorter than the failure timeout
//! costs nothing either. Then no respawn runs and no `protected:` line ever
//! comes: the gate used to wait 60 s for it and drop the second pair failure
//! (seeds 38, 39, 40 of a campaign: a 777 ms freeze of host-b, host-b's
//! storage severed for 20 s, host-b's storage delayed by 345 ms; only `won
//! generation 1 to start` on any console). [`PairWatch::look`] tells the
//! two cases apart:
//!
//! - [`PairNow::Respawned`]: a `protected: secondary <host>` line after the
//!   failure (the respawn; the last one names the pair).
//! - [`PairNow::Intact`]: the failure cost no member. All of: no line of a
//!   pair change after the failure on any console (a race for a generation,
//!   a win, a loss, a halt, a hand-over: every member loss starts with one
//!   of them, `member.rs`); no fault that can cost a member in force, for at
//!   least the quiet time the caller gives (see the runner: a loss a healed
//!   fault still causes shows by then); and the pair's hosts both hold their
//!   output grant (their last fencing line is not a hold: a host whose
//!   storage path was cut is no protection until its lease renews again, a
//!   Secondary that cannot renew cannot win the next generation). The pair
//!   is the one the last `protected:` or `paired with secondary` line names.
//! - [`PairNow::Waiting`]: neither yet, and why.

use std::time::{Duration, Instant};

/// One console line of one QEMU process.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The host whose console it is (a rebooted host's process has its name).
    pub host: &'a str,
    /// When it arrived: the process's spawn time plus the line's offset.
    pub at: Instant,
    pub text: &'a str,
}

/// The pair as the gate finds it (module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairNow {
    /// A respawn protected the VM again: `primary`'s console said
    /// `protected: secondary <secondary>` after the failure.
    Respawned { primary: String, secondary: String },
    /// The failure cost no member: the pair goes on, both hosts healthy.
    Intact { primary: String, secondary: String },
    /// Not protected again (yet), and why.
    Waiting(String),
}

/// Reads consoles for one VM's pair (module doc).
#[derive(Debug)]
pub struct PairWatch {
    protected: regex::Regex,
    paired: regex::Regex,
    change: regex::Regex,
}

/// Fencing's lines that withdraw a host's output grant (`fencing/src/guard.rs`,
/// `fencing/src/freeze.rs`) and that give it back.
const HOLDS: [&str; 2] = [
    "fencing: lease renewal failing for ",
    "fencing: this host was frozen:",
];
const RELEASES: [&str; 2] = [
    "fencing: lease renewed again; asking ftvmm to release output",
    "fencing: clean renewal and deposition check after the freeze; granting output again",
];

impl PairWatch {
    pub fn new(vm: &str) -> PairWatch {
        let re = |s: String| regex::Regex::new(&s).expect("a valid regex");
        PairWatch {
            protected: re(format!(r"ftvmm: vm {vm}: protected: secondary ([\w.-]+)")),
            paired: re(format!(
                r"ftvmm: vm {vm}: (?:protected: secondary|paired with secondary) ([\w.-]+)"
            )),
            // Every member loss starts with one of these (`member.rs`): a
            // Primary's or Secondary's race for the next generation, its
            // outcome, a halt, a hand-over. (A Primary's `fencing withdrew the
            // output grant ...; handing the VM over ... unless it is back`
            // is no change yet: `output grant back ...; the pair goes on`
            // may follow; if it does not, the hand-over's lines do.)
            change: re(format!(
                r"ftvmm: vm {vm}: .*(asking for generation|won generation|lost generation|halting|halts|deposed|superseded|handed the VM over|could not hand over)|ftvmm: lockstep: primary .* hands over"
            )),
        }
    }

    /// The pair after the pair failure applied at `since` (module doc).
    /// `lines`: every line of every process so far, in any order.
    /// `settled`: since when no fault that can cost a member has been in
    /// force (`None` while one is); `quiet`: how long after that a pair
    /// change it caused may still show.
    pub fn look(
        &self,
        lines: &[Seen],
        since: Instant,
        settled: Option<Instant>,
        now: Instant,
        quiet: Duration,
    ) -> PairNow {
        let last = |pick: &dyn Fn(&Seen) -> bool| {
            (lines.iter())
                .filter(|l| pick(l))
                .max_by_key(|l| l.at)
                .copied()
        };
        let named = |re: &regex::Regex, l: &Seen| {
            re.captures(l.text)
                .map(|c| c[1].trim_end_matches('.').to_string())
        };
        if let Some(l) = last(&|l| l.at > since && self.protected.is_match(l.text)) {
            let secondary = named(&self.protected, &l).expect("matched");
            return PairNow::Respawned {
                primary: l.host.to_string(),
                secondary,
            };
        }
        if let Some(l) = (lines.iter())
            .filter(|l| l.at > since && self.change.is_match(l.text))
            .min_by_key(|l| l.at)
        {
            return PairNow::Waiting(format!(
                "the pair changed ({} {:?}); no protected: line yet",
                l.host, l.text
            ));
        }
        let Some(settled) = settled else {
            return PairNow::Waiting(
                "no member lost so far, but a fault that can cost one is in force".into(),
            );
        };
        if now < settled + quiet {
            return PairNow::Waiting(format!(
                "no member lost so far; the faults ended less than {quiet:?} ago"
            ));
        }
        let Some(l) = last(&|l| self.paired.is_match(l.text)) else {
            return PairNow::Waiting("no console names the pair".into());
        };
        let (primary, secondary) = (
            l.host.to_string(),
            named(&self.paired, &l).expect("matched"),
        );
        for host in [&primary, &secondary] {
            let grant = last(&|l| {
                l.host == host.as_str()
                    && (HOLDS.iter().chain(&RELEASES)).any(|p| l.text.contains(p))
            });
            if let Some(g) = grant.filter(|g| HOLDS.iter().any(|p| g.text.contains(p))) {
                return PairNow::Waiting(format!(
                    "no member lost so far, but {host}'s output grant is withdrawn ({:?}) and \
                     not given back yet",
                    g.text
                ));
            }
        }
        PairNow::Intact { primary, secondary }
    }
}
