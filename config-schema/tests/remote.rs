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
use config_schema::remote::sealed::ClientSeal;
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
    reply_key: [u8; 32],
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
    fn reply_key(&self) -> [u8; 32] {
        self.reply_key
    }
    fn host_report(&self) -> HostReport {
        HostReport {
            host: "host-a".into(),
            config_generation: 1,
            config_digest: Some("abcdef01".repeat(8)),
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
            config_digest: Some("abcdef01".repeat(8)),
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
                    holds: true,
                },
                HostApplied {
                    host: "host-b".into(),
                    outcome: Outcome::Unreachable,
                    line: "host-b: unreachable: timed out".into(),
                    holds: false,
                },
            ],
        }
    }
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml");

/// host-a's X25519 key: the example's development key, so that the
/// example config (what the operator holds) checks this server's replies.
fn host_a_secret() -> [u8; 32] {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/dev-keys/hosts/host-a.key"
    );
    config_schema::keys::parse_hex_key(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The hosts' keys as the operator's config (the example) gives them.
fn host_keys() -> client::HostKeys {
    client::HostKeys::of(
        &config_schema::parse(include_str!("../../examples/cluster.toml"))
            .unwrap()
            .config,
    )
}

fn dev_key() -> OperatorKey {
    OperatorKey::from_pkcs8(&std::fs::read(DEV_KEY).unwrap()).unwrap()
}

/// A server whose config lists the development operator.
fn start() -> SocketAddr {
    start_with_key(host_a_secret())
}

/// The same, sealing its replies with `reply_key` (an impostor's when it is
/// not host-a's).
fn start_with_key(reply_key: [u8; 32]) -> SocketAddr {
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
        reply_key,
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
    let Reply::Cluster { report } = client::query(
        addr,
        &dev_key(),
        &host_keys(),
        OperatorRequest::ClusterStatus,
        T,
    )
    .unwrap() else {
        panic!("a cluster report");
    };
    assert_eq!(report.hosts.len(), 2);
    assert!(report.hosts[1]
        .unreachable
        .as_deref()
        .unwrap()
        .contains("timed out"));
    let Reply::Host { report } = client::query(
        addr,
        &dev_key(),
        &host_keys(),
        OperatorRequest::HostStatus,
        T,
    )
    .unwrap() else {
        panic!("a host report");
    };
    assert_eq!(report.host, "host-a");
}

#[test]
fn an_unlisted_key_is_refused_with_the_reason() {
    let addr = start();
    let other = OperatorKey::from_pkcs8(&keys::generate_signing_key().unwrap().0).unwrap();
    let why = refused(
        client::query(
            addr,
            &other,
            &host_keys(),
            OperatorRequest::ClusterStatus,
            T,
        )
        .unwrap(),
    );
    assert!(
        why.contains("host-a refuses a query from 127.0.0.1:"),
        "{why}"
    );
    assert!(
        why.contains("is not an operator of this cluster's config"),
        "{why}"
    );
}

fn host_a_public() -> [u8; 32] {
    config_schema::keys::host_public_key(&host_a_secret())
}

#[test]
fn a_host_that_cannot_seal_with_the_configured_key_gives_no_report() {
    // A machine answering as host-a without host-a's key (in the middle, or
    // a wrong machine): the query is refused, no report is ever shown.
    let addr = start_with_key([0x42; 32]);
    match client::query(
        addr,
        &dev_key(),
        &host_keys(),
        OperatorRequest::ClusterStatus,
        T,
    ) {
        Ok(Reply::Refused { reason }) => {
            assert!(reason.contains("cannot seal the reply"), "{reason}")
        }
        other => panic!("a report from an impostor: {other:?}"),
    }
    // And ftctl says so, naming the config it checked against.
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args([
            "status",
            "--cluster",
            "--host",
            &addr.to_string(),
            "--key",
            DEV_KEY,
        ])
        .args(["--config", EXAMPLE])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A client whose config names another key for host-a (an impostor that
    // seals with its own key) fails to open the reply.
    let addr = start();
    let wrong = client::HostKeys::from_pairs(
        "demo",
        [(
            "host-a".to_string(),
            config_schema::keys::host_public_key(&[0x43; 32]),
        )],
    );
    match client::query(addr, &dev_key(), &wrong, OperatorRequest::ClusterStatus, T) {
        Ok(Reply::Refused { .. }) | Err(_) => {}
        other => panic!("a report opened with the wrong key: {other:?}"),
    }
    // A host the config does not list.
    let stranger = client::HostKeys::from_pairs("demo", []);
    let e = client::query(
        addr,
        &dev_key(),
        &stranger,
        OperatorRequest::ClusterStatus,
        T,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("which the config given (--config) does not list"),
        "{e}"
    );
}

#[test]
fn a_recorded_query_replayed_on_another_connection_is_refused() {
    let addr = start();
    let (mut s1, h1) = client::connect(addr, T).unwrap();
    let (_, m1) = ClientSeal::start(&h1, &host_a_public()).unwrap();
    let recorded = dev_key()
        .sign(&h1, OperatorRequest::ClusterStatus, &m1)
        .unwrap();
    wire::write_frame(&mut s1, &recorded).unwrap();
    assert!(matches!(
        wire::read_frame(&mut s1, MAX_REPLY_FRAME).unwrap(),
        Reply::Sealed { .. }
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
        noise: String::new(),
    };
    let mut f = Vec::new();
    wire::write_frame(&mut f, &bad_sig).unwrap();
    assert!(exchange(&f).contains("signature is not 128 hex digits"));
    // A client that sends half a frame and hangs up gets nothing, and the
    // server goes on serving.
    let (mut s, _) = client::connect(addr, T).unwrap();
    std::io::Write::write_all(&mut s, &[0, 0, 1]).unwrap();
    drop(s);
    assert!(client::query(
        addr,
        &dev_key(),
        &host_keys(),
        OperatorRequest::HostStatus,
        T
    )
    .is_ok());
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
            "--config",
            EXAMPLE,
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
        "cluster demo config generation 1 (digest abcdef01…), gathered by host-a",
        "host-a: answers",
        "host-b: UNREACHABLE (cannot connect to 192.0.2.2:7401: timed out)",
        "kv (lockstep, power on)",
        "no answering host reports it",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ftctl"))
        .args(["metrics", "--host", &addr.to_string(), "--key", DEV_KEY])
        .args(["--config", EXAMPLE])
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
        .args(["--config", EXAMPLE])
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
    let sc = SignedConfig::decode(&bytes).unwrap();
    // It names the digest that decides between two configs of a generation.
    let said = String::from_utf8(out.stdout).unwrap();
    let digest = config_schema::config_id::digest(&sc.canonical);
    assert!(
        said.ends_with(&format!("; digest {}\n", hex::encode(digest))),
        "{said}"
    );
    (sc, dir)
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
    let (seal, m1) = ClientSeal::start(&hello, &host_a_public()).unwrap();
    let msg = dev_key()
        .sign(
            &hello,
            OperatorRequest::Apply {
                config_sha256: a.sha256(),
            },
            &m1,
        )
        .unwrap();
    wire::write_frame(&mut s, &msg).unwrap();
    let Reply::Sealed { noise } = wire::read_frame(&mut s, MAX_REPLY_FRAME).unwrap() else {
        panic!("a sealed exchange")
    };
    let mut sealed = seal.finish(&hex::decode(noise).unwrap()).unwrap();
    let reply = |s: &mut TcpStream, sealed: &mut config_schema::remote::sealed::Sealed| -> Reply {
        serde_json::from_slice(&sealed.recv(s, MAX_REPLY_FRAME).unwrap()).unwrap()
    };
    assert_eq!(reply(&mut s, &mut sealed), Reply::SendConfig);
    write_raw(&mut s, &b.encode()).unwrap();
    let r = reply(&mut s, &mut sealed);
    assert!(refused(r).ends_with("apply: the config sent is not the one the operator signed for"),);
}
