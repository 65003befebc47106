//! The picture of the page: an inline SVG with each host as a box (its
//! heartbeat, watchdog and storage state) and each VM as a tile in the box
//! of every host that reports it, or dashed where another host's view places
//! it; the acting Primary's tile carries sparklines of lag and log bandwidth.

use std::fmt::Write;

use serde_json::Value;

use super::super::render::{ago, membership, storage, vm_network, vm_views, watchdog};
use super::super::report::{ClusterReport, HostEntry};
use super::html::{clip, escape, ms, opt, per_s};
use super::{field, History, Sample, WINDOW_MS};

/// The picture's width in SVG units (the page scales it to the window).
const WIDTH: u32 = 1160;
const GAP: u32 = 12;
const HEADER_H: u32 = 108;
const TILE_H: u32 = 150;

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const ORANGE: &str = "#e65100";
const GREY: &str = "#757575";

/// One VM as one host reports it, or as another host names it there.
struct Tile {
    vm: String,
    /// `primary`, `secondary` or the VM's state on that host.
    role: String,
    /// Set when this host does not report the VM but `named_by`'s view puts it here.
    named_by: Option<String>,
    view: Option<Value>,
}

pub(super) fn picture(r: &ClusterReport, h: &History, now_ms: u64) -> String {
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
            let area = Area {
                x: x + 8,
                y,
                w: box_w - 16,
            };
            s.push_str(&vm_tile(r, h, t, &e.host, area, now_ms));
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
    let heartbeat = e.report.as_ref().map(|rep| &rep.heartbeat);
    let (vmnet, vmnet_ok) = heartbeat.map_or(("n/a", false), vm_network_short);
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
        (
            "vm network",
            vmnet,
            vmnet_ok,
            heartbeat.map_or_else(unreachable, vm_network),
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

fn vm_network_short(hb: &Value) -> (&'static str, bool) {
    let v = &hb["vm_network"];
    if v.is_null() {
        ("n/a", false)
    } else if v["listening"] != true {
        ("NOT LISTENING", false)
    } else if v["hears"].as_array().is_some_and(|h| !h.is_empty()) {
        ("ok", true)
    } else {
        ("HEARS NO PEER", false)
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

/// Where a tile goes, in SVG units.
#[derive(Clone, Copy)]
struct Area {
    x: u32,
    y: u32,
    w: u32,
}

/// One VM tile: headline (name, role, peer), protection, generation and
/// mode, then the sparklines if `host` is the acting Primary.
fn vm_tile(r: &ClusterReport, h: &History, t: &Tile, host: &str, a: Area, now_ms: u64) -> String {
    let chars = (a.w / 7) as usize;
    let ls = t.view.as_ref().map(|v| &v["lockstep"]);
    let acting = vm_views(r, &t.vm).first().map(|(at, _)| *at);
    let protection = tile_protection(r, t, host);
    let protected = protection.starts_with("protected");
    // ftvmm says e.g. `primary (unprotected, generation 2)`: the first word
    // heads the tile, the whole role is its tooltip.
    let word = t.role.split([' ', '(']).next().unwrap_or("");
    let mut s = tile_frame(t, word, protected, a);
    let peer = match (word, ls) {
        ("primary", Some(l)) => format!(" · secondary {}", opt(&l["secondary"])),
        ("secondary", Some(l)) => format!(" · follows {}", opt(&l["primary"])),
        (_, None) => format!(" · as {} names it", t.named_by.as_deref().unwrap_or("?")),
        _ => String::new(),
    };
    let room = (chars * 6 / 7).saturating_sub(t.vm.len() + word.len() + 3);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"14\"><title>{}</title><tspan font-weight=\"bold\">{} · {}</tspan>{}</text>",
        a.x + 8,
        a.y + 18,
        escape(&t.role),
        escape(&t.vm),
        escape(&word.to_uppercase()),
        escape(&clip(&peer, room))
    );
    let colour = if protected { GREEN } else { ORANGE };
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" fill=\"{colour}\"><title>{}</title>{}</text>",
        a.x + 8,
        a.y + 36,
        escape(&protection),
        escape(&clip(&protection, chars))
    );
    let config = r.vms.iter().find(|v| v.name == t.vm);
    let gen = ls.map_or("n/a".into(), |l| field(&l["generation"]));
    let mode = config.map_or("n/a", |c| c.replication.as_str());
    let power = config.map_or("n/a", |c| c.power.as_str());
    let line = format!("generation {gen} · {mode} · power {power}");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\">{}</text>",
        a.x + 8,
        a.y + 54,
        escape(&clip(&line, chars))
    );
    if acting == Some(host) && t.named_by.is_none() {
        s.push_str(&tile_sparks(h, &t.vm, a, now_ms));
    } else {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{GREY}\">lag and log bandwidth: on the acting Primary's tile</text>",
            a.x + 8,
            a.y + 80
        );
    }
    s.push_str("</g>\n");
    s
}

/// The tile's protection: this host's own, else the acting Primary's (said
/// so), else `n/a` with why.
fn tile_protection(r: &ClusterReport, t: &Tile, host: &str) -> String {
    let own = t.view.as_ref().map(|v| &v["lockstep"]["protection"]);
    if let Some(p) = own.and_then(Value::as_str) {
        return p.to_owned();
    }
    let views = vm_views(r, &t.vm);
    let acting = views.first().filter(|(at, _)| *at != host);
    if let Some((at, v)) = acting {
        if let Some(p) = v["lockstep"]["protection"].as_str() {
            return format!("{p} (as {at} reports it)");
        }
    }
    match &t.named_by {
        Some(by) => format!("n/a (this host does not report it; {by} names it here)"),
        None => "n/a (no protection reported here)".into(),
    }
}

/// The tile's rectangle: green a protected Primary, blue a Secondary, grey
/// and dashed a tile another host names, orange anything else.
fn tile_frame(t: &Tile, word: &str, protected: bool, a: Area) -> String {
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
    format!(
        "<g class=\"vm\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{TILE_H}\" rx=\"4\" \
         fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"{dash}/>\n",
        a.x, a.y, a.w
    )
}

/// The lag and log bandwidth sparklines of `vm`.
fn tile_sparks(h: &History, vm: &str, a: Area, now_ms: u64) -> String {
    let series = h.samples.get(vm);
    let (x, w) = (a.x + 8, a.w - 16);
    let mut s = spark_row(series, "lag", |p| p.lag_ms, ms, (x, a.y + 72, w), now_ms);
    s.push_str(&spark_row(
        series,
        "log",
        |p| p.log_bytes_per_s,
        per_s,
        (x, a.y + 112, w),
        now_ms,
    ));
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
