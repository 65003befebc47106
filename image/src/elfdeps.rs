//! The shared-library closure of a dynamically linked program, resolved only
//! inside extracted package trees (never on the build machine's own `/lib`).
//!
//! A program's ELF file names its loader (`PT_INTERP`) and the sonames it
//! needs (`DT_NEEDED`); each library needs more. [`closure`] looks every soname
//! up in the library directories of the given roots (the unpacked `.deb`s of
//! `image/iscsi.lock`), in the order the glibc loader searches them without
//! an `ld.so.cache`, follows symlinks inside the root, and stops with
//! [`ElfError::LibraryNotFound`] when a soname is in none of them.
//!
//! The result is laid out the standard way: the program at its destination,
//! every library as a regular file named by its soname in
//! `/lib/x86_64-linux-gnu` (the loader's first system directory, so no
//! `ld.so.cache` or `LD_LIBRARY_PATH` is needed), and the loader's `PT_INTERP`
//! path (`/lib64/ld-linux-x86-64.so.2`) as a symlink to the loader there.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use object::elf::{FileHeader64, DT_NEEDED, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;

/// Where the libraries go in the image.
pub const IMAGE_LIB_DIR: &str = "/lib/x86_64-linux-gnu";

/// The directories below a root searched for a soname, in this order (the
/// x86-64 Debian loader's system search path).
pub const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib",
    "usr/lib",
];

/// What one ELF file asks of the dynamic loader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfDeps {
    /// `PT_INTERP`: the loader's absolute path (programs only).
    pub interp: Option<String>,
    /// `DT_NEEDED`, in file order.
    pub needed: Vec<String>,
}

/// Why a closure could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a 64-bit ELF file the loader can use: {message}")]
    Elf { path: String, message: String },
    #[error("{path} is in none of the roots ({roots})")]
    ProgramNotFound { path: String, roots: String },
    #[error(
        "{library} (needed by {needed_by}) is in none of the pinned packages \
         (searched {dirs} below {roots}): add the package that ships it to the lock"
    )]
    LibraryNotFound {
        library: String,
        needed_by: String,
        dirs: String,
        roots: String,
    },
    #[error("{path}: symlinks nest too deep or loop")]
    SymlinkLoop { path: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ElfError + '_ {
    move |source| ElfError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads `PT_INTERP` and `DT_NEEDED` of a 64-bit ELF image.
pub fn parse_elf(data: &[u8]) -> Result<ElfDeps, String> {
    let header = FileHeader64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let mut deps = ElfDeps::default();
    for ph in header
        .program_headers(endian, data)
        .map_err(|e| e.to_string())?
    {
        if ph.p_type(endian) == PT_INTERP {
            let bytes = ph
                .data(endian, data)
                .map_err(|()| "PT_INTERP outside the file".to_string())?;
            let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
            deps.interp = Some(String::from_utf8_lossy(path).into_owned());
        }
    }
    let sections = header.sections(endian, data).map_err(|e| e.to_string())?;
    if let Some((dyns, link)) = sections.dynamic(endian, data).map_err(|e| e.to_string())? {
        let strings = sections
            .strings(endian, data, link)
            .map_err(|e| e.to_string())?;
        for d in dyns {
            if d.tag32(endian) == Some(DT_NEEDED) {
                let name = d.string(endian, strings).map_err(|e| e.to_string())?;
                deps.needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(deps)
}

/// [`parse_elf`] of a file.
pub fn read_elf(path: &Path) -> Result<ElfDeps, ElfError> {
    let data = fs::read(path).map_err(io_err(path))?;
    parse_elf(&data).map_err(|message| ElfError::Elf {
        path: path.display().to_string(),
        message,
    })
}

/// `rel` joined to `base` lexically: `..` pops, `.` is dropped, never above `/`.
fn join_in_root(base: &Path, rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.components().chain(rel.components()) {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The regular file that `rel` (a path inside `root`) names, following
/// symlinks as if `root` were `/`. `None` when there is no such file.
pub fn resolve_in_root(root: &Path, rel: &str) -> Result<Option<PathBuf>, ElfError> {
    let mut rel = join_in_root(Path::new(""), Path::new(rel));
    for _ in 0..40 {
        let host = root.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            return Ok(None);
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host).map_err(io_err(&host))?;
            let dir = if target.is_absolute() {
                PathBuf::new()
            } else {
                rel.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            rel = join_in_root(&dir, &target);
        } else if meta.is_file() {
            return Ok(Some(host));
        } else {
            return Ok(None);
        }
    }
    Err(ElfError::SymlinkLoop {
        path: root.join(rel).display().to_string(),
    })
}

/// The first file for `rel` across `roots`.
fn find_in_roots(roots: &[PathBuf], rel: &str) -> Result<Option<PathBuf>, ElfError> {
    for root in roots {
        if let Some(p) = resolve_in_root(root, rel)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// A soname looked up the way the loader does: each [`LIB_DIRS`] entry in
/// every root (all roots together form one file system).
pub fn find_library(roots: &[PathBuf], soname: &str) -> Result<Option<PathBuf>, ElfError> {
    for dir in LIB_DIRS {
        if let Some(p) = find_in_roots(roots, &format!("{dir}/{soname}"))? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// One entry of the image that the closure needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shipped {
    /// A regular file at `dest`, copied from `source`.
    File {
        dest: String,
        source: PathBuf,
        mode: u32,
    },
    /// A symlink at `dest` to `target`.
    Symlink { dest: String, target: String },
}

impl Shipped {
    /// The archive path.
    pub fn dest(&self) -> &str {
        match self {
            Shipped::File { dest, .. } | Shipped::Symlink { dest, .. } => dest,
        }
    }

    /// The line of an `image::manifest` file.
    pub fn manifest_line(&self) -> String {
        match self {
            Shipped::File { dest, source, mode } => {
                format!("file {dest} {} {mode:04o}", source.display())
            }
            Shipped::Symlink { dest, target } => format!("slink {dest} {target}"),
        }
    }
}

fn host_mode(path: &Path) -> Result<u32, ElfError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(io_err(path))?;
    Ok(crate::manifest::staged_file_mode(meta.permissions().mode()))
}

/// The programs `(program, dest)` (`program` a path inside one of `roots`,
/// e.g. `sbin/iscsid`, shipped at `dest`), with their loader and every library
/// they need, directly or not, each once, sorted by destination. Libraries come
/// only from `roots`.
pub fn closure(roots: &[PathBuf], programs: &[(&str, &str)]) -> Result<Vec<Shipped>, ElfError> {
    let roots_text = || {
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out: BTreeMap<String, Shipped> = BTreeMap::new();
    // (soname, needed by) still to look up.
    let mut queue: Vec<(String, String)> = Vec::new();
    for &(program, dest) in programs {
        let source = find_in_roots(roots, program)?.ok_or_else(|| ElfError::ProgramNotFound {
            path: program.to_string(),
            roots: roots_text(),
        })?;
        let deps = read_elf(&source)?;
        out.insert(
            dest.to_string(),
            Shipped::File {
                dest: dest.to_string(),
                source: source.clone(),
                mode: 0o755,
            },
        );
        if let Some(interp) = &deps.interp {
            let name = interp.rsplit('/').next().unwrap_or(interp).to_string();
            let loader_dest = format!("{IMAGE_LIB_DIR}/{name}");
            if *interp != loader_dest {
                out.insert(
                    interp.clone(),
                    Shipped::Symlink {
                        dest: interp.clone(),
                        target: loader_dest,
                    },
                );
            }
            queue.push((name, dest.to_string()));
        }
        queue.extend(deps.needed.iter().map(|n| (n.clone(), dest.to_string())));
    }
    while let Some((soname, needed_by)) = queue.pop() {
        let lib_dest = format!("{IMAGE_LIB_DIR}/{soname}");
        if out.contains_key(&lib_dest) {
            continue;
        }
        let file = find_library(roots, &soname)?.ok_or_else(|| ElfError::LibraryNotFound {
            library: soname.clone(),
            needed_by: needed_by.clone(),
            dirs: LIB_DIRS.join(", "),
            roots: roots_text(),
        })?;
        let lib = read_elf(&file)?;
        queue.extend(lib.needed.iter().map(|n| (n.clone(), lib_dest.clone())));
        out.insert(
            lib_dest.clone(),
            Shipped::File {
                dest: lib_dest,
                mode: host_mode(&file)?,
                source: file,
            },
        );
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_join_stays_inside_the_root() {
        assert_eq!(
            join_in_root(Path::new("lib64"), Path::new("/lib/x/ld.so")),
            PathBuf::from("lib64/lib/x/ld.so")
        );
        assert_eq!(
            join_in_root(Path::new("usr/lib"), Path::new("../../../../etc/passwd")),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            join_in_root(Path::new("a/./b"), Path::new("c")),
            PathBuf::from("a/b/c")
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
        fs::write(root.join("lib/x86_64-linux-gnu/libz.so.1.2"), b"z").unwrap();
        std::os::unix::fs::symlink("libz.so.1.2", root.join("lib/x86_64-linux-gnu/libz.so.1"))
            .unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/libz.so.1",
            root.join("lib64/libz.so.1"),
        )
        .unwrap();
        std::os::unix::fs::symlink("loop", root.join("lib64/loop")).unwrap();
        let want = root.join("lib/x86_64-linux-gnu/libz.so.1.2");
        assert_eq!(
            resolve_in_root(root, "lib/x86_64-linux-gnu/libz.so.1").unwrap(),
            Some(want.clone())
        );
        assert_eq!(
            resolve_in_root(root, "/lib64/libz.so.1").unwrap(),
            Some(want.clone())
        );
        assert_eq!(resolve_in_root(root, "lib64/none").unwrap(), None);
        assert_eq!(resolve_in_root(root, "lib64").unwrap(), None);
        assert!(matches!(
            resolve_in_root(root, "lib64/loop"),
            Err(ElfError::SymlinkLoop { .. })
        ));
        assert_eq!(
            find_library(&[root.to_path_buf()], "libz.so.1").unwrap(),
            Some(want)
        );
    }

    #[test]
    fn garbage_is_not_elf() {
        assert!(parse_elf(b"#!/bin/sh\n").is_err());
        assert!(parse_elf(&[]).is_err());
    }

    /// The test binary itself is a 64-bit ELF: whatever it needs parses.
    #[test]
    fn reads_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let deps = read_elf(&exe).unwrap();
        if let Some(interp) = &deps.interp {
            assert!(interp.starts_with('/'), "{interp}");
        }
        assert!(deps
            .needed
            .iter()
            .all(|n| !n.is_empty() && !n.contains('/')));
    }

    #[test]
    fn a_missing_library_names_who_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let exe = std::env::current_exe().unwrap();
        let deps = read_elf(&exe).unwrap();
        fs::create_dir_all(root.join("sbin")).unwrap();
        fs::copy(&exe, root.join("sbin/prog")).unwrap();
        let got = closure(&[root], &[("sbin/prog", "/sbin/prog")]);
        if deps.interp.is_none() && deps.needed.is_empty() {
            // A static test binary: the closure is the program alone.
            assert_eq!(got.unwrap().len(), 1);
            return;
        }
        match got {
            Err(ElfError::LibraryNotFound { needed_by, .. }) => {
                assert_eq!(needed_by, "/sbin/prog")
            }
            other => panic!("{other:?}"),
        }
    }
}
