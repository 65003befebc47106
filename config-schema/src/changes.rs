//! What a newer config changes, and whether a running host takes each change
//! live or needs a reboot (`ftctl apply`'s one line per host).
//!
//! The diff walks both configs as JSON: objects by field, lists of named
//! entries (`hosts`, `vms`, `operators`, ...) by `name`, so a change reads
//! `vms[kv].power` or `timing.heartbeat_interval_ms`.
//!
//! Rule: a change is live only when the running daemons really re-read it;
//! everything else needs a reboot. Today that is [`LIVE`]:
//! - the `[[operators]]` list: the status service switches to the new list
//!   at once;
//! - a VM's `power` (`vms[NAME].power`): heartbeat's status service tells
//!   ftvmm (`ctl::Request::ConfigApplied`) as soon as the config is
//!   persisted, and ftvmm powers the VM off (a Primary first wins the VM's
//!   next generation on shared storage, so that no Secondary can go live,
//!   then stops; a Secondary or standby just stops) or on (as at boot).
//!   A VM removed is not a power change and needs a reboot.
//! - a VM added (`vms[NAME] added`), with the regions and `[[images]]`
//!   entries only added VMs use: ftvmm takes the VM into the config it
//!   runs (`crate::live_add`: its slot, disk region and image from the
//!   newer config) and starts it as at boot when it is on; its line says
//!   why not when the running config cannot take it (a region that
//!   overlaps one in use, a slot another VM of the running config holds).
//! - a VM's `affinity` (`vms[NAME].affinity`) and `host_groups` (they only
//!   serve affinity): `ConfigApplied` carries the hosts each VM may run on,
//!   resolved, and ftvmm moves the VM's members to them
//!   (`ftvmm/src/lockstep/live_affinity.rs`): a Secondary or standby on a
//!   host no longer allowed stops, a host newly allowed waits as a standby,
//!   the keeper places a new Secondary among the allowed hosts, and a
//!   Primary on a host no longer allowed hands the VM over to its Secondary
//!   once that one runs on an allowed host and is in lockstep.
//! - `timing.failure_timeout_ms` and `timing.lag_limit_ms`, and
//!   `timing.heartbeat_interval_ms` when fencing's lease renewal stays the
//!   same: heartbeat takes them at once, ftvmm with the power list
//!   (`ConfigApplied`'s `timing`); why each is safe to adopt in any order
//!   is [`crate::timing_live`]. A heartbeat interval that moves the lease
//!   renewal needs a reboot, and its line says why. Timing lines carry the
//!   old and new values.
//!
//! The daemons (ftvmm, fencing, heartbeat) read the rest of their config
//! once at start, so VMs removed, hosts and storage take effect at the
//! next boot of the host. A VM added or removed leaves the fencing
//! region as it is (the header names hosts, not VMs; each VM's Disk Paxos
//! ring is in its fencing slot, `vms[].slot` or its position:
//! `fencing/src/layout.rs`), so hosts may reboot one at a time; what keeps
//! two VM lists side by side safe is [`transition_errors`], which every host
//! checks before it persists a config. `cluster.generation`
//! always changes and is not listed: the daemons keep pairing under the
//! generation they booted (ftvmm records decisions it takes after a live
//! power change under the newer one); the apply line says which generation
//! was persisted.

use std::fmt;

use serde_json::Value;

use crate::model::ClusterConfig;
use crate::timing_live;

/// What a running host applies without a reboot: a path equal to an entry
/// or below it (`operators[carol] added`); `[*]` stands for any one entry
/// name (`vms[kv].power`). `timing.heartbeat_interval_ms` is live only when
/// [`timing_live::interval_is_live`].
pub const LIVE: &[&str] = &[
    "operators",
    "vms[*].power",
    "vms[*].affinity",
    "host_groups",
    "timing.failure_timeout_ms",
    "timing.lag_limit_ms",
];

const INTERVAL: &str = "timing.heartbeat_interval_ms";

/// The path every newer config changes, left out of [`Changes`].
const GENERATION: &str = "cluster.generation";

/// The changes between two configs, split by how they take effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub live: Vec<String>,
    pub reboot: Vec<String>,
}

impl Changes {
    /// Compares the running config with the new one.
    pub fn between(old: &ClusterConfig, new: &ClusterConfig) -> Self {
        let (a, b) = (to_value(old), to_value(new));
        let mut paths = Vec::new();
        diff("", &a, &b, &mut paths);
        let mut c = Changes::default();
        let (ta, tb) = (&old.timing, &new.timing);
        let values = |a: u64, b: u64| format!(" {a} -> {b} ms");
        let added = Added::between(old, new);
        for p in paths.into_iter().filter(|p| p != GENERATION) {
            if let Some(why) = added.reboot_reason(&p) {
                match why {
                    None => c.live.push(p),
                    Some(why) => c.reboot.push(format!("{p} ({why})")),
                }
                continue;
            }
            match p.as_str() {
                INTERVAL => {
                    let (a, b) = (ta.heartbeat_interval_ms, tb.heartbeat_interval_ms);
                    match timing_live::interval_reboot_reason(a, b) {
                        None => c.live.push(format!("{p}{}", values(a, b))),
                        Some(why) => c.reboot.push(format!("{p}{} ({why})", values(a, b))),
                    }
                }
                "timing.failure_timeout_ms" => {
                    let (a, b) = (ta.failure_timeout_ms, tb.failure_timeout_ms);
                    let note = if b < a {
                        " (a Secondary still waits at least the timeout its host booted with)"
                    } else {
                        ""
                    };
                    c.live.push(format!("{p}{}{note}", values(a, b)));
                }
                "timing.lag_limit_ms" => c
                    .live
                    .push(format!("{p}{}", values(ta.lag_limit_ms, tb.lag_limit_ms))),
                _ if LIVE.iter().any(|l| is_under(&p, l)) => c.live.push(p),
                _ => c.reboot.push(p),
            }
        }
        c
    }

    pub fn needs_reboot(&self) -> bool {
        !self.reboot.is_empty()
    }
}

/// The VMs a newer config adds, and whether a running host takes each
/// live (`crate::live_add`).
struct Added<'a> {
    new: &'a ClusterConfig,
    /// Added VM name -> why it needs a reboot (`None`: live).
    vms: std::collections::BTreeMap<&'a str, Option<String>>,
}

impl<'a> Added<'a> {
    fn between(old: &ClusterConfig, new: &'a ClusterConfig) -> Self {
        let vms = (new.vms.iter())
            .filter(|v| old.slot_of(&v.name).is_none())
            .map(|v| {
                let why = crate::live_add::with_added(old, new, &v.name).err();
                (v.name.as_str(), why)
            })
            .collect();
        Added { new, vms }
    }

    /// For a path about an added VM, or an added region or image: `None`
    /// when the path is none of those; `Some(None)` when it is live;
    /// `Some(Some(why))` when it needs a reboot. A region or image added is
    /// live when only VMs added live use it (nothing running reads it).
    fn reboot_reason(&self, path: &str) -> Option<Option<String>> {
        let name = |prefix: &str| {
            path.strip_prefix(prefix)?
                .strip_suffix("] added")
                .filter(|n| !n.contains(']'))
        };
        if let Some(vm) = name("vms[") {
            return self.vms.get(vm).cloned();
        }
        let users: Vec<&str> = if let Some(r) = name("storage.regions[") {
            let images: Vec<&str> = (self.new.images.iter())
                .filter(|i| i.region == r)
                .map(|i| i.name.as_str())
                .collect();
            (self.new.vms.iter())
                .filter(|v| v.disk_region == r || images.contains(&v.image.as_str()))
                .map(|v| v.name.as_str())
                .collect()
        } else if let Some(i) = name("images[") {
            (self.new.vms.iter())
                .filter(|v| v.image == i)
                .map(|v| v.name.as_str())
                .collect()
        } else {
            return None;
        };
        let not_live: Vec<&str> = (users.into_iter())
            .filter(|u| !matches!(self.vms.get(u), Some(None)))
            .collect();
        Some(
            (!not_live.is_empty())
                .then(|| format!("used by vms[{}], not added live", not_live.join("], vms["))),
        )
    }
}

/// Why a host holding `held` must refuse `new`, one line per VM: every VM
/// that is on in `held` must be in `new` in the same fencing slot
/// (`vms[].slot`, or its position). A VM's Disk Paxos ring lives in its
/// slot, so a host that has not taken `new` yet keeps racing for the VM
/// there: a running VM moved to another slot could be won in both, and
/// run on two hosts; a running VM removed leaves its slot (and its disk
/// region) to a VM added later while it still runs on such a host. Power it
/// off first (one config), then move or remove it (the next): the power-off
/// wins the VM's next generation under the newer config, and no host starts
/// a VM decided under a config newer than its own (`ftvmm/src/power.rs`).
/// A VM that is off in `held` may move, go, or leave its slot to another.
pub fn transition_errors(held: &ClusterConfig, new: &ClusterConfig) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, vm) in held.vms.iter().enumerate() {
        if !vm.power.is_on() {
            continue;
        }
        let slot = held.vm_slot(i);
        match new.slot_of(&vm.name) {
            Some(s) if s == slot => {}
            Some(s) => errors.push(format!(
                "vms[{}] would move from fencing slot {slot} to {s} while it runs (generation {}); \
                 a running VM keeps its slot: give it `slot = {slot}`, or power it off first",
                vm.name, held.cluster.generation
            )),
            None => errors.push(format!(
                "vms[{}] would be removed while it runs (generation {}); power it off in one \
                 config, then remove it in the next",
                vm.name, held.cluster.generation
            )),
        }
    }
    errors
}

impl fmt::Display for Changes {
    /// `live: a, b; needs reboot: c` (parts without entries left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.live.is_empty() {
            parts.push(format!("live: {}", self.live.join(", ")));
        }
        if !self.reboot.is_empty() {
            parts.push(format!("needs reboot: {}", self.reboot.join(", ")));
        }
        if parts.is_empty() {
            parts.push("nothing changed but the generation".into());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Whether `path` is `pattern` or below it (a `.field` or an `[entry]`,
/// added, removed or changed); `[*]` in `pattern` matches any one name.
fn is_under(path: &str, pattern: &str) -> bool {
    let Some((head, tail)) = pattern.split_once("[*]") else {
        return path == pattern
            || path
                .strip_prefix(pattern)
                .is_some_and(|r| r.starts_with('[') || r.starts_with('.'));
    };
    let Some(rest) = path.strip_prefix(head).and_then(|r| r.strip_prefix('[')) else {
        return false;
    };
    match rest.split_once(']') {
        Some((name, after)) if !name.is_empty() => is_under(after, tail),
        _ => false,
    }
}

fn to_value(c: &ClusterConfig) -> Value {
    serde_json::to_value(c).expect("a config serializes")
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// The `name` of a list entry, when every entry of both lists has one.
fn name_of(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                // A list left out when empty (`skip_serializing_if`) is empty.
                let absent = |other: Option<&Value>| match other {
                    Some(Value::Array(_)) => Value::Array(vec![]),
                    _ => Value::Null,
                };
                let va = x.get(k).cloned().unwrap_or_else(|| absent(y.get(k)));
                let vb = y.get(k).cloned().unwrap_or_else(|| absent(x.get(k)));
                diff(&join(path, k), &va, &vb, out);
            }
        }
        (Value::Array(x), Value::Array(y))
            if x.iter().chain(y).all(|v| name_of(v).is_some())
                && !(x.is_empty() && y.is_empty()) =>
        {
            diff_named(path, x, y, out)
        }
        _ => out.push(path.to_string()),
    }
}

/// Lists of named entries: added, removed, or changed by field.
fn diff_named(path: &str, x: &[Value], y: &[Value], out: &mut Vec<String>) {
    let find = |l: &'_ [Value], n: &str| l.iter().find(|v| name_of(v) == Some(n)).cloned();
    for a in x {
        let n = name_of(a).expect("checked");
        match find(y, n) {
            Some(b) => diff(&format!("{path}[{n}]"), a, &b, out),
            None => out.push(format!("{path}[{n}] removed")),
        }
    }
    for b in y {
        let n = name_of(b).expect("checked");
        if find(x, n).is_none() {
            out.push(format!("{path}[{n}] added"));
        }
    }
    let order = |l: &[Value]| {
        l.iter()
            .filter_map(name_of)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (ox, oy): (Vec<_>, Vec<_>) = (order(x), order(y));
    let common = |o: &[String], other: &[Value]| {
        o.iter()
            .filter(|n| find(other, n).is_some())
            .cloned()
            .collect::<Vec<_>>()
    };
    if common(&ox, y) != common(&oy, x) {
        out.push(format!("{path} order"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operator, Power};

    fn example() -> ClusterConfig {
        crate::parse(include_str!("../../examples/cluster.toml"))
            .unwrap()
            .config
    }

    #[test]
    fn a_new_generation_alone_changes_nothing_else() {
        let (a, mut b) = (example(), example());
        b.cluster.generation += 1;
        let c = Changes::between(&a, &b);
        assert_eq!(c, Changes::default());
        assert!(!c.needs_reboot());
        assert_eq!(c.to_string(), "nothing changed but the generation");
    }

    #[test]
    fn operators_power_and_affinity_are_live_a_lease_moving_interval_and_a_clashing_vm_need_a_reboot(
    ) {
        let (a, mut b) = (example(), example());
        b.cluster.generation += 1;
        b.operators.push(Operator {
            name: "carol".into(),
            public_key: "ab".repeat(32),
        });
        b.timing.heartbeat_interval_ms += 50;
        b.vms[0].power = Power::Off;
        b.vms[0].affinity.hosts = vec!["host-a".into()];
        let mut extra = b.vms[0].clone();
        extra.name = "extra".into();
        b.vms.push(extra);
        let c = Changes::between(&a, &b);
        let vm = &a.vms[0].name;
        assert_eq!(
            c.live,
            [
                "operators[carol] added".to_string(),
                format!("vms[{vm}].affinity.hosts"),
                format!("vms[{vm}].power"),
            ]
        );
        assert_eq!(
            c.reboot,
            [
                "timing.heartbeat_interval_ms 100 -> 150 ms (fencing's lease renewal goes from \
                 500 to 750 ms, and fencing takes it only at boot; hosts renewing that \
                 differently misjudge each other's leases: restart every host together, not \
                 one by one)"
                    .to_string(),
                "vms[extra] added (with it the running config is invalid: vms[1].disk_region: \
                 duplicate disk region kv-disk: already used by vms[0].disk_region)"
                    .to_string(),
            ]
        );
        assert!(c.needs_reboot());
        assert!(c.to_string().starts_with(&format!(
            "live: operators[carol] added, vms[{vm}].affinity.hosts, vms[{vm}].power; needs reboot: \
             timing.heartbeat_interval_ms 100 -> 150 ms"
        )));
    }

    #[test]
    fn timing_within_the_lease_renewal_is_live_with_its_values() {
        let (a, mut b) = (example(), example());
        b.cluster.generation += 1;
        b.timing.heartbeat_interval_ms = 50;
        b.timing.failure_timeout_ms = 3000;
        b.timing.lag_limit_ms = 250;
        let c = Changes::between(&a, &b);
        assert!(!c.needs_reboot(), "{c}");
        assert_eq!(
            c.to_string(),
            "live: timing.failure_timeout_ms 1000 -> 3000 ms, \
             timing.heartbeat_interval_ms 100 -> 50 ms, timing.lag_limit_ms 500 -> 250 ms"
        );
        // Lowered: the line says the Secondary's floor.
        let c = Changes::between(&b, &a);
        assert!(c.live[0].starts_with("timing.failure_timeout_ms 3000 -> 1000 ms (a Secondary"));
    }

    #[test]
    fn an_interval_far_from_the_running_one_says_restart_every_host_together() {
        let (a, mut b) = (example(), example());
        b.timing.heartbeat_interval_ms = 400;
        b.timing.failure_timeout_ms = 4000;
        let c = Changes::between(&a, &b);
        assert_eq!(c.live, ["timing.failure_timeout_ms 1000 -> 4000 ms"]);
        assert_eq!(c.reboot.len(), 1);
        assert!(c.reboot[0].contains("500 to 2000 ms"), "{c}");
        assert!(c.reboot[0].contains("restart every host together"), "{c}");
    }

    #[test]
    fn a_power_change_alone_is_live_and_says_so() {
        let (a, mut b) = (example(), example());
        b.cluster.generation += 1;
        b.vms[0].power = Power::Off;
        let c = Changes::between(&a, &b);
        let vm = &a.vms[0].name;
        assert_eq!(c.live, [format!("vms[{vm}].power")]);
        assert!(!c.needs_reboot());
        assert_eq!(c.to_string(), format!("live: vms[{vm}].power"));
        // And back on.
        let c = Changes::between(&b, &a);
        assert_eq!(c.to_string(), format!("live: vms[{vm}].power"));
    }

    #[test]
    fn live_patterns_match_whole_names_and_fields_only() {
        assert!(is_under("operators", "operators"));
        assert!(is_under("operators[carol] added", "operators"));
        assert!(is_under("operators[carol].public_key", "operators"));
        assert!(!is_under("operatorsx", "operators"));
        assert!(is_under("vms[kv].power", "vms[*].power"));
        assert!(is_under("vms[a.b].power", "vms[*].power"));
        assert!(!is_under("vms[kv].powerx", "vms[*].power"));
        assert!(!is_under("vms[kv].memory_mib", "vms[*].power"));
        assert!(!is_under("vms[kv] added", "vms[*].power"));
        assert!(!is_under("vms[kv] removed", "vms[*].power"));
        assert!(!is_under("vms order", "vms[*].power"));
        assert!(!is_under("vms[].power", "vms[*].power"));
        assert!(!is_under("hosts[kv].power", "vms[*].power"));
    }

    #[test]
    fn removed_and_reordered_entries_are_named() {
        let (a, mut b) = (example(), example());
        let gone = b.hosts.pop().unwrap();
        let mut a2 = a.clone();
        a2.hosts.reverse();
        let c = Changes::between(&a, &b);
        assert_eq!(c.reboot, [format!("hosts[{}] removed", gone.name)]);
        let c = Changes::between(&a, &a2);
        assert_eq!(c.reboot, ["hosts order"]);
    }

    #[test]
    fn a_management_nic_needs_a_reboot() {
        // init brings the NIC up and heartbeat binds its address at boot.
        let (a, mut b) = (example(), example());
        b.hosts[1].mgmt = Some(crate::model::Interface {
            mac: "52:54:00:f9:00:02".into(),
            addr: "203.0.113.2/24".into(),
        });
        let c = Changes::between(&a, &b);
        assert_eq!(c.reboot, ["hosts[host-b].mgmt"]);
        assert!(c.live.is_empty());
        let mut moved = b.clone();
        moved.hosts[1].mgmt.as_mut().unwrap().addr = "203.0.113.9/24".into();
        let c = Changes::between(&b, &moved);
        assert_eq!(c.reboot, ["hosts[host-b].mgmt.addr"]);
    }

    #[test]
    fn a_vm_added_with_its_own_region_is_live_a_vm_removed_is_not() {
        let a = example();
        let mut b = a.clone();
        b.cluster.generation += 1;
        let mut web = a.vms[0].clone();
        web.name = "web".into();
        web.mac = "52:54:00:12:34:57".into();
        web.ip = "198.51.100.11/24".into();
        web.disk_region = "web-disk".into();
        web.slot = Some(3);
        b.vms.push(web);
        let region = |name: &str, offset_mib| crate::model::NamedRegion {
            name: name.into(),
            offset_mib,
            size_mib: 32,
        };
        b.storage.regions.push(region("web-disk", 96));
        b.storage.regions.push(region("spare", 200));
        let c = Changes::between(&a, &b);
        assert_eq!(
            c.live,
            [
                "storage.regions[web-disk] added",
                "storage.regions[spare] added",
                "vms[web] added"
            ]
        );
        assert!(!c.needs_reboot(), "{c}");
        // A region the running kv uses, grown for web: kv's disk changes.
        let mut grown = b.clone();
        grown.storage.regions[0].size_mib += 1;
        let c = Changes::between(&a, &grown);
        assert_eq!(c.reboot, ["storage.regions[kv-disk].size_mib"]);
        // An added region kv is moved onto (a reboot) is not live either.
        let mut moved = b.clone();
        moved.vms[0].disk_region = "spare".into();
        let c = Changes::between(&a, &moved);
        assert_eq!(
            c.reboot,
            [
                "storage.regions[spare] added (used by vms[kv], not added live)",
                "vms[kv].disk_region"
            ]
        );
        // Removing web again: a reboot (removal is not live).
        let c = Changes::between(&b, &a);
        assert!(c.reboot.contains(&"vms[web] removed".to_string()), "{c}");
    }

    #[test]
    fn a_running_vm_keeps_its_slot_and_only_an_off_vm_moves_or_goes() {
        let mut a = example();
        let mut web = a.vms[0].clone();
        web.name = "web".into();
        a.vms.push(web); // kv in slot 0, web in slot 1 (their positions)
        let mut b = a.clone();
        b.cluster.generation += 1;
        // Adding a VM, explicit slots equal to the positions: fine.
        let mut extra = a.vms[0].clone();
        extra.name = "extra".into();
        b.vms.push(extra);
        b.vms[1].slot = Some(1);
        assert_eq!(transition_errors(&a, &b), Vec::<String>::new());
        // Removing kv shifts web to position 0: refused for both.
        let mut gone = b.clone();
        gone.vms.remove(0);
        gone.vms[0].slot = None;
        assert_eq!(
            transition_errors(&a, &gone),
            [
                "vms[kv] would be removed while it runs (generation 1); power it off in one \
                 config, then remove it in the next",
                "vms[web] would move from fencing slot 1 to 0 while it runs (generation 1); \
                 a running VM keeps its slot: give it `slot = 1`, or power it off first",
            ]
        );
        // Once kv is off (the held config says so), it may go, and web,
        // saying its slot, stays where it was; another VM may take slot 0.
        let mut off = a.clone();
        off.vms[0].power = Power::Off;
        let mut next = gone.clone();
        next.vms[0].slot = Some(1);
        next.vms[1].slot = Some(0);
        assert_eq!(transition_errors(&off, &next), Vec::<String>::new());
        // An off VM may move; powering it on in the same config is the new
        // config's business, not the held one's.
        let mut moved = off.clone();
        moved.vms[0].slot = Some(9);
        moved.vms[0].power = Power::On;
        assert_eq!(transition_errors(&off, &moved), Vec::<String>::new());
    }
}
