//! The kernel modules the appliance needs: closure over dependencies and a
//! filtered `modules.dep` tree.
//!
//! Debian's kernel package ships no `modules.dep` (its postinst runs
//! `depmod`), so dependencies are read from each module's own `.modinfo` ELF
//! section (`depends=a,b`, written by the kernel's modpost from symbol use,
//! the same information depmod derives). Soft dependencies are not followed.
//!
//! Output, below `lib/modules/<version>/`:
//! - the `.ko` files of the closure at their usual `kernel/...` paths;
//! - `modules.dep` in depmod's format, only the included modules:
//!   `kernel/a.ko: kernel/b.ko kernel/c.ko`, every dependency listed
//!   (transitively), each module before the ones it needs, so a loader
//!   loads the list **from the end** and then the module itself (as modprobe does);
//! - `modules.alias` in depmod's format (`alias <pattern> <module>`), from
//!   each included module's `.modinfo` `alias=` fields, sorted: init matches
//!   the machine's `/sys/bus/*/devices/*/modalias` against it;
//! - `modules.order` filtered to the included modules; `modules.builtin` as shipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// Errors while resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable ELF module: {message}")]
    Elf { path: String, message: String },
    #[error("{path}: no .modinfo section")]
    NoModinfo { path: String },
    #[error("module {module} depends on {dependency}, which is not in the tree")]
    MissingDependency { module: String, dependency: String },
    #[error("dependency cycle through module {module}")]
    Cycle { module: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KmodError + '_ {
    move |source| KmodError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Module names compare with `-` and `_` treated alike; this is the `_` form.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(rel: &str) -> Option<String> {
    let file = rel.rsplit('/').next()?;
    file.strip_suffix(".ko").map(normalize)
}

/// What one module's `.modinfo` says about loading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: modules it needs (normalized).
    pub depends: Vec<String>,
    /// `alias=`: device patterns it drives (`pci:v00008086d000010D3sv*...`).
    pub aliases: Vec<String>,
    /// `firmware=`: files below `/lib/firmware` it may request.
    pub firmware: Vec<String>,
}

/// The `depends=` list of one module file (already normalized).
pub fn read_depends(path: &Path) -> Result<Vec<String>, KmodError> {
    Ok(read_modinfo(path)?.depends)
}

/// The `.modinfo` of one module file.
pub fn read_modinfo(path: &Path) -> Result<ModInfo, KmodError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let elf = object::File::parse(&*data).map_err(|e| KmodError::Elf {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or_else(|| KmodError::NoModinfo {
            path: path.display().to_string(),
        })?;
    let bytes = section.data().map_err(|e| KmodError::Elf {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(parse_modinfo(bytes))
}

/// Splits the NUL-separated `key=value` strings of `.modinfo`.
pub fn parse_modinfo(modinfo: &[u8]) -> ModInfo {
    let values = |key: &[u8]| -> Vec<String> {
        modinfo
            .split(|b| *b == 0)
            .filter_map(|field| field.strip_prefix(key))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| !v.is_empty())
            .collect()
    };
    ModInfo {
        depends: parse_modinfo_depends(modinfo),
        aliases: values(b"alias="),
        firmware: values(b"firmware="),
    }
}

/// Extracts `depends=` from the NUL-separated `key=value` strings of `.modinfo`.
pub fn parse_modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|b| *b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| normalize(&d))
        .collect()
}

/// An unpacked `lib/modules/<version>` directory.
#[derive(Debug)]
pub struct ModuleTree {
    root: PathBuf,
    /// normalized name → path relative to `root` (`kernel/...ko`).
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

/// The modules to include, and what was asked for but not available.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closure {
    /// normalized name → (relative path, direct dependencies).
    pub modules: BTreeMap<String, (String, Vec<String>)>,
    /// normalized name → its `.modinfo` (aliases, firmware).
    pub info: BTreeMap<String, ModInfo>,
    /// Wanted modules that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Wanted modules that exist neither as a file nor built in.
    pub missing: Vec<String>,
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> Result<(), KmodError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel_child = format!("{rel}/{name}");
        let ft = entry.file_type().map_err(io_err(&entry.path()))?;
        if ft.is_dir() {
            walk(&entry.path(), &rel_child, out)?;
        } else if let Some(module) = module_name_of(&rel_child) {
            out.insert(module, rel_child);
        }
    }
    Ok(())
}

impl ModuleTree {
    /// Indexes the `.ko` files below `root/kernel` and reads `root/modules.builtin`.
    pub fn scan(root: &Path) -> Result<Self, KmodError> {
        let mut by_name = BTreeMap::new();
        walk(&root.join("kernel"), "kernel", &mut by_name)?;
        let builtin_path = root.join("modules.builtin");
        let builtin = match fs::read_to_string(&builtin_path) {
            Ok(text) => text.lines().filter_map(module_name_of).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err(&builtin_path)(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            by_name,
            builtin,
        })
    }

    /// The directory this tree was scanned from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Relative path of module `name`, if it exists as a file.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(&normalize(name)).map(String::as_str)
    }

    /// The wanted modules plus everything they depend on.
    pub fn closure<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Closure, KmodError> {
        let mut closure = Closure::default();
        let mut queue: Vec<String> = Vec::new();
        for w in wanted {
            let name = normalize(w.as_ref());
            if self.by_name.contains_key(&name) {
                queue.push(name);
            } else if self.builtin.contains(&name) {
                closure.builtin.push(name);
            } else {
                closure.missing.push(name);
            }
        }
        while let Some(name) = queue.pop() {
            if closure.modules.contains_key(&name) {
                continue;
            }
            let rel = self.by_name[&name].clone();
            let info = read_modinfo(&self.root.join(&rel))?;
            let mut deps = info.depends.clone();
            deps.sort();
            deps.dedup();
            for d in &deps {
                if !self.by_name.contains_key(d) {
                    return Err(KmodError::MissingDependency {
                        module: name.clone(),
                        dependency: d.clone(),
                    });
                }
                queue.push(d.clone());
            }
            closure.info.insert(name.clone(), info);
            closure.modules.insert(name, (rel, deps));
        }
        Ok(closure)
    }
}

impl Closure {
    /// All (transitive) dependencies of `name`, each before the ones it needs.
    pub fn all_deps(&self, name: &str) -> Result<Vec<String>, KmodError> {
        fn visit(
            c: &Closure,
            name: &str,
            on_path: &mut BTreeSet<String>,
            done: &mut BTreeSet<String>,
            post: &mut Vec<String>,
        ) -> Result<(), KmodError> {
            if done.contains(name) {
                return Ok(());
            }
            if !on_path.insert(name.to_string()) {
                return Err(KmodError::Cycle {
                    module: name.to_string(),
                });
            }
            for d in &c.modules[name].1 {
                visit(c, d, on_path, done, post)?;
            }
            on_path.remove(name);
            done.insert(name.to_string());
            post.push(name.to_string());
            Ok(())
        }
        let mut post = Vec::new();
        let mut done = BTreeSet::new();
        let mut on_path = BTreeSet::from([name.to_string()]);
        for d in &self.modules[name].1 {
            visit(self, d, &mut on_path, &mut done, &mut post)?;
        }
        post.reverse();
        Ok(post)
    }

    /// `modules.dep` text for the included modules, sorted by path.
    pub fn modules_dep(&self) -> Result<String, KmodError> {
        let mut lines: Vec<String> = Vec::new();
        for (name, (rel, _)) in &self.modules {
            let all = self.all_deps(name)?;
            let deps = all.iter().map(|d| self.modules[d].0.as_str());
            let mut line = format!("{rel}:");
            for d in deps {
                line.push(' ');
                line.push_str(d);
            }
            lines.push(line);
        }
        lines.sort();
        Ok(lines.iter().map(|l| format!("{l}\n")).collect())
    }

    /// `modules.alias` text for the included modules: `alias <pattern> <module>`
    /// per alias, sorted (depmod's format; init reads it).
    pub fn modules_alias(&self) -> String {
        let mut lines: Vec<String> = self
            .info
            .iter()
            .flat_map(|(name, info)| {
                info.aliases
                    .iter()
                    .map(move |a| format!("alias {a} {name}\n"))
            })
            .collect();
        lines.sort();
        lines.concat()
    }

    /// Writes the `.ko` files and index files of this closure below `out`
    /// (which becomes `lib/modules/<version>` in the image).
    pub fn write_tree(&self, tree: &ModuleTree, out: &Path) -> Result<(), KmodError> {
        for (rel, _) in self.modules.values() {
            let dst = out.join(rel);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::copy(tree.root.join(rel), &dst).map_err(io_err(&dst))?;
        }
        let dep_path = out.join("modules.dep");
        fs::write(&dep_path, self.modules_dep()?).map_err(io_err(&dep_path))?;
        let alias_path = out.join("modules.alias");
        fs::write(&alias_path, self.modules_alias()).map_err(io_err(&alias_path))?;
        let included: BTreeSet<&str> = self.modules.values().map(|(r, _)| r.as_str()).collect();
        let order_src = tree.root.join("modules.order");
        if let Ok(text) = fs::read_to_string(&order_src) {
            let filtered: String = text
                .lines()
                .filter(|l| included.contains(l.trim()))
                .map(|l| format!("{}\n", l.trim()))
                .collect();
            let order_dst = out.join("modules.order");
            fs::write(&order_dst, filtered).map_err(io_err(&order_dst))?;
        }
        let builtin_src = tree.root.join("modules.builtin");
        if builtin_src.exists() {
            let builtin_dst = out.join("modules.builtin");
            fs::copy(&builtin_src, &builtin_dst).map_err(io_err(&builtin_dst))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closure(edges: &[(&str, &[&str])]) -> Closure {
        let mut c = Closure::default();
        for (name, deps) in edges {
            c.modules.insert(
                name.to_string(),
                (
                    format!("kernel/{name}.ko"),
                    deps.iter().map(|d| d.to_string()).collect(),
                ),
            );
        }
        c
    }

    #[test]
    fn modinfo_depends_is_split_and_normalized() {
        let info = b"license=GPL\0depends=kvm,ccp-crypto,\0intree=Y\0name=kvm_amd\0";
        assert_eq!(parse_modinfo_depends(info), ["kvm", "ccp_crypto"]);
        assert!(parse_modinfo_depends(b"depends=\0").is_empty());
        assert!(parse_modinfo_depends(b"license=GPL\0").is_empty());
    }

    #[test]
    fn dependencies_are_listed_dependents_first_like_depmod() {
        // kvm_amd -> kvm -> irqbypass, kvm_amd -> ccp (what Debian's 6.1 has).
        let c = closure(&[
            ("kvm_amd", &["ccp", "kvm"]),
            ("kvm", &["irqbypass"]),
            ("irqbypass", &[]),
            ("ccp", &[]),
        ]);
        assert_eq!(c.all_deps("kvm_amd").unwrap(), ["kvm", "irqbypass", "ccp"]);
        let dep = c.modules_dep().unwrap();
        assert!(
            dep.contains("kernel/kvm_amd.ko: kernel/kvm.ko kernel/irqbypass.ko kernel/ccp.ko\n")
        );
        assert!(dep.contains("kernel/irqbypass.ko:\n"));
        assert_eq!(dep.lines().count(), 4);
    }

    #[test]
    fn a_shared_dependency_appears_once_after_all_its_users() {
        let c = closure(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])]);
        let deps = c.all_deps("a").unwrap();
        assert_eq!(deps.len(), 3);
        let pos = |m: &str| deps.iter().position(|d| d == m).unwrap();
        assert!(pos("d") > pos("b") && pos("d") > pos("c"));
    }

    #[test]
    fn cycles_are_reported() {
        let c = closure(&[("a", &["b"]), ("b", &["a"])]);
        assert!(matches!(c.all_deps("a"), Err(KmodError::Cycle { .. })));
    }

    #[test]
    fn modinfo_aliases_and_firmware_are_read() {
        let info = b"firmware=tigon/tg3.bin\0alias=pci:v000014E4d00001644sv*sd*bc*sc*i*\0\
depends=libphy\0firmware=tigon/tg3_tso.bin\0alias=\0name=tg3\0";
        let m = parse_modinfo(info);
        assert_eq!(m.depends, ["libphy"]);
        assert_eq!(m.aliases, ["pci:v000014E4d00001644sv*sd*bc*sc*i*"]);
        assert_eq!(m.firmware, ["tigon/tg3.bin", "tigon/tg3_tso.bin"]);
    }

    #[test]
    fn modules_alias_lists_every_alias_sorted() {
        let mut c = closure(&[("tg3", &[]), ("e1000e", &[])]);
        c.info.insert(
            "tg3".into(),
            ModInfo {
                aliases: vec!["pci:v000014E4d00001644sv*sd*bc*sc*i*".into()],
                ..ModInfo::default()
            },
        );
        c.info.insert(
            "e1000e".into(),
            ModInfo {
                aliases: vec![
                    "pci:v00008086d000010D3sv*sd*bc*sc*i*".into(),
                    "pci:v00008086d0000105Esv*sd*bc*sc*i*".into(),
                ],
                ..ModInfo::default()
            },
        );
        assert_eq!(
            c.modules_alias(),
            "alias pci:v000014E4d00001644sv*sd*bc*sc*i* tg3\n\
             alias pci:v00008086d0000105Esv*sd*bc*sc*i* e1000e\n\
             alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n"
        );
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(
            module_name_of("kernel/arch/x86/kvm/kvm-amd.ko").as_deref(),
            Some("kvm_amd")
        );
        assert_eq!(module_name_of("kernel/x/foo.ko.xz"), None);
    }
}
