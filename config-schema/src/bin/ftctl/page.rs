//! `ftctl page`: the status page, served from the operator's machine.
//!
//! One poller thread asks the cluster for its status every [`POLL_EVERY`]
//! (the same signed `ClusterStatus` query as `ftctl status --cluster`, with
//! the operator's key) and feeds the [`History`]; the main thread serves
//! `GET /` and `GET /status.json` from it with `tiny_http`, one request at a
//! time. Nothing is served on the appliance: the only thing that reaches a
//! host is the authenticated query.
//!
//! With several `--host`s the poller asks the one that answered last first,
//! then the others in order, so the page goes on when the host it asked
//! goes down (a failover of its Primary, say).
//!
//! `GET /metrics?host=ADDR` (ADDR one of the `--host`s) asks that host for
//! its OpenMetrics text with the same key, on a thread of its own (a host
//! that does not answer holds up neither the page nor other scrapes), and
//! passes it on: 200 with the text, 502 with the reason when the host
//! refused or did not answer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use config_schema::remote::auth::OperatorKey;
use config_schema::remote::client::HostKeys;
use config_schema::remote::page::{self, History};
use config_schema::remote::{client, OperatorRequest, Reply};

/// How often the cluster is asked.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long each read of one query may wait: a host answers a cluster query
/// within about 1.5 s (heartbeat's `status_service::PEER_REPORT_DEADLINE`),
/// but one of an older version waits up to 12 s for a silent peer, so a bit
/// longer than that.
const QUERY_TIMEOUT: Duration = Duration::from_secs(12);

/// `ftctl page --host ADDR... --key FILE --listen ADDR`; runs until killed.
pub fn page(hosts: &[String], key: &Path, config: &Path, listen: SocketAddr) -> Result<()> {
    let host_keys = super::remote::host_keys(config)?;
    let der = std::fs::read(key)
        .with_context(|| format!("cannot read operator key {}", key.display()))?;
    let key =
        OperatorKey::from_pkcs8(&der).with_context(|| format!("operator key {}", key.display()))?;
    for h in hosts {
        client::resolve(h)?;
    }
    let server =
        tiny_http::Server::http(listen).map_err(|e| anyhow!("cannot listen on {listen}: {e}"))?;
    if !listen.ip().is_loopback() {
        eprintln!(
            "warning: {listen} is not a loopback address: whoever reaches it reads the cluster's \
             status without an operator key"
        );
    }
    let history = Arc::new(Mutex::new(History::default()));
    let (key, host_keys) = (Arc::new(key), Arc::new(host_keys));
    let poller = {
        let (history, hosts) = (Arc::clone(&history), hosts.to_vec());
        let (key, host_keys) = (Arc::clone(&key), Arc::clone(&host_keys));
        std::thread::Builder::new()
            .name("page-poller".into())
            .spawn(move || poll_forever(&hosts, &key, &host_keys, &history))?
    };
    eprintln!(
        "status page of {} on http://{listen}/ (data: /status.json, metrics: \
         /metrics?host=ADDR); polls every {} s",
        hosts.join(", "),
        POLL_EVERY.as_secs()
    );
    for request in server.incoming_requests() {
        if poller.is_finished() {
            return Err(anyhow!("the poller thread ended"));
        }
        match page::metrics_target(request.method().as_str(), request.url(), hosts) {
            Some(Ok(host)) => {
                let (host, key, host_keys) =
                    (host.to_string(), Arc::clone(&key), Arc::clone(&host_keys));
                let spawned = std::thread::Builder::new()
                    .name("page-metrics".into())
                    .spawn(move || respond(request, metrics_of(&host, &key, &host_keys)));
                if let Err(e) = spawned {
                    eprintln!("page: cannot start a metrics request: {e}");
                }
                continue;
            }
            Some(Err(answer)) => {
                respond(request, answer);
                continue;
            }
            None => {}
        }
        let answer = {
            let h = history.lock().unwrap_or_else(|p| p.into_inner());
            page::answer(request.method().as_str(), request.url(), &h, now_ms())
        };
        respond(request, answer);
    }
    Ok(())
}

/// Sends `answer` with the page's headers.
fn respond(request: tiny_http::Request, answer: page::Answer) {
    let mut response = tiny_http::Response::from_string(answer.body)
        .with_status_code(answer.status)
        .with_header(header("Content-Type", answer.content_type));
    for (k, v) in page::HEADERS {
        response.add_header(header(k, v));
    }
    if answer.status == 405 {
        response.add_header(header("Allow", "GET, HEAD"));
    }
    if let Err(e) = request.respond(response) {
        eprintln!("page: answering a request failed: {e}");
    }
}

/// One host's OpenMetrics text, or 502 with why not.
fn metrics_of(host: &str, key: &OperatorKey, host_keys: &HostKeys) -> page::Answer {
    match super::remote::fetch_metrics(host, key, host_keys, QUERY_TIMEOUT) {
        Ok(text) => page::Answer {
            status: 200,
            content_type: page::OPENMETRICS,
            body: text,
        },
        Err(e) => page::Answer {
            status: 502,
            content_type: "text/plain; charset=utf-8",
            body: format!("no metrics from {host}: {e:#}\n"),
        },
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    // Both are ASCII constants or our own content types.
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("ASCII header")
}

fn poll_forever(
    hosts: &[String],
    key: &OperatorKey,
    host_keys: &HostKeys,
    history: &Mutex<History>,
) {
    let mut first = 0;
    loop {
        let started = Instant::now();
        let result = poll_once(hosts, key, host_keys, &mut first);
        let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((host, report)) => h.on_report(now_ms(), &host, report),
            Err(e) => h.on_error(now_ms(), e),
        }
        drop(h);
        std::thread::sleep(POLL_EVERY.saturating_sub(started.elapsed()));
    }
}

/// Asks `hosts[first]`, then the others in order; the one that answers is
/// asked first next time. The error names every host's failure.
fn poll_once(
    hosts: &[String],
    key: &OperatorKey,
    host_keys: &HostKeys,
    first: &mut usize,
) -> Result<(String, config_schema::remote::report::ClusterReport), String> {
    let mut failures = Vec::new();
    for i in (0..hosts.len()).map(|k| (*first + k) % hosts.len()) {
        let host = &hosts[i];
        let reply = client::resolve(host).and_then(|addr| {
            client::query(
                addr,
                key,
                host_keys,
                OperatorRequest::ClusterStatus,
                QUERY_TIMEOUT,
            )
        });
        match reply {
            Ok(Reply::Cluster { report }) => {
                *first = i;
                return Ok((host.clone(), report));
            }
            Ok(Reply::Refused { reason }) => failures.push(format!("{host} refused: {reason}")),
            Ok(other) => failures.push(format!("{host} answered {other:?}")),
            Err(e) => failures.push(format!("{host}: {e}")),
        }
    }
    Err(failures.join("; "))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
