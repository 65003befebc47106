//! The Primary's per-request timeline as `ftctl metrics` reports it: the
//! `ft_request_segment_seconds{segment,quantile}` gauges, queried with the
//! development operator key from a client on the FT network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use config_schema::remote::{auth::OperatorKey, client, OperatorRequest, Reply};
use qemu_tests::NetnsTap;

/// One segment's median and p99 in microseconds (either may be unreported).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SegmentRow {
    pub segment: String,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// What the bench takes from the metrics text.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Metrics {
    /// In the order the host reported them.
    pub segments: Vec<SegmentRow>,
    /// Other counters of the VM's log (`ft_log_*_total`), by name.
    pub counters: BTreeMap<String, f64>,
}

/// `ftctl metrics` of the host at `addr`, from `tap`'s namespace.
pub fn query(tap: &NetnsTap, addr: SocketAddr, key: &Path) -> Result<String> {
    let der = std::fs::read(key).with_context(|| format!("read {}", key.display()))?;
    let key =
        OperatorKey::from_pkcs8(&der).with_context(|| format!("operator key {}", key.display()))?;
    // The replies are sealed with the hosts' keys of the example config,
    // which both boots of the bench use (docs/operators-guide.md §9).
    let example = qemu_tests::paths::workspace_root().join("examples/cluster.toml");
    let text =
        std::fs::read_to_string(&example).with_context(|| format!("read {}", example.display()))?;
    let config = config_schema::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", example.display()))?
        .config;
    let hosts = client::HostKeys::of(&config);
    let reply = tap
        .run_in(|| {
            client::query(
                addr,
                &key,
                &hosts,
                OperatorRequest::Metrics,
                Duration::from_secs(15),
            )
        })
        .context("enter the operator's namespace")?
        .with_context(|| format!("metrics query to {addr}"))?;
    match reply {
        Reply::Metrics { text } => Ok(text),
        Reply::Refused { reason } => bail!("metrics refused: {reason}"),
        other => bail!("{addr} answered {other:?} to a metrics query"),
    }
}

/// The timeline gauges and log counters of `vm` in an OpenMetrics text.
pub fn parse(text: &str, vm: &str) -> Metrics {
    let mut m = Metrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        if labels.get("vm").map(String::as_str) != Some(vm) {
            continue;
        }
        if name == "ft_request_segment_seconds" {
            let (Some(seg), Some(q)) = (labels.get("segment"), labels.get("quantile")) else {
                continue;
            };
            let i = match m.segments.iter().position(|r| &r.segment == seg) {
                Some(i) => i,
                None => {
                    m.segments.push(SegmentRow {
                        segment: seg.clone(),
                        ..SegmentRow::default()
                    });
                    m.segments.len() - 1
                }
            };
            let us = Some((value * 1e6).round() as u64);
            match q.as_str() {
                "0.5" => m.segments[i].p50_us = us,
                "0.99" => m.segments[i].p99_us = us,
                _ => {}
            }
        } else if name.starts_with("ft_log_") && name.ends_with("_total") {
            m.counters.insert(name.to_string(), value);
        }
    }
    m
}

/// `a="x",b="y"` (no escaped quotes in our label values).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.trim().to_string(), v.trim_end_matches('"').to_string()))
        .collect()
}

impl Metrics {
    /// The median of a segment whose name is `name`.
    pub fn p50(&self, name: &str) -> Option<u64> {
        self.segments
            .iter()
            .find(|r| r.segment == name)
            .and_then(|r| r.p50_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_counters_of_one_vm() {
        let text = "# TYPE ft_request_segment_seconds gauge\n\
ft_request_segment_seconds{host=\"host-a\",vm=\"kv\",segment=\"frame in: record sent -> acked\",quantile=\"0.5\"} 0.0015\n\
ft_request_segment_seconds{host=\"host-a\",vm=\"kv\",segment=\"frame in: record sent -> acked\",quantile=\"0.99\"} 0.004\n\
ft_request_segment_seconds{host=\"host-a\",vm=\"kv\",segment=\"frame out: produced -> released (held)\",quantile=\"0.5\"} 0.00025\n\
ft_request_segment_seconds{host=\"host-a\",vm=\"other\",segment=\"frame out: sent -> acked\",quantile=\"0.5\"} 0.9\n\
ft_log_batches_total{host=\"host-a\",vm=\"kv\"} 120\n\
ft_vm_running{host=\"host-a\",vm=\"kv\"} 1\n\
# EOF\n";
        let m = parse(text, "kv");
        assert_eq!(m.segments.len(), 2);
        assert_eq!(m.segments[0].segment, "frame in: record sent -> acked");
        assert_eq!(
            (m.segments[0].p50_us, m.segments[0].p99_us),
            (Some(1500), Some(4000))
        );
        assert_eq!(
            (m.segments[1].p50_us, m.segments[1].p99_us),
            (Some(250), None)
        );
        assert_eq!(
            m.p50("frame out: sent -> acked"),
            None,
            "another VM's segment"
        );
        assert_eq!(m.counters.get("ft_log_batches_total"), Some(&120.0));
        assert!(!m.counters.contains_key("ft_vm_running"));
    }
}
