//! The kernel command line's `ft.*` options, and the test hooks init runs.
//!
//! Rules: the kernel command line enables **no** test hook: anyone at the
//! console can edit it (boot menus are locked, but a console user could still
//! reach a kernel boot some other way, e.g. a firmware boot manager). Test
//! hooks come only from the signed config's `[test] hooks`
//! ([`config_schema::hooks`]). Every `ft.*` word on the command line (the
//! former `ft.fault=crash:<daemon>` and `ft.test=vmctl` hooks, or anything
//! else) is ignored with one console line ([`ignored_line`]).

use config_schema::hooks::{self, TestHook};
use config_schema::ClusterConfig;

/// The `ft.*` words of the kernel command line, in order. Words that are not
/// `ft.*` belong to the kernel.
pub fn ft_options(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| w.starts_with("ft."))
        .map(str::to_string)
        .collect()
}

/// The one console line about ignored `ft.*` options, if there are any.
pub fn ignored_line(text: &str) -> Option<String> {
    let opts = ft_options(text);
    (!opts.is_empty()).then(|| {
        format!(
            "init: kernel command line option(s) {} ignored: test hooks are enabled only by the signed config ([test] hooks)",
            opts.join(" ")
        )
    })
}

/// The console line naming the hooks the signed config enables, if any.
pub fn enabled_line(config: &ClusterConfig) -> Option<String> {
    let h = config.test_hooks();
    (!h.is_empty()).then(|| {
        format!(
            "init: test hooks enabled by the signed config: {} (NOT FOR PRODUCTION)",
            hooks::list(&h)
        )
    })
}

/// The daemon init kills once after ready (`crash:<daemon>` in the signed
/// config), if any.
pub fn crash_daemon(config: &ClusterConfig) -> Option<String> {
    config.test_hooks().into_iter().find_map(|h| match h {
        TestHook::Crash(d) => Some(d),
        TestHook::Vmctl | TestHook::Pr => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hooks: Option<&[&str]>) -> ClusterConfig {
        let mut text = include_str!("../../examples/cluster.toml").to_string();
        if let Some(h) = hooks {
            let list: Vec<String> = h.iter().map(|s| format!("{s:?}")).collect();
            text += &format!("\n[test]\nhooks = [{}]\n", list.join(", "));
        }
        config_schema::parse(&text).unwrap().config
    }

    #[test]
    fn the_kernel_command_line_enables_no_hook() {
        let cmdline = "console=ttyS0 panic=-1 ft.fault=crash:heartbeat ft.test=vmctl quiet\n";
        let c = config(None);
        assert_eq!(crash_daemon(&c), None);
        assert_eq!(enabled_line(&c), None);
        assert_eq!(
            ignored_line(cmdline).unwrap(),
            "init: kernel command line option(s) ft.fault=crash:heartbeat ft.test=vmctl ignored: \
             test hooks are enabled only by the signed config ([test] hooks)"
        );
        assert_eq!(ignored_line("console=ttyS0 quiet"), None);
    }

    #[test]
    fn the_signed_config_enables_hooks() {
        let c = config(Some(&["vmctl", "crash:heartbeat"]));
        assert_eq!(crash_daemon(&c).as_deref(), Some("heartbeat"));
        assert_eq!(
            enabled_line(&c).unwrap(),
            "init: test hooks enabled by the signed config: vmctl, crash:heartbeat (NOT FOR PRODUCTION)"
        );
        assert_eq!(crash_daemon(&config(Some(&["vmctl"]))), None);
    }
}
