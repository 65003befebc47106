//! `ftctl status --cluster` as text: hosts, VMs, recent events. Reads the
//! daemons' `Status` objects leniently: a field a daemon does not report
//! prints as `n/a` with the reason, never as an invented figure.

use std::fmt::Write;

use serde_json::Value;

use super::report::{ClusterReport, HostReport};
use crate::events::Event;

/// The whole text.
pub fn render(r: &ClusterReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {} config {}, gathered by {}",
        r.cluster,
        r.config_id(),
        r.queried
    );
    out.push_str("\nHOSTS\n");
    for h in &r.hosts {
        out.push_str(&host_line(
            r,
            &h.host,
            h.report.as_ref(),
            h.unreachable.as_deref(),
        ));
    }
    out.push_str("\nVMS\n");
    for vm in &r.vms {
        out.push_str(&vm_line(r, &vm.name, &vm.replication, &vm.power));
    }
    out.push_str("\nEVENTS (oldest first, times on each host's clock)\n");
    let evs = events(r);
    if evs.is_empty() {
        out.push_str("  none recorded since the daemons started\n");
    }
    for (host, age_ms, e) in evs {
        let _ = writeln!(out, "  {}", event_line(&host, age_ms, &e));
    }
    out
}

/// One event as `ftctl status` and the status page show it: time, age, the
/// host whose daemon recorded it, kind, VM, pause and text.
pub(crate) fn event_line(host: &str, age_ms: u64, e: &Event) -> String {
    let vm =
        e.vm.as_deref()
            .map(|v| format!(" vm {v}"))
            .unwrap_or_default();
    let pause = e
        .pause_ms
        .map(|p| format!(" (pause {p} ms)"))
        .unwrap_or_default();
    format!(
        "{} ({} ago) {host} {}{vm}{pause}: {}",
        utc(e.unix_ms),
        ago(age_ms),
        e.kind.name(),
        e.text
    )
}

fn host_line(
    r: &ClusterReport,
    host: &str,
    rep: Option<&HostReport>,
    unreachable: Option<&str>,
) -> String {
    let reach = match (rep, unreachable) {
        (Some(rep), _) => format!("answers{}", config_differs(r, rep)),
        (None, why) => format!("UNREACHABLE ({})", why.unwrap_or("no answer")),
    };
    let mut s = format!("  {host}: {reach}\n");
    if let Some(line) = rep.and_then(applied_config) {
        let _ = writeln!(s, "    config: {line}");
    }
    let _ = writeln!(s, "    heartbeat: {}", membership(r, host));
    let _ = writeln!(s, "    lease: {}", lease(r, host));
    let _ = writeln!(
        s,
        "    vm network: {}",
        rep.map_or_else(unreachable_na, |p| vm_network(&p.heartbeat))
    );
    let own = rep.map(|p| &p.fencing);
    let _ = writeln!(
        s,
        "    watchdog: {}",
        own.map_or_else(unreachable_na, watchdog)
    );
    let _ = writeln!(
        s,
        "    storage: {}",
        own.map_or_else(unreachable_na, storage)
    );
    s
}

/// ` (config generation 8 (digest 1a2b3c4d…), not generation 8 (digest
/// 3c4d5e6f…))` when the host runs another config than the queried host
/// (generation or digest), ` (config digest unknown)` when it does not say
/// its digest (an older host) and `""` when it runs the same config.
fn config_differs(r: &ClusterReport, rep: &HostReport) -> String {
    let (theirs, ours) = (rep.config_id(), r.config_id());
    if theirs.generation == ours.generation && !(theirs.has_digest() && ours.has_digest()) {
        if theirs.has_digest() {
            return String::new();
        }
        return " (config digest unknown)".into();
    }
    if theirs == ours {
        return String::new();
    }
    format!(" (config {theirs}, not {ours})")
}

/// A config `ftctl apply` persisted since the host booted (heartbeat's
/// `applied_config`), said with what it waits for.
fn applied_config(rep: &HostReport) -> Option<String> {
    let a = &rep.heartbeat["applied_config"];
    let g = a["generation"].as_u64()?;
    let persisted = super::report::id_of(g, a["digest"].as_str());
    let runs = rep.config_id();
    let changes = a["changes"].as_str().unwrap_or("?");
    Some(if changes.contains("needs reboot") {
        format!("{persisted} persisted, runs {runs} until its next boot ({changes})")
    } else {
        format!(
            "{persisted} persisted, boots it next time; runs {runs} with the live changes ({changes})"
        )
    })
}

fn unreachable_na() -> String {
    "n/a (host unreachable)".into()
}

/// The queried host's heartbeat view of `host`.
pub(crate) fn membership(r: &ClusterReport, host: &str) -> String {
    if host == r.queried {
        return "this host (the one queried)".into();
    }
    let Some(q) = r.report(&r.queried) else {
        return "n/a".into();
    };
    if let Some(e) = q.heartbeat.get("error") {
        return format!("n/a ({})", text(e));
    }
    let peers = q.heartbeat["peers"].as_array().cloned().unwrap_or_default();
    match peers.iter().find(|p| p["name"] == host) {
        Some(p) => {
            let seen = p["last_seen_ms"]
                .as_u64()
                .map(|ms| format!(", last heard {ms} ms ago"))
                .unwrap_or_else(|| ", never heard".into());
            format!("{} as seen by {}{seen}", text(&p["state"]), r.queried)
        }
        None => format!("n/a ({}'s heartbeat does not list it)", r.queried),
    }
}

/// The host's reachability on the VM network, from its own heartbeat's
/// `vm_network` (the peers it heard there within the failure timeout).
pub(crate) fn vm_network(hb: &Value) -> String {
    if let Some(e) = hb.get("error") {
        return format!("n/a ({})", text(e));
    }
    let v = &hb["vm_network"];
    if v.is_null() {
        return "n/a (its heartbeat does not report it)".into();
    }
    if v["listening"] != true {
        let why = v["not_listening_because"]
            .as_str()
            .unwrap_or("not configured");
        return format!("NOT LISTENING ({why})");
    }
    let hears: Vec<&str> = (v["hears"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if hears.is_empty() {
        let quiet = v["quiet_ms"].as_u64().unwrap_or(0);
        return format!("HEARS NO PEER (for {quiet} ms)");
    }
    format!("hears {}", hears.join(", "))
}

/// `host`'s storage lease, as the queried host's fencing agent reads it.
fn lease(r: &ClusterReport, host: &str) -> String {
    let view = r
        .report(&r.queried)
        .map(|q| &q.fencing["fencing"]["leases"])
        .and_then(Value::as_array)
        .and_then(|ls| ls.iter().find(|l| l["host"] == host));
    let Some(l) = view else {
        return format!("n/a ({}'s fencing agent reports no lease view)", r.queried);
    };
    let state = if l["live"] == true {
        "live"
    } else if l["expired"] == true {
        "EXPIRED"
    } else {
        "not judged yet"
    };
    let renewed = l["last_renewal_ms"]
        .as_u64()
        .map(|ms| format!(", renewed {ms} ms ago"))
        .unwrap_or_default();
    let running: Vec<String> = l["running"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let running = if running.is_empty() {
        String::new()
    } else {
        format!(", publishes primary of {}", running.join(", "))
    };
    format!("{state}{renewed}{running} (read by {})", r.queried)
}

pub(crate) fn watchdog(f: &Value) -> String {
    if f["watchdog"].is_null() {
        return format!("n/a ({})", text(f.get("error").unwrap_or(&Value::Null)));
    }
    let st = text(&f["watchdog"]["state"]);
    match st.as_str() {
        "armed" | "fed" => format!(
            "armed ({st}, timeout {} s)",
            text(&f["watchdog"]["timeout_s"])
        ),
        "starving" => "armed and STARVING: this host will be reset".into(),
        _ => format!("NOT armed ({st})"),
    }
}

pub(crate) fn storage(f: &Value) -> String {
    if let Some(e) = f.get("error").filter(|_| f.get("device").is_none()) {
        return format!("n/a ({})", text(e));
    }
    let d = &f["device"];
    if d["found"] != true {
        return format!("DEVICE NOT FOUND ({})", text(&d["problem"]));
    }
    let mut s = text(&d["path"]);
    if !d["problem"].is_null() {
        let _ = write!(s, " PROBLEM: {}", text(&d["problem"]));
    }
    let lease = &f["fencing"]["own_lease"];
    if lease.is_null() {
        let _ = write!(s, "; not fencing ({})", text(&f["error"]));
        return s;
    }
    let ok = lease["last_ok_ms_ago"]
        .as_u64()
        .map(|ms| format!("last renewal write ok {ms} ms ago"))
        .unwrap_or_else(|| "no renewal write succeeded yet".into());
    let _ = write!(s, "; {ok}; {} failed writes", text(&lease["failures"]));
    if !lease["last_error"].is_null() {
        let _ = write!(s, " (last: {})", text(&lease["last_error"]));
    }
    if f["fencing"]["region_ok"] == false {
        s.push_str("; fencing region REFUSED");
    }
    s
}

/// The VM's status on every host that reports it, the acting Primary's first.
pub(crate) fn vm_views<'a>(r: &'a ClusterReport, vm: &str) -> Vec<(&'a str, &'a Value)> {
    let mut v: Vec<(&str, &Value)> = r
        .hosts
        .iter()
        .filter_map(|h| {
            let rep = h.report.as_ref()?;
            let vms = rep.ftvmm["vms"].as_array()?;
            Some((h.host.as_str(), vms.iter().find(|x| x["name"] == vm)?))
        })
        .collect();
    v.sort_by_key(|(host, s)| s["lockstep"]["primary"] != *host);
    v
}

fn vm_line(r: &ClusterReport, vm: &str, replication: &str, power: &str) -> String {
    let views = vm_views(r, vm);
    let mut s = format!("  {vm} ({replication}, power {power})\n");
    let Some((at, p)) = views.first() else {
        let _ = writeln!(s, "    no answering host reports it");
        return s;
    };
    let ls = &p["lockstep"];
    let protection = if ls["protection"].is_null() {
        format!("{} on {at}", text(&p["state"]))
    } else {
        text(&ls["protection"])
    };
    let _ = writeln!(s, "    protection: {protection} (as {at} reports it)");
    let _ = writeln!(
        s,
        "    primary: {}  secondary: {}  generation: {}",
        opt(&ls["primary"]),
        opt(&ls["secondary"]),
        opt(&ls["generation"])
    );
    // The affinity in force (`ftctl apply` changes it live).
    let allowed = match p["allowed_hosts"].as_array() {
        Some(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        None => format!("n/a ({at}'s ftvmm does not report it)"),
    };
    let _ = writeln!(s, "    allowed hosts: {allowed}");
    let lag = &ls["log"]["lag"];
    let lag = if lag.is_null() {
        "n/a (not a paired primary here)".into()
    } else {
        format!(
            "{} ms, {} records, {} bytes",
            text(&lag["ms"]),
            text(&lag["records"]),
            text(&lag["bytes"])
        )
    };
    let bw = ls["log_bytes_per_s"]
        .as_u64()
        .map(|b| format!("{b} B/s (average since the pair started)"))
        .unwrap_or_else(|| "n/a".into());
    let _ = writeln!(s, "    lag: {lag}; log bandwidth: {bw}");
    let last = events(r).into_iter().rev().find(|(_, _, e)| {
        e.vm.as_deref() == Some(vm) && e.kind == crate::events::EventKind::Failover
    });
    let _ = writeln!(
        s,
        "    last failover: {}",
        match last {
            Some((host, age, e)) => format!(
                "{} ago on {host}, pause {}",
                ago(age),
                e.pause_ms.map_or("n/a".into(), |p| format!("{p} ms"))
            ),
            None => "none recorded since the answering hosts' ftvmm started".into(),
        }
    );
    s
}

/// Every answering host's events from every daemon, with their age on that
/// host's clock, oldest first.
pub fn events(r: &ClusterReport) -> Vec<(String, u64, Event)> {
    let mut all = Vec::new();
    for h in &r.hosts {
        let Some(rep) = &h.report else { continue };
        for d in [&rep.heartbeat, &rep.fencing, &rep.ftvmm] {
            let evs: Vec<Event> = serde_json::from_value(d["events"].clone()).unwrap_or_default();
            for e in evs {
                all.push((h.host.clone(), rep.unix_ms.saturating_sub(e.unix_ms), e));
            }
        }
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.1));
    all
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

fn opt(v: &Value) -> String {
    if v.is_null() {
        "none".into()
    } else {
        text(v)
    }
}

pub(crate) fn ago(ms: u64) -> String {
    match ms {
        0..=9_999 => format!("{ms} ms"),
        10_000..=5_999_999 => format!("{} s", ms / 1000),
        _ => format!("{} min", ms / 60_000),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from ms since the Unix epoch (civil-from-days).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
