//! Kernel command line options init understands.
//!
//! `ft.fault=crash:<daemon>` is a test hook: once the appliance is ready, init
//! SIGKILLs that daemon once, so a test can watch it being restarted.

/// Options from `/proc/cmdline`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// Daemon to kill once after ready (`ft.fault=crash:<daemon>`).
    pub crash_daemon: Option<String>,
    /// Unknown `ft.*` options, reported on the console.
    pub unknown: Vec<String>,
}

/// Parses the kernel command line. Words that are not `ft.*` belong to the
/// kernel and are ignored.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_whitespace() {
        let Some(opt) = word.strip_prefix("ft.") else {
            continue;
        };
        match opt.split_once('=') {
            Some(("fault", v)) => match v.strip_prefix("crash:") {
                Some(d) if !d.is_empty() => c.crash_daemon = Some(d.to_string()),
                _ => c.unknown.push(word.to_string()),
            },
            _ => c.unknown.push(word.to_string()),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_hook_is_parsed_among_kernel_words() {
        let c = parse("console=ttyS0 panic=-1 ft.fault=crash:heartbeat quiet\n");
        assert_eq!(c.crash_daemon.as_deref(), Some("heartbeat"));
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn absent_and_malformed_options() {
        assert_eq!(parse("console=ttyS0"), Cmdline::default());
        let c = parse("ft.fault=crash: ft.fault=reboot ft.bogus");
        assert_eq!(c.crash_daemon, None);
        assert_eq!(
            c.unknown,
            ["ft.fault=crash:", "ft.fault=reboot", "ft.bogus"]
        );
    }
}
