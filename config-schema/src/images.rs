//! The guest images this release ships, in one place: `vms[].image` must name
//! one of them (or an operator's Linux image, `[[images]]` in the config),
//! and `vms[].memory_mib` must be at least what it needs.
//!
//! The appliance image (`image/build.sh`) installs each as
//! `<GUEST_DIR>/<name>.elf`; ftvmm loads it from there. A test below reads
//! `image/build.sh` and the guest's own RAM floor so that this list cannot
//! drift from what is really shipped.

/// Where the appliance keeps guest images; ftvmm loads `<GUEST_DIR>/<image>.elf`.
pub const GUEST_DIR: &str = "/lib/ftvmm/guests";

/// A guest image of this release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestImage {
    /// The name `vms[].image` uses.
    pub name: &'static str,
    /// Least RAM the guest boots with, in MiB.
    pub min_memory_mib: u32,
    /// What the guest is, which decides the replication it allows.
    pub kind: GuestKind,
}

/// What a guest image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// The reference unikernel (`guest/`), an ELF: the only guest lockstep
    /// replays (it never reads the TSC; Linux does, and KVM cannot trap it).
    Reference,
    /// A Linux kernel and initrd: checkpoint replication only.
    Linux,
}

/// Least RAM a Linux guest gets, in MiB, on top of its kernel and initrd.
pub const LINUX_MIN_MEMORY_MIB: u32 = 64;

/// The reference guest (`guest/`): the replicated key-value store and the CPU
/// workload (`mode`). It refuses less than 8 MiB of RAM (`guest/src/heap.rs`
/// `MIN_MEM`: the kernel is loaded at 2 MiB and the heap, virtio buffers
/// included, is the RAM above it).
pub const KV_GUEST: GuestImage = GuestImage {
    name: "kv-guest",
    min_memory_mib: 8,
    kind: GuestKind::Reference,
};

/// Every guest image this release ships.
pub const SHIPPED_IMAGES: &[GuestImage] = &[KV_GUEST];

/// The shipped image called `name`, if any.
pub fn shipped(name: &str) -> Option<&'static GuestImage> {
    SHIPPED_IMAGES.iter().find(|i| i.name == name)
}

/// The shipped images' names for messages: `"kv-guest"` or `"a", "b"`.
pub fn shipped_names() -> String {
    SHIPPED_IMAGES
        .iter()
        .map(|i| format!("{:?}", i.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        for (i, img) in SHIPPED_IMAGES.iter().enumerate() {
            crate::validate::check_name("image", img.name).unwrap();
            assert!(img.min_memory_mib > 0);
            assert!(SHIPPED_IMAGES[..i].iter().all(|o| o.name != img.name));
        }
        assert_eq!(shipped("kv-guest"), Some(&KV_GUEST));
        assert_eq!(shipped("ubuntu"), None);
        assert_eq!(shipped_names(), "\"kv-guest\"");
    }

    #[test]
    fn every_shipped_image_is_installed_by_the_image_build() {
        let build = include_str!("../../image/build.sh");
        for img in SHIPPED_IMAGES {
            let path = format!("{GUEST_DIR}/{}.elf", img.name);
            assert!(
                build.contains(&path),
                "image/build.sh does not install {path}"
            );
        }
    }

    #[test]
    fn kv_guest_minimum_is_the_guest_own_floor() {
        // The guest is a separate no_std crate: read its constant.
        let heap = include_str!("../../guest/src/heap.rs");
        let want = format!(
            "pub const MIN_MEM: u64 = {} << 20;",
            KV_GUEST.min_memory_mib
        );
        assert!(heap.contains(&want), "guest/src/heap.rs lacks {want:?}");
    }
}
