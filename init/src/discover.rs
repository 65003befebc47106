//! Finding the config disk among the block devices.
//!
//! Everything takes a `root` path under which `sys/block/*` and `dev/*` live,
//! so tests run over a temporary tree with image files; on the appliance the
//! root is `/`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How many bytes of each device are read to recognize the config disk.
pub const PROBE_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no config disk found among block devices [{}]", .seen.join(", "))]
    NotFound { seen: Vec<String> },
    #[error("more than one config disk: [{}]", .found.join(", "))]
    Ambiguous { found: Vec<String> },
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The disk that carried the magic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Kernel name, e.g. `vdb`.
    pub name: String,
    /// Device node path (under `root/dev`).
    pub path: PathBuf,
}

/// Whole-disk block devices under `root/sys/block`, sorted, without loop and
/// ram devices.
pub fn block_devices(root: &Path) -> Result<Vec<String>, DiscoverError> {
    let dir = root.join("sys/block");
    let rd = fs::read_dir(&dir).map_err(|source| DiscoverError::List {
        path: dir.clone(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    Ok(names)
}

/// Parses the `MAJOR:MINOR` text of `/sys/block/X/dev`.
pub fn parse_dev_numbers(text: &str) -> Option<(u64, u64)> {
    let (maj, min) = text.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The device node for `name`, created from `sys/block/<name>/dev` if devtmpfs
/// does not have it (yet).
pub fn device_node(root: &Path, name: &str) -> std::io::Result<PathBuf> {
    let node = root.join("dev").join(name);
    if node.exists() {
        return Ok(node);
    }
    let text = fs::read_to_string(root.join("sys/block").join(name).join("dev"))?;
    let (maj, min) = parse_dev_numbers(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad device numbers {text:?} for {name}"),
        )
    })?;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        &node,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(maj, min),
    )?;
    Ok(node)
}

/// Reads up to `len` bytes from the start of `path` (fewer if it is shorter).
pub fn read_prefix(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    fs::File::open(path)?
        .take(len as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// One scan: every block device whose first [`PROBE_LEN`] bytes satisfy
/// `looks_like`. Unreadable devices (an empty CD drive) are skipped with a log line.
pub fn scan(root: &Path, looks_like: &dyn Fn(&[u8]) -> bool) -> Result<Found, DiscoverError> {
    let seen = block_devices(root)?;
    let mut found = Vec::new();
    for name in &seen {
        let node = match device_node(root, name) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("{name}: no device node: {e}");
                continue;
            }
        };
        match read_prefix(&node, PROBE_LEN) {
            Ok(head) if looks_like(&head) => found.push(Found {
                name: name.clone(),
                path: node,
            }),
            Ok(_) => tracing::debug!("{name}: not a config disk"),
            Err(e) => tracing::info!("{name}: unreadable ({e}), skipped"),
        }
    }
    match found.len() {
        0 => Err(DiscoverError::NotFound { seen }),
        1 => Ok(found.remove(0)),
        _ => Err(DiscoverError::Ambiguous {
            found: found.into_iter().map(|f| f.name).collect(),
        }),
    }
}

/// Scans repeatedly until the disk shows up or `timeout` passed (virtio
/// probing is asynchronous, devices can appear after init started).
pub fn wait_for(
    root: &Path,
    looks_like: &dyn Fn(&[u8]) -> bool,
    timeout: Duration,
    every: Duration,
) -> Result<Found, DiscoverError> {
    let deadline = Instant::now() + timeout;
    loop {
        match scan(root, looks_like) {
            Ok(f) => return Ok(f),
            Err(e @ DiscoverError::Ambiguous { .. }) => return Err(e),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"TESTMAGC";

    fn looks(b: &[u8]) -> bool {
        b.starts_with(MAGIC)
    }

    fn tree(devs: &[(&str, Option<&[u8]>)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (name, content) in devs {
            let sys = t.path().join("sys/block").join(name);
            fs::create_dir_all(&sys).unwrap();
            fs::write(sys.join("dev"), "253:0\n").unwrap();
            fs::create_dir_all(t.path().join("dev")).unwrap();
            if let Some(c) = content {
                fs::write(t.path().join("dev").join(name), c).unwrap();
            }
        }
        t
    }

    #[test]
    fn finds_the_disk_with_the_magic() {
        let mut cfg = MAGIC.to_vec();
        cfg.extend(vec![0u8; 8000]);
        let t = tree(&[
            ("vda", Some(&[0u8; 5000])),
            ("vdb", Some(&cfg)),
            ("loop0", Some(&cfg)),
        ]);
        let f = scan(t.path(), &looks).unwrap();
        assert_eq!(f.name, "vdb");
        assert_eq!(f.path, t.path().join("dev/vdb"));
    }

    #[test]
    fn none_found_names_the_devices_seen_and_skips_loop_and_ram() {
        let t = tree(&[
            ("vda", Some(b"nothing")),
            ("vdb", Some(b"")),
            ("ram0", Some(MAGIC)),
            ("loop1", Some(MAGIC)),
        ]);
        let err = scan(t.path(), &looks).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no config disk found among block devices [vda, vdb]"
        );
    }

    #[test]
    fn two_config_disks_are_refused() {
        let t = tree(&[("vda", Some(MAGIC)), ("vdb", Some(MAGIC))]);
        assert!(
            matches!(scan(t.path(), &looks), Err(DiscoverError::Ambiguous { found }) if found == ["vda", "vdb"])
        );
    }

    #[test]
    fn short_device_is_read_without_error() {
        let t = tree(&[("vda", Some(b"TEST"))]);
        assert!(matches!(
            scan(t.path(), &looks),
            Err(DiscoverError::NotFound { .. })
        ));
        assert_eq!(
            read_prefix(&t.path().join("dev/vda"), 4096).unwrap(),
            b"TEST"
        );
    }

    #[test]
    fn no_block_devices_at_all() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("sys/block")).unwrap();
        let err = wait_for(t.path(), &looks, Duration::ZERO, Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no config disk found among block devices []"
        );
    }

    #[test]
    fn dev_numbers_parse() {
        assert_eq!(parse_dev_numbers("253:16\n"), Some((253, 16)));
        assert_eq!(parse_dev_numbers("garbage"), None);
    }
}
