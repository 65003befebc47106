//! open-iscsi's initiator daemon, `iscsid`, and what it reads: the files
//! under `/etc/iscsi` that init writes from the signed config, starting the
//! daemon, and keeping it running.
//!
//! iscsid holds the session for the host's life: when the session's TCP
//! connection breaks (a storage switch restarts, the target fails over, a
//! cable is pulled and put back), the kernel reports a connection error to
//! it and iscsid reconnects and logs in again by itself, while the kernel
//! queues the session's I/O for up to [`REPLACEMENT_TIMEOUT_S`]. `iscsiadm`
//! writes the node record (`-o new`, which fills it from `iscsid.conf`,
//! CHAP included) and asks iscsid to log in (`--login`).
//!
//! The files (open-iscsi 2.1.8 as Debian builds it: `usr/idbm.h`,
//! `usr/initiator.h`):
//! - `/etc/iscsi/initiatorname.iscsi`: `InitiatorName=<this host's IQN>`,
//!   read by iscsid when it starts (it refuses to start without it);
//! - `/etc/iscsi/iscsid.conf`: the defaults every new node record takes
//!   (timeouts, CHAP), mode 0600 because it holds the CHAP secret, which
//!   thus never appears on a command line;
//! - `/etc/iscsi/nodes/`: the node records, and `/run/lock/iscsi/`: their lock.
//!
//! No `iscsid.startup` line: iscsiadm must not start a daemon of its own;
//! when iscsid is not there it says so and the attempt fails.
//! `iscsid.ipc_auth_uid = Yes`: iscsid serves iscsiadm only if its user is
//! named `root` by `getpwuid` (`usr/mgmt_ipc.c`), and the image has no
//! `/etc/passwd`; with it, iscsid checks uid 0 instead.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Login;
use crate::supervise::{Policy, Supervisor};

/// The daemon in the image.
pub const ISCSID: &str = "/sbin/iscsid";
/// Its administration tool in the image.
pub const ISCSIADM: &str = "/sbin/iscsiadm";
/// How long the kernel queues a failed session's I/O while iscsid
/// reconnects, before it fails the I/O up (open-iscsi's default). The
/// fencing agent does not wait for it: a lease write that does not complete
/// in time holds output and hands the VM over whatever the session does.
pub const REPLACEMENT_TIMEOUT_S: u32 = 120;
/// How long iscsid waits for one login (TCP connect and login PDUs).
pub const LOGIN_TIMEOUT_S: u32 = 15;
/// How many times iscsid tries a first login before `iscsiadm --login`
/// reports failure (one attempt of init's then spans up to 8 × 15 s).
pub const INITIAL_LOGIN_RETRY_MAX: u32 = 8;
/// The abstract unix socket iscsid serves iscsiadm on (`usr/mgmt_ipc.h`).
const IPC_NAME: &str = "@ISCSIADM_ABSTRACT_NAMESPACE";
/// How long a started iscsid gets to listen before the first login.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// `iscsid.conf` for `login`: every new node record's defaults.
pub fn conf(login: &Login) -> String {
    let mut c = format!(
        "# Written by init from the signed config; the node records take these.\n\
         iscsid.ipc_auth_uid = Yes\n\
         node.startup = manual\n\
         node.session.timeo.replacement_timeout = {REPLACEMENT_TIMEOUT_S}\n\
         node.conn[0].timeo.login_timeout = {LOGIN_TIMEOUT_S}\n\
         node.conn[0].timeo.logout_timeout = 15\n\
         node.conn[0].timeo.noop_out_interval = 5\n\
         node.conn[0].timeo.noop_out_timeout = 5\n\
         node.session.initial_login_retry_max = {INITIAL_LOGIN_RETRY_MAX}\n\
         node.session.reopen_max = 0\n\
         node.session.nr_sessions = 1\n\
         node.session.scan = auto\n"
    );
    if let Some(chap) = &login.lun.chap {
        c.push_str(&format!(
            "node.session.auth.authmethod = CHAP\n\
             node.session.auth.username = {}\n\
             node.session.auth.password = {}\n",
            chap.user, chap.secret
        ));
    }
    c
}

/// Writes the files iscsid and iscsiadm read, below `root` (`/` on the
/// appliance): see the module's documentation.
pub fn prepare(root: &Path, login: &Login) -> std::io::Result<()> {
    let etc = root.join("etc/iscsi");
    fs::create_dir_all(etc.join("nodes"))?;
    fs::create_dir_all(root.join("run/lock/iscsi"))?;
    fs::write(
        etc.join("initiatorname.iscsi"),
        format!("InitiatorName={}\n", login.initiator),
    )?;
    let path = etc.join("iscsid.conf");
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(conf(login).as_bytes())?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
}

/// Where iscsiadm keeps `login`'s node record (below `root`).
pub fn node_record(root: &Path, login: &Login) -> PathBuf {
    root.join("etc/iscsi/nodes")
        .join(&login.lun.target)
        .join(format!(
            "{},{},{}",
            login.portal.ip(),
            login.portal.port(),
            login.lun.tpgt
        ))
}

/// `iscsiadm -m node -T <target> -p <ip>:<port>,<tpgt>`, then `then`.
pub fn node_args(login: &Login, then: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-m".into(),
        "node".into(),
        "-T".into(),
        login.lun.target.clone(),
        "-p".into(),
        format!("{},{}", login.portal, login.lun.tpgt),
    ];
    a.extend(then.iter().map(|s| s.to_string()));
    a
}

/// The running iscsid, started again when it is gone — with the back-off
/// init gives its own daemons ([`Supervisor`], [`Policy::default`]), so an
/// iscsid that cannot start is not respawned in a loop.
pub struct Iscsid {
    sup: Supervisor,
}

/// iscsid's name in its [`Supervisor`].
const NAME: &str = "iscsid";

impl Iscsid {
    pub fn new() -> Iscsid {
        Iscsid {
            sup: Supervisor::new(Policy::default(), &[NAME]),
        }
    }

    /// Starts iscsid unless it runs or its restart is not due yet; `Err`
    /// says why it does not run. Once started it waits (up to
    /// [`LISTEN_WAIT`]) until it serves iscsiadm. A restarted iscsid finds
    /// the kernel's sessions and their node records and takes them over
    /// (`sync_sessions` at its start).
    pub fn ensure(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if let Some(pid) = self.sup.pid_of(NAME) {
            if alive(pid) {
                return Ok(());
            }
            // init reaps with waitpid(-1) (the supervisor's loop); liveness
            // comes from /proc, so the exit is noticed here.
            if let Some(plan) = self.sup.exited(pid, now) {
                crate::system::say(&format!(
                    "iscsi: iscsid (pid {pid}) ended; restart #{} in {} ms",
                    plan.restart,
                    plan.delay.as_millis()
                ));
            }
        }
        if self.sup.due(now).is_empty() {
            return Err(format!("{ISCSID} is not running (its restart is pending)"));
        }
        let pid = match crate::daemons::spawn_argv(&[ISCSID.to_owned(), "-f".to_owned()]) {
            Ok(pid) => pid,
            Err(e) => {
                self.sup.spawn_failed(NAME, now);
                return Err(format!("cannot run {ISCSID}: {e}"));
            }
        };
        self.sup.started(NAME, pid, now);
        let until = Instant::now() + LISTEN_WAIT;
        while Instant::now() < until {
            if listening(&fs::read_to_string("/proc/net/unix").unwrap_or_default()) {
                return Ok(());
            }
            if !alive(pid) {
                return Err(format!("{ISCSID} ended as it started (its lines above)"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{ISCSID} does not serve iscsiadm {} s after it started",
            LISTEN_WAIT.as_secs()
        ))
    }
}

impl Default for Iscsid {
    fn default() -> Self {
        Iscsid::new()
    }
}

/// Whether `/proc/net/unix` (its text) shows iscsid's socket.
fn listening(proc_net_unix: &str) -> bool {
    proc_net_unix
        .lines()
        .any(|l| l.split_whitespace().last() == Some(IPC_NAME))
}

/// Whether `pid` is an iscsid that has not ended (a zombie has ended).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| stat_alive(&s))
}

/// `/proc/<pid>/stat`: `pid (comm) state …`; alive if comm is iscsid and
/// the state is not Z (zombie) or X (dead).
fn stat_alive(stat: &str) -> bool {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next();
    comm == "iscsid" && !matches!(state, Some("Z") | Some("X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::tests::login;

    #[test]
    fn the_conf_carries_chap_and_the_timeouts() {
        let c = conf(&login(true));
        for line in [
            "iscsid.ipc_auth_uid = Yes",
            "node.startup = manual",
            "node.session.timeo.replacement_timeout = 120",
            "node.session.initial_login_retry_max = 8",
            "node.session.auth.authmethod = CHAP",
            "node.session.auth.username = ft",
            "node.session.auth.password = twelve-bytes-secret",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing:\n{c}");
        }
        assert!(!c.contains("iscsid.startup"), "{c}");
        assert!(!conf(&login(false)).contains("node.session.auth"));
    }

    #[test]
    fn prepare_writes_the_files_and_hides_the_secret_from_others() {
        let root = tempfile::tempdir().unwrap();
        let l = login(true);
        prepare(root.path(), &l).unwrap();
        let etc = root.path().join("etc/iscsi");
        assert_eq!(
            fs::read_to_string(etc.join("initiatorname.iscsi")).unwrap(),
            "InitiatorName=iqn.2026-01.test.ftappliance:host-a\n"
        );
        let meta = fs::metadata(etc.join("iscsid.conf")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(etc.join("nodes").is_dir());
        assert!(root.path().join("run/lock/iscsi").is_dir());
        // Again (iscsid restarted, same boot): same files, no error.
        prepare(root.path(), &l).unwrap();
        assert_eq!(
            node_record(root.path(), &l),
            root.path()
                .join("etc/iscsi/nodes/iqn.2026-01.test.ftappliance:shared/10.0.2.100,3260,1")
        );
    }

    #[test]
    fn node_args_name_the_record() {
        assert_eq!(
            node_args(&login(false), &["--login"]).join(" "),
            "-m node -T iqn.2026-01.test.ftappliance:shared -p 10.0.2.100:3260,1 --login"
        );
    }

    #[test]
    fn liveness_reads_proc() {
        assert!(stat_alive("812 (iscsid) S 1 812 812 0 -1"));
        assert!(!stat_alive("812 (iscsid) Z 1 812 812 0 -1"));
        assert!(!stat_alive("812 (ftvmm) S 1 812 812 0 -1"));
        assert!(!stat_alive("garbage"));
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 20583 @ISCSIADM_ABSTRACT_NAMESPACE\n";
        assert!(listening(unix));
        assert!(!listening("Num RefCount\n"));
    }
}
