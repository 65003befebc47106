//! The curated driver set (`image/drivers.txt`), the pinned firmware
//! (`image/firmware.lock`) and what each group costs in the image.
//!
//! Rules:
//! - Every module of `drivers.txt` is in the image with all its dependencies
//!   (`kmod::ModuleTree::closure`); one that the kernel has neither as a file
//!   nor built in stops the build (`modclosure --drivers`).
//! - A group's cost counts the module files it brings in first, in file order:
//!   a dependency shared with an earlier group is that group's.
//! - Every file of `firmware.lock` is shipped with exactly its pinned sha256,
//!   and every `firmware=` that a module of the table declares is one of them.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use crate::kmod::{normalize, Closure, KmodError};

/// One line of `drivers.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    pub group: String,
    /// Normalized module name.
    pub module: String,
    pub hardware: String,
}

/// The firmware package pin and its files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirmwareLock {
    pub package: String,
    pub version: String,
    pub deb_sha256: String,
    pub files: Vec<FirmwareFile>,
}

/// One shipped firmware file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareFile {
    /// Path below `/lib/firmware` in the image (what the driver requests).
    pub path: String,
    pub sha256: String,
    /// The module that requests it.
    pub module: String,
    /// Path below `lib/firmware` in the .deb (the same unless a symlink there).
    pub source: String,
}

/// Why a list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("{file} line {line}: {problem}")]
    Line {
        file: &'static str,
        line: usize,
        problem: String,
    },
    #[error("{file}: {problem}")]
    File { file: &'static str, problem: String },
}

fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n, l.split_whitespace().collect()))
}

/// Parses `drivers.txt`: `<group> <module> <hardware...>`, each module once.
pub fn parse_drivers(text: &str) -> Result<Vec<Driver>, ListError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (line, words) in lines(text) {
        let bad = |problem: String| ListError::Line {
            file: "drivers.txt",
            line,
            problem,
        };
        let [group, module, hardware @ ..] = words.as_slice() else {
            return Err(bad("want `<group> <module> <hardware>`".into()));
        };
        if hardware.is_empty() {
            return Err(bad(format!("module {module} names no hardware")));
        }
        let module = normalize(module);
        if !seen.insert(module.clone()) {
            return Err(bad(format!("module {module} listed twice")));
        }
        out.push(Driver {
            group: group.to_string(),
            module,
            hardware: hardware.join(" "),
        });
    }
    Ok(out)
}

/// 64 lowercase hex digits.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `firmware.lock`.
pub fn parse_firmware_lock(text: &str) -> Result<FirmwareLock, ListError> {
    let mut lock = FirmwareLock::default();
    for (line, words) in lines(text) {
        let bad = |problem: &str| ListError::Line {
            file: "firmware.lock",
            line,
            problem: problem.into(),
        };
        match words.as_slice() {
            ["package", name, version, sha] if is_sha256(sha) => {
                if !lock.package.is_empty() {
                    return Err(bad("a second package line"));
                }
                lock.package = name.to_string();
                lock.version = version.to_string();
                lock.deb_sha256 = sha.to_string();
            }
            ["file", path, sha, module, rest @ ..] if is_sha256(sha) && rest.len() <= 1 => {
                if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Err(bad("a file path must be relative, without `..`"));
                }
                lock.files.push(FirmwareFile {
                    path: path.to_string(),
                    sha256: sha.to_string(),
                    module: normalize(module),
                    source: rest.first().unwrap_or(path).to_string(),
                });
            }
            _ => {
                return Err(bad("want `package <name> <version> <sha256>` or \
                     `file <path> <sha256> <module> [<path in the .deb>]`"))
            }
        }
    }
    if lock.package.is_empty() {
        return Err(ListError::File {
            file: "firmware.lock",
            problem: "no package line".into(),
        });
    }
    Ok(lock)
}

/// The groups of `drivers`, in order of first appearance.
pub fn groups(drivers: &[Driver]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for d in drivers {
        if !out.contains(&d.group.as_str()) {
            out.push(&d.group);
        }
    }
    out
}

/// What one group adds to the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCost {
    pub group: String,
    /// Module files first brought in by this group (the listed ones and
    /// dependencies no earlier group brought).
    pub modules: Vec<String>,
    /// Their size uncompressed.
    pub bytes: u64,
    /// Their size gzip-compressed on their own (what they add to the
    /// gzip-compressed initramfs, give or take a little).
    pub gzip_bytes: u64,
}

/// Each group's cost over `closure` (module files below `moddir`).
pub fn group_costs(
    drivers: &[Driver],
    closure: &Closure,
    moddir: &Path,
) -> Result<Vec<GroupCost>, KmodError> {
    let mut counted: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for group in groups(drivers) {
        let mut modules = Vec::new();
        for d in drivers.iter().filter(|d| d.group == group) {
            if !closure.modules.contains_key(&d.module) {
                continue; // built in or absent: modclosure reports it
            }
            let mut wanted = vec![d.module.clone()];
            wanted.extend(closure.all_deps(&d.module)?);
            for m in wanted {
                if counted.insert(m.clone()) {
                    modules.push(m);
                }
            }
        }
        let mut data = Vec::new();
        for m in &modules {
            let path = moddir.join(&closure.modules[m].0);
            data.extend(fs::read(&path).map_err(|source| KmodError::Io {
                path: path.display().to_string(),
                source,
            })?);
        }
        let gzip_bytes = crate::gzip::compress(&data)
            .map_err(|source| KmodError::Io {
                path: "(gzip)".into(),
                source,
            })?
            .len() as u64;
        out.push(GroupCost {
            group: group.to_string(),
            modules,
            bytes: data.len() as u64,
            gzip_bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_parse_with_groups_in_order() {
        let d = parse_drivers(
            "# c\nnic e1000e Intel 1 GbE\n\nstorage nvme NVMe SSDs\nnic tg3 Broadcom\n",
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].hardware, "Intel 1 GbE");
        assert_eq!(groups(&d), ["nic", "storage"]);
        assert!(parse_drivers("nic e1000e\n").is_err(), "no hardware");
        let twice = parse_drivers("a kvm-amd x\nb kvm_amd y\n").unwrap_err();
        assert!(twice.to_string().contains("line 2"), "{twice}");
    }

    #[test]
    fn firmware_lock_parses_and_refuses_odd_lines() {
        let sha = "ab".repeat(32);
        let text = format!(
            "package fw 1-2 {sha}\nfile a/b.pkg {sha} ice a/b-1.pkg\nfile t/x.bin {sha} tg3\n"
        );
        let l = parse_firmware_lock(&text).unwrap();
        assert_eq!((l.package.as_str(), l.version.as_str()), ("fw", "1-2"));
        assert_eq!(l.files[0].source, "a/b-1.pkg");
        assert_eq!(l.files[1].source, "t/x.bin");
        for bad in [
            format!("file a {sha} m\n"),
            format!("package fw 1 {sha}\nfile ../a {sha} m\n"),
            format!("package fw 1 {sha}\nfile a NOTHEX m\n"),
            format!("package fw 1 {sha}\npackage fw 2 {sha}\n"),
        ] {
            assert!(parse_firmware_lock(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_shared_dependency_costs_the_first_group_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Closure::default();
        for (name, deps, size) in [
            ("a", vec!["common"], 100),
            ("b", vec!["common"], 200),
            ("common", vec![], 1000),
        ] {
            let rel = format!("kernel/{name}.ko");
            fs::create_dir_all(dir.path().join("kernel")).unwrap();
            fs::write(dir.path().join(&rel), vec![b'x'; size]).unwrap();
            c.modules.insert(
                name.into(),
                (rel, deps.into_iter().map(String::from).collect()),
            );
        }
        let drivers = parse_drivers("one a x\ntwo b y\n").unwrap();
        let costs = group_costs(&drivers, &c, dir.path()).unwrap();
        assert_eq!(costs[0].modules, ["a", "common"]);
        assert_eq!(costs[0].bytes, 1100);
        assert_eq!(costs[1].modules, ["b"]);
        assert_eq!(costs[1].bytes, 200);
        assert!(costs[1].gzip_bytes > 0 && costs[1].gzip_bytes < 200);
    }
}
