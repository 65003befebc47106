//! What a query answers: each host's report (the `Status` objects of its
//! three daemons, as they answer on their sockets, and its clock), gathered
//! into a cluster report by the queried host. A host that did not answer is
//! an entry with the reason, never an error of the whole query.

use serde::{Deserialize, Serialize};

use crate::config_id::ConfigId;
use crate::model::ClusterConfig;

/// One host's own view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// The config generation this host runs.
    pub config_generation: u64,
    /// The SHA-256 of the config this host runs ([`crate::config_id`]), in
    /// hex. Absent (`None`) in the report of a host whose status service
    /// predates it; shown as `unknown` ([`HostReport::config_id`]).
    #[serde(default)]
    pub config_digest: Option<String>,
    /// This host's wall clock when it made the report (event times are on
    /// the same clock).
    pub unix_ms: u64,
    /// Each daemon's `Status`, or `{"error": "<why not>"}`.
    pub heartbeat: serde_json::Value,
    pub fencing: serde_json::Value,
    pub ftvmm: serde_json::Value,
}

/// One host in a cluster report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostEntry {
    pub host: String,
    /// Where the queried host asked it (`ip:port`).
    pub addr: String,
    pub report: Option<HostReport>,
    /// Why there is no report.
    pub unreachable: Option<String>,
}

/// A VM as the config describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub name: String,
    pub replication: String,
    pub power: String,
}

impl VmConfig {
    pub fn all(c: &ClusterConfig) -> Vec<VmConfig> {
        c.vms
            .iter()
            .map(|v| VmConfig {
                name: v.name.clone(),
                replication: v.replication.name().into(),
                power: v.power.name().into(),
            })
            .collect()
    }
}

/// The cluster as the queried host gathered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub cluster: String,
    /// The config the queried host runs: generation and digest (as
    /// [`HostReport`]'s).
    pub config_generation: u64,
    #[serde(default)]
    pub config_digest: Option<String>,
    /// The host that gathered the report.
    pub queried: String,
    pub vms: Vec<VmConfig>,
    /// Every host of the config, in config order.
    pub hosts: Vec<HostEntry>,
}

/// A config digest as reports carry it: the full digest in hex, `None`
/// when unknown ([`crate::config_id::UNKNOWN_DIGEST`]).
pub fn digest_hex(id: &ConfigId) -> Option<String> {
    id.has_digest().then(|| hex::encode(id.digest))
}

/// The config of a report's generation and hex digest; a missing or
/// malformed digest reads as unknown.
pub(crate) fn id_of(generation: u64, digest: Option<&str>) -> ConfigId {
    digest
        .and_then(|d| hex::decode(d).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .map_or(ConfigId::generation_only(generation), |digest| ConfigId {
            generation,
            digest,
        })
}

impl HostReport {
    /// The config this host runs (digest unknown from an older host).
    pub fn config_id(&self) -> ConfigId {
        id_of(self.config_generation, self.config_digest.as_deref())
    }
}

impl ClusterReport {
    /// The config the queried host runs (digest unknown from an older host).
    pub fn config_id(&self) -> ConfigId {
        id_of(self.config_generation, self.config_digest.as_deref())
    }

    /// The report of `host`, if it answered.
    pub fn report(&self, host: &str) -> Option<&HostReport> {
        self.hosts
            .iter()
            .find(|h| h.host == host)
            .and_then(|h| h.report.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_report_from_a_host_without_digests_reads_as_unknown() {
        // A host report as a status service before digests sent it.
        let old = json!({
            "host": "host-a", "config_generation": 7, "unix_ms": 1,
            "heartbeat": {}, "fencing": {}, "ftvmm": {},
        });
        let r: HostReport = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.config_digest, None);
        assert_eq!(r.config_id(), ConfigId::generation_only(7));
        assert_eq!(r.config_id().to_string(), "generation 7 (digest unknown)");
        let c: ClusterReport = serde_json::from_value(json!({
            "cluster": "demo", "config_generation": 7, "queried": "host-a",
            "vms": [], "hosts": [{"host": "host-a", "addr": "192.0.2.1:7401",
                                  "report": old, "unreachable": null}],
        }))
        .unwrap();
        assert_eq!(c.config_id(), ConfigId::generation_only(7));
    }

    #[test]
    fn the_digest_goes_as_hex_and_comes_back() {
        let id = ConfigId::of_canonical(7, b"config");
        let r = HostReport {
            host: "host-a".into(),
            config_generation: 7,
            config_digest: digest_hex(&id),
            unix_ms: 1,
            heartbeat: json!({}),
            fencing: json!({}),
            ftvmm: json!({}),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["config_digest"], hex::encode(id.digest));
        let back: HostReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.config_id(), id);
        assert_eq!(
            back.config_id().to_string(),
            format!("generation 7 (digest {}…)", &hex::encode(id.digest)[..8])
        );
        // An unknown digest is not sent as zeros.
        assert_eq!(digest_hex(&ConfigId::generation_only(7)), None);
    }
}
