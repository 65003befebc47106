//! What init hands to the daemons after it verified the config disk.
//!
//! init writes one JSON file, `/run/ft/verified.json` (mode 0600, on tmpfs), and
//! starts each daemon with `--config <that path>`. Daemons run what init
//! verified and never re-read it; the one exception touching the disk is
//! heartbeat's status service, which persists a config applied over the
//! network (`ftctl apply`, `crate::persist`) for init to verify at the next
//! boot, with the same trust root and anti-rollback checks.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterConfig, Host};

/// Default location of the verified runtime config.
pub const RUNTIME_CONFIG_PATH: &str = "/run/ft/verified.json";

/// The verified cluster config plus who this host is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    pub config: ClusterConfig,
    /// This host's name (a `hosts[].name`).
    pub host_name: String,
    /// This host's X25519 identity private key, hex.
    pub host_private_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a runtime config: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: host {host:?} is not in the config")]
    UnknownHost { path: String, host: String },
}

impl RuntimeConfig {
    /// Reads and checks a runtime config written by init.
    pub fn load(path: &Path) -> Result<Self, RuntimeConfigError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| RuntimeConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let rc: RuntimeConfig =
            serde_json::from_slice(&bytes).map_err(|source| RuntimeConfigError::Parse {
                path: p.clone(),
                source,
            })?;
        if rc.config.hosts.iter().all(|h| h.name != rc.host_name) {
            return Err(RuntimeConfigError::UnknownHost {
                path: p,
                host: rc.host_name,
            });
        }
        Ok(rc)
    }

    /// This host's entry in the cluster config.
    pub fn this_host(&self) -> &Host {
        self.config
            .hosts
            .iter()
            .find(|h| h.name == self.host_name)
            .expect("checked in load(): host_name names a host")
    }
}
