//! The `fencing` binary end to end on a temporary "device": status, a
//! decision, leases, the watchdog fed through a fake device file and the magic
//! close on SIGTERM; storage fencing reported as not active on a file; an
//! agent restarted after a preemption never joins and resets the host.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};
use config_schema::runtime::RuntimeConfig;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(sock: &Path) -> Option<serde_json::Value> {
    match ctl::query(sock, &Request::Status) {
        Ok(Response::Status { status }) => Some(status),
        _ => None,
    }
}

/// The example cluster's runtime config for `host`, written where the
/// daemon is told to read it. A fake watchdog file keeps no real time, so
/// it says `[cluster] accept_soft_watchdog = true`, as a test cluster would.
fn runtime_config(dir: &Path, host: &str) -> std::path::PathBuf {
    runtime_config_accepting(dir, host, true)
}

fn runtime_config_accepting(dir: &Path, host: &str, accept: bool) -> std::path::PathBuf {
    let mut config = config_schema::parse(include_str!("../../examples/cluster.toml"))
        .unwrap()
        .config;
    config.cluster.accept_soft_watchdog = accept;
    let rt = RuntimeConfig {
        config,
        host_name: host.into(),
        host_private_key: "00".repeat(32),
    };
    let cfg = dir.join("verified.json");
    std::fs::write(&cfg, serde_json::to_vec(&rt).unwrap()).unwrap();
    cfg
}

#[test]
fn daemon_serves_status_acquire_leases_and_disarms_the_watchdog_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = runtime_config(dir.path(), "host-b");
    let dev = dir.path().join("shared");
    std::fs::write(&dev, vec![0u8; 16 << 20]).unwrap();
    let wd = dir.path().join("watchdog");
    std::fs::write(&wd, b"").unwrap();
    let sock = dir.path().join("fencing.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_fencing"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&sock)
        .arg("--device")
        .arg(&dev)
        .arg("--watchdog")
        .arg(&wd)
        .arg("--ftvmm-socket")
        .arg(dir.path().join("no-ftvmm.sock"))
        .arg("--preempted-marker")
        .arg(dir.path().join("preempted"))
        // This test process sends what only ftvmm may send (Acquire, Leases).
        .arg("--peer-exe")
        .arg(format!(
            "ftvmm={}",
            std::env::current_exe().unwrap().display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let s = wait_for("renewals and a fed watchdog", || {
        status(&sock).filter(|s| {
            s["fencing"]["own_lease"]["renewals"].as_u64() >= Some(2)
                && s["watchdog"]["feeds"].as_u64() >= Some(1)
        })
    });
    assert_eq!(s["daemon"], "fencing");
    assert_eq!(s["fencing"]["region"]["state"], "initialized");
    assert_eq!(s["guard"], "normal");
    let fence = &s["fencing"]["storage_fence"];
    assert_eq!(fence["state"], "unavailable", "{fence}");
    assert!(
        fence["why"]
            .as_str()
            .is_some_and(|w| w.ends_with("is not a SCSI device (a file, virtio-blk, NVMe without SCSI translation): not a block device")),
        "{fence}"
    );
    match ctl::query(
        &sock,
        &Request::Acquire {
            vm: "kv".into(),
            generation: 4,
            config_generation: 1,
            slot: None,
        },
    )
    .unwrap()
    {
        Response::Decided {
            owner,
            won,
            generation,
            ..
        } => {
            assert_eq!((owner.as_str(), won, generation), ("host-b", true, 4));
        }
        other => panic!("unexpected {other:?}"),
    }
    match ctl::query(
        &sock,
        &Request::Highest {
            vm: "kv".into(),
            slot: None,
        },
    )
    .unwrap()
    {
        Response::Highest {
            generation, owner, ..
        } => assert_eq!((generation, owner.as_deref()), (4, Some("host-b"))),
        other => panic!("unexpected {other:?}"),
    }
    // A VM added live (not in this host's booted config) is learned at the
    // slot its ftvmm names, if no VM of the config has that slot; a slot
    // that disagrees with the config is refused, and so is kv's slot for
    // another name.
    let highest = |vm: &str, slot| {
        ctl::query(
            &sock,
            &Request::Highest {
                vm: vm.into(),
                slot,
            },
        )
    };
    match highest("web", None).unwrap() {
        Response::Error { message } => assert!(message.contains("no vm \"web\""), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    match highest("web", Some(3)).unwrap() {
        Response::Highest { generation, .. } => assert_eq!(generation, 0),
        other => panic!("unexpected {other:?}"),
    }
    let web = Request::Acquire {
        vm: "web".into(),
        generation: 1,
        config_generation: 2,
        slot: Some(3),
    };
    match ctl::query(&sock, &web).unwrap() {
        Response::Decided { won, .. } => assert!(won),
        other => panic!("unexpected {other:?}"),
    }
    match highest("web", None).unwrap() {
        Response::Highest { generation, .. } => assert_eq!(generation, 1, "learned for good"),
        other => panic!("unexpected {other:?}"),
    }
    for (vm, slot, words) in [
        ("web", 4, "in fencing slot 3, the request says slot 4"),
        ("kv", 2, "in fencing slot 0, the request says slot 2"),
        ("other", 0, "fencing slot 0 is vm kv's"),
        ("other", 3, "fencing slot 3 is vm web's"),
    ] {
        match highest(vm, Some(slot)).unwrap() {
            Response::Error { message } => assert!(message.contains(words), "{message}"),
            other => panic!("{vm} at {slot}: unexpected {other:?}"),
        }
    }
    // The decision is in the status's recent events (ftctl status --cluster).
    let s = status(&sock).unwrap();
    let ev = s["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "fencing"))
        .unwrap_or_else(|| panic!("no fencing event in {}", s["events"]));
    assert_eq!(ev["vm"], "kv");
    assert!(ev["text"]
        .as_str()
        .unwrap()
        .contains("decided vm=kv generation=4 owner=host-b"));
    // Both Acquires (kv's and web's) were timed, request to answer.
    let d = &s["fencing"]["decide"];
    assert_eq!(d["runs"], 2, "{d}");
    let us = |k: &str| d[k].as_u64().unwrap();
    assert!(us("us_max") > 0 && us("us_max") <= us("us_total"), "{d}");
    assert!(us("us_last") <= us("us_max"), "{d}");
    match ctl::query(&sock, &Request::Leases).unwrap() {
        Response::Leases {
            leases,
            renewal_complete_ms,
        } => {
            assert_eq!(leases.len(), 3);
            assert!(leases[1].live && !leases[0].live && !leases[2].live);
            // It renewed (its own lease is live): it says when it last did.
            assert!(renewal_complete_ms.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let code = child.0.wait().unwrap();
    assert!(code.success(), "{code:?}");
    let fed = std::fs::read(&wd).unwrap();
    assert!(
        fed.len() >= 2 && fed.ends_with(b"V") && fed[0] == 0,
        "{fed:?}"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    for line in [
        "is not a SCSI device (a file, virtio-blk, NVMe without SCSI translation): not a block device",
        "fencing: lease renewed (host host-b, every 500 ms, timeout 8000 ms)",
        "fencing: decided vm=kv generation=4 owner=host-b",
        "watchdog disarmed, exiting",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    println!("{out}");
}

#[test]
fn a_device_that_appears_late_is_picked_up_and_status_says_why_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = runtime_config(dir.path(), "host-c");
    let dev = dir.path().join("late");
    let sock = dir.path().join("fencing.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_fencing"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&sock)
        .arg("--device")
        .arg(&dev)
        .arg("--watchdog")
        .arg(dir.path().join("no-watchdog"))
        .arg("--ftvmm-socket")
        .arg(dir.path().join("no-ftvmm.sock"))
        .arg("--preempted-marker")
        .arg(dir.path().join("preempted"))
        .arg("--peer-exe")
        .arg(format!(
            "ftvmm={}",
            std::env::current_exe().unwrap().display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Kill(child);
    let s = wait_for("status with the error", || {
        status(&sock).filter(|s| {
            s["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot open"))
        })
    });
    assert!(s["fencing"].is_null());
    match ctl::query(
        &sock,
        &Request::Acquire {
            vm: "kv".into(),
            generation: 1,
            config_generation: 1,
            slot: None,
        },
    )
    .unwrap()
    {
        Response::Error { message } => assert!(message.contains("not fencing"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    std::fs::write(&dev, vec![0u8; 16 << 20]).unwrap();
    wait_for("renewals on the late device, no watchdog", || {
        status(&sock).filter(|s| {
            s["fencing"]["own_lease"]["renewals"].as_u64() >= Some(1)
                && s["watchdog"]["state"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("absent ("))
        })
    });
}

#[test]
fn an_agent_restarted_after_a_preemption_never_joins_and_resets_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = runtime_config(dir.path(), "host-a");
    let dev = dir.path().join("shared");
    std::fs::write(&dev, vec![0u8; 16 << 20]).unwrap();
    let wd = dir.path().join("watchdog");
    std::fs::write(&wd, b"").unwrap();
    let marker = dir.path().join("preempted");
    std::fs::write(&marker, "the device refused a write of block 1").unwrap();
    let sock = dir.path().join("fencing.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_fencing"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&sock)
        .arg("--device")
        .arg(&dev)
        .arg("--watchdog")
        .arg(&wd)
        .arg("--ftvmm-socket")
        .arg(dir.path().join("no-ftvmm.sock"))
        .arg("--preempted-marker")
        .arg(&marker)
        .arg("--peer-exe")
        .arg(format!(
            "ftvmm={}",
            std::env::current_exe().unwrap().display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let s = wait_for("the reset request", || {
        status(&sock).filter(|s| s["watchdog"]["reset_requested"].is_string())
    });
    let fence = &s["fencing"]["storage_fence"];
    assert_eq!(fence["state"], "preempted", "{fence}");
    assert!(
        fence["why"]
            .as_str()
            .is_some_and(|w| w.contains("preempted earlier in this boot")
                && w.contains("the device refused a write of block 1")),
        "{fence}"
    );
    match ctl::query(
        &sock,
        &Request::Acquire {
            vm: "kv".into(),
            generation: 1,
            config_generation: 1,
            slot: None,
        },
    )
    .unwrap()
    {
        Response::Error { message } => {
            assert!(message.contains("preempted at the storage"), "{message}")
        }
        other => panic!("won after a preemption: {other:?}"),
    }
    // The watchdog is armed for the reset and never fed.
    let armed = wait_for("the watchdog armed", || {
        status(&sock).filter(|s| s["watchdog"]["state"] == "starving")
    });
    assert_eq!(armed["watchdog"]["feeds"], 0, "{armed}");
    assert_eq!(std::fs::read(&wd).unwrap(), b"", "fed");
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    child.0.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains(
            "fencing: this host was preempted at the storage (preempted earlier in this boot"
        ) && out.contains("fencing: reset requested (this host was preempted at the storage: "),
        "{out}"
    );
}

#[test]
fn without_a_real_time_watchdog_go_live_is_refused_unless_the_config_accepts_it() {
    for accept in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = runtime_config_accepting(dir.path(), "host-b", accept);
        let dev = dir.path().join("shared");
        std::fs::write(&dev, vec![0u8; 16 << 20]).unwrap();
        let wd = dir.path().join("watchdog");
        std::fs::write(&wd, b"").unwrap();
        let sock = dir.path().join("fencing.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_fencing"))
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "--socket",
                sock.to_str().unwrap(),
            ])
            .args([
                "--device",
                dev.to_str().unwrap(),
                "--watchdog",
                wd.to_str().unwrap(),
            ])
            .arg("--ftvmm-socket")
            .arg(dir.path().join("no-ftvmm.sock"))
            .arg("--preempted-marker")
            .arg(dir.path().join("preempted"))
            .arg("--peer-exe")
            .arg(format!(
                "ftvmm={}",
                std::env::current_exe().unwrap().display()
            ))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Kill(child);
        let s = wait_for("renewals", || {
            status(&sock).filter(|s| s["fencing"]["own_lease"]["renewals"].as_u64() >= Some(1))
        });
        let w = &s["watchdog"];
        assert_eq!(w["real_time"], false, "{w}");
        assert_eq!(w["kind"], "unknown", "{w}");
        let answer = ctl::query(
            &sock,
            &Request::Acquire {
                vm: "kv".into(),
                generation: 1,
                config_generation: 1,
                slot: None,
            },
        )
        .unwrap();
        let go_live = w["go_live"].as_str().unwrap().to_string();
        if accept {
            assert!(go_live.starts_with("allowed by config"), "{go_live}");
            assert!(
                matches!(answer, Response::Decided { won: true, .. }),
                "{answer:?}"
            );
        } else {
            assert!(
                go_live.starts_with("refused: no hardware watchdog"),
                "{go_live}"
            );
            match answer {
                Response::Error { message } => assert!(
                    message.starts_with("fencing: refusing go-live: no hardware watchdog")
                        && message.contains("accept_soft_watchdog = true"),
                    "{message}"
                ),
                other => panic!("won without a real-time watchdog: {other:?}"),
            }
        }
        let _ = child.0.kill();
        let _ = child.0.wait();
        let mut out = String::new();
        std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        let want = if accept {
            "fencing: WARNING: no hardware watchdog"
        } else {
            "fencing: refusing go-live: no hardware watchdog"
        };
        assert!(out.lines().any(|l| l.starts_with(want)), "console:\n{out}");
    }
}
