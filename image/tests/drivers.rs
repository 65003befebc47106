//! The built image carries the driver table (`image/drivers.txt`) with every
//! dependency, an alias index init can match devices against, and exactly the
//! pinned firmware (`image/firmware.lock`).
//!
//! It reads what `image/build.sh` staged for the initramfs (`build/stage/`,
//! or `FT_STAGE_DIR`). Without a build it has nothing to check: it says so
//! and passes, unless `FT_REQUIRE_IMAGE=1` (`make test` sets it after
//! `make image`), which makes a missing stage a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use image::drivers::{parse_drivers, parse_firmware_lock};
use image::kmod::{normalize, read_modinfo};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// `build/stage` (modules below `modules/`, firmware below `firmware/`), if built.
fn stage() -> Option<PathBuf> {
    let dir = std::env::var_os("FT_STAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/stage"));
    if dir.join("modules/modules.dep").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("FT_REQUIRE_IMAGE").is_none(),
        "FT_REQUIRE_IMAGE is set but {} holds no staged image (run image/build.sh)",
        dir.display()
    );
    eprintln!(
        "NOTE: no staged image at {}: nothing to check (make image first)",
        dir.display()
    );
    None
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// modules.dep as module name → (path, all dependencies' names).
fn modules_dep(dir: &Path) -> BTreeMap<String, (String, Vec<String>)> {
    let name = |p: &str| normalize(p.rsplit('/').next().unwrap().trim_end_matches(".ko"));
    std::fs::read_to_string(dir.join("modules.dep"))
        .unwrap()
        .lines()
        .map(|l| {
            let (path, deps) = l.split_once(':').unwrap();
            (
                name(path),
                (
                    path.to_string(),
                    deps.split_whitespace().map(name).collect(),
                ),
            )
        })
        .collect()
}

#[test]
fn every_table_driver_is_shipped_with_its_dependencies_and_aliases() {
    let Some(stage) = stage() else { return };
    let mods = stage.join("modules");
    let table =
        parse_drivers(&std::fs::read_to_string(repo().join("image/drivers.txt")).unwrap()).unwrap();
    assert!(table.len() >= 30, "the table lists {} modules", table.len());
    let dep = modules_dep(&mods);
    let alias = std::fs::read_to_string(mods.join("modules.alias")).unwrap();
    let aliases: BTreeSet<(&str, &str)> = alias
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((w.len(), w[0]), (3, "alias"), "{l}");
            (w[1], w[2])
        })
        .collect();
    for d in &table {
        let (path, all) = dep
            .get(&d.module)
            .unwrap_or_else(|| panic!("{} ({}) is not in modules.dep", d.module, d.hardware));
        let file = mods.join(path);
        assert!(file.is_file(), "{} missing", file.display());
        let info = read_modinfo(&file).unwrap();
        // Every direct dependency is listed and shipped, and so on down.
        let mut queue = info.depends.clone();
        let mut seen = BTreeSet::new();
        while let Some(m) = queue.pop() {
            if !seen.insert(m.clone()) {
                continue;
            }
            assert!(all.contains(&m), "{}: modules.dep lacks {m}", d.module);
            let (p, _) = dep
                .get(&m)
                .unwrap_or_else(|| panic!("{} needs {m}, not shipped", d.module));
            queue.extend(read_modinfo(&mods.join(p)).unwrap().depends);
        }
        for a in &info.aliases {
            assert!(
                aliases.contains(&(a.as_str(), d.module.as_str())),
                "modules.alias lacks {a} for {}",
                d.module
            );
        }
    }
    // The devices init must find by alias on the emulated servers of the tests.
    for (device, module) in [
        (
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
            "e1000e",
        ),
        (
            "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00",
            "lpc_ich",
        ),
        ("platform:iTCO_wdt", "itco_wdt"),
        (
            "pci:v00008086d000025ABsv00001AF4sd00001100bc08sc80i00",
            "i6300esb",
        ),
        (
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
            "ahci",
        ),
        (
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
            "nvme",
        ),
    ] {
        let hit = aliases
            .iter()
            .any(|(pattern, m)| normalize(m).eq_ignore_ascii_case(module) && glob(pattern, device));
        assert!(hit, "no alias of {module} matches {device}");
    }
}

/// `*` and `?` only: enough for the patterns checked above.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.chars().next() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|i| s.is_char_boundary(i) && glob(&pattern[1..], &s[i..])),
        Some(c) => {
            s.chars().next().is_some_and(|d| c == '?' || c == d)
                && glob(
                    &pattern[c.len_utf8()..],
                    &s[s.chars().next().unwrap().len_utf8()..],
                )
        }
    }
}

#[test]
fn firmware_is_exactly_the_pinned_files_with_their_checksums() {
    let Some(stage) = stage() else { return };
    let lock =
        parse_firmware_lock(&std::fs::read_to_string(repo().join("image/firmware.lock")).unwrap())
            .unwrap();
    let fw = stage.join("firmware");
    let mut shipped = BTreeSet::new();
    let mut stack = vec![fw.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                shipped.insert(p.strip_prefix(&fw).unwrap().display().to_string());
            }
        }
    }
    let pinned: BTreeSet<String> = lock.files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(shipped, pinned, "shipped firmware vs image/firmware.lock");
    for f in &lock.files {
        assert_eq!(sha256_hex(&fw.join(&f.path)), f.sha256, "{}", f.path);
    }
    // Every firmware file a table module asks for is pinned (and so shipped).
    let table =
        parse_drivers(&std::fs::read_to_string(repo().join("image/drivers.txt")).unwrap()).unwrap();
    let dep = modules_dep(&stage.join("modules"));
    for d in &table {
        let info = read_modinfo(&stage.join("modules").join(&dep[&d.module].0)).unwrap();
        for f in info.firmware {
            assert!(
                pinned.contains(&f),
                "{} requests {f}, not shipped",
                d.module
            );
        }
    }
}

/// The iSCSI group: no device brings it in (init loads it by name), so its
/// dependencies are checked by name here, not only through the table.
#[test]
fn the_iscsi_initiator_modules_are_shipped_with_their_dependencies() {
    let table =
        parse_drivers(&std::fs::read_to_string(repo().join("image/drivers.txt")).unwrap()).unwrap();
    let group: Vec<&str> = table
        .iter()
        .filter(|d| d.group == "iscsi")
        .map(|d| d.module.as_str())
        .collect();
    assert_eq!(
        group,
        ["iscsi_tcp", "crc32c_generic", "crc32c_intel"],
        "the iscsi group of image/drivers.txt"
    );
    let Some(stage) = stage() else { return };
    let dep = modules_dep(&stage.join("modules"));
    let (_, all) = &dep["iscsi_tcp"];
    for m in [
        "libiscsi_tcp",
        "libiscsi",
        "scsi_transport_iscsi",
        "scsi_mod",
    ] {
        assert!(
            all.contains(&m.to_string()),
            "iscsi_tcp: modules.dep lacks {m}"
        );
        assert!(dep.contains_key(m), "{m} not shipped");
    }
    // iscsi_tcp's connections need crc32c from the crypto API (no modprobe
    // in the image to load it on demand: init loads these by name).
    for m in ["crc32c_generic", "crc32c_intel"] {
        assert!(
            dep.contains_key(m) || dep.contains_key(&m.replace('_', "-")),
            "{m} not shipped"
        );
    }
    // The disks of an iSCSI LUN need sd_mod, which base loads always.
    assert!(table
        .iter()
        .any(|d| d.module == "sd_mod" && d.group == "base"));
}
