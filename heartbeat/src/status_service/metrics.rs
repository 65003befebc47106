//! A host's figures as OpenMetrics text (`prometheus-client`), made on each
//! request from the same report `ftctl status --cluster` shows: the daemons'
//! `Status` objects. A figure a daemon does not report is left out, never
//! sent as zero. Every sample carries `host="<name>"`.
//!
//! Counters are the daemons' own totals since they started (a daemon restart
//! resets them, as Prometheus expects of counters); gauges are the current
//! values.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use config_schema::remote::report::HostReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use serde_json::Value;

type Labels = Vec<(String, String)>;
type Gauges = Family<Labels, Gauge>;
type Seconds = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter>;
type SecondsTotal = Family<Labels, Counter<f64, AtomicU64>>;
type Histograms = Family<Labels, Counted>;

/// A histogram a daemon counted (its status carries the buckets): sum, count
/// and each bucket's own count (upper bound, not cumulative; the encoder
/// sums them up), set once per exposition.
#[derive(Debug, Default)]
struct Counted(OnceLock<Spread>);

/// A histogram's figures: sum, count, (upper bound, own count) per bucket.
#[derive(Debug)]
struct Spread {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for Counted {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.0.get() {
            Some(s) => encoder.encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The metric families, registered once per exposition.
struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str) -> Gauges {
        let g = Gauges::default();
        self.registry.register(name, help, g.clone());
        g
    }
    fn seconds(&mut self, name: &str, help: &str) -> Seconds {
        let g = Seconds::default();
        self.registry.register(name, help, g.clone());
        g
    }
    fn counter(&mut self, name: &str, help: &str) -> Counters {
        let c = Counters::default();
        self.registry.register(name, help, c.clone());
        c
    }
    fn seconds_total(&mut self, name: &str, help: &str) -> SecondsTotal {
        let c = SecondsTotal::default();
        self.registry.register(name, help, c.clone());
        c
    }
    fn histogram(&mut self, name: &str, help: &str) -> Histograms {
        let h = Histograms::default();
        self.registry.register(name, help, h.clone());
        h
    }
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(g: &Gauges, labels: Labels, v: &Value) {
    if let Some(v) = v.as_i64() {
        g.get_or_create(&labels).set(v);
    }
}

fn flag(g: &Gauges, labels: Labels, on: Option<bool>) {
    if let Some(on) = on {
        g.get_or_create(&labels).set(i64::from(on));
    }
}

fn secs(g: &Seconds, labels: Labels, ms: &Value) {
    if let Some(ms) = ms.as_u64() {
        g.get_or_create(&labels).set(ms as f64 / 1000.0);
    }
}

fn count(c: &Counters, labels: Labels, v: &Value) {
    if let Some(v) = v.as_u64() {
        c.get_or_create(&labels).inc_by(v);
    }
}

/// The OpenMetrics text of `r` (ends with `# EOF`).
pub fn openmetrics(r: &HostReport) -> String {
    let host = [(Cow::Borrowed("host"), Cow::Owned(r.host.clone()))];
    let mut m = Metrics {
        registry: Registry::with_labels(host.into_iter()),
    };
    heartbeat(&mut m, &r.heartbeat);
    fencing(&mut m, &r.fencing);
    ftvmm(&mut m, &r.ftvmm, &r.host);
    events(&mut m, r);
    let up = m.gauge(
        "ft_daemon_up",
        "1 if the daemon answered Status for this report",
    );
    for (d, v) in [
        ("heartbeat", &r.heartbeat),
        ("fencing", &r.fencing),
        ("ftvmm", &r.ftvmm),
    ] {
        let answered = v.get("daemon").is_some() || v.get("error").is_none();
        flag(&up, l(&[("daemon", d)]), Some(answered));
    }
    let mut out = String::new();
    encode(&mut out, &m.registry).expect("writing to a String does not fail");
    out
}

fn heartbeat(m: &mut Metrics, h: &Value) {
    let up = m.gauge(
        "ft_heartbeat_peer_up",
        "1 if the peer was heard within the failure timeout",
    );
    let seen = m.seconds(
        "ft_heartbeat_peer_last_seen_seconds",
        "time since the peer's last sign of life",
    );
    let received = m.counter("ft_heartbeat_received", "heartbeats accepted from the peer");
    let lost = m.counter(
        "ft_heartbeat_suspicions",
        "times the peer was suspected (heartbeat losses)",
    );
    for p in h["peers"].as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else {
            continue;
        };
        let peer = || l(&[("peer", name)]);
        flag(&up, peer(), p["alive"].as_bool());
        secs(&seen, peer(), &p["last_seen_ms"]);
        count(&received, peer(), &p["received"]);
        count(&lost, peer(), &p["suspicions"]);
    }
    vm_network(m, &h["vm_network"]);
}

/// The VM network's view (reachability only, not suspicion).
fn vm_network(m: &mut Metrics, v: &Value) {
    if v["listening"] != true {
        return;
    }
    let up = m.gauge(
        "ft_vm_network_peer_up",
        "1 if the peer was heard on the VM network within the failure timeout",
    );
    let quiet = m.seconds(
        "ft_vm_network_quiet_seconds",
        "time since any peer (or the VM witness) was last heard on the VM network (0 while one is)",
    );
    let hears: Vec<&str> = (v["hears"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for p in v["peers"].as_array().into_iter().flatten() {
        if let Some(name) = p["name"].as_str() {
            flag(&up, l(&[("peer", name)]), Some(hears.contains(&name)));
        }
    }
    secs(&quiet, l(&[]), &v["quiet_ms"]);
    let w = &v["witness"];
    if let Some(addr) = w["addr"].as_str() {
        let up = m.gauge(
            "ft_vm_witness_up",
            "1 if the VM witness answered this host's pings within the failure timeout",
        );
        flag(&up, l(&[("witness", addr)]), w["heard"].as_bool());
    }
}

fn fencing(m: &mut Metrics, f: &Value) {
    let wd = m.gauge(
        "ft_watchdog_armed",
        "1 if the watchdog is open and armed (fed or starving)",
    );
    let st = f["watchdog"]["state"].as_str();
    flag(
        &wd,
        vec![],
        st.map(|s| matches!(s, "armed" | "fed" | "starving")),
    );
    let starving = m.gauge(
        "ft_watchdog_starving",
        "1 if fencing stopped feeding the watchdog (reset due)",
    );
    flag(&starving, vec![], st.map(|s| s == "starving"));
    count(
        &m.counter("ft_watchdog_feeds", "watchdog feeds"),
        vec![],
        &f["watchdog"]["feeds"],
    );
    let dev = m.gauge(
        "ft_storage_device_found",
        "1 if the shared device was found",
    );
    flag(&dev, vec![], f["device"]["found"].as_bool());
    let fe = &f["fencing"];
    let own = &fe["own_lease"];
    count(
        &m.counter("ft_lease_renewals", "own lease renewals written"),
        vec![],
        &own["renewals"],
    );
    count(
        &m.counter("ft_lease_renewal_failures", "own lease writes that failed"),
        vec![],
        &own["failures"],
    );
    let last = m.seconds(
        "ft_lease_last_renewal_seconds",
        "time since the own lease was last written",
    );
    secs(&last, vec![], &own["last_ok_ms_ago"]);
    let live = m.gauge(
        "ft_lease_live",
        "1 if the host's delta lease moved within the lease timeout",
    );
    let expired = m.gauge(
        "ft_lease_expired",
        "1 if the host's lease was seen and then stood still for the lease timeout",
    );
    for ls in fe["leases"].as_array().into_iter().flatten() {
        let Some(h) = ls["host"].as_str() else {
            continue;
        };
        flag(&live, l(&[("lease_host", h)]), ls["live"].as_bool());
        flag(&expired, l(&[("lease_host", h)]), ls["expired"].as_bool());
    }
    let decisions = m.gauge(
        "ft_fencing_decisions",
        "(vm, generation) decisions this agent knows",
    );
    if let Some(d) = fe["decisions"].as_array() {
        decisions.get_or_create(&vec![]).set(d.len() as i64);
    }
    // How long this host's `Acquire`s took (request to answer).
    let d = &fe["decide"];
    count(
        &m.counter(
            "ft_fencing_decide_runs",
            "Acquires this host's agent decided (Disk Paxos runs)",
        ),
        vec![],
        &d["runs"],
    );
    let took = m.seconds_total(
        "ft_fencing_decide_seconds",
        "time this host's Acquires took from request to answer (divided by the runs: the mean)",
    );
    if let Some(us) = d["us_total"].as_u64() {
        took.get_or_create(&vec![]).inc_by(us as f64 / 1e6);
    }
    for (name, key, help) in [
        (
            "ft_fencing_decide_last_seconds",
            "us_last",
            "the last Acquire's time",
        ),
        (
            "ft_fencing_decide_max_seconds",
            "us_max",
            "the longest Acquire's time",
        ),
    ] {
        if let Some(us) = d[key].as_u64() {
            (m.seconds(name, help).get_or_create(&vec![])).set(us as f64 / 1e6);
        }
    }
    count(
        &m.counter("ft_freeze_detections", "freezes of this host detected"),
        vec![],
        &fe["freeze"]["detections"],
    );
    count(
        &m.counter("ft_fencing_alarms", "corrupt fencing blocks seen"),
        vec![],
        &fe["alarms"]["count"],
    );
}

fn ftvmm(m: &mut Metrics, f: &Value, host: &str) {
    let running = m.gauge("ft_vm_running", "1 if the VM's member runs on this host");
    let generation = m.gauge(
        "ft_vm_generation",
        "the generation this host's member acts or follows in",
    );
    let protected = m.gauge(
        "ft_vm_protected",
        "1 if the VM has a Secondary in lockstep (as this host reports it)",
    );
    let primary = m.gauge("ft_vm_primary_here", "1 if this host runs the VM's Primary");
    let records = m.counter("ft_log_records", "log records the Primary produced");
    let bytes = m.counter("ft_log_bytes", "log bytes the Primary produced");
    let released = m.counter("ft_outputs_released", "outputs released by the Output Rule");
    let held = m.gauge("ft_outputs_held", "outputs waiting for an acknowledgement");
    let lag_ms = m.seconds(
        "ft_log_lag_seconds",
        "age of the oldest unacknowledged batch",
    );
    let lag_bytes = m.gauge(
        "ft_log_lag_bytes",
        "bytes sent or pending and not acknowledged",
    );
    let lag_records = m.gauge(
        "ft_log_lag_records",
        "records the Secondary has not replayed",
    );
    let bw = m.gauge(
        "ft_log_bytes_per_second_average",
        "log bytes per second since the pair started",
    );
    let batches = m.counter(
        "ft_log_batches",
        "log batches the Primary sent (one channel message each)",
    );
    let acks = m.counter(
        "ft_log_acks",
        "acknowledgements the Primary got from the Secondary",
    );
    let ack_round_trip = Wait::register_as(
        m,
        "ft_log",
        "ack_round_trip",
        "ack",
        "from the send of the newest log batch it echoes to its arrival at the Primary",
    );
    let segment = m.seconds(
        "ft_request_segment_seconds",
        "per-request timeline (sampled requests): a segment's median (quantile 0.5) and p99",
    );
    let ckpt = Checkpoint::register(m);
    for vm in f["vms"].as_array().into_iter().flatten() {
        let Some(name) = vm["name"].as_str() else {
            continue;
        };
        let v = || l(&[("vm", name)]);
        flag(&running, v(), vm["state"].as_str().map(|s| s == "running"));
        ckpt.add(name, &vm["checkpoint"]);
        let ls = &vm["lockstep"];
        if ls.is_null() {
            continue;
        }
        set(&generation, v(), &ls["generation"]);
        let p = ls["protection"].as_str();
        flag(&protected, v(), p.map(|p| p.starts_with("protected")));
        flag(&primary, v(), Some(ls["primary"].as_str() == Some(host)));
        let log = &ls["log"];
        count(&records, v(), &log["stats"]["records"]);
        count(&bytes, v(), &log["stats"]["log_bytes"]);
        count(&released, v(), &log["stats"]["outputs_released"]);
        set(&held, v(), &log["outputs_held"]);
        secs(&lag_ms, v(), &log["lag"]["ms"]);
        set(&lag_bytes, v(), &log["lag"]["bytes"]);
        set(&lag_records, v(), &log["lag"]["records"]);
        set(&bw, v(), &ls["log_bytes_per_s"]);
        count(&batches, v(), &log["stats"]["batches"]);
        count(&acks, v(), &log["stats"]["acks"]);
        ack_round_trip.add(name, &log["stats"]);
        timeline(&segment, name, &log["timeline"]);
    }
}

/// A checkpoint Primary's epochs (`vms[].checkpoint` of ftvmm's status):
/// how many, their pauses and sizes, what waits for the Secondary, and how
/// long the epochs' outputs waited after they closed.
struct Checkpoint {
    epochs: Counters,
    pause: SecondsTotal,
    pause_last: Seconds,
    pause_max: Seconds,
    bytes: Counters,
    pages: Counters,
    delta_pages: Counters,
    written: Counters,
    held: Gauges,
    unacked: Gauges,
    waits: [Wait; 3],
    hold: Histograms,
    hold_last: Seconds,
    hold_max: Seconds,
}

/// One of a checkpoint Primary's waits after an epoch closes (ftvmm's
/// `checkpoint/latency.rs`; status keys `<key>_epochs`, `<key>_us_total`,
/// `<key>_us_last`, `<key>_us_max`): the epochs timed, the sum, the last
/// and the longest.
struct Wait {
    key: &'static str,
    /// What is timed, one of them: `epoch` (checkpoint), `ack` (lockstep).
    unit: &'static str,
    epochs: Counters,
    total: SecondsTotal,
    last: Seconds,
    max: Seconds,
}

impl Wait {
    fn register(m: &mut Metrics, key: &'static str, what: &str) -> Self {
        Self::register_as(m, "ft_checkpoint", key, "epoch", what)
    }

    /// Metrics `<prefix>_<key>_<unit>s_total`, `…_seconds_total`,
    /// `…_last_seconds`, `…_max_seconds` of status keys `<key>_<unit>s`,
    /// `<key>_us_total`, `<key>_us_last`, `<key>_us_max`.
    fn register_as(
        m: &mut Metrics,
        prefix: &str,
        key: &'static str,
        unit: &'static str,
        what: &str,
    ) -> Self {
        let name = format!("{prefix}_{key}");
        Wait {
            key,
            unit,
            epochs: m.counter(&format!("{name}_{unit}s"), &format!("{unit}s timed {what}")),
            total: m.seconds_total(
                &format!("{name}_seconds"),
                &format!("time per {unit} {what}, summed (divided by the {unit}s: the mean)"),
            ),
            last: m.seconds(
                &format!("{name}_last_seconds"),
                &format!("the last {unit}'s time {what}"),
            ),
            max: m.seconds(
                &format!("{name}_max_seconds"),
                &format!("the longest {unit}'s time {what} since the Primary started"),
            ),
        }
    }

    fn add(&self, vm: &str, c: &Value) {
        let k = |s: &str| &c[format!("{}_{s}", self.key)];
        let v = || l(&[("vm", vm)]);
        let secs = |s: &str| k(s).as_u64().map(|us| us as f64 / 1e6);
        count(&self.epochs, v(), k(&format!("{}s", self.unit)));
        if let Some(t) = secs("us_total") {
            self.total.get_or_create(&v()).inc_by(t);
        }
        for (g, s) in [(&self.last, "us_last"), (&self.max, "us_max")] {
            if let Some(t) = secs(s) {
                g.get_or_create(&v()).set(t);
            }
        }
    }
}

/// `output_hold` as a histogram: its buckets (`output_hold_buckets`:
/// `le_ms` and each bucket's `epochs`, one more than the bounds: `+Inf`),
/// sum and count; `None` if any is missing or the lengths disagree.
fn hold_histogram(c: &Value) -> Option<Spread> {
    let b = &c["output_hold_buckets"];
    let nums =
        |v: &Value| -> Option<Vec<u64>> { v.as_array()?.iter().map(Value::as_u64).collect() };
    let (le, epochs) = (nums(&b["le_ms"])?, nums(&b["epochs"])?);
    if epochs.len() != le.len() + 1 {
        return None;
    }
    let bounds = (le.iter().map(|&ms| ms as f64 / 1000.0)).chain([f64::INFINITY]);
    let buckets = bounds.zip(epochs).collect();
    Some(Spread {
        sum: c["output_hold_us_total"].as_u64()? as f64 / 1e6,
        count: c["output_hold_epochs"].as_u64()?,
        buckets,
    })
}

impl Checkpoint {
    fn register(m: &mut Metrics) -> Self {
        Checkpoint {
            epochs: m.counter("ft_checkpoint_epochs", "epochs the checkpoint Primary took"),
            pause: m.seconds_total(
                "ft_checkpoint_pause_seconds",
                "time the guest was paused for its epochs (divided by the epochs: the mean pause)",
            ),
            pause_last: m.seconds("ft_checkpoint_pause_last_seconds", "the last epoch's pause"),
            pause_max: m.seconds(
                "ft_checkpoint_pause_max_seconds",
                "the longest epoch pause since the Primary started",
            ),
            bytes: m.counter(
                "ft_checkpoint_epoch_bytes",
                "bytes of the epochs sent to the Secondary (pages, machine state, writes)",
            ),
            pages: m.counter(
                "ft_checkpoint_epoch_pages",
                "dirty pages the epochs carried",
            ),
            delta_pages: m.counter(
                "ft_checkpoint_epoch_delta_pages",
                "of those, pages shipped as a delta against their last version (the Primary's delta cache)",
            ),
            written: m.counter(
                "ft_checkpoint_disk_bytes_written",
                "bytes of acknowledged epochs written to the shared device",
            ),
            held: m.gauge(
                "ft_checkpoint_frames_held",
                "guest frames waiting for their epoch's acknowledgement",
            ),
            unacked: m.gauge(
                "ft_checkpoint_epochs_unacknowledged",
                "epochs taken and not yet acknowledged by the Secondary",
            ),
            waits: [
                Wait::register(
                    m,
                    "ack_wait",
                    "from close to the Secondary's acknowledgement (epochs it acknowledged)",
                ),
                Wait::register(
                    m,
                    "durable_wait",
                    "from acknowledgement to disk writes durable on the shared device",
                ),
                Wait::register(
                    m,
                    "release_wait",
                    "from writes durable to frames released (the output grant's or the member's hold; epochs holding frames)",
                ),
            ],
            hold: m.histogram(
                "ft_checkpoint_output_hold_seconds",
                "time from an epoch's close to its frames' release, for epochs that held frames (what a client waits for after its reply's epoch closed)",
            ),
            hold_last: m.seconds(
                "ft_checkpoint_output_hold_last_seconds",
                "the last frame-holding epoch's time from close to release",
            ),
            hold_max: m.seconds(
                "ft_checkpoint_output_hold_max_seconds",
                "the longest time from an epoch's close to its frames' release since the Primary started",
            ),
        }
    }

    fn add(&self, vm: &str, c: &Value) {
        let Some(epochs) = c["epochs"].as_u64() else {
            return;
        };
        let v = || l(&[("vm", vm)]);
        self.epochs.get_or_create(&v()).inc_by(epochs);
        let us = |k: &str| c[k].as_u64().map(|us| us as f64 / 1e6);
        if let Some(t) = us("pause_us_total") {
            self.pause.get_or_create(&v()).inc_by(t);
        }
        for (g, k) in [
            (&self.pause_last, "pause_us_last"),
            (&self.pause_max, "pause_us_max"),
        ] {
            if let Some(t) = us(k) {
                g.get_or_create(&v()).set(t);
            }
        }
        count(&self.bytes, v(), &c["epoch_bytes_total"]);
        count(&self.pages, v(), &c["epoch_pages_total"]);
        count(&self.delta_pages, v(), &c["epoch_delta_pages_total"]);
        count(&self.written, v(), &c["bytes_written"]);
        set(&self.held, v(), &c["frames_held"]);
        if let (Some(e), Some(a)) = (c["epoch"].as_u64(), c["acknowledged"].as_u64()) {
            self.unacked
                .get_or_create(&v())
                .set(e.saturating_sub(a) as i64);
        }
        for w in &self.waits {
            w.add(vm, c);
        }
        if let Some(h) = hold_histogram(c) {
            // A VM named twice in one report keeps its first figures.
            let _ = self.hold.get_or_create(&v()).0.set(h);
        }
        for (g, k) in [
            (&self.hold_last, "output_hold_us_last"),
            (&self.hold_max, "output_hold_us_max"),
        ] {
            if let Some(t) = us(k) {
                g.get_or_create(&v()).set(t);
            }
        }
    }
}

/// The per-request timeline's segments (`lockstep.log.timeline`: entries of
/// `segment`, `p50_us`, `p99_us`) as gauges by segment and quantile.
fn timeline(g: &Seconds, vm: &str, tl: &Value) {
    for seg in tl.as_array().into_iter().flatten() {
        let Some(name) = seg["segment"].as_str() else {
            continue;
        };
        for (q, key) in [("0.5", "p50_us"), ("0.99", "p99_us")] {
            if let Some(us) = seg[key].as_u64() {
                let labels = l(&[("vm", vm), ("segment", name), ("quantile", q)]);
                g.get_or_create(&labels).set(us as f64 / 1e6);
            }
        }
    }
}

fn events(m: &mut Metrics, r: &HostReport) {
    let c = m.counter(
        "ft_events",
        "events since the daemon started, by kind (failover, respawn, fencing, membership, config_refused, config_applied, protection)",
    );
    for (d, v) in [
        ("heartbeat", &r.heartbeat),
        ("fencing", &r.fencing),
        ("ftvmm", &r.ftvmm),
    ] {
        for (kind, n) in v["event_counts"].as_object().into_iter().flatten() {
            count(&c, l(&[("daemon", d), ("kind", kind)]), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_s_figures_become_samples_and_absent_ones_stay_absent() {
        let r = HostReport {
            host: "host-a".into(),
            config_generation: 1,
            config_digest: None,
            unix_ms: 0,
            heartbeat: json!({"daemon": "heartbeat", "peers": [
                {"name": "host-b", "alive": true, "last_seen_ms": 250, "received": 40, "suspicions": 2}],
                "event_counts": {"membership": 3, "failover": 0}}),
            fencing: json!({"daemon": "fencing", "device": {"found": true},
                "watchdog": {"state": "fed", "feeds": 12},
                "fencing": {"own_lease": {"renewals": 9, "failures": 1, "last_ok_ms_ago": 100},
                    "leases": [{"host": "host-b", "live": false, "expired": true}],
                    "decisions": [{}, {}], "freeze": {"detections": 0}, "alarms": {"count": 0},
                    "decide": {"runs": 2, "us_total": 250000, "us_last": 50000, "us_max": 200000}}}),
            ftvmm: json!({"error": "cannot reach /run/ftvmm.sock"}),
        };
        let t = openmetrics(&r);
        for want in [
            "ft_heartbeat_peer_up{host=\"host-a\",peer=\"host-b\"} 1",
            "ft_heartbeat_peer_last_seen_seconds{host=\"host-a\",peer=\"host-b\"} 0.25",
            "ft_heartbeat_suspicions_total{host=\"host-a\",peer=\"host-b\"} 2",
            "# TYPE ft_heartbeat_received counter",
            "ft_watchdog_armed{host=\"host-a\"} 1",
            "ft_watchdog_starving{host=\"host-a\"} 0",
            "ft_lease_renewal_failures_total{host=\"host-a\"} 1",
            "ft_lease_expired{host=\"host-a\",lease_host=\"host-b\"} 1",
            "ft_fencing_decisions{host=\"host-a\"} 2",
            "ft_fencing_decide_runs_total{host=\"host-a\"} 2",
            "ft_fencing_decide_seconds_total{host=\"host-a\"} 0.25",
            "ft_fencing_decide_last_seconds{host=\"host-a\"} 0.05",
            "ft_fencing_decide_max_seconds{host=\"host-a\"} 0.2",
            "ft_events_total{host=\"host-a\",daemon=\"heartbeat\",kind=\"membership\"} 3",
            "ft_daemon_up{host=\"host-a\",daemon=\"ftvmm\"} 0",
            "ft_daemon_up{host=\"host-a\",daemon=\"fencing\"} 1",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(t.ends_with("# EOF\n"), "{t}");
        // ftvmm did not answer: no VM sample at all, not zeros.
        assert!(!t.contains("vm=\""), "{t}");
    }

    #[test]
    fn vm_network_reachability_becomes_samples() {
        let r = HostReport {
            host: "host-a".into(),
            config_generation: 1,
            config_digest: None,
            unix_ms: 0,
            heartbeat: json!({"daemon": "heartbeat", "peers": [], "vm_network": {
                "listening": true, "hears": ["host-c"], "quiet_ms": 0,
                "peers": [{"name": "host-b"}, {"name": "host-c"}]}}),
            fencing: json!({}),
            ftvmm: json!({}),
        };
        let t = openmetrics(&r);
        for want in [
            "ft_vm_network_peer_up{host=\"host-a\",peer=\"host-b\"} 0",
            "ft_vm_network_peer_up{host=\"host-a\",peer=\"host-c\"} 1",
            "ft_vm_network_quiet_seconds{host=\"host-a\"} 0",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(
            !t.contains("ft_vm_witness_up"),
            "no witness configured: {t}"
        );
        // With a VM witness: whether this host hears it.
        let mut r = r;
        for heard in [true, false] {
            r.heartbeat["vm_network"]["witness"] =
                json!({"addr": "198.51.100.254", "heard": heard});
            let want = format!(
                "ft_vm_witness_up{{host=\"host-a\",witness=\"198.51.100.254\"}} {}",
                u8::from(heard)
            );
            let t = openmetrics(&r);
            assert!(t.contains(&want), "missing {want:?} in\n{t}");
        }
        // Not listening (yet): no VM-network samples at all.
        r.heartbeat["vm_network"] = json!({"listening": false});
        assert!(!openmetrics(&r).contains("ft_vm_network_"));
        assert!(!openmetrics(&r).contains("ft_vm_witness_"));
    }

    #[test]
    fn a_primary_whose_secondary_cannot_take_over_is_not_protected() {
        let vm = |protection: &str| HostReport {
            host: "host-a".into(),
            config_generation: 1,
            config_digest: None,
            unix_ms: 0,
            heartbeat: json!({}),
            fencing: json!({}),
            ftvmm: json!({"vms": [{"name": "kv", "state": "running", "lockstep": {
                "role": "primary", "generation": 2, "primary": "host-a", "secondary": "host-b",
                "protection": protection}}]}),
        };
        let t = openmetrics(&vm("protected: secondary host-b"));
        assert!(
            t.contains("ft_vm_protected{host=\"host-a\",vm=\"kv\"} 1"),
            "{t}"
        );
        let t = openmetrics(&vm(
            "not protected: secondary host-b cannot renew its storage lease (for 1200 ms); \
             it could not take over",
        ));
        assert!(
            t.contains("ft_vm_protected{host=\"host-a\",vm=\"kv\"} 0"),
            "{t}"
        );
    }

    /// host-a's report with heartbeat and fencing answering, and `ftvmm`.
    fn with_ftvmm(ftvmm: Value) -> HostReport {
        HostReport {
            host: "host-a".into(),
            config_generation: 1,
            config_digest: None,
            unix_ms: 0,
            heartbeat: json!({"daemon": "heartbeat"}),
            fencing: json!({"daemon": "fencing"}),
            ftvmm,
        }
    }

    #[test]
    fn a_checkpoint_primarys_epochs_become_samples() {
        let r = with_ftvmm(json!({"vms": [
                {"name": "web", "state": "running", "checkpoint": {
                    "epoch_ms": 20, "vcpus": 2, "epoch": 812, "acknowledged": 810,
                    "frames_held": 3, "bytes_written": 4096, "epochs": 811,
                    "pause_us_last": 1250, "pause_us_max": 4100, "pause_us_total": 1_500_000,
                    "epoch_bytes_total": 9_000_000, "epoch_pages_total": 40_000,
                    "epoch_delta_pages_total": 38_000}},
                {"name": "sec", "state": "running", "checkpoint": {"epoch_ms": 20, "applied": 9}}
        ]}));
        let t = openmetrics(&r);
        for want in [
            "ft_checkpoint_epochs_total{host=\"host-a\",vm=\"web\"} 811\n",
            "ft_checkpoint_pause_seconds_total{host=\"host-a\",vm=\"web\"} 1.5\n",
            "ft_checkpoint_pause_last_seconds{host=\"host-a\",vm=\"web\"} 0.00125\n",
            "ft_checkpoint_pause_max_seconds{host=\"host-a\",vm=\"web\"} 0.0041\n",
            "ft_checkpoint_epoch_bytes_total{host=\"host-a\",vm=\"web\"} 9000000\n",
            "ft_checkpoint_epoch_pages_total{host=\"host-a\",vm=\"web\"} 40000\n",
            "ft_checkpoint_epoch_delta_pages_total{host=\"host-a\",vm=\"web\"} 38000\n",
            "ft_checkpoint_disk_bytes_written_total{host=\"host-a\",vm=\"web\"} 4096\n",
            "ft_checkpoint_frames_held{host=\"host-a\",vm=\"web\"} 3\n",
            "ft_checkpoint_epochs_unacknowledged{host=\"host-a\",vm=\"web\"} 2\n",
        ] {
            assert!(t.contains(want), "lacks {want:?}:\n{t}");
        }
        // A Secondary reports no epochs of its own: no sample, not a zero.
        assert!(
            !(t.lines()).any(|l| l.starts_with("ft_checkpoint_") && l.contains("vm=\"sec\"")),
            "{t}"
        );
    }

    #[test]
    fn a_checkpoint_primarys_output_waits_become_samples_and_a_histogram() {
        let mut c = json!({"epoch_ms": 20, "epochs": 100, "epoch": 101, "acknowledged": 100,
            "ack_wait_epochs": 100, "ack_wait_us_total": 2_500_000,
            "ack_wait_us_last": 20_000, "ack_wait_us_max": 61_000,
            "durable_wait_epochs": 100, "durable_wait_us_total": 500_000,
            "durable_wait_us_last": 4000, "durable_wait_us_max": 9000,
            "release_wait_epochs": 40, "release_wait_us_total": 40,
            "release_wait_us_last": 1, "release_wait_us_max": 3,
            "output_hold_epochs": 40, "output_hold_us_total": 1_200_000,
            "output_hold_us_last": 25_000, "output_hold_us_max": 70_000,
            "output_hold_buckets": {"le_ms": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                "epochs": [0, 0, 0, 0, 10, 25, 5, 0, 0, 0, 0]}});
        let r = |c: &Value| {
            with_ftvmm(json!({"vms": [{"name": "web", "state": "running",
            "checkpoint": c}]}))
        };
        let t = openmetrics(&r(&c));
        let vm = "{host=\"host-a\",vm=\"web\"}";
        let hold = "ft_checkpoint_output_hold_seconds";
        let bucket = |le: &str, n: u64| {
            format!("{hold}_bucket{{host=\"host-a\",le=\"{le}\",vm=\"web\"}} {n}\n")
        };
        for want in [
            format!("ft_checkpoint_ack_wait_epochs_total{vm} 100\n"),
            format!("ft_checkpoint_ack_wait_seconds_total{vm} 2.5\n"),
            format!("ft_checkpoint_ack_wait_last_seconds{vm} 0.02\n"),
            format!("ft_checkpoint_ack_wait_max_seconds{vm} 0.061\n"),
            format!("ft_checkpoint_durable_wait_seconds_total{vm} 0.5\n"),
            format!("ft_checkpoint_durable_wait_max_seconds{vm} 0.009\n"),
            format!("ft_checkpoint_release_wait_epochs_total{vm} 40\n"),
            format!("ft_checkpoint_release_wait_last_seconds{vm} 0.000001\n"),
            format!("ft_checkpoint_output_hold_last_seconds{vm} 0.025\n"),
            format!("ft_checkpoint_output_hold_max_seconds{vm} 0.07\n"),
            format!("# TYPE {hold} histogram\n"),
            format!("{hold}_sum{vm} 1.2\n"),
            format!("{hold}_count{vm} 40\n"),
            // Cumulative, as Prometheus reads them.
            bucket("0.01", 0),
            bucket("0.02", 10),
            bucket("0.05", 35),
            bucket("0.1", 40),
            bucket("1.0", 40),
            bucket("+Inf", 40),
        ] {
            assert!(t.contains(&want), "lacks {want:?}:\n{t}");
        }
        // Buckets that do not fit their bounds: no histogram, the rest stays.
        c["output_hold_buckets"]["epochs"] = json!([40]);
        let t = openmetrics(&r(&c));
        assert!(!t.contains(&format!("{hold}_")), "{t}");
        assert!(t.contains(&format!("ft_checkpoint_output_hold_max_seconds{vm} 0.07\n")));
        // An ftvmm that reports no waits: none of them, not zeros.
        let t = openmetrics(&r(&json!({"epochs": 3, "epoch": 4})));
        assert!(!t.contains("_wait_"), "{t}");
        assert!(!t.contains("output_hold"), "{t}");
    }

    #[test]
    fn the_request_timeline_and_message_counts_become_samples() {
        let r = with_ftvmm(
            json!({"daemon": "ftvmm", "vms": [{"name": "kv", "state": "running",
                "lockstep": {"generation": 3, "primary": "host-a", "log": {
                    "stats": {"records": 10, "batches": 4, "acks": 5,
                        "ack_round_trip_acks": 5, "ack_round_trip_us_total": 7_500,
                        "ack_round_trip_us_last": 1_200, "ack_round_trip_us_max": 3_000},
                    "timeline": [
                        {"segment": "frame in: record sent -> acked", "count": 7, "p50_us": 1500, "p99_us": 4000},
                        {"segment": "frame out: produced -> released (held)", "count": 7, "p50_us": 250}]}}}]}),
        );
        let t = openmetrics(&r);
        for want in [
            "ft_log_batches_total{host=\"host-a\",vm=\"kv\"} 4",
            "ft_log_acks_total{host=\"host-a\",vm=\"kv\"} 5",
            "ft_log_ack_round_trip_acks_total{host=\"host-a\",vm=\"kv\"} 5",
            "ft_log_ack_round_trip_seconds_total{host=\"host-a\",vm=\"kv\"} 0.0075",
            "ft_log_ack_round_trip_last_seconds{host=\"host-a\",vm=\"kv\"} 0.0012",
            "ft_log_ack_round_trip_max_seconds{host=\"host-a\",vm=\"kv\"} 0.003",
            "ft_request_segment_seconds{host=\"host-a\",vm=\"kv\",segment=\"frame in: record sent -> acked\",quantile=\"0.5\"} 0.0015",
            "ft_request_segment_seconds{host=\"host-a\",vm=\"kv\",segment=\"frame in: record sent -> acked\",quantile=\"0.99\"} 0.004",
            "ft_request_segment_seconds{host=\"host-a\",vm=\"kv\",segment=\"frame out: produced -> released (held)\",quantile=\"0.5\"} 0.00025",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // A figure the daemon did not report is left out, not sent as zero.
        assert!(
            !t.contains("segment=\"frame out: produced -> released (held)\",quantile=\"0.99\""),
            "{t}"
        );
    }
}
