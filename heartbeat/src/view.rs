//! This host's heartbeat view of the cluster, derived from the runtime config.

use config_schema::runtime::RuntimeConfig;
use serde::Serialize;

/// One peer as heartbeat sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub id: u32,
    pub name: String,
    /// `a.b.c.d/prefix` on the FT network.
    pub ft_addr: String,
    /// Liveness; always `"unknown"` until heartbeat packets exist.
    pub state: &'static str,
}

/// What the daemon knows at startup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    pub host: String,
    pub host_id: u32,
    pub ft_addr: String,
    pub peers: Vec<Peer>,
    pub interval_ms: u64,
    pub failure_timeout_ms: u64,
}

impl View {
    /// Builds the view; `None` if the runtime config does not name this host
    /// (`RuntimeConfig::load` already refuses that).
    pub fn new(rt: &RuntimeConfig) -> Option<Self> {
        let me = rt.config.hosts.iter().find(|h| h.name == rt.host_name)?;
        Some(View {
            host: me.name.clone(),
            host_id: me.id,
            ft_addr: me.ft.addr.clone(),
            peers: rt
                .config
                .hosts
                .iter()
                .filter(|h| h.name != me.name)
                .map(|h| Peer {
                    id: h.id,
                    name: h.name.clone(),
                    ft_addr: h.ft.addr.clone(),
                    state: "unknown",
                })
                .collect(),
            interval_ms: rt.config.timing.heartbeat_interval_ms,
            failure_timeout_ms: rt.config.timing.failure_timeout_ms,
        })
    }

    /// The JSON object answered to `Status`.
    pub fn status(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("daemon".into(), "heartbeat".into());
            m.insert("packets".into(), "not implemented yet".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn runtime(host: &str) -> RuntimeConfig {
        let cfg = toml_config();
        RuntimeConfig {
            config: cfg,
            host_name: host.into(),
            host_private_key: "00".repeat(32),
        }
    }

    fn toml_config() -> config_schema::ClusterConfig {
        config_schema::parse(include_str!("../../examples/cluster.toml"))
            .expect("example config is valid")
            .config
    }

    #[test]
    fn peers_are_the_other_hosts_with_their_ft_addresses() {
        let v = View::new(&runtime("host-b")).unwrap();
        assert_eq!((v.host_id, v.ft_addr.as_str()), (2, "192.0.2.2/24"));
        let peers: Vec<(&str, &str)> = v
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.ft_addr.as_str()))
            .collect();
        assert_eq!(
            peers,
            [("host-a", "192.0.2.1/24"), ("host-c", "192.0.2.3/24")]
        );
        assert_eq!((v.interval_ms, v.failure_timeout_ms), (100, 1000));
    }

    #[test]
    fn status_names_the_daemon_host_and_peers() {
        let s = View::new(&runtime("host-a")).unwrap().status();
        assert_eq!(s["daemon"], "heartbeat");
        assert_eq!(s["host"], "host-a");
        assert_eq!(s["peers"][0]["name"], "host-b");
        assert_eq!(s["peers"][0]["state"], "unknown");
    }

    #[test]
    fn unknown_host_has_no_view() {
        assert!(View::new(&runtime("nobody")).is_none());
    }
}
