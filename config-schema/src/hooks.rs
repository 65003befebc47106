//! Test hooks: behaviour only a test may switch on, and only through the
//! signed cluster config (`[test] hooks = [...]`).
//!
//! Rules:
//! - A hook is enabled by the `test.hooks` list of the signed config and by
//!   nothing else. The kernel command line (which anyone at the console can
//!   edit) enables none: init says so in one line when it finds a former
//!   `ft.test=`/`ft.fault=` option there.
//! - A config with any hook is for tests only: validation adds a [`Warning`]
//!   (`ftctl check`/`make-disk`/`verify` print it, init prints it at boot), and
//!   init prints which hooks the signed config enables.
//!
//! Invariant: a config that passed [`crate::validate`] names only known hooks,
//! each once, and a `[test]` section has at least one hook.
//!
//! [`Warning`]: crate::validate::Warning

use std::fmt;
use std::str::FromStr;

/// The daemons init supervises (what `crash:<daemon>` may name).
pub const DAEMONS: [&str; 3] = ["ftvmm", "heartbeat", "fencing"];

/// One test hook.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TestHook {
    /// `vmctl`: ftvmm reads `ftvmm-test <command> <vm>` lines from the serial
    /// console (restart, snapshot-restore, digest).
    Vmctl,
    /// `crash:<daemon>`: once the appliance is ready, init SIGKILLs that
    /// daemon once, so a test can watch it being restarted.
    Crash(String),
    /// `pr`: once the appliance is ready, init starts `/bin/ft-pr-test`,
    /// which runs persistent-reservation commands typed on the console.
    Pr,
}

/// Why a hook name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("unknown test hook {0:?} (known: vmctl, pr, crash:<daemon>)")]
    Unknown(String),
    #[error("test hook {hook:?} names no daemon of this appliance (known: {})", DAEMONS.join(", "))]
    UnknownDaemon { hook: String },
}

impl FromStr for TestHook {
    type Err = HookError;

    fn from_str(s: &str) -> Result<Self, HookError> {
        if s == "vmctl" {
            return Ok(TestHook::Vmctl);
        }
        if s == "pr" {
            return Ok(TestHook::Pr);
        }
        match s.strip_prefix("crash:") {
            Some(d) if DAEMONS.contains(&d) => Ok(TestHook::Crash(d.to_string())),
            Some(_) => Err(HookError::UnknownDaemon {
                hook: s.to_string(),
            }),
            None => Err(HookError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for TestHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestHook::Vmctl => write!(f, "vmctl"),
            TestHook::Pr => write!(f, "pr"),
            TestHook::Crash(d) => write!(f, "crash:{d}"),
        }
    }
}

impl TestHook {
    /// What the hook lets a test (or anyone at the console) do, for warnings.
    pub fn effect(&self) -> String {
        match self {
            TestHook::Vmctl => {
                "anyone at a host's serial console can restart, snapshot-restore and pause VMs"
                    .into()
            }
            TestHook::Crash(d) => format!("init kills {d} once after boot"),
            TestHook::Pr => "anyone at a host's serial console can register, reserve and \
                             preempt persistent reservations on the shared device"
                .into(),
        }
    }
}

/// The hooks a list of names enables; names that do not parse are skipped
/// (validation refuses them, so a validated config loses none).
pub fn parse_all(names: &[String]) -> Vec<TestHook> {
    names.iter().filter_map(|n| n.parse().ok()).collect()
}

/// `vmctl, crash:heartbeat`: the hooks as one console phrase.
pub fn list(hooks: &[TestHook]) -> String {
    hooks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for name in [
            "vmctl",
            "pr",
            "crash:ftvmm",
            "crash:heartbeat",
            "crash:fencing",
        ] {
            let h: TestHook = name.parse().unwrap();
            assert_eq!(h.to_string(), name);
        }
        assert_eq!(
            "crash:init".parse::<TestHook>().unwrap_err().to_string(),
            "test hook \"crash:init\" names no daemon of this appliance (known: ftvmm, heartbeat, fencing)"
        );
        assert_eq!(
            "ft.test=vmctl".parse::<TestHook>().unwrap_err(),
            HookError::Unknown("ft.test=vmctl".into())
        );
        assert_eq!(
            parse_all(&["vmctl".into(), "bogus".into(), "crash:fencing".into()]),
            [TestHook::Vmctl, TestHook::Crash("fencing".into())]
        );
    }
}
