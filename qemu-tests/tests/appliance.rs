//! The appliance booted in QEMU (TCG, `-cpu max`): a valid config reaches
//! ready with a working /dev/kvm inside (BIOS and UEFI), the ISO's boot menus
//! are locked, a tampered config and a missing config disk are refused
//! without starting daemons, and a crashed daemon is restarted.
//!
//! Needs `out/ftappliance.iso` (`make image`) and qemu-system-x86_64; each
//! test FAILS with a clear message when one is missing. Boots run one at a
//! time: a process-wide mutex serializes them (plain `cargo test -p
//! qemu-tests` is fine; `make test` also passes `--test-threads=1`).
//! Boot-to-ready times are printed to stderr (`--nocapture` shows them).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use qemu_tests::cluster::tamper_config_disk;
use qemu_tests::{Boot, Cluster, Host, HostSpec, Pattern, TestDir};

/// Generous: TCG on a busy 2-core machine; a boot normally takes 10–40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn valid_config_boots_to_ready_and_kvm_works_inside() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("valid-config").unwrap();
    let host = cluster.boot("host-a").unwrap();
    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!(
        "boot-to-ready (ISO, host-a): {:.1} s",
        ready.at.as_secs_f64()
    );
    let kvm = host.wait_for("/dev/kvm ok", STEP_TIMEOUT).unwrap();
    assert!(kvm.contains("ftvmm"), "{kvm}");
    assert_eq!(host.console().count("config refused"), 0);
    for daemon in ["ftvmm", "heartbeat", "fencing"] {
        host.wait_for(format!("init: started {daemon} pid="), Duration::ZERO)
            .unwrap();
    }
    cluster.pass();
}

/// The same boot under UEFI: OVMF, then the ISO's GRUB with its locked menu.
#[test]
fn valid_config_boots_to_ready_under_uefi() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("valid-config-uefi").unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.boot = cluster.uefi_boot().unwrap();
    let host = cluster.boot_spec(spec).unwrap();
    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!(
        "boot-to-ready (ISO, UEFI, host-a): {:.1} s",
        ready.at.as_secs_f64()
    );
    assert_eq!(host.console().count("config refused"), 0);
    // GRUB on a machine without a display says `error: no suitable video
    // mode found.` and boots on; any other error (a command of the locked
    // config it does not know, say) fails the test.
    let errors: Vec<String> = host
        .console()
        .lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.contains("error:") && !t.contains("no suitable video mode found"))
        .collect();
    assert!(errors.is_empty(), "GRUB reported errors: {errors:?}");
    cluster.pass();
}

/// The ISO's boot menus cannot be edited: ISOLINUX without prompt, escapes or
/// typed options; GRUB without a superuser, its one entry unrestricted.
#[test]
fn the_iso_boot_menus_are_locked() {
    let iso = qemu_tests::paths::appliance_iso().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (isolinux, grub) = (dir.path().join("isolinux.cfg"), dir.path().join("grub.cfg"));
    qemu_tests::paths::extract_from_iso(
        &iso,
        &[
            ("/isolinux/isolinux.cfg", isolinux.as_path()),
            ("/boot/grub/grub.cfg", grub.as_path()),
        ],
    )
    .unwrap();
    image::bootcfg::check_isolinux(&std::fs::read_to_string(&isolinux).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", iso.display()));
    image::bootcfg::check_grub(&std::fs::read_to_string(&grub).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", iso.display()));
}

/// GRUB really refuses editing and its command line with the ISO's configs:
/// the ISO rebuilt with only the menu's timeout changed (so the menu waits),
/// booted under UEFI; `e` (edit) and `c` (command line) each ask for a
/// superuser, and no credentials open them (there is no superuser).
#[test]
fn grub_refuses_editing_and_its_command_line() {
    let _serial = one_at_a_time();
    let iso = qemu_tests::paths::appliance_iso().unwrap();
    let mut dir = TestDir::new("grub-locked").unwrap();
    let tree = dir.path().join("iso");
    let status = std::process::Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&iso)
        .args(["-extract", "/"])
        .arg(&tree)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("xorriso (package xorriso) runs");
    assert!(status.success(), "cannot extract {}", iso.display());
    let cfg = tree.join("boot/grub/grub.cfg");
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let shipped = std::fs::read_to_string(&cfg).unwrap();
    let waiting = shipped
        .replace("set timeout=0\n", "set timeout=600\n")
        .replace("set timeout_style=hidden\n", "set timeout_style=menu\n");
    assert_ne!(
        waiting, shipped,
        "the shipped grub.cfg changed its timeout lines:\n{shipped}"
    );
    std::fs::write(&cfg, &waiting).unwrap();
    let variant = dir.path().join("menu.iso");
    let status = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-o"])
        .arg(&variant)
        .args([
            "-V",
            "FTAPPLIANCE",
            "-r",
            "-iso-level",
            "3",
            "-eltorito-alt-boot",
        ])
        .args([
            "-e",
            "boot/grub/efi.img",
            "-no-emul-boot",
            "-isohybrid-gpt-basdat",
        ])
        .arg(&tree)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the menu variant ISO");

    let firmware = qemu_tests::paths::ovmf_firmware().unwrap();
    let work = dir.path().join("host");
    let mut spec = HostSpec::new(
        "grub",
        Boot::IsoUefi {
            iso: variant,
            firmware,
        },
        &work,
    );
    spec.watchdog = false;
    let host = Host::spawn(spec).unwrap();
    host.wait_for("Press enter to boot the selected OS", BOOT_TIMEOUT)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for key in ["e", "c"] {
        host.send_console(key).unwrap();
        host.wait_for_next("Enter username:", STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("`{key}` did not ask for a superuser: {e}"));
        host.send_console("root\r").unwrap();
        host.wait_for_next("Enter password:", STEP_TIMEOUT).unwrap();
        host.send_console("root\r").unwrap();
        std::thread::sleep(Duration::from_secs(5));
    }
    drop(host);
    let raw =
        String::from_utf8_lossy(&std::fs::read(work.join("console.log")).unwrap()).into_owned();
    for opened in [
        "Emacs-like screen editing",
        "BASH-like line editing",
        "grub>",
    ] {
        assert!(
            !raw.contains(opened),
            "GRUB opened its {opened:?} without a superuser"
        );
    }
    dir.pass();
}

#[test]
fn tampered_config_disk_is_refused_and_no_daemon_starts() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("tampered-config").unwrap();
    let disk = cluster.config_disk("host-a").unwrap().to_owned();
    let mut image = std::fs::read(&disk).unwrap();
    tamper_config_disk(&mut image).unwrap();
    std::fs::write(&disk, &image).unwrap();

    let host = cluster.boot("host-a").unwrap();
    let refused = host.wait_for("config refused: ", BOOT_TIMEOUT).unwrap();
    assert!(
        refused.contains("signature"),
        "reason should name the signature: {refused}"
    );
    host.assert_absent("init: started", Duration::from_secs(10))
        .unwrap();
    assert_eq!(host.console().count("appliance ready"), 0);
    cluster.pass();
}

/// A config disk that cannot record the generation it offers (write-protected,
/// a fresh disk with a blank STATE sector) is refused: fail closed, because the
/// host could not refuse a rollback to an older config later.
#[test]
fn write_protected_config_disk_is_refused() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("readonly-config").unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.config_disk_readonly = true;
    let host = cluster.boot_spec(spec).unwrap();
    let refused = host.wait_for("config refused: ", BOOT_TIMEOUT).unwrap();
    eprintln!("write-protected config disk: {refused}");
    assert!(
        refused.contains("cannot record generation 1 in its STATE sector"),
        "reason should name the STATE write: {refused}"
    );
    host.assert_absent("init: started", Duration::from_secs(3))
        .unwrap();
    cluster.pass();
}

#[test]
fn missing_config_disk_is_reported() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example("no-config-disk").unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.config_disk = None;
    // The contract's refusal line must reach serial-over-LAN too (COM2 on
    // many servers), as `server_hw.rs` checks for `appliance ready`.
    spec.add_com2();
    let host = cluster.boot_spec(spec).unwrap();
    let refused = host.wait_for("config refused: ", BOOT_TIMEOUT).unwrap();
    assert!(
        refused.contains("no config disk found"),
        "reason should say no config disk was found: {refused}"
    );
    let on_com2 = host
        .wait_for_com2("config refused: ", Duration::from_secs(10))
        .unwrap();
    assert!(
        on_com2.contains("no config disk found"),
        "ttyS1's refusal should name the reason: {on_com2}"
    );
    host.assert_absent("init: started", Duration::from_secs(3))
        .unwrap();
    cluster.pass();
}

/// The signed config enables `crash:heartbeat`; the kernel command line asks
/// for `ft.test=vmctl` too, which init ignores (one line) and ftvmm never
/// enables: test hooks come only from the signed config.
#[test]
fn crashed_daemon_is_restarted() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::example_with_hooks("daemon-crash", &["crash:heartbeat"]).unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.boot = cluster.kernel_boot("ft.test=vmctl").unwrap();
    let host = cluster.boot_spec(spec).unwrap();

    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    host.wait_for(
        "init: kernel command line option(s) ft.test=vmctl ignored: \
         test hooks are enabled only by the signed config ([test] hooks)",
        Duration::ZERO,
    )
    .unwrap();
    host.wait_for(
        "init: test hooks enabled by the signed config: crash:heartbeat (NOT FOR PRODUCTION)",
        Duration::ZERO,
    )
    .unwrap();
    host.wait_for(
        "init: config warning: test.hooks: TEST HOOKS ENABLED (crash:heartbeat)",
        Duration::ZERO,
    )
    .unwrap();
    eprintln!(
        "boot-to-ready (kernel+initrd, host-a): {:.1} s",
        ready.at.as_secs_f64()
    );
    let started = Pattern::regex(r"init: started heartbeat pid=(\d+)").unwrap();
    let first_pid = pid_in(&host.wait_for(started.clone(), Duration::ZERO).unwrap());
    // Everything below comes after the ready line.
    host.wait_for("appliance ready", Duration::ZERO).unwrap();
    let exited = host
        .wait_for_next("init: daemon heartbeat exited", STEP_TIMEOUT)
        .unwrap();
    assert!(
        exited.contains("SIGKILL"),
        "heartbeat should have died of SIGKILL: {exited}"
    );
    let again = host.wait_for_next(started.clone(), STEP_TIMEOUT).unwrap();
    assert_ne!(pid_in(&again), first_pid, "a restart gets a new pid");
    assert_eq!(host.console().count(started), 2);
    host.assert_no_more("init: daemon heartbeat exited", Duration::from_secs(5))
        .unwrap();
    assert_eq!(host.console().count("ftvmm: test hook"), 0);
    cluster.pass();
}

fn pid_in(line: &str) -> u32 {
    let re = regex_pid();
    re.captures(line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

fn regex_pid() -> regex::Regex {
    regex::Regex::new(r"pid=(\d+)").expect("valid regex")
}
