//! The page itself: one HTML document with an inline SVG picture (hosts as
//! boxes, each VM drawn on the hosts that run it, sparklines of lag and log
//! bandwidth), a VM table and the recent events. No script, no external
//! resource: the page refreshes itself with `<meta http-equiv="refresh">`.
//!
//! Every text taken from a report goes through [`escape`]; a figure nobody
//! reports is written `n/a`.

use std::fmt::Write;

use serde_json::Value;

use super::super::render::{ago, event_line, events, utc, vm_views};
use super::super::report::ClusterReport;
use super::{field, svg, History};

/// Seconds between the browser's reloads.
pub const REFRESH_S: u32 = 2;
const EVENTS_SHOWN: usize = 30;

/// The whole page at `now_ms` (the operator machine's clock).
pub fn render(h: &History, now_ms: u64) -> String {
    let title = h.report.as_ref().map_or("cluster status".to_owned(), |r| {
        format!("{} status", r.cluster)
    });
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    out.push_str(&heading(h, now_ms));
    if let Some(r) = &h.report {
        out.push_str(&svg::picture(r, h, now_ms));
        out.push_str(&vm_table(r, h));
        out.push_str(&event_list(r));
    }
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:12px;color:#212121}\
svg{width:100%;height:auto;max-width:1160px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bdbdbd;padding:3px 6px;\
font-size:13px;text-align:left}.bad{color:#c62828;font-weight:bold}.ok{color:#2e7d32}\
.banner{background:#ffebee;border:1px solid #c62828;padding:6px}\
li{font-size:13px;font-family:monospace}";

fn heading(h: &History, now_ms: u64) -> String {
    let mut s = String::new();
    match (&h.report, h.report_unix_ms) {
        (Some(r), Some(at)) => {
            // The asked host takes its own daemons' status as it asks the
            // others, and waits up to its report deadline (1.5 s) for those
            // its heartbeat hears: the report can arrive that much after it
            // was made.
            let made = r
                .report(&r.queried)
                .map_or("n/a".into(), |q| utc(q.unix_ms));
            let _ = writeln!(
                s,
                "<h1>cluster {} · config {}</h1><p>gathered by {} (asked {}): \
                 made at {made} on its clock, arrived {} ago; the page reloads every \
                 {REFRESH_S} s</p>",
                escape(&r.cluster),
                escape(&r.config_id().to_string()),
                escape(&r.queried),
                escape(h.answered_by.as_deref().unwrap_or("?")),
                ago(now_ms.saturating_sub(at)),
            );
        }
        _ => s.push_str("<h1>cluster status</h1><p>no report yet</p>\n"),
    }
    if let Some(e) = &h.last_error {
        let _ = writeln!(
            s,
            "<p class=\"banner\">the last poll ({} ago) got no report: {}{}</p>",
            ago(now_ms.saturating_sub(e.unix_ms)),
            escape(&e.error),
            if h.report.is_some() {
                "; the figures below are from the last report that arrived"
            } else {
                ""
            }
        );
    }
    s
}

fn vm_table(r: &ClusterReport, h: &History) -> String {
    let mut s = String::from(
        "<h2>VMs</h2><table><tr><th>VM</th><th>mode</th><th>power</th><th>protection</th>\
         <th>Primary</th><th>Secondary</th><th>generation</th><th>lag</th>\
         <th>log bandwidth</th><th>last failover</th><th>allowed hosts</th></tr>\n",
    );
    let evs = events(r);
    for vm in &r.vms {
        let views = vm_views(r, &vm.name);
        let first = views.first();
        let ls = first.map(|(_, v)| &v["lockstep"]);
        let protection = match first {
            None => "n/a (no answering host reports it)".to_owned(),
            Some((at, v)) if v["lockstep"]["protection"].is_null() => {
                format!("n/a ({} on {at})", field(&v["state"]))
            }
            Some((_, v)) => field(&v["lockstep"]["protection"]),
        };
        let class = if protection.starts_with("protected") {
            "ok"
        } else {
            "bad"
        };
        let get = |k: &str| ls.map_or("n/a".to_owned(), |l| opt(&l[k]));
        let newest = h.samples.get(&vm.name).and_then(|s| s.back());
        let lag = newest.and_then(|p| p.lag_ms).map_or("n/a".into(), ms);
        let bw = newest
            .and_then(|p| p.log_bytes_per_s)
            .map_or("n/a".into(), per_s);
        let last = evs.iter().rev().find(|(_, _, e)| {
            e.vm.as_deref() == Some(vm.name.as_str())
                && e.kind == crate::events::EventKind::Failover
        });
        let last = last.map_or("none recorded".to_owned(), |(host, age, e)| {
            format!(
                "{} ago on {host}, pause {}",
                ago(*age),
                e.pause_ms.map_or("n/a".into(), |p| format!("{p} ms"))
            )
        });
        // The affinity in force (it changes live with `ftctl apply`).
        let allowed = first.and_then(|(_, v)| v["allowed_hosts"].as_array());
        let allowed = allowed.map_or("n/a".to_owned(), |a| {
            a.iter().map(field).collect::<Vec<_>>().join(", ")
        });
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&vm.name),
            escape(&vm.replication),
            escape(&vm.power),
            escape(&protection),
            escape(&get("primary")),
            escape(&get("secondary")),
            escape(&get("generation")),
            escape(&lag),
            escape(&bw),
            escape(&last),
            escape(&allowed)
        );
    }
    s.push_str("</table>\n");
    s
}

fn event_list(r: &ClusterReport) -> String {
    let evs = events(r);
    let mut s = format!(
        "<h2>Recent events</h2><p>newest first, {} of {}; times on each host's clock</p><ul>\n",
        evs.len().min(EVENTS_SHOWN),
        evs.len()
    );
    if evs.is_empty() {
        s.push_str("<li>none recorded since the daemons started</li>\n");
    }
    for (host, age, e) in evs.iter().rev().take(EVENTS_SHOWN) {
        let _ = writeln!(s, "<li>{}</li>", escape(&event_line(host, *age, e)));
    }
    s.push_str("</ul>\n");
    s
}

pub(super) fn opt(v: &Value) -> String {
    if v.is_null() {
        "none".into()
    } else {
        field(v)
    }
}

pub(super) fn ms(v: u64) -> String {
    format!("{v} ms")
}

pub(super) fn per_s(b: u64) -> String {
    match b {
        0..=9_999 => format!("{b} B/s"),
        10_000..=9_999_999 => format!("{} kB/s", b / 1000),
        _ => format!("{} MB/s", b / 1_000_000),
    }
}

/// At most `n` characters of `s`, with `…` when cut.
pub(super) fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
    c.push('…');
    c
}

/// `s` safe as HTML text and as an attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
