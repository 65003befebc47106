//! Starting, describing and stopping the three daemons init supervises.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The daemons in start order, with their control sockets.
pub const DAEMONS: &[(&str, &str)] = &[
    ("ftvmm", config_schema::ctl::FTVMM_SOCKET),
    ("heartbeat", config_schema::ctl::HEARTBEAT_SOCKET),
    ("fencing", config_schema::ctl::FENCING_SOCKET),
];

/// Stop order: ftvmm first so the VM stops before its fencing goes away.
pub const STOP_ORDER: &[&str] = &["ftvmm", "fencing", "heartbeat"];

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The command line of a daemon: `/bin/ftvmm daemon --config P`, the others
/// `/bin/<name> --config P`.
pub fn argv(name: &str, config: &Path) -> Vec<String> {
    let mut v = vec![format!("/bin/{name}")];
    if name == "ftvmm" {
        v.push("daemon".into());
    }
    v.push("--config".into());
    v.push(config.display().to_string());
    v
}

/// Starts a daemon with stdout/stderr on init's console and an empty signal
/// mask (init blocks the signals it reads through signalfd).
pub fn spawn(name: &str, config: &Path) -> std::io::Result<i32> {
    spawn_argv(&argv(name, config))
}

/// Starts `args[0]` with the arguments `args[1..]` as init starts its
/// daemons (also iscsid, `iscsi::Iscsid`): stdin `/dev/null`, stdout and
/// stderr on the console, only `PATH=/bin RUST_LOG=info` in the
/// environment, an empty signal mask. Returns its pid.
pub fn spawn_argv(args: &[String]) -> std::io::Result<i32> {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .env_clear()
        .env("PATH", "/bin")
        .env("RUST_LOG", "info");
    unblock_signals(&mut cmd);
    let child = cmd.spawn()?;
    // init reaps with waitpid(-1); the Child handle is not used again.
    Ok(child.id() as i32)
}

/// Makes `cmd`'s process start with an empty signal mask: init blocks the
/// signals it reads through signalfd, and a child would inherit that mask
/// (SIGTERM then could not stop it).
fn unblock_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls pthread_sigmask, which is
    // async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| SigSet::all().thread_unblock().map_err(std::io::Error::from));
    }
}

/// "exit status 3", "signal SIGKILL", ... for the console.
pub fn describe(ws: &WaitStatus) -> String {
    match ws {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "signal {}{}",
                sig.as_str(),
                if *core { ", core dumped" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// Reaps every exited child without blocking; returns (pid, status) pairs.
pub fn reap_all() -> Vec<(i32, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(ws) => {
                if let Some(pid) = ws.pid() {
                    out.push((pid.as_raw(), ws));
                }
            }
        }
    }
}

/// Stops the running daemons in [`STOP_ORDER`]: SIGTERM, wait up to
/// [`STOP_TIMEOUT`], SIGKILL. Then SIGTERM/SIGKILL to every other process.
/// `say` prints console lines.
pub fn stop_in_order(running: &[(String, i32)], say: &dyn Fn(&str)) {
    for name in STOP_ORDER {
        let Some((_, pid)) = running.iter().find(|(n, _)| n == name) else {
            continue;
        };
        say(&format!("init: stopping {name} pid={pid}"));
        let p = Pid::from_raw(*pid);
        let _ = kill(p, Signal::SIGTERM);
        let status = wait_for(*pid, STOP_TIMEOUT).or_else(|| {
            say(&format!(
                "init: {name} did not stop in {} s, SIGKILL",
                STOP_TIMEOUT.as_secs()
            ));
            let _ = kill(p, Signal::SIGKILL);
            wait_for(*pid, Duration::from_secs(2))
        });
        match status {
            Some(ws) => say(&format!("init: {name} stopped ({})", describe(&ws))),
            None => say(&format!("init: {name} pid={pid} did not go away")),
        }
    }
    // Everything else (orphans the daemons left behind).
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap_all();
}

/// Waits for `pid` to exit, reaping others meanwhile.
fn wait_for(pid: i32, timeout: Duration) -> Option<WaitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        for (p, ws) in reap_all() {
            if p == pid {
                return Some(ws);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let p = Path::new("/run/ft/verified.json");
        assert_eq!(
            argv("ftvmm", p),
            ["/bin/ftvmm", "daemon", "--config", "/run/ft/verified.json"]
        );
        assert_eq!(
            argv("fencing", p),
            ["/bin/fencing", "--config", "/run/ft/verified.json"]
        );
    }

    #[test]
    fn stop_order_is_a_permutation_of_the_daemons() {
        let mut a: Vec<&str> = DAEMONS.iter().map(|d| d.0).collect();
        let mut b = STOP_ORDER.to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(STOP_ORDER[0], "ftvmm");
    }

    #[test]
    fn exit_descriptions() {
        let pid = Pid::from_raw(5);
        assert_eq!(describe(&WaitStatus::Exited(pid, 3)), "exit status 3");
        assert_eq!(
            describe(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            "signal SIGKILL"
        );
    }
}
