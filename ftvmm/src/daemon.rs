//! `ftvmm daemon`: the long-running service init starts on an appliance host.
//!
//! It loads the verified runtime config, checks `/dev/kvm`, and serves the
//! control protocol of `config_schema::ctl` on a Unix socket: `Status`, and
//! `StartVm`/`StopVm` for the VMs the config names (see [`crate::manager`]).

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use config_schema::ctl::{self, Request, Response};
use config_schema::runtime::RuntimeConfig;

use crate::manager::VmManager;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config_schema::runtime::RuntimeConfigError),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// What `/dev/kvm` looked like at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmAvailability {
    Ok { api_version: i32 },
    Unavailable { error: String },
}

impl KvmAvailability {
    /// Opens `/dev/kvm` and asks its API version.
    pub fn probe() -> Self {
        match kvm_ioctls::Kvm::new() {
            Ok(kvm) => KvmAvailability::Ok {
                api_version: kvm.get_api_version(),
            },
            Err(e) => KvmAvailability::Unavailable {
                error: e.to_string(),
            },
        }
    }

    /// The exact console line the appliance tests look for.
    pub fn console_line(&self) -> String {
        match self {
            KvmAvailability::Ok { api_version } => {
                format!("ftvmm: /dev/kvm ok (KVM API {api_version})")
            }
            KvmAvailability::Unavailable { error } => {
                format!("ftvmm: /dev/kvm unavailable: {error}")
            }
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, KvmAvailability::Ok { .. })
    }
}

/// Shared daemon state behind the socket.
pub struct Daemon {
    config: RuntimeConfig,
    kvm: KvmAvailability,
    manager: Mutex<VmManager>,
}

impl Daemon {
    pub fn new(config: RuntimeConfig, kvm: KvmAvailability) -> Self {
        let manager = Mutex::new(VmManager::new(config.clone()));
        Daemon {
            config,
            kvm,
            manager,
        }
    }

    /// The JSON object answered to `Status`.
    pub fn status(&self) -> serde_json::Value {
        let mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        let (kvm_ok, kvm_api, kvm_error) = match &self.kvm {
            KvmAvailability::Ok { api_version } => (true, Some(*api_version), None),
            KvmAvailability::Unavailable { error } => (false, None, Some(error.clone())),
        };
        serde_json::json!({
            "daemon": "ftvmm",
            "host": self.config.host_name,
            "cluster": self.config.config.cluster.name,
            "generation": self.config.config.cluster.generation,
            // No replication yet: a running VM is a standalone Primary.
            "role": if mgr.any_running() { "primary" } else { "idle" },
            "kvm": { "ok": kvm_ok, "api_version": kvm_api, "error": kvm_error },
            "vms": mgr.status(),
        })
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status {
                status: self.status(),
            },
            Request::StartVm { name } => {
                if !self.kvm.is_ok() {
                    return Response::Error {
                        message: format!("cannot start {name}: {}", self.kvm.console_line()),
                    };
                }
                let mut mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
                match mgr.start(&name) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::StopVm { name } => {
                let mut mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
                match mgr.stop(&name) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
        }
    }

    fn serve_one(&self, stream: UnixStream) {
        let mut reader = BufReader::new(&stream);
        let resp = match ctl::read_message::<Request, _>(&mut reader, "client") {
            Ok(req) => {
                tracing::debug!(?req, "control request");
                self.handle(req)
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut w = &stream;
        if let Err(e) = ctl::write_message(&mut w, &resp) {
            tracing::warn!("control reply failed: {e}");
        }
    }
}

/// Runs the daemon until the process is killed.
pub fn run(config_path: &Path, socket: &Path) -> Result<(), DaemonError> {
    let config = RuntimeConfig::load(config_path)?;
    let kvm = KvmAvailability::probe();
    // The exact line, on its own, is what the appliance tests and operators read.
    println!("{}", kvm.console_line());
    tracing::info!(host = %config.host_name, vms = config.config.vms.len(), "ftvmm daemon starting");
    let listener = bind(socket)?;
    println!("ftvmm: listening on {}", socket.display());
    let daemon = Arc::new(Daemon::new(config, kvm));
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let d = Arc::clone(&daemon);
                std::thread::spawn(move || d.serve_one(s));
            }
            Err(e) => tracing::warn!("accept failed: {e}"),
        }
    }
    Ok(())
}

fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Listen {
        path: socket.display().to_string(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A stale socket from a previous (crashed) instance would make bind fail.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(socket).map_err(err)
}

/// Default socket path.
pub fn default_socket() -> PathBuf {
    PathBuf::from(ctl::FTVMM_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RuntimeConfig {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/cluster.toml"
        ))
        .unwrap();
        let config: config_schema::ClusterConfig = toml::from_str(&text).unwrap();
        RuntimeConfig {
            host_name: config.hosts[0].name.clone(),
            config,
            host_private_key: "00".repeat(32),
        }
    }

    #[test]
    fn console_lines_are_exact() {
        assert_eq!(
            KvmAvailability::Ok { api_version: 12 }.console_line(),
            "ftvmm: /dev/kvm ok (KVM API 12)"
        );
        assert_eq!(
            KvmAvailability::Unavailable {
                error: "No such file or directory (os error 2)".into()
            }
            .console_line(),
            "ftvmm: /dev/kvm unavailable: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn status_lists_config_vms_and_kvm() {
        let d = Daemon::new(config(), KvmAvailability::Ok { api_version: 12 });
        let Response::Status { status } = d.handle(Request::Status) else {
            panic!("status answers Status");
        };
        assert_eq!(status["kvm"]["ok"], true);
        assert_eq!(status["role"], "idle");
        assert_eq!(status["vms"][0]["state"], "stopped");
    }

    #[test]
    fn start_without_kvm_or_of_unknown_vm_is_refused() {
        let d = Daemon::new(
            config(),
            KvmAvailability::Unavailable {
                error: "gone".into(),
            },
        );
        let Response::Error { message } = d.handle(Request::StartVm { name: "kv".into() }) else {
            panic!("refused");
        };
        assert!(message.contains("unavailable"), "{message}");
        let d = Daemon::new(config(), KvmAvailability::Ok { api_version: 12 });
        let Response::Error { message } = d.handle(Request::StartVm {
            name: "nope".into(),
        }) else {
            panic!("refused");
        };
        assert!(message.contains("no VM named"), "{message}");
    }

    #[test]
    fn socket_serves_one_request_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ftvmm.sock");
        let listener = bind(&sock).unwrap();
        let d = Arc::new(Daemon::new(
            config(),
            KvmAvailability::Ok { api_version: 12 },
        ));
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            d.serve_one(s);
        });
        let resp = ctl::query(&sock, &Request::Status).unwrap();
        assert!(matches!(resp, Response::Status { .. }));
        server.join().unwrap();
    }
}
