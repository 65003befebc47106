//! The chaos run's hosts as QEMU processes: the cluster's first boots and
//! the nemesis's reboots.
//!
//! A reboot boots a killed host again as a new QEMU process from the spec it
//! was first booted with — its config disk, its FT and VM hub ports (by host
//! name, so a cut link stays cut), its storage path (a fault on it holds) —
//! as `common::respawn::reboot` does, into the running cluster. Its files go
//! to `<test dir>/<host>.reboot<n>`; the dead process stays, for its console.
//!
//! Rules:
//! - Faults go to a host's *current* process ([`Fleet::host`]): its last
//!   reboot, else its first boot.
//! - Verdicts read *every* process's console ([`Fleet::processes`]): a go-live
//!   or a divergence on a process that died later still counts.
//! - A [`Fleet`] borrows its cluster and owns the reboots: drop it before the
//!   cluster (declare it after), so the rebooted hosts die before the hubs.

use qemu_tests::{Cluster, Host};

/// A host booted again by the nemesis.
pub struct Reboot {
    /// Which reboot of its host this is (1, 2, ...).
    pub n: usize,
    pub host: Host,
}

pub struct Fleet<'c> {
    cluster: &'c Cluster,
    reboots: Vec<Reboot>,
}

impl<'c> Fleet<'c> {
    pub fn new(cluster: &'c Cluster) -> Self {
        Fleet {
            cluster,
            reboots: Vec::new(),
        }
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    /// The current process of host `name` (module doc).
    pub fn host(&self, name: &str) -> Result<&Host, String> {
        match self.reboots.iter().rev().find(|r| r.host.name() == name) {
            Some(r) => Ok(&r.host),
            None => self.cluster.host(name).map_err(|e| e.to_string()),
        }
    }

    /// Every process of the run: first boots, then reboots in order.
    pub fn processes(&self) -> impl Iterator<Item = &Host> {
        self.cluster
            .hosts()
            .chain(self.reboots.iter().map(|r| &r.host))
    }

    /// The current process of each booted host.
    pub fn current(&self) -> Vec<&Host> {
        self.cluster
            .hosts()
            .filter_map(|h| self.host(h.name()).ok())
            .collect()
    }

    /// The reboots, in order.
    pub fn reboots(&self) -> &[Reboot] {
        &self.reboots
    }

    /// A process for people: its host's name, `#n` for its `n`th reboot.
    pub fn label(&self, process: &Host) -> String {
        match self.reboots.iter().find(|r| std::ptr::eq(&r.host, process)) {
            Some(r) => format!("{}#{}", r.host.name(), r.n),
            None => process.name().to_string(),
        }
    }

    /// Boots the killed host `name` again (module doc).
    pub fn reboot(&mut self, name: &str) -> Result<&Host, String> {
        let old = self.host(name)?;
        if old.is_running() {
            return Err(format!("{name} is still running"));
        }
        let n = 1 + self
            .reboots
            .iter()
            .filter(|r| r.host.name() == name)
            .count();
        let mut spec = self.cluster.host_spec(name).map_err(|e| e.to_string())?;
        spec.work_dir = self.cluster.dir().join(format!("{name}.reboot{n}"));
        let host = Host::spawn(spec).map_err(|e| e.to_string())?;
        eprintln!(
            "chaos: {name} rebooted (console in {})",
            host.work_dir().display()
        );
        self.reboots.push(Reboot { n, host });
        Ok(&self.reboots[self.reboots.len() - 1].host)
    }
}
