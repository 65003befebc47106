//! Images on a temp file standing in for the shared device, laid out by
//! `examples/linux-vm.toml` (region "images" at 336 MiB: kernel at +0,
//! initrd at +32 MiB; its pins are those of the bytes below).

use super::*;
use crate::validate::parse;

const LINUX: &str = include_str!("../../examples/linux-vm.toml");
const KERNEL: &[u8] = b"example kernel";
const INITRD: &[u8] = b"example initrd";
const KERNEL_AT: u64 = 336 << 20;
const INITRD_AT: u64 = (336 + 32) << 20;

fn config() -> ClusterConfig {
    parse(LINUX).unwrap().config
}

/// A sparse file of `mib` MiB.
fn device(dir: &tempfile::TempDir, mib: u64) -> PathBuf {
    let path = dir.path().join("shared.img");
    File::create(&path).unwrap().set_len(mib << 20).unwrap();
    path
}

/// `len` bytes of `path` at `at`.
fn bytes_at(path: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    buf
}

fn web(c: &ClusterConfig) -> &Vm {
    &c.vms[1]
}

#[test]
fn write_then_load_round_trips_and_pins_what_the_example_pins() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 512);
    let img = write_image(&c, "web-linux", &dev, KERNEL, Some(INITRD)).unwrap();
    assert_eq!(img, c.images[0], "the example pins these very bytes");
    let got = load_vm_image(&c, web(&c), &dev).unwrap();
    assert_eq!(got.kernel, KERNEL);
    assert_eq!(got.initrd.as_deref(), Some(INITRD));
    assert_eq!(got.cmdline, "console=ttyS0 quiet");
    assert_eq!(bytes_at(&dev, KERNEL_AT, KERNEL.len()), KERNEL);
    assert_eq!(bytes_at(&dev, INITRD_AT, INITRD.len()), INITRD);
    assert_eq!(
        part_offset(&c, &c.images[0], &c.images[0].kernel),
        Some(KERNEL_AT)
    );
}

#[test]
fn new_files_get_new_pins() {
    let mut c = config();
    c.images[0].kernel.size_bytes = 0;
    c.images[0].kernel.sha256.clear();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 512);
    let kernel = vec![0x5a; 3 << 20];
    let img = write_image(&c, "web-linux", &dev, &kernel, Some(INITRD)).unwrap();
    assert_eq!(img.kernel.size_bytes, 3 << 20);
    assert_eq!(img.kernel.sha256, sha256_hex(&kernel));
    assert_eq!(img.initrd, c.images[0].initrd);
    c.images[0] = img;
    assert_eq!(load_vm_image(&c, web(&c), &dev).unwrap().kernel, kernel);
}

#[test]
fn a_corrupted_byte_is_refused_in_one_line() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 512);
    write_image(&c, "web-linux", &dev, KERNEL, Some(INITRD)).unwrap();
    let f = OpenOptions::new().write(true).open(&dev).unwrap();
    f.write_all_at(b"E", KERNEL_AT).unwrap();
    let e = load_vm_image(&c, web(&c), &dev).unwrap_err();
    assert!(
        matches!(e, ImageError::Mismatch { part: "kernel", .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    let got = sha256_hex(b"Example kernel");
    assert_eq!(
        msg,
        format!(
            "vm web: kernel image on {} at 0x15000000 has sha256 {}…, config pins \
             96a4524ffd277748… (write it again with `ftctl image write`, or pin it and sign \
             the config again)",
            dev.display(),
            &got[..16]
        )
    );
    assert_eq!(msg.lines().count(), 1);
}

#[test]
fn a_short_device_is_refused() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 512);
    write_image(&c, "web-linux", &dev, KERNEL, Some(INITRD)).unwrap();
    // The device ends in the middle of the initrd.
    File::options()
        .write(true)
        .open(&dev)
        .unwrap()
        .set_len(INITRD_AT + 5)
        .unwrap();
    let e = load_vm_image(&c, web(&c), &dev).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Short {
                part: "initrd",
                want: 14,
                got: 5,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("vm web: initrd image on "), "{e}");
    assert!(e.to_string().contains("is this the shared device"), "{e}");
}

#[test]
fn write_refuses_a_device_shorter_than_the_parts() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 340);
    let e = write_image(&c, "web-linux", &dev, KERNEL, Some(INITRD)).unwrap_err();
    assert!(
        matches!(e, ImageError::DeviceTooSmall { part: "initrd", len, .. } if len == 340 << 20),
        "{e:?}"
    );
    // Nothing was written, not even the kernel that fits.
    assert!(bytes_at(&dev, KERNEL_AT, 4 << 20).iter().all(|&b| b == 0));
    assert_eq!(std::fs::metadata(&dev).unwrap().len(), 340 << 20);
}

#[test]
fn write_refuses_a_kernel_that_would_overlap_the_initrd() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 512);
    let big = vec![1u8; (32 << 20) + 1];
    let e = write_image(&c, "web-linux", &dev, &big, Some(INITRD)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImageError::Layout { .. }), "{e:?}");
    assert!(
        msg.contains(
            "images[0].initrd: bytes [0x2000000, 0x200000e) of its region overlap images[0].kernel"
        ),
        "{msg}"
    );
    let raw = bytes_at(&dev, KERNEL_AT, 64 << 20);
    assert!(raw.iter().all(|&b| b == 0), "nothing written");
}

#[test]
fn write_refuses_an_initrd_the_config_does_not_place() {
    let mut c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 512);
    let e = write_image(&c, "web-linux", &dev, KERNEL, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "image \"web-linux\": the config places an initrd, but none was given"
    );
    c.images[0].initrd = None;
    let e = write_image(&c, "web-linux", &dev, KERNEL, Some(INITRD)).unwrap_err();
    assert!(matches!(e, ImageError::InitrdUnplaced(_)), "{e:?}");
    assert!(matches!(
        write_image(&c, "nope", &dev, KERNEL, None),
        Err(ImageError::UnknownImage(_))
    ));
    // Without an initrd, the kernel alone.
    write_image(&c, "web-linux", &dev, KERNEL, None).unwrap();
    assert_eq!(load_vm_image(&c, web(&c), &dev).unwrap().initrd, None);
}

#[test]
fn a_reference_guest_has_no_shared_image() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let dev = device(&dir, 1);
    let e = load_vm_image(&c, &c.vms[0], &dev).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm kv: image \"kv-guest\" is not an [[images]] entry of the config"
    );
}

#[test]
fn a_missing_device_is_one_line() {
    let c = config();
    let e = load_vm_image(&c, web(&c), Path::new("/nonexistent/dev")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("vm web: cannot open /nonexistent/dev for its kernel image: "),
        "{e}"
    );
}

#[test]
fn tmpfs_without_o_direct_is_read_buffered() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here: the O_DIRECT path is the one tested above
    };
    let c = config();
    let dev = device(&dir, 512);
    write_image(&c, "web-linux", &dev, KERNEL, Some(INITRD)).unwrap();
    assert_eq!(load_vm_image(&c, web(&c), &dev).unwrap().kernel, KERNEL);
}
