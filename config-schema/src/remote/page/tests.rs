use serde_json::{json, Value};

use super::html::{escape, render};
use super::*;
use crate::remote::report::{HostEntry, HostReport, VmConfig};

const NOW: u64 = 1_800_000_000_000;

fn host(name: &str, ftvmm: Value, events: Value) -> HostReport {
    HostReport {
        host: name.into(),
        config_generation: 4,
        config_digest: Some("1a2b3c4d".repeat(8)),
        unix_ms: NOW,
        heartbeat: json!({"peers": [
            {"name": "host-a", "state": "up", "last_seen_ms": 50},
            {"name": "host-b", "state": "up", "last_seen_ms": 60},
        ]}),
        fencing: json!({
            "device": {"found": true, "path": "/dev/sdb", "problem": null},
            "watchdog": {"state": "fed", "timeout_s": 5},
            "fencing": {"region_ok": true, "leases": [],
                        "own_lease": {"last_ok_ms_ago": 100, "failures": 0, "last_error": null}},
        }),
        ftvmm: json!({"vms": ftvmm, "events": events}),
    }
}

fn entry(name: &str, report: Option<HostReport>) -> HostEntry {
    HostEntry {
        host: name.into(),
        addr: format!("{name}:7401"),
        unreachable: report.is_none().then(|| "cannot connect: timed out".into()),
        report,
    }
}

fn cluster(queried: &str, vm: &str, hosts: Vec<HostEntry>) -> ClusterReport {
    ClusterReport {
        cluster: "demo".into(),
        config_generation: 4,
        config_digest: Some("1a2b3c4d".repeat(8)),
        queried: queried.into(),
        vms: vec![VmConfig {
            name: vm.into(),
            replication: "lockstep".into(),
            power: "on".into(),
        }],
        hosts,
    }
}

fn primary_view(vm: &str, gen: u64, lag_ms: Option<u64>, log_bytes: u64) -> Value {
    let lag = lag_ms.map_or(
        Value::Null,
        |ms| json!({"ms": ms, "records": 1, "bytes": 10}),
    );
    json!([{"name": vm, "state": "running", "allowed_hosts": ["host-a", "host-b"], "lockstep": {
        "role": format!("primary (generation {gen})"), "generation": gen,
        "protection": "protected: secondary host-b",
        "primary": "host-a", "secondary": "host-b",
        "log": {"lag": lag, "stats": {"log_bytes": log_bytes}},
    }}])
}

fn secondary_view(vm: &str, gen: u64) -> Value {
    json!([{"name": vm, "state": "running", "lockstep": {
        "role": "secondary", "generation": gen, "primary": "host-a", "secondary": "host-b"}}])
}

/// host-a Primary and host-b Secondary of `kv`, host-c unreachable.
fn paired(log_bytes: u64) -> ClusterReport {
    cluster(
        "host-b",
        "kv",
        vec![
            entry(
                "host-a",
                Some(host(
                    "host-a",
                    primary_view("kv", 1, Some(3), log_bytes),
                    json!([]),
                )),
            ),
            entry(
                "host-b",
                Some(host("host-b", secondary_view("kv", 1), json!([]))),
            ),
            entry("host-c", None),
        ],
    )
}

/// The position of `what` in `page`, or a failure showing the page.
fn at(page: &str, what: &str) -> usize {
    page.find(what)
        .unwrap_or_else(|| panic!("missing {what:?} in\n{page}"))
}

#[test]
fn primary_and_secondary_are_drawn_on_their_hosts() {
    let mut h = History::default();
    h.on_report(NOW - 1000, "host-b", paired(1_000));
    h.on_report(NOW, "host-b", paired(51_000));
    let page = render(&h, NOW);
    let (a, b, c) = (
        at(&page, ">host-a</text>"),
        at(&page, ">host-b (answered the query)</text>"),
        at(&page, ">host-c</text>"),
    );
    let primary = at(&page, "kv · PRIMARY");
    let secondary = at(&page, "kv · SECONDARY");
    // Each host's box is followed by its own tiles.
    assert!(a < primary && primary < b, "Primary not in host-a's box");
    assert!(
        b < secondary && secondary < c,
        "Secondary not in host-b's box"
    );
    assert_eq!(page.matches("kv · ").count(), 2, "kv drawn elsewhere too");
    at(&page, "protected: secondary host-b");
    at(&page, "secondary host-b");
    at(&page, "follows host-a");
    // The whole role as ftvmm says it is the headline's tooltip; a paired
    // Primary's tile is green, a Secondary's blue.
    at(&page, "<title>primary (generation 1)</title>");
    at(&page, "fill=\"#e8f5e9\" stroke=\"#2e7d32\"");
    at(&page, "fill=\"#e3f2fd\" stroke=\"#1565c0\"");
    // The Secondary's tile says the protection as the Primary reports it.
    at(
        &page,
        ">protected: secondary host-b (as host-a reports it)</text>",
    );
    at(
        &page,
        "heartbeat: <tspan fill=\"#2e7d32\" font-weight=\"bold\">up</tspan>",
    );
    at(
        &page,
        "heartbeat: <tspan fill=\"#c62828\" font-weight=\"bold\">UNREACHABLE</tspan>",
    );
    at(
        &page,
        "watchdog: <tspan fill=\"#2e7d32\" font-weight=\"bold\">armed</tspan>",
    );
    at(
        &page,
        "storage: <tspan fill=\"#2e7d32\" font-weight=\"bold\">ok</tspan>",
    );
    // 50 000 bytes in one second; the lag as the Primary reports it.
    at(&page, "log 50 kB/s");
    at(&page, "lag 3 ms");
    // Lag has two points (a line), bandwidth one (a dot: the first poll has no rate).
    assert_eq!(page.matches("class=\"spark\"").count(), 1, "lag sparkline");
    assert_eq!(page.matches("<circle").count(), 1, "bandwidth dot");
    // The table says the same.
    at(
        &page,
        "<td>host-a</td><td>host-b</td><td>1</td><td>3 ms</td><td>50 kB/s</td>",
    );
    // Where it may run (the affinity in force), after the last failover.
    at(&page, "<th>allowed hosts</th></tr>");
    at(&page, "</td><td>host-a, host-b</td></tr>");
    assert!(!page.contains("<script"), "no script on the page");
    at(&page, "http-equiv=\"refresh\"");
    at(
        &page,
        "<h1>cluster demo · config generation 4 (digest 1a2b3c4d…)</h1>",
    );
    at(
        &page,
        "gathered by host-b (asked host-b): made at 2027-01-15 08:00:00 UTC on its clock, arrived 0 ms ago",
    );
}

#[test]
fn a_lost_secondary_shows_not_protected_with_its_reason() {
    let reason = "not protected: secondary host-b lost (silent 2000 ms); running alone";
    let solo = json!([{"name": "kv", "state": "running", "lockstep": {
        "role": "primary", "generation": 2, "protection": reason, "primary": "host-a",
        "log": {"lag": null, "stats": {"log_bytes": 0}}}}]);
    let failover = json!([{"unix_ms": NOW - 3000, "kind": "failover", "vm": "kv", "pause_ms": 640,
                           "text": "ftvmm: vm kv: won generation 2; live as primary"}]);
    let r = cluster(
        "host-a",
        "kv",
        vec![
            entry("host-a", Some(host("host-a", solo, failover))),
            entry("host-b", None),
        ],
    );
    let mut h = History::default();
    h.on_report(NOW, "host-a", r);
    let page = render(&h, NOW);
    at(&page, "kv · PRIMARY");
    assert!(
        !page.contains("kv · SECONDARY"),
        "no Secondary drawn:\n{page}"
    );
    at(&page, &format!("<title>{reason}</title>"));
    at(&page, &format!("<td class=\"bad\">{reason}</td>"));
    at(&page, "<td>host-a</td><td>none</td><td>2</td>");
    at(&page, "3000 ms ago on host-a, pause 640 ms");
    at(
        &page,
        "failover vm kv (pause 640 ms): ftvmm: vm kv: won generation 2",
    );
}

#[test]
fn figures_nobody_reports_are_na() {
    // One poll only (no bandwidth yet), the Primary reports no lag, and a VM
    // of the config that no host reports.
    let mut r = paired(5_000);
    r.hosts[0].report.as_mut().unwrap().ftvmm = json!({"vms": primary_view("kv", 1, None, 5_000)});
    r.vms.push(VmConfig {
        name: "web".into(),
        replication: "checkpoint".into(),
        power: "off".into(),
    });
    let mut h = History::default();
    h.on_report(NOW, "host-b", r);
    let page = render(&h, NOW);
    at(&page, "lag n/a");
    at(&page, "log n/a");
    at(
        &page,
        "<td>host-a</td><td>host-b</td><td>1</td><td>n/a</td><td>n/a</td>",
    );
    at(&page, "<td>kv</td><td>lockstep</td><td>on</td>");
    at(
        &page,
        "<td>web</td><td>checkpoint</td><td>off</td><td class=\"bad\">n/a (no answering host reports it)</td>\
         <td>n/a</td><td>n/a</td><td>n/a</td><td>n/a</td><td>n/a</td><td>none recorded</td><td>n/a</td></tr>",
    );
    // host-c is unreachable: its watchdog and storage are n/a, not "ok".
    let c = at(&page, ">host-c</text>");
    let tail = &page[c..];
    at(
        tail,
        "watchdog: <tspan fill=\"#c62828\" font-weight=\"bold\">n/a</tspan>",
    );
    at(
        tail,
        "storage: <tspan fill=\"#c62828\" font-weight=\"bold\">n/a</tspan>",
    );
}

#[test]
fn names_and_texts_are_escaped() {
    let vm = "<b>kv\"&'";
    let evil = json!([{"unix_ms": NOW - 10, "kind": "membership",
                       "text": "<script>alert(1)</script>"}]);
    let mut r = cluster(
        "host-a",
        vm,
        vec![entry(
            "host-a",
            Some(host("host-a", primary_view(vm, 1, Some(1), 0), evil)),
        )],
    );
    r.cluster = "demo<img src=x>".into();
    let mut h = History::default();
    h.on_report(NOW, "host-a", r);
    h.on_error(NOW, "refused: <unknown key>".into());
    let page = render(&h, NOW);
    for raw in ["<script", "<b>", "<img", "<unknown"] {
        assert!(!page.contains(raw), "{raw} not escaped:\n{page}");
    }
    at(&page, "&lt;script&gt;alert(1)&lt;/script&gt;");
    at(&page, "&lt;b&gt;kv&quot;&amp;&#39; · PRIMARY");
    at(&page, "cluster demo&lt;img src=x&gt;");
    at(&page, "got no report: refused: &lt;unknown key&gt;");
    assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
}

#[test]
fn bandwidth_restarts_with_a_new_primary_and_old_samples_age_out() {
    let mut h = History::default();
    h.on_report(NOW, "host-b", paired(0));
    h.on_report(NOW + 2000, "host-b", paired(10_000));
    let s = &h.samples["kv"];
    assert_eq!(s[0].log_bytes_per_s, None);
    assert_eq!(s[1].log_bytes_per_s, Some(5_000));
    // host-b takes over in generation 2: its counter starts again; no rate
    // across the change even though the counter grew.
    let mut b = paired(0);
    b.hosts[0].report = None;
    b.hosts[1].report.as_mut().unwrap().ftvmm = json!({"vms": [{"name": "kv", "lockstep": {
        "role": "primary", "generation": 2, "primary": "host-b",
        "log": {"lag": null, "stats": {"log_bytes": 20_000}}}}]});
    h.on_report(NOW + 3000, "host-b", b);
    let last = h.samples["kv"].back().unwrap();
    assert_eq!(last.primary.as_deref(), Some("host-b"));
    assert_eq!(last.generation, Some(2));
    assert_eq!(last.log_bytes_per_s, None);
    // Ten minutes later only the new sample is left.
    h.on_report(NOW + 3000 + WINDOW_MS, "host-b", paired(0));
    assert_eq!(h.samples["kv"].len(), 2);
    assert_eq!(h.samples["kv"][0].unix_ms, NOW + 3000);
    // A failed poll keeps the report and says why.
    h.on_error(NOW + 4000 + WINDOW_MS, "no host answered".into());
    assert!(h.report.is_some());
    let page = render(&h, NOW + 5000 + WINDOW_MS);
    at(
        &page,
        "the last poll (1000 ms ago) got no report: no host answered",
    );
}

#[test]
fn only_get_and_head_of_two_paths_are_answered() {
    let mut h = History::default();
    h.on_report(NOW, "host-b", paired(0));
    let page = answer("GET", "/?x=1", &h, NOW);
    assert_eq!(
        (page.status, page.content_type),
        (200, "text/html; charset=utf-8")
    );
    assert!(page.body.contains("kv · PRIMARY"));
    let json = answer("HEAD", "/status.json", &h, NOW);
    assert_eq!(json.status, 200);
    let v: Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(v["answered_by"], "host-b");
    assert_eq!(v["report"]["queried"], "host-b");
    assert_eq!(v["samples"]["kv"][0]["lag_ms"], 3);
    for m in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let a = answer(m, "/", &h, NOW);
        assert_eq!(a.status, 405, "{m}");
        assert!(a.body.contains("read-only"), "{}", a.body);
    }
    assert_eq!(answer("GET", "/etc/passwd", &h, NOW).status, 404);
    assert_eq!(answer("GET", "/status.json/x", &h, NOW).status, 404);
}

#[test]
fn a_paired_secondary_that_cannot_take_over_shows_not_protected() {
    // ftvmm's keeper: the Secondary's host cannot renew its storage lease
    // (ftvmm/src/lockstep/respawn/secondary_lease.rs); both still run.
    let reason = "not protected: secondary host-b cannot renew its storage lease (for 1200 ms); \
                  it could not take over";
    let mut r = paired(5_000);
    let mut view = primary_view("kv", 1, Some(3), 5_000);
    view[0]["lockstep"]["protection"] = reason.into();
    r.hosts[0].report.as_mut().unwrap().ftvmm = json!({"vms": view, "events": []});
    let mut h = History::default();
    h.on_report(NOW, "host-b", r);
    let page = render(&h, NOW);
    at(&page, &format!("<td class=\"bad\">{}</td>", escape(reason)));
    // The Primary's tile is orange, not green; the Secondary's says why.
    at(&page, "kv · PRIMARY");
    assert!(
        !page.contains("fill=\"#e8f5e9\" stroke=\"#2e7d32\""),
        "a green Primary:\n{page}"
    );
    at(
        &page,
        &format!("<title>{} (as host-a reports it)</title>", escape(reason)),
    );
}

#[test]
fn each_host_box_says_whether_it_hears_a_peer_on_the_vm_network() {
    let mut r = paired(5_000);
    r.hosts[0].report.as_mut().unwrap().heartbeat["vm_network"] =
        json!({"listening": true, "hears": ["host-b"], "quiet_ms": 0});
    r.hosts[1].report.as_mut().unwrap().heartbeat["vm_network"] =
        json!({"listening": true, "hears": [], "quiet_ms": 4100});
    let mut h = History::default();
    h.on_report(NOW, "host-b", r);
    let page = render(&h, NOW);
    at(
        &page,
        "vm network: <tspan fill=\"#2e7d32\" font-weight=\"bold\">ok</tspan>",
    );
    at(
        &page,
        "vm network: <tspan fill=\"#c62828\" font-weight=\"bold\">HEARS NO PEER</tspan>",
    );
    at(&page, "<title>HEARS NO PEER (for 4100 ms)</title>");
    at(&page, "<title>hears host-b</title>");
}

#[test]
fn metrics_are_asked_of_one_of_the_pages_hosts_only() {
    let hosts = vec!["192.0.2.2".to_string(), "192.0.2.1".to_string()];
    assert_eq!(metrics_target("GET", "/", &hosts), None);
    assert_eq!(metrics_target("GET", "/metricsx", &hosts), None);
    assert_eq!(
        metrics_target("GET", "/metrics?host=192.0.2.1", &hosts),
        Some(Ok("192.0.2.1"))
    );
    assert_eq!(
        metrics_target("HEAD", "/metrics?x=1&host=192.0.2.2", &hosts),
        Some(Ok("192.0.2.2"))
    );
    let refused = |m, u| match metrics_target(m, u, &hosts) {
        Some(Err(a)) => (a.status, a.body),
        other => panic!("{m} {u}: {other:?}"),
    };
    let (status, body) = refused("GET", "/metrics?host=10.0.0.9");
    assert_eq!(status, 404);
    assert_eq!(
        body,
        "10.0.0.9 is not one of this page's hosts (192.0.2.2, 192.0.2.1)\n"
    );
    let (status, body) = refused("GET", "/metrics");
    assert_eq!(status, 400);
    assert!(body.contains("/metrics?host=ADDR"), "{body}");
    assert_eq!(refused("POST", "/metrics?host=192.0.2.1").0, 405);
}
