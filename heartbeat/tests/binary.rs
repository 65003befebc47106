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

/// The binary serves the network status service on its FT address: the
/// development operator (listed in the runtime config) gets host-a's report
/// and host-b (not running) as unreachable, not asked once host-a's
/// heartbeat runs (it never heard host-b); a config without operators
/// refuses everyone.
#[test]
fn the_binary_serves_cluster_status_to_listed_operators() {
    use config_schema::remote::auth::OperatorKey;
    use config_schema::remote::report::ClusterReport;
    use config_schema::remote::{client, OperatorRequest, Reply};
    let dir = tempfile::tempdir().unwrap();
    let key_path = examples().join("dev-keys/operators/dev-operator.pk8");
    let key = OperatorKey::from_pkcs8(&std::fs::read(key_path).unwrap()).unwrap();
    let serve = |host: &str, port: &str, operators: bool| {
        let mut rt = runtime(host);
        for h in &mut rt.config.hosts {
            h.ft.addr = format!("127.78.1.{}/24", h.id);
        }
        if operators {
            rt.config.operators = vec![config_schema::model::Operator {
                name: "dev-operator".into(),
                public_key: key.public_hex(),
            }];
        }
        let cfg = dir.path().join(format!("{host}-{port}.json"));
        std::fs::write(&cfg, serde_json::to_vec(&rt).unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_heartbeat"))
            .args(["--config".as_ref(), cfg.as_os_str()])
            .arg("--socket")
            .arg(dir.path().join(format!("{host}-{port}.sock")))
            .args(["--port", "17403", "--status-port", port])
            .arg("--fencing-socket")
            .arg(dir.path().join("no-fencing.sock"))
            .arg("--ftvmm-socket")
            .arg(dir.path().join("no-ftvmm.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    };
    let hosts = client::HostKeys::of(&runtime("host-a").config);
    let _a = serve("host-a", "17404", true);
    let addr: std::net::SocketAddr = "127.78.1.1:17404".parse().unwrap();
    let t = Duration::from_secs(10);
    let start = Instant::now();
    // Until heartbeat runs (its status lists peers), the service has no view.
    let runs = |r: &ClusterReport| {
        r.report("host-a")
            .is_some_and(|a| a.heartbeat["peers"].is_array())
    };
    let report = loop {
        match client::query(addr, &key, &hosts, OperatorRequest::ClusterStatus, t) {
            Ok(Reply::Cluster { report }) if runs(&report) => break report,
            other => assert!(start.elapsed() < Duration::from_secs(60), "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report.queried, "host-a");
    assert_eq!(report.hosts.len(), 3);
    let a = report.report("host-a").unwrap();
    assert_eq!(a.heartbeat["daemon"], "heartbeat");
    assert!(a.fencing["error"]
        .as_str()
        .unwrap()
        .contains("no-fencing.sock"));
    assert_eq!(report.hosts[1].addr, "127.78.1.2:17404");
    assert_eq!(
        report.hosts[1].unreachable.as_deref(),
        Some("not asked: down as seen by host-a's heartbeat, never heard")
    );

    let _c = serve("host-c", "17405", false);
    let addr: std::net::SocketAddr = "127.78.1.3:17405".parse().unwrap();
    let start = Instant::now();
    let reason = loop {
        match client::query(addr, &key, &hosts, OperatorRequest::HostStatus, t) {
            Ok(Reply::Refused { reason }) => break reason,
            other => assert!(start.elapsed() < Duration::from_secs(60), "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains("lists no [[operators]]"), "{reason}");
}
