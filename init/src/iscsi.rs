//! Logging in to the shared device when the signed config names it as an
//! iSCSI LUN (`storage.device = { iscsi = … }`, issue 16).
//!
//! The kernel's software initiator (`iscsi_tcp`) carries the session;
//! open-iscsi's daemon `iscsid` (pinned in the image, `image/iscsi.lock`)
//! does the login — TCP connect, the login PDUs, CHAP — and hands the
//! logged-in connection to the kernel, and stays: when the connection
//! breaks it reconnects and logs in again by itself ([`iscsid`]). The LUN
//! appears as an ordinary SCSI disk (`/dev/sdX`) that fencing, the VMs'
//! disks and SCSI-3 persistent reservations use as they use a local one.
//!
//! [`keep`] runs in a thread of init for the host's life: it writes
//! iscsid's files, starts iscsid, and logs in through `iscsiadm` (retrying
//! with a back-off, one console line per failed attempt naming the reason,
//! and one for an attempt still waiting for the portal after 15 s), says
//! which `/dev/sdX` the LUN became, and then watches the session's state in
//! sysfs: it says when the session leaves `LOGGED_IN` and when iscsid has
//! it logged in again, and starts iscsid again if it ended. While the
//! session is down its I/O waits; the fencing agent treats a lease write
//! that does not complete in time like any lost storage path (hold,
//! hand-over, reset by the watchdog), so a blip shorter than that costs
//! nothing and a longer one costs a failover, never two live copies.

mod iscsid;

pub use iscsid::{Iscsid, ISCSIADM, ISCSID};

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use config_schema::iscsi_block::{self, Session};
use config_schema::{IscsiLun, PortalError};

use crate::system::say;

/// Kernel modules of the software initiator (no device announces them, so
/// discovery never loads them): loaded by name before the first login. The
/// crc32c ones because `iscsi_tcp` asks the crypto API for `crc32c` when it
/// creates a connection, and the kernel has no modprobe to call here
/// (without one: "Could not create connection due to crc32c loading error").
pub const MODULES: [&str; 4] = ["crc32c_intel", "crc32c_generic", "iscsi_tcp", "sd_mod"];
/// A login attempt that has not ended by then is killed and counts as
/// failed. Only a safety net: iscsid retries a failing first login itself
/// ([`iscsid::INITIAL_LOGIN_RETRY_MAX`] × [`iscsid::LOGIN_TIMEOUT_S`], 2
/// min) and then gives up and `iscsiadm` reports it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// An attempt still running then is said once (iscsid retries a login
/// whose portal does not answer for 2 minutes before it gives up).
const SLOW_NOTICE: Duration = Duration::from_secs(15);
/// Back-off between failed attempts: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the LUN's block device may take to appear after the login.
const DEVICE_WAIT: Duration = Duration::from_secs(20);
/// How often the session's state is looked at once logged in.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// What to log in to: the signed config's LUN, as this host logs in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub lun: IscsiLun,
    /// `lun.portal`, parsed.
    pub portal: SocketAddrV4,
    /// `<initiator_prefix>:<host name>`.
    pub initiator: String,
}

impl std::fmt::Debug for Login {
    /// Never shows the CHAP secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.shown())
    }
}

impl Login {
    /// Host `host`'s login to `lun`; fails only on a portal that validation
    /// refuses.
    pub fn new(lun: &IscsiLun, host: &str) -> Result<Login, PortalError> {
        Ok(Login {
            portal: lun.portal_addr()?,
            initiator: lun.initiator_name(host),
            lun: lun.clone(),
        })
    }

    /// How console lines name this login (no secret).
    pub fn shown(&self) -> String {
        format!(
            "{} at {} as {}{}",
            self.lun.target,
            self.portal,
            self.initiator,
            if self.lun.chap.is_some() {
                " (CHAP)"
            } else {
                ""
            }
        )
    }
}

/// The kernel's sessions to `target`, newest (highest number) first.
pub fn sessions(sys: &Path, target: &str) -> Vec<Session> {
    let mut to: Vec<Session> = iscsi_block::sessions(sys)
        .into_iter()
        .filter(|s| s.target == target)
        .collect();
    to.reverse();
    to
}

/// The reason a failed `iscsiadm` gives, in one line: its distinct message
/// lines that say what went wrong (the "initiator reported error (…)"
/// summary; iscsid's own lines, e.g. the target's rejection, are on the
/// console already), without the `iscsiadm: ` prefixes, joined by `; ` and
/// cut at [`REASON_MAX`] bytes; or its exit status when it said nothing.
pub fn failure_reason(stderr: &str, status: &str) -> String {
    let mut all: Vec<&str> = Vec::new();
    for l in stderr.lines().map(str::trim) {
        let l = l.trim_start_matches("iscsiadm: ").trim();
        if !l.is_empty() && !all.contains(&l) {
            all.push(l);
        }
    }
    // The lines that say what went wrong; the rest ("Logging into …",
    // "… is shutdown.") only when there are none.
    let telling = |l: &str| {
        let l = l.to_ascii_lowercase();
        [
            "reject",
            "error",
            "fail",
            "refused",
            "timed out",
            "not found",
            "unreachable",
        ]
        .iter()
        .any(|w| l.contains(w))
    };
    let told: Vec<&str> = all.iter().copied().filter(|l| telling(l)).collect();
    let lines: Vec<&str> = match told.is_empty() {
        true => all.last().into_iter().copied().collect(),
        false => told,
    };
    if lines.is_empty() {
        return format!("iscsiadm {status} without a message");
    }
    let mut joined = lines.join("; ");
    if joined.len() > REASON_MAX {
        let mut cut = REASON_MAX;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        joined.truncate(cut);
        joined.push('…');
    }
    joined
}

/// The longest reason a console line quotes.
const REASON_MAX: usize = 300;

/// Runs `iscsiadm args` (killed after [`ATTEMPT_TIMEOUT`]) and returns
/// what it printed. Its exit status is not trusted: init, PID 1, reaps every
/// child its supervisor does not know (orphans) and may reap this one
/// first. So the run ends when its output ends, and the caller judges by
/// the kernel's sessions or the files iscsiadm wrote.
fn iscsiadm(login: &Login, args: &[String], n: u32) -> Result<(String, String), String> {
    let mut child = Command::new(ISCSIADM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {ISCSIADM}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut { pipe }, &mut text);
            let _ = tx.send(text);
        });
    }
    drop(tx);
    let start = Instant::now();
    let deadline = start + ATTEMPT_TIMEOUT;
    let mut noticed = false;
    let mut output = String::new();
    let mut ended = 0;
    while ended < 2 {
        let until = match noticed {
            true => deadline,
            false => deadline.min(start + SLOW_NOTICE),
        };
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(text) => {
                output.push_str(&text);
                ended += 1;
            }
            Err(_) if !noticed && Instant::now() < deadline => {
                noticed = true;
                say(&format!(
                    "iscsi: login to {} not done after {} s (attempt {n}): the portal or the \
                     target does not answer; iscsid keeps trying",
                    login.shown(),
                    SLOW_NOTICE.as_secs()
                ));
            }
            Err(_) => {
                // Still running: end it. A pid reaped by the supervisor
                // cannot be here, since its output would have ended.
                let _ = child.kill();
                let _ = child.try_wait();
                return Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()));
            }
        }
    }
    // Collect the status if nobody else has (ECHILD otherwise: ignored).
    let status = child
        .try_wait()
        .ok()
        .flatten()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "ended".to_owned());
    Ok((output, status))
}

/// One login attempt: iscsid running, the node record written (once), then
/// `iscsiadm --login`. It worked if the kernel has a logged-in session to
/// the target; else the reason, in one line.
fn attempt(login: &Login, iscsid: &mut Iscsid, sys: &Path, n: u32) -> Result<(), String> {
    iscsid.ensure()?;
    let root = Path::new("/");
    if !iscsid::node_record(root, login).exists() {
        let (out, status) = iscsiadm(login, &iscsid::node_args(login, &["-o", "new"]), n)?;
        if !iscsid::node_record(root, login).exists() {
            return Err(format!(
                "cannot write the node record: {}",
                failure_reason(&out, &status)
            ));
        }
    }
    let (out, status) = iscsiadm(login, &iscsid::node_args(login, &["--login"]), n)?;
    if sessions(sys, &login.lun.target)
        .iter()
        .any(Session::logged_in)
    {
        return Ok(());
    }
    Err(failure_reason(&out, &status))
}

/// Logs in (again and again until it works), reports the LUN's device on
/// `ready` once, then watches the session for the host's life. `locate`
/// finds the LUN's block device once the session is up.
pub fn keep(
    login: Login,
    sys: PathBuf,
    locate: impl Fn() -> Result<PathBuf, String>,
    ready: mpsc::Sender<PathBuf>,
) {
    let started = Instant::now();
    if let Err(e) = iscsid::prepare(Path::new("/"), &login) {
        say(&format!(
            "iscsi: cannot write iscsid's files in /etc/iscsi: {e}; not logging in to {}",
            login.shown()
        ));
        return;
    }
    let mut iscsid = Iscsid::new();
    let mut attempts = 0u32;
    let mut backoff = BACKOFF_FIRST;
    let session = loop {
        if let Some(s) = sessions(&sys, &login.lun.target)
            .into_iter()
            .find(Session::logged_in)
        {
            break s;
        }
        attempts += 1;
        match attempt(&login, &mut iscsid, &sys, attempts) {
            Ok(()) => {
                backoff = BACKOFF_FIRST;
                // The next look finds the session; a login that "worked"
                // without one is retried like a failure.
            }
            Err(why) => {
                say(&format!(
                    "iscsi: login to {} failed (attempt {attempts}): {why}; retrying in {} s",
                    login.shown(),
                    backoff.as_secs()
                ));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    let deadline = Instant::now() + DEVICE_WAIT;
    let device = loop {
        match locate() {
            Ok(d) => break Some(d),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(why) => {
                say(&format!(
                    "iscsi: logged in to {} ({}), but LUN {} has no block device after {} s: {why}",
                    login.shown(),
                    session.name,
                    login.lun.lun,
                    DEVICE_WAIT.as_secs()
                ));
                break None;
            }
        }
    };
    if let Some(d) = device {
        say(&format!(
            "iscsi: logged in to {} ({}, attempt {attempts}, {:.1} s): LUN {} is {}",
            login.shown(),
            session.name,
            started.elapsed().as_secs_f64(),
            login.lun.lun,
            d.display()
        ));
        let _ = ready.send(d);
    }
    watch(&login, &mut iscsid, &sys, session);
}

/// Says when the session leaves `LOGGED_IN` and when iscsid has it logged
/// in again (and how long it was down), and keeps iscsid running.
fn watch(login: &Login, iscsid: &mut Iscsid, sys: &Path, session: Session) {
    let mut last = session.state.clone();
    let mut down_since: Option<Instant> = None;
    // The last iscsid failure said, so a lasting one is said once.
    let mut said: Option<String> = None;
    loop {
        std::thread::sleep(WATCH_PERIOD);
        match iscsid.ensure() {
            Ok(()) => said = None,
            Err(e) if said.as_ref() != Some(&e) => {
                say(&format!(
                    "iscsi: {e}; nothing reconnects {} if its connection breaks",
                    session.name
                ));
                said = Some(e);
            }
            Err(_) => {}
        }
        let now = sessions(sys, &login.lun.target)
            .into_iter()
            .find(|s| s.name == session.name)
            .map(|s| s.state)
            .unwrap_or_else(|| "gone".to_owned());
        if now == last {
            continue;
        }
        if now == "LOGGED_IN" {
            say(&format!(
                "iscsi: {} to {} is logged in again{}",
                session.name,
                login.lun.target,
                down_since
                    .take()
                    .map(|t| format!(" after {:.1} s", t.elapsed().as_secs_f64()))
                    .unwrap_or_default()
            ));
        } else {
            down_since.get_or_insert_with(Instant::now);
            say(&format!(
                "iscsi: {} to {} is {now} (was {last}): the connection to {} is lost; iscsid \
                 reconnects, its I/O waits up to {} s, and fencing handles a lease write that \
                 waits too long as a lost storage path",
                session.name,
                login.lun.target,
                login.portal,
                iscsid::REPLACEMENT_TIMEOUT_S
            ));
        }
        last = now;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn login(chap: bool) -> Login {
        let lun = IscsiLun {
            portal: "10.0.2.100:3260".into(),
            target: "iqn.2026-01.test.ftappliance:shared".into(),
            lun: 1,
            tpgt: 1,
            initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
            chap: chap.then(|| config_schema::Chap {
                user: "ft".to_owned(),
                secret: "twelve-bytes-secret".to_owned(),
            }),
        };
        Login::new(&lun, "host-a").unwrap()
    }

    #[test]
    fn the_secret_is_never_shown() {
        let l = login(true);
        for text in [l.shown(), format!("{l:?}")] {
            assert!(!text.contains("twelve-bytes-secret"), "{text}");
            assert!(text.contains("(CHAP)"), "{text}");
        }
    }

    #[test]
    fn sessions_to_the_target_newest_first() {
        let sys = tempfile::tempdir().unwrap();
        let add = |n: &str, target: &str, state: &str| {
            let d = sys.path().join("class/iscsi_session").join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("targetname"), format!("{target}\n")).unwrap();
            std::fs::write(d.join("state"), format!("{state}\n")).unwrap();
        };
        let t = "iqn.2026-01.test.ftappliance:shared";
        add("session1", t, "FAILED");
        add("session2", "iqn.2026-01.other:x", "LOGGED_IN");
        add("session10", t, "LOGGED_IN");
        let s: Vec<(String, String)> = sessions(sys.path(), t)
            .into_iter()
            .map(|s| (s.name, s.state))
            .collect();
        assert_eq!(
            s,
            [
                ("session10".to_owned(), "LOGGED_IN".to_owned()),
                ("session1".to_owned(), "FAILED".to_owned()),
            ]
        );
        assert!(sessions(&sys.path().join("none"), t).is_empty());
    }

    #[test]
    fn the_failure_reason_is_one_line() {
        // As iscsiadm 2.1.8 says it (usr/iscsiadm.c, usr/iscsi_err.c).
        let out = "Logging in to [iface: default, target: iqn.2026-01.x:nosuch, portal: 10.0.2.100,3260]\n\
                   iscsiadm: Could not login to [iface: default, target: iqn.2026-01.x:nosuch, portal: 10.0.2.100,3260].\n\
                   iscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)\n\
                   iscsiadm: Could not log into all portals\n";
        assert_eq!(
            failure_reason(out, "exit status: 19"),
            "initiator reported error (19 - encountered non-retryable iSCSI login failure)"
        );
        assert_eq!(failure_reason("a\nb\n", "x"), "b");
        assert_eq!(
            failure_reason("\n", "exit status: 1"),
            "iscsiadm exit status: 1 without a message"
        );
        let long = "é".repeat(400);
        let r = failure_reason(&long, "x");
        assert!(
            r.len() <= REASON_MAX + '…'.len_utf8() && r.ends_with('…'),
            "{r}"
        );
    }
}
