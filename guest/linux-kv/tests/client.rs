//! `--client`, the checkpoint benchmark's load generator, against `--serve` on a disk file: its
//! line counts only PUTs answered `OK`, and every one of them is on the server afterwards.

mod common;

use std::process::Command;

use common::{field, start, Client};

#[test]
fn client_counts_acknowledged_puts_and_they_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::disk(dir.path(), 131_072);
    let server = start(&disk);
    let out = Command::new(env!("CARGO_BIN_EXE_ftguest-linux-kv"))
        .args(["--client", &server.addr.to_string(), "--conns", "3"])
        .args(["--seconds", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let line = line.trim_end();
    assert!(line.starts_with("kv-client: conns=3 "), "{line}");
    let ops = field(line, "ops");
    assert!(ops > 0, "{line}");
    assert_eq!(
        field(line, "errors"),
        0,
        "{line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each connection writes keys c<conn>-<i % 1024> with value v<i>: the server counts exactly
    // the PUTs the client saw answered.
    let mut c = Client::connect(server.addr).unwrap();
    let stat = c.call("STAT").unwrap();
    assert_eq!(field(&stat, "puts"), ops, "{stat} vs {line}");
    let got = c.call("GET c0-1").unwrap();
    assert!(got.starts_with("VALUE v"), "{got}");
}

#[test]
fn client_without_a_server_counts_errors_and_no_ops() {
    // A port nothing listens on: each connection retries until the run's end, then counts one
    // error; the line still comes, with no ops.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let out = Command::new(env!("CARGO_BIN_EXE_ftguest-linux-kv"))
        .args([
            "--client",
            &addr.to_string(),
            "--seconds",
            "1",
            "--conns",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let line = line.trim_end();
    assert_eq!(field(line, "ops"), 0, "{line}");
    assert_eq!(field(line, "errors"), 2, "{line}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kv-client: connect 127.0.0.1:"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ftguest-linux-kv"))
        .args(["--client", &addr.to_string(), "--conns", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--conns and --seconds must be at least 1"),
        "{err}"
    );
}
