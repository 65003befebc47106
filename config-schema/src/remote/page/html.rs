//! The page itself: one HTML document with an inline SVG picture (hosts as
//! boxes, each VM drawn on the hosts that run it, sparklines of lag and log
//! bandwidth), a VM table and the recent events. No script, no external
//! resource: the page refreshes itself with `<meta http-equiv="refresh">`.
//!
//! Every text taken from a report goes through [`escape`]; a figure nobody
//! reports is written `n/a`.

use std::fmt::Write;

use serde_json::Value;

use super::super::render::{ago, events, membership, storage, utc, vm_views, watchdog};
use super::super::report::{ClusterReport, HostEntry};
use super::{field, History, Sample, WINDOW_MS};

/// Seconds between the browser's reloads.
pub const REFRESH_S: u32 = 2;
/// The picture's width in SVG units (the page scales it to the window).
const WIDTH: u32 = 1160;
const GAP: u32 = 12;
const HEADER_H: u32 = 92;
const TILE_H: u32 = 150;
const EVENTS_SHOWN: usize = 30;

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const ORANGE: &str = "#e65100";
const GREY: &str = "#757575";

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
        out.push_str(&picture(r, h, now_ms));
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
            // The asked host takes its own daemons' status first, then waits
            // up to its gathering deadline for the others: during a failure
            // the report can arrive seconds after it was made.
            let made = r
                .report(&r.queried)
                .map_or("n/a".into(), |q| utc(q.unix_ms));
            let _ = writeln!(
                s,
                "<h1>cluster {} · config generation {}</h1><p>gathered by {} (asked {}): \
                 made at {made} on its clock, arrived {} ago; the page reloads every \
                 {REFRESH_S} s</p>",
                escape(&r.cluster),
                r.config_generation,
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

/// One VM as one host reports it, or as another host names it there.
struct Tile {
    vm: String,
    /// `primary`, `secondary` or the VM's state on that host.
    role: String,
    /// Set when this host does not report the VM but `named_by`'s view puts it here.
    named_by: Option<String>,
    view: Option<Value>,
}

fn picture(r: &ClusterReport, h: &History, now_ms: u64) -> String {
    let n = r.hosts.len().max(1) as u32;
    let box_w = (WIDTH - GAP * (n + 1)) / n;
    let tiles: Vec<Vec<Tile>> = r.hosts.iter().map(|e| tiles_on(r, e)).collect();
    let most = tiles.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let box_h = HEADER_H + most.max(1) * (TILE_H + GAP);
    let height = box_h + 2 * GAP;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height}\" \
         font-family=\"sans-serif\" font-size=\"12\" role=\"img\" aria-label=\"cluster picture\">\n"
    );
    for (i, (e, ts)) in r.hosts.iter().zip(&tiles).enumerate() {
        let x = GAP + i as u32 * (box_w + GAP);
        s.push_str(&host_box(r, e, x, GAP, box_w, box_h));
        for (j, t) in ts.iter().enumerate() {
            let y = GAP + HEADER_H + j as u32 * (TILE_H + GAP);
            s.push_str(&vm_tile(r, h, t, &e.host, x + 8, y, box_w - 16, now_ms));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The VMs `e` reports, then those another host's view places on `e`.
fn tiles_on(r: &ClusterReport, e: &HostEntry) -> Vec<Tile> {
    let mut out: Vec<Tile> = Vec::new();
    let own = e
        .report
        .as_ref()
        .and_then(|rep| rep.ftvmm["vms"].as_array());
    for v in own.into_iter().flatten() {
        let ls = &v["lockstep"];
        let role = ls["role"]
            .as_str()
            .or(v["state"].as_str())
            .unwrap_or("unknown");
        out.push(Tile {
            vm: field(&v["name"]),
            role: role.to_owned(),
            named_by: None,
            view: Some(v.clone()),
        });
    }
    for vm in &r.vms {
        if out.iter().any(|t| t.vm == vm.name) {
            continue;
        }
        for (at, v) in vm_views(r, &vm.name) {
            let ls = &v["lockstep"];
            let role = if ls["primary"] == e.host.as_str() {
                "primary"
            } else if ls["secondary"] == e.host.as_str() {
                "secondary"
            } else {
                continue;
            };
            out.push(Tile {
                vm: vm.name.clone(),
                role: role.to_owned(),
                named_by: Some(at.to_owned()),
                view: None,
            });
            break;
        }
    }
    out
}

fn host_box(r: &ClusterReport, e: &HostEntry, x: u32, y: u32, w: u32, h: u32) -> String {
    let fencing = e.report.as_ref().map(|rep| &rep.fencing);
    let (beat, beat_ok) = heartbeat_short(r, e);
    let (dog, dog_ok) = fencing.map_or(("n/a", false), watchdog_short);
    let (disk, disk_ok) = fencing.map_or(("n/a", false), storage_short);
    let stroke = if beat_ok { GREEN } else { RED };
    let chars = (w / 7) as usize;
    let mut s = format!(
        "<g class=\"host\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" \
         fill=\"#fafafa\" stroke=\"{stroke}\" stroke-width=\"3\"/>\n"
    );
    let queried = if e.host == r.queried {
        " (answered the query)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"16\" font-weight=\"bold\">{}{queried}</text>",
        x + 10,
        y + 22,
        escape(&e.host)
    );
    let unreachable = || "n/a (host unreachable)".to_owned();
    let lines = [
        ("heartbeat", beat, beat_ok, membership(r, &e.host)),
        (
            "watchdog",
            dog,
            dog_ok,
            fencing.map_or_else(unreachable, watchdog),
        ),
        (
            "storage",
            disk,
            disk_ok,
            fencing.map_or_else(unreachable, storage),
        ),
    ];
    for (i, (what, short, ok, long)) in lines.into_iter().enumerate() {
        let colour = if ok { GREEN } else { RED };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\"><title>{}</title>{what}: <tspan fill=\"{colour}\" \
             font-weight=\"bold\">{}</tspan></text>",
            x + 10,
            y + 42 + 16 * i as u32,
            escape(&long),
            escape(&clip(short, chars.saturating_sub(what.len() + 2)))
        );
    }
    s.push_str("</g>\n");
    s
}

/// `up`, `suspected`, `UNREACHABLE`... as the queried host sees `e`.
fn heartbeat_short<'a>(r: &'a ClusterReport, e: &'a HostEntry) -> (&'a str, bool) {
    if e.report.is_none() {
        return ("UNREACHABLE", false);
    }
    if e.host == r.queried {
        return ("up (queried)", true);
    }
    let state = r
        .report(&r.queried)
        .and_then(|q| q.heartbeat["peers"].as_array())
        .and_then(|ps| ps.iter().find(|p| p["name"] == e.host.as_str()))
        .and_then(|p| p["state"].as_str());
    match state {
        Some(st) => (st, st == "up"),
        // It answered the gathering, so it is there; the queried host's
        // heartbeat has no opinion.
        None => ("answers (no heartbeat view)", true),
    }
}

fn watchdog_short(f: &Value) -> (&'static str, bool) {
    match f["watchdog"]["state"].as_str() {
        None => ("n/a", false),
        Some("armed" | "fed") => ("armed", true),
        Some("starving") => ("STARVING", false),
        Some(_) => ("NOT armed", false),
    }
}

fn storage_short(f: &Value) -> (&'static str, bool) {
    let d = &f["device"];
    if d.is_null() {
        ("n/a", false)
    } else if d["found"] != true {
        ("DEVICE NOT FOUND", false)
    } else if !d["problem"].is_null() {
        ("PROBLEM", false)
    } else if f["fencing"]["own_lease"].is_null() {
        ("not fencing", false)
    } else if f["fencing"]["region_ok"] == false {
        ("fencing region REFUSED", false)
    } else if f["fencing"]["own_lease"]["failures"].as_u64().unwrap_or(0) > 0 {
        ("ok (with failed writes)", true)
    } else {
        ("ok", true)
    }
}

#[allow(clippy::too_many_arguments)]
fn vm_tile(
    r: &ClusterReport,
    h: &History,
    t: &Tile,
    host: &str,
    x: u32,
    y: u32,
    w: u32,
    now_ms: u64,
) -> String {
    let chars = (w / 7) as usize;
    let ls = t.view.as_ref().map(|v| &v["lockstep"]);
    let acting = vm_views(r, &t.vm).first().map(|(at, v)| (*at, *v));
    let protection = ls
        .and_then(|l| l["protection"].as_str())
        .map(str::to_owned)
        .or_else(|| {
            let (at, v) = acting.filter(|(at, _)| *at != host)?;
            let p = v["lockstep"]["protection"].as_str()?;
            Some(format!("{p} (as {at} reports it)"))
        })
        .unwrap_or_else(|| match &t.named_by {
            Some(by) => format!("n/a (this host does not report it; {by} names it here)"),
            None => "n/a (no protection reported here)".into(),
        });
    let protected = protection.starts_with("protected");
    // ftvmm says e.g. `primary (unprotected, generation 2)`: the first word
    // heads the tile, the whole role is its tooltip.
    let word = t.role.split([' ', '(']).next().unwrap_or("");
    let (fill, stroke) = match (&t.named_by, word, protected) {
        (Some(_), _, _) => ("#eeeeee", GREY),
        (None, "primary", true) => ("#e8f5e9", GREEN),
        (None, "secondary", _) => ("#e3f2fd", "#1565c0"),
        _ => ("#fff3e0", ORANGE),
    };
    let dash = if t.named_by.is_some() {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    let mut s = format!(
        "<g class=\"vm\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{TILE_H}\" rx=\"4\" \
         fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"{dash}/>\n"
    );
    let config = r.vms.iter().find(|v| v.name == t.vm);
    let peer = match (word, ls) {
        ("primary", Some(l)) => format!(" · secondary {}", opt(&l["secondary"])),
        ("secondary", Some(l)) => format!(" · follows {}", opt(&l["primary"])),
        (_, None) => format!(" · as {} names it", t.named_by.as_deref().unwrap_or("?")),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"14\"><title>{}</title><tspan font-weight=\"bold\">{} · {}</tspan>{}</text>",
        x + 8,
        y + 18,
        escape(&t.role),
        escape(&t.vm),
        escape(&word.to_uppercase()),
        escape(&clip(&peer, (chars * 6 / 7).saturating_sub(t.vm.len() + word.len() + 3)))
    );
    let colour = if protected { GREEN } else { ORANGE };
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" fill=\"{colour}\"><title>{}</title>{}</text>",
        x + 8,
        y + 36,
        escape(&protection),
        escape(&clip(&protection, chars))
    );
    let gen = ls.map_or("n/a".into(), |l| field(&l["generation"]));
    let mode = config.map_or("n/a", |c| c.replication.as_str());
    let power = config.map_or("n/a", |c| c.power.as_str());
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\">{}</text>",
        x + 8,
        y + 54,
        escape(&clip(
            &format!("generation {gen} · {mode} · power {power}"),
            chars
        ))
    );
    if acting.map(|(at, _)| at) == Some(host) && t.named_by.is_none() {
        let series = h.samples.get(&t.vm);
        s.push_str(&spark_row(
            series,
            "lag",
            |p| p.lag_ms,
            ms,
            (x + 8, y + 72, w - 16),
            now_ms,
        ));
        s.push_str(&spark_row(
            series,
            "log",
            |p| p.log_bytes_per_s,
            per_s,
            (x + 8, y + 112, w - 16),
            now_ms,
        ));
    } else {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{GREY}\">lag and log bandwidth: on the acting Primary's tile</text>",
            x + 8,
            y + 80
        );
    }
    s.push_str("</g>\n");
    s
}

/// A label with the newest value and a polyline of the series over the
/// shown span; gaps (`None`) break the line.
fn spark_row(
    series: Option<&std::collections::VecDeque<Sample>>,
    what: &str,
    value: impl Fn(&Sample) -> Option<u64>,
    unit: fn(u64) -> String,
    (x, y, w): (u32, u32, u32),
    now_ms: u64,
) -> String {
    let empty = std::collections::VecDeque::new();
    let series = series.unwrap_or(&empty);
    let newest = series.back().and_then(&value).map_or("n/a".into(), unit);
    let max = series.iter().filter_map(&value).max();
    let first = series.front().map_or(now_ms, |p| p.unix_ms);
    let span_ms = now_ms.saturating_sub(first).clamp(60_000, WINDOW_MS);
    let max_s = max.map_or("n/a".into(), unit);
    let mut s = format!(
        "<text x=\"{x}\" y=\"{y}\">{what} {} <tspan fill=\"{GREY}\">(max {} over the last {})</tspan></text>\n",
        escape(&newest),
        escape(&max_s),
        ago(span_ms)
    );
    let (top, height) = (y + 4, 22u32);
    let _ = writeln!(
        s,
        "<rect x=\"{x}\" y=\"{top}\" width=\"{w}\" height=\"{height}\" fill=\"white\" stroke=\"#e0e0e0\"/>"
    );
    let scale = max.unwrap_or(0).max(1) as f64;
    let mut segment: Vec<String> = Vec::new();
    let flush = |seg: &mut Vec<String>, s: &mut String| {
        if seg.len() == 1 {
            let (px, py) = seg[0].split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"1.5\" fill=\"#1565c0\"/>"
            );
        } else if seg.len() > 1 {
            let _ = writeln!(
                s,
                "<polyline class=\"spark\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{}\"/>",
                seg.join(" ")
            );
        }
        seg.clear();
    };
    for p in series {
        let age = now_ms.saturating_sub(p.unix_ms);
        if age > span_ms {
            continue;
        }
        match value(p) {
            Some(v) => {
                let px = x as f64 + w as f64 * (1.0 - age as f64 / span_ms as f64);
                let py = (top + height) as f64 - 2.0 - (height - 4) as f64 * (v as f64 / scale);
                segment.push(format!("{px:.1},{py:.1}"));
            }
            None => flush(&mut segment, &mut s),
        }
    }
    flush(&mut segment, &mut s);
    s
}

fn vm_table(r: &ClusterReport, h: &History) -> String {
    let mut s = String::from(
        "<h2>VMs</h2><table><tr><th>VM</th><th>mode</th><th>power</th><th>protection</th>\
         <th>Primary</th><th>Secondary</th><th>generation</th><th>lag</th>\
         <th>log bandwidth</th><th>last failover</th></tr>\n",
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
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&vm.name),
            escape(&vm.replication),
            escape(&vm.power),
            escape(&protection),
            escape(&get("primary")),
            escape(&get("secondary")),
            escape(&get("generation")),
            escape(&lag),
            escape(&bw),
            escape(&last)
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
        let vm =
            e.vm.as_deref()
                .map(|v| format!(" vm {v}"))
                .unwrap_or_default();
        let pause = e
            .pause_ms
            .map(|p| format!(" (pause {p} ms)"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "<li>{}</li>",
            escape(&format!(
                "{} ({} ago) {host} {}{vm}{pause}: {}",
                utc(e.unix_ms),
                ago(*age),
                e.kind.name(),
                e.text
            ))
        );
    }
    s.push_str("</ul>\n");
    s
}

fn opt(v: &Value) -> String {
    if v.is_null() {
        "none".into()
    } else {
        field(v)
    }
}

fn ms(v: u64) -> String {
    format!("{v} ms")
}

fn per_s(b: u64) -> String {
    match b {
        0..=9_999 => format!("{b} B/s"),
        10_000..=9_999_999 => format!("{} kB/s", b / 1000),
        _ => format!("{} MB/s", b / 1_000_000),
    }
}

/// At most `n` characters of `s`, with `…` when cut.
fn clip(s: &str, n: usize) -> String {
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
