//! A QEMU cluster for one test: a per-test directory (kept on failure), a
//! signed config disk per host made with the `config_schema` library, one
//! sparse shared storage file (attached directly, or on opt-in served over
//! NBD or iSCSI through a per-host storage path that tests can cut or
//! delay), the FT and VM hubs with a port per host (and the management hub
//! when the config gives hosts `mgmt` NICs), and the hosts themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config_schema::disk::{self, HEADER_LEN};
use config_schema::{keys, ClusterConfig};

use crate::error::{HarnessError, Result};
use crate::host::{Boot, Host, HostSpec, IscsiAttach, Nic, StorageNic, SHARED_SERIAL};
use crate::hub::Hub;
use crate::netns::NetnsTap;
use crate::paths::{appliance_iso, extract_boot_files, qemu_binary, workspace_root, BootFiles};
use crate::storage::iscsi::{initiator_iqn, TARGET_IQN};
use crate::storage::{IscsiStorage, NbdStorage, StoragePath, ISCSI_LUN};

/// Kernel command line baked into the ISO (mirrors `image/build.sh`); a
/// kernel+initrd boot starts from it and appends test options.
pub const APPLIANCE_CMDLINE: &str =
    "console=tty0 console=ttyS0,115200 panic=10 loglevel=4 no_timer_check";

/// Longest test name used in directory names: Unix socket paths under the
/// directory must stay below 108 bytes.
const MAX_NAME_IN_PATH: usize = 32;

/// A per-test directory under the system temp dir. It is deleted on drop
/// only if [`TestDir::pass`] was called, no panic is in flight and
/// `QEMU_TESTS_KEEP` is unset; otherwise it is kept and its path printed.
pub struct TestDir {
    name: String,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    passed: bool,
}

impl TestDir {
    pub fn new(test_name: &str) -> Result<TestDir> {
        let short: String = test_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(MAX_NAME_IN_PATH)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ft-{short}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("create test directory", e))?;
        let path = dir.path().to_owned();
        eprintln!("qemu-tests: {test_name}: files in {}", path.display());
        Ok(TestDir {
            name: test_name.to_owned(),
            dir: Some(dir),
            path,
            passed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the test as passed: the directory is deleted on drop.
    pub fn pass(&mut self) {
        self.passed = true;
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = !self.passed
            || std::thread::panicking()
            || std::env::var_os("QEMU_TESTS_KEEP").is_some();
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!(
                    "qemu-tests: {}: kept console logs and disks in {}",
                    self.name,
                    path.display()
                );
            }
        }
    }
}

/// The VM witness of [`Cluster::example_with_witness`]: a router's address
/// on the example's VM subnet (the clients use .200 and up, the VM .10).
pub const VM_WITNESS: &str = "198.51.100.254";

/// Where a cluster's config and keys come from.
#[derive(Debug, Clone)]
pub struct ClusterSource {
    /// The cluster TOML.
    pub config: PathBuf,
    /// PKCS#8 Ed25519 config-signing key.
    pub signing_key: PathBuf,
    /// Directory with `<host>.key` (64 hex digits) per host.
    pub host_keys: PathBuf,
}

impl ClusterSource {
    /// `examples/cluster.toml` with the development keys of `examples/dev-keys`.
    pub fn example() -> Self {
        let root = workspace_root();
        ClusterSource {
            config: root.join("examples/cluster.toml"),
            signing_key: root.join("examples/dev-keys/signing.pk8"),
            host_keys: root.join("examples/dev-keys/hosts"),
        }
    }
}

/// Builds a signed config disk image (1 MiB) for `host`.
pub fn make_config_disk(
    source: &ClusterSource,
    config: &ClusterConfig,
    host: &str,
) -> Result<Vec<u8>> {
    let fail = |reason: String| HarnessError::ConfigDisk {
        host: host.to_owned(),
        reason,
    };
    let pk8 = read(&source.signing_key)?;
    let signer = keys::load_signing_key(&pk8)
        .map_err(|e| fail(format!("{}: {e}", source.signing_key.display())))?;
    let key_path = source.host_keys.join(format!("{host}.key"));
    let host_key = keys::parse_hex_key(&String::from_utf8_lossy(&read(&key_path)?))
        .map_err(|e| fail(format!("{}: {e}", key_path.display())))?;
    disk::write_disk(config, host, &host_key, &signer).map_err(|e| fail(e.to_string()))
}

/// Flips one byte in the middle of the signed canonical config of a config
/// disk image, so its signature no longer verifies.
pub fn tamper_config_disk(image: &mut [u8]) -> Result<()> {
    let bad = |reason: &str| HarnessError::ConfigDisk {
        host: "?".into(),
        reason: reason.into(),
    };
    let len_bytes: [u8; 4] = image
        .get(12..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("image too short to tamper with"))?;
    let config_len = u32::from_le_bytes(len_bytes) as usize;
    if config_len == 0 || HEADER_LEN + config_len > image.len() {
        return Err(bad("config length out of range"));
    }
    image[HEADER_LEN + config_len / 2] ^= 0x01;
    Ok(())
}

/// The cluster config of `source`, validated, with `[test] hooks` set to
/// `hooks` when there are any.
pub fn load_config(source: &ClusterSource, hooks: &[&str]) -> Result<ClusterConfig> {
    let refused = |e: config_schema::ConfigError| HarnessError::ConfigDisk {
        host: "*".into(),
        reason: format!("{}: {e}", source.config.display()),
    };
    let text = std::fs::read_to_string(&source.config)
        .map_err(|e| HarnessError::io(format!("read {}", source.config.display()), e))?;
    let mut config = config_schema::parse(&text).map_err(refused)?.config;
    if !hooks.is_empty() {
        config.test = Some(config_schema::TestSection {
            hooks: hooks.iter().map(|h| h.to_string()).collect(),
        });
        config_schema::validate(&config).map_err(refused)?;
    }
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| HarnessError::io(format!("read {}", path.display()), e))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
}

/// The hosts of one cluster config, their disks and networks, for one test.
pub struct Cluster {
    // Field order is drop order: hosts die before their storage paths, the
    // paths before the NBD or iSCSI server, then the hubs; the directory
    // goes last.
    hosts: BTreeMap<String, Host>,
    storage_paths: BTreeMap<String, StoragePath>,
    nbd: Option<NbdStorage>,
    iscsi: Option<IscsiStorage>,
    /// The FT network (heartbeats, logging channel); one port per host.
    pub ft: Hub,
    /// The VM network (protected VMs' traffic, test clients); one port per host.
    pub vm: Hub,
    /// The management network (operators only): a port per host with
    /// `hosts[].mgmt`; `None` when no host has one.
    pub mgmt: Option<Hub>,
    config: ClusterConfig,
    iso: PathBuf,
    shared: PathBuf,
    disks: BTreeMap<String, PathBuf>,
    boot_files: Option<BootFiles>,
    dir: TestDir,
}

impl Cluster {
    /// `examples/cluster.toml` with the development keys.
    pub fn example(test_name: &str) -> Result<Cluster> {
        Cluster::new(test_name, &ClusterSource::example())
    }

    /// `examples/cluster.toml` with the development keys and `[cluster]
    /// vm_witness = VM_WITNESS`; the witness itself is
    /// [`Cluster::vm_witness_router`].
    pub fn example_with_witness(test_name: &str) -> Result<Cluster> {
        Cluster::example_edited(
            test_name,
            "[cluster]\n",
            &format!("[cluster]\nvm_witness = \"{VM_WITNESS}\"\n"),
        )
    }

    /// `examples/cluster.toml` with the development keys, its first `from`
    /// replaced by `to` (e.g. another failure timeout); an error if the
    /// example has no `from`.
    pub fn example_edited(test_name: &str, from: &str, to: &str) -> Result<Cluster> {
        let source = ClusterSource::example();
        let text = std::fs::read_to_string(&source.config)
            .map_err(|e| HarnessError::io(format!("read {}", source.config.display()), e))?;
        if !text.contains(from) {
            return Err(HarnessError::ConfigDisk {
                host: "*".into(),
                reason: format!("{}: no {from:?} to replace", source.config.display()),
            });
        }
        let with = text.replacen(from, to, 1);
        // Read once, into every host's config disk, by `with_hooks`.
        let dir = tempfile::tempdir().map_err(|e| HarnessError::io("create temp dir", e))?;
        let config = dir.path().join("cluster.toml");
        write(&config, with.as_bytes())?;
        Cluster::with_hooks(test_name, &ClusterSource { config, ..source }, &[])
    }

    /// `examples/cluster.toml` with the development keys, its signed config
    /// enabling the test `hooks` (`[test] hooks`, e.g. `vmctl`,
    /// `crash:heartbeat`): the only way a test hook is switched on.
    pub fn example_with_hooks(test_name: &str, hooks: &[&str]) -> Result<Cluster> {
        Cluster::with_hooks(test_name, &ClusterSource::example(), hooks)
    }

    /// Checks QEMU and the ISO are there, then writes a config disk per host,
    /// a sparse shared storage file of the configured size, and starts the
    /// two hubs. No host is booted yet.
    pub fn new(test_name: &str, source: &ClusterSource) -> Result<Cluster> {
        Cluster::with_hooks(test_name, source, &[])
    }

    /// [`Cluster::new`], with the signed config enabling the test `hooks`
    /// (none: the config as written).
    pub fn with_hooks(test_name: &str, source: &ClusterSource, hooks: &[&str]) -> Result<Cluster> {
        qemu_binary()?;
        let iso = appliance_iso()?;
        let config = load_config(source, hooks)?;
        let dir = TestDir::new(test_name)?;
        let mut disks = BTreeMap::new();
        for h in &config.hosts {
            let image = make_config_disk(source, &config, &h.name)?;
            let path = dir.path().join(format!("{}.config.img", h.name));
            write(&path, &image)?;
            disks.insert(h.name.clone(), path);
        }
        let shared = dir.path().join("shared.img");
        std::fs::File::create(&shared)
            .and_then(|f| f.set_len(config.storage.size_mib << 20))
            .map_err(|e| HarnessError::io(format!("create {}", shared.display()), e))?;
        let ft = Hub::new("ft", &dir.path().join("ft"))?;
        let vm = Hub::new("vm", &dir.path().join("vm"))?;
        let mgmt = match config.hosts.iter().any(|h| h.mgmt.is_some()) {
            true => Some(Hub::new("mgmt", &dir.path().join("mgmt"))?),
            false => None,
        };
        for h in &config.hosts {
            ft.add_stream_port(&h.name)?;
            vm.add_stream_port(&h.name)?;
            if let (Some(hub), Some(_)) = (&mgmt, &h.mgmt) {
                hub.add_stream_port(&h.name)?;
            }
        }
        Ok(Cluster {
            hosts: BTreeMap::new(),
            storage_paths: BTreeMap::new(),
            nbd: None,
            iscsi: None,
            ft,
            vm,
            mgmt,
            config,
            iso,
            shared,
            disks,
            boot_files: None,
            dir,
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn shared_storage(&self) -> &Path {
        &self.shared
    }

    /// Serves the shared storage with `qemu-nbd` and gives every config host
    /// its own [`StoragePath`] to it (sockets in `<dir>/storage/`); from now
    /// on [`Cluster::host_spec`] attaches the shared storage over NBD through
    /// the host's path. Call before booting. Idempotent.
    pub fn use_nbd_storage(&mut self) -> Result<()> {
        if self.nbd.is_some() {
            return Ok(());
        }
        self.refuse_second_server("NBD")?;
        let dir = self.dir().join("storage");
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let nbd = NbdStorage::start(&self.shared, &dir.join("nbd.sock"))?;
        let mut paths = BTreeMap::new();
        for h in &self.config.hosts {
            let path = nbd.path(&h.name, &dir.join(format!("{}.sock", h.name)))?;
            paths.insert(h.name.clone(), path);
        }
        self.storage_paths = paths;
        self.nbd = Some(nbd);
        Ok(())
    }

    /// Serves the shared storage as an iSCSI LUN with persistent
    /// reservations (Debian's `tgt`, see [`crate::storage::iscsi`]) whose unit
    /// serial number is the one the config's `storage.device` names, and gives
    /// every config host its own TCP [`StoragePath`] to it; from now on
    /// [`Cluster::host_spec`] attaches the shared storage as a passed-through
    /// SCSI LUN through the host's path, logged in with the host's own
    /// initiator name. Call before booting. Idempotent. Needs root, `tgt` and
    /// `qemu-block-extra`.
    pub fn use_iscsi_storage(&mut self) -> Result<()> {
        if self.iscsi.is_some() {
            return Ok(());
        }
        self.refuse_second_server("iSCSI")?;
        let serial = match &self.config.storage.device {
            config_schema::DeviceLocator::Serial(s) => s.clone(),
            config_schema::DeviceLocator::Path(_) | config_schema::DeviceLocator::Iscsi(_) => {
                SHARED_SERIAL.to_owned()
            }
        };
        let dir = self.dir().join("storage");
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let iscsi = IscsiStorage::start(&self.shared, &dir, &serial)?;
        let mut paths = BTreeMap::new();
        for h in &self.config.hosts {
            paths.insert(h.name.clone(), iscsi.path(&h.name)?);
        }
        self.storage_paths = paths;
        self.iscsi = Some(iscsi);
        Ok(())
    }

    fn refuse_second_server(&self, wanted: &str) -> Result<()> {
        let running = match (&self.nbd, &self.iscsi) {
            (Some(_), _) => "NBD",
            (_, Some(_)) => "iSCSI",
            _ => return Ok(()),
        };
        Err(HarnessError::ConfigDisk {
            host: "*".into(),
            reason: format!("shared storage is already served over {running}; cannot also serve it over {wanted}"),
        })
    }

    /// The iSCSI target (after [`Cluster::use_iscsi_storage`]).
    pub fn iscsi(&self) -> Option<&IscsiStorage> {
        self.iscsi.as_ref()
    }

    /// The storage path of `host` (after [`Cluster::use_nbd_storage`] or
    /// [`Cluster::use_iscsi_storage`]).
    pub fn storage_path(&self, host: &str) -> Result<&StoragePath> {
        self.storage_paths
            .get(host)
            .ok_or_else(|| HarnessError::ConfigDisk {
                host: host.to_owned(),
                reason: "no storage path: call Cluster::use_nbd_storage or use_iscsi_storage first"
                    .into(),
            })
    }

    /// The config disk file of `host` (tests may rewrite it before booting).
    pub fn config_disk(&self, host: &str) -> Result<&Path> {
        self.disks
            .get(host)
            .map(PathBuf::as_path)
            .ok_or_else(|| self.unknown(host))
    }

    fn unknown(&self, host: &str) -> HarnessError {
        HarnessError::ConfigDisk {
            host: host.to_owned(),
            reason: "no such host in the cluster config".into(),
        }
    }

    /// The spec [`Cluster::boot`] uses for `host`: ISO boot, its config disk,
    /// the shared storage (over its storage path after
    /// [`Cluster::use_nbd_storage`] or [`Cluster::use_iscsi_storage`]), its FT and VM NICs
    /// and its management NIC if it has one (MACs from the config), and the
    /// watchdog. Change it and pass it to [`Cluster::boot_spec`].
    pub fn host_spec(&self, host: &str) -> Result<HostSpec> {
        let h = self
            .config
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| self.unknown(host))?;
        let mut spec = HostSpec::new(host, Boot::Iso(self.iso.clone()), &self.dir().join(host));
        spec.config_disk = Some(self.config_disk(host)?.to_owned());
        spec.shared_storage = Some(self.shared.clone());
        match self.storage_paths.get(host) {
            // The appliance logs in itself: no disk of the shared storage,
            // a storage NIC whose portal leads to the host's path.
            Some(p) if self.iscsi.is_some() && self.appliance_logs_in() => {
                spec.shared_storage = None;
                spec.storage_nic = Some(self.storage_nic(h, p)?);
            }
            Some(p) if self.iscsi.is_some() => {
                spec.shared_storage_iscsi = Some(IscsiAttach {
                    portal: p.tcp_addr().expect("iSCSI storage paths are TCP"),
                    target: TARGET_IQN.to_owned(),
                    lun: ISCSI_LUN,
                    initiator: initiator_iqn(host),
                });
            }
            Some(p) => spec.shared_storage_nbd = Some(p.socket().to_owned()),
            None => {}
        }
        spec.nics = vec![
            Nic {
                mac: h.ft.mac.clone(),
                socket: self.ft.socket_path(host)?,
            },
            Nic {
                mac: h.vm.mac.clone(),
                socket: self.vm.socket_path(host)?,
            },
        ];
        if let (Some(m), Some(hub)) = (&h.mgmt, &self.mgmt) {
            spec.nics.push(Nic {
                mac: m.mac.clone(),
                socket: hub.socket_path(host)?,
            });
        }
        Ok(spec)
    }

    /// A kernel+initrd boot of the appliance with [`APPLIANCE_CMDLINE`] plus
    /// `extra_cmdline` (kernel and initramfs extracted from the ISO once).
    pub fn kernel_boot(&mut self, extra_cmdline: &str) -> Result<Boot> {
        if self.boot_files.is_none() {
            let dir = self.dir().join("boot");
            std::fs::create_dir_all(&dir)
                .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
            self.boot_files = Some(extract_boot_files(&self.iso, &dir)?);
        }
        let files = self.boot_files.as_ref().expect("set above");
        Ok(Boot::Kernel {
            kernel: files.kernel.clone(),
            initrd: files.initrd.clone(),
            append: format!("{APPLIANCE_CMDLINE} {extra_cmdline}")
                .trim()
                .to_owned(),
        })
    }

    /// A UEFI boot of the appliance ISO (OVMF firmware, then GRUB).
    pub fn uefi_boot(&self) -> Result<Boot> {
        Ok(Boot::IsoUefi {
            iso: self.iso.clone(),
            firmware: crate::paths::ovmf_firmware()?,
        })
    }

    /// The appliance ISO this cluster boots.
    pub fn iso(&self) -> &Path {
        &self.iso
    }

    /// Whether the config names the shared device as an iSCSI LUN the
    /// appliance logs in to itself (then [`Cluster::use_iscsi_storage`]
    /// serves it and hosts reach it through a [`StorageNic`]).
    pub fn appliance_logs_in(&self) -> bool {
        matches!(
            self.config.storage.device,
            config_schema::DeviceLocator::Iscsi(_)
        )
    }

    /// `h`'s storage NIC: its `hosts[].storage` MAC, the config's portal
    /// forwarded to the host's storage path `p`.
    fn storage_nic(&self, h: &config_schema::Host, p: &StoragePath) -> Result<StorageNic> {
        let bad = |reason: String| HarnessError::ConfigDisk {
            host: h.name.clone(),
            reason,
        };
        let config_schema::DeviceLocator::Iscsi(lun) = &self.config.storage.device else {
            return Err(bad("the shared device is not an iSCSI LUN".into()));
        };
        let nic = h
            .storage
            .as_ref()
            .ok_or_else(|| bad("no hosts[].storage NIC in the config".into()))?;
        if crate::paths::find_in_path("socat").is_none() {
            return Err(HarnessError::ToolMissing {
                program: "socat",
                package: "socat",
            });
        }
        Ok(StorageNic {
            mac: nic.mac.clone(),
            portal: lun.portal_addr().map_err(|e| bad(e.to_string()))?,
            forward_to: p
                .tcp_addr()
                .ok_or_else(|| bad("its storage path is not TCP".into()))?,
        })
    }

    /// Boots `host` the standard way. A host of that name that is already
    /// there (running or killed) is dropped first.
    pub fn boot(&mut self, host: &str) -> Result<&Host> {
        let spec = self.host_spec(host)?;
        self.boot_spec(spec)
    }

    /// Boots a host from a (modified) spec, registered under `spec.name`.
    pub fn boot_spec(&mut self, spec: HostSpec) -> Result<&Host> {
        let name = spec.name.clone();
        drop(self.hosts.remove(&name));
        let host = Host::spawn(spec)?;
        Ok(self.hosts.entry(name).or_insert(host))
    }

    /// Boots every host of the config (all at once).
    pub fn boot_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.config.hosts.iter().map(|h| h.name.clone()).collect();
        for n in names {
            self.boot(&n)?;
        }
        Ok(())
    }

    /// A booted host.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .get(name)
            .ok_or_else(|| HarnessError::ConfigDisk {
                host: name.to_owned(),
                reason: "host not booted".into(),
            })
    }

    /// Booted hosts, by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// Joins a test client to the VM network: a TAP device with address
    /// `cidr` (use 198.51.100.200/24 and up) in a fresh network namespace,
    /// on a new VM hub port named `port`. Needs root.
    pub fn vm_client(&self, port: &str, cidr: &str) -> Result<NetnsTap> {
        let netns = format!("ftc-{}-{port}", std::process::id());
        NetnsTap::attach(&self.vm, port, &netns, cidr, None)
    }

    /// Joins the VM witness of [`Cluster::example_with_witness`] to the VM
    /// network: a router at [`VM_WITNESS`] (answering pings) on a VM hub
    /// port of its own, `router`, so cutting a host's port cuts it from
    /// the witness too. Dropping it takes the witness away. Needs root.
    pub fn vm_witness_router(&self) -> Result<NetnsTap> {
        self.vm_client("router", &format!("{VM_WITNESS}/24"))
    }

    /// Marks the test as passed: its directory is deleted when the cluster drops.
    pub fn pass(&mut self) {
        self.dir.pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_config() -> ClusterConfig {
        let text = std::fs::read_to_string(ClusterSource::example().config).unwrap();
        config_schema::parse(&text).unwrap().config
    }

    #[test]
    fn example_disks_verify_and_tampering_breaks_the_signature() {
        let src = ClusterSource::example();
        let config = example_config();
        let public = std::fs::read(workspace_root().join("examples/dev-keys/signing.pub")).unwrap();
        for h in &config.hosts {
            let mut image = make_config_disk(&src, &config, &h.name).unwrap();
            let ok = disk::read_disk(&image, &public).unwrap();
            assert_eq!(ok.host_name, h.name);
            tamper_config_disk(&mut image).unwrap();
            let err = match disk::read_disk(&image, &public) {
                Ok(_) => panic!("tampered disk of {} accepted", h.name),
                Err(e) => e,
            };
            assert!(err.to_string().contains("signature"), "{err}");
        }
    }

    #[test]
    fn test_hooks_go_into_the_signed_config() {
        let src = ClusterSource::example();
        let config = load_config(&src, &["vmctl", "crash:heartbeat"]).unwrap();
        let public = std::fs::read(workspace_root().join("examples/dev-keys/signing.pub")).unwrap();
        let image = make_config_disk(&src, &config, "host-a").unwrap();
        let signed = disk::read_disk(&image, &public).unwrap().config;
        assert_eq!(
            config_schema::hooks::list(&signed.test_hooks()),
            "vmctl, crash:heartbeat"
        );
        assert!(load_config(&src, &[]).unwrap().test.is_none());
        let err = load_config(&src, &["ft.test=vmctl"]).unwrap_err();
        assert!(err.to_string().contains("unknown test hook"), "{err}");
    }

    #[test]
    fn unknown_host_is_refused() {
        let err =
            make_config_disk(&ClusterSource::example(), &example_config(), "host-z").unwrap_err();
        assert!(err.to_string().contains("host-z"), "{err}");
    }

    #[test]
    fn test_dir_is_kept_unless_passed() {
        let kept = TestDir::new("kept/unit test").unwrap();
        let kept_path = kept.path().to_owned();
        assert!(kept_path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("ft-kept-unit-test-"));
        drop(kept);
        assert!(kept_path.is_dir());
        std::fs::remove_dir_all(&kept_path).unwrap();

        let mut passed = TestDir::new("passed").unwrap();
        passed.pass();
        let passed_path = passed.path().to_owned();
        drop(passed);
        if std::env::var_os("QEMU_TESTS_KEEP").is_none() {
            assert!(!passed_path.exists());
        }
    }
}
