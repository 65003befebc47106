//! A VM added live: the config a host runs, plus one VM of a newer config.
//!
//! A running host keeps the config it booted for the VMs it runs (their
//! pairs, disks and addresses do not change under them). A VM that a newer
//! config adds is taken into that running config with everything it needs
//! from the newer one: its definition (its fencing slot written out, since
//! its position differs between the two lists), its disk region, its
//! `[[images]]` entry and that image's region, and its affinity resolved
//! to host names (`host_groups` are taken live as what they mean per VM).
//! The result is validated like any config, so a VM whose region overlaps
//! one the running config uses, whose slot another VM of the running
//! config holds, or whose addresses clash, is refused here with the reason
//! and needs a reboot.
//!
//! Why this is safe with hosts on different configs at once: the new VM's
//! slot is the newer config's on every host that adds it, and every newer
//! config keeps it there while it runs ([`crate::changes::transition_errors`]);
//! a host that has not taken the newer config does not know the VM at all
//! and neither starts it nor races for it.

use crate::model::{Affinity, ClusterConfig, NamedRegion};
use crate::validate;

/// `running` with VM `name` of `newer` added (module rules), or why the VM
/// cannot be added without a reboot.
pub fn with_added(
    running: &ClusterConfig,
    newer: &ClusterConfig,
    name: &str,
) -> Result<ClusterConfig, String> {
    let Some(i) = newer.vms.iter().position(|v| v.name == name) else {
        return Err(format!(
            "vms[{name}] is not in config generation {}",
            newer.cluster.generation
        ));
    };
    if running.vms.iter().any(|v| v.name == name) {
        return Err(format!("vms[{name}] is in the running config already"));
    }
    let slot = newer.vm_slot(i);
    if let Some(j) = (0..running.vms.len()).find(|&j| running.vm_slot(j) == slot) {
        return Err(format!(
            "its fencing slot {slot} is vms[{}]'s in the config this host runs (removed or moved \
             while off); a host reuses a slot after a reboot",
            running.vms[j].name
        ));
    }
    let mut out = running.clone();
    let mut vm = newer.vms[i].clone();
    vm.slot = Some(slot);
    if !vm.affinity.hosts.is_empty() || !vm.affinity.groups.is_empty() {
        vm.affinity = Affinity {
            hosts: validate::allowed_in_order(newer, &vm),
            groups: Vec::new(),
        };
    }
    take_region(&mut out, newer, &vm.disk_region)?;
    if let Some(img) = newer.images.iter().find(|m| m.name == vm.image) {
        take_region(&mut out, newer, &img.region)?;
        match out.images.iter().find(|m| m.name == img.name) {
            Some(had) if had != img => {
                return Err(format!(
                    "images[{}] differs from the running config's",
                    img.name
                ))
            }
            Some(_) => {}
            None => out.images.push(img.clone()),
        }
    }
    out.vms.push(vm);
    validate::validate(&out).map_err(|e| format!("with it the running config is invalid: {e}"))?;
    Ok(out)
}

/// Adds `newer`'s region `name` to `out` unless `out` has it the same.
fn take_region(out: &mut ClusterConfig, newer: &ClusterConfig, name: &str) -> Result<(), String> {
    let Some(r) = newer.storage.regions.iter().find(|r| r.name == name) else {
        return Err(format!(
            "storage.regions[{name}] is not in the newer config"
        ));
    };
    match out.storage.regions.iter().find(|h| h.name == name) {
        Some(had) if had != r => Err(format!(
            "storage.regions[{name}] differs from the running config's ({})",
            describe(had)
        )),
        Some(_) => Ok(()),
        None => {
            out.storage.regions.push(r.clone());
            Ok(())
        }
    }
}

fn describe(r: &NamedRegion) -> String {
    format!("offset {} MiB, size {} MiB", r.offset_mib, r.size_mib)
}

#[cfg(test)]
#[path = "live_add_tests.rs"]
mod tests;
