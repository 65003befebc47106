use serde_json::json;

use super::*;
use crate::remote::report::{HostEntry, VmConfig};

const NOW: u64 = 1_800_000_000_000;

fn host_a() -> HostReport {
    HostReport {
        host: "host-a".into(),
        config_generation: 4,
        config_digest: Some("1a2b3c4d".repeat(8)),
        unix_ms: NOW,
        heartbeat: json!({
            "daemon": "heartbeat",
            "peers": [
                {"name": "host-b", "state": "up", "last_seen_ms": 80},
                {"name": "host-c", "state": "suspected", "last_seen_ms": 4200},
            ],
            "events": [{"unix_ms": NOW - 4000, "kind": "membership", "text": "heartbeat: host-c suspected"}],
        }),
        fencing: json!({
            "device": {"found": true, "path": "/dev/sdb", "problem": null},
            "watchdog": {"state": "fed", "timeout_s": 5},
            "fencing": {
                "region_ok": true,
                "own_lease": {"last_ok_ms_ago": 120, "failures": 0, "last_error": null},
                "leases": [
                    {"host": "host-a", "live": true, "expired": false, "last_renewal_ms": 100, "running": ["kv"]},
                    {"host": "host-b", "live": true, "expired": false, "last_renewal_ms": 300, "running": []},
                    {"host": "host-c", "live": false, "expired": true, "last_renewal_ms": 9000, "running": []},
                ],
            },
            "events": [{"unix_ms": NOW - 3000, "kind": "fencing", "vm": "kv", "text": "fencing: vm kv generation 3 decided: host-a"}],
        }),
        ftvmm: json!({
            "vms": [{"name": "kv", "state": "running", "allowed_hosts": ["host-a", "host-b"], "lockstep": {
                "role": "primary", "generation": 3,
                "protection": "protected: secondary host-b",
                "primary": "host-a", "secondary": "host-b",
                "log": {"lag": {"ms": 2, "records": 5, "bytes": 900}},
                "log_bytes_per_s": 35000,
            }}],
            "events": [{"unix_ms": NOW - 2500, "kind": "failover", "vm": "kv", "pause_ms": 812,
                        "text": "ftvmm: vm kv: won generation 3; live as primary"}],
        }),
    }
}

fn report() -> ClusterReport {
    let mut b = host_a();
    b.host = "host-b".into();
    b.fencing = json!({"device": {"found": false, "problem": "no device with serial FTSHARED"},
                       "watchdog": {"state": "absent (/dev/watchdog)"},
                       "error": "fencing: not fencing: no shared device"});
    b.ftvmm = json!({"vms": [{"name": "kv", "state": "running", "lockstep": {
        "role": "secondary", "generation": 3, "primary": "host-a", "secondary": "host-b"}}]});
    b.heartbeat = json!({"peers": []});
    ClusterReport {
        cluster: "demo".into(),
        config_generation: 4,
        config_digest: Some("1a2b3c4d".repeat(8)),
        queried: "host-a".into(),
        vms: vec![VmConfig {
            name: "kv".into(),
            replication: "lockstep".into(),
            power: "on".into(),
        }],
        hosts: vec![
            HostEntry {
                host: "host-a".into(),
                addr: "192.0.2.1:7401".into(),
                report: Some(host_a()),
                unreachable: None,
            },
            HostEntry {
                host: "host-b".into(),
                addr: "192.0.2.2:7401".into(),
                report: Some(b),
                unreachable: None,
            },
            HostEntry {
                host: "host-c".into(),
                addr: "192.0.2.3:7401".into(),
                report: None,
                unreachable: Some("cannot connect to 192.0.2.3:7401: connection refused".into()),
            },
        ],
    }
}

#[test]
fn every_host_vm_and_event_is_shown_with_what_is_not_available() {
    let t = render(&report());
    println!("{t}");
    for want in [
        "cluster demo config generation 4 (digest 1a2b3c4d…), gathered by host-a",
        "host-a: answers",
        "heartbeat: this host (the one queried)",
        "lease: live, renewed 100 ms ago, publishes primary of kv (read by host-a)",
        "watchdog: armed (fed, timeout 5 s)",
        "storage: /dev/sdb; last renewal write ok 120 ms ago; 0 failed writes",
        "host-b: answers",
        "heartbeat: up as seen by host-a, last heard 80 ms ago",
        "watchdog: NOT armed (absent (/dev/watchdog))",
        "storage: DEVICE NOT FOUND (no device with serial FTSHARED)",
        "host-c: UNREACHABLE (cannot connect to 192.0.2.3:7401: connection refused)",
        "heartbeat: suspected as seen by host-a, last heard 4200 ms ago",
        "lease: EXPIRED, renewed 9000 ms ago (read by host-a)",
        "watchdog: n/a (host unreachable)",
        "kv (lockstep, power on)",
        "protection: protected: secondary host-b (as host-a reports it)",
        "primary: host-a  secondary: host-b  generation: 3",
        "allowed hosts: host-a, host-b",
        "lag: 2 ms, 5 records, 900 bytes; log bandwidth: 35000 B/s (average since the pair started)",
        "last failover: 2500 ms ago on host-a, pause 812 ms",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    // Events oldest first, each with its host and age.
    let m = t.find("(4000 ms ago) host-a membership").unwrap();
    let f = t.find("(3000 ms ago) host-a fencing vm kv").unwrap();
    let g = t
        .find("(2500 ms ago) host-a failover vm kv (pause 812 ms)")
        .unwrap();
    assert!(m < f && f < g, "{t}");
}

#[test]
fn a_vm_no_host_reports_and_a_cluster_without_events_say_so() {
    let mut r = report();
    r.hosts.truncate(0);
    let t = render(&r);
    assert!(t.contains("no answering host reports it"), "{t}");
    assert!(t.contains("none recorded since the daemons started"), "{t}");
}

#[test]
fn utc_dates() {
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_800_000_000_000), "2027-01-15 08:00:00 UTC");
}

#[test]
fn a_config_applied_since_boot_is_shown_under_its_host() {
    let mut r = report();
    let mut a = host_a();
    a.heartbeat["applied_config"] = json!({
        "generation": 5,
        "digest": "5e6f7a8b".repeat(8),
        "changes": "needs reboot: vms[kv].memory_mib",
    });
    r.hosts[0].report = Some(a);
    let t = render(&r);
    assert!(
        t.contains(
            "    config: generation 5 (digest 5e6f7a8b…) persisted, runs generation 4 \
             (digest 1a2b3c4d…) until its next boot (needs reboot: vms[kv].memory_mib)\n"
        ),
        "{t}"
    );
    // Without one, no line.
    assert!(!render(&report()).contains("    config:"));
}

#[test]
fn a_host_on_another_config_of_the_generation_says_both_digests() {
    let mut r = report();
    // host-b runs the same generation with another digest.
    r.hosts[1].report.as_mut().unwrap().config_digest = Some("3c4d5e6f".repeat(8));
    let t = render(&r);
    assert!(t.contains("  host-a: answers\n"), "{t}");
    assert!(
        t.contains(
            "  host-b: answers (config generation 4 (digest 3c4d5e6f…), \
             not generation 4 (digest 1a2b3c4d…))\n"
        ),
        "{t}"
    );
    // Another generation says both too.
    r.hosts[1].report.as_mut().unwrap().config_generation = 5;
    assert!(render(&r).contains(
        "host-b: answers (config generation 5 (digest 3c4d5e6f…), not generation 4 (digest 1a2b3c4d…))"
    ));
}

#[test]
fn a_host_that_does_not_report_its_digest_shows_it_unknown() {
    let mut r = report();
    r.hosts[1].report.as_mut().unwrap().config_digest = None;
    let t = render(&r);
    assert!(
        t.contains("  host-b: answers (config digest unknown)\n"),
        "{t}"
    );
    // A queried host without one: the header says so, the hosts of its
    // generation are not called different.
    r.config_digest = None;
    let t = render(&r);
    assert!(
        t.contains("cluster demo config generation 4 (digest unknown), gathered by host-a"),
        "{t}"
    );
    assert!(t.contains("  host-a: answers\n"), "{t}");
    // A malformed digest is unknown, not an error.
    r.hosts[1].report.as_mut().unwrap().config_digest = Some("xyz".into());
    assert_eq!(
        r.hosts[1].report.as_ref().unwrap().config_id(),
        crate::config_id::ConfigId::generation_only(4)
    );
}

#[test]
fn a_paired_secondary_that_cannot_take_over_is_shown_not_protected_with_why() {
    // ftvmm's keeper says so while the Secondary's host cannot renew its
    // storage lease; the pair still runs.
    let reason = "not protected: secondary host-b cannot renew its storage lease (for 1200 ms); \
                  it could not take over";
    let mut r = report();
    r.hosts[0].report.as_mut().unwrap().ftvmm["vms"][0]["lockstep"]["protection"] = reason.into();
    let t = render(&r);
    assert!(
        t.contains(&format!("protection: {reason} (as host-a reports it)")),
        "{t}"
    );
    assert!(
        t.contains("primary: host-a  secondary: host-b  generation: 3"),
        "{t}"
    );
}

#[test]
fn every_host_says_which_peers_it_hears_on_the_vm_network() {
    let mut r = report();
    let hb = |v: serde_json::Value| json!({"peers": [], "vm_network": v});
    r.hosts[0].report.as_mut().unwrap().heartbeat["vm_network"] =
        json!({"listening": true, "hears": ["host-b", "host-c"], "quiet_ms": 0});
    r.hosts[1].report.as_mut().unwrap().heartbeat =
        hb(json!({"listening": true, "hears": [], "quiet_ms": 5300}));
    let t = render(&r);
    for want in [
        "vm network: hears host-b, host-c",
        "vm network: HEARS NO PEER (for 5300 ms)",
        "vm network: n/a (host unreachable)",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    r.hosts[1].report.as_mut().unwrap().heartbeat = hb(json!({
        "listening": false,
        "not_listening_because": "cannot bind UDP 198.51.100.2:7400: Cannot assign requested address"
    }));
    let t = render(&r);
    assert!(
        t.contains("vm network: NOT LISTENING (cannot bind UDP 198.51.100.2:7400"),
        "{t}"
    );
    // A host whose heartbeat predates the VM network says so.
    r.hosts[1].report.as_mut().unwrap().heartbeat = json!({"peers": []});
    assert!(render(&r).contains("vm network: n/a (its heartbeat does not report it)"));
}

#[test]
fn the_allowed_hosts_of_an_ftvmm_that_does_not_report_them_are_not_available() {
    let mut r = report();
    let mut a = host_a();
    a.ftvmm["vms"][0]
        .as_object_mut()
        .unwrap()
        .remove("allowed_hosts");
    r.hosts[0].report = Some(a);
    let t = render(&r);
    assert!(
        t.contains("    allowed hosts: n/a (host-a's ftvmm does not report it)\n"),
        "{t}"
    );
}
