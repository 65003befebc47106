//! When a VM's protection line is worth a `protection` event: the line
//! status shows (`PairHandle`'s effective protection) is fed here at every
//! write, and [`ProtectionChanges`] says which of those lines changed what
//! the line means. A leaf module: pure, no clock, no I/O.
//!
//! Rules:
//! - A line says `protected: …`, `not protected: <reason>`, or neither
//!   (`starting secondary on host-c (37%)`, nothing at all): a line that
//!   says neither is progress or silence and never an event; the meaning
//!   shown before it stands.
//! - The first meaning is taken to be `protected`: a VM that pairs is not
//!   an event (its respawn is), a VM that is not protected is.
//! - `protected` to `not protected` and back is an event; so is a
//!   `not protected` reason of another kind ([`reason_kind`]). The same
//!   kind again, a growing figure (`for 1500 ms`, `for 1750 ms`) or another
//!   Secondary named under `protected` is not.

/// What a protection line means, figures and details aside.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Meaning {
    #[default]
    Protected,
    /// The reason's kind ([`reason_kind`]).
    NotProtected(String),
}

impl Meaning {
    /// `None`: the line says neither (progress, empty).
    fn of(line: &str) -> Option<Meaning> {
        if let Some(reason) = line.strip_prefix("not protected: ") {
            Some(Meaning::NotProtected(reason_kind(reason)))
        } else if line.starts_with("protected: ") {
            Some(Meaning::Protected)
        } else {
            None
        }
    }
}

/// The kind of a `not protected` reason: the reason without what varies
/// while the same thing holds. The reasons (`respawn/secondary_lease.rs`,
/// `secondary_vmnet.rs`, `own_vmnet.rs`, the keeper's placement and member
/// reasons) put their figures and lists in parentheses
/// (`… storage lease (for 1500 ms); it could not take over`, `no host for
/// a secondary (host-b is down; …)`) and an error's text after `: `
/// (`secondary on host-c failed: cannot connect …`). So: the text after the
/// first `: ` is dropped, every parenthesised aside is dropped, and a
/// number that is not part of a name (`generation 4`, but not `host-1`)
/// becomes `#`.
pub fn reason_kind(reason: &str) -> String {
    let head = reason.split_once(": ").map_or(reason, |(h, _)| h);
    let mut out = String::with_capacity(head.len());
    let mut depth = 0usize;
    // Inside a number already written as `#`.
    let mut figure = false;
    for c in head.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            d if d.is_ascii_digit() => {
                let in_name = out
                    .chars()
                    .last()
                    .is_some_and(|p| p.is_alphanumeric() || p == '-' || p == '_');
                if in_name && !figure {
                    out.push(d);
                } else if !figure {
                    out.push('#');
                    figure = true;
                }
                continue;
            }
            c => out.push(c),
        }
        figure = false;
    }
    // A dropped aside leaves a space before `;` or at the end.
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ;", ";")
        .replace(" ,", ",")
}

/// The meaning last shown, and whether a new line changes it.
#[derive(Debug, Default)]
pub struct ProtectionChanges {
    shown: Meaning,
}

impl ProtectionChanges {
    /// The line status shows now (`None`: none). True when it is an event
    /// (module doc); then it is the meaning shown from now on.
    pub fn on_line(&mut self, line: Option<&str>) -> bool {
        let Some(now) = line.and_then(Meaning::of) else {
            return false;
        };
        if now == self.shown {
            return false;
        }
        self.shown = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE_1500: &str = "not protected: secondary host-b cannot renew its storage lease \
                              (for 1500 ms); it could not take over";
    const STALE_1750: &str = "not protected: secondary host-b cannot renew its storage lease \
                              (for 1750 ms); it could not take over";
    const CUT: &str = "not protected: secondary host-b has no VM network (no peer heard on it \
                       for 900 ms); it could not serve after a take-over";

    /// The events `lines` make, in order.
    fn events<'a>(lines: &[Option<&'a str>]) -> Vec<&'a str> {
        let mut c = ProtectionChanges::default();
        lines
            .iter()
            .filter(|l| c.on_line(**l))
            .map(|l| l.unwrap())
            .collect()
    }

    #[test]
    fn one_change_is_one_event_and_its_repeats_are_none() {
        assert_eq!(
            events(&[
                Some("protected: secondary host-b"),
                Some(STALE_1500),
                Some(STALE_1500),
                Some(STALE_1500),
            ]),
            [STALE_1500]
        );
    }

    #[test]
    fn a_growing_figure_is_no_event() {
        assert_eq!(events(&[Some(STALE_1500), Some(STALE_1750)]), [STALE_1500]);
        let between = |ms: u64| {
            format!(
                "not protected: the VM network between host-a and host-b carries no \
                 heartbeat (for {ms} ms; either side may be cut)"
            )
        };
        let mut c = ProtectionChanges::default();
        assert!(c.on_line(Some(&between(1000))));
        for ms in (1250..20_000).step_by(250) {
            assert!(!c.on_line(Some(&between(ms))), "{ms}");
        }
    }

    #[test]
    fn back_to_protected_is_one_event() {
        assert_eq!(
            events(&[
                Some(STALE_1500),
                Some("protected: secondary host-b"),
                Some("protected: secondary host-b"),
            ]),
            [STALE_1500, "protected: secondary host-b"]
        );
    }

    #[test]
    fn protected_from_the_start_is_no_event_nor_is_another_secondary() {
        assert!(events(&[
            Some("protected: secondary host-b"),
            Some("protected: secondary host-c"),
        ])
        .is_empty());
    }

    #[test]
    fn a_reason_of_another_kind_is_an_event_and_both_together_another() {
        let both = format!(
            "{STALE_1750}; {}",
            CUT.trim_start_matches("not protected: ")
        );
        assert_eq!(
            events(&[Some(STALE_1500), Some(CUT), Some(&both), Some(&both)]),
            [STALE_1500, CUT, both.as_str()]
        );
    }

    #[test]
    fn progress_and_no_line_are_no_events_and_change_nothing() {
        assert_eq!(
            events(&[
                Some("not protected: member is primary held by fencing (generation 3)"),
                Some("starting secondary on host-c (0%)"),
                Some("starting secondary on host-c (37%)"),
                None,
                Some(""),
                Some("not protected: member is primary held by fencing (generation 4)"),
                Some("starting secondary on host-c (100%)"),
                Some("protected: secondary host-c"),
            ]),
            [
                "not protected: member is primary held by fencing (generation 3)",
                "protected: secondary host-c",
            ]
        );
    }

    #[test]
    fn failed_tries_with_other_errors_are_one_kind() {
        assert_eq!(
            events(&[
                Some("not protected: secondary on host-c failed: cannot connect to 10.0.0.3:7100: refused"),
                Some("not protected: secondary on host-c failed: hello: timed out"),
                Some("not protected: secondary on host-d failed: refused: busy"),
            ]),
            [
                "not protected: secondary on host-c failed: cannot connect to 10.0.0.3:7100: refused",
                "not protected: secondary on host-d failed: refused: busy",
            ]
        );
    }

    #[test]
    fn a_reason_s_kind_keeps_names_and_drops_figures_and_asides() {
        assert_eq!(
            reason_kind(STALE_1500.trim_start_matches("not protected: ")),
            "secondary host-b cannot renew its storage lease; it could not take over"
        );
        assert_eq!(
            reason_kind("no host for a secondary (host-a is primary; host-b is down)"),
            "no host for a secondary"
        );
        assert_eq!(
            reason_kind("member is primary holding output, racing for generation 12 (x)"),
            "member is primary holding output, racing for generation #"
        );
        assert_eq!(
            reason_kind("primary node1 hears no peer on the VM network (for 700 ms)"),
            "primary node1 hears no peer on the VM network"
        );
        assert_ne!(
            reason_kind("secondary host-1 cannot renew"),
            reason_kind("secondary host-2 cannot renew")
        );
    }
}
