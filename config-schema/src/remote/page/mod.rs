//! The status page of `ftctl page`: what it remembers of the cluster
//! ([`History`]: the last cluster report and, per VM, the last
//! [`WINDOW_MS`] of lag and log bandwidth) and the page drawn from it
//! ([`html::render`], a pure function of the history and the time).
//!
//! Rules:
//! - The history is fed by one poller ([`History::on_report`],
//!   [`History::on_error`]); it never invents a figure: a VM whose Primary
//!   does not report a lag has a sample with `lag_ms: None`, drawn as a gap
//!   and printed `n/a`.
//! - Log bandwidth is measured here, between two polls of the same Primary
//!   in the same generation (the log's byte counter restarts with a new
//!   Primary); the daemons' own `log_bytes_per_s` is an average since the
//!   pair started and is not what "the last minutes" means.
//! - Samples older than [`WINDOW_MS`] before the newest poll are dropped.
//! - `GET /metrics?host=ADDR` passes one host's OpenMetrics text on, fetched
//!   with the operator's key when asked ([`metrics_target`]): a Prometheus
//!   scrape target per host, without an unauthenticated port on any host.

pub mod html;
mod svg;

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::render::vm_views;
use super::report::ClusterReport;

/// How much lag and bandwidth history the page keeps and draws.
pub const WINDOW_MS: u64 = 10 * 60 * 1000;

/// One VM at one poll, as its acting Primary reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The operator machine's clock when the report arrived.
    pub unix_ms: u64,
    /// The host whose view this is (the acting Primary's when one reports).
    pub primary: Option<String>,
    pub generation: Option<u64>,
    /// The Primary's log lag; `None` when it reports none (not a paired
    /// Primary, or no host reports the VM).
    pub lag_ms: Option<u64>,
    /// The Primary's log byte counter (since it became Primary).
    pub log_bytes: Option<u64>,
    /// Bytes per second since the previous sample of the same Primary and
    /// generation; `None` for the first such sample.
    pub log_bytes_per_s: Option<u64>,
}

/// Why the last poll got no report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PollError {
    pub unix_ms: u64,
    pub error: String,
}

/// What the page shows: the newest cluster report and the recent samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct History {
    /// The newest report, the host that answered it and when it arrived.
    pub report: Option<ClusterReport>,
    pub answered_by: Option<String>,
    pub report_unix_ms: Option<u64>,
    /// The last failed poll, kept until a poll succeeds again.
    pub last_error: Option<PollError>,
    /// Per VM (config names), oldest first.
    pub samples: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// A poll answered by `answered_by` at `now_ms`.
    pub fn on_report(&mut self, now_ms: u64, answered_by: &str, report: ClusterReport) {
        for vm in &report.vms {
            let series = self.samples.entry(vm.name.clone()).or_default();
            let sample = sample_of(&report, &vm.name, now_ms, series.back());
            series.push_back(sample);
        }
        let keep_from = now_ms.saturating_sub(WINDOW_MS);
        self.samples.retain(|name, series| {
            while series.front().is_some_and(|s| s.unix_ms < keep_from) {
                series.pop_front();
            }
            // A VM no longer in the config goes once its samples aged out.
            !series.is_empty() || report.vms.iter().any(|v| &v.name == name)
        });
        self.report = Some(report);
        self.answered_by = Some(answered_by.to_owned());
        self.report_unix_ms = Some(now_ms);
        self.last_error = None;
    }

    /// A poll that got no report (every host tried refused or did not answer).
    pub fn on_error(&mut self, now_ms: u64, error: String) {
        self.last_error = Some(PollError {
            unix_ms: now_ms,
            error,
        });
    }
}

/// The sample of `vm` in `r`, its bandwidth measured against `prev`.
fn sample_of(r: &ClusterReport, vm: &str, now_ms: u64, prev: Option<&Sample>) -> Sample {
    let views = vm_views(r, vm);
    let Some((at, v)) = views.first() else {
        return Sample {
            unix_ms: now_ms,
            primary: None,
            generation: None,
            lag_ms: None,
            log_bytes: None,
            log_bytes_per_s: None,
        };
    };
    let ls = &v["lockstep"];
    let primary = Some((*at).to_owned());
    let generation = ls["generation"].as_u64();
    let log_bytes = ls["log"]["stats"]["log_bytes"].as_u64();
    let log_bytes_per_s = prev.and_then(|p| {
        let same = p.primary == primary && p.generation == generation;
        let dt_ms = now_ms.checked_sub(p.unix_ms).filter(|&d| d > 0)?;
        let db = log_bytes?.checked_sub(p.log_bytes?)?;
        same.then(|| db.saturating_mul(1000) / dt_ms)
    });
    Sample {
        unix_ms: now_ms,
        primary,
        generation,
        lag_ms: ls["log"]["lag"]["ms"].as_u64(),
        log_bytes,
        log_bytes_per_s,
    }
}

/// What the page's HTTP server answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// The headers every answer carries: nothing is cached, nothing loads from
/// elsewhere, no script runs (the page has none; this makes sure).
pub const HEADERS: [(&str, &str); 4] = [
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

/// Routes one request: `GET /` the page, `GET /status.json` the history;
/// HEAD the same without a body (the server drops it); any other method
/// 405 (the server adds `Allow: GET, HEAD`), any other path 404.
pub fn answer(method: &str, url: &str, h: &History, now_ms: u64) -> Answer {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return Answer {
            status: 405,
            content_type: TEXT,
            body: format!("{method} not allowed: this page is read-only (GET, HEAD)\n"),
        };
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    match path {
        "/" | "/index.html" => Answer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: html::render(h, now_ms),
        },
        "/status.json" => Answer {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_string_pretty(h)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
        },
        _ => Answer {
            status: 404,
            content_type: TEXT,
            body: format!("no {path} here: the page is / and its data /status.json\n"),
        },
    }
}

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics?host=ADDR`: the host whose figures to fetch (the
/// multi-target pattern of Prometheus exporters: one scrape job, the host
/// as a `params` value), or the answer that refuses the request. `None`:
/// not a metrics request. Only one of the page's own `--host`s may be
/// asked: the page is not a proxy to anywhere else.
pub fn metrics_target<'a>(
    method: &str,
    url: &str,
    hosts: &'a [String],
) -> Option<Result<&'a str, Answer>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if path != "/metrics" {
        return None;
    }
    let refuse = |status, body: String| {
        Some(Err(Answer {
            status,
            content_type: TEXT,
            body,
        }))
    };
    if method != "GET" && method != "HEAD" {
        return refuse(
            405,
            format!("{method} not allowed: metrics are read-only (GET, HEAD)\n"),
        );
    }
    let asked = (query.split('&'))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "host")
        .map(|(_, v)| v);
    let listed = hosts.join(", ");
    match asked {
        None => refuse(
            400,
            format!("say which host: /metrics?host=ADDR, one of {listed}\n"),
        ),
        Some(a) => match hosts.iter().find(|h| h.as_str() == a) {
            Some(h) => Some(Ok(h.as_str())),
            None => refuse(
                404,
                format!("{a} is not one of this page's hosts ({listed})\n"),
            ),
        },
    }
}

/// `v` as text, `n/a` when absent.
fn field(v: &Value) -> String {
    super::render::text(v)
}

#[cfg(test)]
mod tests;
