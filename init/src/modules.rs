//! A small modprobe: parses `modules.dep` / `modules.builtin`, resolves a wanted
//! module's dependencies in load order (each once, cycles detected) and loads the
//! files with `finit_module`.
//!
//! Parsing and resolution are pure and unit-tested; only [`load_file`] touches
//! the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The KVM vendor modules, both listed so the image can ship both.
pub const KVM_MODULES: &[&str] = &["kvm_amd", "kvm_intel"];

/// Watchdog fallback when no watchdog that keeps real time appeared
/// (`system::load_watchdog`).
pub const WATCHDOG_FALLBACK: &str = "softdog";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModError {
    #[error("module {0} is not in modules.dep")]
    NotFound(String),
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("modules.dep line {line}: {problem}")]
    Parse { line: usize, problem: String },
}

/// The kernel's module name for a path: basename without `.ko[.xz|.zst|.gz]`,
/// with `-` folded to `_` (the kernel treats them alike).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suf| base.strip_suffix(suf))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// Normalizes a user-given module name (`kvm-amd` and `kvm_amd` are the same).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// One module's entry in `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Path relative to `/lib/modules/<release>/`.
    pub path: String,
    /// Names of the modules it depends on.
    pub deps: Vec<String>,
}

/// The parsed `modules.dep` (+ builtin list) of one kernel release.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    entries: BTreeMap<String, DepEntry>,
    builtin: BTreeSet<String>,
}

/// What to do with one module, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Load this file (relative to the modules directory).
    Load { name: String, path: String },
    /// Built into the kernel: nothing to load.
    Builtin { name: String },
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Load { name, .. } | Step::Builtin { name } => name,
        }
    }
}

impl ModuleIndex {
    /// Parses `modules.dep` text (`path: dep-path dep-path ...`, one per line).
    pub fn parse(dep_text: &str, builtin_text: &str) -> Result<Self, ModError> {
        let mut entries = BTreeMap::new();
        for (i, line) in dep_text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or_else(|| ModError::Parse {
                line: i + 1,
                problem: "no ':' after the module path".into(),
            })?;
            let path = path.trim();
            if path.is_empty() {
                return Err(ModError::Parse {
                    line: i + 1,
                    problem: "empty module path".into(),
                });
            }
            let deps = deps.split_whitespace().map(module_name).collect();
            entries.insert(
                module_name(path),
                DepEntry {
                    path: path.to_string(),
                    deps,
                },
            );
        }
        let builtin = builtin_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(module_name)
            .collect();
        Ok(ModuleIndex { entries, builtin })
    }

    pub fn contains(&self, name: &str) -> bool {
        let n = normalize(name);
        self.entries.contains_key(&n) || self.builtin.contains(&n)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Load order for `wanted`: dependencies before dependents, each module once,
    /// skipping those already in `done` (and adding the result to it).
    pub fn resolve(
        &self,
        wanted: &str,
        done: &mut BTreeSet<String>,
    ) -> Result<Vec<Step>, ModError> {
        let mut out = Vec::new();
        let mut stack = Vec::new();
        self.visit(&normalize(wanted), done, &mut stack, &mut out)?;
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        out: &mut Vec<Step>,
    ) -> Result<(), ModError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_string());
            return Err(ModError::Cycle(cycle));
        }
        if self.builtin.contains(name) && !self.entries.contains_key(name) {
            done.insert(name.to_string());
            out.push(Step::Builtin {
                name: name.to_string(),
            });
            return Ok(());
        }
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModError::NotFound(name.to_string()))?;
        stack.push(name.to_string());
        for dep in &entry.deps {
            self.visit(dep, done, stack, out)?;
        }
        stack.pop();
        done.insert(name.to_string());
        out.push(Step::Load {
            name: name.to_string(),
            path: entry.path.clone(),
        });
        Ok(())
    }

    /// Every module file `names` need (the image ships exactly these).
    pub fn closure(&self, names: &[&str]) -> Result<Vec<Step>, ModError> {
        let mut done = BTreeSet::new();
        let mut all = Vec::new();
        for n in names {
            all.extend(self.resolve(n, &mut done)?);
        }
        Ok(all)
    }
}

/// `kvm_amd` for `AuthenticAMD`/`HygonGenuine`, `kvm_intel` for `GenuineIntel`,
/// read from `/proc/cpuinfo` text.
pub fn kvm_module_for_vendor(cpuinfo: &str) -> Option<&'static str> {
    let vendor = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|rest| rest.split(':').nth(1))
        .map(str::trim)?;
    match vendor {
        "AuthenticAMD" | "HygonGenuine" => Some("kvm_amd"),
        "GenuineIntel" => Some("kvm_intel"),
        _ => None,
    }
}

/// How a load attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded,
    AlreadyLoaded,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("finit_module({path}): {errno}")]
    Kernel {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("finit_module({path}): the kernel cannot decompress modules ({errno}); ship them uncompressed")]
    NoDecompress {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
}

/// `MODULE_INIT_COMPRESSED_FILE` from `<linux/module.h>`.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

fn is_compressed(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.ends_with(".xz") || s.ends_with(".zst") || s.ends_with(".gz")
}

/// Loads one module file with `finit_module`. Compressed files are handed to
/// the kernel with `MODULE_INIT_COMPRESSED_FILE`. `EEXIST` counts as loaded.
pub fn load_file(path: &Path) -> Result<LoadOutcome, LoadError> {
    use nix::kmod::{finit_module, ModuleInitFlags};
    let file = std::fs::File::open(path).map_err(|source| LoadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let compressed = is_compressed(path);
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&file, c"", flags) {
        Ok(()) => Ok(LoadOutcome::Loaded),
        Err(nix::errno::Errno::EEXIST) => Ok(LoadOutcome::AlreadyLoaded),
        // EINVAL for an unknown flag / EOPNOTSUPP: no in-kernel decompression.
        Err(errno @ (nix::errno::Errno::EINVAL | nix::errno::Errno::EOPNOTSUPP)) if compressed => {
            Err(LoadError::NoDecompress {
                path: path.to_path_buf(),
                errno,
            })
        }
        Err(errno) => Err(LoadError::Kernel {
            path: path.to_path_buf(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz kernel/virt/lib/irqbypass.ko.xz kernel/drivers/crypto/ccp/ccp.ko.xz
kernel/arch/x86/kvm/kvm-intel.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz kernel/virt/lib/irqbypass.ko.xz
kernel/arch/x86/kvm/kvm.ko.xz: kernel/virt/lib/irqbypass.ko.xz
kernel/virt/lib/irqbypass.ko.xz:
kernel/drivers/crypto/ccp/ccp.ko.xz:
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/drivers/net/tun.ko:
";

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(Step::name).collect()
    }

    #[test]
    fn names_fold_dashes_and_strip_suffixes() {
        assert_eq!(module_name("kernel/arch/x86/kvm/kvm-amd.ko.xz"), "kvm_amd");
        assert_eq!(module_name("a/tun.ko"), "tun");
        assert_eq!(module_name("b/x.ko.zst"), "x");
    }

    #[test]
    fn kvm_amd_loads_its_dependencies_first_each_once() {
        let idx = ModuleIndex::parse(DEP, "").unwrap();
        let steps = idx.resolve("kvm-amd", &mut BTreeSet::new()).unwrap();
        assert_eq!(names(&steps), ["irqbypass", "kvm", "ccp", "kvm_amd"]);
        let pos = |n| steps.iter().position(|s| s.name() == n).unwrap();
        assert!(pos("irqbypass") < pos("kvm"));
        assert!(pos("kvm") < pos("kvm_amd"));
        assert!(pos("ccp") < pos("kvm_amd"));
    }

    #[test]
    fn already_loaded_modules_are_not_repeated() {
        let idx = ModuleIndex::parse(DEP, "").unwrap();
        let all = idx
            .closure(&["bridge", "kvm_amd", "kvm_intel", "tun"])
            .unwrap();
        assert_eq!(
            names(&all),
            [
                "llc",
                "stp",
                "bridge",
                "irqbypass",
                "kvm",
                "ccp",
                "kvm_amd",
                "kvm_intel",
                "tun"
            ]
        );
    }

    #[test]
    fn cycle_is_detected_and_named() {
        let dep = "a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n";
        let idx = ModuleIndex::parse(dep, "").unwrap();
        let err = idx.resolve("a", &mut BTreeSet::new()).unwrap_err();
        assert_eq!(
            err,
            ModError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn missing_module_and_missing_dependency_are_errors() {
        let idx = ModuleIndex::parse("a.ko: gone.ko\n", "").unwrap();
        assert_eq!(
            idx.resolve("nope", &mut BTreeSet::new()).unwrap_err(),
            ModError::NotFound("nope".into())
        );
        assert_eq!(
            idx.resolve("a", &mut BTreeSet::new()).unwrap_err(),
            ModError::NotFound("gone".into())
        );
    }

    #[test]
    fn builtin_modules_count_as_loaded() {
        let idx = ModuleIndex::parse(
            "kernel/x/virtio_net.ko: kernel/y/virtio_pci.ko\n",
            "kernel/y/virtio_pci.ko\n",
        )
        .unwrap();
        let steps = idx.resolve("virtio_net", &mut BTreeSet::new()).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Builtin {
                    name: "virtio_pci".into()
                },
                Step::Load {
                    name: "virtio_net".into(),
                    path: "kernel/x/virtio_net.ko".into()
                }
            ]
        );
        assert!(idx.is_builtin("virtio-pci"));
    }

    #[test]
    fn malformed_line_is_reported_with_its_number() {
        let err = ModuleIndex::parse("a.ko:\nno colon here\n", "").unwrap_err();
        assert!(matches!(err, ModError::Parse { line: 2, .. }));
    }

    #[test]
    fn vendor_picks_the_kvm_module() {
        assert_eq!(
            kvm_module_for_vendor("processor\t: 0\nvendor_id\t: AuthenticAMD\n"),
            Some("kvm_amd")
        );
        assert_eq!(
            kvm_module_for_vendor("vendor_id\t: GenuineIntel\n"),
            Some("kvm_intel")
        );
        assert_eq!(kvm_module_for_vendor("flags: x\n"), None);
    }
}
