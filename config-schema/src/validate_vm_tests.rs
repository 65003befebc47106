//! One test per rule of `validate_vm.rs`: each breaks `examples/linux-vm.toml`
//! (VM 0 "kv" lockstep, VM 1 "web" checkpoint, image 0 "web-linux") in one
//! way and checks the field path and the problem named.

use super::*;
use crate::model::{GuestMode, ImagePart, LinuxImage, NamedRegion, Replication};
use crate::validate::{parse, validate, validate_unpinned, MAX_VM_MEMORY_MIB};

const LINUX: &str = include_str!("../../examples/linux-vm.toml");

fn base() -> ClusterConfig {
    parse(LINUX).unwrap().config
}

fn assert_refused(edit: impl FnOnce(&mut ClusterConfig), path: &str, words: &str) {
    let mut c = base();
    edit(&mut c);
    match validate(&c) {
        Err(ConfigError::Invalid { path: p, problem }) => {
            assert_eq!(p, path, "message: {problem}");
            assert!(problem.contains(words), "{p}: {problem:?} lacks {words:?}");
        }
        other => panic!("expected a rule violation at {path}, got {other:?}"),
    }
}

fn assert_valid(edit: impl FnOnce(&mut ClusterConfig)) {
    let mut c = base();
    edit(&mut c);
    validate(&c).unwrap();
}

#[test]
fn example_is_valid_and_reads_as_written() {
    let v = parse(LINUX).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    let (kv, web) = (&v.config.vms[0], &v.config.vms[1]);
    assert_eq!(
        (kv.replication, kv.vcpus, kv.epoch_ms),
        (Replication::Lockstep, 1, None)
    );
    assert_eq!(
        (web.replication, web.vcpus, web.epoch_ms),
        (Replication::Checkpoint, 2, Some(20))
    );
    assert_eq!(
        resolve_image(&v.config, &web.image),
        Some(ImageRef::Shared(&v.config.images[0]))
    );
}

#[test]
fn epoch_defaults_to_20() {
    let text = LINUX.replace("epoch_ms = 20\n", "");
    let c = parse(&text).unwrap().config;
    assert_eq!(c.vms[1].epoch_ms, None);
    assert_eq!(c.vms[1].epoch_ms_or_default(), 20);
}

#[test]
fn lockstep_runs_one_vcpu() {
    assert_refused(
        |c| c.vms[0].vcpus = 2,
        "vms[0].vcpus",
        "VM \"kv\": lockstep runs 1 vCPU, not 2",
    );
}

#[test]
fn lockstep_has_no_epoch() {
    assert_refused(
        |c| c.vms[0].epoch_ms = Some(20),
        "vms[0].epoch_ms",
        "applies to replication = \"checkpoint\" only",
    );
}

#[test]
fn lockstep_replays_only_the_reference_guest() {
    assert_refused(
        |c| c.vms[1].replication = Replication::Lockstep,
        "vms[1].image",
        "VM \"web\": lockstep replays only the reference guest (\"kv-guest\")",
    );
}

#[test]
fn checkpoint_boots_a_linux_image() {
    assert_refused(
        |c| c.vms[0].replication = Replication::Checkpoint,
        "vms[0].image",
        "VM \"kv\": checkpoint mode boots a Linux image",
    );
}

#[test]
fn checkpoint_vcpus_1_to_4() {
    for n in [0, 5, 64] {
        assert_refused(
            |c| c.vms[1].vcpus = n,
            "vms[1].vcpus",
            &format!("checkpoint runs 1..=4 vCPUs, not {n}"),
        );
    }
    for n in 1..=4 {
        assert_valid(|c| c.vms[1].vcpus = n);
    }
}

#[test]
fn epoch_in_range() {
    for e in [0, 4, 1001] {
        assert_refused(
            |c| c.vms[1].epoch_ms = Some(e),
            "vms[1].epoch_ms",
            &format!("epoch_ms = {e} is outside 5..=1000"),
        );
    }
    for e in [5, 1000] {
        assert_valid(|c| c.vms[1].epoch_ms = Some(e));
    }
}

#[test]
fn the_delta_cache_is_checkpoint_only_and_at_most_the_vms_memory() {
    assert_refused(
        |c| c.vms[0].delta_cache_mib = Some(64),
        "vms[0].delta_cache_mib",
        "delta_cache_mib = 64 applies to replication = \"checkpoint\" only",
    );
    // web has 512 MiB.
    assert_refused(
        |c| c.vms[1].delta_cache_mib = Some(513),
        "vms[1].delta_cache_mib",
        "delta_cache_mib = 513 is more than the VM's memory_mib = 512",
    );
    for m in [0, 64, 512] {
        assert_valid(|c| c.vms[1].delta_cache_mib = Some(m));
    }
    assert_eq!(base().vms[1].delta_cache_mib_or_default(), 64);
}

#[test]
fn linux_has_no_reference_workload() {
    assert_refused(
        |c| c.vms[1].mode = GuestMode::Cpu,
        "vms[1].mode",
        "a Linux image has none",
    );
}

#[test]
fn linux_memory_floor_counts_kernel_and_initrd() {
    assert_refused(
        |c| c.vms[1].memory_mib = 64,
        "vms[1].memory_mib",
        "VM \"web\": 64 MiB is too little for image \"web-linux\": it needs at least 65 MiB",
    );
    assert_refused(
        |c| {
            c.vms[1].memory_mib = 80;
            c.images[0].kernel.size_bytes = 20 << 20;
        },
        "vms[1].memory_mib",
        "needs at least 85 MiB (64 MiB plus its kernel and initrd)",
    );
    assert_valid(|c| c.vms[1].memory_mib = 65);
    assert_refused(
        |c| c.vms[1].memory_mib = MAX_VM_MEMORY_MIB + 1,
        "vms[1].memory_mib",
        "out of range",
    );
}

#[test]
fn unknown_image_lists_the_configs_images() {
    assert_refused(
        |c| c.vms[1].image = "debian".into(),
        "vms[1].image",
        "unknown guest image \"debian\": this release ships \"kv-guest\", the config's \
         [[images]] define \"web-linux\"",
    );
}

#[test]
fn image_names() {
    assert_refused(
        |c| c.images[0].name = "kv-guest".into(),
        "images[0].name",
        "an image this release ships",
    );
    assert_refused(
        |c| {
            let again = c.images[0].clone();
            c.images.push(again);
        },
        "images[1].name",
        "already used by images[0]",
    );
}

#[test]
fn image_region_must_exist_and_be_no_vm_disk() {
    assert_refused(
        |c| c.images[0].region = "nowhere".into(),
        "images[0].region",
        "unknown storage region \"nowhere\"",
    );
    assert_refused(
        |c| c.images[0].region = "web-disk".into(),
        "images[0].region",
        "is the disk of VM \"web\": its guest could overwrite the image",
    );
}

#[test]
fn image_region_never_overlaps_fencing_or_disks() {
    // The region rules of every storage region hold for the image region.
    assert_refused(
        |c| c.storage.regions[2].offset_mib = 8,
        "storage.regions[2]",
        "overlaps storage.fencing",
    );
    assert_refused(
        |c| c.storage.regions[2].offset_mib = 300,
        "storage.regions[2]",
        "overlaps storage.regions[1]",
    );
}

#[test]
fn part_inside_its_region() {
    assert_refused(
        |c| c.images[0].initrd.as_mut().unwrap().offset_mib = 64,
        "images[0].initrd",
        "offset 64 MiB + 14 bytes runs past its region (64 MiB)",
    );
    assert_refused(
        |c| c.images[0].kernel.size_bytes = (64 << 20) + 1,
        "images[0].kernel",
        "runs past its region",
    );
}

fn second_image(c: &mut ClusterConfig, kernel_mib: u64) {
    let mut img = c.images[0].clone();
    img.name = "other".into();
    img.initrd = None;
    img.kernel.offset_mib = kernel_mib;
    img.kernel.size_bytes = 3 << 20;
    img.kernel.sha256 = "ab".repeat(32);
    c.images.push(img);
}

#[test]
fn parts_do_not_overlap_unless_the_same_file() {
    assert_refused(
        |c| second_image(c, 31),
        "images[1].kernel",
        "overlap images[0].initrd [0x2000000, 0x200000e)",
    );
    assert_valid(|c| second_image(c, 40));
    // Two images may share a file (same place, length and hash): other command lines.
    assert_valid(|c| {
        let mut img = c.images[0].clone();
        img.name = "web-debug".into();
        img.cmdline = "console=ttyS0 debug".into();
        c.images.push(img);
    });
    assert_refused(
        |c| {
            let mut img = c.images[0].clone();
            img.name = "web-debug".into();
            img.kernel.sha256 = "00".repeat(32);
            c.images.push(img);
        },
        "images[1].kernel",
        "overlap images[0].kernel",
    );
}

#[test]
fn signed_configs_pin_every_part() {
    let blank = |c: &mut ClusterConfig| {
        c.images[0].kernel.size_bytes = 0;
        c.images[0].kernel.sha256.clear();
    };
    assert_refused(
        blank,
        "images[0].kernel.sha256",
        "is not pinned: write the file with `ftctl image write`",
    );
    let mut c = base();
    blank(&mut c);
    validate_unpinned(&c).unwrap();
    assert_refused(
        |c| c.images[0].kernel.size_bytes = 0,
        "images[0].kernel.size_bytes",
        "must be greater than 0",
    );
    assert_refused(
        |c| c.images[0].kernel.sha256 = "AB".repeat(32),
        "images[0].kernel.sha256",
        "is not 64 lowercase hex digits",
    );
    assert_refused(
        |c| c.images[0].kernel.sha256.pop().map(drop).unwrap_or(()),
        "images[0].kernel.sha256",
        "is not 64 lowercase hex digits",
    );
}

#[test]
fn cmdline_bounded() {
    assert_refused(
        |c| c.images[0].cmdline = "x".repeat(MAX_CMDLINE + 1),
        "images[0].cmdline",
        "at most 1024 bytes",
    );
    assert_refused(
        |c| c.images[0].cmdline = "a\0b".into(),
        "images[0].cmdline",
        "without NUL",
    );
}

#[test]
fn initrd_is_optional() {
    assert_valid(|c| c.images[0].initrd = None);
    let text = LINUX.replace(
        "initrd = { offset_mib = 32, size_bytes = 14, sha256 = \"ce377c737f4975553f8a17bf549bd0306a23aa4e976ffe480bfb5d1f570d31e9\" }\n",
        "",
    );
    assert_eq!(parse(&text).unwrap().config.images[0].initrd, None);
}

#[test]
fn an_image_can_be_built_in_code() {
    // The types a tool fills in (ftctl image write does).
    let mut c = base();
    c.storage.regions.push(NamedRegion {
        name: "more-images".into(),
        offset_mib: 400,
        size_mib: 16,
    });
    c.images.push(LinuxImage {
        name: "tiny".into(),
        region: "more-images".into(),
        kernel: ImagePart {
            offset_mib: 0,
            size_bytes: 1,
            sha256: "cd".repeat(32),
        },
        initrd: None,
        cmdline: String::new(),
    });
    validate(&c).unwrap();
}

#[test]
fn fencing_slots_are_unique_and_in_range_counting_positions() {
    // Explicit slots anywhere in range, in any order.
    assert_valid(|c| {
        c.vms[0].slot = Some(7);
        c.vms[1].slot = Some(2);
    });
    // "web" has no slot: it takes its position, 1.
    assert_refused(
        |c| c.vms[0].slot = Some(1),
        "vms[1] (no slot: its position)",
        "duplicate fencing slot 1: already used by vms[0].slot",
    );
    assert_refused(
        |c| {
            c.vms[0].slot = Some(4);
            c.vms[1].slot = Some(4);
        },
        "vms[1].slot",
        "duplicate fencing slot 4",
    );
    assert_refused(
        |c| c.vms[1].slot = Some(crate::model::MAX_SLOT + 1),
        "vms[1].slot",
        "fencing slot 256 is out of range 0..=255",
    );
}

#[test]
fn a_slot_the_fencing_region_cannot_hold_is_refused_or_warned_about() {
    // 1 MiB for 3 hosts: 42 slots with 512-byte blocks, 5 with 4 KiB.
    assert_refused(
        |c| {
            c.storage.fencing.size_mib = 1;
            c.vms[1].slot = Some(42);
        },
        "vms[1].slot",
        "fencing slot 42: storage.fencing (1 MiB) holds 42 VM slots for 3 hosts even with \
         512-byte blocks",
    );
    let mut c = base();
    c.storage.fencing.size_mib = 1;
    c.vms[1].slot = Some(5);
    let v = validate(&c).unwrap();
    let w: Vec<_> = v.iter().filter(|w| w.path == "vms[1].slot").collect();
    assert_eq!(w.len(), 1, "{v:?}");
    assert!(
        w[0].message
            .contains("4 KiB physical blocks storage.fencing (1 MiB) holds 5 VM slots"),
        "{}",
        w[0].message
    );
    c.vms[1].slot = Some(4);
    assert!(validate(&c)
        .unwrap()
        .iter()
        .all(|w| w.path != "vms[1].slot"));
}
