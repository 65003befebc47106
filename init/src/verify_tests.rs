//! Tests of config-disk verification over a fake `/sys` + `/dev` tree with
//! real signed images.

use std::fs;
use std::path::Path;

use config_schema::disk::{self, decode_state, encode_state, write_disk};
use config_schema::keys;

use super::*;

struct Setup {
    dir: tempfile::TempDir,
    trust: std::path::PathBuf,
}

/// A tree with `vda` (not a config disk) and `vdb` holding a disk for host-a
/// of `generation`, signed by a fresh key whose public half is the trust root.
fn setup(generation: u64) -> (Setup, Vec<u8>) {
    setup_with(generation, |_| {})
}

/// [`setup`], with the config edited before it is signed.
fn setup_with(
    generation: u64,
    edit: impl FnOnce(&mut config_schema::ClusterConfig),
) -> (Setup, Vec<u8>) {
    let (s, image, _, _) = setup_signer(generation, edit);
    (s, image)
}

/// [`setup_with`], also returning the signing key and the config.
fn setup_signer(
    generation: u64,
    edit: impl FnOnce(&mut config_schema::ClusterConfig),
) -> (
    Setup,
    Vec<u8>,
    ring::signature::Ed25519KeyPair,
    config_schema::ClusterConfig,
) {
    let text = include_str!("../../examples/cluster.toml");
    let mut cfg: config_schema::ClusterConfig = toml::from_str(text).unwrap();
    cfg.cluster.generation = generation;
    edit(&mut cfg);
    let (secret, public) = keys::generate_host_key().unwrap();
    cfg.hosts[0].public_key = hex::encode(public);
    let (pk8, signing_pub) = keys::generate_signing_key().unwrap();
    let signer = keys::load_signing_key(&pk8).unwrap();
    let image = write_disk(&cfg, &cfg.hosts[0].name, &secret, &signer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    for name in ["vda", "vdb"] {
        fs::create_dir_all(dir.path().join("sys/block").join(name)).unwrap();
    }
    fs::create_dir_all(dir.path().join("dev")).unwrap();
    fs::write(dir.path().join("dev/vda"), vec![0u8; 8192]).unwrap();
    fs::write(dir.path().join("dev/vdb"), &image).unwrap();
    let trust = dir.path().join("trust-root.pub");
    fs::write(&trust, signing_pub).unwrap();
    (Setup { dir, trust }, image, signer, cfg)
}

#[test]
fn a_config_applied_into_the_other_slot_is_the_one_booted() {
    use config_schema::{persist, signed::SignedConfig};
    let (s, _, signer, mut cfg) = setup_signer(5, |_| {});
    load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    let dev = s.dir.path().join("dev/vdb");
    cfg.cluster.generation = 6;
    let sc = SignedConfig::sign(&cfg, &signer).unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .unwrap();
    let trust = fs::read(&s.trust).unwrap();
    persist::persist(&mut f, &trust, &sc).unwrap();
    let a = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert_eq!(a.generation, 6);
    assert!(matches!(a.state, StateUpdate::Unchanged));
    assert_eq!(state_on(&dev), Some(6));
}

fn state_on(dev: &Path) -> Option<u64> {
    let img = fs::read(dev).unwrap();
    let s = disk::STATE_OFFSET as usize;
    decode_state(&img[s..s + disk::STATE_LEN]).unwrap()
}

#[test]
fn a_good_disk_is_accepted_and_its_generation_recorded() {
    let (s, _) = setup(5);
    let a = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert_eq!(a.disk.name, "vdb");
    assert_eq!((a.generation, a.host_name.as_str()), (5, "host-a"));
    assert!(matches!(a.state, StateUpdate::Written { previous: None }));
    assert_eq!(state_on(&s.dir.path().join("dev/vdb")), Some(5));
    // The same disk at the next boot: nothing to write.
    let again = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert!(matches!(again.state, StateUpdate::Unchanged));
}

#[test]
fn an_older_generation_than_accepted_is_refused() {
    let (s, _) = setup(3);
    let dev = s.dir.path().join("dev/vdb");
    write_state(&dev, &encode_state(4)).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config disk vdb: rollback: offered generation 3 < accepted generation 4"
    );
}

#[test]
fn a_state_record_of_the_layout_before_digests_boots_and_stays() {
    use config_schema::config_id::ConfigId;
    let (s, _) = setup(5);
    let dev = s.dir.path().join("dev/vdb");
    write_state(&dev, &encode_state(5)).unwrap();
    let a = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert!(matches!(a.state, StateUpdate::Unchanged));
    let img = fs::read(&dev).unwrap();
    let st = &img[disk::STATE_OFFSET as usize..][..disk::STATE_LEN];
    assert_eq!(
        disk::decode_state_id(st).unwrap(),
        Some(ConfigId::generation_only(5))
    );
    // A newer generation is recorded with its digest.
    let (s, image) = setup(6);
    let dev = s.dir.path().join("dev/vdb");
    write_state(&dev, &encode_state(5)).unwrap();
    let a = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert!(matches!(
        a.state,
        StateUpdate::Written { previous: Some(p) } if p == ConfigId::generation_only(5)
    ));
    let c = u32::from_le_bytes(image[12..16].try_into().unwrap()) as usize;
    let want = ConfigId::of_canonical(6, &image[20..20 + c]);
    let img = fs::read(&dev).unwrap();
    let st = &img[disk::STATE_OFFSET as usize..][..disk::STATE_LEN];
    assert_eq!(disk::decode_state_id(st).unwrap(), Some(want));
}

#[test]
fn a_lower_digest_of_the_accepted_generation_is_a_rollback() {
    use config_schema::config_id::ConfigId;
    let (s, _) = setup(5);
    let dev = s.dir.path().join("dev/vdb");
    let above = ConfigId {
        generation: 5,
        digest: [0xff; 32],
    };
    write_state(&dev, &disk::encode_state_id(above)).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    let e = e.to_string();
    assert!(
        e.starts_with("config disk vdb: rollback: offered generation 5 has digest ")
            && e.contains("below the accepted generation-5 config's ffffffff…"),
        "{e}"
    );
    // The same config is fine, and stays recorded.
    let (s, image) = setup(5);
    let dev = s.dir.path().join("dev/vdb");
    let c = u32::from_le_bytes(image[12..16].try_into().unwrap()) as usize;
    let same = ConfigId::of_canonical(5, &image[20..20 + c]);
    write_state(&dev, &disk::encode_state_id(same)).unwrap();
    let a = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert!(matches!(a.state, StateUpdate::Unchanged));
}

#[test]
fn a_tampered_disk_is_refused_with_one_line() {
    let (s, mut image) = setup(1);
    image[100] ^= 0x40;
    fs::write(s.dir.path().join("dev/vdb"), &image).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("config disk vdb: bad signature"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn another_signing_key_is_refused() {
    let (s, _) = setup(1);
    let (_, other) = keys::generate_signing_key().unwrap();
    fs::write(&s.trust, other).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad signature"), "{e}");
}

#[test]
fn no_config_disk_names_the_devices() {
    let (s, _) = setup(1);
    fs::write(s.dir.path().join("dev/vdb"), vec![0u8; 4096]).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no config disk found among block devices [vda, vdb]"
    );
}

#[test]
fn a_truncated_disk_is_refused() {
    let (s, image) = setup(1);
    fs::write(s.dir.path().join("dev/vdb"), &image[..600]).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("config disk vdb: "), "{e}");
}

#[test]
fn a_missing_trust_root_is_refused() {
    let (s, _) = setup(1);
    let e = load(s.dir.path(), &s.dir.path().join("nope.pub"), Duration::ZERO).unwrap_err();
    assert!(e.to_string().starts_with("cannot read trust root"), "{e}");
}

#[test]
fn a_config_on_the_shared_device_it_names_is_refused() {
    // The example names the shared device by serial FTSHARED.
    let (s, _) = setup(1);
    fs::write(s.dir.path().join("sys/block/vdb/serial"), "FTSHARED\n").unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config disk vdb is the shared device its config names (storage.device serial \"FTSHARED\"): \
         a config disk must be a device of its own"
    );
    // Nothing was recorded on it.
    assert_eq!(state_on(&s.dir.path().join("dev/vdb")), None);
    // The shared device being another disk is the normal case.
    fs::write(s.dir.path().join("sys/block/vdb/serial"), "CONFIG01\n").unwrap();
    fs::write(s.dir.path().join("sys/block/vda/serial"), "FTSHARED\n").unwrap();
    assert_eq!(
        load(s.dir.path(), &s.trust, Duration::ZERO)
            .unwrap()
            .disk
            .name,
        "vdb"
    );
}

#[test]
fn a_config_naming_its_own_device_path_as_shared_is_refused() {
    let (s, _) = setup_with(1, |c| {
        c.storage.device = config_schema::DeviceLocator::Path("/dev/vdb".into());
    });
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("config disk vdb is the shared device its config names (storage.device path \"/dev/vdb\")"),
        "{e}"
    );
    // Through a symlink too (`/dev/disk/by-id/...`).
    let (s, _) = setup_with(1, |c| {
        c.storage.device = config_schema::DeviceLocator::Path("/dev/disk/by-id/shared".into());
    });
    fs::create_dir_all(s.dir.path().join("dev/disk/by-id")).unwrap();
    std::os::unix::fs::symlink("../../vdb", s.dir.path().join("dev/disk/by-id/shared")).unwrap();
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    assert!(e.to_string().contains("is the shared device"), "{e}");
}

#[test]
fn a_config_naming_its_own_iscsi_lun_as_shared_is_refused() {
    let target = "iqn.2026-01.test.ftappliance:shared";
    let (s, _) = setup_with(1, |c| {
        c.storage.device = config_schema::DeviceLocator::Iscsi(config_schema::IscsiLun {
            portal: "10.0.2.100:3260".into(),
            target: target.into(),
            lun: 1,
            tpgt: 1,
            initiator_prefix: "iqn.2026-01.test.ftappliance".into(),
            chap: None,
        });
        for (i, h) in c.hosts.iter_mut().enumerate() {
            h.storage = Some(config_schema::Interface {
                mac: format!("52:54:00:fa:00:{:02x}", i + 1),
                addr: format!("10.0.2.{}/24", 11 + i),
            });
        }
    });
    // Not logged in: vdb is no LUN of the target.
    load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    // Logged in, and vdb is LUN 1 of a session to the target.
    let sys = s.dir.path().join("sys");
    fs::remove_dir(sys.join("block/vdb")).unwrap();
    config_schema::iscsi_block::fake::session(&sys, 1, target);
    config_schema::iscsi_block::fake::disk(&sys, "vdb", 2, 1, 1, 16);
    let e = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "config disk vdb is the shared device its config names (storage.device iSCSI LUN 1 \
             of iqn.2026-01.test.ftappliance:shared)"
        ),
        "{e}"
    );
}

/// Makes a file immutable (`chattr +i`: even root cannot open it for
/// writing) until dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(path: &Path) -> Immutable {
        let out = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .expect("chattr (package e2fsprogs) runs");
        assert!(
            out.status.success(),
            "this test makes the config disk file immutable and needs a file system with that \
             attribute (ext4, xfs, btrfs) under $TMPDIR and CAP_LINUX_IMMUTABLE: chattr said {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_failed_state_write_refuses_the_config() {
    let (s, _) = setup(5);
    let dev = s.dir.path().join("dev/vdb");
    let lock = Immutable::new(&dev);
    let e = load(s.dir.path(), &s.trust, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config disk vdb: cannot record generation 5 in its STATE sector ("),
        "{e}"
    );
    assert!(e.ends_with("without that record a rollback could not be refused later (is the disk write-protected?)"), "{e}");
    assert!(!e.contains('\n'));
    drop(lock);
    // Once the generation is recorded, a write-protected disk boots: nothing to write.
    load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    let _lock = Immutable::new(&dev);
    let again = load(s.dir.path(), &s.trust, Duration::ZERO).unwrap();
    assert!(matches!(again.state, StateUpdate::Unchanged));
}
