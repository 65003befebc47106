//! `ftvmm daemon`: the long-running service init starts on an appliance host.
//!
//! It loads the verified runtime config, checks `/dev/kvm`, and serves the
//! control protocol of `config_schema::ctl` on a Unix socket through
//! `config_schema::ctl_server`, which checks every peer (`Status` from any root
//! process, the output hold only from fencing; `StartVm`/`StopVm` for the VMs
//! the config names are ftvmm's own, see [`crate::manager`], and no process may
//! send them). At startup it starts every config VM whose Primary is this host
//! ([`crate::manager::placement`]).
//!
//! Test hook: when the signed config enables the `vmctl` test hook
//! (`[test] hooks = ["vmctl"]`, see `config_schema::hooks`), the daemon also
//! reads commands from the serial console (the appliance has no shell and
//! nothing else reads console input), so a QEMU test can restart a VM or save
//! and restore it; see [`ConsoleCommand`]. Without it the console is not read;
//! the kernel command line enables nothing (anyone at the console can edit it).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use config_schema::ctl::{self, Request, Response};
use config_schema::ctl_server::{self, Policy};
use config_schema::hooks::TestHook;
use config_schema::peer::Programs;
use config_schema::runtime::RuntimeConfig;

use crate::lockstep::grant::HostGrant;
use crate::lockstep::placement::{self as member, Role};
use crate::manager::{placement, Placement, VmManager};
use crate::members::Members;

/// The test hook of the signed config that enables the console commands.
pub const TEST_HOOK: TestHook = TestHook::Vmctl;
/// Where the snapshots of the test hook's save → restore go (tmpfs).
pub const TEST_SNAPSHOT_DIR: &str = "/run/ftvmm";
/// Console input the test hook reads.
const CONSOLE_TTY: &str = "/dev/ttyS0";

/// A command of the console test hook, one line on the serial console:
/// `ftvmm-test restart <vm>` or `ftvmm-test snapshot-restore <vm>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// Stop the VM and boot it again from its image and disk.
    Restart(String),
    /// Save the VM, tear it down, and restore it from the save (same process).
    SnapshotRestore(String),
    /// Lockstep: both sides print a memory digest `delta` exits from now
    /// (`ftvmm: vm <vm>: memory digest n=<n> sha256=<hex> role=<role>`).
    Digest(String, u64),
}

impl ConsoleCommand {
    /// Parses one console line; anything not starting with `ftvmm-test ` is `None`.
    pub fn parse(line: &str) -> Option<Result<ConsoleCommand, String>> {
        let rest = line.trim().strip_prefix("ftvmm-test ")?;
        let words: Vec<&str> = rest.split_whitespace().collect();
        Some(match words.as_slice() {
            ["restart", vm] => Ok(ConsoleCommand::Restart((*vm).to_string())),
            ["snapshot-restore", vm] => Ok(ConsoleCommand::SnapshotRestore((*vm).to_string())),
            ["digest", vm, delta] => match delta.parse::<u64>() {
                Ok(d) if d > 0 => Ok(ConsoleCommand::Digest((*vm).to_string(), d)),
                _ => Err(format!("bad digest distance {delta:?}")),
            },
            _ => Err(format!("unknown test command {rest:?}")),
        })
    }
}

/// True if the signed config enables the console test hook.
pub fn test_hook_enabled(config: &RuntimeConfig) -> bool {
    config.config.test_hooks().contains(&TEST_HOOK)
}

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
    /// The booted config, plus the VMs added live since (`crate::power`);
    /// each VM's `power` is the manager's business (`VmManager::power`),
    /// not this copy's.
    config: std::sync::RwLock<Arc<RuntimeConfig>>,
    host_name: String,
    kvm: KvmAvailability,
    manager: Mutex<VmManager>,
    /// Fencing's requests are served from here, never under `manager`.
    members: Arc<Members>,
    /// Live config changes, taken one at a time in arrival order by the
    /// power worker ([`crate::power::worker`]); `None`: at once (tests).
    power_tx: Mutex<Option<crate::power::Queue>>,
}

impl Daemon {
    /// A daemon whose VMs' output needs fencing's grant (none yet: held).
    pub fn new(config: RuntimeConfig, kvm: KvmAvailability) -> Self {
        Self::with_grant(config, kvm, HostGrant::none())
    }

    pub fn with_grant(config: RuntimeConfig, kvm: KvmAvailability, grant: Arc<HostGrant>) -> Self {
        let members = Members::new(grant);
        let manager = Mutex::new(VmManager::new(config.clone(), Arc::clone(&members)));
        Daemon {
            host_name: config.host_name.clone(),
            config: std::sync::RwLock::new(Arc::new(config)),
            kvm,
            manager,
            members,
            power_tx: Mutex::new(None),
        }
    }

    /// Sets where `ConfigApplied` goes (the power worker).
    pub(crate) fn set_power_queue(&self, tx: crate::power::Queue) {
        *self.power_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// The JSON object answered to `Status`.
    pub fn status(&self) -> serde_json::Value {
        let mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        let (kvm_ok, kvm_api, kvm_error) = match &self.kvm {
            KvmAvailability::Ok { api_version } => (true, Some(*api_version), None),
            KvmAvailability::Unavailable { error } => (false, None, Some(error.clone())),
        };
        let rc = self.running_config();
        let mut s = serde_json::json!({
            "daemon": "ftvmm",
            "host": self.host_name,
            "cluster": rc.config.cluster.name,
            "generation": rc.config.cluster.generation,
            "applied_generation": mgr.applied_generation(),
            "timing": self.members.timing().status(&rc.config.timing),
            "role": if mgr.any_running() { "running" } else { "idle" },
            "kvm": { "ok": kvm_ok, "api_version": kvm_api, "error": kvm_error },
            "vms": mgr.status(),
        });
        config_schema::events::status_fields(&mut s);
        s
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
            Request::OutputGrant {
                ok,
                valid_ms,
                reason,
            } => {
                let was = self.members.grant().valid();
                self.members.on_grant(ok, valid_ms, &reason);
                if was != ok {
                    // Said without waiting for the console: this answer is
                    // what fencing times (`config_schema::console`).
                    config_schema::console::say(format!(
                        "ftvmm: output {} by fencing{}",
                        if ok { "granted" } else { "held" },
                        if reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {reason}")
                        }
                    ));
                }
                Response::Running {
                    vms: self.members.running(),
                }
            }
            Request::ConfigApplied {
                generation,
                vms,
                timing,
                config,
            } => {
                // Timing at once (no fence to wait for); its rules are
                // `lockstep::live_timing`.
                if let Some(line) =
                    (timing.as_ref()).and_then(|t| self.members.timing().adopt(generation, t))
                {
                    println!("{line}");
                }
                let queued = self
                    .power_tx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                match queued {
                    Some(tx) => match tx.send((generation, vms, config)) {
                        Ok(()) => Response::Ok,
                        Err(_) => Response::Error {
                            message: "ftvmm's power worker is gone".into(),
                        },
                    },
                    // No worker (tests): at once, on this thread.
                    None => {
                        crate::power::apply_config(self, generation, &vms, config.as_deref());
                        Response::Ok
                    }
                }
            }
            Request::Deposed { vm, generation, by } => {
                if !self.members.deposed(&vm, generation, &by) {
                    tracing::info!(vm, generation, by, "deposition of a VM not running here");
                }
                Response::Ok
            }
            other => Response::Error {
                message: format!("ftvmm does not serve {other:?}"),
            },
        }
    }

    /// Starts every config VM whose Primary is this host and says, for each
    /// other VM, where its Primary is.
    pub fn start_primaries(&self) {
        for (vm, p) in placement(&self.live_config().config, &self.host_name) {
            self.start_as_at_boot(&vm, &p);
        }
    }

    /// Starts this host's member of `vm` as at boot: standby, Secondary or
    /// Primary by the config's rule, or says why not (a live power-on,
    /// [`crate::power`], takes the same path).
    pub fn start_as_at_boot(&self, vm: &str, p: &Placement) {
        let here = &self.host_name;
        let start = || {
            if let Response::Error { message } = self.handle(Request::StartVm { name: vm.into() }) {
                println!("ftvmm: vm {vm}: cannot start: {message}");
            }
        };
        let rc = self.live_config();
        let vm_cfg = rc.config.vms.iter().find(|v| v.name == vm);
        match (vm_cfg.map(|v| member::role(&rc, v)), p) {
            (Some(Role::Standby), _) => {
                println!("ftvmm: vm {vm}: standby on {here} for a new secondary");
                start();
            }
            (Some(Role::Secondary { primary }), _) => {
                println!("ftvmm: vm {vm}: starting as secondary of {primary} on {here}");
                start();
            }
            (_, Placement::PrimaryHere) => {
                println!("ftvmm: vm {vm}: starting as primary on {here}");
                start();
            }
            (_, Placement::PrimaryElsewhere(h)) => {
                println!("ftvmm: vm {vm}: primary is {h}; not starting here");
            }
            (_, Placement::NoAllowedHost) => {
                println!("ftvmm: vm {vm}: its affinity allows no host; not starting");
            }
        }
    }

    /// The manager (the power module's steps lock it briefly).
    pub(crate) fn manager(&self) -> std::sync::MutexGuard<'_, VmManager> {
        self.manager.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running config with the affinity in force
    /// (`lockstep::live_affinity`).
    pub(crate) fn live_config(&self) -> RuntimeConfig {
        self.members.affinity().apply(&self.running_config())
    }

    /// The booted config as this daemon loaded it, plus the VMs added live.
    pub(crate) fn running_config(&self) -> Arc<RuntimeConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes VM `name` of config `newer` live (`VmManager::add_vm`), under
    /// the manager's lock `m`; the VM is off until the power list that
    /// follows powers it on (a start as at boot).
    pub(crate) fn add_vm(
        &self,
        m: &mut VmManager,
        newer: &config_schema::ClusterConfig,
        name: &str,
        by: u64,
    ) -> Result<(), String> {
        m.add_vm(newer, name, by)?;
        let mut rc = (*self.running_config()).clone();
        rc.config = m.config().clone();
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rc);
        Ok(())
    }

    /// The affinity taken live (`lockstep::live_affinity`).
    pub(crate) fn affinity(&self) -> Arc<crate::lockstep::live_affinity::LiveAffinity> {
        self.members.affinity()
    }

    /// Where `vm`'s Primary is, seen from this host.
    pub(crate) fn placement_of(&self, vm: &str) -> Option<Placement> {
        placement(&self.live_config().config, &self.host_name)
            .into_iter()
            .find(|(n, _)| n == vm)
            .map(|(_, p)| p)
    }

    /// Carries out one test-hook command and prints its outcome line:
    /// `ftvmm: test hook: <command> <vm>: done` or `...: failed: <error>`.
    pub fn run_console_command(&self, cmd: &ConsoleCommand) -> Result<(), String> {
        let mut mgr = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        let (what, vm, res) = match cmd {
            ConsoleCommand::Restart(vm) => ("restart", vm, mgr.restart(vm)),
            ConsoleCommand::SnapshotRestore(vm) => {
                ("snapshot-restore", vm, mgr.snapshot_restore(vm))
            }
            ConsoleCommand::Digest(vm, delta) => {
                let res = match mgr.pair(vm) {
                    Some(p) => {
                        p.digest_request
                            .store(*delta, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    }
                    None => Err(crate::manager::ManagerError::NotRunning(vm.clone())),
                };
                ("digest", vm, res)
            }
        };
        match res {
            Ok(()) => {
                println!("ftvmm: test hook: {what} {vm}: done");
                Ok(())
            }
            Err(e) => {
                println!("ftvmm: test hook: {what} {vm}: failed: {e}");
                Err(e.to_string())
            }
        }
    }
}

/// Runs the daemon until the process is killed.
pub fn run(config_path: &Path, socket: &Path) -> Result<(), DaemonError> {
    let config = RuntimeConfig::load(config_path)?;
    let kvm = KvmAvailability::probe();
    // The exact line, on its own, is what the appliance tests and operators read.
    println!("{}", kvm.console_line());
    if kvm.is_ok() {
        // The CPU every VM here gets, or why this host cannot provide it.
        println!(
            "{}",
            crate::platform::console_line(&config.config.cluster.cpu)
        );
    }
    tracing::info!(host = %config.host_name, vms = config.config.vms.len(), "ftvmm daemon starting");
    let listener = bind(socket)?;
    println!("ftvmm: listening on {}", socket.display());
    let test_hook = test_hook_enabled(&config);
    let daemon = Daemon::new(config, kvm);
    if test_hook {
        daemon
            .manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enable_snapshots(PathBuf::from(TEST_SNAPSHOT_DIR));
    }
    let daemon = Arc::new(daemon);
    daemon.members.watch_lapses();
    crate::power::start_worker(&daemon);
    daemon.start_primaries();
    if test_hook {
        let d = Arc::clone(&daemon);
        if let Err(e) = std::thread::Builder::new()
            .name("test-hook".into())
            .spawn(move || console_hook(&d))
        {
            println!("ftvmm: test hook {TEST_HOOK}: cannot start: {e}");
        }
    }
    // Each request only from the program that sends it (ctl_server::ftvmm_senders).
    // fencing's output grants are answered at real-time priority: a hold it
    // asks for must be confirmed within 500 ms whatever the guests do to
    // the host's cores (config_schema::sched::FTVMM_GRANT_PRIORITY).
    // (serve_urgent moves this thread too; done here first to say how.)
    match config_schema::sched::realtime_thread(config_schema::sched::FTVMM_GRANT_PRIORITY) {
        Ok(()) => println!(
            "ftvmm: output grants answered at {} (other requests at normal priority)",
            config_schema::sched::describe_thread()
        ),
        Err(e) => println!("ftvmm: output grants answered at normal priority: {e}"),
    }
    let urgent = ctl_server::Urgent {
        priority: config_schema::sched::FTVMM_GRANT_PRIORITY,
        is_urgent: |r| matches!(r, Request::OutputGrant { .. }),
    };
    ctl_server::serve_urgent(
        listener,
        Policy::ftvmm(Programs::appliance()),
        Some(urgent),
        move |req| {
            tracing::debug!(?req, "control request");
            daemon.handle(req)
        },
    );
    Ok(())
}

/// The test hook's loop: reads console lines and runs the commands in them.
fn console_hook(daemon: &Daemon) {
    let tty = match open_console_quiet(Path::new(CONSOLE_TTY)) {
        Ok(f) => f,
        Err(e) => {
            println!("ftvmm: test hook {TEST_HOOK}: cannot open {CONSOLE_TTY}: {e}");
            return;
        }
    };
    let snapshots = Path::new(TEST_SNAPSHOT_DIR);
    if let Err(e) = std::fs::create_dir_all(snapshots) {
        println!(
            "ftvmm: test hook: cannot create {}: {e}",
            snapshots.display()
        );
    }
    println!("ftvmm: test hook {TEST_HOOK}: reading commands from {CONSOLE_TTY}");
    for line in BufReader::new(tty).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                println!("ftvmm: test hook: console read failed: {e}");
                return;
            }
        };
        match ConsoleCommand::parse(&line) {
            None => {}
            Some(Err(e)) => println!("ftvmm: test hook: {e}"),
            Some(Ok(cmd)) => {
                let _ = daemon.run_console_command(&cmd);
            }
        }
    }
}

/// Opens the console for reading, without making it our controlling terminal,
/// and turns its echo off so typed commands do not land in the console output.
fn open_console_quiet(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    let fd = f.as_raw_fd();
    // SAFETY: `termios` is plain old data; zeroed is a valid value that
    // tcgetattr overwrites.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor owned by `f` for the whole call and
    // `t` is a valid, writable termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } == 0 {
        t.c_lflag &= !(libc::ECHO | libc::ECHONL);
        t.c_lflag |= libc::ICANON;
        // SAFETY: as above; `t` is the fully initialised termios read above.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            tracing::warn!(
                "cannot turn console echo off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(f)
}

/// Binds the control socket, replacing a stale one from a crashed instance.
fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    ctl_server::bind(socket).map_err(|e| match e {
        ctl_server::ServerError::Listen { path, source } => DaemonError::Listen { path, source },
    })
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
    fn test_hook_follows_the_signed_config_only() {
        let mut c = config();
        assert!(!test_hook_enabled(&c));
        c.config.test = Some(config_schema::TestSection {
            hooks: vec!["crash:ftvmm".into()],
        });
        assert!(!test_hook_enabled(&c));
        c.config.test = Some(config_schema::TestSection {
            hooks: vec!["vmctl".into()],
        });
        assert!(test_hook_enabled(&c));
    }

    #[test]
    fn console_commands_parse() {
        assert_eq!(ConsoleCommand::parse("hello"), None);
        assert_eq!(
            ConsoleCommand::parse("ftvmm-test restart kv\r"),
            Some(Ok(ConsoleCommand::Restart("kv".into())))
        );
        assert_eq!(
            ConsoleCommand::parse("  ftvmm-test snapshot-restore kv"),
            Some(Ok(ConsoleCommand::SnapshotRestore("kv".into())))
        );
        assert!(matches!(
            ConsoleCommand::parse("ftvmm-test reboot kv"),
            Some(Err(_))
        ));
        assert!(matches!(
            ConsoleCommand::parse("ftvmm-test restart"),
            Some(Err(_))
        ));
    }

    #[test]
    fn console_commands_on_a_stopped_vm_fail_cleanly() {
        let d = Daemon::new(config(), KvmAvailability::Ok { api_version: 12 });
        let err = d
            .run_console_command(&ConsoleCommand::Restart("kv".into()))
            .unwrap_err();
        assert!(err.contains("not running"), "{err}");
        let err = d
            .run_console_command(&ConsoleCommand::SnapshotRestore("nope".into()))
            .unwrap_err();
        assert!(err.contains("snapshots are not enabled"), "{err}");
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
        assert!(status["events"].is_array(), "{status}");
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
    fn fencing_grants_and_withdraws_output_without_the_manager_lock() {
        let d = Daemon::new(config(), KvmAvailability::Ok { api_version: 12 });
        assert!(!d.members.grant().valid(), "held until fencing grants");
        // A slow StopVm holding the manager must not delay fencing's requests.
        let _busy = d.manager.lock().unwrap();
        let grant = |ok| {
            d.handle(Request::OutputGrant {
                ok,
                valid_ms: 5_000,
                reason: if ok {
                    String::new()
                } else {
                    "lease renewal failing".into()
                },
            })
        };
        assert_eq!(grant(true), Response::Running { vms: Vec::new() });
        assert!(d.members.grant().valid());
        assert_eq!(grant(false), Response::Running { vms: Vec::new() });
        assert!(!d.members.grant().valid());
        assert_eq!(
            d.handle(Request::Deposed {
                vm: "kv".into(),
                generation: 2,
                by: "host-b".into()
            }),
            Response::Ok
        );
    }

    #[test]
    fn socket_serves_status_to_root_and_the_hold_only_to_fencing() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ftvmm.sock");
        let listener = bind(&sock).unwrap();
        let d = Arc::new(Daemon::new(
            config(),
            KvmAvailability::Ok { api_version: 12 },
        ));
        std::thread::spawn(move || {
            ctl_server::serve(listener, Policy::ftvmm(Programs::appliance()), move |r| {
                d.handle(r)
            })
        });
        let resp = ctl::query(&sock, &Request::Status).unwrap();
        assert!(matches!(resp, Response::Status { .. }));
        // This test process is not /bin/fencing.
        let grant = Request::OutputGrant {
            ok: true,
            valid_ms: 60_000,
            reason: "not from fencing".into(),
        };
        let Response::Error { message } = ctl::query(&sock, &grant).unwrap() else {
            panic!("a grant from another process than fencing was taken");
        };
        assert!(
            message.starts_with("ftvmm refuses output_grant from pid ")
                && message.ends_with("only fencing (/bin/fencing) may send it"),
            "{message}"
        );
        let Response::Error { message } =
            ctl::query(&sock, &Request::StopVm { name: "kv".into() }).unwrap()
        else {
            panic!("StopVm over the socket was taken");
        };
        assert!(message.contains("ftvmm does not take stop_vm"), "{message}");
    }
}
