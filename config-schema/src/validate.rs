//! Validation of a cluster config: everything the type system cannot say.
//!
//! [`parse`] reads TOML (toml's own errors, such as an unknown field or a wrong
//! type, keep their line and column) and then runs [`validate`]. Every problem
//! names the field path as it appears in the file, e.g. `hosts[1].ft.addr`
//! (indices are 0-based, in file order). The first problem found is returned.
//!
//! Some things are allowed but worth saying: a VM whose affinity allows fewer
//! than two hosts cannot have a Secondary on another host, so it runs
//! unprotected. That is a [`Warning`], not an error. So are hosts whose FT
//! addresses are not on one subnet (`validate_net.rs`). So is a `[test]` section:
//! test hooks are allowed, but such a config is for tests only, and the
//! warning says so loudly.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use crate::hooks::TestHook;
use crate::model::{ClusterConfig, DeviceLocator, Interface, MAX_SLOT};

/// Largest memory a protected VM may ask for: 3 GiB, what ftvmm can map below
/// the virtio-mmio window at 0xd000_0000 (`ftvmm::vm::MAX_MEM_SIZE` is tied to
/// it at compile time). It was 1 TiB, so a config could pass `check` and
/// never run.
pub const MAX_VM_MEMORY_MIB: u32 = 3 << 10;
/// Longest host, group, region, VM or cluster name.
pub const MAX_NAME_LEN: usize = 63;
/// Host ids are 1..=MAX_HOST_ID (they are slots in the fencing area).
pub const MAX_HOST_ID: u32 = 255;

/// A config accepted by validation, with the warnings it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub config: ClusterConfig,
    pub warnings: Vec<Warning>,
}

/// Something allowed but probably not what the operator wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Field path, e.g. `vms[0].affinity`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse into the schema (syntax, unknown field, wrong
    /// type, missing field). The message carries line and column.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// The config parsed but breaks a rule.
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

impl ConfigError {
    fn at(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// The field path for rule violations (`None` for TOML errors).
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            ConfigError::Toml(_) => None,
        }
    }
}

/// Parses and validates a TOML cluster config.
pub fn parse(toml_text: &str) -> Result<Validated, ConfigError> {
    let config: ClusterConfig = toml::from_str(toml_text)
        .map_err(|e| bad_power(toml_text).unwrap_or(ConfigError::Toml(e)))?;
    let warnings = validate(&config)?;
    Ok(Validated { config, warnings })
}

/// A bad `vms[i].power` (a TOML error) as a rule violation naming the field
/// and the VM: toml's own "unknown variant `maybe`" gives a line but neither.
fn bad_power(toml_text: &str) -> Option<ConfigError> {
    let table: toml::Table = toml_text.parse().ok()?;
    let vms = table.get("vms")?.as_array()?;
    vms.iter().enumerate().find_map(|(i, vm)| {
        let power = vm.get("power")?;
        if matches!(power.as_str(), Some("on" | "off")) {
            return None;
        }
        let name = vm.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        Some(ConfigError::at(
            format!("vms[{i}].power"),
            format!("VM {name:?}: {power} is neither \"on\" nor \"off\""),
        ))
    })
}

/// Validates an already typed config; returns its warnings.
pub fn validate(c: &ClusterConfig) -> Result<Vec<Warning>, ConfigError> {
    validate_with(c, Pins::Required)
}

/// Validates a config whose `[[images]]` parts may still be unpinned
/// (blank `size_bytes` and `sha256`): what `ftctl image write` reads before
/// it writes the files and prints their pins. Never sign such a config.
pub fn validate_unpinned(c: &ClusterConfig) -> Result<Vec<Warning>, ConfigError> {
    validate_with(c, Pins::Optional)
}

fn validate_with(c: &ClusterConfig, pins: Pins) -> Result<Vec<Warning>, ConfigError> {
    let mut warnings = Vec::new();
    check_cluster(c)?;
    check_timing(c)?;
    check_storage(c)?;
    check_hosts(c)?;
    iscsi::check_portal_reach(c)?;
    net::check_mgmt_subnets(c)?;
    net::check_ft_subnets(c, &mut warnings);
    witness::check_vm_witness(c, &mut warnings)?;
    check_groups(c)?;
    vm::check_images(c, pins)?;
    check_vms(c, &mut warnings)?;
    check_test(c, &mut warnings)?;
    operators::check_operators(c)?;
    if c.cluster.accept_soft_watchdog {
        warnings.push(Warning {
            path: "cluster.accept_soft_watchdog".into(),
            message: "hosts without a hardware watchdog (only softdog, or none) may go live: \
                      such a host whose kernel hangs is not reset, and a VM could run on two \
                      hosts; for test clusters only"
                .into(),
        });
    }
    Ok(warnings)
}

/// Checks a name (host, group, region, VM, image, cluster): non-empty, at
/// most [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 - _ .`, not starting with `.`.
pub fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::at(path, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ConfigError::at(
            path,
            format!("{name:?} is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    // Names end up in file names (`hosts/<name>.key`, guest images) and on the
    // console: keep them to a safe alphabet.
    let ok_char = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.');
    if !name.chars().all(ok_char) || name.starts_with('.') {
        return Err(ConfigError::at(
            path,
            format!("{name:?} may use only A-Z a-z 0-9 - _ . and must not start with '.'"),
        ));
    }
    Ok(())
}

fn check_cluster(c: &ClusterConfig) -> Result<(), ConfigError> {
    check_name("cluster.name", &c.cluster.name)?;
    check_cpu(&c.cluster.cpu)
}

/// MAXPHYADDR bounds: guest memory and the virtio window need 32 bits; the
/// architecture allows at most 52.
const PHYS_ADDR_BITS: std::ops::RangeInclusive<u8> = 36..=52;

fn check_cpu(cpu: &crate::model::CpuBaseline) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, f) in cpu.features.iter().enumerate() {
        if !seen.insert(*f) {
            return Err(ConfigError::at(
                format!("cluster.cpu.features[{i}]"),
                format!("{:?} is listed twice", f.name()),
            ));
        }
    }
    if !PHYS_ADDR_BITS.contains(&cpu.phys_addr_bits) {
        return Err(ConfigError::at(
            "cluster.cpu.phys_addr_bits",
            format!(
                "{} is outside {}..={}",
                cpu.phys_addr_bits,
                PHYS_ADDR_BITS.start(),
                PHYS_ADDR_BITS.end()
            ),
        ));
    }
    Ok(())
}

fn check_timing(c: &ClusterConfig) -> Result<(), ConfigError> {
    let t = &c.timing;
    if t.heartbeat_interval_ms == 0 {
        return Err(ConfigError::at(
            "timing.heartbeat_interval_ms",
            "must be greater than 0",
        ));
    }
    if t.failure_timeout_ms <= t.heartbeat_interval_ms {
        return Err(ConfigError::at(
            "timing.failure_timeout_ms",
            format!(
                "{} ms must be larger than timing.heartbeat_interval_ms ({} ms)",
                t.failure_timeout_ms, t.heartbeat_interval_ms
            ),
        ));
    }
    if t.lag_limit_ms == 0 {
        return Err(ConfigError::at(
            "timing.lag_limit_ms",
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// A half-open MiB range with the path that defined it.
struct Span {
    path: String,
    start: u64,
    end: u64,
}

fn check_storage(c: &ClusterConfig) -> Result<(), ConfigError> {
    let s = &c.storage;
    let (kind, value) = match &s.device {
        DeviceLocator::Serial(v) => ("serial", v),
        DeviceLocator::Path(v) => ("path", v),
        DeviceLocator::Iscsi(lun) => {
            iscsi::check_lun(lun)?;
            ("iscsi", &lun.target)
        }
    };
    if value.trim().is_empty() {
        return Err(ConfigError::at(
            format!("storage.device.{kind}"),
            "must not be empty",
        ));
    }
    if let DeviceLocator::Path(p) = &s.device {
        if !p.starts_with("/dev/") {
            return Err(ConfigError::at(
                "storage.device.path",
                format!("{p:?} is not under /dev/"),
            ));
        }
    }
    if s.size_mib == 0 {
        return Err(ConfigError::at(
            "storage.size_mib",
            "must be greater than 0",
        ));
    }
    let mut spans: Vec<Span> = Vec::new();
    let mut add = |path: String, offset: u64, size: u64| -> Result<(), ConfigError> {
        if size == 0 {
            return Err(ConfigError::at(
                format!("{path}.size_mib"),
                "must be greater than 0",
            ));
        }
        let end = offset.checked_add(size).filter(|&e| e <= s.size_mib);
        let Some(end) = end else {
            return Err(ConfigError::at(
                path,
                format!(
                    "offset {offset} MiB + size {size} MiB runs past storage.size_mib ({} MiB)",
                    s.size_mib
                ),
            ));
        };
        if let Some(other) = spans.iter().find(|o| offset < o.end && o.start < end) {
            return Err(ConfigError::at(
                path,
                format!(
                    "[{offset}, {end}) MiB overlaps {} [{}, {}) MiB",
                    other.path, other.start, other.end
                ),
            ));
        }
        spans.push(Span {
            path,
            start: offset,
            end,
        });
        Ok(())
    };
    add(
        "storage.fencing".into(),
        s.fencing.offset_mib,
        s.fencing.size_mib,
    )?;
    let mut names = HashMap::new();
    for (i, r) in s.regions.iter().enumerate() {
        let path = format!("storage.regions[{i}]");
        check_name(&format!("{path}.name"), &r.name)?;
        if let Some(j) = names.insert(r.name.as_str(), i) {
            return Err(ConfigError::at(
                format!("{path}.name"),
                format!("{:?} is already used by storage.regions[{j}]", r.name),
            ));
        }
        if r.offset_mib == 0 {
            // The guest writes its region from its first sector: at offset 0 it
            // could write a config-disk magic where every rebooting host looks
            // for its config disk.
            return Err(ConfigError::at(
                format!("{path}.offset_mib"),
                "a VM disk region must not start at offset 0 of the shared device (hosts \
                 probe the first bytes of every disk for a config disk): start it at 1 MiB or later",
            ));
        }
        add(path, r.offset_mib, r.size_mib)?;
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case) into bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses `a.b.c.d/prefix` (prefix 0..=32).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = p.parse().ok()?;
    (prefix <= 32).then_some((addr, prefix))
}

/// Parses a 32-byte key written as 64 hex digits.
pub fn parse_key_hex(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

fn check_mac(path: &str, mac: &str) -> Result<[u8; 6], ConfigError> {
    let m = parse_mac(mac).ok_or_else(|| {
        ConfigError::at(
            path,
            format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    })?;
    if m[0] & 1 == 1 {
        return Err(ConfigError::at(
            path,
            format!("{mac:?} is a multicast address, not a NIC's"),
        ));
    }
    Ok(m)
}

fn check_cidr(path: &str, addr: &str) -> Result<Ipv4Addr, ConfigError> {
    let (ip, _) = parse_cidr(addr).ok_or_else(|| {
        ConfigError::at(
            path,
            format!("{addr:?} is not an IPv4 address with prefix (a.b.c.d/nn)"),
        )
    })?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(ConfigError::at(
            path,
            format!("{ip} cannot be a NIC's address"),
        ));
    }
    Ok(ip)
}

/// Tracks a value that must be unique across the config and who holds it.
struct Unique<T> {
    what: &'static str,
    seen: HashMap<T, String>,
}

impl<T: std::hash::Hash + Eq> Unique<T> {
    fn new(what: &'static str) -> Self {
        Unique {
            what,
            seen: HashMap::new(),
        }
    }

    fn insert(&mut self, key: T, path: &str, shown: &str) -> Result<(), ConfigError> {
        if let Some(first) = self.seen.get(&key) {
            return Err(ConfigError::at(
                path,
                format!("duplicate {} {shown}: already used by {first}", self.what),
            ));
        }
        self.seen.insert(key, path.to_string());
        Ok(())
    }
}

/// The MACs and IPv4 addresses of hosts (every NIC: FT, VM, management,
/// storage) and VMs must all be distinct.
struct NetIds {
    macs: Unique<[u8; 6]>,
    ips: Unique<Ipv4Addr>,
}

impl NetIds {
    fn iface(&mut self, path: &str, i: &Interface) -> Result<(), ConfigError> {
        let mac_path = format!("{path}.mac");
        let mac = check_mac(&mac_path, &i.mac)?;
        self.macs.insert(mac, &mac_path, &i.mac)?;
        let addr_path = format!("{path}.addr");
        let ip = check_cidr(&addr_path, &i.addr)?;
        self.ips.insert(ip, &addr_path, &ip.to_string())
    }
}

fn host_net_ids(c: &ClusterConfig) -> Result<NetIds, ConfigError> {
    let mut n = NetIds {
        macs: Unique::new("MAC"),
        ips: Unique::new("address"),
    };
    for (i, h) in c.hosts.iter().enumerate() {
        n.iface(&format!("hosts[{i}].ft"), &h.ft)?;
        n.iface(&format!("hosts[{i}].vm"), &h.vm)?;
        if let Some(m) = &h.mgmt {
            n.iface(&format!("hosts[{i}].mgmt"), m)?;
        }
        if let Some(s) = &h.storage {
            n.iface(&format!("hosts[{i}].storage"), s)?;
        }
    }
    Ok(n)
}

fn check_hosts(c: &ClusterConfig) -> Result<(), ConfigError> {
    if c.hosts.is_empty() {
        return Err(ConfigError::at("hosts", "at least 1 host is required"));
    }
    let mut ids = Unique::new("host id");
    let mut names = Unique::new("host name");
    let mut keys = Unique::new("public key");
    for (i, h) in c.hosts.iter().enumerate() {
        let p = format!("hosts[{i}]");
        if h.id == 0 || h.id > MAX_HOST_ID {
            return Err(ConfigError::at(
                format!("{p}.id"),
                format!("{} is out of range 1..={MAX_HOST_ID}", h.id),
            ));
        }
        ids.insert(h.id, &format!("{p}.id"), &h.id.to_string())?;
        check_name(&format!("{p}.name"), &h.name)?;
        names.insert(h.name.as_str(), &format!("{p}.name"), &h.name)?;
        let kp = format!("{p}.public_key");
        let key = parse_key_hex(&h.public_key)
            .ok_or_else(|| ConfigError::at(&kp, "must be a 32-byte X25519 key as 64 hex digits"))?;
        keys.insert(key, &kp, &h.public_key)?;
    }
    iscsi::check_storage_nics_present(c)?;
    host_net_ids(c)?;
    Ok(())
}

fn check_groups(c: &ClusterConfig) -> Result<(), ConfigError> {
    let hosts: BTreeSet<&str> = c.hosts.iter().map(|h| h.name.as_str()).collect();
    let mut names = Unique::new("group name");
    for (i, g) in c.host_groups.iter().enumerate() {
        let p = format!("host_groups[{i}]");
        check_name(&format!("{p}.name"), &g.name)?;
        names.insert(g.name.as_str(), &format!("{p}.name"), &g.name)?;
        for (j, h) in g.hosts.iter().enumerate() {
            if !hosts.contains(h.as_str()) {
                return Err(ConfigError::at(
                    format!("{p}.hosts[{j}]"),
                    format!("unknown host {h:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// The hosts a VM may run on: the union of `affinity.hosts` and the hosts of
/// `affinity.groups`; an empty rule (both lists empty) means every host.
/// Unknown names are skipped here; [`validate`] refuses them.
pub fn allowed_hosts<'a>(c: &'a ClusterConfig, vm: &crate::model::Vm) -> BTreeSet<&'a str> {
    let a = &vm.affinity;
    if a.hosts.is_empty() && a.groups.is_empty() {
        return c.hosts.iter().map(|h| h.name.as_str()).collect();
    }
    let mut out = BTreeSet::new();
    for h in &c.hosts {
        if a.hosts.contains(&h.name) {
            out.insert(h.name.as_str());
        }
    }
    for g in c.host_groups.iter().filter(|g| a.groups.contains(&g.name)) {
        for name in &g.hosts {
            if let Some(h) = c.hosts.iter().find(|h| &h.name == name) {
                out.insert(h.name.as_str());
            }
        }
    }
    out
}

/// [`allowed_hosts`] as names in the config's `hosts` order (what
/// `ConfigApplied` carries, and a VM added live keeps as its rule).
pub fn allowed_in_order(c: &ClusterConfig, vm: &crate::model::Vm) -> Vec<String> {
    let allowed = allowed_hosts(c, vm);
    (c.hosts.iter())
        .filter(|h| allowed.contains(h.name.as_str()))
        .map(|h| h.name.clone())
        .collect()
}

fn check_vms(c: &ClusterConfig, warnings: &mut Vec<Warning>) -> Result<(), ConfigError> {
    let mut net = host_net_ids(c)?;
    let host_names: BTreeSet<&str> = c.hosts.iter().map(|h| h.name.as_str()).collect();
    let group_names: BTreeSet<&str> = c.host_groups.iter().map(|g| g.name.as_str()).collect();
    let region_names: BTreeSet<&str> = c.storage.regions.iter().map(|r| r.name.as_str()).collect();
    let mut names = Unique::new("VM name");
    let mut regions = Unique::new("disk region");
    let mut slots = Unique::new("fencing slot");
    // The region's blocks are the device's physical block size, known only
    // on the host: 512 bytes is the most it can hold, 4 KiB a common
    // device's.
    let fencing = c.storage.fencing.size_mib;
    let (most, on_4k) = (c.fencing_slots(512), c.fencing_slots(4096));
    for (i, vm) in c.vms.iter().enumerate() {
        let p = format!("vms[{i}]");
        check_name(&format!("{p}.name"), &vm.name)?;
        names.insert(vm.name.as_str(), &format!("{p}.name"), &vm.name)?;
        // A VM without `slot` takes its position: say so where it clashes.
        let (sp, slot) = match vm.slot {
            Some(s) => (format!("{p}.slot"), s),
            None => (format!("{p} (no slot: its position)"), i as u32),
        };
        if slot > MAX_SLOT {
            return Err(ConfigError::at(
                &sp,
                format!("fencing slot {slot} is out of range 0..={MAX_SLOT}"),
            ));
        }
        slots.insert(slot, &sp, &slot.to_string())?;
        if slot >= most {
            return Err(ConfigError::at(
                &sp,
                format!(
                    "fencing slot {slot}: storage.fencing ({fencing} MiB) holds {most} VM slots \
                     for {} hosts even with 512-byte blocks; give the VM a lower slot or \
                     enlarge storage.fencing",
                    c.hosts.len()
                ),
            ));
        }
        if slot >= on_4k {
            warnings.push(Warning {
                path: sp.clone(),
                message: format!(
                    "fencing slot {slot}: on a device with 4 KiB physical blocks storage.fencing \
                     ({fencing} MiB) holds {on_4k} VM slots for {} hosts, and fencing refuses \
                     this VM there",
                    c.hosts.len()
                ),
            });
        }
        if vm.memory_mib == 0 || vm.memory_mib > MAX_VM_MEMORY_MIB {
            return Err(ConfigError::at(
                format!("{p}.memory_mib"),
                format!(
                    "{} MiB is out of range 1..={MAX_VM_MEMORY_MIB}",
                    vm.memory_mib
                ),
            ));
        }
        vm::check_vm_runtime(c, &p, vm)?;
        let rp = format!("{p}.disk_region");
        if !region_names.contains(vm.disk_region.as_str()) {
            return Err(ConfigError::at(
                &rp,
                format!("unknown storage region {:?}", vm.disk_region),
            ));
        }
        regions.insert(vm.disk_region.as_str(), &rp, &vm.disk_region)?;
        let mp = format!("{p}.mac");
        let mac = check_mac(&mp, &vm.mac)?;
        net.macs.insert(mac, &mp, &vm.mac)?;
        let ip_path = format!("{p}.ip");
        let ip = check_cidr(&ip_path, &vm.ip)?;
        net.ips.insert(ip, &ip_path, &ip.to_string())?;
        for (j, h) in vm.affinity.hosts.iter().enumerate() {
            if !host_names.contains(h.as_str()) {
                return Err(ConfigError::at(
                    format!("{p}.affinity.hosts[{j}]"),
                    format!("unknown host {h:?}"),
                ));
            }
        }
        for (j, g) in vm.affinity.groups.iter().enumerate() {
            if !group_names.contains(g.as_str()) {
                return Err(ConfigError::at(
                    format!("{p}.affinity.groups[{j}]"),
                    format!("unknown host group {g:?}"),
                ));
            }
        }
        let allowed = allowed_hosts(c, vm);
        let list = allowed.iter().copied().collect::<Vec<_>>().join(", ");
        match allowed.len() {
            0 => {
                return Err(ConfigError::at(
                    format!("{p}.affinity"),
                    "allows no host (its groups are empty)",
                ))
            }
            1 => warnings.push(Warning {
                path: format!("{p}.affinity"),
                message: format!(
                    "VM {} will run unprotected: its affinity allows only {list}",
                    vm.name
                ),
            }),
            _ => {}
        }
    }
    Ok(())
}

/// `[test] hooks`: known hooks, each once, at least one; and a loud warning.
fn check_test(c: &ClusterConfig, warnings: &mut Vec<Warning>) -> Result<(), ConfigError> {
    let Some(t) = &c.test else {
        return Ok(());
    };
    if t.hooks.is_empty() {
        return Err(ConfigError::at(
            "test.hooks",
            "is empty; remove the [test] section to enable no test hook",
        ));
    }
    let mut seen = Unique::new("test hook");
    let mut hooks = Vec::new();
    for (i, name) in t.hooks.iter().enumerate() {
        let p = format!("test.hooks[{i}]");
        let hook: TestHook = name
            .parse()
            .map_err(|e: crate::hooks::HookError| ConfigError::at(&p, e.to_string()))?;
        seen.insert(hook.clone(), &p, name)?;
        hooks.push(hook);
    }
    let effects: Vec<String> = hooks.iter().map(TestHook::effect).collect();
    warnings.push(Warning {
        path: "test.hooks".into(),
        message: format!(
            "TEST HOOKS ENABLED ({}): this config is for tests only, NOT FOR PRODUCTION: {}",
            crate::hooks::list(&hooks),
            effects.join("; ")
        ),
    });
    Ok(())
}

#[path = "validate_net.rs"]
mod net;

#[path = "validate_vm.rs"]
mod vm;

#[path = "validate_witness.rs"]
mod witness;

#[path = "validate_iscsi.rs"]
mod iscsi;
pub use iscsi::{iscsi_name_problem, MAX_CHAP, MAX_ISCSI_NAME, MAX_LUN, MIN_CHAP_SECRET};

#[path = "validate_operators.rs"]
mod operators;
pub use operators::{no_operators_warning, MAX_OPERATORS};
pub use vm::{resolve_image, ImageRef, Pins, EPOCH_MS, MAX_CHECKPOINT_VCPUS, MAX_CMDLINE};

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "validate_mgmt_tests.rs"]
mod mgmt_tests;

#[cfg(test)]
#[path = "validate_iscsi_tests.rs"]
mod iscsi_tests;
