//! Tests of the control server over real sockets: the protocol, and who may
//! send what (the test process is root, and is "ftvmm" only when a test's
//! table says so).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn me() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn start(path: &Path, policy: Policy) -> Arc<AtomicUsize> {
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let l = bind(path).unwrap();
    std::thread::spawn(move || {
        serve(l, policy, move |req| {
            h.fetch_add(1, Ordering::SeqCst);
            status_only("testd", req, || serde_json::json!({"daemon": "testd"}))
        })
    });
    handled
}

fn anyone(_: &Request) -> Senders {
    Senders::AnyRoot
}

fn acquire() -> Request {
    Request::Acquire {
        vm: "kv".into(),
        generation: 2,
        config_generation: 1,
        slot: Some(0),
    }
}

fn error_of(r: Response) -> String {
    match r {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn status_over_a_real_socket_and_errors_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/t.sock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"stale").unwrap();
    start(&path, Policy::new("testd", anyone, Programs::appliance()));
    match ctl::query(&path, &Request::Status).unwrap() {
        Response::Status { status } => assert_eq!(status["daemon"], "testd"),
        other => panic!("unexpected {other:?}"),
    }
    let r = ctl::query(&path, &Request::StartVm { name: "kv".into() }).unwrap();
    assert!(error_of(r).contains("testd does not handle"));
}

#[test]
fn garbage_gets_an_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sock");
    start(&path, Policy::new("testd", anyone, Programs::appliance()));
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"{not json\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let r: Response = serde_json::from_str(&line).unwrap();
    assert!(error_of(r).starts_with("bad request"));
}

#[test]
fn a_request_from_the_wrong_program_never_reaches_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fencing.sock");
    // The appliance's table: this test binary is not /bin/ftvmm.
    let handled = start(&path, Policy::fencing(Programs::appliance()));
    let msg = error_of(ctl::query(&path, &acquire()).unwrap());
    assert_eq!(
        msg,
        format!(
            "fencing refuses acquire from pid {} ({}, uid 0): only ftvmm (/bin/ftvmm) may send it",
            std::process::id(),
            me().display()
        )
    );
    let msg = error_of(ctl::query(&path, &Request::PeerAlive { host: "b".into() }).unwrap());
    assert!(
        msg.ends_with("fencing does not take peer_alive over its control socket"),
        "{msg}"
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "a refused request reached the handler"
    );
    // Status is for any root process.
    assert!(matches!(
        ctl::query(&path, &Request::Status).unwrap(),
        Response::Status { .. }
    ));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[test]
fn the_right_program_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fencing.sock");
    // This test binary plays ftvmm.
    let handled = start(
        &path,
        Policy::fencing(Programs::appliance().with(Program::Ftvmm, &me())),
    );
    // status_only answers it with its own error: the handler ran.
    let msg = error_of(ctl::query(&path, &acquire()).unwrap());
    assert!(msg.starts_with("testd does not handle Acquire"), "{msg}");
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

fn peer(uid: u32, exe: &str) -> Peer {
    Peer {
        pid: 42,
        uid,
        gid: uid,
        exe: Ok(PathBuf::from(exe)),
    }
}

#[test]
fn only_root_is_served_even_for_status() {
    let p = Policy::heartbeat(Programs::appliance());
    let e = p
        .check(&peer(1000, "/bin/ftvmm"), &Request::Status)
        .unwrap_err();
    assert_eq!(
        e,
        "heartbeat refuses status from pid 42 (/bin/ftvmm, uid 1000): only root processes may use its control socket"
    );
    assert!(p
        .check(&peer(0, "/usr/bin/anything"), &Request::Status)
        .is_ok());
    let unknown = Peer {
        exe: Err("No such file or directory (os error 2)".into()),
        ..peer(0, "")
    };
    let e = p.check(&unknown, &Request::Peers).unwrap_err();
    assert!(
        e.contains("pid 42 (executable unknown: No such file"),
        "{e}"
    );
}

/// Who sends what on the appliance (grep `Request::` for the senders).
#[test]
fn each_daemon_takes_each_request_only_from_who_needs_it() {
    let programs = Programs::appliance();
    let reqs = [
        Request::Status,
        Request::StartVm { name: "kv".into() },
        Request::StopVm { name: "kv".into() },
        acquire(),
        Request::Highest {
            vm: "kv".into(),
            slot: None,
        },
        Request::Leases,
        Request::Peers,
        Request::PeerAlive { host: "b".into() },
        Request::OutputGrant {
            ok: true,
            valid_ms: 1,
            reason: "r".into(),
        },
        Request::Deposed {
            vm: "kv".into(),
            generation: 3,
            by: "b".into(),
        },
        Request::ResetHost { reason: "r".into() },
        Request::ConfigApplied {
            generation: 8,
            vms: vec![],
            timing: None,
            config: None,
        },
    ];
    // For each daemon: the senders of each request above, in order
    // ("*" = any root process, "-" = nobody).
    let want: [(&str, Policy, [&str; 12]); 3] = [
        (
            "ftvmm",
            Policy::ftvmm(programs.clone()),
            [
                "*",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "fencing",
                "fencing",
                "-",
                "heartbeat",
            ],
        ),
        (
            "fencing",
            Policy::fencing(programs.clone()),
            [
                "*", "-", "-", "ftvmm", "ftvmm", "ftvmm", "-", "-", "-", "-", "ftvmm", "-",
            ],
        ),
        (
            "heartbeat",
            Policy::heartbeat(programs.clone()),
            [
                "*", "-", "-", "-", "-", "-", "ftvmm", "ftvmm", "-", "-", "-", "-",
            ],
        ),
    ];
    for (daemon, policy, senders) in want {
        for (req, want) in reqs.iter().zip(senders) {
            let allowed: Vec<&str> = Program::ALL
                .iter()
                .filter(|p| policy.check(&peer(0, p.appliance_exe()), req).is_ok())
                .map(|p| p.name())
                .collect();
            let got = match allowed.len() {
                0 => "-".to_string(),
                4 => "*".to_string(),
                _ => allowed.join(","),
            };
            assert_eq!(got, want, "{daemon}: {}", request_name(req));
        }
    }
}

#[test]
fn refusal_warnings_are_rate_limited() {
    let log = RefusalLog::default();
    let t0 = Instant::now();
    assert_eq!(log.on_refusal(t0, "r1").as_deref(), Some("r1"));
    for i in 1..=5 {
        assert_eq!(log.on_refusal(t0 + Duration::from_secs(i), "r"), None);
    }
    assert_eq!(
        log.on_refusal(t0 + REFUSAL_LOG_PERIOD, "r7").as_deref(),
        Some("r7 (and 5 more refused requests not logged)")
    );
    assert_eq!(
        log.on_refusal(t0 + REFUSAL_LOG_PERIOD * 3, "r8").as_deref(),
        Some("r8")
    );
}

/// With [`serve_urgent`], an urgent request is handled at the real-time
/// priority and any other on the normal policy (so a handler that starts
/// threads never starts them real-time); as root here. Without the
/// privilege both are normal.
#[test]
fn urgent_requests_are_answered_real_time_and_the_rest_at_normal_priority() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sock");
    let l = bind(&path).unwrap();
    let seen: Arc<std::sync::Mutex<Vec<(bool, String)>>> = Arc::default();
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        let urgent = Urgent {
            priority: crate::sched::HEARTBEAT_PRIORITY,
            is_urgent: |r| matches!(r, Request::OutputGrant { .. }),
        };
        serve_urgent(
            l,
            Policy::new("testd", anyone, Programs::appliance()),
            Some(urgent),
            move |req| {
                let grant = matches!(req, Request::OutputGrant { .. });
                let policy = crate::sched::describe_thread();
                s.lock().unwrap().push((grant, policy));
                Response::Ok
            },
        )
    });
    let grant = Request::OutputGrant {
        ok: true,
        valid_ms: 500,
        reason: String::new(),
    };
    for req in [&grant, &Request::Status, &grant] {
        assert!(matches!(ctl::query(&path, req).unwrap(), Response::Ok));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let root = crate::sched::realtime_thread(crate::sched::HEARTBEAT_PRIORITY).is_ok();
    // (That moved this test's thread; back, so nothing else inherits it.)
    let _ = crate::sched::normal_thread();
    for (grant, policy) in seen {
        let want = if grant && root {
            "SCHED_RR 10"
        } else {
            "SCHED_OTHER"
        };
        assert_eq!(policy, want, "output grant: {grant}");
    }
}
