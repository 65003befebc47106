//! Loading the kernel modules the guest needs from the initramfs, with `finit_module`.
//!
//! The initramfs carries the closure made by image's `modclosure` under
//! `/lib/modules/<release>/`: the `.ko` files and a `modules.dep` in depmod's format where every
//! line lists **all** dependencies of a module, each before the ones it needs. A module is
//! loaded as modprobe does: its dependency list from the end, then the module itself; each
//! file once. As modprobe does, a module gets the `<module>.<param>=<value>` words of the kernel
//! command line as its parameters (the kernel applies them only to built-in code); e.g.
//! `virtio_mmio.device=4K@0xd0000000:5`, which only a kernel with
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` understands (the pinned Debian kernel does not: it
//! warns about an unknown parameter and loads the module anyway). [`load_plan`] and
//! [`module_params`] are pure; [`load_all`] talks to the kernel.

use std::collections::BTreeMap;
use std::path::Path;

/// The modules the guest loads, in this order (virtio-mmio as ftvmm announces its devices,
/// virtio-pci so the same initramfs also runs under a PCI machine).
pub const WANTED: &[&str] = &["virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net"];

/// A problem with `modules.dep`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A line without `path:`.
    #[error("modules.dep line {line}: no ':' after the module path")]
    Syntax { line: usize },
    /// A wanted module is not in the file.
    #[error("module {0} is not in modules.dep")]
    Missing(String),
}

/// A failure to load one module.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `modules.dep` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Its content is wrong.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A module file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Its parameters from the command line hold a NUL byte.
    #[error("parameters of {path}: {params:?} hold a NUL byte")]
    Params { path: String, params: String },
    /// The kernel refused it.
    #[error("finit_module({path}): {errno}")]
    Kernel {
        path: String,
        errno: rustix::io::Errno,
    },
}

/// The kernel's name of a module file: basename without `.ko`, `-` as `_`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.strip_suffix(".ko").unwrap_or(base).replace('-', "_")
}

/// Module files (relative to the modules directory) to load, in order, for `wanted`.
pub fn load_plan(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, PlanError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (i, line) in modules_dep.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, rest) = line
            .split_once(':')
            .ok_or(PlanError::Syntax { line: i + 1 })?;
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.trim().to_string(), list));
    }
    let mut plan: Vec<String> = Vec::new();
    for name in wanted {
        let (path, list) = deps
            .get(&name.replace('-', "_"))
            .ok_or_else(|| PlanError::Missing(name.to_string()))?;
        for file in list.iter().rev().chain(std::iter::once(path)) {
            if !plan.contains(file) {
                plan.push(file.clone());
            }
        }
    }
    Ok(plan)
}

/// The parameters of module `name` on the kernel command line: `name.k=v` words as `k=v`,
/// space-separated (`-` and `_` in the module name are the same).
pub fn module_params(cmdline: &str, name: &str) -> String {
    let name = name.replace('-', "_");
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| {
            let (module, param) = w.split_once('.')?;
            (module.replace('-', "_") == name && param.contains('=')).then_some(param)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads [`WANTED`] from `moddir` (`/lib/modules/<release>`) with their parameters from
/// `cmdline`; returns the files loaded. A module the kernel already has (`EEXIST`) counts as
/// loaded.
pub fn load_all(moddir: &Path, cmdline: &str) -> Result<Vec<String>, LoadError> {
    let dep_path = moddir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_path).map_err(|source| LoadError::Read {
        path: dep_path.display().to_string(),
        source,
    })?;
    let plan = load_plan(&text, WANTED)?;
    for rel in &plan {
        let path = moddir.join(rel);
        let file = std::fs::File::open(&path).map_err(|source| LoadError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let params = module_params(cmdline, &module_name(rel));
        let c_params = std::ffi::CString::new(params.clone()).map_err(|_| LoadError::Params {
            path: path.display().to_string(),
            params,
        })?;
        match rustix::system::finit_module(&file, &c_params, 0) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(errno) => {
                return Err(LoadError::Kernel {
                    path: path.display().to_string(),
                    errno,
                })
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of the modules.dep that `modclosure` writes for the pinned kernel.
    const DEP: &str = "\
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/core/failover.ko:
";

    #[test]
    fn dependencies_first_each_once() {
        let plan = load_plan(DEP, &["virtio_mmio", "virtio-net"]).unwrap();
        assert_eq!(
            plan,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
    }

    #[test]
    fn parameters_from_the_command_line() {
        let line =
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 \
                    virtio_net.napi_tx=1 virtio_mmio.flag mode=kv";
        assert_eq!(
            module_params(line, "virtio_mmio"),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(module_params(line, "virtio_net"), "napi_tx=1");
        assert_eq!(module_params(line, "virtio_blk"), "");
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(
            load_plan(DEP, &["virtio_blk"]),
            Err(PlanError::Missing("virtio_blk".into()))
        );
        assert_eq!(
            load_plan("a.ko b.ko\n", &["a"]),
            Err(PlanError::Syntax { line: 1 })
        );
    }

    #[test]
    fn the_initramfs_ships_what_init_loads() {
        let script = include_str!("../build-initramfs.sh");
        let line = script
            .lines()
            .find_map(|l| l.strip_prefix("WANTED_MODULES=("))
            .and_then(|l| l.strip_suffix(')'))
            .expect("WANTED_MODULES=(...) in build-initramfs.sh");
        assert_eq!(line.split(' ').collect::<Vec<_>>(), WANTED);
    }
}
