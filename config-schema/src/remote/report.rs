//! What a query answers: each host's report (the `Status` objects of its
//! three daemons, as they answer on their sockets, and its clock), gathered
//! into a cluster report by the queried host. A host that did not answer is
//! an entry with the reason, never an error of the whole query.

use serde::{Deserialize, Serialize};

use crate::model::ClusterConfig;

/// One host's own view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// The config generation this host runs.
    pub config_generation: u64,
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
    pub config_generation: u64,
    /// The host that gathered the report.
    pub queried: String,
    pub vms: Vec<VmConfig>,
    /// Every host of the config, in config order.
    pub hosts: Vec<HostEntry>,
}

impl ClusterReport {
    /// The report of `host`, if it answered.
    pub fn report(&self, host: &str) -> Option<&HostReport> {
        self.hosts
            .iter()
            .find(|h| h.host == host)
            .and_then(|h| h.report.as_ref())
    }
}
