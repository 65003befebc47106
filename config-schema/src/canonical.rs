//! The canonical byte encoding of a cluster config: what gets signed.
//!
//! TOML is for people; the same config can be written in many ways (key
//! order, whitespace, comments, inline vs. standard tables). The signature
//! must cover the *meaning*, so the config disk carries these bytes and the
//! signature covers them; a host decodes them back to the typed config.
//!
//! # Encoding (byte for byte)
//!
//! The bytes are the [postcard 1.x wire format] of [`ClusterConfig`]:
//!
//! * `u32` / `u64`: unsigned LEB128 varint (7 bits per byte, least
//!   significant group first, high bit set on every byte but the last).
//! * string: varint byte length, then the UTF-8 bytes.
//! * list: varint element count, then each element.
//! * struct: its fields in declaration order, no names, no tags.
//! * enum: varint variant index (declaration order, from 0), then its data.
//!
//! Field order, which is the order of the structs in `model.rs`:
//!
//! ```text
//! cluster.name, cluster.generation,
//! cluster.cpu.level (0 = x86-64-v1 .. 3 = x86-64-v4), cluster.cpu.features [ feature index ],
//! cluster.cpu.phys_addr_bits (one byte),
//! timing.heartbeat_interval_ms, timing.failure_timeout_ms, timing.lag_limit_ms,
//! storage.device (0 = serial, 1 = path, then the string;
//!                 2 = iscsi, then portal, target, lun, initiator_prefix,
//!                 chap (0 = none; 1, then user, secret)), storage.size_mib,
//! storage.fencing.offset_mib, storage.fencing.size_mib,
//! storage.regions [ name, offset_mib, size_mib ],
//! host_groups [ name, hosts [ string ] ],
//! hosts [ id, name, ft.mac, ft.addr, vm.mac, vm.addr, public_key ],
//! vms [ name, memory_mib, image, mode (0 = kv, 1 = cpu), disk_region, mac, ip,
//!       affinity.hosts [ string ], affinity.groups [ string ] ]  (no affinity: 0, 0),
//! test (0 = no [test] section; 1, then hooks [ string ])
//! ```
//!
//! Then, only when some VM has `power = "off"`, the power trailer:
//!
//! ```text
//! 1, vms.power [ power (0 = on, 1 = off) ]  (one entry per VM, in order)
//! ```
//!
//! Then, only when some VM is not a one-vCPU lockstep VM without
//! `epoch_ms`, or the config has `[[images]]`, the replication trailer:
//!
//! ```text
//! 2, vms [ replication (0 = lockstep, 1 = checkpoint), vcpus,
//!          epoch_ms (0 = absent; 1, then the value) ]  (one entry per VM, in order),
//!    images [ name, region,
//!             kernel.offset_mib, kernel.size_bytes, kernel.sha256,
//!             initrd (0 = none; 1, then offset_mib, size_bytes, sha256),
//!             cmdline ]
//! ```
//!
//! Then, only when the config has `[[operators]]`, the operators trailer:
//!
//! ```text
//! 3, operators [ name, public_key ]
//! ```
//!
//! `vms[].power` came after format version 2 was signed on real disks, and
//! `replication`, `vcpus`, `epoch_ms`, `[[images]]`, `[[operators]]`,
//! `cluster.accept_soft_watchdog`, `hosts[].mgmt` and `hosts[].storage`
//! after it. They are
//! not fields of the entries above (postcard has no field names, so an
//! added field would change every config's bytes): a config that does not
//! use them has no trailer and keeps its bytes and signatures, and a build
//! from before them refuses a config that does ("trailing bytes") instead
//! of running a VM the operator powered off, or a checkpoint VM in lockstep
//! (or, for operators, a config whose status service it does not have; for
//! the soft watchdog, a go-live it would refuse; for `mgmt`, a host whose
//! management NIC it would leave down and whose operators it would not hear;
//! for `storage`, an iSCSI device it could not reach: a build from before
//! the `iscsi` locator refuses it anyway, variant 2 of `storage.device`).
//!
//! Then, only when `cluster.accept_soft_watchdog` is `true`, the cluster
//! trailer:
//!
//! ```text
//! 4, cluster.accept_soft_watchdog (1 = true)
//! ```
//!
//! Then, only when some host has `mgmt`, the management trailer:
//!
//! ```text
//! 5, hosts [ mgmt (0 = none; 1, then mac, addr) ]  (one entry per host, in order)
//! ```
//!
//! Then, only when some host has `storage`, the storage trailer:
//!
//! ```text
//! 6, hosts [ storage (0 = none; 1, then mac, addr) ]  (one entry per host, in order)
//! ```
//!
//! Then, only when `cluster.vm_witness` is set, the witness trailer:
//!
//! ```text
//! 7, cluster.vm_witness (string)
//! ```
//!
//! A build from before it refuses such a config ("trailing bytes") instead
//! of running without the witness the operator counted on.
//!
//! Then, only when some VM says its `slot`, the slot trailer:
//!
//! ```text
//! 8, vms [ slot (0 = absent; 1, then the value) ]  (one entry per VM, in order)
//! ```
//!
//! A build from before it refuses such a config instead of putting a VM in
//! the fencing slot of its position, which may be another VM's.
//!
//! Then, only when some VM says its `delta_cache_mib`, the delta cache
//! trailer:
//!
//! ```text
//! 9, vms [ delta_cache_mib (0 = absent; 1, then the value) ]  (one entry per VM, in order)
//! ```
//!
//! A build from before it refuses such a config instead of running the
//! Primary with another cache than the operator sized.
//!
//! The trailers come in the order of their first byte.
//!
//! Strings are kept exactly as written (no case folding of MACs, for
//! instance), so any change of any field changes the bytes. Reordering the
//! fields of a model struct changes the format: the golden test below fails
//! and the config-disk format version must be bumped.
//!
//! [postcard 1.x wire format]: https://postcard.jamesmunns.com/wire-format

use serde::{Deserialize, Serialize};

use crate::model::{ClusterConfig, LinuxImage, Operator, Power, Replication, Vm, DEFAULT_VCPUS};

/// First byte of the power trailer (see the module doc).
const POWER_TRAILER: u8 = 1;
/// First byte of the replication trailer (see the module doc).
const REPLICATION_TRAILER: u8 = 2;
/// First byte of the operators trailer (see the module doc).
const OPERATORS_TRAILER: u8 = 3;

/// First byte of the cluster trailer (see the module doc).
const CLUSTER_TRAILER: u8 = 4;
/// First byte of the management trailer (see the module doc).
const MGMT_TRAILER: u8 = 5;
/// First byte of the storage trailer (see the module doc).
const STORAGE_TRAILER: u8 = 6;
/// First byte of the witness trailer (see the module doc).
const WITNESS_TRAILER: u8 = 7;
/// First byte of the slot trailer (see the module doc).
const SLOT_TRAILER: u8 = 8;
/// First byte of the delta cache trailer (see the module doc).
const DELTA_CACHE_TRAILER: u8 = 9;

/// The replication trailer.
// NOTICE: signed bytes. Any change to these structs changes the encoding of
// every config that has the trailer.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReplicationTrailer {
    vms: Vec<VmReplication>,
    images: Vec<LinuxImage>,
}

/// One VM's fields in the replication trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct VmReplication {
    replication: Replication,
    vcpus: u32,
    epoch_ms: Option<u32>,
}

impl VmReplication {
    /// What a VM without these fields has.
    const DEFAULT: VmReplication = VmReplication {
        replication: Replication::Lockstep,
        vcpus: DEFAULT_VCPUS,
        epoch_ms: None,
    };

    fn of(vm: &Vm) -> Self {
        VmReplication {
            replication: vm.replication,
            vcpus: vm.vcpus,
            epoch_ms: vm.epoch_ms,
        }
    }

    fn apply(self, vm: &mut Vm) {
        vm.replication = self.replication;
        vm.vcpus = self.vcpus;
        vm.epoch_ms = self.epoch_ms;
    }
}

/// Why canonical bytes did not decode.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("not a canonical config encoding: {0}")]
    Decode(#[from] postcard::Error),
    #[error("{0} trailing bytes after the config")]
    Trailing(usize),
    #[error("the power trailer has {entries} entries for {vms} VMs")]
    PowerCount { entries: usize, vms: usize },
    #[error("the replication trailer has {entries} entries for {vms} VMs")]
    ReplicationCount { entries: usize, vms: usize },
    #[error("the operators trailer lists no operator")]
    NoOperators,
    #[error("the management trailer has {entries} entries for {hosts} hosts")]
    MgmtCount { entries: usize, hosts: usize },
    #[error("the storage trailer has {entries} entries for {hosts} hosts")]
    StorageCount { entries: usize, hosts: usize },
    #[error("the slot trailer has {entries} entries for {vms} VMs")]
    SlotCount { entries: usize, vms: usize },
    #[error("the delta cache trailer has {entries} entries for {vms} VMs")]
    DeltaCacheCount { entries: usize, vms: usize },
    #[error("config encoding is not canonical")]
    NotCanonical,
}

/// Encodes a config canonically. Callers sign only validated configs.
pub fn encode(config: &ClusterConfig) -> Vec<u8> {
    let mut bytes =
        postcard::to_stdvec(config).expect("postcard encodes every ClusterConfig to a Vec");
    if config.vms.iter().any(|vm| !vm.power.is_on()) {
        let power: Vec<Power> = config.vms.iter().map(|vm| vm.power).collect();
        bytes.push(POWER_TRAILER);
        bytes.extend(postcard::to_stdvec(&power).expect("postcard encodes a list of Power"));
    }
    let vms: Vec<VmReplication> = config.vms.iter().map(VmReplication::of).collect();
    if !config.images.is_empty() || vms.iter().any(|v| *v != VmReplication::DEFAULT) {
        let trailer = ReplicationTrailer {
            vms,
            images: config.images.clone(),
        };
        bytes.push(REPLICATION_TRAILER);
        bytes.extend(postcard::to_stdvec(&trailer).expect("postcard encodes the trailer"));
    }
    if !config.operators.is_empty() {
        bytes.push(OPERATORS_TRAILER);
        bytes.extend(postcard::to_stdvec(&config.operators).expect("postcard encodes operators"));
    }
    if config.cluster.accept_soft_watchdog {
        bytes.extend([CLUSTER_TRAILER, 1]);
    }
    push_each(&mut bytes, MGMT_TRAILER, &config.hosts, |h| &h.mgmt);
    push_each(&mut bytes, STORAGE_TRAILER, &config.hosts, |h| &h.storage);
    if let Some(w) = &config.cluster.vm_witness {
        bytes.push(WITNESS_TRAILER);
        bytes.extend(postcard::to_stdvec(w).expect("postcard encodes a string"));
    }
    push_each(&mut bytes, SLOT_TRAILER, &config.vms, |vm| &vm.slot);
    push_each(&mut bytes, DELTA_CACHE_TRAILER, &config.vms, |vm| {
        &vm.delta_cache_mib
    });
    bytes
}

/// A per-host or per-VM trailer (management and storage NICs; slot, delta
/// cache): `tag`, then each item's `field` or none, only when some item has
/// one.
fn push_each<I, T: serde::Serialize>(
    bytes: &mut Vec<u8>,
    tag: u8,
    items: &[I],
    field: fn(&I) -> &Option<T>,
) {
    if items.iter().all(|i| field(i).is_none()) {
        return;
    }
    let values: Vec<&Option<T>> = items.iter().map(field).collect();
    bytes.push(tag);
    bytes.extend(postcard::to_stdvec(&values).expect("postcard encodes a trailer's list"));
}

/// Reads a [`push_each`] trailer's list (after its tag) into the items'
/// `field`; `count` is the error for a list that does not have one entry
/// per item. A list with nothing in it is not canonical (no trailer is):
/// the re-encoding check of [`decode`] refuses it. Returns what follows.
fn take_each<'a, I, T: serde::de::DeserializeOwned>(
    list: &'a [u8],
    items: &mut [I],
    field: fn(&mut I) -> &mut Option<T>,
    count: fn(usize, usize) -> CanonicalError,
) -> Result<&'a [u8], CanonicalError> {
    let (values, after): (Vec<Option<T>>, &[u8]) = postcard::take_from_bytes(list)?;
    if values.len() != items.len() {
        return Err(count(values.len(), items.len()));
    }
    for (item, v) in items.iter_mut().zip(values) {
        *field(item) = v;
    }
    Ok(after)
}

/// Decodes canonical bytes, refusing trailing data and any non-canonical
/// spelling (e.g. an over-long varint, or a power trailer with every VM
/// on), so one config has exactly one encoding.
pub fn decode(bytes: &[u8]) -> Result<ClusterConfig, CanonicalError> {
    let (mut config, mut rest): (ClusterConfig, &[u8]) = postcard::take_from_bytes(bytes)?;
    if let [POWER_TRAILER, list @ ..] = rest {
        let (power, after): (Vec<Power>, &[u8]) = postcard::take_from_bytes(list)?;
        if power.len() != config.vms.len() {
            return Err(CanonicalError::PowerCount {
                entries: power.len(),
                vms: config.vms.len(),
            });
        }
        for (vm, p) in config.vms.iter_mut().zip(power) {
            vm.power = p;
        }
        rest = after;
    }
    for vm in config.vms.iter_mut() {
        VmReplication::DEFAULT.apply(vm);
    }
    if let [REPLICATION_TRAILER, trailer @ ..] = rest {
        let (t, after): (ReplicationTrailer, &[u8]) = postcard::take_from_bytes(trailer)?;
        if t.vms.len() != config.vms.len() {
            return Err(CanonicalError::ReplicationCount {
                entries: t.vms.len(),
                vms: config.vms.len(),
            });
        }
        for (vm, r) in config.vms.iter_mut().zip(t.vms) {
            r.apply(vm);
        }
        config.images = t.images;
        rest = after;
    }
    if let [OPERATORS_TRAILER, list @ ..] = rest {
        let (operators, after): (Vec<Operator>, &[u8]) = postcard::take_from_bytes(list)?;
        if operators.is_empty() {
            return Err(CanonicalError::NoOperators);
        }
        config.operators = operators;
        rest = after;
    }
    if let [CLUSTER_TRAILER, accept, after @ ..] = rest {
        // Only `1` is canonical: a config that does not accept has no trailer
        // (any other byte fails the re-encoding check below).
        config.cluster.accept_soft_watchdog = *accept == 1;
        rest = after;
    }
    if let [MGMT_TRAILER, list @ ..] = rest {
        rest = take_each(
            list,
            &mut config.hosts,
            |h| &mut h.mgmt,
            |entries, hosts| CanonicalError::MgmtCount { entries, hosts },
        )?;
    }
    if let [STORAGE_TRAILER, list @ ..] = rest {
        rest = take_each(
            list,
            &mut config.hosts,
            |h| &mut h.storage,
            |entries, hosts| CanonicalError::StorageCount { entries, hosts },
        )?;
    }
    if let [WITNESS_TRAILER, text @ ..] = rest {
        let (w, after): (String, &[u8]) = postcard::take_from_bytes(text)?;
        config.cluster.vm_witness = Some(w);
        rest = after;
    }
    if let [SLOT_TRAILER, list @ ..] = rest {
        rest = take_each(
            list,
            &mut config.vms,
            |vm| &mut vm.slot,
            |entries, vms| CanonicalError::SlotCount { entries, vms },
        )?;
    }
    if let [DELTA_CACHE_TRAILER, list @ ..] = rest {
        rest = take_each(
            list,
            &mut config.vms,
            |vm| &mut vm.delta_cache_mib,
            |entries, vms| CanonicalError::DeltaCacheCount { entries, vms },
        )?;
    }
    if !rest.is_empty() {
        return Err(CanonicalError::Trailing(rest.len()));
    }
    if encode(&config) != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(config)
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
