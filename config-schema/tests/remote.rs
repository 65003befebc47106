//! The status service on loopback: real sockets, the real server loop and
//! client, a fixed backend. Authorised queries answered; unknown keys,
//! replays and malformed requests refused with a reason; `ftctl status
//! --cluster` end to end with the development operator key.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use config_schema::keys;
use config_schema::model::Operator;
use config_schema::remote::apply::{HostApplied, Outcome};
use config_schema::remote::auth::{OperatorKey, Operators};
use config_schema::remote::report::{ClusterReport, HostEntry, HostReport, VmConfig};
use config_schema::remote::server::{self, Backend};
use config_schema::remote::wire::{self, write_raw};
use config_schema::remote::{
    client, ClientMsg, OperatorRequest, Reply, ServerHello, MAX_REPLY_FRAME,
};
use config_schema::signed::SignedConfig;

const DEV_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/dev-keys/operators/dev-operator.pk8"
);

struct Fixed {
    operators: Operators,
}

impl Backend for Fixed {
    fn cluster(&self) -> String {
        "demo".into()
    }
    fn host(&self) -> String {
        "host-a".into()
    }
    fn operators(&self) -> Operators {
        self.operators.clone()
    }
    fn host_report(&self) -> HostReport {
        HostReport {
            host: "host-a".into(),
            config_generation: 1,
            unix_ms: 1_800_000_000_000,
            heartbeat: serde_json::json!({"peers": []}),
            fencing: serde_json::json!({"error": "not fencing"}),
            ftvmm: serde_json::json!({"vms": []}),
        }
    }
    fn cluster_report(&self) -> ClusterReport {
        ClusterReport {
            cluster: "demo".into(),
            config_generation: 1,
            queried: "host-a".into(),
            vms: vec![VmConfig {
                name: "kv".into(),
                replication: "lockstep".into(),
                power: "on".into(),
            }],
            hosts: vec![
                HostEntry {
                    host: "host-a".into(),
                    addr: "127.0.0.1".into(),
                    report: Some(self.host_report()),
                    unreachable: None,
                },
                HostEntry {
                    host: "host-b".into(),
                    addr: "192.0.2.2:7401".into(),
                    report: None,
                    unreachable: Some("cannot connect to 192.0.2.2:7401: timed out".into()),
                },
            ],
        }
    }
    fn metrics(&self) -> String {
        "# TYPE ft_test gauge\nft_test 1\n# EOF\n".into()
    }
    fn peer_query(&self, _: &mut TcpStream, _: &[u8; 32], _: &str, _: &str) -> Result<(), String> {
        Err("this test backend takes no host queries".into())
    }
    fn apply(&self, config: SignedConfig, operator: &str) -> Reply {
        let g = config_schema::canonical::decode(&config.canonical)
            .unwrap()
            .cluster
            .generation;
        Reply::Applied {
            generation: g,
            hosts: vec![
                HostApplied {
                    host: "host-a".into(),
                    outcome: Outcome::NeedsReboot,
                    line: format!(
                        "host-a: generation {g} persisted (was 0); needs reboot: x ({operator})"
                    ),
                },
                HostApplied {
                    host: "host-b".into(),
                    outcome: Outcome::Unreachable,
                    line: "host-b: unreachable: timed out".into(),
                },
            ],
        }
    }
}

fn dev_key() -> OperatorKey {
    OperatorKey::from_pkcs8(&std::fs::read(DEV_KEY).unwrap()).unwrap()
}

/// A server whose config lists the development operator.
fn start() -> SocketAddr {
    let mut c = config_schema::parse(include_str!("../../examples/cluster.toml"))
        .unwrap()
        .config;
    c.operators = vec![Operator {
        name: "dev-operator".into(),
        public_key: dev_key().public_hex(),
    }];
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let b: Arc<dyn Backend> = Arc::new(Fixed {
        operators: Operators::of(&c),
    });
    std::thread::spawn(move || server::serve(l, b));
    addr
}

const T: Duration = Duration::from_secs(5);

fn refused(r: Reply) -> String {
    match r {
        Reply::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_operator_listed_in_the_config_gets_the_cluster() {
    let addr = start();
    let Reply::Cluster { report } =
        client::query(addr, &dev_key(), OperatorRequest::ClusterStatus, T).unwrap()
    else {
        panic!("a cluster report");
    };
    assert_eq!(report.hosts.len(), 2);
    assert!(report.hosts[1]
        .unreachable
        .as_deref()
        .unwrap()
        .contains("timed out"));
    let Reply::Host { report } =
        client::query(addr, &dev_key(), OperatorRequest::HostStatus, T).unwrap()
    else {
        panic!("a host report");
    };
    assert_eq!(report.host, "host-a");
}

#[test]
fn an_unlisted_key_is_refused_with_the_reason() {
    let addr = start();
    let other = OperatorKey::from_pkcs8(&keys::generate_signing_key().unwrap().0).unwrap();
    let why = refused(client::query(addr, &other, OperatorRequest::ClusterStatus, T).unwrap());
    assert!(
        why.contains("host-a refuses a query from 127.0.0.1:"),
        "{why}"
    );
    assert!(
        why.contains("is not an operator of this cluster's config"),
        "{why}"
    );
}

#[test]
fn a_recorded_query_replayed_on_another_connection_is_refused() {
    let addr = start();
    let (mut s1, h1) = client::connect(addr, T).unwrap();
    let recorded = dev_key().sign(&h1, OperatorRequest::ClusterStatus).unwrap();
    wire::write_frame(&mut s1, &recorded).unwrap();
    assert!(matches!(
        wire::read_frame(&mut s1, MAX_REPLY_FRAME).unwrap(),
        Reply::Cluster { .. }
    ));
    let (mut s2, h2) = client::connect(addr, T).unwrap();
    assert_ne!(h1.nonce, h2.nonce);
    wire::write_frame(&mut s2, &recorded).unwrap();
    let why = refused(wire::read_frame(&mut s2, MAX_REPLY_FRAME).unwrap());
    assert!(
        why.contains("does not verify for this connection's challenge"),
        "{why}"
    );
}

#[test]
fn malformed_and_oversized_requests_are_refused_with_the_reason() {
    let addr = start();
    let exchange = |bytes: &[u8]| {
        let (mut s, _h): (TcpStream, ServerHello) = client::connect(addr, T).unwrap();
        std::io::Write::write_all(&mut s, bytes).unwrap();
        refused(wire::read_frame(&mut s, MAX_REPLY_FRAME).unwrap())
    };
    let mut garbage = Vec::new();
    write_raw(&mut garbage, b"{\"kind\":\"operator\",\"public_key\":1}").unwrap();
    let why = exchange(&garbage);
    assert!(why.contains("bad request: malformed message"), "{why}");
    let why = exchange(&(1u32 << 30).to_be_bytes());
    assert!(
        why.contains("bad request: frame of 1073741824 bytes exceeds the limit of 8192 bytes"),
        "{why}"
    );
    let bad_sig = ClientMsg::Operator {
        public_key: dev_key().public_hex(),
        request: OperatorRequest::ClusterStatus,
        signature: "00".repeat(10),
    };
    let mut f = Vec::new();
    wire::write_frame(&mut f, &bad_sig).unwrap();
    assert!(exchange(&f).contains("signature is not 128 hex digits"));
    // A client that sends half a frame and hangs up gets nothing, and the
    // server goes on serving.
    let (mut s, _) = client::connect(addr, T).unwrap();
    std::io::Write::write_all(&mut s, &[0, 0, 1]).unwrap();
    drop(s);
    assert!(client::query(addr, &dev_key(), OperatorRequest::HostStatus, T).is_ok());
}

#[test]
fn ftctl_status_cluster_prints_hosts_vms_and_the_unreachable_one() {
    let addr = start();
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args([
            "status",
            "--cluster",
            "--host",
            &addr.to_string(),
            "--key",
            DEV_KEY,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "cluster demo config generation 1 (gathered by host-a)",
        "host-a: answers",
        "host-b: UNREACHABLE (cannot connect to 192.0.2.2:7401: timed out)",
        "kv (lockstep, power on)",
        "no answering host reports it",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["metrics", "--host", &addr.to_string(), "--key", DEV_KEY])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "# TYPE ft_test gauge\nft_test 1\n# EOF\n"
    );
    // Another key: exit 1, one line naming the refusal.
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args([
            "operator-keygen",
            "--out",
            dir.path().to_str().unwrap(),
            "--name",
            "mallory",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&st.stdout)
        .contains("[[operators]]\nname = \"mallory\"\npublic_key = \""));
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["status", "--cluster", "--host", &addr.to_string(), "--key"])
        .arg(dir.path().join("mallory.pk8"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with("refused: status service: host-a refuses a query from 127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn signed_example(generation: u64) -> (SignedConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["keygen", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = include_str!("../../examples/cluster.toml")
        .replace("generation = 1", &format!("generation = {generation}"));
    std::fs::write(dir.path().join("c.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["sign", "--config"])
        .arg(dir.path().join("c.toml"))
        .arg("--key")
        .arg(dir.path().join("signing.pk8"))
        .arg("--out")
        .arg(dir.path().join("c.ftcfg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(dir.path().join("c.ftcfg")).unwrap();
    (SignedConfig::decode(&bytes).unwrap(), dir)
}

#[test]
fn ftctl_sign_then_apply_prints_one_line_per_host_and_fails_on_an_unreachable_one() {
    let addr = start();
    let (_, dir) = signed_example(4);
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["apply", "--host", &addr.to_string(), "--key", DEV_KEY])
        .arg(dir.path().join("c.ftcfg"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "host-a: generation 4 persisted (was 0); needs reboot: x (dev-operator)\n\
         host-b: unreachable: timed out\n"
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "generation 4 not applied on host-b\n");
    // Another key: refused before the config is sent.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["operator-keygen", "--name", "mallory", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["apply", "--host", &addr.to_string(), "--key"])
        .arg(other.join("mallory.pk8"))
        .arg(dir.path().join("c.ftcfg"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not an operator of this cluster"),
        "{stderr}"
    );
}

#[test]
fn an_apply_whose_config_is_not_the_one_signed_for_is_refused() {
    let addr = start();
    let (a, _d1) = signed_example(4);
    let (b, _d2) = signed_example(5);
    let (mut s, hello) = client::connect(addr, T).unwrap();
    let msg = dev_key()
        .sign(
            &hello,
            OperatorRequest::Apply {
                config_sha256: a.sha256(),
            },
        )
        .unwrap();
    wire::write_frame(&mut s, &msg).unwrap();
    let go: Reply = wire::read_frame(&mut s, MAX_REPLY_FRAME).unwrap();
    assert_eq!(go, Reply::SendConfig);
    write_raw(&mut s, &b.encode()).unwrap();
    let r: Reply = wire::read_frame(&mut s, MAX_REPLY_FRAME).unwrap();
    assert!(refused(r).ends_with("apply: the config sent is not the one the operator signed for"),);
}
