//! The VMs a daemon runs: which config VMs exist and where their Primary is
//! placed, starting one (its guest image, its disk region on the shared
//! device, its TAP on the VM bridge) on a thread of its own, stopping,
//! restarting and snapshot-restoring it, and reporting status.
//!
//! A checkpoint VM (`replication = "checkpoint"`) starts in the same slot,
//! by the same placement and members, with the checkpoint member's run
//! (`manager_checkpoint.rs`); its image is checked on the shared device
//! before the start is accepted.
//!
//! A VM the signed config powers off (`vms[].power = "off"`) is never
//! started here, whatever asks (the daemon at boot as Primary or Secondary,
//! `StartVm`): [`VmManager::start`] refuses it, and its status says
//! `powered off (config)` with `by config generation N`. A newer config
//! persisted while the daemon runs changes a VM's power live
//! ([`crate::power`]): the manager keeps the booted config but takes each
//! VM's power and the newest config generation from it
//! ([`VmManager::set_power`], [`VmManager::set_applied_generation`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use config_schema::config_id::ConfigId;
use config_schema::runtime::RuntimeConfig;
use config_schema::validate::allowed_hosts;
use config_schema::{ClusterConfig, DeviceLocator, GuestMode, Power, Replication};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::checkpoint::daemon_spec::HostDevices;
use crate::live::DiskSpec;
use crate::lockstep::member::Event;
use crate::lockstep::placement::{self, Role};
use crate::lockstep::spec::{PairError, PairHandle};
use crate::members::Members;
use crate::runner::VmSpec;
use crate::vm::{Progress, VmHandle};

/// Where the image ships guest kernels.
pub const GUEST_DIR: &str = config_schema::images::GUEST_DIR;
/// The bridge init creates for the VM network.
pub const VM_BRIDGE: &str = "ftbr0";

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no VM named {0:?} in the config")]
    UnknownVm(String),
    #[error("VM {0:?} is already running")]
    AlreadyRunning(String),
    #[error("VM {0:?} is not running")]
    NotRunning(String),
    #[error("VM {0:?} is powered off (config): its power is \"off\" in the signed config")]
    PoweredOff(String),
    #[error("cannot start VM {name:?}: {reason}")]
    Start { name: String, reason: String },
    /// An operation a VM's replication does not offer (a lockstep run spec
    /// of a checkpoint VM, a snapshot restore of one).
    #[error("VM {name:?} (replication = \"{mode}\"): {what}")]
    NotInMode {
        name: String,
        mode: &'static str,
        what: &'static str,
    },
    #[error("snapshot of VM {name:?} failed: {reason}")]
    Snapshot { name: String, reason: String },
}

/// Where the Primary of a config VM runs, seen from one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This host is the VM's Primary: the daemon starts it.
    PrimaryHere,
    /// Another host is the Primary.
    PrimaryElsewhere(String),
    /// The VM's affinity allows no host of the config.
    NoAllowedHost,
}

/// The Primary host of `vm`: the first host, in the config's `hosts` order,
/// that the VM's affinity allows.
pub fn primary_host<'a>(config: &'a ClusterConfig, vm: &config_schema::Vm) -> Option<&'a str> {
    let allowed = allowed_hosts(config, vm);
    config
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .find(|h| allowed.contains(h))
}

/// The placement of every config VM as seen from `host`, in config order.
pub fn placement(config: &ClusterConfig, host: &str) -> Vec<(String, Placement)> {
    config
        .vms
        .iter()
        .map(|vm| {
            let p = match primary_host(config, vm) {
                Some(h) if h == host => Placement::PrimaryHere,
                Some(h) => Placement::PrimaryElsewhere(h.to_string()),
                None => Placement::NoAllowedHost,
            };
            (vm.name.clone(), p)
        })
        .collect()
}

/// The status state of a VM whose affinity does not allow this host and
/// that runs nothing here.
pub const NOT_ALLOWED: &str = "not allowed here (config)";

/// The status state of a VM the config powers off and that has not run.
pub const POWERED_OFF: &str = "powered off (config)";

/// What a VM is doing.
#[derive(Debug, Clone)]
enum State {
    Starting,
    Running,
    Exited(String),
    Failed(String),
}

struct Slot {
    /// Pair role and lockstep state (empty for an unprotected VM).
    pair: Arc<PairHandle>,
    /// Asks a pair member still in its handshake to give up.
    cancel: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    handle: Arc<Mutex<Option<VmHandle>>>,
    progress: Arc<Mutex<Option<Arc<Progress>>>>,
    /// A checkpoint member's epoch figures (none for lockstep).
    figures: Option<Arc<crate::checkpoint::daemon_status::Figures>>,
    thread: Option<JoinHandle<()>>,
}

/// The daemon's VMs.
pub struct VmManager {
    config: RuntimeConfig,
    /// The members and the host grant, shared with the daemon's fencing
    /// requests (which never take the manager's lock).
    members: Arc<Members>,
    slots: BTreeMap<String, Slot>,
    guest_dir: PathBuf,
    sys_block: PathBuf,
    bridge: Option<String>,
    /// When set, every VM writes `<dir>/<name>.snap` when it stops, which
    /// [`VmManager::snapshot_restore`] needs.
    snapshot_dir: Option<PathBuf>,
    /// The fencing agent's control socket.
    fencing_socket: PathBuf,
    /// The heartbeat daemon's control socket (the respawn keeper's view of
    /// which hosts are alive).
    heartbeat_socket: PathBuf,
    /// The newest config generation taken live (`ConfigApplied`), at
    /// least the booted one; starts record it with their decision.
    applied_generation: u64,
    /// The config generation that last set a VM's power live.
    power_by: BTreeMap<String, u64>,
    /// The generation and digest of the config this host booted: what a
    /// booted VM's `Hello` names (a pair forms between hosts that booted the
    /// same config; power and VMs taken live since do not change it).
    booted_id: ConfigId,
    /// The same for each VM added live: the config that added it here (two
    /// hosts that added it from the same config run the same definition).
    added_by: BTreeMap<String, ConfigId>,
    /// Why a VM the config powers off still runs here (its power-off
    /// could not be fenced yet).
    power_pending: BTreeMap<String, String>,
    /// Tests: how checkpoint guests are loaded (`manager_checkpoint.rs`).
    checkpoint_boot: Option<crate::checkpoint::daemon_spec::Boot>,
    /// Tests: joins of a new Secondary here cut after their first piece.
    #[cfg(test)]
    checkpoint_join_cuts: Arc<std::sync::atomic::AtomicU32>,
}

/// Whether, and how, this host runs a member of a VM right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberHere {
    /// No member thread.
    None,
    /// A member that does not act and races for nothing yet: a Secondary
    /// following, a standby, a start still waiting.
    Passive,
    /// A member that acts as Primary or asks fencing for a generation (a
    /// Primary in any state, a Secondary racing): `PairHandle::running`.
    Acting,
}

/// Finds `/dev/<name>` whose `/sys/block/<name>/serial` (or `device/serial`)
/// is `serial`, or, for a SCSI disk, whose unit serial number (VPD page 0x80,
/// `device/vpd_pg80`: 4-byte header, then the serial padded with spaces) is.
pub fn find_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        for rel in ["serial", "device/serial"] {
            if let Ok(s) = std::fs::read_to_string(e.path().join(rel)) {
                if s.trim() == serial {
                    return Some(Path::new("/dev").join(&name));
                }
            }
        }
        if let Ok(page) = std::fs::read(e.path().join("device/vpd_pg80")) {
            if page.len() > 4 && page[1] == 0x80 {
                let s = String::from_utf8_lossy(&page[4..]);
                if s.trim_matches(|c: char| c == ' ' || c == '\0') == serial {
                    return Some(Path::new("/dev").join(&name));
                }
            }
        }
    }
    None
}

/// Prefixes each console line with the VM name on the daemon's stdout. The
/// guest writes byte by byte; whole lines are written at once so that other
/// threads' log lines never land inside a guest line.
struct ConsolePrefix {
    prefix: String,
    line: Vec<u8>,
}

impl ConsolePrefix {
    fn new(vm: &str) -> Self {
        ConsolePrefix {
            prefix: format!("[{vm}] "),
            line: Vec::new(),
        }
    }

    fn write_line(&mut self) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(self.prefix.len() + self.line.len());
        out.extend_from_slice(self.prefix.as_bytes());
        out.append(&mut self.line);
        std::io::stdout().lock().write_all(&out)
    }
}

/// Longest console line kept back before it is written out anyway.
const MAX_CONSOLE_LINE: usize = 4096;

impl Write for ConsolePrefix {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_CONSOLE_LINE {
                self.write_line()?;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // Partial lines wait for their newline (see Drop).
        std::io::stdout().flush()
    }
}

impl Drop for ConsolePrefix {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.line.push(b'\n');
            let _ = self.write_line();
        }
    }
}

impl VmManager {
    /// A manager whose VMs' output needs `members`' grant.
    pub fn new(config: RuntimeConfig, members: Arc<Members>) -> Self {
        VmManager {
            members,
            slots: BTreeMap::new(),
            guest_dir: PathBuf::from(GUEST_DIR),
            sys_block: PathBuf::from("/sys/block"),
            bridge: Some(VM_BRIDGE.to_string()),
            snapshot_dir: None,
            fencing_socket: PathBuf::from(config_schema::ctl::FENCING_SOCKET),
            heartbeat_socket: PathBuf::from(config_schema::ctl::HEARTBEAT_SOCKET),
            applied_generation: config.config.cluster.generation,
            power_by: BTreeMap::new(),
            booted_id: ConfigId::of_config(&config.config),
            added_by: BTreeMap::new(),
            power_pending: BTreeMap::new(),
            checkpoint_boot: None,
            #[cfg(test)]
            checkpoint_join_cuts: Arc::default(),
            config,
        }
    }

    /// Tests: where guest images and the fencing agent are, and no bridge.
    #[cfg(test)]
    pub(crate) fn set_test_paths(&mut self, guest_dir: &Path, fencing_socket: &Path) {
        self.guest_dir = guest_dir.into();
        self.fencing_socket = fencing_socket.into();
        self.bridge = None;
    }

    /// Tests: the heartbeat socket the respawn keeper asks.
    #[cfg(test)]
    pub(crate) fn set_test_heartbeat(&mut self, socket: &Path) {
        self.heartbeat_socket = socket.into();
    }

    /// The fencing agent's control socket.
    pub fn fencing_socket(&self) -> &Path {
        &self.fencing_socket
    }

    /// The newest config generation taken live.
    pub fn applied_generation(&self) -> u64 {
        self.applied_generation
    }

    /// Takes config generation `g` as the newest (never goes back).
    pub fn set_applied_generation(&mut self, g: u64) {
        self.applied_generation = self.applied_generation.max(g);
    }

    /// VM `name`'s power as the config last set it.
    pub fn power(&self, name: &str) -> Result<Power, ManagerError> {
        Ok(self.find(name)?.power)
    }

    /// The cluster config this manager runs (booted, with power taken live
    /// and VMs added live).
    pub fn config(&self) -> &config_schema::ClusterConfig {
        &self.config.config
    }

    /// The config generation and digest VM `name`'s `Hello` names: the
    /// config that added it here, or the booted one.
    pub(crate) fn pair_identity(&self, name: &str) -> ConfigId {
        self.added_by.get(name).copied().unwrap_or(self.booted_id)
    }

    /// Records VM `name`'s fencing slot for the fencing client
    /// (`lockstep::fence::know_slot`) and returns it.
    pub(crate) fn know_slot(&self, name: &str) -> Option<u32> {
        let slot = self.config.config.slot_of(name)?;
        crate::lockstep::fence::know_slot(&self.fencing_socket, name, slot);
        Some(slot)
    }

    /// Takes VM `name` of config `newer` into the config this manager runs
    /// (`config_schema::live_add`: its slot, region and image; the others
    /// keep their booted definitions), powered off until the power list of
    /// config generation `by` powers it on (`crate::power`); its `Hello`
    /// names `newer`. `Err`: why the running config cannot take it (the VM
    /// waits for a reboot).
    pub fn add_vm(
        &mut self,
        newer: &config_schema::ClusterConfig,
        name: &str,
        by: u64,
    ) -> Result<(), String> {
        let mut added = config_schema::live_add::with_added(&self.config.config, newer, name)?;
        // Off until the power list powers it on: a start as at boot.
        if let Some(vm) = added.vms.iter_mut().find(|v| v.name == name) {
            vm.power = Power::Off;
        }
        self.config.config = added;
        self.power_by.insert(name.to_string(), by);
        (self.added_by).insert(name.to_string(), ConfigId::of_config(newer));
        self.know_slot(name);
        Ok(())
    }

    /// Sets VM `name`'s power, as config generation `by` says. From now on
    /// [`VmManager::start`] follows it; a running member is not touched
    /// (`crate::power` stops it).
    pub fn set_power(&mut self, name: &str, power: Power, by: u64) -> Result<(), ManagerError> {
        let vm = (self.config.config.vms.iter_mut())
            .find(|v| v.name == name)
            .ok_or_else(|| ManagerError::UnknownVm(name.to_string()))?;
        vm.power = power;
        self.power_by.insert(name.to_string(), by);
        Ok(())
    }

    /// Why a powered-off VM still runs here (`None`: it does not, or the
    /// power-off went through).
    pub fn set_power_pending(&mut self, name: &str, why: Option<String>) {
        match why {
            Some(w) => self.power_pending.insert(name.to_string(), w),
            None => self.power_pending.remove(name),
        };
    }

    /// Whether, and how, this host runs a member of `name`.
    pub fn member_here(&self, name: &str) -> MemberHere {
        let Some(slot) = self.slots.get(name) else {
            return MemberHere::None;
        };
        if slot.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return MemberHere::None;
        }
        match slot.pair.running.load(Ordering::SeqCst) {
            0 => MemberHere::Passive,
            _ => MemberHere::Acting,
        }
    }

    /// Makes every VM started from now on save a snapshot to
    /// `<dir>/<name>.snap` when it stops (the daemon's test hook uses this).
    pub fn enable_snapshots(&mut self, dir: PathBuf) {
        self.snapshot_dir = Some(dir);
    }

    fn snapshot_path(&self, name: &str) -> Option<PathBuf> {
        self.snapshot_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.snap")))
    }

    pub fn any_running(&self) -> bool {
        self.slots.values().any(|s| {
            matches!(
                *s.state.lock().unwrap_or_else(|p| p.into_inner()),
                State::Running | State::Starting
            )
        })
    }

    /// Per-VM status objects.
    pub fn status(&self) -> Vec<serde_json::Value> {
        self.config
            .config
            .vms
            .iter()
            .map(|vm| {
                let idle = match vm.power {
                    Power::On => "stopped",
                    Power::Off => POWERED_OFF,
                };
                let mut v = serde_json::json!({
                    "name": vm.name,
                    "state": idle,
                    "replication": vm.replication.name(),
                });
                let by = self.power_by.get(&vm.name).copied();
                let by = by.unwrap_or(self.config.config.cluster.generation);
                let off = vm.power == Power::Off;
                if off {
                    v["detail"] = format!("by config generation {by}").into();
                    v["powered_off_by_config_generation"] = by.into();
                }
                if let Some(slot) = self.slots.get(&vm.name) {
                    let state = slot.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let (st, detail) = match state {
                        State::Starting => ("starting", None),
                        State::Running => ("running", None),
                        State::Exited(d) => ("exited", Some(d)),
                        State::Failed(d) => ("failed", Some(d)),
                    };
                    v["state"] = st.into();
                    if let Some(d) = detail {
                        v["detail"] = d.into();
                    }
                    if let Some(p) = &*slot.progress.lock().unwrap_or_else(|p| p.into_inner()) {
                        v["progress"] = p.to_json();
                    }
                    v["lockstep"] = slot.pair.status();
                    if let Some(f) = &slot.figures {
                        v["checkpoint"] = f.to_json();
                        // The keeper's line (respawn), where checkpoint
                        // status is read as well as in `lockstep`.
                        if let Some(p) = v["lockstep"].get("protection").cloned() {
                            v["checkpoint"]["protection"] = p;
                        }
                    }
                    if off && self.member_here(&vm.name) == MemberHere::None {
                        v["state"] = POWERED_OFF.into();
                        v["detail"] = format!("by config generation {by}").into();
                    }
                }
                if let Some(why) = self.power_pending.get(&vm.name) {
                    v["power_off_pending"] = why.clone().into();
                }
                // Where the affinity in force lets it run (`live_affinity`).
                let affinity = self.members.affinity();
                let allowed = affinity.allowed(&self.config.config, &vm.name);
                let here = &self.config.host_name;
                if !off && !allowed.contains(here) && self.member_here(&vm.name) == MemberHere::None
                {
                    v["state"] = NOT_ALLOWED.into();
                    let by = match affinity.generation() {
                        0 => self.config.config.cluster.generation,
                        g => g,
                    };
                    v["detail"] = format!(
                        "config generation {by} allows it on {} only",
                        allowed.join(", ")
                    )
                    .into();
                }
                v["allowed_hosts"] = allowed.into();
                v
            })
            .collect()
    }

    /// The run spec of lockstep VM `name` on this host.
    pub fn spec_for(&self, name: &str) -> Result<VmSpec, ManagerError> {
        let vm = self.find(name)?;
        if vm.replication != Replication::Lockstep {
            return Err(ManagerError::NotInMode {
                name: name.to_string(),
                mode: vm.replication.name(),
                what: "it has no lockstep run spec",
            });
        }
        let dev = self.host_devices(vm)?;
        let mode = match vm.mode {
            GuestMode::Kv => "kv",
            GuestMode::Cpu => "cpu",
        };
        Ok(VmSpec {
            kernel: self.guest_dir.join(format!("{}.elf", vm.image)),
            mem_mib: u64::from(vm.memory_mib),
            disk: Some(dev.disk),
            tap: Some(dev.tap),
            cmdline: format!("mode={mode} ip={} mac={}", vm.ip, vm.mac),
            restore: None,
            snapshot_on_exit: self.snapshot_path(name),
            stdin: false,
            bridge: dev.bridge,
            cpu: self.config.config.cluster.cpu.clone(),
        })
    }

    /// Where VM `vm`'s disk region and TAP are on this host.
    fn host_devices(&self, vm: &config_schema::Vm) -> Result<HostDevices, ManagerError> {
        let err = |reason: String| ManagerError::Start {
            name: vm.name.clone(),
            reason,
        };
        let storage = &self.config.config.storage;
        let region = storage
            .regions
            .iter()
            .find(|r| r.name == vm.disk_region)
            .ok_or_else(|| {
                err(format!(
                    "disk region {:?} not in storage.regions",
                    vm.disk_region
                ))
            })?;
        let device = match &storage.device {
            DeviceLocator::Path(p) => PathBuf::from(p),
            DeviceLocator::Serial(s) => find_by_serial(&self.sys_block, s).ok_or_else(|| {
                err(format!(
                    "no block device with serial {s:?} under {}",
                    self.sys_block.display()
                ))
            })?,
            DeviceLocator::Iscsi(lun) => {
                // The LUN init logged in to, by its session in sysfs
                // (`sys_block`'s parent is the sysfs mount, `/sys`).
                let sys = self.sys_block.parent().unwrap_or(Path::new("/sys"));
                let name = config_schema::iscsi_block::find_block(sys, lun)
                    .map_err(|e| err(e.to_string()))?;
                Path::new("/dev").join(name)
            }
        };
        let tap = format!("ft-{}", vm.name);
        if tap.len() > 15 {
            return Err(err(format!("TAP name {tap:?} is longer than 15 bytes")));
        }
        Ok(HostDevices {
            disk: DiskSpec {
                path: device.clone(),
                region: Some((region.offset_mib << 20, region.size_mib << 20)),
            },
            device,
            tap,
            bridge: self.bridge.clone(),
        })
    }

    /// Boots config VM `name` from its guest image, in the role the
    /// affinity in force gives this host.
    pub fn start(&mut self, name: &str) -> Result<(), ManagerError> {
        self.start_from(name, None, None)
    }

    /// Starts this host's member of `name` as a standby for a join (a host
    /// a live affinity change newly allows, `lockstep::live_affinity`).
    pub fn start_standby(&mut self, name: &str) -> Result<(), ManagerError> {
        self.start_from(name, None, Some(Role::Standby))
    }

    /// This host's role for `vm` by the affinity in force
    /// (`lockstep::live_affinity`).
    fn role_now(&self, vm: &config_schema::Vm) -> Role {
        let rc = self.members.affinity().apply(&self.config);
        placement::role(&rc, &vm_of(&rc, vm))
    }

    /// Starts VM `name`, booting its image or, with `restore`, continuing
    /// from that snapshot file (deleted once it has been loaded); `role`
    /// when given, else by [`Self::role_now`].
    fn start_from(
        &mut self,
        name: &str,
        restore: Option<PathBuf>,
        role: Option<Role>,
    ) -> Result<(), ManagerError> {
        if self.any_running_named(name) {
            return Err(ManagerError::AlreadyRunning(name.to_string()));
        }
        if self.find(name)?.power == Power::Off {
            return Err(ManagerError::PoweredOff(name.to_string()));
        }
        if self.find(name)?.replication == Replication::Checkpoint {
            if restore.is_some() {
                return Err(ManagerError::NotInMode {
                    name: name.into(),
                    mode: Replication::Checkpoint.name(),
                    what: "snapshot restore is for lockstep VMs",
                });
            }
            return self.start_checkpoint(name, role);
        }
        let mut spec = self.spec_for(name)?;
        spec.restore = restore;
        if !spec.kernel.exists() {
            return Err(ManagerError::Start {
                name: name.into(),
                reason: format!("guest image {} missing", spec.kernel.display()),
            });
        }
        let vm_cfg = self.find(name)?.clone();
        let role = role.unwrap_or_else(|| self.role_now(&vm_cfg));
        if spec.restore.is_some() {
            self.refuse_paired_restore(name)?;
        }
        let mut ps = placement::pair_spec(
            &self.config,
            &vm_cfg,
            self.pair_identity(name),
            spec.clone(),
            self.members.grant(),
            self.members.timing(),
        )
        .map_err(|e| ManagerError::Start {
            name: name.into(),
            reason: e.to_string(),
        })?;
        ps.fencing_socket = self.fencing_socket.clone();
        ps.heartbeat_socket = self.heartbeat_socket.clone();
        ps.applied_config_generation = self.applied_generation;
        ps.live_affinity = self.members.affinity();
        let rc = self.config.clone();
        let affinity = self.members.affinity();
        let slot = Slot {
            pair: Arc::new(PairHandle::for_vm(name)),
            cancel: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(State::Starting)),
            handle: Arc::new(Mutex::new(None)),
            progress: Arc::new(Mutex::new(None)),
            figures: None,
            thread: None,
        };
        let fencing_slot = self.know_slot(name);
        self.members
            .insert(name, fencing_slot, Arc::clone(&slot.pair));
        let (state, handle, progress, pair, cancel) = (
            Arc::clone(&slot.state),
            Arc::clone(&slot.handle),
            Arc::clone(&slot.progress),
            Arc::clone(&slot.pair),
            Arc::clone(&slot.cancel),
        );
        let vm_name = name.to_string();
        let restored_from = spec.restore.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || {
                // The member's runs on this host: its configured role first;
                // after any end that is not a stop, a standby for a new
                // Secondary (respawn) as long as the VM's rule allows this
                // host — and the configured role again whenever a standby
                // wait ends without a transfer (the VM runs nowhere).
                let mut role = role;
                let mut restored_from = restored_from;
                loop {
                    // Each run places by the affinity in force when it starts.
                    let rc = affinity.apply(&rc);
                    let vm_cfg = vm_of(&rc, &vm_cfg);
                    let console = Box::new(ConsolePrefix::new(&vm_name));
                    let st = Arc::clone(&state);
                    let traffic = placement::heartbeat_notifier(&rc, &role);
                    let (handle2, progress2) = (Arc::clone(&handle), Arc::clone(&progress));
                    let restored = restored_from.take();
                    let res = placement::run_member(
                        &rc,
                        &vm_cfg,
                        &role,
                        ps.clone(),
                        console,
                        &pair,
                        &cancel,
                        |h, p| {
                            if let Some(path) = &restored {
                                // Loaded; the file (a whole memory image) is no longer needed.
                                let _ = std::fs::remove_file(path);
                            }
                            *handle2.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                            *progress2.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
                            *st.lock().unwrap_or_else(|p| p.into_inner()) = State::Running;
                        },
                        traffic,
                    );
                    let new_state = match res {
                        Ok(report) => {
                            println!(
                                "ftvmm: VM {vm_name} stopped: {:?} after {} exits ({})",
                                report.outcome, report.exit_index, report.member
                            );
                            match report.replay_end {
                                Some(end) => {
                                    State::Exited(format!("{:?}: {end:?}", report.outcome))
                                }
                                None => State::Exited(format!("{:?}", report.outcome)),
                            }
                        }
                        Err(PairError::RunningElsewhere { owner }) => {
                            State::Exited(format!("runs on {owner}"))
                        }
                        Err(PairError::Stopped) if !cancel.load(Ordering::SeqCst) => {
                            State::Exited("standby ended".into())
                        }
                        Err(e) => {
                            println!("ftvmm: VM {vm_name} failed: {e}");
                            State::Failed(e.to_string())
                        }
                    };
                    *state.lock().unwrap_or_else(|p| p.into_inner()) = new_state;
                    *handle.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    match next_role(&affinity.apply(&rc), &vm_cfg, &role, &cancel) {
                        Some(next) => role = next,
                        None => break,
                    }
                }
            })
            .map_err(|e| ManagerError::Start {
                name: name.into(),
                reason: format!("cannot spawn VM thread: {e}"),
            })?;
        self.install(name, slot, thread);
        println!("ftvmm: VM {name} starting");
        Ok(())
    }

    /// Puts `name`'s new slot with its VM thread in place; a previous,
    /// finished run of the same VM is replaced (its thread joined).
    fn install(&mut self, name: &str, mut slot: Slot, thread: JoinHandle<()>) {
        slot.thread = Some(thread);
        if let Some(old) = self.slots.insert(name.to_string(), slot) {
            if let Some(t) = old.thread {
                let _ = t.join();
            }
        }
    }

    fn any_running_named(&self, name: &str) -> bool {
        self.slots.get(name).is_some_and(|s| {
            matches!(
                *s.state.lock().unwrap_or_else(|p| p.into_inner()),
                State::Running | State::Starting
            )
        })
    }

    pub fn stop(&mut self, name: &str) -> Result<(), ManagerError> {
        self.find(name)?;
        let slot = self
            .slots
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotRunning(name.to_string()))?;
        let handle = slot
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        slot.cancel.store(true, Ordering::SeqCst);
        // The member stops holding and racing; the vCPU is stopped below.
        slot.pair.post(Event::Stop);
        match handle {
            Some(h) => h.stop(),
            None if slot.thread.as_ref().is_some_and(|t| !t.is_finished()) => {}
            None => return Err(ManagerError::NotRunning(name.to_string())),
        }
        if let Some(t) = slot.thread.take() {
            let _ = t.join();
        }
        Ok(())
    }

    /// Stops VM `name` and boots it again from its image (the guest rebuilds
    /// its state from its disk). A snapshot written by the stop is discarded.
    pub fn restart(&mut self, name: &str) -> Result<(), ManagerError> {
        self.stop(name)?;
        if let Some(p) = self.snapshot_path(name) {
            let _ = std::fs::remove_file(p);
        }
        self.start(name)
    }

    /// Saves the running VM `name` (its snapshot file is written when it
    /// stops), tears it down, and starts a fresh VM restored from that
    /// snapshot in this same process: the guest continues where it was, with
    /// a new TAP of the same name on the bridge. Needs
    /// [`VmManager::enable_snapshots`].
    pub fn snapshot_restore(&mut self, name: &str) -> Result<(), ManagerError> {
        let path = self
            .snapshot_path(name)
            .ok_or_else(|| ManagerError::Snapshot {
                name: name.into(),
                reason: "snapshots are not enabled in this daemon".into(),
            })?;
        self.refuse_paired_restore(name)?;
        let _ = std::fs::remove_file(&path);
        self.stop(name)?;
        let state = self
            .slots
            .get(name)
            .map(|s| s.state.lock().unwrap_or_else(|p| p.into_inner()).clone());
        if let Some(State::Failed(reason)) = state {
            return Err(ManagerError::Snapshot {
                name: name.into(),
                reason,
            });
        }
        if !path.exists() {
            return Err(ManagerError::Snapshot {
                name: name.into(),
                reason: format!("{} was not written", path.display()),
            });
        }
        self.start_from(name, Some(path), None)
    }

    /// A restore is a second start of a copy whose pair partner may be
    /// running (its Secondary would go live): a paired VM is never restored
    /// alone. Checked before anything is stopped.
    fn refuse_paired_restore(&self, name: &str) -> Result<(), ManagerError> {
        let vm = self.find(name)?;
        match placement::role(&self.config, vm) {
            Role::Unprotected => Ok(()),
            _ => Err(ManagerError::Snapshot {
                name: name.into(),
                reason: "a paired VM is never restored alone (its secondary would go live)".into(),
            }),
        }
    }

    /// The lockstep handle of VM `name` (test hooks: memory digests).
    pub fn pair(&self, name: &str) -> Option<Arc<PairHandle>> {
        self.slots.get(name).map(|s| Arc::clone(&s.pair))
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

/// `vm` as `rc` has it (its live affinity), or `vm` itself if `rc` lacks it.
fn vm_of(rc: &RuntimeConfig, vm: &config_schema::Vm) -> config_schema::Vm {
    (rc.config.vms.iter())
        .find(|v| v.name == vm.name)
        .unwrap_or(vm)
        .clone()
}

/// What a VM thread does after its member's run ended (lockstep and
/// checkpoint VMs alike; `rc` has the affinity in force): `None` — stop —
/// when the VM was stopped or this host is no longer allowed to hold it
/// (a live affinity change: a Primary that handed the VM over ends here); otherwise the
/// role of the next run. A member that ended here (lost a race, found the VM
/// running elsewhere, handed over) waits as a standby for a join; a
/// standby's wait that ended goes back to the configured role, after a 1 s
/// pause so a wait that ends at once is not a tight loop.
fn next_role(
    rc: &RuntimeConfig,
    vm_cfg: &config_schema::Vm,
    role: &Role,
    cancel: &AtomicBool,
) -> Option<Role> {
    // The VM as `rc` has it: a run that started before a live affinity
    // change holds the rule of then (seen: a Primary that handed the VM
    // over because the new rule excludes its host waited there as a
    // standby again, judged by the old rule).
    let vm_cfg = &vm_of(rc, vm_cfg);
    let allowed_here = !matches!(placement::role(rc, vm_cfg), Role::None | Role::Unprotected);
    if cancel.load(Ordering::SeqCst) || !allowed_here {
        return None;
    }
    let next = match role {
        Role::Standby => placement::role(rc, vm_cfg),
        _ => Role::Standby,
    };
    if next != Role::Standby {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    Some(next)
}

#[cfg(test)]
#[path = "manager_checkpoint_respawn_tests.rs"]
mod checkpoint_respawn_tests;
#[cfg(test)]
#[path = "manager_checkpoint_tests.rs"]
mod checkpoint_tests;
#[path = "manager_checkpoint.rs"]
mod checkpoint_vm;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockstep::grant::HostGrant;

    fn config() -> RuntimeConfig {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/cluster.toml"
        ))
        .unwrap();
        let config: config_schema::ClusterConfig =
            toml::from_str(&text).expect("example config parses");
        RuntimeConfig {
            host_name: config.hosts[0].name.clone(),
            config,
            host_private_key: "00".repeat(32),
        }
    }

    #[test]
    fn a_run_that_ends_after_a_live_affinity_change_is_judged_by_the_new_rule() {
        // The run started when host-a was allowed; the config now in force
        // allows host-b and host-c only: host-a's member ends for good.
        let mut rc = config();
        let then = rc.config.vms[0].clone();
        rc.config.vms[0].affinity = config_schema::Affinity {
            hosts: vec!["host-b".into(), "host-c".into()],
            groups: Vec::new(),
        };
        let cancel = AtomicBool::new(false);
        let primary = Role::Primary {
            secondary: "host-c".into(),
        };
        assert_eq!(next_role(&rc, &then, &primary, &cancel), None);
        assert_eq!(next_role(&rc, &then, &Role::Standby, &cancel), None);
        // Still allowed (host-a back in the rule): a standby next.
        rc.config.vms[0].affinity.hosts.push("host-a".into());
        assert_eq!(
            next_role(&rc, &then, &primary, &cancel),
            Some(Role::Standby)
        );
    }

    #[test]
    fn primary_is_the_first_allowed_host_in_config_order() {
        let cfg = config().config;
        // Example: kv may run on rack-1 (host-a, host-b) and host-c.
        assert_eq!(primary_host(&cfg, &cfg.vms[0]), Some("host-a"));
        assert_eq!(
            placement(&cfg, "host-a"),
            vec![("kv".to_string(), Placement::PrimaryHere)]
        );
        assert_eq!(
            placement(&cfg, "host-b"),
            vec![(
                "kv".to_string(),
                Placement::PrimaryElsewhere("host-a".into())
            )]
        );

        // Config order decides, not the order of the affinity lists.
        let mut c = cfg.clone();
        c.vms[0].affinity.groups.clear();
        c.vms[0].affinity.hosts = vec!["host-c".into(), "host-b".into()];
        assert_eq!(primary_host(&c, &c.vms[0]), Some("host-b"));
        assert_eq!(placement(&c, "host-b")[0].1, Placement::PrimaryHere);
        assert_eq!(
            placement(&c, "host-a")[0].1,
            Placement::PrimaryElsewhere("host-b".into())
        );

        // Empty affinity = any host: the first one.
        c.vms[0].affinity.hosts.clear();
        assert_eq!(primary_host(&c, &c.vms[0]), Some("host-a"));

        // Only unknown names: nowhere.
        c.vms[0].affinity.hosts = vec!["host-z".into()];
        assert_eq!(primary_host(&c, &c.vms[0]), None);
        assert_eq!(placement(&c, "host-a")[0].1, Placement::NoAllowedHost);
    }

    #[test]
    fn a_powered_off_vm_is_not_started_here_or_by_the_daemon_at_boot() {
        use crate::daemon::{Daemon, KvmAvailability};
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config();
        cfg.config.vms[0].power = Power::Off;
        // Everything a start needs is there but the power: the image and the device.
        cfg.config.storage.device = DeviceLocator::Path("/dev/null".into());
        let vm = cfg.config.vms[0].clone();
        std::fs::write(dir.path().join(format!("{}.elf", vm.image)), b"").unwrap();
        let mut m = VmManager::new(cfg.clone(), Members::new(HostGrant::always()));
        m.guest_dir = dir.path().into();
        assert_eq!(m.status()[0]["state"], POWERED_OFF);
        match m.start(&vm.name) {
            Err(ManagerError::PoweredOff(n)) => assert_eq!(n, vm.name),
            other => panic!("a powered-off VM was started: {other:?}"),
        }
        assert!(m.pair(&vm.name).is_none(), "nothing was set up");
        assert!(!m.any_running());
        assert_eq!(m.status()[0]["state"], POWERED_OFF);
        // The daemon at boot, as the Primary (host-a) and the Secondary (host-b).
        for host in ["host-a", "host-b"] {
            let mut rc = cfg.clone();
            rc.host_name = host.into();
            let d = Daemon::new(rc, KvmAvailability::Ok { api_version: 12 });
            d.start_primaries();
            let st = d.status();
            assert_eq!(st["role"], "idle", "{host}: {st}");
            assert_eq!(st["vms"][0]["state"], POWERED_OFF, "{host}: {st}");
        }
        // Powered on and never started, the VM is plain "stopped".
        let mut on = cfg;
        on.config.vms[0].power = Power::On;
        let m = VmManager::new(on, Members::new(HostGrant::always()));
        assert_eq!(m.status()[0]["state"], "stopped");
    }

    #[test]
    fn snapshot_restore_needs_snapshots_enabled_and_a_running_vm() {
        let mut cfg = config();
        cfg.config.storage.device = DeviceLocator::Path("/dev/null".into());
        let name = cfg.config.vms[0].name.clone();
        let mut m = VmManager::new(cfg, Members::new(HostGrant::always()));
        let err = m.snapshot_restore(&name).unwrap_err();
        assert!(matches!(err, ManagerError::Snapshot { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        m.enable_snapshots(dir.path().into());
        assert_eq!(
            m.spec_for(&name).unwrap().snapshot_on_exit,
            Some(dir.path().join(format!("{name}.snap")))
        );
        // The example VM is paired: never restored alone, refused before
        // anything is stopped (issue 14: a split brain on demand).
        match m.snapshot_restore(&name) {
            Err(ManagerError::Snapshot { reason, .. }) => {
                assert!(reason.contains("never restored alone"), "{reason}")
            }
            other => panic!("a paired VM was restored alone: {other:?}"),
        }
        assert!(matches!(m.restart(&name), Err(ManagerError::NotRunning(_))));
        // A VM its rule allows on one host only may be: here it is not running.
        let mut cfg = config();
        cfg.config.vms[0].affinity.groups.clear();
        cfg.config.vms[0].affinity.hosts = vec!["host-a".into()];
        let mut m = VmManager::new(cfg, Members::new(HostGrant::always()));
        m.enable_snapshots(dir.path().into());
        assert!(matches!(
            m.snapshot_restore(&name),
            Err(ManagerError::NotRunning(_))
        ));
    }

    #[test]
    fn spec_uses_the_region_serial_device_tap_and_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config();
        let DeviceLocator::Serial(serial) = cfg.config.storage.device.clone() else {
            panic!("example config locates storage by serial");
        };
        std::fs::create_dir_all(dir.path().join("vdb")).unwrap();
        std::fs::write(dir.path().join("vdb/serial"), format!("{serial}\n")).unwrap();
        std::fs::create_dir_all(dir.path().join("vda")).unwrap();
        std::fs::write(dir.path().join("vda/serial"), "OTHER\n").unwrap();
        let mut m = VmManager::new(cfg.clone(), Members::new(HostGrant::always()));
        m.sys_block = dir.path().into();
        let vm = &cfg.config.vms[0];
        let spec = m.spec_for(&vm.name).unwrap();
        assert_eq!(spec.disk.as_ref().unwrap().path, PathBuf::from("/dev/vdb"));
        let region = cfg
            .config
            .storage
            .regions
            .iter()
            .find(|r| r.name == vm.disk_region)
            .unwrap();
        assert_eq!(
            spec.disk.unwrap().region,
            Some((region.offset_mib << 20, region.size_mib << 20))
        );
        assert_eq!(
            spec.tap.as_deref(),
            Some(format!("ft-{}", vm.name).as_str())
        );
        assert!(spec.cmdline.contains(&format!("ip={}", vm.ip)));
        assert!(spec.cmdline.contains(&format!("mac={}", vm.mac)));
        assert_eq!(
            spec.kernel,
            PathBuf::from(GUEST_DIR).join(format!("{}.elf", vm.image))
        );
        assert!(matches!(
            m.spec_for("nope"),
            Err(ManagerError::UnknownVm(_))
        ));
    }

    /// The daemon path end to end: a config VM (shared device = a file, guest
    /// image from FTGUEST_ELF or guest/target) starts, runs, and stops. Needs
    /// /dev/kvm and /dev/net/tun (root); fails with a clear message otherwise.
    #[test]
    fn a_config_vm_starts_runs_and_stops() {
        let elf = crate::test_guest_elf();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config();
        let shared = dir.path().join("shared.img");
        let f = std::fs::File::create(&shared).unwrap();
        f.set_len(cfg.config.storage.size_mib << 20).unwrap();
        cfg.config.storage.device = DeviceLocator::Path(shared.display().to_string());
        // Unprotected (only this host allowed): no pairing in this test.
        cfg.config.vms[0].affinity.groups.clear();
        cfg.config.vms[0].affinity.hosts = vec!["host-a".into()];
        let vm = cfg.config.vms[0].clone();
        std::os::unix::fs::symlink(&elf, dir.path().join(format!("{}.elf", vm.image))).unwrap();
        let mut m = VmManager::new(cfg, Members::new(HostGrant::always()));
        m.guest_dir = dir.path().into();
        m.bridge = None;
        let fencing = OneHostFencing::serve(dir.path(), "host-a");
        m.fencing_socket = fencing.socket.clone();
        m.start(&vm.name).unwrap();
        assert!(matches!(
            m.start(&vm.name),
            Err(ManagerError::AlreadyRunning(_))
        ));
        let mut exits = 0;
        for _ in 0..600 {
            let st = m.status();
            let s = &st[0];
            assert_ne!(s["state"], "failed", "VM failed: {s}");
            exits = s["progress"]["exit_index"].as_u64().unwrap_or(0);
            if exits > 50 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(exits > 50, "the VM made no progress");
        assert!(m.any_running());
        assert_eq!(
            fencing.decided(),
            vec![("kv".to_string(), 1, "host-a".to_string())],
            "the VM runs only under a generation it won"
        );
        assert_eq!(m.status()[0]["lockstep"]["generation"], 1);
        // A restart is a new start: the next generation, not the old one.
        m.restart(&vm.name).unwrap();
        for _ in 0..600 {
            if m.status()[0]["lockstep"]["generation"] == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(fencing.decided().len(), 2, "{:?}", fencing.decided());
        assert_eq!(fencing.decided()[1].1, 2);
        m.stop(&vm.name).unwrap();
        let st = m.status();
        assert_eq!(st[0]["state"], "exited", "{}", st[0]);
        assert_eq!(st[0]["detail"], "Stopped");
        assert!(!m.any_running());
    }

    /// A fencing agent for one host, answering as Disk Paxos would when no
    /// other host competes: the highest decided generation, and each
    /// `Acquire` decided once for the first asker. (The real agent is
    /// exercised by the fencing crate's tests and the QEMU tests.)
    struct OneHostFencing {
        socket: PathBuf,
        decided: Arc<Mutex<Vec<(String, u64, String)>>>,
    }

    impl OneHostFencing {
        fn serve(dir: &Path, me: &str) -> Self {
            use config_schema::ctl::{Request, Response};
            let socket = dir.join("fencing.sock");
            let listener = config_schema::ctl_server::bind(&socket).unwrap();
            let decided: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
            let (d2, me) = (Arc::clone(&decided), me.to_string());
            std::thread::spawn(move || {
                config_schema::ctl_server::serve(
                    listener,
                    config_schema::ctl_server::Policy::fencing_for_this_test(),
                    move |req| {
                        let mut d = d2.lock().unwrap();
                        match req {
                            Request::Highest { vm, .. } => {
                                let top = d.iter().filter(|x| x.0 == vm).max_by_key(|x| x.1);
                                Response::Highest {
                                    vm,
                                    generation: top.map_or(0, |x| x.1),
                                    owner: top.map(|x| x.2.clone()),
                                    config_generation: 1,
                                }
                            }
                            Request::Acquire { vm, generation, .. } => {
                                let owner = match d.iter().find(|x| x.0 == vm && x.1 == generation)
                                {
                                    Some(x) => x.2.clone(),
                                    None => {
                                        d.push((vm.clone(), generation, me.clone()));
                                        me.clone()
                                    }
                                };
                                Response::Decided {
                                    vm,
                                    generation,
                                    won: owner == me,
                                    owner,
                                    config_generation: 1,
                                    storage_cut: false,
                                }
                            }
                            Request::Leases => Response::Leases {
                                leases: Vec::new(),
                                renewal_complete_ms: None,
                            },
                            other => Response::Error {
                                message: format!("not served: {other:?}"),
                            },
                        }
                    },
                )
            });
            OneHostFencing { socket, decided }
        }

        fn decided(&self) -> Vec<(String, u64, String)> {
            self.decided.lock().unwrap().clone()
        }
    }

    #[test]
    fn an_iscsi_lun_is_found_by_its_session() {
        use config_schema::iscsi_block::fake;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config();
        let target = "iqn.2026-01.test.ftappliance:shared";
        cfg.config.storage.device = DeviceLocator::Iscsi(config_schema::IscsiLun {
            portal: "10.0.2.100:3260".into(),
            target: target.into(),
            lun: 1,
            tpgt: 1,
            initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
            chap: None,
        });
        let mut m = VmManager::new(cfg.clone(), Members::new(HostGrant::always()));
        m.sys_block = dir.path().join("block");
        let vm = &cfg.config.vms[0].name;
        let err = m.spec_for(vm).unwrap_err().to_string();
        assert!(err.contains("no iSCSI session to that target"), "{err}");
        fake::session(dir.path(), 1, target);
        fake::disk(dir.path(), "sdb", 2, 1, 0, 8);
        fake::disk(dir.path(), "sdc", 2, 1, 1, 8);
        let spec = m.spec_for(vm).unwrap();
        assert_eq!(spec.disk.unwrap().path, PathBuf::from("/dev/sdc"));
    }

    #[test]
    fn missing_shared_device_is_a_clear_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config();
        let mut m = VmManager::new(cfg.clone(), Members::new(HostGrant::always()));
        m.sys_block = dir.path().into();
        let err = m.spec_for(&cfg.config.vms[0].name).unwrap_err().to_string();
        assert!(err.contains("no block device with serial"), "{err}");
        assert!(matches!(
            m.stop(&cfg.config.vms[0].name),
            Err(ManagerError::NotRunning(_))
        ));
    }

    #[test]
    fn a_scsi_disk_is_found_by_its_vpd_page_0x80_serial() {
        // As tgt exports a LUN: no `serial` file, the serial right-aligned
        // in the 36 bytes of VPD page 0x80.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sda/device")).unwrap();
        let mut page = vec![0x00, 0x80, 0x00, 36];
        page.extend_from_slice(format!("{:>36}", "FTSHARED").as_bytes());
        std::fs::write(dir.path().join("sda/device/vpd_pg80"), &page).unwrap();
        assert_eq!(
            find_by_serial(dir.path(), "FTSHARED"),
            Some(PathBuf::from("/dev/sda"))
        );
        assert_eq!(find_by_serial(dir.path(), "SHARED"), None);
        page[1] = 0x83;
        std::fs::write(dir.path().join("sda/device/vpd_pg80"), &page).unwrap();
        assert_eq!(find_by_serial(dir.path(), "FTSHARED"), None);
    }
}
