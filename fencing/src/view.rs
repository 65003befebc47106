//! What the fencing agent knows at startup: its slot, the fencing region and
//! the shared device it found.

use config_schema::runtime::RuntimeConfig;
use config_schema::{DeviceLocator, Region};
use serde::Serialize;

use crate::device::{LocateError, SharedDevice};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    pub host: String,
    /// This host's slot in the fencing area (its host id, 1-based).
    pub slot: u32,
    /// Number of slots (hosts in the config).
    pub slots: usize,
    /// The config's locator, without its CHAP secret: it is shown in status.
    pub locator: DeviceLocator,
    pub fencing_region: Region,
    /// Size the config's layout assumes, bytes.
    pub configured_size_bytes: u64,
    pub device: Result<SharedDevice, String>,
}

impl View {
    /// `None` if the runtime config does not name this host.
    pub fn new(rt: &RuntimeConfig, device: Result<SharedDevice, LocateError>) -> Option<Self> {
        let me = rt.config.hosts.iter().find(|h| h.name == rt.host_name)?;
        let st = &rt.config.storage;
        Some(View {
            host: me.name.clone(),
            slot: me.id,
            slots: rt.config.hosts.len(),
            locator: st.device.redacted(),
            fencing_region: st.fencing,
            configured_size_bytes: st.size_mib.saturating_mul(1 << 20),
            device: device.map_err(|e| e.to_string()),
        })
    }

    /// A problem with the device that the operator should see, if any.
    pub fn device_problem(&self) -> Option<String> {
        match &self.device {
            Err(e) => Some(e.clone()),
            Ok(SharedDevice {
                path,
                size_bytes: Some(have),
            }) if *have < self.configured_size_bytes => Some(format!(
                "{} has {have} bytes, the config's layout needs {}",
                path.display(),
                self.configured_size_bytes
            )),
            Ok(_) => None,
        }
    }

    /// The JSON object answered to `Status`.
    pub fn status(&self) -> serde_json::Value {
        let (found, path, size) = match &self.device {
            Ok(d) => (true, Some(d.path.display().to_string()), d.size_bytes),
            Err(_) => (false, None, None),
        };
        serde_json::json!({
            "daemon": "fencing",
            "host": self.host,
            "slot": self.slot,
            "slots": self.slots,
            "fencing_region": self.fencing_region,
            "device": {
                "locator": self.locator,
                "found": found,
                "path": path,
                "size_bytes": size,
                "configured_size_bytes": self.configured_size_bytes,
                "problem": self.device_problem(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn runtime(host: &str) -> RuntimeConfig {
        RuntimeConfig {
            config: config_schema::parse(include_str!("../../examples/cluster.toml"))
                .expect("example config is valid")
                .config,
            host_name: host.into(),
            host_private_key: "00".repeat(32),
        }
    }

    fn dev(size: u64) -> Result<SharedDevice, LocateError> {
        Ok(SharedDevice {
            path: PathBuf::from("/dev/vdb"),
            size_bytes: Some(size),
        })
    }

    #[test]
    fn slot_is_the_host_id_and_status_reports_the_device() {
        let v = View::new(&runtime("host-c"), dev(256 << 20)).unwrap();
        assert_eq!((v.slot, v.slots), (3, 3));
        let s = v.status();
        assert_eq!(s["daemon"], "fencing");
        assert_eq!(s["device"]["found"], true);
        assert_eq!(s["device"]["path"], "/dev/vdb");
        assert_eq!(s["device"]["locator"]["serial"], "FTSHARED");
        assert_eq!(s["fencing_region"]["size_mib"], 16);
        assert!(s["device"]["problem"].is_null());
    }

    #[test]
    fn a_small_or_missing_device_is_a_problem() {
        let v = View::new(&runtime("host-a"), dev(1 << 20)).unwrap();
        assert!(v.device_problem().unwrap().contains("needs 268435456"));
        let missing = Err(LocateError::NoPath("/dev/x".into()));
        let v = View::new(&runtime("host-a"), missing).unwrap();
        assert_eq!(v.status()["device"]["found"], false);
        assert_eq!(v.device_problem().as_deref(), Some("/dev/x does not exist"));
    }

    #[test]
    fn status_does_not_carry_the_chap_secret() {
        let mut rt = runtime("host-a");
        rt.config.storage.device = DeviceLocator::Iscsi(config_schema::IscsiLun {
            portal: "10.0.2.100:3260".into(),
            target: "iqn.2026-01.test.ftappliance:shared".into(),
            lun: 1,
            tpgt: 1,
            initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
            chap: Some(config_schema::Chap {
                user: "ft".into(),
                secret: "twelve+bytes".into(),
            }),
        });
        let v = View::new(&rt, dev(256 << 20)).unwrap();
        let s = v.status();
        let locator = &s["device"]["locator"]["iscsi"];
        assert_eq!(locator["lun"], 1);
        assert_eq!(locator["chap"]["user"], "ft");
        assert_eq!(locator["chap"]["secret"], "<hidden, 12 bytes>");
        assert!(!s.to_string().contains("twelve+bytes"), "{s}");
        assert!(!format!("{v:?}").contains("twelve+bytes"));
    }
}
