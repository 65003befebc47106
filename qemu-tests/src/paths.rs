//! Where things are: the workspace root, the appliance ISO, the tools the
//! harness runs (QEMU, xorriso, the OVMF firmware), and extracting files
//! (kernel + initramfs, boot-loader configs) from the ISO.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};

/// The QEMU binary the harness runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Root of the Cargo workspace (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The appliance ISO: `$FT_ISO` if set, else `<workspace>/out/ftappliance.iso`.
/// Fails with "run `make image` first" when it does not exist.
pub fn appliance_iso() -> Result<PathBuf> {
    let path = std::env::var_os("FT_ISO")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("out/ftappliance.iso"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::IsoMissing { path })
    }
}

/// Names the appliance image at `iso` for reports: `sha256:<first 16 hex
/// digits> <file name>`. The image is built reproducibly, so the digest names
/// the product a run tested whichever file it was copied to.
pub fn image_id(iso: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(iso)
        .map_err(|e| HarnessError::io(format!("open {}", iso.display()), e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| HarnessError::io(format!("read {}", iso.display()), e))?;
        match buf.get(..n) {
            Some([]) | None => break,
            Some(chunk) => ctx.update(chunk),
        }
    }
    let hex: String = (ctx.finish().as_ref().iter().take(8))
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = iso
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    Ok(format!("sha256:{hex} {name}"))
}

/// Finds `program` in `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A QEMU other than the system's, with the firmware directories it
/// searches first (`-L`, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBuild {
    pub binary: PathBuf,
    pub data_dirs: Vec<PathBuf>,
}

/// The QEMU of the nested-Linux tests' L1 hosts (`qemu-tests/nested-qemu.lock`
/// says which and why), unpacked by `make nested-qemu` into
/// `build/nested-qemu/root`: its own firmware directory first, then the
/// system's SeaBIOS (the backports package ships no BIOS of its own).
pub fn nested_qemu() -> Result<QemuBuild> {
    let root = workspace_root().join("build/nested-qemu/root/usr");
    let binary = root.join("bin").join(QEMU);
    if !binary.is_file() {
        return Err(HarnessError::NestedQemuMissing { path: binary });
    }
    Ok(QemuBuild {
        binary,
        data_dirs: vec![
            root.join("share/qemu"),
            PathBuf::from("/usr/share/seabios"),
            PathBuf::from("/usr/share/qemu"),
        ],
    })
}

/// The QEMU of an L1 host that runs a nested Linux guest (`linux_vm`'s L1,
/// `checkpoint_pair`'s hosts): [`nested_qemu`], or with
/// `FT_L1_QEMU=system` the system's (`None`), to compare the two.
pub fn l1_qemu() -> Result<Option<QemuBuild>> {
    if std::env::var("FT_L1_QEMU").as_deref() == Ok("system") {
        qemu_binary()?;
        return Ok(None);
    }
    nested_qemu().map(Some)
}

/// The QEMU binary, or a clear error naming the package to install.
pub fn qemu_binary() -> Result<PathBuf> {
    find_in_path(QEMU).ok_or(HarnessError::ToolMissing {
        program: QEMU,
        package: "qemu-system-x86",
    })
}

/// Runs a command and turns a non-zero exit into an error with its stderr.
pub fn run_checked(cmd: &mut Command) -> Result<std::process::Output> {
    let described = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| HarnessError::io(format!("run {described}"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HarnessError::Command {
            command: described,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Kernel and initramfs taken out of the ISO.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Extracts `/boot/vmlinuz` and `/boot/initrd.img` from `iso` into `dir`
/// (as `vmlinuz` and `initrd.img`) so a test can boot them with its own
/// kernel command line.
pub fn extract_boot_files(iso: &Path, dir: &Path) -> Result<BootFiles> {
    let files = BootFiles {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    extract_from_iso(
        iso,
        &[
            ("/boot/vmlinuz", files.kernel.as_path()),
            ("/boot/initrd.img", files.initrd.as_path()),
        ],
    )?;
    Ok(files)
}

/// Extracts files from `iso`: each `(path in the ISO, destination)`.
pub fn extract_from_iso(iso: &Path, files: &[(&str, &Path)]) -> Result<()> {
    let xorriso = find_in_path("xorriso").ok_or(HarnessError::ToolMissing {
        program: "xorriso",
        package: "xorriso",
    })?;
    let mut cmd = Command::new(xorriso);
    cmd.args(["-osirrox", "on", "-indev"]).arg(iso);
    for (inside, dest) in files {
        cmd.arg("-extract").arg(inside).arg(dest);
    }
    run_checked(&mut cmd)?;
    for (_, f) in files {
        if !f.is_file() {
            return Err(HarnessError::Command {
                command: format!("xorriso extract from {}", iso.display()),
                status: "exit 0".into(),
                stderr: format!("{} was not written", f.display()),
            });
        }
    }
    Ok(())
}

/// The UEFI firmware (OVMF) QEMU boots with for a UEFI boot.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// The OVMF firmware, or a clear error naming the package to install.
pub fn ovmf_firmware() -> Result<PathBuf> {
    let p = PathBuf::from(OVMF);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::ToolMissing {
            program: OVMF,
            package: "ovmf",
        })
    }
}

/// OVMF split in code and variable store, for a machine with pflash (q35):
/// the code is mapped read-only, each host gets its own copy of the store.
/// The 4 MiB build, the pair Debian's `ovmf` package ships for q35.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store template that goes with [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// [`OVMF_CODE`] and [`OVMF_VARS`], or a clear error naming the package.
pub fn ovmf_pflash() -> Result<(PathBuf, PathBuf)> {
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).is_file() {
            return Err(HarnessError::ToolMissing {
                program: f,
                package: "ovmf",
            });
        }
    }
    Ok((PathBuf::from(OVMF_CODE), PathBuf::from(OVMF_VARS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest is SHA-256 of the whole file (FIPS 180-2's "abc" example),
    /// cut to 16 hex digits, with the file's name after it.
    #[test]
    fn image_id_is_the_files_sha256_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("x.iso");
        std::fs::write(&iso, b"abc").unwrap();
        assert_eq!(image_id(&iso).unwrap(), "sha256:ba7816bf8f01cfea x.iso");
        let big = dir.path().join("big.iso");
        std::fs::write(&big, vec![7u8; (1 << 20) + 3]).unwrap();
        let (a, b) = (image_id(&big).unwrap(), image_id(&big).unwrap());
        assert_eq!(a, b);
        assert_ne!(a.split(' ').next(), Some("sha256:ba7816bf8f01cfea"));
        let e = image_id(&dir.path().join("none.iso")).unwrap_err();
        assert!(e.to_string().contains("none.iso"), "{e}");
    }
}
