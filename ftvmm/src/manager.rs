//! The VMs a daemon runs: which config VMs exist, which are running, and
//! starting/stopping them.

use config_schema::runtime::RuntimeConfig;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no VM named {0:?} in the config")]
    UnknownVm(String),
    #[error("VM {0:?} is already running")]
    AlreadyRunning(String),
    #[error("VM {0:?} is not running")]
    NotRunning(String),
    #[error("cannot start VM {name:?}: {reason}")]
    Start { name: String, reason: String },
}

/// The daemon's VMs.
pub struct VmManager {
    config: RuntimeConfig,
}

impl VmManager {
    pub fn new(config: RuntimeConfig) -> Self {
        VmManager { config }
    }

    pub fn any_running(&self) -> bool {
        false
    }

    /// Per-VM status objects.
    pub fn status(&self) -> Vec<serde_json::Value> {
        self.config
            .config
            .vms
            .iter()
            .map(|vm| serde_json::json!({ "name": vm.name, "state": "stopped" }))
            .collect()
    }

    pub fn start(&mut self, name: &str) -> Result<(), ManagerError> {
        let vm = self.find(name)?;
        Err(ManagerError::Start {
            name: vm.name.clone(),
            reason: "the VM runtime is not wired into the daemon yet".into(),
        })
    }

    pub fn stop(&mut self, name: &str) -> Result<(), ManagerError> {
        self.find(name)?;
        Err(ManagerError::NotRunning(name.to_string()))
    }

    fn find(&self, name: &str) -> Result<&config_schema::Vm, ManagerError> {
        self.config
            .config
            .vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ManagerError::UnknownVm(name.to_string()))
    }
}
