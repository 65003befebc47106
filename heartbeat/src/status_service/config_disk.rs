//! Finding this host's config disk for `ftctl apply`: init found and
//! verified it at boot but hands the daemons only the verified config, so
//! the status service looks again the same way (block devices under
//! `/sys/block` whose first bytes are the config-disk magic) and keeps the
//! one whose active slot verifies and names this host.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use config_schema::disk::{self, DISK_LEN};
use config_schema::slots;

/// The config disk of `host` under `root` (`/` on the appliance), or why not.
pub fn find(root: &Path, trust_root: &[u8], host: &str) -> Result<PathBuf, String> {
    let sys = root.join("sys/block");
    let names = std::fs::read_dir(&sys).map_err(|e| format!("{}: {e}", sys.display()))?;
    let mut found = Vec::new();
    let mut names: Vec<String> = names
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let dev = root.join("dev").join(&name);
        if is_config_disk_of(&dev, trust_root, host) {
            found.push(dev);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no config disk of host {host} under {}",
            root.join("dev").display()
        )),
        _ => Err(format!(
            "several config disks of host {host}: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn is_config_disk_of(dev: &Path, trust_root: &[u8], host: &str) -> bool {
    let Ok(mut f) = File::open(dev) else {
        return false;
    };
    let mut magic = [0u8; 8];
    if f.read_exact(&mut magic).is_err() || !disk::looks_like_config_disk(&magic) {
        return false;
    }
    let mut image = magic.to_vec();
    image.resize(DISK_LEN, 0);
    if f.read_exact(&mut image[8..]).is_err() {
        return false;
    }
    slots::read_active(&image, trust_root).is_ok_and(|a| a.current.disk.host_name == host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_schema::keys;

    #[test]
    fn finds_the_one_disk_of_this_host() {
        let (pk8, public) = keys::generate_signing_key().unwrap();
        let s = keys::load_signing_key(&pk8).unwrap();
        let c = config_schema::parse(include_str!("../../../examples/cluster.toml"))
            .unwrap()
            .config;
        let key = keys::parse_hex_key(include_str!("../../../examples/dev-keys/hosts/host-a.key"))
            .unwrap();
        let img = disk::write_disk(&c, "host-a", &key, &s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for n in ["vda", "vdb", "vdc"] {
            std::fs::create_dir_all(dir.path().join("sys/block").join(n)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/vda"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("dev/vdb"), &img).unwrap();
        let p = find(dir.path(), &public, "host-a").unwrap();
        assert_eq!(p, dir.path().join("dev/vdb"));
        let e = find(dir.path(), &public, "host-b").unwrap_err();
        assert!(e.starts_with("no config disk of host host-b"), "{e}");
        std::fs::write(dir.path().join("dev/vdc"), &img).unwrap();
        let e = find(dir.path(), &public, "host-a").unwrap_err();
        assert!(e.starts_with("several config disks"), "{e}");
    }
}
