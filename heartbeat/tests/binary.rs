//! The `heartbeat` binary as init starts it: `--config <runtime json>`, with
//! the example cluster moved onto loopback (127.78.0.x) and its dev keys. Two
//! processes serve `Status`/`Peers` on their sockets and see each other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};
use config_schema::runtime::RuntimeConfig;

const PORT: &str = "17401";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn runtime(host: &str) -> RuntimeConfig {
    let text = std::fs::read_to_string(examples().join("cluster.toml")).unwrap();
    let mut config = config_schema::parse(&text).unwrap().config;
    for h in &mut config.hosts {
        h.ft.addr = format!("127.78.0.{}/24", h.id);
    }
    let key =
        std::fs::read_to_string(examples().join(format!("dev-keys/hosts/{host}.key"))).unwrap();
    RuntimeConfig {
        config,
        host_name: host.into(),
        host_private_key: key.trim().into(),
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, host: &str) -> (Proc, PathBuf) {
    let cfg = dir.join(format!("{host}.json"));
    std::fs::write(&cfg, serde_json::to_vec(&runtime(host)).unwrap()).unwrap();
    let sock = dir.join(format!("{host}.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_heartbeat"))
        .args(["--config".as_ref(), cfg.as_os_str()])
        .args(["--socket".as_ref(), sock.as_os_str()])
        .args(["--port", PORT])
        // This test process asks for Peers, which only ftvmm may.
        .arg("--peer-exe")
        .arg(format!(
            "ftvmm={}",
            std::env::current_exe().unwrap().display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Proc(child), sock)
}

fn peers(sock: &Path) -> Option<Vec<(String, bool)>> {
    match ctl::query(sock, &Request::Peers).ok()? {
        Response::Peers { peers } => Some(peers.into_iter().map(|p| (p.host, p.alive)).collect()),
        _ => None,
    }
}

#[test]
fn two_processes_serve_status_and_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, sa) = start(dir.path(), "host-a");
    let (_b, sb) = start(dir.path(), "host-b");
    let start = Instant::now();
    loop {
        let (pa, pb) = (peers(&sa), peers(&sb));
        let sees = |p: &Option<Vec<(String, bool)>>, h: &str| {
            p.as_ref()
                .is_some_and(|v| v.iter().any(|(n, a)| n == h && *a))
        };
        if sees(&pa, "host-b") && sees(&pb, "host-a") {
            assert!(!sees(&pa, "host-c"), "host-c runs nowhere: {pa:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a: {pa:?} b: {pb:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    match ctl::query(&sa, &Request::Status).unwrap() {
        Response::Status { status } => {
            assert_eq!(status["daemon"], "heartbeat");
            assert_eq!(status["host"], "host-a");
            assert_eq!(status["udp"], format!("127.78.0.1:{PORT}"));
            assert_eq!(status["peers"][0]["addr"], format!("127.78.0.2:{PORT}"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_private_key_not_matching_the_config_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime("host-a");
    rt.host_private_key = "11".repeat(32);
    let cfg = dir.path().join("bad.json");
    std::fs::write(&cfg, serde_json::to_vec(&rt).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heartbeat"))
        .args(["--config".as_ref(), cfg.as_os_str()])
        .args(["--socket".as_ref(), dir.path().join("s").as_os_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match its public_key"), "{err}");
}
