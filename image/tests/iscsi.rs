//! The built initramfs carries the iSCSI initiator of `image/iscsi.lock`:
//! every `program` of the lock (`/sbin/iscsid`, `/sbin/iscsiadm`), their loader and every library of their `DT_NEEDED`
//! closure, all resolvable inside the initramfs itself, each byte-identical to
//! the file in the pinned `.deb` (whose sha256 is checked again here); and each
//! program, run from those bytes on this machine through the shipped loader,
//! loads nothing from the host and prints its version.
//!
//! It reads the initramfs `image/build.sh` wrote (`build/iso/boot/initrd.img`,
//! or `FT_INITRD`) and the `.deb`s in its cache (`build/cache`, or
//! `FT_CACHE_DIR`). Without a build it has nothing to check: it says so and
//! passes, unless `FT_REQUIRE_IMAGE=1` (`make test` sets it after
//! `make image`), which makes a missing build a failure.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::debpin::{parse_program_lock, ProgramLock};
use image::elfdeps::{closure, parse_elf, Shipped, IMAGE_LIB_DIR, LIB_DIRS};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn lock() -> ProgramLock {
    let text = std::fs::read_to_string(repo().join("image/iscsi.lock")).unwrap();
    parse_program_lock(&text, "iscsi.lock").unwrap()
}

/// The built initramfs and the .deb cache, if built.
fn built() -> Option<(PathBuf, PathBuf)> {
    let env_or = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(default))
    };
    let initrd = env_or("FT_INITRD", "build/iso/boot/initrd.img");
    let cache = env_or("FT_CACHE_DIR", "build/cache");
    if initrd.is_file() {
        return Some((initrd, cache));
    }
    assert!(
        std::env::var_os("FT_REQUIRE_IMAGE").is_none(),
        "FT_REQUIRE_IMAGE is set but there is no {} (run image/build.sh)",
        initrd.display()
    );
    eprintln!(
        "NOTE: no built initramfs at {}: nothing to check (make image first)",
        initrd.display()
    );
    None
}

/// One entry of the initramfs.
#[derive(Debug)]
enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    Other,
}

/// The gzip-compressed newc archive as absolute path → entry.
fn read_initramfs(path: &Path) -> BTreeMap<String, Entry> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let mut rest = &bytes[..];
    let mut out = BTreeMap::new();
    loop {
        let mut reader = cpio::NewcReader::new(rest).expect("valid newc header");
        if reader.entry().is_trailer() {
            break;
        }
        let name = format!("/{}", reader.entry().name().trim_start_matches(['.', '/']));
        let mode = reader.entry().mode();
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        let entry = match mode & 0o170000 {
            0o040000 => Entry::Dir,
            0o100000 => Entry::File {
                mode: mode & 0o7777,
                data,
            },
            0o120000 => Entry::Symlink(String::from_utf8(data).unwrap()),
            _ => Entry::Other,
        };
        out.insert(name, entry);
        rest = reader.finish().unwrap();
    }
    out
}

/// Follows symlinks (final component) inside the archive to a regular file.
fn resolve<'a>(archive: &'a BTreeMap<String, Entry>, path: &str) -> Option<(String, &'a [u8])> {
    let mut path = path.to_string();
    for _ in 0..40 {
        match archive.get(&path)? {
            Entry::File { data, .. } => return Some((path, data)),
            Entry::Symlink(target) if target.starts_with('/') => path = target.clone(),
            Entry::Symlink(target) => {
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                path = format!("{dir}/{target}");
            }
            Entry::Dir | Entry::Other => return None,
        }
    }
    None
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn the_lock_pins_iscsid_iscsiadm_and_glibc() {
    let l = lock();
    assert_eq!(
        l.program_paths(),
        [
            ("sbin/iscsid", "/sbin/iscsid"),
            ("sbin/iscsiadm", "/sbin/iscsiadm"),
        ]
    );
    for p in ["open-iscsi", "libc6"] {
        assert!(l.packages.iter().any(|d| d.package == p), "{p} not pinned");
    }
}

/// Resolvable inside the initramfs alone: the loader `PT_INTERP` names, and
/// every `DT_NEEDED` of the program and of each library, in the loader's
/// system directories (there is no ld.so.cache).
#[test]
fn the_programs_and_their_whole_closure_are_in_the_initramfs() {
    let Some((initrd, _)) = built() else { return };
    let archive = read_initramfs(&initrd);
    // (soname, needed by) still to look up.
    let mut queue: Vec<(String, String)> = Vec::new();
    for dest in lock().programs.into_iter().map(|p| p.dest) {
        let Some(Entry::File { mode, data }) = archive.get(&dest) else {
            panic!("{dest} is not a regular file of {}", initrd.display());
        };
        assert_eq!(*mode, 0o755, "{dest} mode");
        let deps = parse_elf(data).unwrap();
        let interp = deps
            .interp
            .clone()
            .unwrap_or_else(|| panic!("{dest} is dynamically linked"));
        let (loader, _) = resolve(&archive, &interp)
            .unwrap_or_else(|| panic!("the loader {interp} of {dest} is not in the initramfs"));
        assert!(
            matches!(archive.get(&loader), Some(Entry::File { mode: 0o755, .. })),
            "{loader} is not an executable file"
        );
        queue.extend(deps.needed.iter().map(|n| (n.clone(), dest.clone())));
    }
    let mut found = BTreeMap::new();
    while let Some((soname, by)) = queue.pop() {
        if found.contains_key(&soname) {
            continue;
        }
        let (path, bytes) = LIB_DIRS
            .iter()
            .find_map(|d| resolve(&archive, &format!("/{d}/{soname}")))
            .unwrap_or_else(|| panic!("{soname} (needed by {by}) is not in the initramfs"));
        let lib = parse_elf(bytes).unwrap();
        queue.extend(lib.needed.iter().map(|n| (n.clone(), path.clone())));
        found.insert(soname, path);
    }
    for want in [
        "libc.so.6",
        "libcrypto.so.3",
        "libkmod.so.2",
        "libisns.so.0",
        "libmount.so.1",
        "libsystemd.so.0",
    ] {
        assert!(found.contains_key(want), "{want} missing: {found:?}");
    }
}

/// Every file the closure ships is the one in its pinned .deb, and the .debs
/// in the cache still hash to the lock.
#[test]
fn the_shipped_files_are_the_pinned_packages_bytes() {
    let Some((initrd, cache)) = built() else {
        return;
    };
    let archive = read_initramfs(&initrd);
    let l = lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut roots = Vec::new();
    for p in &l.packages {
        let deb = cache.join(p.deb_file_name());
        assert!(
            deb.is_file(),
            "{} missing (the build fetched it)",
            deb.display()
        );
        assert_eq!(
            sha256_hex(&deb),
            p.deb_sha256,
            "{} vs image/iscsi.lock",
            deb.display()
        );
        let root = tmp.path().join(&p.package);
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success(), "dpkg-deb -x {}", deb.display());
        roots.push(root);
    }
    let shipped = closure(&roots, &l.program_paths()).unwrap();
    for s in &shipped {
        match (s, archive.get(s.dest())) {
            (Shipped::File { dest, source, mode }, Some(Entry::File { mode: m, data })) => {
                assert_eq!(m, mode, "{dest} mode");
                assert!(
                    *data == std::fs::read(source).unwrap(),
                    "{dest} differs from {}",
                    source.display()
                );
            }
            (Shipped::Symlink { dest, target }, Some(Entry::Symlink(t))) => {
                assert_eq!(t, target, "{dest}")
            }
            (s, e) => panic!("{} should be {s:?}, the initramfs has {e:?}", s.dest()),
        }
    }
    // Nothing else below the library directory: only the closure is shipped.
    let prefix = format!("{IMAGE_LIB_DIR}/");
    let extra: Vec<&String> = archive
        .keys()
        .filter(|k| k.starts_with(&prefix) && !shipped.iter().any(|s| s.dest() == *k))
        .collect();
    assert!(extra.is_empty(), "not in the closure: {extra:?}");
}

/// Runs the shipped bytes here: for each program, `ld-linux --list` must find
/// every library in the copied tree (none from the host), and
/// `<program> --version` (which iscsid and iscsiadm 2.1.8 both
/// accept) prints `<name> version <the pinned upstream version>`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_shipped_programs_run_with_only_the_shipped_libraries() {
    let Some((initrd, _)) = built() else { return };
    let archive = read_initramfs(&initrd);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let l = lock();
    let dests: Vec<&str> = l.programs.iter().map(|p| p.dest.as_str()).collect();
    for (path, entry) in &archive {
        if !(dests.contains(&path.as_str()) || path.starts_with(&format!("{IMAGE_LIB_DIR}/"))) {
            continue;
        }
        if let Entry::File { data, .. } = entry {
            let host = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(&host, data).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let libdir = root.join(IMAGE_LIB_DIR.trim_start_matches('/'));
    let loader = libdir.join("ld-linux-x86-64.so.2");
    let version = l
        .packages
        .iter()
        .find(|p| p.package == "open-iscsi")
        .map(|p| p.version.split('-').next().unwrap().to_string())
        .unwrap();
    let inside = libdir.display().to_string();
    for dest in dests {
        let program = root.join(dest.trim_start_matches('/'));
        let name = dest.rsplit('/').next().unwrap();
        // The loader's own options go before the program, the program's after it.
        let run = |loader_args: &[&str], program_args: &[&str]| {
            let out = Command::new(&loader)
                .env_clear()
                .arg("--inhibit-cache")
                .arg("--library-path")
                .arg(&libdir)
                .args(loader_args)
                .arg(&program)
                .args(program_args)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, list, err) = run(&["--list"], &[]);
        assert!(ok, "ld-linux --list {name}:\n{list}{err}");
        for line in list.lines().filter(|l| l.contains("=>")) {
            assert!(
                line.contains(&inside),
                "{name}: a library from outside the shipped tree: {line}\n{list}"
            );
        }
        let (ok, text, err) = run(&[], &["--version"]);
        assert!(ok, "{name} --version failed:\n{text}{err}");
        assert_eq!(text.trim(), format!("{name} version {version}"));
    }
}
