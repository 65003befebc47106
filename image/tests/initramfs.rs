//! Behaviour of the initramfs writer: determinism, order, owners, and that
//! the cpio crate's own reader parses what we write.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use image::archive::{DeviceKind, FileSource, Node};
use image::{gzip, manifest, Archive};

const MTIME: u32 = 1_700_000_000;

/// One parsed entry: name, mode, uid, gid, nlink, mtime, ino, rdev, data.
#[derive(Debug, Clone, PartialEq)]
struct Parsed {
    name: String,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    ino: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    loop {
        let mut reader = cpio::NewcReader::new(bytes).expect("valid newc header");
        if reader.entry().is_trailer() {
            break;
        }
        let e = reader.entry();
        let mut p = Parsed {
            name: e.name().to_string(),
            mode: e.mode(),
            uid: e.uid(),
            gid: e.gid(),
            nlink: e.nlink(),
            mtime: e.mtime(),
            ino: e.ino(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data: Vec::new(),
        };
        reader.read_to_end(&mut p.data).unwrap();
        out.push(p);
        bytes = reader.finish().unwrap();
    }
    out
}

/// A staging tree with files created in an unsorted order and odd host modes.
fn staging() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("zeta/deep")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("a-b")).unwrap();
    fs::write(root.join("zeta/deep/file"), b"deep").unwrap();
    fs::write(root.join("bin/tool"), b"#!tool").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("a-b/x"), b"x").unwrap();
    fs::set_permissions(root.join("a-b/x"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/bin/tool", root.join("link")).unwrap();
    dir
}

fn build(root: &std::path::Path) -> Vec<u8> {
    let mut a = Archive::new();
    manifest::add_tree(&mut a, "/", root).unwrap();
    a.insert(
        "/dev/console",
        Node::Device {
            kind: DeviceKind::Char,
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )
    .unwrap();
    a.write_newc(MTIME, Vec::new()).unwrap()
}

#[test]
fn same_input_same_bytes_even_with_different_host_metadata() {
    let s1 = staging();
    let first = build(s1.path());
    // A second tree with the same content, made later (other mtimes, inodes).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let s2 = staging();
    fs::set_permissions(s2.path().join("a-b/x"), fs::Permissions::from_mode(0o640)).unwrap();
    let second = build(s2.path());
    assert_eq!(first, second);
    assert_eq!(
        gzip::compress(&first).unwrap(),
        gzip::compress(&second).unwrap()
    );
}

#[test]
fn entries_are_sorted_parents_first_with_sequential_inodes() {
    let s = staging();
    let entries = parse(&build(s.path()));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a-b",
            "a-b/x",
            "bin",
            "bin/tool",
            "dev",
            "dev/console",
            "link",
            "zeta",
            "zeta/deep",
            "zeta/deep/file"
        ]
    );
    let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
    assert_eq!(inos, (1..=entries.len() as u32).collect::<Vec<_>>());
}

#[test]
fn owners_mtime_modes_and_contents_are_fixed() {
    let s = staging();
    let entries = parse(&build(s.path()));
    for e in &entries {
        assert_eq!((e.uid, e.gid), (0, 0), "{}", e.name);
        assert_eq!(e.mtime, MTIME, "{}", e.name);
    }
    let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap().clone();
    assert_eq!(by("bin/tool").mode, 0o100755);
    assert_eq!(by("bin/tool").data, b"#!tool");
    assert_eq!(by("a-b/x").mode, 0o100644);
    assert_eq!(by("zeta").mode, 0o040755);
    assert_eq!(by("zeta").nlink, 3, "zeta has one subdirectory");
    assert_eq!(by("zeta/deep").nlink, 2);
    assert_eq!(by("link").mode, 0o120777);
    assert_eq!(by("link").data, b"/bin/tool");
    assert_eq!(by("dev/console").mode, 0o020600);
    assert_eq!(by("dev/console").rdev, (5, 1));
}

#[test]
fn gzip_output_parses_back() {
    let s = staging();
    let raw = build(s.path());
    let gz = gzip::compress(&raw).unwrap();
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(parse(&back).len(), 10);
}

#[test]
fn manifest_lines_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("init"), b"INIT").unwrap();
    let mut a = Archive::new();
    let text = "# c\n dir /proc 0555\nfile /init init 0755 # comment\nnod /dev/console 0600 c 5 1\nslink /sbin/init /init\ndir /tmp 1777\n";
    manifest::add_manifest_text(&mut a, text, dir.path(), "m").unwrap();
    assert_eq!(a.get("/proc"), Some(&Node::Dir { mode: 0o555 }));
    assert_eq!(a.get("/tmp"), Some(&Node::Dir { mode: 0o1777 }));
    assert_eq!(
        a.get("init"),
        Some(&Node::File {
            mode: 0o755,
            source: FileSource::Path(dir.path().join("init"))
        })
    );
    let entries = parse(&a.write_newc(MTIME, Vec::new()).unwrap());
    assert_eq!(
        entries.iter().find(|e| e.name == "init").unwrap().data,
        b"INIT"
    );

    let err = manifest::add_manifest_text(&mut a, "file /x missing 0644\n", dir.path(), "m")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("m:1:"), "{err}");
    let err = manifest::add_manifest_text(&mut a, "dir /y 0999\n", dir.path(), "m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not octal"), "{err}");
    assert!(manifest::add_manifest_text(&mut a, "bogus /z\n", dir.path(), "m").is_err());
}

#[test]
fn collisions_and_bad_paths_are_refused() {
    let mut a = Archive::new();
    let file = |b: &[u8]| Node::File {
        mode: 0o644,
        source: FileSource::Bytes(b.to_vec()),
    };
    a.insert("/etc/x", file(b"1")).unwrap();
    a.insert("/etc/x", file(b"1")).unwrap();
    assert!(a.insert("/etc/x", file(b"2")).is_err());
    assert!(a.insert("/etc/x/y", file(b"3")).is_err());
    assert!(a.insert("/../escape", file(b"4")).is_err());
    assert!(a.insert("/", Node::Dir { mode: 0o755 }).is_err());
    assert!(a.insert("/big", Node::Dir { mode: 0o10000 }).is_err());
}

#[test]
fn file_sources_are_read_when_the_archive_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, b"abc").unwrap();
    let mut a = Archive::new();
    a.insert(
        "/f",
        Node::File {
            mode: 0o644,
            source: FileSource::Path(path.clone()),
        },
    )
    .unwrap();
    assert_eq!(parse(&a.write_newc(0, Vec::new()).unwrap())[0].data, b"abc");
    fs::write(&path, b"abcdef").unwrap();
    assert_eq!(
        parse(&a.write_newc(0, Vec::new()).unwrap())[0].data,
        b"abcdef"
    );
}
