//! The network status service in-process on loopback (127.79.x.y): real
//! heartbeat daemons, real TCP, the real server loop, Noise between hosts
//! and a fake fencing socket. An operator's query is answered with every
//! host (the absent one as unreachable); a host the asked host's heartbeat
//! does not hear is not asked, one it hears that does not answer is given
//! up on at the report deadline, a hung daemon costs its own entry only;
//! another key, an impostor host and a replayed host message are refused.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};
use config_schema::model::Operator;
use config_schema::remote::auth::{OperatorKey, Operators};
use config_schema::remote::report::{ClusterReport, VmConfig};
use config_schema::remote::{client, render, wire, OperatorRequest, Reply, MAX_REPLY_FRAME};
use heartbeat::status_service::{noise, Service, ServiceConfig, PEER_DEADLINE};
use heartbeat::{Daemon, NodeConfig};

use common::NAMES;

const UDP: u16 = 17410;
const TCP: u16 = 17411;
const DEV_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/dev-keys/operators/dev-operator.pk8"
);
const T: Duration = Duration::from_secs(10);

fn secret(i: usize) -> [u8; 32] {
    [0x20 + i as u8; 32]
}

fn ip(i: usize) -> [u8; 4] {
    [127, 79, 1, i as u8 + 1]
}

fn node(i: usize) -> NodeConfig {
    common::hosts::config(i, 3, secret, |j| SocketAddr::from((ip(j), UDP)), 100, 1500)
}

/// The hosts' keys as an operator's config gives them.
fn host_keys() -> client::HostKeys {
    client::HostKeys::from_pairs(
        "demo",
        (0..3).map(|i| {
            (
                NAMES[i].to_string(),
                config_schema::keys::host_public_key(&secret(i)),
            )
        }),
    )
}

fn dev_key() -> OperatorKey {
    OperatorKey::from_pkcs8(&std::fs::read(DEV_KEY).unwrap()).unwrap()
}

fn operators() -> Operators {
    let mut c = config_schema::parse(include_str!("../../examples/cluster.toml"))
        .unwrap()
        .config;
    c.operators = vec![Operator {
        name: "dev-operator".into(),
        public_key: dev_key().public_hex(),
    }];
    Operators::of(&c)
}

/// A fencing socket answering `Status` with a fixed object (ctl protocol).
fn fake_fencing(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = std::io::BufReader::new(&s);
            if let Ok(Request::Status) = ctl::read_message::<Request, _>(&mut r, "test") {
                let status = serde_json::json!({
                    "daemon": "fencing",
                    "device": {"found": true, "path": "/dev/fake", "problem": null},
                    "watchdog": {"state": "fed", "timeout_s": 5},
                });
                let _ = ctl::write_message(&mut &s, &Response::Status { status });
            }
        }
    });
}

/// Starts host `i`'s daemon and service; returns the daemon.
fn start(i: usize, fencing: PathBuf) -> Daemon {
    let d = Daemon::start(node(i)).unwrap();
    let cfg = ServiceConfig {
        node: node(i),
        cluster: "demo".into(),
        config_generation: 7,
        config_digest: [0x1a; 32],
        operators: operators(),
        vms: vec![VmConfig {
            name: "kv".into(),
            replication: "lockstep".into(),
            power: "on".into(),
        }],
        host_order: NAMES.iter().map(|n| n.to_string()).collect(),
        port: TCP,
        mgmt: None,
        fencing_socket: fencing,
        ftvmm_socket: "/nonexistent/ftvmm.sock".into(),
        apply: None,
    };
    let h = d.handle();
    let svc = Service::new(cfg, move || h.status());
    let l = svc.bind().unwrap();
    std::thread::spawn(move || svc.serve(l));
    d
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((ip(i), TCP))
}

/// The cluster report the service at `at` gathers for the dev operator.
fn cluster_status(at: SocketAddr, timeout: Duration) -> ClusterReport {
    let Reply::Cluster { report } = client::query(
        at,
        &dev_key(),
        &host_keys(),
        OperatorRequest::ClusterStatus,
        timeout,
    )
    .unwrap() else {
        panic!("a cluster report")
    };
    report
}

/// Why the service at `at` refuses a host status query signed with a
/// fresh key, one that is no operator's.
fn stranger_refused(at: SocketAddr) -> String {
    let other =
        OperatorKey::from_pkcs8(&config_schema::keys::generate_signing_key().unwrap().0).unwrap();
    let Reply::Refused { reason } =
        client::query(at, &other, &host_keys(), OperatorRequest::HostStatus, T).unwrap()
    else {
        panic!("refused")
    };
    reason
}

/// Records what a client writes.
struct Tap<'a>(&'a mut TcpStream, Vec<u8>);
impl Read for Tap<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Tap<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(b);
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn cluster_status_from_any_host_with_the_absent_one_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fencing.sock");
    fake_fencing(&sock);
    let (a, b) = (start(0, sock), start(1, dir.path().join("none.sock")));
    let until = Instant::now() + Duration::from_secs(60);
    let sees = |d: &Daemon, h: &str| d.handle().peers().iter().any(|p| p.host == h && p.alive);
    while !(sees(&a, "host-b") && sees(&b, "host-a")) {
        assert!(
            Instant::now() < until,
            "host-a and host-b never saw each other"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Asked at host-b, gathered from host-a over Noise.
    let report = cluster_status(addr(1), T);
    let names: Vec<&str> = report.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(names, NAMES);
    let ra = report.report("host-a").expect("host-a answered host-b");
    assert_eq!(ra.fencing["device"]["path"], "/dev/fake");
    assert!(ra.ftvmm["error"]
        .as_str()
        .unwrap()
        .contains("cannot reach /nonexistent/ftvmm.sock"));
    assert_eq!(ra.heartbeat["host"], "host-a");
    // host-c never started: host-b's heartbeat never heard it, so host-b
    // did not wait for it.
    let c = &report.hosts[2];
    assert!(c.report.is_none());
    assert_eq!(
        c.unreachable.as_deref(),
        Some("not asked: down as seen by host-b's heartbeat, never heard"),
        "{c:?}"
    );
    let text = render::render(&report);
    for want in [
        "cluster demo config generation 7 (digest 1a1a1a1a…), gathered by host-b",
        "host-a: answers",
        "heartbeat: up as seen by host-b",
        "watchdog: armed (fed, timeout 5 s)",
        "host-b: answers",
        "heartbeat: this host (the one queried)",
        "host-c: UNREACHABLE (not asked: down as seen by host-b's heartbeat, never heard)",
        // Never heard since start: "unknown" until the failure timeout, then "suspected".
        "as seen by host-b, never heard",
        "kv (lockstep, power on)",
        "no answering host reports it",
        // Both in-process daemons share this process's event ring.
        "membership: heartbeat: peer host-b up",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The same figures as OpenMetrics text, for the same operator.
    let Reply::Metrics { text } = client::query(
        addr(0),
        &dev_key(),
        &host_keys(),
        OperatorRequest::Metrics,
        T,
    )
    .unwrap() else {
        panic!("metrics")
    };
    for want in [
        "ft_heartbeat_peer_up{host=\"host-a\",peer=\"host-b\"} 1",
        "ft_watchdog_armed{host=\"host-a\"} 1",
        "ft_daemon_up{host=\"host-a\",daemon=\"ftvmm\"} 0",
        "# TYPE ft_events counter",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    drop((a, b));
}

#[test]
fn unlisted_operators_impostor_hosts_and_replays_are_refused() {
    // Other hosts of the same loopback net as the test above: own ports.
    let dir = tempfile::tempdir().unwrap();
    start_on(1, dir.path());
    let reason = stranger_refused(alt(1));
    assert!(
        reason.contains("is not an operator of this cluster's config"),
        "{reason}"
    );

    // host-a's real key: answered; the recorded message replayed: refused.
    let (mut s, hello) = client::connect(alt(1), T).unwrap();
    let mut tap = Tap(&mut s, Vec::new());
    let peer = config_schema::keys::host_public_key(&secret(1));
    let bytes = noise::ask(&mut tap, &hello, "host-a", &secret(0), &peer).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(report["host"], "host-b");
    let recorded = tap.1;
    let (mut s2, _) = client::connect(alt(1), T).unwrap();
    s2.write_all(&recorded).unwrap();
    let Reply::Refused { reason } = wire::read_frame(&mut s2, MAX_REPLY_FRAME).unwrap() else {
        panic!("refused")
    };
    assert!(
        reason.contains("not this connection's (replayed?)"),
        "{reason}"
    );

    // An impostor: claims to be host-a with a key that is not host-a's.
    let (mut s3, hello) = client::connect(alt(1), T).unwrap();
    let err = noise::ask(&mut s3, &hello, "host-a", &[0x77; 32], &peer).unwrap_err();
    assert!(
        err.to_string()
            .contains("static key is not host host-a's key"),
        "{err}"
    );
    let (mut s4, hello) = client::connect(alt(1), T).unwrap();
    let err = noise::ask(&mut s4, &hello, "host-z", &secret(0), &peer).unwrap_err();
    assert!(
        err.to_string().contains("unknown host \\\"host-z\\\""),
        "{err}"
    );
}

fn alt(i: usize) -> SocketAddr {
    on(2, i)
}

fn on(net: u8, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 79, net, i as u8 + 1], TCP))
}

/// Host `i`'s service alone (no heartbeat daemon) on 127.79.2.x.
fn start_on(i: usize, dir: &Path) {
    start_in(2, i, dir)
}

/// Host `i`'s service alone (no heartbeat daemon) on 127.79.`net`.x, its
/// peers on the same net.
fn start_in(net: u8, i: usize, dir: &Path) {
    start_with_mgmt(net, i, dir, None)
}

/// [`start_in`], the service also listening on the management address `mgmt`.
fn start_with_mgmt(net: u8, i: usize, dir: &Path, mgmt: Option<IpAddr>) {
    let hb = serde_json::json!({"daemon": "heartbeat", "host": NAMES[i]});
    start_with(net, i, dir, mgmt, hb, dir.join("none"))
}

/// [`start_with_mgmt`] with `heartbeat` as heartbeat's status (its `peers`:
/// the view the gathering decides on) and fencing's socket at `fencing`.
fn start_with(
    net: u8,
    i: usize,
    dir: &Path,
    mgmt: Option<IpAddr>,
    heartbeat: serde_json::Value,
    fencing: PathBuf,
) {
    let mut n = node(i);
    n.bind = SocketAddr::from(([127, 79, net, i as u8 + 1], UDP));
    for p in &mut n.peers {
        p.addr = SocketAddr::from(([127, 79, net, p.id as u8], UDP));
    }
    let cfg = ServiceConfig {
        node: n,
        cluster: "demo".into(),
        config_generation: 7,
        config_digest: [0x1a; 32],
        operators: operators(),
        vms: vec![],
        host_order: NAMES.iter().map(|n| n.to_string()).collect(),
        port: TCP,
        mgmt,
        fencing_socket: fencing,
        ftvmm_socket: dir.join("none"),
        apply: None,
    };
    let svc = Service::new(cfg, move || heartbeat.clone());
    let l = svc.bind().unwrap();
    std::thread::spawn(move || svc.serve(l));
}

/// heartbeat's status listing `peers` as (name, alive, last heard ms ago).
fn heartbeat_hearing(me: &str, peers: &[(&str, bool, u64)]) -> serde_json::Value {
    let peers: Vec<_> = (peers.iter())
        .map(|&(name, alive, ms)| {
            let state = if alive { "up" } else { "suspected" };
            serde_json::json!({"name": name, "state": state, "alive": alive, "last_seen_ms": ms})
        })
        .collect();
    serde_json::json!({"daemon": "heartbeat", "host": me, "peers": peers})
}

/// Accepts every connection at `at` and holds it; with `hello`, first
/// sends host `hello`'s hello as a status service would, then nothing.
fn silent_host(at: SocketAddr, hello: Option<&str>) {
    let l = std::net::TcpListener::bind(at).unwrap();
    let hello = hello.map(|host| wire::ServerHello {
        version: config_schema::remote::VERSION,
        cluster: "demo".into(),
        host: host.into(),
        nonce: "00".repeat(32),
    });
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            if let Some(h) = &hello {
                wire::write_frame(&mut s, h).unwrap();
            }
            held.push(s);
        }
    });
}

#[test]
fn a_heard_host_that_accepts_and_never_answers_is_given_up_on_at_the_report_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // host-a's heartbeat hears both (they died a moment ago, say): asked.
    let hb = heartbeat_hearing("host-a", &[("host-b", true, 20), ("host-c", true, 20)]);
    start_with(3, 0, dir.path(), None, hb, dir.path().join("none"));
    // host-b says its hello, then nothing (the deadline that was 10 s);
    // host-c takes the connection and says nothing at all.
    silent_host(on(3, 1), Some("host-b"));
    silent_host(on(3, 2), None);
    let t0 = Instant::now();
    let report = cluster_status(on(3, 0), Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(report.report("host-a").is_some());
    let b = report.hosts[1].unreachable.as_deref().unwrap();
    assert_eq!(b, "127.79.3.2:17411: no report within 1500 ms");
    let c = report.hosts[2].unreachable.as_deref().unwrap();
    assert_eq!(c, "127.79.3.3:17411: no report within 1500 ms");
    // Given up on well before the old deadline for the exchange alone (a
    // loose bound: only a machine stalled for seconds could miss it).
    assert!(took < PEER_DEADLINE, "{took:?}");
}

#[test]
fn a_host_the_heartbeat_does_not_hear_is_not_asked_and_one_it_hears_is() {
    let dir = tempfile::tempdir().unwrap();
    let hb = heartbeat_hearing("host-a", &[("host-b", false, 4200), ("host-c", true, 30)]);
    start_with(5, 0, dir.path(), None, hb, dir.path().join("none"));
    // host-b's address would take a connection (into the backlog, never
    // answered); host-c serves.
    let b_listener = std::net::TcpListener::bind(on(5, 1)).unwrap();
    start_in(5, 2, dir.path());
    let report = cluster_status(on(5, 0), Duration::from_secs(30));
    let b = report.hosts[1].unreachable.as_deref();
    assert_eq!(
        b,
        Some("not asked: down as seen by host-a's heartbeat, last heard 4200 ms ago")
    );
    // Nothing ever connected to host-b: the answer did not wait for it.
    b_listener.set_nonblocking(true).unwrap();
    let accepted = b_listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "host-b was contacted: {accepted:?}"
    );
    assert!(report.report("host-c").is_some(), "{report:?}");
    // The reason and the heartbeat line under it come from one snapshot.
    let text = render::render(&report);
    for want in [
        "host-b: UNREACHABLE (not asked: down as seen by host-a's heartbeat, last heard 4200 ms ago)",
        "heartbeat: suspected as seen by host-a, last heard 4200 ms ago",
        "host-c: answers",
        "heartbeat: up as seen by host-a, last heard 30 ms ago",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn a_hung_daemon_costs_its_own_entry_not_its_hosts_report() {
    let dir = tempfile::tempdir().unwrap();
    // A fencing socket that takes every request and never answers.
    let sock = dir.path().join("hung-fencing.sock");
    let l = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let _held: Vec<_> = l.incoming().flatten().collect();
    });
    for i in [0, 1] {
        let hb = serde_json::json!({"daemon": "heartbeat", "host": NAMES[i]});
        start_with(7, i, dir.path(), None, hb, sock.clone());
    }
    let report = cluster_status(on(7, 0), Duration::from_secs(30));
    let hung = format!("no answer on {} within 1000 ms", sock.display());
    for h in ["host-a", "host-b"] {
        let r = report
            .report(h)
            .unwrap_or_else(|| panic!("{h}: {report:?}"));
        assert_eq!(r.fencing["error"], hung.as_str(), "{h}");
        assert!(r.ftvmm["error"].as_str().unwrap().contains("cannot reach"));
    }
    let text = render::render(&report);
    let line = format!("    watchdog: n/a ({hung})\n");
    assert_eq!(text.matches(&line).count(), 2, "{text}");
}

#[test]
fn the_management_address_answers_operators_and_hosts_still_ask_on_ft() {
    let dir = tempfile::tempdir().unwrap();
    // host-a on its FT address only; host-b also on 127.80.4.2 (management).
    let mgmt_b = SocketAddr::from(([127, 80, 4, 2], TCP));
    start_in(4, 0, dir.path());
    start_with_mgmt(4, 1, dir.path(), Some(mgmt_b.ip()));
    // Asked at host-b's management address: host-b gathers the others on FT.
    let report = cluster_status(mgmt_b, Duration::from_secs(30));
    assert_eq!(report.queried, "host-b");
    assert!(report.report("host-a").is_some(), "{report:?}");
    assert!(report.report("host-b").is_some(), "{report:?}");
    assert_eq!(report.hosts[1].addr, "127.79.4.2:17411");
    let c = report.hosts[2].unreachable.as_deref().unwrap();
    assert!(c.contains("cannot connect to 127.79.4.3:17411"), "{c}");
    // Metrics too, and the FT address still answers.
    for at in [mgmt_b, on(4, 1)] {
        let reply = client::query(at, &dev_key(), &host_keys(), OperatorRequest::Metrics, T);
        assert!(
            matches!(reply, Ok(Reply::Metrics { .. })),
            "{at}: {reply:?}"
        );
    }
    // Only operators: another key is refused there as on FT.
    let reason = stranger_refused(mgmt_b);
    assert!(
        reason.contains("is not an operator of this cluster's config"),
        "{reason}"
    );
    // host-a has no management address: nothing listens on 127.80.4.1.
    let none = SocketAddr::from(([127, 80, 4, 1], TCP));
    let e = client::query(
        none,
        &dev_key(),
        &host_keys(),
        OperatorRequest::HostStatus,
        T,
    );
    assert!(
        matches!(e, Err(client::ClientError::Connect { .. })),
        "{e:?}"
    );
}
