//! What a newer config changes, and whether a running host takes each change
//! live or needs a reboot (`ftctl apply`'s one line per host).
//!
//! The diff walks both configs as JSON: objects by field, lists of named
//! entries (`hosts`, `vms`, `operators`, ...) by `name`, so a change reads
//! `vms[kv].power` or `timing.heartbeat_interval_ms`.
//!
//! Rule: a change is live only when the running daemons really re-read it;
//! everything else needs a reboot. Today that is [`LIVE`]: the
//! `[[operators]]` list (the status service switches to the new list at
//! once). The daemons (ftvmm, fencing, heartbeat) read their config once at
//! start, so timing, affinity, power, VMs, hosts and storage take effect at
//! the next boot of the host. `cluster.generation` always changes and is
//! not listed: the daemons keep running (and pairing under) the generation
//! they booted; the apply line says which generation was persisted.

use std::fmt;

use serde_json::Value;

use crate::model::ClusterConfig;

/// Path prefixes that a running host applies without a reboot.
pub const LIVE: &[&str] = &["operators"];

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
        for p in paths.into_iter().filter(|p| p != GENERATION) {
            if LIVE
                .iter()
                .any(|l| p == *l || p.starts_with(&format!("{l}[")))
            {
                c.live.push(p);
            } else {
                c.reboot.push(p);
            }
        }
        c
    }

    pub fn needs_reboot(&self) -> bool {
        !self.reboot.is_empty()
    }
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
    fn operators_are_live_timing_power_affinity_and_vms_need_a_reboot() {
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
        assert_eq!(c.live, ["operators[carol] added"]);
        assert_eq!(
            c.reboot,
            [
                "timing.heartbeat_interval_ms".to_string(),
                format!("vms[{vm}].affinity.hosts"),
                format!("vms[{vm}].power"),
                "vms[extra] added".to_string(),
            ]
        );
        assert!(c.needs_reboot());
        assert!(c.to_string().starts_with(
            "live: operators[carol] added; needs reboot: timing.heartbeat_interval_ms"
        ));
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
}
