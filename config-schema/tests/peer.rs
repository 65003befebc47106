//! The control server's peer checks with real processes: `ftctl status` run
//! as root is served, the same binary run as an unprivileged user (uid 65534)
//! is refused with an error naming it. Needs root (to run a child as another
//! user).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use config_schema::ctl_server::{self, Policy};
use config_schema::peer::Programs;

const FTCTL: &str = env!("CARGO_BIN_EXE_ftctl");
const NOBODY: u32 = 65534;

fn serve(path: &Path) {
    let l = ctl_server::bind(path).unwrap();
    std::thread::spawn(move || {
        ctl_server::serve(l, Policy::heartbeat(Programs::appliance()), |req| {
            ctl_server::status_only("heartbeat", req, || serde_json::json!({"daemon": "hb"}))
        })
    });
}

fn status(sock: &Path, uid: Option<u32>) -> Output {
    let mut cmd = Command::new(FTCTL);
    cmd.args(["status", "--socket"]).arg(sock);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().expect("ftctl runs")
}

#[test]
fn an_unprivileged_peer_is_refused_and_root_is_served() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs a child as uid {NOBODY}: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("heartbeat.sock");
    serve(&sock);
    // Let the unprivileged user connect at all: the peer check is what is tested.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();

    let o = status(&sock, None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("\"daemon\": \"hb\""), "{out}");

    let o = status(&sock, Some(NOBODY));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "heartbeat refuses status from pid {pid} ({FTCTL}, uid {NOBODY}): only root processes may use its control socket",
            pid = out
                .split("from pid ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("?")
        )),
        "{out}"
    );
}
